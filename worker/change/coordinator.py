"""The two-phase change: plan -> prepare -> commit -> finish, or rollback, on N servers.

:func:`execute` is the whole story of one request and the only place its ends are decided:

=====================  ====================================================================
``rejected``           plan: unknown server, peer not found, roles/pair mismatch, bad config
``failed``             nothing live changed: unreachable, lock timeout, config changed since
                       plan (``concurrent_change``), candidate refused by ``dhcpd -t``,
                       another change unfinished on a server (``unfinished_change``)
``succeeded``          committed and restarted everywhere; or nothing to change (no lock
                       taken, nothing written); or a dry run that staged and validated
``rolled_back``        a commit step failed; every server touched holds its old file again
                       and was restarted on it where it had been restarted
``rollback_failed``    restoring failed too; ``error.detail.servers`` says who holds what
=====================  ====================================================================

Plan reads every server's live tree and computes the candidates (no writes, no locks).
Prepare takes every involved server's lock in name order (two changes sharing servers never
deadlock), checks the live bytes still match the plan, stages each candidate beside its live
file and runs the server's ``validate_command`` on it, and writes a journal on each server
(these three at once per server, all servers at once). Commit then goes per server in order:
backup (a hard link), atomic rename, restart+verify. Once every server is final the outcome
is announced (the consumer publishes it meanwhile), and finish removes temp files, prunes old
backups and finished journals, and records the outcome in every journal. Each journal
directory is listed once before the locks and once under them; the second listing stays true
while the locks are held (but for this change's own files), so finish prunes from it.

Idempotency and recovery (the policy)
    The journal of a change that ended holds its outcome: running the same request id again
    returns that outcome (same ``ResultData`` but the total duration) and touches nothing.
    A change cut off mid-commit (the worker died or lost its connection) is picked up by the
    next run of the same request id, under the same locks. The live files' sha256 decide:

    * nothing went live -> leftovers removed, the request planned afresh;
    * every live file is the old or the new version, no rollback had begun, every remaining
      candidate is intact and validates again -> **roll forward**: commit the servers still
      behind, restart the ones that may not have restarted; the outcome is the one the
      change would have had (``succeeded``, or ``rolled_back`` if a step fails now);
    * otherwise (a rollback had begun, a candidate or journal is gone, revalidation fails)
      -> **roll back**: restore the backups, restart what had been restarted;
      ``rolled_back`` (or ``rollback_failed``);
    * a live file that is neither version was edited by someone else meanwhile: nothing is
      touched and the outcome is ``rollback_failed``, for an operator.

    While a change is unfinished on a server, any *other* request touching that server fails
    with ``unfinished_change`` (nothing touched): planning on a half-changed pair is wrong,
    and finishing the old change later would overwrite the new one. Only the listing taken
    under the lock decides: a journal seen before it may belong to a change still running
    (recording the outcome it announced), which the lock waits for.

    Two deliveries of one request id running at once (a publisher's retry, two workers on one
    queue) converge the same way: the run that waited for the locks, or found nothing left to
    change, answers with the outcome the other recorded.

    A done record is pruned once ``journal_retention`` newer ones exist; a request
    redelivered after that is planned afresh (and finds its change already in place).

Cancellation: until the commit starts, a cancel removes what was staged (and the journals)
and propagates. From the commit's first backup to the recorded outcome the work runs to its
end whatever happens to the caller (:func:`run_to_end`); the cancel is re-raised afterwards,
and the next delivery of the request reads the outcome from the journal.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import structlog
from pydantic import TypeAdapter, ValidationError

from worker.change import recovery
from worker.change.commit import as_worker_error, commit, rollback, rollback_failed_error
from worker.change.journal import (
    Journal,
    Step,
    delete_journal,
    find_journal,
    journal_dir,
    list_journal_dir,
    new_stamp,
    prune_backups,
    prune_journals,
    remove_running_journal,
    save_journal,
    unfinished_changes,
    write_journal,
)
from worker.change.model import ServerChange, changed_only, planned_change
from worker.change.plan import ServerPlan, plan_modify, plan_remove, remove_partners
from worker.change.ports import Fleet, RemoteHost
from worker.change.snapshot import Snapshot, read_snapshot, sha256_hex
from worker.change.staging import validate_tree
from worker.dhcpconf import ConfigSet
from worker.errors import (
    ConcurrentChange,
    Failed,
    LockTimeout,
    PairMismatch,
    Rejected,
    UnknownServer,
    WorkerError,
)
from worker.messages import (
    DeconfigureAction,
    ModifyRequest,
    Outcome,
    Phase,
    RemoveParams,
    RemoveRequest,
    RequestId,
    ResultData,
    WarningInfo,
)

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")
_QUIET_OUTCOMES = (Outcome.succeeded, Outcome.rejected)
_REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)
_UNSET = object()


@dataclass(frozen=True)
class ChangeOptions:
    lock_timeout: float = 30.0
    backup_retention: int = 5
    #: Finished journals kept per server: how long a redelivered request still gets its
    #: recorded outcome back instead of being planned afresh.
    journal_retention: int = 100
    #: The most of a server's diff an event (and a journal) carries; beyond it the diff is
    #: cut and described (``diffTruncated``, ``diffFull``).
    max_diff_bytes: int = 64 * 1024


Announce = Callable[[ResultData], None]
"""Told a change's outcome the moment the servers reach their final state, before the
clean-up and the journal records that end :func:`execute` (a few round trips per server):
the consumer publishes the result event meanwhile. Called at most once, and only for a change
that went past prepare; whatever was announced is the result :func:`execute` returns (its
``durationMs`` aside) and the outcome it records."""


async def execute(
    request: ModifyRequest | RemoveRequest,
    request_id: str,
    fleet: Fleet,
    options: ChangeOptions = ChangeOptions(),
    announce: Announce | None = None,
) -> ResultData:
    """Apply one request to every server it touches, both or neither; never raises for
    anything a request or a server can cause (``CancelledError`` does propagate)."""
    return await _execute(_Run(request, request_id, options, announce), fleet)


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
    options: ChangeOptions = ChangeOptions(),
) -> Preview:
    """Run ``request`` as a dry run (plan, lock, stage, validate, discard) and hand back what
    it planned: the offline ``plan`` command runs exactly this, on local hosts, so a plan that
    says "would apply" is the worker's own judgement."""
    dry = request if request.dry_run else request.model_copy(update={"dry_run": True})
    run = _Run(dry, request_id, options)
    result = await _execute(run, fleet)
    return Preview(result, run.planned)


