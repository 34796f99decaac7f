"""The end of a change: record its outcome on every server, then tidy up; and finishing the
bookkeeping of a change whose outcome some server already holds.

Order matters (docs/design.md, "Failure semantics"): the outcome is written into every
server's journal as a *done record* before it is announced, so once an event may be out, a
done record exists and every later run of the request answers with that outcome and touches
no live file. Only then are the running journals removed, temp files and old backups pruned.

A done record on *any* server of a change means the change has ended: its outcome is final.
A server that kept only its running journal (a done-record write failed, the worker died in
between) is completed from it — by a redelivery of the request, or by the next change that
finds the running journal in its way — instead of locking that server out for good.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Iterable, Sequence

import structlog

from worker.change.journal import (
    Journal,
    Step,
    find_journal,
    journal_dir,
    list_journal_dir,
    prune_backups,
    prune_journals,
    prune_temps,
    records,
    remove_running_journal,
    write_journal,
)
from worker.change.model import ServerChange, changed_only
from worker.change.ports import Fleet, RemoteHost
from worker.messages import ResultData, WarningInfo
from worker.metrics import timed

log = structlog.stdlib.get_logger(__name__)


@timed("finish")
async def record_outcome(changes: Sequence[ServerChange], result: ResultData) -> list[str]:
    """Write the outcome into every changed server's journal, as its done record, all at
    once; return the names of the servers where that failed (logged). The running journals
    stay until :func:`clean_up`: a done record beside one ends it anyway."""
    stored = result.model_copy(deep=True)
    journaled = [c for c in changed_only(changes) if c.journal is not None]

    async def one(change: ServerChange) -> None:
        journal = change.journal
        assert journal is not None
        journal.outcome, journal.report, journal.step = stored, [], Step.done
        await write_journal(change.host, journal)

    outcomes = await asyncio.gather(*(one(c) for c in journaled), return_exceptions=True)
    failed: list[str] = []
    for change, outcome in zip(journaled, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            log.error("journal.not_recorded", server=change.name, error=str(outcome))
            failed.append(change.name)
    return failed


@timed("finish")
async def clean_up(
    changes: Sequence[ServerChange],
    locked: dict[str, list[str]],
    backup_retention: int,
    journal_retention: int,
    recorded: Iterable[str],
) -> None:
    """Under the locks, after the outcome is recorded: every server's temp files (ours and
    leftovers of cut-off writes), backups and done records beyond retention, and the running
    journals of the servers in ``recorded`` (they have their done record). The steps touch
    disjoint files, so each server's run at once. Problems are logged: the outcome is final,
    and a later change tidies up what is left."""
    done = set(recorded)

    async def clean(change: ServerChange) -> None:
        steps = [
            remove_temps(change),
            _prune(change, locked.get(change.name), backup_retention, journal_retention),
        ]
        if change.journal is not None and change.name in done:
            steps.append(remove_running_journal(change.host, change.journal))
        for outcome in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                log.warning("cleanup.failed", server=change.name, error=str(outcome))

    await asyncio.gather(*(clean(c) for c in changed_only(changes)))


async def _prune(
    change: ServerChange, names: list[str] | None, backup_retention: int, journal_retention: int
) -> None:
    """Backups, temp files and done records beyond retention, from the listings taken under
    the lock (they still hold, but for this change's own files: its backups are added)."""
    host = change.host
    home = journal_dir(host)
    directories = {posixpath.dirname(f.path) for f in change.files} | {home}
    listings = {d: names if d == home and names is not None else None for d in directories}
    for directory in directories:
        if listings[directory] is None:
            listings[directory] = await host.listdir(directory)
    steps = [
        prune_backups(
            host,
            f.path,
            backup_retention,
            listings[posixpath.dirname(f.path)],
            [f.backup] if f.linked else [],
        )
        for f in change.files
    ]
    steps += [prune_temps(host, d, listing or []) for d, listing in listings.items()]
    # This change's done record has just been written: make room for it.
    steps.append(prune_journals(host, max(journal_retention - 1, 0), listings[home]))
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def remove_temps(change: ServerChange) -> None:
    """This change's own candidates, validation copies and restores that may still exist."""
    for path in sorted(change.temps):
        await change.host.remove(path)
        change.temps.discard(path)


def cleanup_failed(change: ServerChange, exc: BaseException) -> WarningInfo:
    return WarningInfo(
        code="cleanup_failed", message=f"cleanup on {change.name} failed: {exc}", server=change.name
    )


# -- completing a change that has ended -------------------------------------------------------


async def complete(
    fleet: Fleet,
    request_id: str,
    outcome: ResultData,
    servers: Iterable[str],
    listings: dict[str, list[str]] | None = None,
) -> None:
    """Give every server of an ended change its done record and drop its running journal.

    Safe without the change's locks: a done record anywhere holds *the* outcome, so another
    run writing the same done record (same name, same outcome) at the same moment is
    harmless. ``listings``: journal directories already listed (server -> names), updated
    in place. Problems are logged; the next run or change that meets the leftover tries
    again."""

    async def one(name: str) -> None:
        host = fleet.host(name)
        names = await list_journal_dir(host, listings)
        running, done = records(names).get(request_id, (None, None))
        if running is None:
            return
        if done is None:
            journal = await find_journal(host, request_id, names)
            if journal is None or journal.outcome is not None:
                return
            journal.outcome, journal.report, journal.step = outcome, [], Step.done
            await write_journal(host, journal)
            names.append(posixpath.basename(journal.path(journal_dir(host))))
            await remove_running_journal(host, journal)
        else:
            await host.remove(posixpath.join(journal_dir(host), running))
        names.remove(running)
        log.info("journal.completed", server=name, request=request_id)

    names = list(dict.fromkeys(servers))
    results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            log.warning("journal.not_completed", server=name, error=str(result))


async def ended_elsewhere(
    fleet: Fleet, host: RemoteHost, request_id: str, names: list[str]
) -> ResultData | None:
    """The outcome of another request whose running journal is on ``host`` (``names``: its
    journal directory as listed), if a server of that change holds its done record."""
    journal = await find_journal(host, request_id, names)
    if journal is None or journal.outcome is not None:
        return journal.outcome if journal is not None else None
    for name in journal.servers:
        if name == host.name:
            continue
        try:
            other = fleet.host(name)
            found = await find_journal(other, request_id)
        except Exception as exc:  # unreachable, gone from the inventory: not known to have ended
            log.info("journal.partner_unknown", server=name, request=request_id, error=str(exc))
            continue
        if found is not None and found.outcome is not None:
            return found.outcome
    return None


def servers_of(journals: Iterable[Journal]) -> list[str]:
    """Every server a change committed to, as its journals list them."""
    return list(dict.fromkeys(n for j in journals for n in (j.server, *j.servers)))


async def record_early(
    fleet: Fleet, names: Sequence[str], result: ResultData, stamp: str, skip: str | None
) -> None:
    """A ``failed`` outcome (reached before any commit) has no journal to hold
    it: give it a done record of its own on each named server that takes one (``skip``: the
    server that could not be reached), before it is announced. Then a redelivery (the ack
    lost with a connection, a node lost) answers with it instead of planning afresh and
    maybe ending ``succeeded``: one outcome per request id. Problems are logged."""
    stored = result.model_copy(deep=True)

    async def one(name: str) -> None:
        host = fleet.host(name)
        journal = Journal(
            requestId=result.requestId,
            command=result.command,
            stamp=stamp,
            server=name,
            servers=[],
            step=Step.done,
            files=[],
            comment=result.comment,
            outcome=stored,
        )
        await write_journal(host, journal)

    targets = [n for n in dict.fromkeys(names) if n != skip]
    outcomes = await asyncio.gather(*(one(n) for n in targets), return_exceptions=True)
    for name, outcome in zip(targets, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            log.warning("journal.not_recorded", server=name, error=str(outcome))
