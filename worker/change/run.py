"""One call of the coordinator: its request, options, clock, and what it has learnt so far.

Every step of a change (planning, prepare, finish) reads and extends the same :class:`Run`:
the journal-directory listings it took, the reads it started ahead, the changes it planned.
Keeping that in one object is what lets a step reuse a listing instead of asking again, and
lets a retry (:meth:`Run.restart`) forget it all at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from worker.change.aio import retrieve
from worker.change.journal import new_stamp
from worker.change.model import ServerChange
from worker.change.ports import Fleet
from worker.change.snapshot import Snapshot
from worker.errors import WorkerError
from worker.messages import ModifyRequest, Outcome, RemoveRequest, ResultData, WarningInfo

log = structlog.stdlib.get_logger("worker.change.coordinator")

_QUIET_OUTCOMES = (Outcome.succeeded, Outcome.rejected)


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


Preplan = tuple[dict[str, Snapshot], list[ServerChange], list[WarningInfo]]

Announce = Callable[[ResultData], None]
"""Told a change's outcome once it is final and recorded in the servers' journals, before the
clean-up that ends :func:`~worker.change.coordinator.execute` (a few round trips per server):
the consumer publishes the result event meanwhile. Called at most once, and only for a change
that went past prepare; whatever was announced is the result ``execute`` returns (its
``durationMs`` aside) and the outcome every later run of the request answers with."""


@dataclass
class Run:
    """One call of ``execute``: its request, clock and stamp, and how results look."""

    request: ModifyRequest | RemoveRequest
    request_id: str
    options: ChangeOptions
    fleet: Fleet
    announce: Announce | None = None
    started: float = field(default_factory=time.monotonic)
    stamp: str = field(default_factory=new_stamp)
    #: Journal directories as listed before the locks (server name -> names)...
    listings: dict[str, list[str]] = field(default_factory=dict)
    #: ...and under them: true until they are released, but for this change's own files.
    locked: dict[str, list[str]] = field(default_factory=dict)
    #: Servers whose locks this attempt took before its journal lookup (a modify's, where
    #: they were free): the lookup and the plan ran under them.
    held: frozenset[str] = frozenset()
    #: Live trees being read ahead of the plan (server name -> read)...
    prefetched: dict[str, asyncio.Future[Snapshot]] = field(default_factory=dict)
    #: ...and a modify's plan computed from them as soon as they are in, while its locks
    #: are being taken: the trees it read, its changes and warnings.
    preplanned: asyncio.Future[Preplan] | None = None
    #: Servers where another change was unfinished before the locks (maybe still running)...
    busy: set[str] = field(default_factory=set)
    #: ...and whether that now fails the plan (after waiting for their locks once).
    strict: bool = False
    #: Servers whose tree the plan read ahead of its locks or without them: where the two
    #: halves of a pair disagree, the reads may have caught another change mid-commit.
    unlocked_reads: set[str] = field(default_factory=set)
    #: The changes and warnings the last plan computed (for ``preview`` and a lock timeout).
    planned: list[ServerChange] = field(default_factory=list)
    warnings: list[WarningInfo] = field(default_factory=list)
    #: The outcome is in a journal: recorded by this run, or found there (a replay).
    recorded: bool = False

    def restart(self) -> None:
        """Forget what an attempt learnt, for another one (the stamp stays)."""
        self.drop_prefetched()
        self.listings.clear()
        self.locked.clear()
        self.held = frozenset()
        self.busy.clear()
        self.strict = False
        self.unlocked_reads.clear()
        self.planned, self.warnings = [], []

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
            comment=self.request.comment,
            durationMs=self.elapsed_ms(),
        )

    def announced(self, result: ResultData) -> ResultData:
        """Hand the final outcome to :data:`Announce`, if given. A failing callback is the
        caller's bug: logged, and the result is returned from ``execute`` as usual."""
        if self.announce is not None:
            announce, self.announce = self.announce, None
            try:
                announce(result.model_copy(update={"durationMs": self.elapsed_ms()}))
            except Exception:
                log.exception("announce.failed")
        return result

    def drop_prefetched(self) -> None:
        """Cancel the reads ahead the plan never used, and the plan computed from them."""
        pending: list[asyncio.Future[Any]] = list(self.prefetched.values())
        if self.preplanned is not None:
            pending.append(self.preplanned)
        for future in pending:
            future.cancel()
            future.add_done_callback(retrieve)
        self.prefetched.clear()
        self.preplanned = None

    def elapsed_ms(self) -> int:
        return round((time.monotonic() - self.started) * 1000)

    def done(self, result: ResultData) -> ResultData:
        """The end of ``execute``: one log line an operator can search for."""
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