async def _execute(run: _Run, fleet: Fleet) -> ResultData:
    request, request_id, options = run.request, run.request_id, run.options
    with structlog.contextvars.bound_contextvars(requestId=request_id):
        log.info("change.start", command=request.command, dry_run=request.dry_run)
        try:
            _check_request_id(request_id)
            if not request.dry_run:
                _prefetch(run, fleet)  # the plan's reads travel with the journal lookup's
                try:
                    previous = await _resume_previous(run, fleet)
                except BaseException:
                    run.drop_prefetched()
                    raise
                if previous is not None:
                    return run.done(previous)
            changes, warnings = await _plan_when_others_end(run, fleet)
            if not request.dry_run and not any(c.changed for c in changes):
                # Nothing to change: maybe a twin delivery of this request id applied it
                # since the lookup above. Its outcome is the answer, not a "changed: false".
                run.listings.clear()  # look again
                previous = await _resume_previous(run, fleet)
                if previous is not None:
                    return run.done(previous)
        except Rejected as exc:
            return run.done(run.result(Outcome.rejected, [], exc))
        except Exception as exc:
            return run.done(run.result(Outcome.failed, [], as_worker_error(exc, Phase.plan)))
        if not any(c.changed for c in changes):
            return run.done(run.result(Outcome.succeeded, changes, None, warnings))
        try:
            async with hold_locks([c.host for c in changes], options.lock_timeout):
                if not request.dry_run:
                    _start_rechecks(run, changes)  # read-only: alongside the lookup's listing
                    if (previous := await _replay(run, fleet)) is not None:
                        return run.done(previous)
                return run.done(await _prepare_and_commit(run, changes, warnings))
        except Exception as exc:  # only taking a lock or reading a journal can raise here
            error = as_worker_error(exc, Phase.prepare)
            return run.done(run.result(Outcome.failed, changes, error, warnings))
        finally:
            run.drop_prefetched()  # a cancel: reads ahead nobody will use


async def _prepare_and_commit(
    run: _Run, changes: list[ServerChange], warnings: list[WarningInfo]
) -> ResultData:
    """Under the locks: prepare (reversible), then commit and finish (shielded). Total."""
    try:
        journals = {} if run.request.dry_run else _new_journals(run, changes, warnings)
        await _on_each(changes, lambda c: _prepare_server(run, c, journals.get(c.name)))
    except asyncio.CancelledError:
        await _discard(changes, run.request_id)
        raise
    except Exception as exc:
        error = as_worker_error(exc, Phase.prepare)
        warnings = warnings + await _discard(changes, run.request_id)
        return run.result(Outcome.failed, changes, error, warnings)
    if run.request.dry_run:
        warnings = warnings + await _discard(changes, run.request_id)
        return run.result(Outcome.succeeded, changes, None, warnings)
    return await run_to_end(_commit_and_finish(run, changes, warnings))


