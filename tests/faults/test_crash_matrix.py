"""The crash matrix (issue 11, faults 1 and 2): a worker SIGKILLed, or its SSH connections
cut, at each step of a change; modify, remove with Disable, remove with Delete.

Each case runs a real ``dhcp-failover-worker run`` subprocess against the real broker and the
sshd stand-ins of :mod:`worker.demo.localhosts` (real ``dhcpd -t``), with
``DHCP_FAILOVER_FAULT_AT`` naming the step (worker/change/faults.py: no timing guesses).

* **Killed** (fault 1): the worker kills itself with SIGKILL at the step (its last log line
  says so) and the pair is checked to be where that step leaves it (:data:`MIDWAY`); then a
  new worker (no fault) gets the redelivered request. Required: the request ends (one
  terminal event, any repeat an identical duplicate, and the request acked: the queue is
  empty once the worker stops); both live files all old or all new, each server last
  restarted on what it holds; no staged file, running journal or held lock left. Every kill
  ends ``succeeded`` with the pair all new: before the commit the redelivery plans afresh,
  during it the journals roll it forward, after the done records it answers from them.
* **Cut** (fault 2): a TCP proxy between the worker and each sshd; the worker pauses at the
  step (``DHCP_FAILOVER_FAULT_ACTION=pause``), the test drops every SSH connection and waits
  until the worker has logged each loss (``ssh.connection_lost``), the worker goes on.
  Required: before the commit ``failed`` (or ``rolled_back`` when the cut is first noticed at
  the commit's first backup), the pair all old; during it ``rolled_back``, or ``succeeded``
  when the commit finishes after a reconnect; once recorded, the recorded ``succeeded``; never
  a mixed pair, no leftovers, and a pair left old takes the change under a new request id. (The
  cut takes the change's locks with it: the worker takes them again and ends the change from
  its journals before it records or announces anything, ``LockLost`` in
  worker/change/coordinator.py.)

By default a representative subset runs (one case per step class, the operations spread
over them); ``DHCP_FAILOVER_FULL_FAULTS=1`` runs every operation x step (48 + 48 cases,
about 7 minutes on two cores)::

    export DHCP_FAILOVER_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/
    DHCP_FAILOVER_FULL_FAULTS=1 .venv/bin/python -m pytest -q -p no:cacheprovider \\
        tests/faults/test_crash_matrix.py

Both sets carry the ``faults`` marker (``-m faults`` selects them, ``-m "not faults"`` leaves
them out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.proxy import TcpProxy
from tests.consumer.support import EventTap, assert_depth
from tests.e2e.support import new_request_id
from tests.e2e.test_worker_process import settings as settings  # the fixture, on our hosts
from tests.e2e.test_worker_process import until_consuming
from tests.faults.crash_support import (
    AFTER_RECORD,
    BEFORE_COMMIT,
    MIDWAY,
    OPERATIONS,
    Midway,
    Workers,
    assert_clean,
    cases,
    killed,
    outcomes_of,
    paused,
    proxied,
    resume,
    severed,
    stopped,
    version_of_pair,
)
from tests.faults.report import Clock, record
from tests.fixtures.sshd import LocalHostsFactory
from worker.consumer.client import publish_request
from worker.demo import SAMPLE_ADDRESSES, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.messages import Outcome
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

#: One case per step class and operation: plan; prepare (one server staged, both journaled);
#: commit (the first server renamed, the second restarted); finish (recorded, published).
KILL_SUBSET = [
    ("modify", "planned"),
    ("modify", "staged:1"),
    ("remove-Disable", "journaled:2"),
    ("modify", "renamed:1"),
    ("remove-Delete", "backed_up:2"),
    ("remove-Disable", "restarted:2"),
    ("modify", "recorded"),
    ("remove-Delete", "published"),
]
CUT_SUBSET = [
    ("modify", "planned"),
    ("remove-Delete", "validated:1"),
    ("modify", "journaled:2"),
    ("remove-Disable", "renamed:1"),
    ("modify", "restarted:1"),
    ("remove-Delete", "renamed:2"),
    ("modify", "recorded"),
]


@pytest.fixture
def sample_hosts(local_hosts: LocalHostsFactory) -> LocalHosts:
    """The sample pair, with a plain login (no start-up files: each exec costs milliseconds,
    as on a typical service account), so that a case costs little beyond its two workers."""
    return local_hosts(sample_configs(), addresses=SAMPLE_ADDRESSES, plain_login=True)


@pytest.fixture
def workers(tmp_path: Path, settings: Settings, sample_hosts: LocalHosts) -> Iterator[Workers]:
    """Worker subprocesses, ended at teardown (before the hosts: it depends on them)."""
    started = Workers(settings, sample_hosts, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
async def proxies(sample_hosts: LocalHosts) -> AsyncIterator[list[TcpProxy]]:
    """A TCP proxy in front of each host's sshd, named by the inventory; closed after."""
    made = await proxied(sample_hosts)
    try:
        yield made
    finally:
        for proxy in made:
            await proxy.close()


