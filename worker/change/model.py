"""The in-memory state of a change: what each server is to get, and how far it got.

The coordinator's steps mutate these records as they go (a file's ``state`` flips to ``new``
the moment its rename returns), so whatever happens next -- a rollback, a cancellation, a
report -- reads the truth from one place instead of re-deriving it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.change.journal import FileRecord, Journal, backup_path, staged_path
from worker.change.plan import ServerPlan, report_diff
from worker.change.ports import RemoteHost
from worker.change.snapshot import Snapshot, encode, sha256_hex
from worker.messages import Outcome, ServerResult

FileState = Literal["old", "new", "unknown"]


@dataclass
class FileChange:
    """One live file the change rewrites. ``before``/``after`` are None only in a resumed
    change whose backup or candidate is gone (then it cannot be restored or finished)."""

    path: str
    before_sha: str
    after_sha: str
    staged: str
    backup: str
    before: bytes | None
    after: bytes | None
    state: FileState = "old"
    linked: bool = False  # this run made the backup

    def record(self) -> FileRecord:
        return FileRecord(
            path=self.path,
            before=self.before_sha,
            after=self.after_sha,
            staged=self.staged,
            backup=self.backup,
        )

    def classify(self, live: bytes | None) -> FileState:
        """Which version ``live`` is: a foreign edit or a missing file is ``unknown``."""
        if live is None:
            return "unknown"
        digest = sha256_hex(live)
        if digest == self.before_sha:
            return "old"
        if digest == self.after_sha:
            return "new"
        return "unknown"


@dataclass
class ServerChange:
    """One server's part of a change (an unchanged server has no files but is still locked
    and checked: the other server's candidate was computed against it)."""

    host: RemoteHost
    report: ServerResult  # the plan's view: name, role, changed, hashes, diff
    files: list[FileChange]
    snapshot: Snapshot | None = None  # live tree read at plan; None when resumed
    plan: ServerPlan | None = None  # the plan itself (full texts and diff); None when resumed
    after_texts: dict[str, str] = field(default_factory=dict)
    journal: Journal | None = None
    restart_attempted: bool = False  # may run the new config, or be down
    restarted: bool = False  # a restart succeeded during this change
    running_new: bool = False  # restarted and verified on the new files
    problems: list[str] = field(default_factory=list)  # what went wrong while restoring
    needs_operator: bool = False  # rollback could not put this server back
    temps: set[str] = field(default_factory=set)  # temp files that may exist on the server
    elapsed: float = 0.0

    @property
    def name(self) -> str:
        return self.report.name

    @property
    def changed(self) -> bool:
        return bool(self.files)

    @property
    def main(self) -> str:
        return self.host.config_path

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Add the wall time of the body to this server's ``durationMs``."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.elapsed += time.monotonic() - start

    def state(self) -> FileState:
        states = {f.state for f in self.files}
        return states.pop() if len(states) == 1 else "unknown"

    def result(self, outcome: Outcome, dry_run: bool) -> ServerResult:
        """The per-server part of the result event as things stand now."""
        if self.changed:
            state = self.state()
        else:  # before == after: it holds what the change wanted exactly when that succeeded
            state = "new" if outcome is Outcome.succeeded and not dry_run else "old"
        return self.report.model_copy(
            update={
                "restarted": self.restarted,
                "state": state,
                "files": {f.path: f.state for f in self.files},
                "durationMs": round(self.elapsed * 1000),
            }
        )

    def summary(self) -> dict[str, Any]:
        """For ``rollback_failed``: exactly what this server holds now."""
        return {
            "server": self.name,
            "state": self.state(),
            "files": {f.path: f.state for f in self.files},
            "restarted": self.restarted,
            "needsOperator": self.needs_operator,
            "problems": list(self.problems),
        }


def planned_change(
    host: RemoteHost,
    snapshot: Snapshot,
    plan: ServerPlan,
    request_id: str,
    stamp: str,
    max_diff_bytes: int = 64 * 1024,
) -> ServerChange:
    """A server's change from its plan. Files are ordered includes first, main file last, so a
    server never holds a new main file that includes an old include for longer than needed."""
    files = [
        FileChange(
            path=path,
            before_sha=sha256_hex(snapshot.raw[path]),
            after_sha=sha256_hex(encode(after)),
            staged=staged_path(path, request_id),
            backup=backup_path(path, stamp, request_id),
            before=snapshot.raw[path],
            after=encode(after),
        )
        for path, after in plan.after.items()
        if after != plan.before.get(path)
    ]
    files.sort(key=lambda f: f.path == plan.main)
    main_before = snapshot.raw[snapshot.main]
    main_after = encode(plan.after[plan.main]) if plan.main in plan.after else main_before
    shown = report_diff(plan, max_diff_bytes)  # redacted, UTF-8-safe, capped
    report = ServerResult(
        name=plan.server,
        role=plan.role,
        changed=plan.changed,
        sha256Before=sha256_hex(main_before),
        sha256After=sha256_hex(main_after),
        diff=shown.text,
        diffTruncated=shown.truncated,
        diffFull=shown.full,
        diffNonUtf8=shown.non_utf8,
    )
    return ServerChange(
        host=host,
        report=report,
        files=files,
        snapshot=snapshot,
        plan=plan,
        after_texts={**snapshot.texts(), **plan.after},
    )


def changed_only(changes: Sequence[ServerChange]) -> list[ServerChange]:
    return [c for c in changes if c.changed]