async def _commit_and_finish(
    run: _Run,
    changes: list[ServerChange],
    warnings: list[WarningInfo],
    cause: WorkerError | None = None,
) -> ResultData:
    """Commit (unless ``cause`` says to undo instead), roll back on failure, finish."""
    if cause is None:
        cause = await commit(changes)
    if cause is None:
        outcome, error = Outcome.succeeded, None
    elif await rollback(changes, run.request_id, cause):
        outcome, error = Outcome.rolled_back, cause
    else:
        outcome, error = Outcome.rollback_failed, rollback_failed_error(changes, cause)
    return await _finish(run, changes, outcome, error, warnings)


async def _resume_previous(run: _Run, fleet: Fleet) -> ResultData | None:
    """The recorded outcome of this request id, or the end of a change an earlier run cut off
    (policy in the module docstring); None when there is nothing to pick up."""
    found = await recovery.find_previous(fleet, _anchors(run.request), run.request_id, run.listings)
    if not found:
        return None
    if (outcome := recovery.finished(found)) is not None:
        log.info("change.replayed", outcome=outcome.outcome)
        return outcome
    servers = next(iter(found.values())).servers
    hosts = [fleet.host(n) for n in servers]
    async with hold_locks(hosts, run.options.lock_timeout):
        # Read again under the locks: another run of this request may have just ended it.
        journals = dict(zip(servers, await _journals(hosts, run.request_id), strict=True))
        if (outcome := recovery.finished(journals)) is not None:
            return outcome
        resumed = await recovery.load(fleet, journals, run.request_id)
        log.warning("change.resume", verdict=resumed.verdict, reason=resumed.reason)
        if resumed.verdict == "replan":
            await _discard(resumed.changes, run.request_id)
            run.listings.clear()  # what it listed has just been removed
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
        return await run_to_end(_commit_and_finish(run, resumed.changes, resumed.warnings, cause))


async def _replay(run: _Run, fleet: Fleet) -> ResultData | None:
    """Under the locks: the outcome a twin delivery of this request id recorded while this
    run waited for them (it planned on the files the twin has since changed)."""
    run.locked.clear()  # listings taken under the locks: they stay true while they are held
    found = await recovery.find_previous(fleet, _anchors(run.request), run.request_id, run.locked)
    if (outcome := recovery.finished(found)) is not None:
        log.info("change.replayed", outcome=outcome.outcome, after="lock wait")
    return outcome


async def _record_conflict(run: _Run, resumed: recovery.Resumed) -> ResultData:
    """Someone edited a file mid-change: touch nothing, say so, record it."""
    for change in changed_only(resumed.changes):
        change.needs_operator = change.state() != "old" or change.restart_attempted
    cause = recovery.interrupted(resumed.changes, resumed.reason)
    headline = (
        f"an earlier run of this request was cut off mid-commit and {resumed.reason}; "
        "nothing was touched"
    )
    error = rollback_failed_error(resumed.changes, cause, headline)
    result = run.announced(
        run.result(Outcome.rollback_failed, resumed.changes, error, resumed.warnings)
    )
    late = await _record(resumed.changes, result)
    return run.with_late_warnings(result, late)


# -- plan ------------------------------------------------------------------------------------


def _check_request_id(request_id: str) -> None:
    """The request id names files on the servers: refuse anything but the safe set."""
    try:
        _REQUEST_ID.validate_python(request_id)
    except ValidationError:
        raise Rejected(
            f"request id {request_id[:140]!r} is not usable: 1-128 of [A-Za-z0-9._:-]",
            code="invalid_request_id",
        ) from None


def _anchors(request: ModifyRequest | RemoveRequest) -> list[str]:
    """The servers known before any config is read: where a journal is looked up first."""
    if isinstance(request, ModifyRequest):
        return [request.params.primary_server, request.params.secondary_server]
    return [request.params.server]


