"""The prepare step, under the locks: nothing live changes yet, everything can be undone.

Per server, four strands: staging and validating the candidates; once the candidates are
written (the validation is the long part), reading the live files again to compare them with
the plan and writing the journal; and, from the start, reading the running dhcpd over OMAPI
(:meth:`Verification.prepare`: a server the verify phase could not read fails the request
here, before anything goes live; dry runs too). The candidates go first because they are on
the way to the commit and the others are not: one server's SFTP requests are answered in
order, so reads and a journal sent beside them would delay them. All end before an error is
raised; a foreign edit is reported before anything else they found. A change that never went
live is discarded here too (:func:`discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import Awaitable, Callable, Sequence

import structlog

from worker.change.aio import all_of, retrieve
from worker.change.faults import step
from worker.change.finish import cleanup_failed, remove_temps
from worker.change.journal import Journal, Step, delete_journal, prune_temps, save_journal
from worker.change.locks import lost_locks, relocked
from worker.change.model import ServerChange, changed_only
from worker.change.planning import refuse_if_unfinished
from worker.change.run import Run
from worker.change.snapshot import Snapshot, sha256_hex
from worker.change.staging import setup_for, validate_tree
from worker.change.verify import Verification
from worker.errors import ConcurrentChange, LockLost
from worker.messages import WarningInfo
from worker.metrics import timed

log = structlog.stdlib.get_logger("worker.change.coordinator")


@timed("prepare")
async def prepare(
    run: Run, changes: list[ServerChange], warnings: list[WarningInfo], check: Verification
) -> None:
    """Every server prepared at once; raises the first failure once all have ended."""
    journals = {} if run.request.dry_run else new_journals(run, changes, warnings)
    await all_of([_prepare_server(run, c, journals.get(c.name), check) for c in changes])


async def _prepare_server(
    run: Run, change: ServerChange, journal: Journal | None, check: Verification
) -> None:
    """Nothing changed since plan; candidates staged beside the live files and validated;
    the journal written (unless a dry run); the running dhcpd read (where verified). Under
    the lock no other change is unfinished here (checked on the listing the lock-time journal
    lookup took: nothing is touched if one is)."""
    host, snapshot = change.host, change.snapshot
    assert snapshot is not None  # a planned change always has one
    with change.timed():
        await refuse_if_unfinished(run, host, run.locked)  # again, under the lock
        staged = asyncio.Event()
        outcomes = await asyncio.gather(
            _after(staged, lambda: _recheck(change, snapshot)),
            _stage_and_validate(run, change, staged),
            _after(staged, lambda: _save_new_journal(change, journal)),
            check.prepare(change),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for error in errors:
            if isinstance(error, ConcurrentChange) or not isinstance(error, Exception):
                raise error
        if errors:
            raise errors[0]


async def _after(event: asyncio.Event, step: Callable[[], Awaitable[None]]) -> None:
    await event.wait()
    await step()


async def _recheck(change: ServerChange, snapshot: Snapshot) -> None:
    """The live files still hold the bytes the plan was computed from."""
    paths = list(snapshot.raw)
    lives = await asyncio.gather(*(change.host.read(path) for path in paths))
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


async def _stage_and_validate(run: Run, change: ServerChange, staged: asyncio.Event) -> None:
    """Each candidate written beside its live file, then the server's validate command;
    ``staged`` is set once the writes have ended (however they ended)."""
    host = change.host
    changed = [f.path for f in change.files]
    # What the validation needs is worked out (in a thread) while the candidates travel.
    setup = None
    if change.changed:
        setup = asyncio.ensure_future(
            setup_for(host, change.main, change.after_texts, changed, run.request_id)
        )
        setup.add_done_callback(retrieve)  # not awaited if a write fails or we are cancelled
    try:
        candidates = []
        for f in change.files:
            assert f.after is not None
            change.temps.add(f.staged)
            candidates.append(host.write(f.staged, f.after, like=f.path, in_place=True))
        await all_of(candidates)
    finally:
        staged.set()  # also if building a write raised: the other steps wait for this
    if setup is not None:
        await step("staged")  # test-only (worker/change/faults.py)
        await validate_tree(
            host,
            change.main,
            change.after_texts,
            changed,
            run.request_id,
            change.temps,
            await setup,
        )
        log.info("prepare.validated", server=change.name, files=changed)
        await step("validated")  # test-only (worker/change/faults.py)


async def _save_new_journal(change: ServerChange, journal: Journal | None) -> None:
    """The journal must exist before the first live file is touched; the commit writes none."""
    if journal is None:
        return
    change.journal = journal  # set first: a failed or cut-off write is cleaned up too
    await save_journal(change.host, journal)
    await step("journaled")  # test-only (worker/change/faults.py)


def new_journals(
    run: Run, changes: list[ServerChange], warnings: list[WarningInfo]
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
            comment=run.request.comment,
        )
        for change in changed_only(changes)
    }


async def discard(changes: Sequence[ServerChange]) -> list[WarningInfo]:
    """Remove everything a change that never went live left behind; report what could not
    be removed as warnings (the next run of the request removes it)."""
    problems: list[WarningInfo] = []
    for change in changed_only(changes):
        try:
            await remove_temps(change)
            if change.journal is not None:
                await delete_journal(change.host, change.journal)
        except Exception as exc:
            log.warning("cleanup.failed", server=change.name, error=str(exc))
            problems.append(cleanup_failed(change, exc))
    return problems


async def discard_relocked(changes: Sequence[ServerChange], wait: float) -> list[WarningInfo]:
    """:func:`discard`, under the locks again where an SSH cut took them, with the temp files
    of the writes the cut broke off. A cut is noticed server by server, so each pass takes
    again what was found lost (the locks taken stay held until the end); if they cannot be
    taken, the leftovers stay for a later run of this request id to clear."""
    hosts = [c.host for c in changes]
    problems: list[WarningInfo] = []
    cut = False
    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(3):
                cut = cut or bool(lost_locks(hosts))
                await held.enter_async_context(relocked(hosts, wait))
                problems = await discard(changes)
                if lost_locks(hosts):
                    continue
                if not cut:
                    return problems
                try:
                    await _remove_cut_writes(changes)
                except LockLost:
                    continue
                return problems
    except Exception as exc:
        log.error("change.discard_failed", error=str(exc))
        return [WarningInfo(code="cleanup_failed", message=f"staged files kept: {exc}")]
    return problems


async def _remove_cut_writes(changes: Sequence[ServerChange]) -> None:
    """The temp files of writes an SSH cut broke off, beside the change's files (under the
    lock: no other change writes there now)."""
    for change in changed_only(changes):
        for directory in sorted({posixpath.dirname(f.path) for f in change.files}):
            await prune_temps(change.host, directory, await change.host.listdir(directory))
