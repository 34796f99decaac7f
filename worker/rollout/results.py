"""Pair results, the results file, and what a rerun or ``rollout status`` reads back from it.

The results file (``--results``, default ``./rollout-<id>.jsonl``) is JSON lines, appended
as things happen, one ``write`` per line (a killed rollout leaves at most a torn last line,
which is ignored). Every line has ``record``:

* ``preflight`` -- a pair's dry run: the pair, ``requestId``, ``outcome``, ``code``,
  ``message``, ``linesChanged``, ``durationMs``;
* ``start`` -- the waves begin: ``change`` (operation and settings), ``waves``, the budget and
  ``plan`` (each pair with its ``wave`` and ``requestId``) and ``excluded`` (refused in
  preflight);
* ``result`` -- a pair's real outcome, as the pair's ``--json`` object;
* ``end`` -- how the run ended: ``stopped`` (null, ``budget``, ``rollback_failed``,
  ``interrupted``) and the counts.

A pair is *done* once a ``result`` line gives it one of the five outcomes; a rerun of the
rollout skips it (its request id would get the same recorded outcome from the journals
anyway). ``timeout`` is not done: the rerun publishes the pair's request again, and the
journals answer it if the first copy was done meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.cli import EXIT_BY_OUTCOME, EXIT_TIMEOUT
from worker.messages import Outcome, ResultEvent, utc_millis
from worker.rollout.discovery import Pair

#: No result event within ``--timeout``: the pair's state is not known (it may yet be done).
TIMEOUT = "timeout"
#: The rollout stopped (budget, Ctrl-C) before the pair's request was published.
NOT_STARTED = "not_started"
#: No result yet in a results file (``rollout status``).
PENDING = "pending"

#: Worst last: the exit status of a rollout is that of its worst pair.
SEVERITY = (
    Outcome.succeeded.value,
    Outcome.rejected.value,
    Outcome.failed.value,
    Outcome.rolled_back.value,
    TIMEOUT,
    Outcome.rollback_failed.value,
)
DONE = frozenset(o.value for o in Outcome)


def exit_status(outcome: str) -> int:
    """``publish --wait``'s exit status for an outcome (124 for ``timeout``)."""
    if outcome == TIMEOUT:
        return EXIT_TIMEOUT
    return EXIT_BY_OUTCOME[Outcome(outcome)]


def worst(outcomes: Iterable[str]) -> str | None:
    """The worst of ``outcomes`` that is a result (not ``not_started`` / ``pending``)."""
    ranked = [o for o in outcomes if o in SEVERITY]
    return max(ranked, key=SEVERITY.index) if ranked else None


def is_failure(outcome: str) -> bool:
    """What the failure budget counts: every result but ``succeeded``."""
    return outcome in SEVERITY and outcome != Outcome.succeeded.value


