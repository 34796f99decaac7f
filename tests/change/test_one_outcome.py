"""One outcome per request id, ever, and a finished change never blocks a later one.

Each test reproduces a defect found by review: a lost done-record write that locked a
server out, a pruned record that turned a leftover journal into an unfinished change, a
redelivery that waited for its own run and invented ``lock_timeout``, and a kill just after
the announcement that restarted both servers again and could reverse a published success.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.change.conftest import World, in_dir
from tests.change.helpers import (
    PRIMARY_AFTER,
    SECONDARY_AFTER,
    SimulatedCrash,
    done_records,
    journals,
    modify_request,
    remove_request,
    without_durations,
)
from worker.change.coordinator import ChangeOptions, execute
from worker.change.inflight import InFlight
from worker.demo import PRIMARY, SECONDARY
from worker.errors import RemoteFileError
from worker.messages import Outcome, ResultData

pytestmark = pytest.mark.timeout(20)


def refuse_done_records(world: World, server: str) -> None:
    """That server's done-record writes fail, as a transient SFTP error would."""
    world.hosts[server].refuse_write = lambda path: "/.dhcp-failover-done." in path


def accept_writes(world: World) -> None:
    for host in world.hosts.values():
        host.refuse_write = lambda path: False


def records_of(world: World, server: str, request_id: str) -> tuple[list[str], list[str]]:
    """(running journals, done records) of ``request_id`` on ``server``."""
    names = [n for n in in_dir(world.hosts[server]) if f".{request_id}.json" in n]
    return journals(names), done_records(names)


# -- a lost done-record write ------------------------------------------------------------------


async def test_a_lost_done_record_write_does_not_lock_the_server_out(world: World) -> None:
    refuse_done_records(world, SECONDARY)
    first = await execute(modify_request(), "req-1", world.fleet)
    accept_writes(world)
    assert first.outcome is Outcome.succeeded, first.error
    assert records_of(world, SECONDARY, "req-1")[0]  # only its running journal is left there

    later = await execute(modify_request("req-2", Mclt=900), "req-2", world.fleet)

    assert later.outcome is Outcome.succeeded, later.error
    assert b"mclt 900;" in world.primary.config
    running, done = records_of(world, SECONDARY, "req-1")
    assert running == [] and len(done) == 1  # completed from the primary's record


async def test_a_redelivery_completes_the_bookkeeping_a_lost_write_left(world: World) -> None:
    refuse_done_records(world, SECONDARY)
    first = await execute(modify_request(), "req-1", world.fleet)
    accept_writes(world)
    restarts = world.primary.restart_count(), world.secondary.restart_count()

    again = await execute(modify_request(), "req-1", world.fleet)

    assert without_durations(again) == without_durations(first)
    assert (world.primary.restart_count(), world.secondary.restart_count()) == restarts
    for server in (PRIMARY, SECONDARY):
        running, done = records_of(world, server, "req-1")
        assert running == [] and len(done) == 1, server


async def test_a_redelivered_remove_completes_the_partners_bookkeeping(world: World) -> None:
    # Remove names one server; its partner comes from the config. A done record lost on
    # the partner used to be invisible to the redelivery, which looked on Server only.
    refuse_done_records(world, SECONDARY)
    first = await execute(remove_request(server=PRIMARY), "req-rm", world.fleet)
    accept_writes(world)
    assert first.outcome is Outcome.succeeded, first.error

    again = await execute(remove_request(server=PRIMARY), "req-rm", world.fleet)

    assert without_durations(again) == without_durations(first)
    running, done = records_of(world, SECONDARY, "req-rm")
    assert running == [] and len(done) == 1


async def test_a_remove_cut_off_with_only_the_partners_journal_leaves_none_behind(
    world: World,
) -> None:
    # The servers prepare at once, so a run can die with its journal written on the partner
    # only. The redelivery's lookup before the plan looks on Server alone and finds nothing;
    # the one under the locks must find the partner's journal and drop it (it used to stay).
    world.primary.crash_at = lambda op: op[0] == "write" and "/.dhcp-failover-journal." in op[1]
    with pytest.raises(SimulatedCrash):
        await execute(remove_request(server=PRIMARY), "req-rm", world.fleet)
    world.primary.crash_at = lambda op: False
    await asyncio.sleep(0.01)  # the partner's prepare, still under way, ends
    assert records_of(world, PRIMARY, "req-rm") == ([], [])
    assert records_of(world, SECONDARY, "req-rm")[0]  # journaled there only

    again = await execute(remove_request(server=PRIMARY), "req-rm", world.fleet)

    assert again.outcome is Outcome.succeeded, again.error
    for server in (PRIMARY, SECONDARY):
        running, done = records_of(world, server, "req-rm")
        assert running == [] and len(done) == 1, (server, running, done)


async def test_pruning_never_turns_a_leftover_journal_into_an_unfinished_change(
    world: World,
) -> None:
    # req-1's running journal could not be removed on the secondary (its done record is
    # there). With one done record kept, the next change prunes req-1's record: it must
    # take the leftover journal with it, or the one after is locked out for good.
    remove = world.secondary.remove

    async def journal_removal_fails(path: str) -> None:
        if ".dhcp-failover-journal." in path and ".req-1." in path:
            raise RemoteFileError(f"{SECONDARY}: remove {path}: failure")
        await remove(path)

    world.secondary.remove = journal_removal_fails  # type: ignore[method-assign]
    keep_one = ChangeOptions(journal_retention=1)
    assert (await execute(modify_request(), "req-1", world.fleet, keep_one)).outcome is (
        Outcome.succeeded
    )
    world.secondary.remove = remove  # type: ignore[method-assign]

    outcomes = [  # each changes both servers, so each prunes the secondary
        (await execute(modify_request(rid, Port=port), rid, world.fleet, keep_one)).outcome
        for rid, port in (("req-2", 649), ("req-3", 650), ("req-4", 651))
    ]

    assert outcomes == [Outcome.succeeded] * 3
    assert journals(in_dir(world.secondary)) == []
    assert b"port 651;" in world.secondary.config


