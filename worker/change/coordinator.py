"""The two-phase change: plan -> prepare -> commit+verify -> finish, or rollback, on N servers.

:func:`execute` is the whole story of one request and the only place its ends are decided:

=====================  ====================================================================
``rejected``           plan: unknown server, peer not found, roles/pair mismatch, bad config
``failed``             nothing live changed: unreachable (SSH or OMAPI), lock timeout, config
                       edited by hand during the change, candidate refused by ``dhcpd -t``,
                       another change unfinished on a server (``unfinished_change``)
``succeeded``          committed, restarted and verified everywhere (where ``omapi`` is set);
                       or nothing to change (nothing written); or a dry run
``rolled_back``        a commit or verify step failed; every server touched holds its old
                       file again, restarted on it where it had been; the old pair verified
``rollback_failed``    restoring failed too, or the old pair did not re-form;
                       ``error.detail.servers`` says who holds what
=====================  ====================================================================

Plan (:mod:`~worker.change.planning`) reads every server's live tree and computes the
candidates (no writes, no lock needed; the CPU work in a thread). A modify first *tries* both
its servers' locks, beside those reads (:func:`~worker.change.planning.locks_first`); where
both are free, the lookup and the plan run under them too (:func:`_locks_first`). Prepare
(:mod:`~worker.change.prepare`) holds every involved server's lock (:mod:`~worker.change.locks`:
no deadlock between changes sharing servers), checks the live bytes still match the plan,
stages each candidate beside its live file and runs the server's ``validate_command`` on it,
writes a journal on each server and reads each running dhcpd over OMAPI. Commit then goes per
server in order (:mod:`~worker.change.commit`): backup (a hard link), atomic rename, restart,
the running dhcpd verified (:mod:`~worker.change.verify`); then the pair. Finish
(:mod:`~worker.change.finish`) records the outcome in every journal (a *done record*), then
announces it (the consumer publishes it meanwhile) and removes temp files, prunes old backups
and done records (:mod:`~worker.change.resume`). Each journal directory is listed once under
the locks (and, where a lock was busy at the first try, once before them too); the listing
under them stays true while they are held (but for this change's own files).

Requests sharing servers are applied one after the other: the plan does not wait for the
locks, so a request delivered while another change of its servers commits may find, once it
holds the locks, the files changed since it read them. It then plans again under those locks, on the
files as they are (:func:`_replan_locked`): a serial order, no lost update. Only files edited
by hand again meanwhile end it in ``concurrent_change``.

Idempotency and recovery (the policy)
    A done record holds the change's outcome, and it is written before the outcome is
    announced: once an event may be out, every later run of the same request id returns that
    outcome (same ``ResultData`` but the total duration), touches no live file, and completes
    the bookkeeping on servers that kept only a running journal. A change cut off mid-commit
    (the worker died or lost its connection before any done record) is picked up by the next
    run of the same request id, under the same locks. The live files' sha256 decide
    (:mod:`~worker.change.recovery`):

    * nothing went live -> leftovers removed, the request planned afresh;
    * every live file is the old or the new version, no rollback had begun, every remaining
      candidate is intact and validates again -> **roll forward**: commit the servers still
      behind, restart every server holding a new file, verify; the outcome is the one the
      change would have had (``succeeded``, or ``rolled_back`` if a step fails now; a change
      cut off while verifying lands here too);
    * otherwise (a rollback had begun, a candidate or journal is gone, revalidation fails)
      -> **roll back**: restore the backups, restart what had been restarted;
      ``rolled_back`` (or ``rollback_failed``);
    * a live file that is neither version was edited by someone else meanwhile: nothing is
      touched and the outcome is ``rollback_failed``, for an operator.

    While a change is unfinished on a server, any *other* request touching that server fails
    with ``unfinished_change`` (nothing touched): planning on a half-changed pair is wrong,
    and finishing the old change later would overwrite the new one. Only the listing taken
    under the lock decides: a journal seen before it may belong to a change still running.
    A running journal whose change has a done record on another server is not unfinished:
    it is completed, so a finished change never blocks a later one.

    Two deliveries of one request id running at once (a redelivery after a channel blip, two
    workers on one queue) give one outcome: in one process they share one run
    (:mod:`~worker.change.inflight`); across workers the one that waits for the locks answers
    with the outcome the other recorded, and when its lock wait times out while its own
    request's journal is on a server (the other run is still at work) it waits again instead
    of inventing a ``lock_timeout``. Dry runs leave no journal: only the in-process sharing
    covers them.

    A ``failed`` outcome (nothing live changed) has no journal to hold it: it gets a done
    record of its own on the request's anchor servers that answer, before it is published
    (:func:`_ended`). A redelivery (its ack lost with a connection or a node) answers
    ``failed`` again instead of planning afresh and perhaps ending ``succeeded``; retrying is
    a new request id. ``rejected`` is not recorded: it depends on the request and the
    configs alone.

    A done record is pruned once ``journal_retention`` newer ones exist (never while a running
    journal of the same request is beside it); a request redelivered after that is planned
    afresh (and finds its change already in place).

Cancellation: until the commit starts, a cancel removes what was staged (and the journals)
and propagates. From the commit's first backup to the recorded outcome the work runs to its
end whatever happens to the caller (:func:`~worker.change.aio.run_to_end`); the cancel is
re-raised afterwards, and the next delivery of the request reads the outcome from the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from worker.change import recovery, resume
from worker.change.aio import run_to_end
from worker.change.commit import as_worker_error
from worker.change.faults import step
from worker.change.finish import record_early
from worker.change.locks import hold_locks, lost_locks, taking
from worker.change.model import ServerChange
from worker.change.planning import (
    anchors,
    check_request_id,
    locks_first,
    plan,
    plan_when_others_end,
    prefetch,
)
from worker.change.ports import Fleet
from worker.change.prepare import discard, discard_relocked, prepare
from worker.change.run import Announce, ChangeOptions, Run
from worker.change.verify import Verification
from worker.errors import (
    ConcurrentChange,
    HostKeyMismatch,
    LockLost,
    LockTimeout,
    Rejected,
    UnknownServer,
    Unreachable,
)
from worker.messages import ModifyRequest, Outcome, Phase, RemoveRequest, ResultData, WarningInfo

__all__ = ["Announce", "ChangeOptions", "Preview", "execute", "preview"]

log = structlog.stdlib.get_logger(__name__)

DEFAULT_OPTIONS = ChangeOptions()
#: Times one request takes its locks again after an SSH cut took them before it ends.
LOCK_LOST_RETRIES = 3


async def execute(
    request: ModifyRequest | RemoveRequest,
    request_id: str,
    fleet: Fleet,
    options: ChangeOptions = DEFAULT_OPTIONS,
    announce: Announce | None = None,
) -> ResultData:
    """Apply one request to every server it touches, both or neither; never raises for
    anything a request or a server can cause (``CancelledError`` does propagate)."""
    return await _execute(Run(request, request_id, options, fleet, announce))


@dataclass(frozen=True)
class Preview:
    """A dry run's result and the changes it planned, whole: each server's candidate texts
    (``ServerChange.after_texts``) and its report."""

    result: ResultData
    changes: list[ServerChange]


async def preview(
    request: ModifyRequest | RemoveRequest,
    request_id: str,
    fleet: Fleet,
    options: ChangeOptions = DEFAULT_OPTIONS,
) -> Preview:
    """Run ``request`` as a dry run (plan, lock, stage, validate, discard) and hand back what
    it planned: the offline ``plan`` command runs exactly this, on local hosts, so a plan that
    says "would apply" is the worker's own judgement."""
    dry = request if request.dry_run else request.model_copy(update={"dry_run": True})
    run = Run(dry, request_id, options, fleet)
    result = await _execute(run)
    return Preview(result, run.planned)


