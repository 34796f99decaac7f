"""Reading back a change that an earlier run of the same request id left unfinished.

The journals say what the change was (files, hashes, candidate and backup names, the report)
and whether a rollback had begun; the live files' sha256 say how far the commit got on each
server. The commit records no step of its own: a server holding any new (or unrecognised)
file may have been restarted on it -- or be down after a failed restart -- so it is treated as
"restart attempted, not known to have succeeded": finishing the change restarts it again,
undoing it restarts it on the restored file. Restarting twice is harmless; not restarting a
server that needed it is not. (Journals of earlier versions may say ``committed`` or
``restarted``; they are read the same way, and ``restarted`` with every file new still counts
as running the new config.) :func:`decide` turns that into one verdict; the coordinator acts
on it.

Verdicts (the policy the coordinator's docstring states):

* ``replan`` -- nothing went live (every file old, no server past ``staged``): drop the
  leftovers and plan the request afresh, as if the earlier run never happened;
* ``conflict`` -- a live file matches neither the old nor the new version: someone else
  changed it mid-change; touch nothing, report ``rollback_failed`` for an operator;
* ``back`` -- a rollback was already under way, a journal is missing, or a candidate is gone:
  restore the backups and restart what had been restarted;
* ``forward`` -- otherwise: finish the commit on the servers still behind (after validating
  their candidates again), restarting the ones that may not have restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from worker.change.journal import (
    FileRecord,
    Journal,
    Step,
    check_path,
    find_journal,
    list_journal_dir,
    restore_path,
)
from worker.change.model import FileChange, ServerChange, changed_only
from worker.change.ports import Fleet, RemoteHost
from worker.change.snapshot import decode, read_snapshot, sha256_hex
from worker.change.staging import validate_tree
from worker.errors import WorkerError
from worker.messages import ErrorInfo, Phase, ResultData, WarningInfo

Verdict = Literal["replan", "conflict", "back", "forward"]


@dataclass
class Resumed:
    """An unfinished change as found on the servers, and what to do with it."""

    changes: list[ServerChange]
    verdict: Verdict
    reason: str
    cause: WorkerError | None = None  # why a rollback had started, if one had
    warnings: list[WarningInfo] = field(default_factory=list)


async def find_previous(
    fleet: Fleet,
    names: Sequence[str],
    request_id: str,
    listings: dict[str, list[str]] | None = None,
) -> dict[str, Journal]:
    """This request's journals on the named servers (those that have one). The journal
    directories listed on the way are stored in ``listings`` (server name -> names), so the
    caller's next questions about them cost no second listing."""
    hosts = [fleet.host(n) for n in names]

    async def find(host: RemoteHost) -> Journal | None:
        return await find_journal(host, request_id, await list_journal_dir(host, listings))

    found = await asyncio.gather(*(find(h) for h in hosts))
    return {n: j for n, j in zip(names, found, strict=True) if j is not None}


def finished(journals: Mapping[str, Journal | None]) -> ResultData | None:
    """The recorded outcome, if any server has one: the change has ended."""
    for journal in journals.values():
        if journal is not None and journal.outcome is not None:
            return journal.outcome
    return None


async def load(fleet: Fleet, journals: Mapping[str, Journal | None], request_id: str) -> Resumed:
    """Rebuild the change from the journals and the live files; read-only."""
    anchor = next(j for j in journals.values() if j is not None)
    changes: list[ServerChange] = []
    for report in anchor.report or []:
        host = fleet.host(report.name)
        journal = journals.get(report.name)
        change = ServerChange(host=host, report=report, files=[])
        if report.name in anchor.servers and journal is not None:
            change.journal = journal
            change.files = [await _file(host, r) for r in journal.files]
            change.temps = _possible_temps(host, journal, request_id)
            _progress(change, journal)
        changes.append(change)
    verdict, reason = decide(changes, {n: journals.get(n) for n in anchor.servers})
    cause = _cause(journals)
    return Resumed(changes, verdict, reason, cause, list(anchor.warnings))


