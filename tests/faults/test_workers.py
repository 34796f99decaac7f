"""Two and three workers on one queue, with requests whose servers overlap (issue 11, fault 4).

Three servers in a triangle of relationships: ``ab`` (A primary, B secondary), ``bc`` (B
primary, C secondary) and ``ca`` (C primary, A secondary). Every server is in two of them, so
every request's locks overlap those of two others, in both orders: the cycle that a naive
lock order deadlocks on. The server locks must serialise the requests:

* no deadlock: every request is answered;
* no lost update: on each server the changes form one chain, each planned on the file the
  one before it left (``sha256Before`` = the previous ``sha256After``), from the file the test
  wrote to the file now live, every change once: the requests ran in some serial order;
* no split pair: both peers of every relationship hold the same values at the end.

And a lock held past ``lock_timeout`` ends the request ``failed`` / ``lock_timeout``, naming
the server, with nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractConnection

from tests.change.helpers import is_temp
from tests.consumer.support import EventTap, assert_depth, publish_raw
from tests.e2e.conftest import SSH_TIMEOUTS
from tests.e2e.support import change_ended
from tests.faults.cluster_support import WorkerProcess, run_worker_process
from tests.faults.report import record
from tests.fixtures.sshd import LocalHostsFactory
from worker.demo.localhosts import LocalHosts
from worker.messages import ResultData
from worker.settings import Settings
from worker.transport.inventory import load_inventory
from worker.transport.ssh import SshFleet

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(240)]

SERVERS = {"A": "srv-a.example.net", "B": "srv-b.example.net", "C": "srv-c.example.net"}
ADDRESSES = {"A": "192.0.2.40", "B": "192.0.2.41", "C": "192.0.2.42"}
#: relationship -> (primary, secondary, port, the subnet its pools serve)
RELATIONSHIPS = {"ab": ("A", "B", 647, 21), "bc": ("B", "C", 648, 22), "ca": ("C", "A", 649, 23)}
#: Requests per relationship in the concurrent test.
PER_RELATIONSHIP = 8


def peer_block(name: str, own: str, role: str) -> str:
    primary, secondary, port, _ = RELATIONSHIPS[name]
    partner = secondary if own == primary else primary
    lines = [
        f'failover peer "{name}" {{',
        f"  {role};",
        f"  address {ADDRESSES[own]};",
        f"  port {port};",
        f"  peer address {ADDRESSES[partner]};",
        f"  peer port {port};",
        "  max-response-delay 60;",
        "  max-unacked-updates 10;",
        *(["  mclt 3600;", "  split 128;"] if role == "primary" else []),
        "  load balance max seconds 3;",
        "}",
    ]
    return "\n".join(lines) + "\n"


def triangle_config(own: str) -> str:
    """``own``'s dhcpd.conf: its two relationships, each with a subnet and pool of its own."""
    parts = [f"# {SERVERS[own]}: two failover relationships of the triangle\n"]
    parts.append("authoritative;\nddns-update-style none;\n\n")
    for name, (primary, secondary, _, net) in RELATIONSHIPS.items():
        if own in (primary, secondary):
            parts.append(peer_block(name, own, "primary" if own == primary else "secondary"))
            parts.append(
                f"\nsubnet 10.{net}.0.0 netmask 255.255.255.0 {{\n  pool {{\n"
                f'    failover peer "{name}";\n    range 10.{net}.0.100 10.{net}.0.199;\n'
                "  }\n}\n\n"
            )
    return "".join(parts)


def triangle(local_hosts: LocalHostsFactory) -> LocalHosts:
    configs = {SERVERS[k]: triangle_config(k) for k in SERVERS}
    addresses = {SERVERS[k]: (ADDRESSES[k],) for k in SERVERS}
    return local_hosts(configs, addresses=addresses)


def body(request_id: str, relationship: str, mclt: int, delay: int) -> dict[str, Any]:
    primary, secondary, _, _ = RELATIONSHIPS[relationship]
    return {
        "requestId": request_id,
        "command": "ModifyDHCPFailoverRelationship",
        "params": {
            "Name": relationship,
            "PrimaryServer": SERVERS[primary],
            "SecondaryServer": SERVERS[secondary],
            "Mclt": mclt,
            "MaxResponseDelay": delay,
        },
    }