async def _execute(run: Run) -> ResultData:
    """Attempts until one ends; only a lock wait that timed out on our own request's change
    (another run of it is at work) starts another."""
    with structlog.contextvars.bound_contextvars(requestId=run.request_id):
        log.info("change.start", command=run.request.command, dry_run=run.request.dry_run)
        try:
            check_request_id(run.request_id)
        except Rejected as exc:
            return run.done(run.result(Outcome.rejected, [], exc))
        cuts = 0
        try:
            while True:
                try:
                    return await _ended(run, await _attempt(run))
                except LockLost as exc:  # never an outcome decided without the locks
                    cuts += 1
                    if cuts > LOCK_LOST_RETRIES:
                        error = as_worker_error(exc, Phase.prepare)
                        return await _ended(
                            run, run.result(Outcome.failed, run.planned, error, run.warnings)
                        )
                    log.warning("change.lock_lost", server=exc.server, attempt=cuts)
                    await asyncio.sleep(0.5 * cuts)
                    run.restart()  # takes the locks again; the journals say where it stood
                except LockTimeout as exc:
                    mine = await _own_change(run, exc)
                    if isinstance(mine, ResultData):
                        return run.done(mine)
                    if not mine:
                        error = as_worker_error(exc, Phase.prepare)
                        return await _ended(
                            run, run.result(Outcome.failed, run.planned, error, run.warnings)
                        )
                    log.warning(
                        "change.waiting_for_itself",
                        server=exc.server,
                        reason="another run of this request holds the locks",
                    )
                    run.restart()
        finally:
            run.drop_prefetched()  # a cancel: reads ahead nobody will use