@dataclass
class PairResult:
    """What happened to one pair (a dry run's too, with ``dry_run``)."""

    pair: Pair
    request_id: str
    outcome: str
    wave: int | None = None
    duration_ms: int | None = None
    code: str | None = None
    message: str | None = None
    changed: bool | None = None
    lines_changed: int | None = None
    dry_run: bool = False
    #: Done by an earlier run of the rollout (read from the results file).
    resumed: bool = False

    @classmethod
    def from_event(
        cls, pair: Pair, request_id: str, event: ResultEvent, wave: int | None, ms: int
    ) -> PairResult:
        data = event.data
        return cls(
            pair=pair,
            request_id=request_id,
            outcome=data.outcome.value,
            wave=wave,
            duration_ms=ms,
            code=data.error.code if data.error else None,
            message=data.error.message if data.error else None,
            changed=any(s.changed for s in data.servers),
            lines_changed=lines_changed(event),
            dry_run=data.dryRun,
        )

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object of a pair (docs/contract.md §5)."""
        return {
            "relationship": self.pair.relationship,
            "primary": self.pair.primary,
            "secondary": self.pair.secondary,
            "requestId": self.request_id,
            "outcome": self.outcome,
            "durationMs": self.duration_ms,
            "code": self.code,
            "message": self.message,
            "wave": self.wave,
            "changed": self.changed,
            "dryRun": self.dry_run,
            "resumed": self.resumed,
        }

    def record(self) -> dict[str, Any]:
        """Its line in the results file."""
        doc = {"record": "preflight" if self.dry_run else "result", **self.to_json()}
        del doc["resumed"]
        if self.dry_run:
            doc["linesChanged"] = self.lines_changed
        return doc

    @classmethod
    def from_record(cls, doc: Mapping[str, Any]) -> PairResult:
        return cls(
            pair=Pair(doc["primary"], doc["relationship"], doc["secondary"]),
            request_id=doc["requestId"],
            outcome=doc["outcome"],
            wave=doc.get("wave"),
            duration_ms=doc.get("durationMs"),
            code=doc.get("code"),
            message=doc.get("message"),
            changed=doc.get("changed"),
            lines_changed=doc.get("linesChanged"),
            dry_run=doc.get("record") == "preflight",
        )


def lines_changed(event: ResultEvent) -> int:
    """Lines added plus removed over every server's diff (the full diff's counts when the
    event carries only its start)."""
    total = 0
    for server in event.data.servers:
        if server.diffFull is not None:
            total += server.diffFull.added + server.diffFull.removed
            continue
        for line in server.diff.splitlines():
            if line.startswith(("+++ ", "--- ")):
                continue
            if line.startswith(("+", "-")):
                total += 1
    return total


class ResultsFileError(ValueError):
    """A results file that is not one a rollout wrote."""


def default_results_path(rollout_id: str) -> Path:
    return Path(f"rollout-{rollout_id}.jsonl")


class ResultsFile:
    """Append-only JSON lines, each written with one ``write`` on a file opened for it (so a
    line is in the file, for a rerun to read, as soon as the pair has its outcome)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({**record, "time": utc_millis(datetime.now(UTC))}, ensure_ascii=False)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        """Every complete record; [] when the file does not exist."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # torn by a kill mid-write
                    break
                raise ResultsFileError(
                    f"{self.path} line {number} is not JSON: not a rollout results file"
                ) from None
            if not isinstance(doc, dict) or "record" not in doc:
                raise ResultsFileError(
                    f"{self.path} line {number} is not a rollout record: not a results file"
                )
            records.append(doc)
        return records


@dataclass
class History:
    """What earlier runs of a rollout left in its results file."""

    rollout_id: str
    start: dict[str, Any] | None
    results: dict[str, PairResult]  # request id -> last real result
    preflight: dict[str, PairResult]  # request id -> last dry run
    end: dict[str, Any] | None = None  # how the last run of the waves ended

    @classmethod
    def load(cls, file: ResultsFile, rollout_id: str) -> History:
        start = end = None
        results: dict[str, PairResult] = {}
        preflight: dict[str, PairResult] = {}
        for doc in file.read():
            if doc.get("rollout") not in (None, rollout_id):
                raise ResultsFileError(
                    f"{file.path} belongs to rollout {doc['rollout']!r}, not {rollout_id!r}"
                )
            kind = doc["record"]
            if kind == "start":
                start, end = doc, None
            elif kind == "end":
                end = doc
            elif kind == "result":
                results[doc["requestId"]] = PairResult.from_record(doc)
            elif kind == "preflight":
                preflight[doc["requestId"]] = PairResult.from_record(doc)
        return cls(rollout_id, start, results, preflight, end)

    def done(self, request_id: str) -> PairResult | None:
        found = self.results.get(request_id)
        if found is None or found.outcome not in DONE:
            return None
        return replace(found, resumed=True)

    def status(self) -> list[PairResult]:
        """Every pair of the last plan with its last result (``pending`` without one), then
        the pairs refused in preflight; without a plan yet, the dry runs."""
        if self.start is None:
            return list(self.preflight.values())
        rows = []
        for doc in self.start.get("plan", []):
            found = self.results.get(doc["requestId"])
            rows.append(
                found
                or PairResult(
                    pair=Pair(doc["primary"], doc["relationship"], doc["secondary"]),
                    request_id=doc["requestId"],
                    outcome=PENDING,
                    wave=doc.get("wave"),
                )
            )
        excluded = self.start.get("excluded", [])
        rows.extend(self.preflight[d] for d in excluded if d in self.preflight)
        return rows


def load_history(path: Path, rollout_id: str) -> History:
    """:meth:`History.load`, a file that is not this rollout's explained to the operator."""
    from worker.failures import EXIT_IOERR, OperatorError

    try:
        return History.load(ResultsFile(path), rollout_id)
    except ResultsFileError as exc:
        raise OperatorError(
            f"{exc}; give --results another file, or start a new --rollout-id", EXIT_IOERR
        ) from None