async def _plan_when_others_end(
    run: _Run, fleet: Fleet
) -> tuple[list[ServerChange], list[WarningInfo]]:
    """Plan, even if another change's journal was seen before the locks: that change may be
    running still (its worker announced its outcome and holds the lock to record it). The
    check under the locks decides, before anything is touched. Only if the plan fails or
    finds nothing to change on what may be a half-changed pair (it takes no lock then) does
    it wait for those servers' locks once and plan afresh; unfinished then means cut off, and
    the request fails with ``unfinished_change``."""
    try:
        changes, warnings = await _plan(run, fleet)
        if not run.busy or any(c.changed for c in changes):
            return changes, warnings
    except WorkerError:
        if not run.busy:
            raise
    busy = sorted(run.busy)
    log.info("change.waiting", servers=busy, reason="another change is unfinished there")
    run.drop_prefetched()
    run.listings.clear()
    run.busy.clear()
    run.strict = True
    async with hold_locks([fleet.host(n) for n in busy], run.options.lock_timeout):
        pass
    return await _plan(run, fleet)


async def _plan(run: _Run, fleet: Fleet) -> tuple[list[ServerChange], list[WarningInfo]]:
    """Read every involved server's live tree and compute its candidate; no writes."""
    request = run.request
    warnings: list[WarningInfo] = []
    if isinstance(request, ModifyRequest):
        p = request.params
        hosts = {n: fleet.host(n) for n in (p.primary_server, p.secondary_server)}
        snaps = await _snapshots(hosts, run)
        primary, secondary = (_parse(snaps[n]) for n in hosts)
        plans: Sequence[ServerPlan] = plan_modify(p, primary, secondary)
    else:
        hosts, snaps, plans, warnings = await _plan_remove(request.params, fleet, run)
    changes = [
        planned_change(
            hosts[plan.server],
            snaps[plan.server],
            plan,
            run.request_id,
            run.stamp,
            run.options.max_diff_bytes,
        )
        for plan in plans
    ]
    changes.sort(key=lambda c: list(hosts).index(c.name))  # commit order: anchor first
    run.planned = changes
    log.info(
        "plan.done",
        servers=[c.name for c in changes],
        changed=[c.name for c in changes if c.changed],
    )
    return changes, warnings


async def _plan_remove(
    p: RemoveParams, fleet: Fleet, run: _Run
) -> tuple[dict[str, RemoteHost], dict[str, Snapshot], list[ServerPlan], list[WarningInfo]]:
    """Remove: the partners come from the peer blocks' ``peer address`` and the inventory."""
    hosts = {p.server: fleet.host(p.server)}
    snaps = await _snapshots(hosts, run)
    configs = {p.server: _parse(snaps[p.server])}
    pairs: dict[str, tuple[str, str]] = {}
    for name, (role, address) in remove_partners(configs[p.server], p.names).items():
        partner = fleet.server_for_address(address)
        if partner is None:
            raise UnknownServer(
                f"failover peer {name!r} on {p.server}: its peer address {address} is not "
                "a server in the inventory",
                server=p.server,
                phase=Phase.plan,
            )
        if partner == p.server:
            raise PairMismatch(
                f"failover peer {name!r} on {p.server}: its peer address {address} is "
                f"{p.server} itself",
                server=p.server,
            )
        pairs[name] = (p.server, partner) if role == "primary" else (partner, p.server)
    partners = {n: fleet.host(n) for pair in pairs.values() for n in pair if n not in hosts}
    snaps.update(await _snapshots(partners, run))
    hosts.update(partners)
    configs.update({n: _parse(snaps[n]) for n in partners})
    plans = list(plan_remove(p, configs, pairs))
    return hosts, snaps, plans, _same_ranges_warnings(p, configs, pairs)


def _same_ranges_warnings(
    p: RemoveParams, configs: dict[str, ConfigSet], pairs: dict[str, tuple[str, str]]
) -> list[WarningInfo]:
    """DeconfigureAction None leaves both servers serving the same pools: say which."""
    if p.deconfigure_action is not DeconfigureAction.none:
        return []
    warnings = []
    for name, (primary, secondary) in pairs.items():
        scopes = [s.label for s in configs[primary].peer(name).pools]
        if scopes:
            message = (
                f"DeconfigureAction None: {primary} and {secondary} now both lease from the "
                f"same ranges, formerly shared by failover peer {name!r}: " + "; ".join(scopes)
            )
            warnings.append(WarningInfo(code="same_ranges", message=message, server=secondary))
    return warnings