def peer_values(text: str, relationship: str) -> dict[str, str]:
    block = re.search(rf'failover peer "{relationship}" \{{(.*?)\}}', text, re.S)
    assert block is not None, relationship
    pairs = (line.strip().rstrip(";").rsplit(" ", 1) for line in block[1].splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def assert_one_chain(server: str, start: str, end: str, results: list[ResultData]) -> None:
    """The changes of ``server`` link up, each once, from ``start`` to ``end`` (sha256)."""
    steps: dict[str | None, str | None] = {}
    for result in results:
        for entry in result.servers:
            if entry.name == server and entry.changed:
                assert entry.sha256Before not in steps, f"{server}: two changes planned on one file"
                steps[entry.sha256Before] = entry.sha256After
    seen = 0
    current: str | None = start
    while current in steps:
        current, seen = steps[current], seen + 1
    assert (current, seen) == (end, len(steps)), f"{server}: the changes do not form one chain"


async def run_workers(
    count: int, settings: Settings, hosts: LocalHosts, tmp_path: Path
) -> list[WorkerProcess]:
    return [
        run_worker_process(settings, hosts.inventory_path, tmp_path / f"worker-{i}.log")
        for i in range(count)
    ]


@pytest.mark.parametrize("workers", [2, 3])
async def test_workers_on_one_queue_apply_overlapping_requests_in_a_serial_order(
    workers: int,
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    hosts = triangle(local_hosts)
    start = {name: host.config_sha256() for name, host in hosts.hosts.items()}
    settings = broker_settings.model_copy(update={**SSH_TIMEOUTS, "lock_timeout": 60.0})
    tag = secrets.token_hex(3)
    bodies = [
        body(f"tri-{tag}-{name}-{i}", name, 1000 + 10 * i + n, 20 + i)
        for i in range(PER_RELATIONSHIP)
        for n, name in enumerate(RELATIONSHIPS)
    ]
    procs = await run_workers(workers, settings, hosts, tmp_path)
    try:
        for each in bodies:
            await publish_raw(amqp, broker_settings, each)
        events = [(await tap.next_checked(within=120)).event for _ in bodies]
        await assert_depth(amqp, broker_settings.request_queue, 0, within=30)
        await change_ended(*hosts.hosts.values())
        with contextlib.suppress(TimeoutError):
            extra = await tap.next(within=2)
            raise AssertionError(f"an event too many: {extra.message_id}")
        statuses = [await asyncio.to_thread(p.stop) for p in procs]
        served = [p.count("change.end") for p in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(AssertionError):
                await asyncio.to_thread(proc.stop)

    results = [e.data for e in events]
    assert sorted(r.requestId or "" for r in results) == sorted(str(b["requestId"]) for b in bodies)
    failures = {r.requestId: r.error for r in results if r.outcome.value != "succeeded"}
    assert failures == {}
    assert statuses == [0] * workers
    assert sum(1 for n in served if n) >= 2, f"one worker did all the work: {served}"
    for name, host in hosts.hosts.items():
        assert_one_chain(name, start[name], host.config_sha256(), results)
        assert not [n for n in host.config_dir.iterdir() if is_temp(n.name)]
        last = host.restarts()[-1]
        assert (last.status, last.sha256) == ("ok", host.config_sha256()), name
    for relationship, (primary, secondary, _, _) in RELATIONSHIPS.items():
        a = peer_values(hosts.hosts[SERVERS[primary]].config_bytes().decode(), relationship)
        b = peer_values(hosts.hosts[SERVERS[secondary]].config_bytes().decode(), relationship)
        assert a["max-response-delay"] == b["max-response-delay"], relationship
        # The last change of the relationship in the chain order set both values.
        delay = int(a["max-response-delay"])
        assert int(a["mclt"]) == 1000 + 10 * (delay - 20) + list(RELATIONSHIPS).index(relationship)
    record(
        f"{workers} workers, one queue",
        f"{len(bodies)} modifies over 3 servers in a cycle of 3 relationships",
        "succeeded, one serial order per server",
        requests=len(bodies),
        faults=0,
    )


async def test_a_lock_held_past_lock_timeout_fails_naming_the_server(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    hosts = triangle(local_hosts)
    before = {name: host.config_bytes() for name, host in hosts.hosts.items()}
    settings = broker_settings.model_copy(update={**SSH_TIMEOUTS, "lock_timeout": 1.0})
    other = SshFleet(load_inventory(hosts.inventory_path), settings)  # another worker's
    (proc,) = await run_workers(1, settings, hosts, tmp_path)
    try:
        async with other.host(SERVERS["B"]).lock(5):
            await publish_raw(amqp, broker_settings, body("held-lock", "ab", 1800, 30))
            event = (await tap.next_checked(within=30)).event
        status = await asyncio.to_thread(proc.stop)
    finally:
        with contextlib.suppress(AssertionError):
            await asyncio.to_thread(proc.stop)
        await other.close()

    assert event.data.outcome.value == "failed"
    error = event.data.error
    assert error is not None and (error.code, error.server) == ("lock_timeout", SERVERS["B"])
    assert SERVERS["B"] in error.message and "1" in error.message
    assert {name: host.config_bytes() for name, host in hosts.hosts.items()} == before
    assert [h.restarts() for h in hosts.hosts.values()] == [[], [], []]
    assert status == 0
    record("lock held by another worker", "past lock_timeout (1 s)", "failed (lock_timeout)")
