"""Poison and volume on a live worker (issue 11, part 5): the intake fuzz on the real broker.

A real ``dhcp-failover-worker run`` process, the real RabbitMQ, a real sshd pair behind it:

* **Fuzz**: :data:`FUZZ_COUNT` deliveries drawn from the intake fuzz's strategies
  (tests/consumer/payloads.py) plus what only a broker carries: huge bodies, content types,
  header tables of every AMQP type, absent or absurd ``message_id``, routing keys, forged
  ``reply_to``. Published with confirms (and ``mandatory``) while the worker consumes. Each
  delivery's fate is computed beforehand with the worker's own ``read_delivery``: its event
  (``<key>/<outcome>``, its AMQP ``correlation_id``, its ``error.code``) and whether it is
  dead-lettered (contract §7.2). Required: the worker never dies or stops consuming, the
  request queue drains, the events are exactly the expected ones (as a multiset; most
  deliveries carry a unique ``correlation_id``, which makes those one-to-one), the dead-letter
  queue holds exactly the unreadable ones, each rejected once (``x-death`` reason
  ``rejected``, count 1), nothing was redelivered, and no server was touched.
* **Properties that are not UTF-8** (``message_id``, ``correlation_id``, ``reply_to``,
  ``content_type``, a header name): read with ``surrogateescape`` and treated as absent
  (worker/consumer/amqp_text.py), so each such delivery is answered like any other, and the
  requests prefetched beside it too. (pamqp's strict UTF-8 used to drop the worker's
  connection at each one, and the delivery limit then dead-lettered the whole prefetch
  window unanswered.)
* **Volume**: :data:`VOLUME` valid dry runs over a few real sshd pairs, all queued before the
  worker starts: each answered by exactly one ``succeeded`` event; the worker's RSS sampled
  throughout and printed (start/peak/end), bounded only against gross leaks.

Helpers in tests/faults/live_support.py. :data:`FUZZ_COUNT` (10,000) runs in CI too: the
file takes about 2 minutes on two cores (the fuzz 60-80 s, half of it generating; the two
undecodable tests 17 s each; the volume 30 s)::

    export DHCP_FAILOVER_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/
    .venv/bin/python -m pytest -q -p no:cacheprovider -s tests/faults/test_live_fuzz.py

``-s`` shows the figures (counts, wall times, the worker's RSS).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.support import (
    EventTap,
    assert_depth,
    check_event_message,
    consumer_count,
    publish_raw,
)
from tests.e2e.test_worker_process import until_consuming
from tests.faults.cluster_support import run_worker_process, start_pairs
from tests.faults.live_support import (
    CASES,
    DROPPED,
    Case,
    assert_untouched,
    code_of,
    collect_events,
    draw,
    expected,
    publish_all,
    read_dead_letters,
    sampled,
    tag,
    undecodable_case,
    worker_errors,
)
from tests.faults.report import record
from tests.fixtures.sshd import LocalHostsFactory
from worker.settings import Settings

#: Fuzzed deliveries of one run: 10,000 (60-80 s here, half of it generating);
#: ``DHCP_FAILOVER_LIVE_FUZZ_COUNT`` sets another count.
FUZZ_COUNT = int(os.environ.get("DHCP_FAILOVER_LIVE_FUZZ_COUNT", "10000"))
#: Valid requests queued at once for the volume test.
VOLUME = 1_000
#: Pairs the volume is spread over.
VOLUME_PAIRS = 4

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(600)]


async def test_fuzzed_deliveries_each_end_in_their_one_outcome_on_a_live_worker(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    cases = tag(await asyncio.to_thread(draw, CASES, FUZZ_COUNT))
    fates = [expected(case) for case in cases]
    generated = time.monotonic()
    _, hosts = start_pairs(local_hosts, 1)
    before = {name: host.config_bytes() for name, host in hosts.hosts.items()}
    worker = run_worker_process(broker_settings, hosts.inventory_path, tmp_path / "worker.log")
    try:
        await until_consuming(worker, amqp, broker_settings)
        async with sampled(worker) as memory:
            publishing = asyncio.create_task(asyncio.to_thread(publish_all, broker_settings, cases))
            events = await collect_events(tap, worker, lambda e: len(e) >= len(cases))
            await publishing
            await assert_depth(amqp, broker_settings.request_queue, 0, within=30)
            assert await consumer_count(amqp, broker_settings.request_queue) == 1
        status = await asyncio.to_thread(worker.stop)
    finally:
        await asyncio.to_thread(worker.stop)
    await assert_depth(amqp, broker_settings.request_queue, 0)  # none was left unacked
    dead = await asyncio.to_thread(read_dead_letters, broker_settings)
    ended = time.monotonic()

    checked = [check_event_message(message) for message in events]
    seen = Counter((c.event.id, c.message.correlation_id, code_of(c)) for c in checked)
    want = Counter(fate.event for fate in fates)
    dead_indices = Counter(d.index for d in dead)
    want_dead = {i for i, fate in enumerate(fates) if fate.dead}
    codes = Counter(fate.event[2] for fate in fates)
    print(
        f"\nlive fuzz: {len(cases)} deliveries ({sum(len(c.body) for c in cases) // 2**20} MiB), "
        f"{len(events)} events ({sum(c.event.data.outcome == 'rejected' for c in checked)} "
        f"rejected), {len(dead)} dead-lettered; generated in {generated - began:.0f} s, "
        f"published and answered in {ended - generated:.0f} s; {memory.figures()}; "
        f"codes {dict(codes.most_common())}"
    )
    assert status == 0
    assert seen - want == Counter(), f"unexpected events: {list((seen - want).items())[:10]}"
    assert want - seen == Counter(), f"missing events: {list((want - seen).items())[:10]}"
    assert len(events) == len(cases)
    wrong = set(dead_indices) ^ want_dead  # None: a dead letter of no case of ours
    known = sorted(i for i in wrong if i is not None)
    assert not wrong, (known[:10], None in wrong, [cases[i].body[:200] for i in known[:3]])
    assert max(dead_indices.values(), default=1) == 1  # each dead-lettered once
    assert all(d.deaths == [("rejected", 1)] for d in dead), dead[:5]
    received = [e for e in worker.events() if e.get("event") == "request received"]
    assert len(received) == len(cases)
    assert not [e for e in received if e.get("redelivered")]  # no loop to stop
    assert not worker_errors(worker), worker_errors(worker)[:5]
    assert_untouched(hosts, before, memory)
    record(
        "poison: fuzzed deliveries on a live worker",
        f"{len(cases)} payloads",
        "rejected each; unreadable ones dead-lettered once",
        payloads=len(cases),
        requests=len(cases),
        faults=len(cases),
    )


async def test_deliveries_with_properties_that_are_not_utf8_are_answered_like_any_other(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    # Two prefetch windows of them, queued before the worker starts (the tap declared the
    # queue). pamqp's strict UTF-8 used to drop the connection at each one, returning every
    # unsettled delivery with it until the delivery limit took them all, unanswered.
    cases = await asyncio.to_thread(draw, undecodable_case(), 2 * broker_settings.prefetch)
    fates = [expected(case) for case in cases]
    await asyncio.to_thread(publish_all, broker_settings, cases)
    _, hosts = start_pairs(local_hosts, 1)
    worker = run_worker_process(broker_settings, hosts.inventory_path, tmp_path / "worker.log")
    try:
        events = await collect_events(tap, worker, lambda e: len(e) >= len(cases))
        await assert_depth(amqp, broker_settings.request_queue, 0, within=30)
        status = await asyncio.to_thread(worker.stop)
    finally:
        await asyncio.to_thread(worker.stop)
    dead = await asyncio.to_thread(read_dead_letters, broker_settings)

    drops = [  # the consuming connection's (a forged reply_to may close the reply one)
        e
        for e in worker.events()
        if e.get("event") == DROPPED and "UnicodeDecodeError" in str(e.get("exception"))
    ]
    print(f"\nnot UTF-8: {len(cases)} deliveries, {len(drops)} connection drops, dead {dead}")
    checked = [check_event_message(message) for message in events]
    seen = Counter((c.event.id, c.message.correlation_id, code_of(c)) for c in checked)
    assert seen == Counter(fate.event for fate in fates)
    assert sorted(d.index or 0 for d in dead) == [i for i, f in enumerate(fates) if f.dead]
    assert all(d.deaths == [("rejected", 1)] for d in dead), dead  # no delivery limit
    assert drops == []
    assert status == 0
    record("poison: properties that are not UTF-8", f"{len(cases)} deliveries", "rejected, each")


async def test_requests_prefetched_with_an_undecodable_delivery_are_still_answered(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    [bad] = await asyncio.to_thread(draw, undecodable_case(), 1)
    behind = [
        Case(
            body=b"{}",
            routing_key="request.modify",
            message_id=f"behind-{n}",
            correlation_id=None,
            reply_to=None,
            content_type="application/json",
            headers={},
            tagged=False,
        )
        for n in range(1, broker_settings.prefetch)
    ]
    await asyncio.to_thread(publish_all, broker_settings, [bad, *behind])  # one window
    _, hosts = start_pairs(local_hosts, 1)
    worker = run_worker_process(broker_settings, hosts.inventory_path, tmp_path / "worker.log")
    try:
        events = await collect_events(tap, worker, lambda e: len(e) >= len(behind) + 1)
        await assert_depth(amqp, broker_settings.request_queue, 0, within=30)
    finally:
        await asyncio.to_thread(worker.stop)
    dead = await asyncio.to_thread(read_dead_letters, broker_settings)

    print(f"\nbehind an undecodable delivery: events {[m.message_id for m in events]}, {dead}")
    answered = sorted(str(m.message_id) for m in events)
    assert answered == sorted(
        [expected(bad).event[0], *(f"behind-{n}/rejected" for n in range(1, 8))]
    )
    assert [d.index for d in dead] == ([0] if expected(bad).dead else [])
    record("poison beside valid requests", "1 undecodable + 7 prefetched", "all 8 answered")


async def test_a_thousand_requests_queued_at_once_are_each_answered_once_in_bounded_memory(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,
    tmp_path: Path,
) -> None:
    pairs, hosts = start_pairs(local_hosts, VOLUME_PAIRS)
    before = {name: host.config_bytes() for name, host in hosts.hosts.items()}
    ids = {}
    for n in range(VOLUME):  # queued before the worker starts (the tap declared the queue)
        pair = pairs[n % len(pairs)]
        request_id = f"volume-{n:04d}"
        body = pair.body(request_id, port=647, mclt=600 + n) | {"dryRun": True}
        await publish_raw(amqp, broker_settings, body, message_id=request_id)
        ids[f"{request_id}/succeeded"] = pair
    await assert_depth(amqp, broker_settings.request_queue, VOLUME)
    began = time.monotonic()
    worker = run_worker_process(broker_settings, hosts.inventory_path, tmp_path / "worker.log")
    try:
        await until_consuming(worker, amqp, broker_settings)
        async with sampled(worker) as memory:
            events = await collect_events(tap, worker, lambda e: len(e) >= VOLUME)
            await assert_depth(amqp, broker_settings.request_queue, 0)
        status = await asyncio.to_thread(worker.stop)
    finally:
        await asyncio.to_thread(worker.stop)
    took = time.monotonic() - began

    checked = [check_event_message(message) for message in events]
    print(f"\nvolume: {VOLUME} dry runs answered in {took:.0f} s; {memory.figures()}")
    assert Counter(c.event.id for c in checked) == Counter(ids.keys()), Counter(
        code_of(c) or c.event.data.outcome for c in checked
    )
    for c in checked:  # each planned, staged and checked by dhcpd on its own pair
        pair = ids[c.event.id]
        assert c.event.data.dryRun
        servers = [(s.name, s.changed) for s in c.event.data.servers]
        assert servers == [(pair.primary, True), (pair.secondary, False)], c.raw
    assert status == 0
    assert_untouched(hosts, before, memory)
    record(
        "volume: requests queued at once",
        f"{VOLUME} dry runs over {VOLUME_PAIRS} pairs; {memory.figures()}",
        "succeeded, each once",
        requests=VOLUME,
        faults=0,
    )
