"""The per-server change journal, and the names of every file a change leaves next to a config.

A change writes one small JSON journal on each server it commits to, in the main config's
directory, before it replaces any live file. The journal records the plan (sha256 before and
after of every file the change writes, where the candidate and the backup live), how far this
server got (:class:`Step`), and, once the change has ended, its outcome. That is what lets a
later run of the same request id return the same outcome without touching anything, or finish
or undo a change a dead worker cut off (see :mod:`worker.change.coordinator`). When the change
ends the journal is replaced by a *done record* under another name, so "is a change unfinished
on this server?" and "which records may be pruned?" are answered by ``listdir`` alone.

File names carry a UTC stamp so pruning can keep "the newest N" with nothing but ``listdir``
(a remote ``stat`` per file would cost a round trip each)::

    <config dir>/.dhcp-failover-journal.<stamp>.<request id>.json   while the change runs
    <config dir>/.dhcp-failover-done.<stamp>.<request id>.json      once it has ended
    <file dir>/.<file name>.<stamp>.<request id>.bak      the live file as it was
    <file dir>/.<file name>.<request id>.new              the candidate, renamed over the live file
    <file dir>/.<file name>.<request id>.check            a validation copy with rewritten includes
    <file dir>/.<file name>.<request id>.restore          the backup's bytes on their way back
    <file dir>/.<file name>.<12 hex>.tmp                  an atomic write in flight (ports)

Everything sits in the live file's own directory, so every rename is atomic (same filesystem)
and AppArmor profiles that allow the config directory allow these too.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, ValidationError

from worker.change.ports import WRITE_TEMP_NAME, RemoteHost
from worker.errors import Failed
from worker.messages import ErrorInfo, Phase, ResultData, ServerResult, WarningInfo

JOURNAL_PREFIX = ".dhcp-failover-journal."
DONE_PREFIX = ".dhcp-failover-done."
_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_STAMP = r"\d{8}T\d{12}Z"
_RECORD_NAME = re.compile(
    rf"^(?P<prefix>{re.escape(JOURNAL_PREFIX)}|{re.escape(DONE_PREFIX)})"
    rf"(?P<stamp>{_STAMP})\.(?P<rid>.+)\.json$"
)
JOURNAL_VERSION = 1


class Step(StrEnum):
    """How far one server got, where the live files cannot tell.

    The commit itself saves no step: whether a server's live files were replaced is read from
    their sha256 (:mod:`worker.change.recovery`), and a server holding a new file is restarted
    again by a resumed change whatever it had reached (restarting twice is harmless). So a
    commit costs no journal write; only the rollback's start and end, and the outcome, are
    recorded. ``committed`` and ``restarted`` are no longer written; they are still read in
    journals left by earlier versions."""

    staged = "staged"  # the change's plan; live files may since have been replaced
    committed = "committed"  # (earlier versions) live file replaced; restart may have begun
    restarted = "restarted"  # (earlier versions) restarted and verified on the new file
    restoring = "restoring"  # rollback under way on this server
    rolled_back = "rolled_back"  # old file back and restarted (when it had been restarted)
    done = "done"  # the change has ended; ``outcome`` holds its result


class FileRecord(BaseModel):
    """One live file the change writes on this server."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: str
    before: str  # sha256 hex of the live bytes read at plan
    after: str  # sha256 hex of the candidate
    staged: str  # candidate path next to the live file
    backup: str  # backup path next to the live file


class Journal(BaseModel):
    """The journal of one request on one server."""

    model_config = ConfigDict(extra="ignore")

    version: int = JOURNAL_VERSION
    requestId: str
    command: str | None
    stamp: str
    server: str
    servers: list[str]  # every server the change commits to, in commit order
    step: Step
    restartAttempted: bool = False  # restarted during the change (or may be down): set when
    # the rollback starts; a server holding a new file is taken as restarted anyway
    files: list[FileRecord]
    report: list[ServerResult] = []  # the plan's view of every server, for a resumed run
    warnings: list[WarningInfo] = []
    comment: str | None = None  # the request's comment (a change ticket), for the audit
    error: ErrorInfo | None = None  # why a rollback started
    outcome: ResultData | None = None  # set with step ``done``
    updated: str = ""

    def path(self, directory: str) -> str:
        """Where this journal lives: the done record's name once the change has ended."""
        prefix = DONE_PREFIX if self.step == Step.done else JOURNAL_PREFIX
        return journal_path(directory, self.stamp, self.requestId, prefix)