#: Errors that say a server could not be reached: no done record is tried there.
_UNREACHED = {Unreachable.code, HostKeyMismatch.code}


async def _ended(run: Run, result: ResultData) -> ResultData:
    """The end of ``execute``. A ``failed`` outcome (nothing live changed, no journal
    holds it) gets done records of its own first (:func:`finish.record_early`), so a
    redelivery answers with it (policy in the module docstring). ``rejected`` does not:
    it contacts no server or depends on the configs alone, so a redelivery says it again."""
    if result.outcome is Outcome.failed and not run.recorded and not run.request.dry_run:
        error = result.error
        skip = error.server if error is not None and error.code in _UNREACHED else None
        await record_early(run.fleet, _known(run, anchors(run.request)), result, run.stamp, skip)
    return run.done(result)


def _known(run: Run, names: Iterable[str]) -> list[str]:
    known = []
    for name in names:
        try:
            run.fleet.host(name)
        except UnknownServer:
            continue
        known.append(name)
    return known


async def _attempt(run: Run) -> ResultData:
    """One try at the request; a :class:`LockTimeout` propagates, the caller decides."""
    async with contextlib.AsyncExitStack() as held:  # the locks taken first, if any
        try:
            if not run.request.dry_run:
                prefetch(run)  # the plan's reads travel with the lock's (or lookup's) listing
            await _locks_first(run, held)
            if not run.request.dry_run:
                previous = await resume.resume_previous(run)
                if previous is not None:
                    return previous
            return await _plan_and_change(run)
        except (LockTimeout, LockLost):
            raise
        except Exception as exc:
            return _plan_failed(run, exc)


async def _locks_first(run: Run, held: contextlib.AsyncExitStack) -> None:
    """A modify's locks, tried at once without waiting (:func:`locks_first`), held until
    ``held`` ends. If one is busy (or the server fails to answer) none is kept, and the
    request goes the usual way, where the same trouble meets it at its usual step."""
    hosts = locks_first(run)
    if not hosts:
        return
    try:
        await held.enter_async_context(hold_locks(hosts, 0.0))
    except Exception as exc:
        log.debug("lock.first_try_failed", error=str(exc) or type(exc).__name__)
        return
    run.held = frozenset(h.name for h in hosts)
    held.callback(setattr, run, "held", frozenset())  # before they are released


