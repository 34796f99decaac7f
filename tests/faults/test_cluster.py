"""Broker faults under load, on real RabbitMQ nodes, real sshd hosts and real dhcpd.

A three-node cluster (tests/fixtures/cluster.py): the worker process is given every node
(``DHCP_FAILOVER_AMQP_URL`` as a comma-separated list) and, while it works through
``DHCP_FAILOVER_FAULT_REQUESTS`` modifies (default 500) over several pairs, the node it is
connected to is stopped (``stop_app``), later another one is killed with SIGKILL, and every
connection of the cluster is closed (``close_all_connections``). Every request the broker
confirmed must end with exactly one outcome on the event exchange, and each pair's restarts
must show every request applied exactly once, in some serial order, the last one live.

And a single broker of our own (the README quick start's one-node setup) stopped and started
while a change is committing.

``-m faults`` selects these; they also run in the default suite (about 2-3 minutes for the
module on 2 cores: 30 s to start the cluster, about a minute for the 500 requests)::

    DHCP_FAILOVER_FAULT_REQUESTS=500 DHCP_FAILOVER_FAULT_PAIRS=8 \\
        .venv/bin/python -m pytest -q -p no:cacheprovider -s tests/faults/test_cluster.py

``-s`` shows the figures of the run (faults and when, outcomes, redeliveries, duplicates).
With 8 pairs and the test settings' concurrency (4), two requests of one pair sometimes run at
once: the server locks put them one after the other (test_same_pair.py), so every request
ends ``succeeded``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.change.helpers import PRIMARY_AFTER, SECONDARY_AFTER, sha
from tests.consumer.support import assert_depth
from tests.e2e.conftest import SSH_TIMEOUTS
from tests.e2e.support import change_ended, modify_body, slow_restart
from tests.faults.cluster_support import (
    EventLog,
    Publisher,
    WorkerProcess,
    done_ids,
    leftovers,
    restart_values,
    run_worker_process,
    start_pairs,
)
from tests.faults.report import record
from tests.fixtures.broker import unique_settings
from tests.fixtures.cluster import RabbitCluster
from tests.fixtures.sshd import LocalHostsFactory
from worker.consumer.connect import connect_with_retry
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import Restart
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: How many modifies the cluster test publishes, and over how many pairs.
REQUESTS = int(os.environ.get("DHCP_FAILOVER_FAULT_REQUESTS", "500"))
PAIRS = int(os.environ.get("DHCP_FAILOVER_FAULT_PAIRS", "8"))


NOT_SETTLED = "request not settled: the channel is gone and the broker will redeliver it"


def fault_settings(amqp_url: str, requests: int) -> Settings:
    return unique_settings(amqp_url).model_copy(
        update={
            **SSH_TIMEOUTS,
            "lock_timeout": 60.0,
            "delivery_limit": 5,  # the contract's default: every fault returns what is in flight
            "journal_retention": requests + 10,  # every done record kept: "applied once" is read
        }
    )


async def worker_node(cluster: RabbitCluster, worker: WorkerProcess, within: float = 60) -> str:
    """The node the worker's main connection is on, once it has exactly one."""
    deadline = time.monotonic() + within
    while True:
        nodes = await asyncio.to_thread(cluster.connection_nodes, worker.connection_name)
        if len(nodes) == 1:
            return nodes[0]
        assert worker.process.poll() is None, worker.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"worker connections on {nodes} after {within}s"
        await asyncio.sleep(0.5)


async def moved_off(cluster: RabbitCluster, worker: WorkerProcess, node: str) -> str:
    deadline = time.monotonic() + 60
    while (now := await worker_node(cluster, worker)) == node:
        assert time.monotonic() < deadline, f"the worker is still on {node}"
        await asyncio.sleep(0.5)
    return now


