"""Commit and rollback: the only steps that touch live files.

Commit goes server by server, in order: back up the live file, rename the candidate over it,
restart (the host's restart command runs restart and verify together). The first failure stops
it. No journal write is on this path: the journal holding the plan was written before the first
server's backup, and how far each server got is read back from its live files' sha256 (a
resumed change restarts every server holding a new file again, which is harmless).

Backups are hard links to the live file taken just before its rename (one request, no copy):
the rename gives the live name the candidate's file and the backup keeps the old one. Nothing
of ours rewrites a file in place, so the backup's bytes cannot change afterwards.

Rollback undoes every server the commit touched, last first: the backup's bytes are written
beside the live file and renamed over it (so the backup itself stays for the operator), and
a server that was restarted on the new config -- or whose restart failed, leaving it down --
is restarted again. A file that cannot be restored is probed to say which version it holds;
such a server is not restarted, because restarting it would only run the wrong file.

A restart that ran past ``command_timeout`` (stopped on the server) or lost its reply is
*ambiguous*: dhcpd may run the new file, the old one, or nothing. It is never taken for a
success, nor for a failure unseen: where the server has an ``omapi`` table the verify phase
reads dhcpd and decides (:func:`restart_confirmed` / :func:`restart_unconfirmed`); without one
it is undone like a failed restart (docs/design.md §7).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from worker.change.aio import all_of
from worker.change.faults import step
from worker.change.journal import Step, restore_path, save_journal
from worker.change.model import FileChange, FileState, ServerChange, changed_only
from worker.change.ports import CommandResult, RemoteHost
from worker.errors import Ambiguous, CommandFailed, WorkerError
from worker.messages import Phase, WarningInfo
from worker.metrics import timed

log = structlog.stdlib.get_logger(__name__)

#: How much of a failed restart's output an error carries.
OUTPUT_TAIL = 2000
#: The warning of a change whose restart timed out but whose dhcpd was seen running it.
RESTART_TIMED_OUT = "restart_timed_out"


def as_worker_error(exc: BaseException, phase: Phase, server: str | None = None) -> WorkerError:
    """Any exception as a ``WorkerError`` placed in the phase it happened in. Unexpected ones
    (a bug, an OSError the transport did not map) keep their type name in the message."""
    if isinstance(exc, WorkerError):
        if exc.phase is not Phase.validate:  # dhcpd's refusal keeps the phase it names
            exc.phase = phase
        exc.server = exc.server or server
        return exc
    log.error("unexpected_error", phase=phase.value, server=server, exc_info=exc)
    return WorkerError(
        f"{type(exc).__name__}: {exc}", code="internal_error", phase=phase, server=server
    )


async def save_step(change: ServerChange, step: Step, **fields: Any) -> None:
    """Record how far this server got (and anything else, such as the rollback's cause)."""
    journal = change.journal
    if journal is None:
        return
    for key, value in fields.items():
        setattr(journal, key, value)
    journal.step = step
    await save_journal(change.host, journal)


def restart_error(server: str, result: CommandResult, phase: Phase) -> CommandFailed:
    output = "\n".join(p for p in (result.stdout, result.stderr) if p)[-OUTPUT_TAIL:]
    last = output.strip().splitlines()[-1] if output.strip() else "no output"
    return CommandFailed(
        f"restart on {server} failed (exit status {result.exit_status}): {last}",
        server=server,
        phase=phase,
        detail={"command": result.command, "exitStatus": result.exit_status, "output": output},
    )


# -- commit ----------------------------------------------------------------------------------


@timed("commit")
async def commit(changes: Sequence[ServerChange]) -> WorkerError | None:
    """Commit every changed server in order; the first failure is returned, not raised, so
    the caller decides the rollback in one place. Servers already running the new config
    (a resumed change) are skipped; a server half done is finished."""
    for change in changed_only(changes):
        if change.running_new:
            continue
        try:
            with change.timed():
                await _commit_server(change)
        except Exception as exc:
            error = as_worker_error(exc, Phase.commit, change.name)
            log.error("commit.failed", server=change.name, code=error.code, error=error.message)
            return error
    return None


async def _commit_server(change: ServerChange) -> None:
    host = change.host
    pending = [f for f in change.files if f.state != "new"]
    for f in pending:
        if f.before is None or f.after is None:  # only a damaged resumed change gets here
            raise WorkerError(f"{f.path}: backup or candidate missing", code="journal_mismatch")
    if change.snapshot is None:  # resumed: the earlier run may have made the backups already
        await all_of([host.remove(f.backup) for f in pending])
    # The backup is a hard link to the live file (which still holds the old bytes): the
    # rename below gives the live name a new file, the backup keeps the old one.
    await all_of([host.link(f.path, f.backup) for f in pending])
    for f in pending:
        f.linked = True
    await step("backed_up")  # test-only (worker/change/faults.py)
    for f in pending:
        f.state = "unknown"  # a rename that raises may or may not have happened
        await host.replace(f.staged, f.path)
        f.state = "new"
        change.temps.discard(f.staged)
        await step("renamed")  # test-only (worker/change/faults.py)
    log.info("commit.replaced", server=change.name, files=[f.path for f in pending])
    change.restart_attempted = True
    try:
        result = await host.restart()
    except Ambiguous as exc:
        raise restart_unknown(change, exc) from exc
    if not result.ok:
        raise restart_error(change.name, result, Phase.commit)
    change.restarted = change.running_new = True
    log.info("commit.restarted", server=change.name, duration_ms=result.duration_ms)
    await step("restarted")  # test-only (worker/change/faults.py)


# -- a restart whose result is unknown --------------------------------------------------------


def restart_unknown(change: ServerChange, exc: Ambiguous) -> Ambiguous:
    """The restart's own error, saying what it means for the change; ``detail.step`` marks
    it for :func:`restart_timed_out`."""
    then = (
        "reading dhcpd over OMAPI to decide"
        if change.host.omapi is not None
        else "no omapi table to check it, so it is undone like a failed restart"
    )
    return Ambiguous(
        f"restart on {change.name} did not finish, so whether dhcpd runs the new config is "
        f"unknown ({then}): {exc.message}",
        server=change.name,
        phase=Phase.commit,
        detail={**(exc.detail if isinstance(exc.detail, dict) else {}), "step": "restart"},
    )


def restart_timed_out(change: ServerChange, cause: WorkerError) -> bool:
    """``change``'s commit stopped at an ambiguous restart, every file renamed, and its lock
    still held (a lost connection took the lock: that change is ended from its journals)."""
    return (
        isinstance(cause, Ambiguous)
        and isinstance(cause.detail, dict)
        and cause.detail.get("step") == "restart"
        and change.state() == "new"
        and not change.host.lock_lost()
    )


def restart_confirmed(change: ServerChange, cause: WorkerError) -> WarningInfo:
    """dhcpd was read running the new config after an ambiguous restart: it restarted. The
    change goes on, and its result says the restart command did not finish."""
    change.restarted = change.running_new = True
    log.warning("commit.restart_confirmed", server=change.name, error=cause.message)
    return WarningInfo(
        code=RESTART_TIMED_OUT,
        message=f"{cause.message}; dhcpd was then read over OMAPI running the new config, "
        "so the change went ahead (the restart command should return once dhcpd is up)",
        server=change.name,
    )


def restart_unconfirmed(cause: WorkerError, failure: WorkerError) -> WorkerError:
    """After an ambiguous restart dhcpd was not seen running the new config: the restart is
    taken as failed (``ambiguous``), with what the verify saw."""
    return Ambiguous(
        f"{cause.message}; dhcpd was not seen running the new config either: {failure.message}",
        server=cause.server,
        phase=Phase.commit,
        detail={**cause.detail, "verify": failure.to_info().model_dump(mode="json")},
    )


# -- rollback --------------------------------------------------------------------------------


@timed("rollback")
async def rollback(changes: Sequence[ServerChange], request_id: str, cause: WorkerError) -> bool:
    """Restore every server the commit touched, last committed first. True when each holds
    its old files again and, where it had been restarted, was restarted on them."""
    touched = [
        c
        for c in changed_only(changes)
        if c.restart_attempted or any(f.state != "old" for f in c.files)
    ]
    for change in reversed(touched):
        with change.timed():
            change.needs_operator = not await _restore_server(change, request_id, cause)
    return not any(c.needs_operator for c in touched)


async def _restore_server(change: ServerChange, request_id: str, cause: WorkerError) -> bool:
    host = change.host
    try:
        await save_step(
            change, Step.restoring, error=cause.to_info(), restartAttempted=change.restart_attempted
        )
    except Exception as exc:  # keep going: restoring matters more than recording it
        _problem(change, f"journal not updated before restoring: {exc}")
    for f in change.files:
        if f.state == "old":
            continue
        try:
            await _restore_file(host, f, request_id, change.temps)
            f.state = "old"
            log.info("rollback.restored", server=change.name, file=f.path)
        except Exception as exc:
            f.state = await _probe(host, f)
            _problem(change, f"restoring {f.path} failed ({exc}); it holds the {f.state} file")
    if any(f.state != "old" for f in change.files):
        return False
    if change.restart_attempted:
        try:
            result = await host.restart()
            if not result.ok:
                raise restart_error(change.name, result, Phase.rollback)
        except Exception as exc:
            _problem(change, f"restart on the old config failed: {exc}")
            return False
        change.restarted = True
        log.info("rollback.restarted", server=change.name)
    change.running_new = False
    try:
        await save_step(change, Step.rolled_back)
    except Exception as exc:
        _problem(change, f"journal not updated after restoring: {exc}")
    return True


def _problem(change: ServerChange, what: str) -> None:
    """Something went wrong while restoring: logged now, reported in the result later."""
    change.problems.append(what)
    log.error("rollback.problem", server=change.name, problem=what)


async def _restore_file(host: RemoteHost, f: FileChange, request_id: str, temps: set[str]) -> None:
    """Write the old bytes beside the live file and rename them over it: atomic, and the
    backup stays where the operator expects it."""
    if f.before is None:
        raise WorkerError(f"no intact backup of {f.path} ({f.backup})", code="backup_missing")
    tmp = restore_path(f.path, request_id)
    temps.add(tmp)
    await host.write(tmp, f.before, like=f.path)
    await host.replace(tmp, f.path)
    temps.discard(tmp)


async def _probe(host: RemoteHost, f: FileChange) -> FileState:
    """Which version a file holds after a failed restore; ``unknown`` if it cannot be read."""
    try:
        return f.classify(await host.read(f.path))
    except Exception:
        return "unknown"


def rollback_failed_error(
    changes: Sequence[ServerChange], cause: WorkerError, headline: str | None = None
) -> WorkerError:
    """The error of a ``rollback_failed`` result: which server holds which file, and why."""
    changed = changed_only(changes)
    attention = [c for c in changed if c.needs_operator]
    parts = [
        f"{c.name} holds the {c.state()} file"
        + (" but was not restarted on it" if c.state() == "old" else "")
        for c in attention
    ]
    return WorkerError(
        (headline or f"rollback failed after: {cause.message}") + "; " + "; ".join(parts),
        code="rollback_failed",
        server=attention[0].name if attention else cause.server,
        phase=Phase.rollback,
        detail={
            "cause": cause.to_info().model_dump(mode="json"),
            "servers": [c.summary() for c in changed],
        },
    )