async def _plan_and_change(run: Run) -> ResultData:
    request = run.request
    try:
        changes, warnings = await plan_when_others_end(run)
        if run.held:
            run.locked.update(run.listings)  # listed under the locks: true while they are held
        elif not request.dry_run and not any(c.changed for c in changes):
            # Nothing to change: maybe a twin delivery of this request id applied it
            # since the lookup above. Its outcome is the answer, not a "changed: false".
            # (Not under the locks held since before the lookup: no twin ran meanwhile.)
            run.listings.clear()  # look again
            previous = await resume.resume_previous(run)
            if previous is not None:
                return previous
    except (LockTimeout, LockLost):
        raise
    except Exception as exc:
        return _plan_failed(run, exc)
    if not any(c.changed for c in changes):
        return run.result(Outcome.succeeded, changes, None, warnings)
    await step("planned")  # test-only (worker/change/faults.py)
    try:
        async with taking([c.host for c in changes], run.options.lock_timeout, run.held):
            # A twin's outcome recorded while this run waited for the locks; none can be
            # where the lookup was made under them.
            later = request.dry_run or bool(run.held)
            previous = None if later else await resume.replay(run, changes)
            if previous is not None:
                return previous
            result = await _prepare_and_commit(run, changes, warnings)
            if _overtaken(result):
                return await _replan_locked(run, changes) or result
            return result
    except (LockTimeout, LockLost):
        raise
    except Exception as exc:  # only taking a lock or reading a journal can raise here
        error = as_worker_error(exc, Phase.prepare)
        return run.result(Outcome.failed, changes, error, warnings)
    finally:
        run.drop_prefetched()


def _plan_failed(run: Run, exc: Exception) -> ResultData:
    """A plan that raised: ``rejected`` when the request is at fault, else ``failed``."""
    if isinstance(exc, Rejected):
        return run.result(Outcome.rejected, [], exc)
    return run.result(Outcome.failed, [], as_worker_error(exc, Phase.plan))


def _overtaken(result: ResultData) -> bool:
    """Prepare found the live files changed since the plan read them: most often by the
    change that held the locks this one waited for (another request for the same pair)."""
    error = result.error
    return (
        result.outcome is Outcome.failed
        and error is not None
        and error.code == ConcurrentChange.code
    )


async def _replan_locked(run: Run, held: Sequence[ServerChange]) -> ResultData | None:
    """Plan again on the files as they are now, under the locks this run still holds, and go
    on with that plan: the locks put this request after the one that overtook it (a serial
    order, no lost update). None when the new plan needs a server whose lock is not held
    (the ``concurrent_change`` stands). Only someone editing by hand can overtake it again:
    that still ends in ``concurrent_change``."""
    log.info("change.replan", reason="the live files changed while this change waited")
    run.drop_prefetched()
    run.listings.clear()
    run.locked.clear()
    try:
        changes, warnings = await plan(run)
    except (LockTimeout, LockLost):
        raise
    except Exception as exc:
        return _plan_failed(run, exc)
    if not {c.name for c in changes} <= {c.name for c in held}:
        return None
    if not any(c.changed for c in changes):
        return run.result(Outcome.succeeded, changes, None, warnings)
    return await _prepare_and_commit(run, changes, warnings)


async def _own_change(run: Run, expired: LockTimeout) -> ResultData | bool:
    """After a lock wait timed out: this request's recorded outcome, True when its change is
    under way (its journal is on a server: another run of it holds the locks), else False."""
    if run.request.dry_run:
        return False
    names = anchors(run.request)
    if expired.server is not None and expired.server not in names:
        names.append(expired.server)
    try:
        found = await recovery.find_previous(run.fleet, names, run.request_id)
    except Exception as exc:
        log.warning("journal.lookup_failed", error=str(exc))
        return False
    outcome = recovery.finished(found)
    return outcome if outcome is not None else bool(found)


async def _prepare_and_commit(
    run: Run, changes: list[ServerChange], warnings: list[WarningInfo]
) -> ResultData:
    """Under the locks: prepare (reversible), then commit and finish (shielded). Total."""
    check = Verification(run.request, changes)
    try:
        await prepare(run, changes, warnings, check)
    except asyncio.CancelledError:
        await discard(changes)
        raise
    except Exception as exc:
        error = as_worker_error(exc, Phase.prepare)
        warnings = warnings + await discard_relocked(changes, run.options.lock_timeout)
        return check.report(run.result(Outcome.failed, changes, error, warnings))
    if run.request.dry_run or (lost := lost_locks(c.host for c in changes)):
        warnings = warnings + await discard_relocked(changes, run.options.lock_timeout)
        if run.request.dry_run:
            return check.report(run.result(Outcome.succeeded, changes, None, warnings))
        error = LockLost(f"the change locks of {', '.join(lost)} were lost before the commit")
        return check.report(run.result(Outcome.failed, changes, error, warnings))
    return await run_to_end(resume.commit_and_finish(run, check, warnings))
