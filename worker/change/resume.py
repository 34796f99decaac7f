"""The ends of a change: commit, verify and roll back, record and announce; and the end of a
change an earlier run of the same request began (policy: :mod:`worker.change.coordinator`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import structlog

from worker.change import recovery
from worker.change.aio import run_to_end
from worker.change.commit import rollback_failed_error
from worker.change.faults import step
from worker.change.finish import clean_up, complete, record_outcome, servers_of
from worker.change.journal import Journal, find_journal, remove_running_journal
from worker.change.locks import refuse_without_locks, taking
from worker.change.model import ServerChange, changed_only
from worker.change.planning import anchors
from worker.change.prepare import discard
from worker.change.run import Run
from worker.change.verify import Verification
from worker.errors import WorkerError
from worker.messages import Outcome, ResultData, WarningInfo

log = structlog.stdlib.get_logger("worker.change.coordinator")


async def commit_and_finish(
    run: Run, check: Verification, warnings: list[WarningInfo], cause: WorkerError | None = None
) -> ResultData:
    """Commit and verify (unless ``cause`` says to undo instead), roll back and verify the
    old pair on failure, finish."""
    if cause is None:
        cause = await check.commit()
    if cause is None:
        outcome, error = Outcome.succeeded, None
    elif (error := await check.rollback(run.request_id, cause)) is None:
        outcome, error = Outcome.rolled_back, cause
    else:
        outcome = Outcome.rollback_failed
    return await _finish(run, check, outcome, error, warnings)


# -- a request that ran before ---------------------------------------------------------------


async def resume_previous(run: Run) -> ResultData | None:
    """The recorded outcome of this request id, or the end of a change an earlier run cut off
    (policy: :mod:`worker.change.coordinator`); None when there is nothing to pick up."""
    found = await recovery.find_previous(
        run.fleet, anchors(run.request), run.request_id, run.listings
    )
    if not found:
        return None
    if (outcome := recovery.finished(found)) is not None:
        log.info("change.replayed", outcome=outcome.outcome)
        await _complete(run, found.values(), outcome)
        return outcome
    servers = next(iter(found.values())).servers
    hosts = [run.fleet.host(n) for n in servers]
    async with taking(hosts, run.options.lock_timeout, run.held):
        return await _resume_locked(run, servers)


async def replay(run: Run, changes: Sequence[ServerChange]) -> ResultData | None:
    """Under the locks: the outcome a twin delivery of this request id recorded while this
    run waited for them (it planned on the files the twin has since changed), or the end of
    the twin's change if it was cut off meanwhile (its journal is there, its locks free).

    Every locked server is looked at, not only the anchors the lookup before the plan had: a
    remove names one server, and a run cut off in prepare may have journaled only its
    partner (the servers prepare at once). That journal is then found here, and its change
    dropped (nothing went live before every journal was written), not left behind."""
    run.locked.clear()  # listings taken under the locks: they stay true while they are held
    names = list(dict.fromkeys([*anchors(run.request), *(c.name for c in changes)]))
    found = await recovery.find_previous(run.fleet, names, run.request_id, run.locked)
    if (outcome := recovery.finished(found)) is not None:
        log.info("change.replayed", outcome=outcome.outcome, after="lock wait")
        await _complete(run, found.values(), outcome)
        return outcome
    if found:
        servers = next(iter(found.values())).servers
        if set(servers) <= {c.name for c in changes}:  # we hold every lock it needs
            return await _resume_locked(run, servers)
    return None


async def _resume_locked(run: Run, servers: list[str]) -> ResultData | None:
    """Under the locks of ``servers``: finish or undo this request's cut-off change."""
    # Read again under the locks: another run of this request may have just ended it.
    journals = dict(zip(servers, await _journals(run, servers), strict=True))
    if (outcome := recovery.finished(journals)) is not None:
        await _complete(run, journals.values(), outcome)
        return outcome
    resumed = await recovery.load(run.fleet, journals, run.request_id)
    log.warning("change.resume", verdict=resumed.verdict, reason=resumed.reason)
    if resumed.verdict == "replan":
        await discard(resumed.changes)
        run.listings.clear()  # what they listed has just been removed
        run.locked.clear()
        return None
    if resumed.verdict == "conflict":
        return await _record_conflict(run, resumed)
    cause = resumed.cause
    if resumed.verdict == "forward":
        try:
            for change in changed_only(resumed.changes):
                await recovery.validate_pending(change, run.request_id)
        except Exception as exc:
            cause = recovery.interrupted(resumed.changes, f"revalidation failed: {exc}")
    elif cause is None:
        cause = recovery.interrupted(resumed.changes, resumed.reason)
    check = Verification(run.request, resumed.changes)
    return await run_to_end(commit_and_finish(run, check, resumed.warnings, cause))


