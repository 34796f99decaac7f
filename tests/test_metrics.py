"""The HTTP endpoints (worker/health.py) and the metrics (worker/metrics.py) they serve.

The endpoints are real HTTP on a real port; the change metrics come from the real
coordinator on the fakes of tests/fakes.py (the pretend dhcpd answers OMAPI, so the verify
phase runs); the broker metrics from the real consumer on the real broker, through a proxy
that cuts the connection. tests/e2e/test_metrics_endpoint.py scrapes a worker process.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from aio_pika.abc import AbstractConnection
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from tests.change.conftest import make_world
from tests.change.helpers import PRIMARY_CONF, SECONDARY_CONF, modify_request
from tests.consumer.proxy import TcpProxy
from tests.consumer.support import (
    StubHandler,
    modify,
    publish_raw,
    take_unacked,
    wait_for_consumer,
)
from worker import metrics
from worker.change.coordinator import execute
from worker.change.running import VerifyPolicy
from worker.consumer.app import LOST, run_worker
from worker.consumer.topology import declare_topology
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY
from worker.demo.processes import free_port
from worker.failures import EXIT_CONFIG, OperatorError
from worker.health import Readiness, serving
from worker.messages import Outcome
from worker.metrics import PhaseName, observed_change, spend, timed
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)

PHASES: tuple[PhaseName, ...] = ("plan", "prepare", "commit", "verify", "rollback", "finish")


async def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET, 4xx and 5xx included (urllib in a thread)."""

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


class Scrape:
    """One ``/metrics`` text, parsed: sample values by name and labels (absent: 0)."""

    def __init__(self, text: str) -> None:
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


async def scrape(base: str) -> Scrape:
    status, text = await http_get(f"{base}/metrics")
    assert status == 200, text
    return Scrape(text)