@pytest.mark.timeout(600)
async def test_a_node_lost_under_load_loses_no_request_and_applies_none_twice(
    rabbit_cluster: RabbitCluster, local_hosts: LocalHostsFactory, tmp_path: Path
) -> None:
    cluster = rabbit_cluster
    by_node = {n.name: n for n in cluster.nodes}
    settings = fault_settings(cluster.amqp_url, REQUESTS)
    pairs, hosts = start_pairs(local_hosts, PAIRS)
    tag = secrets.token_hex(4)
    values = {f"fault-{tag}-{i}": (20000 + i, 600 + i) for i in range(REQUESTS)}
    pair_of = {rid: pairs[i % PAIRS] for i, rid in enumerate(values)}
    faults: list[tuple[str, str, float]] = []  # what, node, seconds since the worker started

    ours = await connect_with_retry(cluster.urls, startup_timeout=30, connection_name=tag)
    reconnects: list[object] = []
    ours.reconnect_callbacks.add(lambda connection: reconnects.append(connection))
    async with ours:
        log = await EventLog().start(ours, settings, f"{settings.event_exchange}.tap")
        # The request and dead-letter queues: quorum queues with a member on every node.
        for queue in (settings.request_queue, settings.dead_letter_queue):
            members = await asyncio.to_thread(cluster.queue_members, cluster.nodes[0], queue)
            assert sorted(members) == sorted(by_node), (queue, members)

        worker = run_worker_process(settings, hosts.inventory_path, tmp_path / "worker.log")
        publisher = Publisher(ours, settings)
        started = time.monotonic()

        async def publish_all() -> None:
            for i, (rid, (port, mclt)) in enumerate(values.items()):
                await publisher.publish(pair_of[rid].body(rid, port, mclt))
                if i % 25 == 24:
                    await asyncio.sleep(2.5)  # ~10/s, about what the worker does: over the faults

        async def progress(share: float = 0.0, more: int = 0) -> None:
            """Until a share of all requests, or ``more`` than now, have their events."""
            target = max(int(REQUESTS * share), len(log.request_ids()) + more)
            try:
                await log.wait_for(min(target, REQUESTS), within=300)
            except AssertionError as exc:  # what an investigation needs first
                if publishing.done() and publishing.exception() is not None:
                    raise AssertionError("the test's publisher failed") from publishing.exception()
                answered = log.request_ids()
                missing = [r for r in publisher.confirmed if r not in answered]
                notable = [
                    e
                    for e in worker.events()
                    if e.get("level") in ("warning", "error") or "broker" in str(e.get("event"))
                ]
                raise AssertionError(
                    f"{exc}; confirmed {len(publisher.confirmed)}, published tries "
                    f"{publisher.retries}, unanswered {missing[:10]}, faults {faults}, worker "
                    f"alive {worker.process.poll() is None}; last notable worker lines: "
                    f"{notable[-15:]}"
                ) from None

        def note(what: str, node: str) -> None:
            faults.append((what, node, round(time.monotonic() - started, 1)))

        publishing = asyncio.create_task(publish_all())
        try:
            # 1. stop_app on the worker's node: it goes on on another; the node comes back.
            await progress(1 / 8)
            first = await worker_node(cluster, worker)
            note("stop_app", first)
            await asyncio.to_thread(cluster.stop_app, by_node[first])
            note("worker moved to", await moved_off(cluster, worker, first))
            await progress(more=5)
            await asyncio.to_thread(cluster.start_app, by_node[first])
            note("start_app", first)

            # 2. SIGKILL of the node the worker is on now; it moves on; the node restarts.
            await progress(3 / 8)
            second = await worker_node(cluster, worker)
            # Only once the stopped node's queue members have caught up: killing a node the
            # quorum still needs would measure RabbitMQ's recovery, not the worker.
            await asyncio.to_thread(cluster.await_not_quorum_critical, by_node[second])
            note("kill -9", second)
            await asyncio.to_thread(cluster.kill, by_node[second])
            note("worker moved to", await moved_off(cluster, worker, second))
            await progress(more=5)
            await asyncio.to_thread(cluster.start, by_node[second])
            note("restarted", second)

            # 3. Every connection closed: the worker's, the publisher's, the event log's.
            await progress(5 / 8)
            note("close_all_connections", "every node")
            await asyncio.to_thread(cluster.close_all_connections)
            note("worker back on", await worker_node(cluster, worker))

            await publishing
            await progress(1)
            note("all answered", "")
            for pair in pairs:
                await change_ended(hosts.hosts[pair.primary], hosts.hosts[pair.secondary])
            await assert_depth(ours, settings.request_queue, 0, within=30)
            await assert_depth(ours, settings.dead_letter_queue, 0)
        finally:
            publishing.cancel()
            status = await asyncio.to_thread(worker.stop)
        elapsed = time.monotonic() - started

    # Every confirmed request, and nothing else, has events; all events of one request have
    # one id (so one outcome): a duplicate is only the same event again.
    assert sorted(publisher.confirmed) == sorted(values)
    ids: dict[str, set[str]] = {}
    for message_id, raw in log.messages:
        assert message_id == raw["id"]
        ids.setdefault(raw["data"]["requestId"], set()).add(raw["id"])
    assert set(ids) == set(values)
    assert {rid: found for rid, found in ids.items() if len(found) != 1} == {}
    outcome = {raw["data"]["requestId"]: raw["data"] for _, raw in log.messages}
    succeeded = {rid for rid, data in outcome.items() if data["outcome"] == "succeeded"}
    # Two requests of one pair planned at once are applied one after the other: all succeed.
    refused = {rid: data for rid, data in outcome.items() if rid not in succeeded}
    assert {rid: (data["outcome"], data["error"]) for rid, data in refused.items()} == {}
    # What each event says was applied is what its request asked for.
    for _, raw in log.messages:
        rid = raw["data"]["requestId"]
        if rid in succeeded:
            want = {k: sha(v) for k, v in pair_of[rid].expected(*values[rid]).items()}
            got = {s["name"]: s["sha256After"] for s in raw["data"]["servers"]}
            assert got == want, rid

    # Applied exactly once each (a restart per server), in some serial order per pair, the
    # last one live; a refused one never. One done record per request and server at most.
    for pair in pairs:
        mine = {rid: v for rid, v in values.items() if pair_of[rid] == pair}
        applied_here = sorted(set(mine) & succeeded)
        for server, applied in restart_values(hosts, pair, mine).items():
            assert sorted(applied) == applied_here, (server, Counter(applied).most_common(3))
            live = hosts.hosts[server].config_bytes().decode()
            assert live == pair.expected(*mine[applied[-1]])[server], server
            records = Counter(done_ids(hosts, server))
            assert set(applied_here) <= set(records) <= set(mine), server
            assert max(records.values()) == 1, (server, records.most_common(3))
    assert leftovers(hosts) == {}

    # The faults did reach the worker (and this test's own connection), and it came through
    # them in one piece.
    assert reconnects, "close_all_connections did not reach the event log's connection"
    assert status == 0, worker.log.read_text()[-3000:]
    assert worker.count("broker connection lost; the next attempt goes to another node") >= 4
    crashed = [e for e in worker.events() if str(e.get("logger")).startswith("worker.")]
    assert [e for e in crashed if "exception" in e or e["event"] == "request task failed"] == []
    record(
        "RabbitMQ cluster (3 nodes) under load",
        f"{REQUESTS} modifies over {PAIRS} pairs: stop_app of the worker's node, kill -9 of "
        "the next, close_all_connections",
        f"succeeded {len(succeeded)} of {REQUESTS}, each applied once",
        requests=REQUESTS,
        faults=3,
    )
    print(
        f"\n{REQUESTS} requests over {PAIRS} pairs in {elapsed:.1f}s; faults {faults}; "
        f"succeeded {len(succeeded)}; "
        f"publisher retries {publisher.retries}, waits {publisher.slow}; test connection "
        f"reconnects {len(reconnects)}; event messages {len(log.messages)}; "
        f"worker: {worker.count('request received')} deliveries, "
        f"{worker.count('result not confirmed; the request will be redelivered')} unconfirmed, "
        f"{worker.count(NOT_SETTLED)} not settled"
    )