# -- names -----------------------------------------------------------------------------------


def new_stamp(now: datetime | None = None) -> str:
    """A sortable UTC stamp (microseconds) shared by a change's journal and backups."""
    return (now or datetime.now(UTC)).strftime(_STAMP_FORMAT)


def journal_dir(host: RemoteHost) -> str:
    return posixpath.dirname(host.config_path)


def journal_path(directory: str, stamp: str, request_id: str, prefix: str = JOURNAL_PREFIX) -> str:
    return posixpath.join(directory, f"{prefix}{stamp}.{request_id}.json")


def _beside(live: str, suffix: str) -> str:
    directory, name = posixpath.split(live)
    return posixpath.join(directory, f".{name}.{suffix}")


def staged_path(live: str, request_id: str) -> str:
    return _beside(live, f"{request_id}.new")


def check_path(live: str, request_id: str) -> str:
    return _beside(live, f"{request_id}.check")


def restore_path(live: str, request_id: str) -> str:
    return _beside(live, f"{request_id}.restore")


def backup_path(live: str, stamp: str, request_id: str) -> str:
    return _beside(live, f"{stamp}.{request_id}.bak")


def _backup_name(live: str) -> re.Pattern[str]:
    name = re.escape(posixpath.basename(live))
    return re.compile(rf"^\.{name}\.(?P<stamp>{_STAMP})\.(?P<rid>.+)\.bak$")


# -- reading and writing ---------------------------------------------------------------------


async def list_journal_dir(host: RemoteHost, listings: dict[str, list[str]] | None) -> list[str]:
    """The names in ``host``'s journal directory: from ``listings`` (keyed by server name) when
    it holds them, else listed now and stored there. One listing serves every question a step
    asks about the directory (this request's journal, unfinished changes, what to prune)."""
    if listings is not None and host.name in listings:
        return listings[host.name]
    names = await host.listdir(journal_dir(host))
    if listings is not None:
        listings[host.name] = names
    return names