async def eventually(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    """Poll ``check`` until true (a bound, not a timing assertion)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def value(name: str, **labels: str) -> float:
    """A sample of this process's registry (absent: 0)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def phase_counts(operation: str = "modify") -> dict[str, float]:
    name = "dhcp_failover_change_phase_duration_seconds_count"
    return {p: value(name, operation=operation, phase=p) for p in PHASES}


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


# -- the endpoints --------------------------------------------------------------------------------


async def test_healthz_is_up_and_readyz_says_why_not_until_ready() -> None:
    readiness = Readiness()
    async with serving(Settings(http_port=free_port()), readiness) as address:
        assert address is not None
        base = f"http://{address[0]}:{address[1]}"

        assert await http_get(f"{base}/healthz") == (200, "ok\n")
        status, text = await http_get(f"{base}/readyz")
        assert status == 503
        assert text == "inventory not loaded; not connected to the broker yet\n"

        readiness.inventory = True
        assert await http_get(f"{base}/readyz") == (503, "not connected to the broker yet\n")
        readiness.broker = None
        assert await http_get(f"{base}/readyz") == (200, "ready\n")
        readiness.broker = LOST
        assert await http_get(f"{base}/readyz") == (503, f"{LOST}\n")

        metrics = await scrape(base)
        assert {"dhcp_failover_changes_in_flight", "dhcp_failover_broker_connected"} <= (
            metrics.names()
        )
        status, text = await http_get(f"{base}/nowhere")
        assert status == 404 and "/metrics, /healthz, /readyz" in text
    with pytest.raises(urllib.error.URLError):  # stopped: the port is closed again
        await http_get(f"{base}/healthz")


async def test_without_a_readiness_there_is_no_readyz() -> None:
    async with serving(Settings(http_port=free_port()), None) as address:
        assert address is not None
        base = f"http://{address[0]}:{address[1]}"
        assert (await http_get(f"{base}/readyz"))[0] == 404
        assert await http_get(f"{base}/healthz") == (200, "ok\n")


async def test_port_0_serves_nothing() -> None:
    async with serving(Settings(http_port=0), Readiness()) as address:
        assert address is None


async def test_a_port_in_use_stops_run_and_is_only_a_warning_for_rollout() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(http_port=taken.getsockname()[1])
        with pytest.raises(OperatorError) as raised:
            async with serving(settings, Readiness()):
                pass
        assert raised.value.exit_code == EXIT_CONFIG
        assert "DHCP_FAILOVER_HTTP_PORT" in raised.value.message
        async with serving(settings, None, required=False) as address:
            assert address is None


# -- the change metrics ---------------------------------------------------------------------------


async def test_each_phase_of_a_change_is_observed_once() -> None:
    world = make_world({PRIMARY: PRIMARY_CONF, SECONDARY: SECONDARY_CONF}, SAMPLE_ADDRESSES)
    for host in world.hosts.values():
        host.omapi = VerifyPolicy(timeout=30.0)
    phases = phase_counts()
    done = value(
        "dhcp_failover_change_duration_seconds_count", operation="modify", outcome="succeeded"
    )
    waits = value("dhcp_failover_lock_wait_seconds_count")

    change = execute(modify_request(), "req-metrics-1", world.fleet)
    result = await observed_change("modify", change)

    assert result.outcome is Outcome.succeeded, result.error
    assert result.verified is True
    assert grown(phases, phase_counts()) == dict.fromkeys(
        ["plan", "prepare", "commit", "verify", "finish"], 1.0
    )
    assert (
        value(
            "dhcp_failover_change_duration_seconds_count", operation="modify", outcome="succeeded"
        )
        == done + 1
    )
    assert value("dhcp_failover_lock_wait_seconds_count") >= waits + 1
    assert value("dhcp_failover_changes_in_flight") == 0


async def test_a_rolled_back_change_is_observed_with_its_rollback() -> None:
    world = make_world({PRIMARY: PRIMARY_CONF, SECONDARY: SECONDARY_CONF}, SAMPLE_ADDRESSES)
    world.secondary.restart_failures = 1
    phases = phase_counts()

    result = await observed_change("modify", execute(modify_request(), "req-rb", world.fleet))

    assert result.outcome is Outcome.rolled_back
    # No omapi in this inventory: no verify phase ran.
    assert grown(phases, phase_counts()) == dict.fromkeys(
        ["plan", "prepare", "commit", "rollback", "finish"], 1.0
    )
    assert (
        value(
            "dhcp_failover_change_duration_seconds_count", operation="modify", outcome="rolled_back"
        )
        >= 1
    )


async def test_phases_outside_an_observed_change_cost_nothing() -> None:
    world = make_world({PRIMARY: PRIMARY_CONF, SECONDARY: SECONDARY_CONF}, SAMPLE_ADDRESSES)
    phases = phase_counts()

    result = await execute(modify_request(), "req-unobserved", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert phase_counts() == phases


async def test_a_phase_is_the_sum_of_its_steps_and_ends_on_error_too() -> None:
    @timed("finish")
    async def failing_step() -> None:
        raise RuntimeError("boom")

    async def change() -> None:
        spend("finish", 1.0)
        spend("finish", 2.0)
        with pytest.raises(RuntimeError):
            await failing_step()
        raise RuntimeError("the change itself failed")

    name = "dhcp_failover_change_phase_duration_seconds"
    count, total = (
        value(f"{name}_count", operation="remove", phase="finish"),
        value(f"{name}_sum", operation="remove", phase="finish"),
    )
    with pytest.raises(RuntimeError, match="the change itself"):
        await observed_change("remove", change())  # type: ignore[arg-type]
    assert value(f"{name}_count", operation="remove", phase="finish") == count + 1
    assert value(f"{name}_sum", operation="remove", phase="finish") >= total + 3.0
    assert value("dhcp_failover_changes_in_flight") == 0


# -- the broker metrics and /readyz on the real broker ----------------------------------------


@pytest.mark.integration
async def test_readyz_follows_the_broker_connection_and_settlements_are_counted(
    broker_settings: Settings, amqp: AbstractConnection
) -> None:
    proxy = await TcpProxy.to(broker_settings.amqp_url)
    settings = broker_settings.model_copy(
        update={
            "amqp_url": proxy.url(broker_settings.amqp_url, reconnect_interval="0.2"),
            "http_port": free_port(),
        }
    )
    readiness = Readiness(inventory=True)
    stop = asyncio.Event()
    # A request delivered once and handed back unsettled: the worker gets it redelivered.
    channel = await amqp.channel()
    await declare_topology(channel, settings)
    await publish_raw(amqp, settings, modify(requestId="metrics-redelivered"))
    await take_unacked(channel, settings.request_queue)
    await channel.close()
    redelivered = value("dhcp_failover_redeliveries_total")
    succeeded = value("dhcp_failover_requests_total", operation="modify", outcome="succeeded")
    reconnects = value("dhcp_failover_broker_reconnects_total")
    dead = value("dhcp_failover_dead_lettered_total")
    rejected = value("dhcp_failover_requests_total", operation="modify", outcome="rejected")
    try:
        async with serving(settings, readiness) as address:
            assert address is not None
            base = f"http://{address[0]}:{address[1]}"
            task = asyncio.create_task(run_worker(settings, StubHandler(), stop, readiness))
            await wait_for_consumer(amqp, settings, task)
            assert await http_get(f"{base}/readyz") == (200, "ready\n")
            await eventually(
                lambda: (
                    value("dhcp_failover_requests_total", operation="modify", outcome="succeeded")
                    == succeeded + 1
                ),
                "the redelivered request to be answered",
            )
            metrics = await scrape(base)
            assert metrics("dhcp_failover_broker_connected") == 1
            assert metrics("dhcp_failover_redeliveries_total") == redelivered + 1

            port = proxy.port
            await proxy.close()  # the broker is gone: no reconnection until it is back
            await eventually(lambda: readiness.broker == LOST, "the loss to be seen")
            assert await http_get(f"{base}/readyz") == (503, f"{LOST}\n")
            assert (await scrape(base))("dhcp_failover_broker_connected") == 0
            await proxy.start(port)
            await eventually(lambda: not readiness.problems(), "the consumer to be restored")
            assert await http_get(f"{base}/readyz") == (200, "ready\n")
            metrics = await scrape(base)
            assert metrics("dhcp_failover_broker_connected") == 1
            assert metrics("dhcp_failover_broker_reconnects_total") == reconnects + 1

            await publish_raw(amqp, settings, b"{not json", message_id="metrics-garbage")
            await eventually(
                lambda: value("dhcp_failover_dead_lettered_total") == dead + 1, "dead letter"
            )
            metrics = await scrape(base)
            assert metrics("dhcp_failover_dead_lettered_total") == dead + 1
            assert (
                metrics("dhcp_failover_requests_total", operation="modify", outcome="rejected")
                == rejected + 1
            )

            stop.set()
            await asyncio.wait_for(task, 20)
            assert await http_get(f"{base}/readyz") == (503, "worker stopped\n")
            assert (await scrape(base))("dhcp_failover_broker_connected") == 0
    finally:
        stop.set()
        await proxy.close()


def test_the_readme_documents_every_metric_with_its_type_and_labels() -> None:
    """The README's table is what operators build dashboards from (issue: "the README
    documents each metric name and label"): a metric added or relabelled must show there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {
        m["name"]: (m["type"], set(re.findall(r"`(\w+)`", m["labels"])))
        for m in re.finditer(
            r"^\| `(?P<name>dhcp_failover_\w+)` \| (?P<type>\w+) \|(?P<labels>[^|]*)\|",
            readme,
            re.MULTILINE,
        )
    }
    defined = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert defined
    for metric in defined:
        # prometheus-client keeps a counter's name without its _total suffix
        name = metric._name + ("_total" if metric._type == "counter" else "")
        assert name in rows, f"{name} is not in the README's metrics table"
        kind, labels = rows[name]
        assert kind == metric._type, name
        assert set(metric._labelnames) <= labels, name
    assert len(rows) == len(defined), "the README lists a metric worker/metrics.py lacks"