async def _journals(run: Run, servers: Sequence[str]) -> list[Journal | None]:
    hosts = [run.fleet.host(n) for n in servers]
    return list(await asyncio.gather(*(find_journal(h, run.request_id) for h in hosts)))


async def _complete(run: Run, journals: Iterable[Journal | None], outcome: ResultData) -> None:
    """Every server of an ended change gets its done record (:func:`finish.complete`)."""
    run.recorded = True
    found = [j for j in journals if j is not None]
    await complete(run.fleet, run.request_id, outcome, servers_of(found), run.listings)


async def _record_conflict(run: Run, resumed: recovery.Resumed) -> ResultData:
    """Someone edited a file mid-change: touch nothing, say so, record it."""
    for change in changed_only(resumed.changes):
        change.needs_operator = change.state() != "old" or change.restart_attempted
    cause = recovery.interrupted(resumed.changes, resumed.reason)
    headline = (
        f"an earlier run of this request was cut off mid-commit and {resumed.reason}; "
        "nothing was touched"
    )
    error = rollback_failed_error(resumed.changes, cause, headline)
    result = run.result(Outcome.rollback_failed, resumed.changes, error, resumed.warnings)
    unrecorded = await record_outcome(resumed.changes, result)
    result = run.announced(result)
    recorded = [c for c in changed_only(resumed.changes) if c.name not in unrecorded]
    await asyncio.gather(
        *(remove_running_journal(c.host, c.journal) for c in recorded if c.journal is not None),
        return_exceptions=True,
    )
    return result


# -- finish ----------------------------------------------------------------------------------


async def _finish(
    run: Run,
    check: Verification,
    outcome: Outcome,
    error: WorkerError | None,
    warnings: list[WarningInfo],
) -> ResultData:
    """The servers are in their final state: record the outcome in every journal, announce
    it, then clean up and prune. A problem after the record is only logged: every later run
    of the request answers with exactly the recorded result."""
    changes, warnings = check.changes, list(warnings)
    refuse_without_locks(c.host for c in changes)
    if outcome is not Outcome.rollback_failed:  # there, error.detail lists them per server
        warnings += [
            WarningInfo(code="rollback_problem", message=p, server=c.name)
            for c in changed_only(changes)
            for p in c.problems
        ]
    result = check.report(run.result(outcome, changes, error, warnings))
    journaled = [c.name for c in changed_only(changes) if c.journal is not None]
    unrecorded = await record_outcome(changes, result)
    if journaled and len(unrecorded) == len(journaled):  # nowhere yet: one more try
        unrecorded = await record_outcome([c for c in changes if c.name in unrecorded], result)
    refuse_without_locks(c.host for c in changes)
    await step("recorded")  # test-only (worker/change/faults.py)
    result = run.announced(result)
    # From here the outcome is final (recorded, maybe published): what goes wrong while
    # tidying up is logged, never part of it.
    recorded = [n for n in journaled if n not in unrecorded]
    await clean_up(
        changes,
        run.locked,
        run.options.backup_retention,
        run.options.journal_retention,
        recorded,
    )
    return result