async def _snapshots(hosts: dict[str, RemoteHost], run: _Run) -> dict[str, Snapshot]:
    """Each server's live tree, and whether another change is unfinished there (from the
    listing the journal lookup just took, if it took one)."""

    async def check(host: RemoteHost) -> None:
        try:
            await _refuse_if_unfinished(host, run.request_id, run.listings)
        except Failed as exc:
            if run.strict or exc.code != "unfinished_change":
                raise
            run.busy.add(host.name)  # running or cut off: the check under the lock says

    async def read(host: RemoteHost) -> Snapshot:
        reading = run.prefetched.pop(host.name, None) or read_snapshot(host)
        snapshot, _ = await asyncio.gather(reading, check(host))
        return snapshot

    snaps = await asyncio.gather(*(read(h) for h in hosts.values()))
    return dict(zip(hosts, snaps, strict=True))


def _prefetch(run: _Run, fleet: Fleet) -> None:
    """Start reading the anchors' live trees while their journal directories are listed:
    read-only, so harmless when the lookup ends the request instead (they are dropped then).
    Whether another change is unfinished there is still checked before the plan uses them,
    and under the locks the live bytes are compared with them again."""
    for name in _anchors(run.request):
        try:
            host = fleet.host(name)
        except Exception:
            return  # the plan says why, as it would have
        run.prefetched[name] = asyncio.ensure_future(read_snapshot(host))


async def _refuse_if_unfinished(
    host: RemoteHost, request_id: str, listings: dict[str, list[str]] | None = None
) -> None:
    """A change cut off on this server must end before another starts: planning on a
    half-changed pair would be wrong, and finishing it later would overwrite this one."""
    names = await list_journal_dir(host, listings) if listings is not None else None
    others = await unfinished_changes(host, request_id, names)
    if others:
        raise Failed(
            f"{host.name} has an unfinished change (request {', '.join(others)}); "
            "its redelivery finishes or undoes it, or an operator must clear it first",
            code="unfinished_change",
            server=host.name,
            detail={"requests": others},
        )


def _parse(snapshot: Snapshot) -> ConfigSet:
    try:
        return ConfigSet.parse(snapshot.texts(), snapshot.main, snapshot.base)
    except WorkerError as exc:
        exc.server = exc.server or snapshot.server
        raise


async def _journals(hosts: Sequence[RemoteHost], request_id: str) -> list[Journal | None]:
    return list(await asyncio.gather(*(find_journal(h, request_id) for h in hosts)))


# -- prepare ---------------------------------------------------------------------------------


