"""A broker connection lost between a ``failed`` event and its acknowledgement.

A ``failed`` outcome from before the commit (nothing live changed: validation, a lock wait,
``concurrent_change``, an unreachable server) is not recorded on the servers: no journal was
written, so no done record. If the connection drops after the event was confirmed but before
the ack reached the broker (a node lost, ``close_all_connections``: the cluster test's faults),
the request comes back and is planned afresh. When the transient cause is gone, it now
succeeds: two outcomes for one request id on the event exchange, and a change applied that
its publisher was told had failed.

Made deterministic here: the primary's ``validate_command`` fails once, and a TCP proxy
between the worker and the broker drops the worker's connections at its first ``basic.ack``
(the frame is not forwarded, so the broker redelivers the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shlex
import tomllib
from pathlib import Path

import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.proxy import TcpProxy
from tests.consumer.support import EventTap, assert_depth, publish_raw
from tests.e2e.conftest import SSH_TIMEOUTS
from tests.e2e.support import change_ended, modify_body
from tests.faults.cluster_support import run_worker_process
from tests.faults.report import record
from tests.fixtures.sshd import LocalHostsFactory
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(90)]

#: The method frame of ``basic.ack`` (class 60, method 80), as the worker sends it.
BASIC_ACK = b"\x00\x3c\x00\x50"


def fail_validate_once(hosts: LocalHosts, name: str) -> Path:
    """``name``'s ``validate_command`` fails the first time only (a transient problem)."""
    marker = hosts.hosts[name].root / "fail-validate-once"
    marker.touch()
    text = hosts.inventory_path.read_text()
    current = tomllib.loads(text)["servers"][name]["validate_command"]
    script = f"if [ -e {shlex.quote(str(marker))} ]; then rm -f {shlex.quote(str(marker))}; "
    script += f"exit 1; fi; exec {current.replace('{path}', chr(34) + '$0' + chr(34))}"
    new = f"sh -c {shlex.quote(script)} {{path}}"
    old_line = f"validate_command = {json.dumps(current)}\n"
    assert text.count(old_line) == 1
    hosts.inventory_path.write_text(
        text.replace(old_line, f"validate_command = {json.dumps(new)}\n")
    )
    return marker


async def test_a_failed_outcome_whose_ack_is_lost_is_not_followed_by_another(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    hosts = local_hosts(sample_configs(), addresses=SAMPLE_ADDRESSES)
    marker = fail_validate_once(hosts, PRIMARY)
    before = {name: host.config_bytes() for name, host in hosts.hosts.items()}
    proxy = await TcpProxy.to(broker_settings.amqp_url)
    settings = broker_settings.model_copy(
        update={**SSH_TIMEOUTS, "amqp_url": proxy.url(broker_settings.amqp_url)}
    )
    request_id = f"lost-ack-{secrets.token_hex(4)}"
    worker = run_worker_process(settings, hosts.inventory_path, tmp_path / "worker.log")
    try:
        proxy.cut_on(BASIC_ACK)
        await publish_raw(amqp, broker_settings, modify_body(request_id, Mclt=1800, Port=648))
        first = await tap.next_checked(within=30)
        assert first.event.id == f"{request_id}/failed"  # validation failed: nothing changed
        assert not marker.exists()
        await proxy.triggered.wait()  # ... and its ack never reached the broker
        # The worker reconnects (after 5 s) and gets the request again: answered from the
        # done record the failed outcome left, with the same event.
        again = await tap.next_checked(within=60)
        await assert_depth(amqp, broker_settings.request_queue, 0, within=30)
        await change_ended(*hosts.hosts.values())
        later: list[str | None] = [again.message.message_id]
        with contextlib.suppress(TimeoutError):
            while True:  # everything else the event exchange gets, until 5 s of quiet
                later.append((await tap.next(within=5)).message_id)
    finally:
        status = await asyncio.to_thread(worker.stop)  # the proxy runs on this loop
        await proxy.close()

    # One outcome per request id: the redelivery answers ``failed`` again.
    assert set(later) == {f"{request_id}/failed"}, later
    assert again.event.id == first.event.id  # the recorded outcome, durationMs aside:
    assert again.event.data.model_dump(exclude={"durationMs"}) == first.event.data.model_dump(
        exclude={"durationMs"}
    )
    assert {name: host.config_bytes() for name, host in hosts.hosts.items()} == before
    assert hosts.hosts[SECONDARY].restarts() == []
    assert status == 0
    record(
        "broker connection lost before the ack",
        "a failed outcome's basic.ack",
        "failed, answered again from its done record",
        requests=1,
    )