async def find_journal(
    host: RemoteHost, request_id: str, names: list[str] | None = None
) -> Journal | None:
    """This request's journal on ``host`` (its done record, if it has one), or None. A journal
    that cannot be read back is an error, not "no journal": guessing could apply a change
    twice. ``names``: the journal directory as just listed, if the caller has it."""
    directory = journal_dir(host)
    if names is None:
        names = await host.listdir(directory)
    found = sorted(
        (m["prefix"] == DONE_PREFIX, m["stamp"], name)
        for name in names
        if (m := _RECORD_NAME.match(name)) and m["rid"] == request_id
    )
    if not found:
        return None
    path = posixpath.join(directory, found[-1][2])
    data = await host.read(path)
    if data is None:  # finished or pruned between listdir and read
        return None if found[-1][0] else await find_journal(host, request_id)
    try:
        return Journal.model_validate(json.loads(data))
    except (ValidationError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise Failed(
            f"journal {path} on {host.name} cannot be read back; "
            "an operator must check the server and remove it",
            code="journal_corrupt",
            server=host.name,
            phase=Phase.plan,
            detail={"file": path, "error": str(exc)[:1000]},
        ) from None


async def unfinished_changes(
    host: RemoteHost, request_id: str, names: list[str] | None = None
) -> list[str]:
    """Request ids of *other* changes still unfinished on ``host`` (a journal and no done
    record): a change cut off there must be finished or undone before another one starts.
    ``names``: the journal directory as just listed, if the caller has it."""
    active: set[str] = set()
    done: set[str] = set()
    if names is None:
        names = await host.listdir(journal_dir(host))
    for name in names:
        if m := _RECORD_NAME.match(name):
            (done if m["prefix"] == DONE_PREFIX else active).add(m["rid"])
    return sorted(active - done - {request_id})


async def save_journal(host: RemoteHost, journal: Journal) -> None:
    """Write the journal; ``RemoteHost.write`` is atomic (a reader never sees half of it), so
    no temp file of our own is needed. Saving the done record also removes the running
    journal it replaces (:func:`remove_running_journal`)."""
    await write_journal(host, journal)
    if journal.step == Step.done:
        await remove_running_journal(host, journal)


async def write_journal(host: RemoteHost, journal: Journal) -> None:
    """Write the journal under its current name, atomically; one ``write``. It gets the
    config's mode and owner: it quotes the config (the diff), so it is as private."""
    journal.updated = datetime.now(UTC).isoformat()
    data = encode_journal(journal)
    await host.write(journal.path(journal_dir(host)), data, like=host.config_path)


def encode_journal(journal: Journal) -> bytes:
    """ASCII JSON: a path or message holding a byte that is not UTF-8 (a surrogate, as the
    engine decodes configs) is kept as a ``\\udcXX`` escape, so it reads back exactly (a
    journal names the files a resumed change must find) where UTF-8 could not hold it."""
    return json.dumps(journal.model_dump(mode="json", exclude_none=True)).encode("ascii")


async def remove_running_journal(host: RemoteHost, journal: Journal) -> None:
    """Remove the running journal once its done record exists (a leftover is harmless: a
    done record makes the change finished whatever else is there)."""
    await host.remove(journal_path(journal_dir(host), journal.stamp, journal.requestId))


async def delete_journal(host: RemoteHost, journal: Journal) -> None:
    await host.remove(journal.path(journal_dir(host)))


# -- pruning ---------------------------------------------------------------------------------


async def prune_backups(
    host: RemoteHost,
    live: str,
    keep: int,
    names: list[str] | None = None,
    added: Sequence[str] = (),
) -> list[str]:
    """Remove the oldest backups of ``live`` beyond the newest ``keep``; return their paths.
    ``names``: the directory as listed earlier under the change lock (nothing else adds or
    removes backups while it is held), ``added``: backup paths made since that listing."""
    directory = posixpath.dirname(live)
    pattern = _backup_name(live)
    if names is None:
        names = await host.listdir(directory)
    every = set(names) | {posixpath.basename(a) for a in added}
    found = sorted((m["stamp"], name) for name in every if (m := pattern.match(name)))
    doomed = [posixpath.join(directory, name) for _, name in found[: max(len(found) - keep, 0)]]
    await _remove_all(host, doomed)
    return doomed


def records(names: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    """Request id -> (its running journal's name, its done record's name) in a listing."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for name in sorted(names):
        if m := _RECORD_NAME.match(name):
            running, done = found.get(m["rid"], (None, None))
            if m["prefix"] == DONE_PREFIX:
                done = name
            else:
                running = name
            found[m["rid"]] = (running, done)
    return found


async def prune_journals(host: RemoteHost, keep: int, names: list[str] | None = None) -> list[str]:
    """Remove done records beyond the newest ``keep``, and running journals that a done
    record beside them has ended (the leftover of a removal that failed). A running journal
    without a done record is never removed: it is how a cut-off change gets finished; and a
    done record goes only once no running journal of its request is left beside it, or that
    journal would turn into an unfinished change. ``names`` as for :func:`prune_backups`."""
    directory = journal_dir(host)
    if names is None:
        names = await host.listdir(directory)
    found = records(names)
    leftovers = {rid: running for rid, (running, done) in found.items() if running and done}
    results = await asyncio.gather(
        *(host.remove(posixpath.join(directory, n)) for n in leftovers.values()),
        return_exceptions=True,
    )
    kept = {rid for rid, r in zip(leftovers, results, strict=True) if isinstance(r, Exception)}
    done = sorted(
        (m["stamp"], name, m["rid"])
        for _, name in found.values()
        if name and (m := _RECORD_NAME.match(name))
    )
    beyond = done[: max(len(done) - keep, 0)]
    doomed = [posixpath.join(directory, name) for _, name, rid in beyond if rid not in kept]
    await _remove_all(host, doomed)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [posixpath.join(directory, n) for n in leftovers.values()] + doomed


async def prune_temps(host: RemoteHost, directory: str, names: Sequence[str]) -> list[str]:
    """Remove the temp files of writes cut off mid-way (``ports.WRITE_TEMP_NAME``). Only
    under the change lock: then no write of ours is in flight in this directory."""
    doomed = [posixpath.join(directory, n) for n in names if WRITE_TEMP_NAME.match(n)]
    await _remove_all(host, doomed)
    return doomed


async def _remove_all(host: RemoteHost, paths: Sequence[str]) -> None:
    """Remove ``paths`` at once (distinct files); all finish before the first error is raised."""
    for result in await asyncio.gather(*(host.remove(p) for p in paths), return_exceptions=True):
        if isinstance(result, BaseException):
            raise result
