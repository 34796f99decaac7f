"""``dhcp-failover-worker run`` with DHCP_FAILOVER_HTTP_PORT set, scraped over real HTTP.

A real worker process, real sshd hosts, the real broker: ``/readyz`` while it consumes (and
while it cannot reach the broker), ``/metrics`` during a change (in flight, SSH connections
open) and after it (the request counted, each phase observed once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import SSH_TIMEOUTS
from tests.e2e.support import modify_body, new_request_id, slow_restart
from tests.e2e.test_startup import start_worker, with_netloc
from tests.faults.cluster_support import WorkerProcess, run_worker_process
from tests.test_cli_errors import write_inventory
from tests.test_metrics import Scrape, http_get, scrape
from worker.consumer.client import publish_request
from worker.demo import PRIMARY, SECONDARY
from worker.demo.localhosts import LocalHosts
from worker.demo.processes import free_port
from worker.messages import Outcome
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REQUESTS = "dhcp_failover_requests_total"
PHASES = "dhcp_failover_change_phase_duration_seconds_count"


async def until_scraped(
    base: str, check: Callable[[Scrape], bool], what: str, within: float = 30.0
) -> Scrape:
    """Scrape until ``check`` holds (a bound, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        if check(found := await scrape(base)):
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def until_ready(base: str, worker: WorkerProcess, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        assert worker.process.poll() is None, worker.log.read_text()[-4000:]
        try:
            if await http_get(f"{base}/readyz") == (200, "ready\n"):
                return
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, "the worker never became ready"
        await asyncio.sleep(0.05)


async def test_a_real_change_moves_the_counters_of_a_worker_process(
    broker_settings: Settings, sample_hosts: LocalHosts, tmp_path: Path
) -> None:
    port = free_port()
    settings = broker_settings.model_copy(update={"http_port": port, **SSH_TIMEOUTS})
    restart_begun = slow_restart(sample_hosts, SECONDARY, 1.0)  # the change stays in flight
    worker = run_worker_process(settings, sample_hosts.inventory_path, tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    try:
        await until_ready(base, worker)
        before = await scrape(base)
        assert before("dhcp_failover_broker_connected") == 1
        assert before(REQUESTS, operation="modify", outcome="succeeded") == 0
        assert before("dhcp_failover_changes_in_flight") == 0

        body = modify_body(new_request_id("metrics"))
        published = asyncio.create_task(publish_request(settings, body, "request.modify", wait=60))
        while not restart_begun.exists():
            assert not published.done(), published.result()
            await asyncio.sleep(0.02)
        during = await scrape(base)
        assert during("dhcp_failover_changes_in_flight") == 1
        for server in (PRIMARY, SECONDARY):
            assert during("dhcp_failover_ssh_connections_open", server=server) == 1
        assert during(PHASES, operation="modify", phase="plan") == 0  # observed at the end
        assert await http_get(f"{base}/readyz") == (200, "ready\n")

        event = await published
        assert event is not None and event.data.outcome is Outcome.succeeded, event
        # The event is counted once its confirm is in, the phases once the change has
        # cleaned up: both may come a moment after the reply.
        after = await until_scraped(
            base,
            lambda m: (
                m(REQUESTS, operation="modify", outcome="succeeded") == 1
                and m("dhcp_failover_changes_in_flight") == 0
            ),
            "the change to be counted",
        )
        for phase in ("plan", "prepare", "commit", "finish"):
            assert after(PHASES, operation="modify", phase=phase) == 1, phase
        for phase in ("verify", "rollback"):  # no omapi in these hosts' inventory
            assert after(PHASES, operation="modify", phase=phase) == 0, phase
        assert (
            after(
                "dhcp_failover_change_duration_seconds_count",
                operation="modify",
                outcome="succeeded",
            )
            == 1
        )
        # The commit included the 1 s restart, so its bucket at 0.5 s is still empty.
        assert (
            after(
                "dhcp_failover_change_phase_duration_seconds_bucket",
                operation="modify",
                phase="commit",
                le="0.5",
            )
            == 0
        )
        assert after("dhcp_failover_lock_wait_seconds_count") >= 1
        assert after("dhcp_failover_dead_lettered_total") == 0
        for server in (PRIMARY, SECONDARY):
            assert after("dhcp_failover_ssh_connections_open", server=server) == 1  # pooled
            assert after("dhcp_failover_ssh_reconnects_total", server=server) == 0
        assert await http_get(f"{base}/readyz") == (200, "ready\n")

        assert worker.stop() == 0
    finally:
        worker.stop()


async def test_a_worker_that_cannot_reach_its_broker_is_alive_but_not_ready(
    broker_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    nowhere = with_netloc(broker_settings.amqp_url, port=free_port())  # nothing listens
    settings = broker_settings.model_copy(update={"amqp_url": nowhere, "http_port": port})
    log = tmp_path / "worker.log"
    process = start_worker(
        settings, write_inventory(tmp_path), log, DHCP_FAILOVER_STARTUP_TIMEOUT="0"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            try:
                status, text = await http_get(f"{base}/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the endpoints never came up"
                await asyncio.sleep(0.05)
        assert (status, text) == (200, "ok\n")
        assert await http_get(f"{base}/readyz") == (503, "not connected to the broker yet\n")
        assert (await scrape(base))("dhcp_failover_broker_connected") == 0
    finally:
        process.kill()  # it waits for the broker forever (startup timeout 0)
        process.wait(30)
