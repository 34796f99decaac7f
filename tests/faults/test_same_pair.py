"""Two requests for one pair queued together, one worker with the test settings' concurrency (4).

Found by the cluster test (test_cluster.py), where a few of every 500 requests ended
``failed`` / ``concurrent_change`` before any fault was injected: the second request reads the
live files when it is delivered (planning does not wait for locks), waits for the locks the
first holds, then finds the files it read replaced, by the first request of the same worker,
and refuses.
Nobody else edited them; the server locks were meant to serialise the two (issue 11, fault 4:
"the final config reflects every request in some serial order").
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from aio_pika.abc import AbstractConnection

from tests.change.helpers import PRIMARY_CONF, SECONDARY_CONF
from tests.consumer.support import EventTap, assert_depth, publish_raw
from tests.e2e.conftest import SSH_TIMEOUTS
from tests.e2e.support import change_ended, modify_body, slow_restart
from tests.faults.cluster_support import run_worker_process
from tests.faults.report import record
from tests.fixtures.sshd import LocalHostsFactory
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(90)]


async def test_two_requests_for_one_pair_are_both_applied_one_after_the_other(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    hosts = local_hosts(sample_configs(), addresses=SAMPLE_ADDRESSES)
    slow_restart(hosts, PRIMARY, 2)  # the first change holds the locks a while
    settings = broker_settings.model_copy(update=SSH_TIMEOUTS)
    tag = secrets.token_hex(4)
    first, second = f"pair-{tag}-1", f"pair-{tag}-2"
    worker = run_worker_process(settings, hosts.inventory_path, tmp_path / "worker.log")
    try:
        await publish_raw(amqp, broker_settings, modify_body(first, Mclt=1800, Port=648))
        await publish_raw(amqp, broker_settings, modify_body(second, Mclt=1700, Port=649))
        events = [(await tap.next_checked(within=30)).event for _ in range(2)]
        await assert_depth(amqp, broker_settings.request_queue, 0, within=30)
        await change_ended(*hosts.hosts.values())
    finally:
        status = await asyncio.to_thread(worker.stop)

    outcomes = {e.data.requestId: (e.data.outcome.value, e.data.error) for e in events}
    assert outcomes == {first: ("succeeded", None), second: ("succeeded", None)}, outcomes
    # Applied in some serial order: the live pair is one request's, the other came before.
    live = hosts.hosts[PRIMARY].config_bytes().decode(), hosts.hosts[SECONDARY].config_bytes()
    assert live in {
        (
            PRIMARY_CONF.replace("port 647;", f"port {p};").replace("mclt 3600;", f"mclt {m};"),
            SECONDARY_CONF.replace("port 647;", f"port {p};").encode(),
        )
        for p, m in ((648, 1800), (649, 1700))
    }
    assert [len(h.restarts()) for h in hosts.hosts.values()] == [2, 2]
    assert status == 0
    record(
        "two requests for one pair at once",
        "one worker, concurrency 4",
        "succeeded, both, one after the other",
        requests=2,
    )