# -- a kill right after the outcome went out -------------------------------------------------


async def test_a_kill_just_after_announcing_success_never_restarts_or_reverses_it(
    world: World,
) -> None:
    announced: list[ResultData] = []

    def publish_then_die(result: ResultData) -> None:
        announced.append(result)
        raise SimulatedCrash("worker killed right after the event went out")

    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-1", world.fleet, announce=publish_then_die)
    (published,) = announced
    assert published.outcome is Outcome.succeeded
    restarts = world.primary.restart_count(), world.secondary.restart_count()
    world.secondary.fail_restart = True  # a restart now would fail and roll back

    again = await execute(modify_request(), "req-1", world.fleet)

    assert without_durations(again) == without_durations(published)
    assert (world.primary.restart_count(), world.secondary.restart_count()) == restarts
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.secondary.config == SECONDARY_AFTER.encode()


# -- two deliveries of one request at once -----------------------------------------------------


async def test_a_copy_waiting_for_its_own_requests_locks_answers_with_that_outcome(
    world: World,
) -> None:
    # A redelivery (another worker, say) arrives while the first run restarts the secondary
    # for longer than the lock timeout: it must wait for that run's outcome, not publish
    # failed/lock_timeout for the same request id.
    gate = asyncio.Event()
    world.secondary.restart_gate = gate
    quick = ChangeOptions(lock_timeout=0.05)
    first = asyncio.ensure_future(execute(modify_request(), "req-1", world.fleet, quick))
    await asyncio.wait_for(world.secondary.restart_entered.wait(), 5)
    copy = asyncio.ensure_future(execute(modify_request(), "req-1", world.fleet, quick))
    await asyncio.sleep(0.5)  # ten lock timeouts
    assert not copy.done()

    gate.set()
    results = await asyncio.gather(first, copy)

    assert [r.outcome for r in results] == [Outcome.succeeded, Outcome.succeeded]
    assert without_durations(results[1]) == without_durations(results[0])
    assert world.secondary.restart_count() == 1


async def test_a_lock_timeout_on_another_requests_change_still_fails(world: World) -> None:
    gate = asyncio.Event()
    world.secondary.restart_gate = gate
    quick = ChangeOptions(lock_timeout=0.05)
    first = asyncio.ensure_future(execute(modify_request(), "req-1", world.fleet, quick))
    await asyncio.wait_for(world.secondary.restart_entered.wait(), 5)

    other = await execute(modify_request("req-2", Mclt=900), "req-2", world.fleet, quick)
    gate.set()
    await first

    assert other.outcome is Outcome.failed
    assert other.error is not None and other.error.code in ("lock_timeout", "unfinished_change")


async def test_two_deliveries_in_one_process_share_one_run(world: World) -> None:
    # A dry run leaves no journal, so only sharing the run in the process can stop its copy
    # from timing out on the locks the first holds while it validates.
    gate = asyncio.Event()
    validate = world.secondary.validate

    async def slow_validate(path: str) -> Any:
        await gate.wait()
        return await validate(path)

    world.secondary.validate = slow_validate  # type: ignore[method-assign]
    quick = ChangeOptions(lock_timeout=0.05)
    inflight = InFlight()
    request = modify_request(dry_run=True)

    def start() -> Any:
        return execute(request, "req-dry", world.fleet, quick)

    first = asyncio.ensure_future(inflight.run("req-dry", start))
    await asyncio.sleep(0.05)
    copy = asyncio.ensure_future(inflight.run("req-dry", start))
    await asyncio.sleep(0.3)
    gate.set()
    results = await asyncio.gather(first, copy)

    assert [r.outcome for r in results] == [Outcome.succeeded, Outcome.succeeded]
    assert results[0] is results[1]
    assert "req-dry" not in inflight


async def test_a_joined_delivery_runs_the_request_itself_when_the_first_was_cancelled() -> None:
    inflight = InFlight()
    calls: list[str] = []
    blocked = asyncio.Event()

    async def start() -> ResultData:
        calls.append("run")
        if len(calls) == 1:
            await blocked.wait()  # cancelled here
        return ResultData(requestId="r", command=None, outcome=Outcome.succeeded)

    first = asyncio.ensure_future(inflight.run("r", start))
    await asyncio.sleep(0)
    copy = asyncio.ensure_future(inflight.run("r", start))
    await asyncio.sleep(0)
    first.cancel()
    result = await copy

    assert result.outcome is Outcome.succeeded and calls == ["run", "run"]
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_an_outcome_no_server_would_record_is_tried_twice_then_still_published(
    world: World,
) -> None:
    attempts: list[str] = []
    for server in (PRIMARY, SECONDARY):
        host = world.hosts[server]

        def refuse(path: str, name: str = server) -> bool:
            if "/.dhcp-failover-done." in path:
                attempts.append(name)
                return True
            return False

        host.refuse_write = refuse
    announced: list[ResultData] = []

    result = await execute(modify_request(), "req-1", world.fleet, announce=announced.append)

    assert result.outcome is Outcome.succeeded, result.error
    assert [r.outcome for r in announced] == [Outcome.succeeded]
    assert sorted(attempts) == [PRIMARY, PRIMARY, SECONDARY, SECONDARY]
    assert world.locked() == []