async def _prepare_server(run: _Run, change: ServerChange, journal: Journal | None) -> None:
    """Nothing changed since plan; candidates staged beside the live files and validated;
    the journal written (unless a dry run). Under the lock no other change is unfinished here
    (checked on the listing the lock-time journal lookup took: nothing is touched if one is).
    Then three independent strands run at once: reading the live files again to compare them
    with the plan, staging and validating the candidates, writing the journal. All end before
    an error is raised; a foreign edit is reported before anything else the strands found."""
    host, snapshot = change.host, change.snapshot
    assert snapshot is not None  # a planned change always has one
    with change.timed():
        await _refuse_if_unfinished(host, run.request_id, run.locked)  # again, under the lock
        outcomes = await asyncio.gather(
            _recheck(run, change, snapshot),
            _stage_and_validate(run, change),
            _save_new_journal(change, journal),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for error in errors:
            if isinstance(error, ConcurrentChange) or not isinstance(error, Exception):
                raise error
        if errors:
            raise errors[0]


def _start_rechecks(run: _Run, changes: Sequence[ServerChange]) -> None:
    """Under the locks, start reading the live files again while the journal directories
    are listed (read-only; :func:`_recheck` compares them, once nothing is unfinished)."""
    for change in changes:
        if change.snapshot is not None:
            run.rereads[change.name] = asyncio.ensure_future(_read_live(change, change.snapshot))


async def _read_live(change: ServerChange, snapshot: Snapshot) -> list[bytes | None]:
    return list(await asyncio.gather(*(change.host.read(path) for path in snapshot.raw)))


async def _recheck(run: _Run, change: ServerChange, snapshot: Snapshot) -> None:
    """The live files still hold the bytes the plan was computed from."""
    paths = list(snapshot.raw)
    reread = run.rereads.pop(change.name, None)
    lives = await (reread if reread is not None else _read_live(change, snapshot))
    for path, live in zip(paths, lives, strict=True):
        planned = snapshot.raw[path]
        if live != planned:
            raise ConcurrentChange(
                f"{path} on {change.name} changed since it was read; not overwriting it",
                server=change.name,
                detail={
                    "file": path,
                    "planned": sha256_hex(planned),
                    "found": sha256_hex(live) if live is not None else None,
                },
            )


async def _stage_and_validate(run: _Run, change: ServerChange) -> None:
    """Each candidate written beside its live file, then the server's validate command."""
    host = change.host
    candidates = []
    for f in change.files:
        assert f.after is not None
        change.temps.add(f.staged)
        candidates.append(host.write(f.staged, f.after, like=f.path))
    await _all_of(candidates)
    if change.changed:
        changed = [f.path for f in change.files]
        await validate_tree(
            host, change.main, change.after_texts, changed, run.request_id, change.temps
        )
        log.info("prepare.validated", server=change.name, files=changed)


async def _save_new_journal(change: ServerChange, journal: Journal | None) -> None:
    """The journal must exist before the first live file is touched; the commit writes none."""
    if journal is None:
        return
    change.journal = journal  # set first: a failed or cut-off write is cleaned up too
    await save_journal(change.host, journal)


def _new_journals(
    run: _Run, changes: list[ServerChange], warnings: list[WarningInfo]
) -> dict[str, Journal]:
    """One journal per changed server: the plan, and the report a resumed run answers with."""
    reports = [c.report for c in changes]
    servers = [c.name for c in changed_only(changes)]
    return {
        change.name: Journal(
            requestId=run.request_id,
            command=run.request.command,
            stamp=run.stamp,
            server=change.name,
            servers=servers,
            step=Step.staged,
            files=[f.record() for f in change.files],
            report=reports,
            warnings=warnings,
        )
        for change in changed_only(changes)
    }


async def _discard(changes: Sequence[ServerChange], request_id: str) -> list[WarningInfo]:
    """Remove everything a change that never went live left behind; report what could not
    be removed as warnings (the next run of the request removes it)."""
    problems: list[WarningInfo] = []
    for change in changed_only(changes):
        try:
            await _remove_temps(change)
            if change.journal is not None:
                await delete_journal(change.host, change.journal)
        except Exception as exc:
            log.warning("cleanup.failed", server=change.name, error=str(exc))
            problems.append(_cleanup_failed(change, exc))
    return problems


def _cleanup_failed(change: ServerChange, exc: BaseException) -> WarningInfo:
    return WarningInfo(
        code="cleanup_failed", message=f"cleanup on {change.name} failed: {exc}", server=change.name
    )


async def _remove_temps(change: ServerChange) -> None:
    for path in sorted(change.temps):
        await change.host.remove(path)
        change.temps.discard(path)


# -- finish ----------------------------------------------------------------------------------


async def _finish(
    run: _Run,
    changes: list[ServerChange],
    outcome: Outcome,
    error: WorkerError | None,
    warnings: list[WarningInfo],
) -> ResultData:
    """The servers are in their final state: announce the outcome, then clean up, prune and
    record it, all at once (they touch disjoint files). A problem here is logged (and a
    warning, unless the result was already announced), never a different outcome."""
    warnings = list(warnings)
    if outcome is not Outcome.rollback_failed:  # there, error.detail lists them per server
        warnings += [
            WarningInfo(code="rollback_problem", message=p, server=c.name)
            for c in changed_only(changes)
            for p in c.problems
        ]
    result = run.announced(run.result(outcome, changes, error, warnings))

    async def clean(change: ServerChange) -> WarningInfo | None:
        """One server's cleanup; its prunes touch disjoint files, so they run at once."""
        try:
            await _remove_temps(change)
            # The journal directory as listed under the lock still holds, but for our own
            # backups made since (the lock keeps every other change out).
            names = run.locked.get(change.name)
            home = journal_dir(change.host)
            prunes = [
                prune_backups(
                    change.host,
                    f.path,
                    run.options.backup_retention,
                    names if posixpath.dirname(f.path) == home else None,
                    [f.backup] if f.linked else [],
                )
                for f in change.files
            ]
            # This change's done record is being written: make room for it.
            keep = max(run.options.journal_retention - 1, 0)
            prunes.append(prune_journals(change.host, keep, names))
            await _all_of(prunes)
        except Exception as exc:
            log.warning("cleanup.failed", server=change.name, error=str(exc))
            return _cleanup_failed(change, exc)
        return None

    *problems, recorded = await asyncio.gather(
        *(clean(c) for c in changed_only(changes)), _record(changes, result)
    )
    late = [p for p in problems if isinstance(p, WarningInfo)]
    late += [r for r in recorded or [] if isinstance(r, WarningInfo)]
    return run.with_late_warnings(result, late)


async def _record(changes: list[ServerChange], result: ResultData) -> list[WarningInfo]:
    """Store the outcome in every journal, the first server's last: it is read first, so once
    it has its done record every server has one. The running journals a done record replaces
    are removed alongside (a leftover one is harmless: the done record ends the change).
    Returns a warning per server it could not be stored on."""
    stored = result.model_copy(deep=True)
    problems: list[WarningInfo] = []
    removals: list[asyncio.Task[None]] = []
    for change in reversed(changed_only(changes)):
        journal = change.journal
        if journal is None:
            continue
        try:
            journal.outcome, journal.report, journal.step = stored, [], Step.done
            await write_journal(change.host, journal)
        except Exception as exc:
            log.error("journal.not_recorded", server=change.name, error=str(exc))
            message = (
                f"outcome not recorded on {change.name} ({exc}); "
                "a rerun of this request will derive it from the servers again"
            )
            problems.append(
                WarningInfo(code="outcome_not_recorded", message=message, server=change.name)
            )
            continue
        removals.append(asyncio.ensure_future(remove_running_journal(change.host, journal)))
    for outcome in await asyncio.gather(*removals, return_exceptions=True):
        if isinstance(outcome, BaseException):
            log.warning("journal.not_removed", error=str(outcome))
    return problems


# -- plumbing --------------------------------------------------------------------------------


@dataclass
class _Run:
    """One call of :func:`execute`: its request, clock and stamp, and how results look."""

    request: ModifyRequest | RemoveRequest
    request_id: str
    options: ChangeOptions
    announce: Announce | None = None
    started: float = field(default_factory=time.monotonic)
    stamp: str = field(default_factory=new_stamp)
    #: Journal directories as listed before the locks (server name -> names)...
    listings: dict[str, list[str]] = field(default_factory=dict)
    #: ...and under them: true until they are released, but for this change's own files.
    locked: dict[str, list[str]] = field(default_factory=dict)
    #: Live trees being read ahead of the plan (server name -> read)...
    prefetched: dict[str, asyncio.Future[Snapshot]] = field(default_factory=dict)
    #: ...and the live files read again under the locks, ahead of the recheck.
    rereads: dict[str, asyncio.Future[list[bytes | None]]] = field(default_factory=dict)
    #: Whether :data:`Announce` has been told the outcome.
    was_announced: bool = False
    #: The changes the last plan computed (for :func:`preview`).
    planned: list[ServerChange] = field(default_factory=list)
    #: Servers where another change was unfinished before the locks (maybe still running)...
    busy: set[str] = field(default_factory=set)
    #: ...and whether that now fails the plan (after waiting for their locks once).
    strict: bool = False

    def result(
        self,
        outcome: Outcome,
        changes: Sequence[ServerChange],
        error: WorkerError | None = None,
        warnings: Sequence[WarningInfo] = (),
    ) -> ResultData:
        dry_run = self.request.dry_run
        return ResultData(
            requestId=self.request_id,
            command=self.request.command,
            outcome=outcome,
            dryRun=dry_run,
            servers=[c.result(outcome, dry_run) for c in changes],
            error=error.to_info() if error is not None else None,
            warnings=list(warnings),
            durationMs=self.elapsed_ms(),
        )

    def announced(self, result: ResultData) -> ResultData:
        """Hand the final outcome to :data:`Announce`, if given. A failing callback is the
        caller's bug: logged, and the result is returned from :func:`execute` as usual."""
        if self.announce is not None:
            announce, self.announce = self.announce, None
            try:
                announce(result.model_copy(update={"durationMs": self.elapsed_ms()}))
            except Exception:
                log.exception("announce.failed")
            else:
                self.was_announced = True
        return result

    def with_late_warnings(self, result: ResultData, late: list[WarningInfo]) -> ResultData:
        """Problems found after the outcome was announced are only logged (the announced
        result is the one recorded and published); otherwise they are warnings."""
        if not late or self.was_announced:
            return result
        return result.model_copy(update={"warnings": [*result.warnings, *late]})

    def drop_prefetched(self) -> None:
        """Cancel the reads ahead the plan or the recheck never used."""
        readings: list[asyncio.Future[Any]] = [*self.prefetched.values(), *self.rereads.values()]
        for reading in readings:
            reading.cancel()
            reading.add_done_callback(_retrieve)
        self.prefetched.clear()
        self.rereads.clear()

    def elapsed_ms(self) -> int:
        return round((time.monotonic() - self.started) * 1000)

    def done(self, result: ResultData) -> ResultData:
        """The end of :func:`execute`: one log line an operator can search for."""
        self.drop_prefetched()
        result = result.model_copy(update={"durationMs": self.elapsed_ms()})
        error = result.error
        log.log(
            logging.INFO if result.outcome in _QUIET_OUTCOMES else logging.ERROR,
            "change.end",
            outcome=result.outcome.value,
            changed=[s.name for s in result.servers if s.changed],
            code=error.code if error else None,
            error=error.message if error else None,
            duration_ms=result.durationMs,
        )
        return result


async def _on_each(
    changes: Sequence[ServerChange], step: Callable[[ServerChange], Awaitable[None]]
) -> None:
    """Run ``step`` on every server at once; all finish before the first error is raised, so
    a cleanup never races a write still in flight."""
    await _all_of([step(c) for c in changes])


async def _all_of(steps: Sequence[Awaitable[Any]]) -> None:
    """Await ``steps`` at once; all finish before the first error (in order) is raised."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a dropped read's outcome as seen (it was not needed)."""
    if not future.cancelled():
        future.exception()


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the caller is cancelled meanwhile, then re-raise the
    cancellation: a commit or rollback cut in half is the one thing worse than either."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
            log.warning("change.cancel_deferred", reason="commit in flight")
    if cancelled:
        raise asyncio.CancelledError
    return result


@asynccontextmanager
async def hold_locks(hosts: Iterable[RemoteHost], wait: float) -> AsyncIterator[None]:
    """Every server's change lock, taken as if in name order and released however the body
    ends. A failed release is logged, not raised: the server drops the lock with the
    connection. They are released all at once (last taken first).

    The name order is what keeps two changes sharing servers from deadlocking; waiting for a
    lock in it costs a round trip per server, so all are first *tried* at once without
    waiting. If some are busy, the ones held before the first busy one in name order are kept
    (a prefix of the order: holding it while waiting is exactly the ordered protocol), the
    others released, and the rest taken one by one in order with the bounded wait."""
    unique = {h.name: h for h in hosts}
    names = sorted(unique)
    held: list[Callable[..., Awaitable[bool]]] = []

    async def release(*exc_info: Any) -> None:
        await asyncio.gather(*(r(*exc_info) for r in reversed(held)))

    async def take(name: str, patience: float) -> Callable[..., Awaitable[bool]]:
        lock = unique[name].lock(patience)
        await lock.__aenter__()
        log.info("lock.acquired", server=name)
        return _releaser(lock, name)

    async def try_all() -> int:
        """Try every lock at once without waiting; keep the ones before the first that was
        not taken, release the others; return that one's position."""
        # The tries share one copy of this context, adopted afterwards: a lock may record
        # itself in a context variable (SshHost does, to refuse work once it is lost).
        context = contextvars.copy_context()
        tasks = [asyncio.create_task(take(n, 0.0), context=context) for n in names]
        try:
            await asyncio.wait(tasks)
        finally:  # cancelled: no try left running; whatever was taken is released
            if pending := [task for task in tasks if not task.done()]:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
            for var, value in context.items():
                if var.get(_UNSET) is not value:
                    var.set(value)
            tries: list[BaseException | Callable[..., Awaitable[bool]] | None] = [
                task.exception() or task.result() if task.done() and not task.cancelled() else None
                for task in tasks
            ]
            missed = [not callable(t) for t in tries]
            first = missed.index(True) if True in missed else len(names)
            held.extend(t for t in tries[:first] if callable(t))
            surplus = [t for t in tries[first:] if callable(t)]
            await asyncio.gather(*(r(None, None, None) for r in reversed(surplus)))
        for outcome in tries:
            if isinstance(outcome, BaseException) and not isinstance(outcome, LockTimeout):
                raise outcome
        if first < len(names):
            log.info("lock.busy", server=names[first])
        return first

    try:
        first = await try_all() if len(names) > 1 else 0
        for name in names[first:]:
            held.append(await take(name, wait))
        yield
    except BaseException as exc:
        await release(type(exc), exc, exc.__traceback__)
        raise
    await release(None, None, None)


def _releaser(
    lock: AbstractAsyncContextManager[None], name: str
) -> Callable[
    [type[BaseException] | None, BaseException | None, TracebackType | None], Awaitable[bool]
]:
    async def release(
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            await lock.__aexit__(exc_type, exc, tb)
        except Exception as err:
            log.error("lock.release_failed", server=name, error=str(err))
        return False

    return release