@pytest.mark.timeout(240)
async def test_a_single_broker_restarted_during_a_change_ends_it_once(
    rabbit_node: RabbitCluster, local_hosts: LocalHostsFactory, tmp_path: Path
) -> None:
    (node,) = rabbit_node.nodes
    settings = fault_settings(node.url, 1)
    hosts = local_hosts(sample_configs(), addresses=SAMPLE_ADDRESSES)
    begun = slow_restart(hosts, PRIMARY, 4)  # the primary's restart: the broker goes then
    tag = secrets.token_hex(4)
    request_id = f"restart-{tag}"

    ours = await connect_with_retry(node.url, startup_timeout=30, connection_name=f"test {tag}")
    async with ours:
        log = await EventLog().start(ours, settings, f"{settings.event_exchange}.tap")
        worker = run_worker_process(settings, hosts.inventory_path, tmp_path / "worker.log")
        try:
            await worker_node(rabbit_node, worker)
            await Publisher(ours, settings).publish(modify_body(request_id, Mclt=1800, Port=648))
            deadline = time.monotonic() + 60
            while not begun.exists():
                assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
                await asyncio.sleep(0.05)
            await asyncio.to_thread(rabbit_node.stop_app, node)
            try:
                # The change goes on over SSH; its event cannot be published meanwhile.
                await change_ended(*hosts.hosts.values(), within=60)
                await asyncio.sleep(2)
            finally:
                await asyncio.to_thread(rabbit_node.start_app, node)
            await log.wait_for(1, within=90)
            await assert_depth(ours, settings.request_queue, 0, within=30)
            await assert_depth(ours, settings.dead_letter_queue, 0)
        finally:
            status = await asyncio.to_thread(worker.stop)

    assert {m for m, _ in log.messages} == {f"{request_id}/succeeded"}
    assert hosts.hosts[PRIMARY].config_bytes() == PRIMARY_AFTER.encode()
    assert hosts.hosts[SECONDARY].config_bytes() == SECONDARY_AFTER.encode()
    for name, text in ((PRIMARY, PRIMARY_AFTER), (SECONDARY, SECONDARY_AFTER)):
        assert hosts.hosts[name].restarts() == [Restart("ok", sha(text))], name  # once
    assert done_ids(hosts, PRIMARY) == done_ids(hosts, SECONDARY) == [request_id]
    assert leftovers(hosts) == {}
    assert status == 0, worker.log.read_text()[-3000:]
    # The broker really went away mid-change: the first event was not confirmed, and the
    # request came back and was answered from its recorded outcome.
    assert worker.count("request received") >= 2, worker.log.read_text()[-3000:]
    assert worker.count("result not confirmed; the request will be redelivered") >= 1
    record("single broker stop_app mid-change", "during the primary's restart", "succeeded")