async def _file(host: RemoteHost, record: FileRecord) -> FileChange:
    """A journaled file with its live state, and the old/new bytes where still intact."""
    f = FileChange(
        path=record.path,
        before_sha=record.before,
        after_sha=record.after,
        staged=record.staged,
        backup=record.backup,
        before=None,
        after=None,
    )
    live = await host.read(record.path)
    f.state = f.classify(live)
    f.before = live if f.state == "old" else await _intact(host, record.backup, record.before)
    f.after = live if f.state == "new" else await _intact(host, record.staged, record.after)
    return f


def _possible_temps(host: RemoteHost, journal: Journal, request_id: str) -> set[str]:
    """Every temp name the earlier run may have left (removing a missing one is harmless)."""
    temps: set[str] = set()
    for r in journal.files:
        temps |= {r.staged, check_path(r.path, request_id), restore_path(r.path, request_id)}
    return temps


async def _intact(host: RemoteHost, path: str, sha: str) -> bytes | None:
    data = await host.read(path)
    return data if data is not None and sha256_hex(data) == sha else None


def _progress(change: ServerChange, journal: Journal) -> None:
    all_new = all(f.state == "new" for f in change.files)
    if journal.step == Step.rolled_back:  # its rollback finished: nothing left to undo
        change.restarted = journal.restartAttempted
        return
    # The live files tell whether the rename happened; then the restart may have, too.
    replaced = any(f.state != "old" for f in change.files)
    change.restart_attempted = journal.restartAttempted or replaced
    change.restarted = change.running_new = journal.step == Step.restarted and all_new


def decide(
    changes: Sequence[ServerChange], journals: Mapping[str, Journal | None]
) -> tuple[Verdict, str]:
    """Pure: the verdict for a resumed change (see the module docstring)."""
    changed = changed_only(changes)
    files = [f for c in changed for f in c.files]
    steps = {j.step for j in journals.values() if j is not None}
    if (
        all(f.state == "old" for f in files)
        and steps <= {Step.staged}
        and not any(c.restart_attempted for c in changed)
    ):
        return "replan", "nothing had gone live"
    unknown = [f"{c.name}:{f.path}" for c in changed for f in c.files if f.state == "unknown"]
    if unknown:
        return "conflict", "since then someone else changed " + ", ".join(unknown)
    if steps & {Step.restoring, Step.rolled_back}:
        return "back", "a rollback was under way"
    missing = [n for n, j in journals.items() if j is None]
    if missing:
        return "back", "the journal is missing on " + ", ".join(missing)
    gone = [f"{c.name}:{f.path}" for c in changed for f in c.files if f.after is None]
    if gone:
        return "back", "the candidate is gone for " + ", ".join(gone)
    return "forward", "finishing the commit"


def _cause(journals: Mapping[str, Journal | None]) -> WorkerError | None:
    """Why a rollback had started, as the earlier run recorded it."""
    info: ErrorInfo | None = next(
        (j.error for j in journals.values() if j is not None and j.error is not None), None
    )
    if info is None:
        return None
    return WorkerError(
        info.message, code=info.code, server=info.server, phase=info.phase, detail=info.detail
    )


def interrupted(changes: Sequence[ServerChange], reason: str) -> WorkerError:
    """The error of a cut-off change that is being undone rather than finished."""
    live = [c.name for c in changed_only(changes) if c.restart_attempted or c.state() != "old"]
    return WorkerError(
        f"an earlier run of this request was cut off after committing on "
        f"{', '.join(live) or 'no server'}; {reason}, so the change is undone",
        code="change_interrupted",
        phase=Phase.commit,
        detail={"reason": reason},
    )


async def validate_pending(change: ServerChange, request_id: str) -> None:
    """Validate a server's remaining candidates against its live tree before finishing."""
    pending = {f.path: f.after for f in change.files if f.state == "old"}
    if not pending:
        return
    snapshot = await read_snapshot(change.host)
    texts = snapshot.texts()
    texts.update({path: decode(data) for path, data in pending.items() if data is not None})
    await validate_tree(change.host, change.main, texts, list(pending), request_id)