@pytest.mark.parametrize(("operation", "step"), cases(KILL_SUBSET))
async def test_a_worker_killed_at_a_step_leaves_one_outcome_and_a_whole_pair(
    operation: str,
    step: str,
    sample_hosts: LocalHosts,
    settings: Settings,
    workers: Workers,
    amqp: AbstractConnection,
    tap: EventTap,
) -> None:
    op = OPERATIONS[operation]
    before = {n: h.config_bytes() for n, h in sample_hosts.hosts.items()}
    after = op.after()
    request_id = new_request_id(f"kill-{operation}-{step.replace(':', '-')}")
    doomed = workers.start(fault=step)
    await until_consuming(doomed, amqp, settings)

    await publish_request(settings, op.body(request_id), op.routing_key)
    await killed(doomed, step)
    clock = Clock()
    seen = Midway.seen(sample_hosts, request_id)
    assert seen.reached(MIDWAY[step]), seen  # the fault struck where its name says
    successor = workers.start()
    await until_consuming(successor, amqp, settings)  # and so gets the redelivery

    events = await outcomes_of(tap, request_id)
    seconds = clock.seconds()
    data = events[0].event.data
    assert data.outcome is Outcome.succeeded, (data.outcome, data.error)
    # Killed after the event was confirmed: the redelivery is answered again, same id.
    assert len(events) == (2 if step == "published" else 1), [e.event.id for e in events]
    assert version_of_pair(sample_hosts, before, after) == "new"
    await assert_clean(sample_hosts, request_id, "new")
    await stopped(successor)
    await assert_depth(amqp, settings.request_queue, 0)  # acked: nothing came back
    await assert_depth(amqp, settings.dead_letter_queue, 0)
    record("worker SIGKILLed", f"{operation} at {step}", data.outcome.value, seconds)


@pytest.mark.parametrize(("operation", "step"), cases(CUT_SUBSET))
async def test_ssh_cut_at_a_step_fails_before_the_commit_and_never_splits_the_pair(
    operation: str,
    step: str,
    sample_hosts: LocalHosts,
    proxies: list[TcpProxy],
    settings: Settings,
    workers: Workers,
    amqp: AbstractConnection,
    tap: EventTap,
    tmp_path: Path,
) -> None:
    op = OPERATIONS[operation]
    before = {n: h.config_bytes() for n, h in sample_hosts.hosts.items()}
    after = op.after()
    request_id = new_request_id(f"cut-{operation}-{step.replace(':', '-')}")
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    worker = workers.start(fault=step, pause_dir=pause_dir)
    await until_consuming(worker, amqp, settings)

    await publish_request(settings, op.body(request_id), op.routing_key)
    await paused(pause_dir, step, worker)
    await severed(worker, sum(proxy.cut() for proxy in proxies))
    clock = Clock()
    resume(pause_dir, step)

    data = (await outcomes_of(tap, request_id))[0].event.data
    seconds = clock.seconds()
    version = version_of_pair(sample_hosts, before, after)
    if step in AFTER_RECORD:
        allowed = {Outcome.succeeded}
    elif step == "planned":  # nothing in flight: the next step reconnects
        allowed = {Outcome.failed, Outcome.succeeded}
    elif step in BEFORE_COMMIT:  # noticed in prepare, or at the commit's first backup
        allowed = {Outcome.failed, Outcome.rolled_back}
    else:
        allowed = {Outcome.rolled_back, Outcome.succeeded}
    assert data.outcome in allowed, (data.outcome, data.error)
    assert version == ("new" if data.outcome is Outcome.succeeded else "old")
    await assert_clean(sample_hosts, request_id, version, ended_journal=step in AFTER_RECORD)
    if version == "old":  # the pair takes the same change again, under a new request id
        again = new_request_id(f"after-cut-{operation}")
        await publish_request(settings, op.body(again), op.routing_key)
        retried = (await outcomes_of(tap, again))[0].event.data
        assert retried.outcome is Outcome.succeeded, (retried.outcome, retried.error)
        assert version_of_pair(sample_hosts, before, after) == "new"
    await stopped(worker)
    await assert_depth(amqp, settings.request_queue, 0)
    await assert_depth(amqp, settings.dead_letter_queue, 0)
    record("SSH connections cut", f"{operation} at {step}", data.outcome.value, seconds)
