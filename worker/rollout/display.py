"""What a person sees: the preflight summary, a progress bar per wave, the final table.

Everything but the final table goes to stderr, so ``--json`` output on stdout stays clean.
On a terminal the progress is a rich bar per wave (pairs done / failed / in flight); when
stderr is not a terminal (CI logs, a pipe) each finished pair is one plain line instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from worker.messages import Outcome
from worker.rollout.discovery import Pair
from worker.rollout.engine import BUDGET, INTERRUPTED, ROLLBACK_FAILED, Observer, Prepared, Report
from worker.rollout.results import NOT_STARTED, PENDING, PairResult, is_failure
from worker.rollout.waves import wave_sizes

_STOPPED = {
    BUDGET: "the failure budget is spent: no further pair was started",
    ROLLBACK_FAILED: "a pair needs an operator (rollback_failed): no further pair was started",
    INTERRUPTED: "interrupted: no further pair was started",
}
_STYLE = {
    Outcome.succeeded.value: "green",
    Outcome.rejected.value: "yellow",
    Outcome.failed.value: "red",
    Outcome.rolled_back.value: "red",
    Outcome.rollback_failed.value: "bold red",
    "timeout": "magenta",
    NOT_STARTED: "dim",
    PENDING: "dim",
}


class Display(Observer):
    """The rollout's observer: a progress bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._tasks: dict[int | None, TaskID] = {}
        self._counts: dict[int | None, list[int]] = {}  # wave -> [failed, in flight]

    @property
    def live(self) -> bool:
        return self.console.is_terminal

    def note(self, text: str) -> None:
        """Plain text: names and messages from servers are never read as rich markup."""
        self.console.print(text, highlight=False, markup=False)

    def preflight(self, pairs: Sequence[Pair]) -> None:
        self._start([(None, "preflight (dry runs)", len(pairs), 0)])

    def waves(self, waves: Sequence[Sequence[Pair]], done: Mapping[Pair, PairResult]) -> None:
        rows = [
            (i, f"wave {i}/{len(waves)}", len(wave), sum(p in done for p in wave))
            for i, wave in enumerate(waves, 1)
        ]
        self._start(rows)

    def started(self, pair: Pair, wave: int | None) -> None:
        self._count(wave, 0, +1)

    def finished(self, result: PairResult) -> None:
        wave = None if result.dry_run else result.wave
        self._count(wave, int(is_failure(result.outcome)), -1, advance=1)
        if not self.live:
            where = "preflight" if result.dry_run else f"wave {result.wave}"
            code = f" ({result.code})" if result.code else ""
            took = f" in {result.duration_ms} ms" if result.duration_ms is not None else ""
            self.note(f"{where}: {result.pair.label}: {result.outcome}{code}{took}")

    def warning(self, text: str) -> None:
        self.note(f"warning: {text}")

    def stopping(self, reason: str) -> None:
        self.note(f"stopping: {_STOPPED.get(reason, reason)}; waiting for the pairs in flight")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _start(self, rows: Sequence[tuple[int | None, str, int, int]]) -> None:
        self.close()
        self._tasks.clear()
        self._counts = {key: [0, 0] for key, *_ in rows}
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed, {task.fields[inflight]} in flight"),
            TimeElapsedColumn(),
            console=self.console,
        )
        for key, label, total, completed in rows:
            self._tasks[key] = self._progress.add_task(
                label, total=total, completed=completed, failed=0, inflight=0
            )
        self._progress.start()

    def _count(self, wave: int | None, failed: int, inflight: int, advance: int = 0) -> None:
        counts = self._counts.setdefault(wave, [0, 0])
        counts[0] += failed
        counts[1] += inflight
        if self._progress is not None and wave in self._tasks:
            self._progress.update(
                self._tasks[wave], advance=advance, failed=counts[0], inflight=counts[1]
            )


def print_summary(console: Console, prepared: Prepared) -> None:
    """The preflight summary: pairs, servers, lines changed, refused pairs and why."""
    spec, found = prepared.spec, prepared.discovery
    say = console.print
    operation = spec.change.describe()
    say(
        f"rollout {spec.rollout_id}: {operation['operation']} "
        f"{_settings_text(operation)} on {len(prepared.pairs)} pair(s), "
        f"{len(prepared.servers)} server(s)",
        highlight=False,
    )
    say(f"  configs read: {found.servers_read} server(s)", highlight=False)
    if found.widened:
        say(
            "  a server --server matches could not be read: every other server was read too, "
            "to find its pairs from their other side",
            highlight=False,
        )
    for unread in found.unread:
        say(f"  [red]not read[/]: {escape(f'{unread.server}: {unread.code}: {unread.message}')}")
    if found.skipped:
        example = found.skipped[0]
        say(
            f"  not pairs of this inventory: {len(found.skipped)} peer block(s), e.g. "
            f"{example.relationship!r} on {example.server}: {example.reason}",
            highlight=False,
            markup=False,
        )
    if prepared.done:
        say(f"  done by an earlier run of this rollout: {len(prepared.done)} pair(s)")
    passed = len(prepared.preflight) - len(prepared.refused)
    if not prepared.preflight:
        say("  preflight: no pair left to run")
    else:
        say(
            f"  preflight: {passed} pair(s) would apply, {prepared.lines_changed} line(s) "
            f"changed; {len(prepared.refused)} refused",
            highlight=False,
        )
    if prepared.refused:
        table = Table("relationship", "primary", "secondary", "outcome", "code", "why")
        for r in prepared.refused:
            table.add_row(
                *map(escape, (r.pair.relationship, r.pair.primary, r.pair.secondary)),
                _styled(r.outcome),
                escape(r.code or ""),
                escape(r.message or ""),
            )
        say(table)
    plan = prepared.plan
    if plan:
        sizes = ", ".join(str(n) for n in wave_sizes(spec.waves, len(plan)))
        say(f"  waves: {sizes} pair(s); budget: {spec.budget.describe(len(plan))}")


def print_table(console: Console, report: Report, stderr: Console) -> None:
    """One row per pair, then a line of counts and, when it stopped early, why."""
    table = Table("wave", "relationship", "primary", "secondary", "outcome", "duration", "code")
    for r in report.rows:
        wave = "pre" if r.dry_run else ("-" if r.wave is None else str(r.wave))
        outcome = _styled(r.outcome) + (" (earlier run)" if r.resumed else "")
        duration = "" if r.duration_ms is None else f"{r.duration_ms / 1000:.1f}s"
        names = (r.pair.relationship, r.pair.primary, r.pair.secondary)
        table.add_row(wave, *map(escape, names), outcome, duration, escape(r.code or ""))
    console.print(table)
    print_counts(stderr, report)


def print_counts(console: Console, report: Report) -> None:
    counts: dict[str, int] = {}
    for r in report.rows:
        key = r.outcome
        if r.dry_run:
            passed = r.outcome == Outcome.succeeded.value
            key = "would apply" if passed else f"refused in preflight ({r.outcome})"
        counts[key] = counts.get(key, 0) + 1
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    console.print(f"rollout {report.rollout_id}: {text or 'no pairs'}", highlight=False)
    if report.stopped is not None:
        why = _STOPPED.get(report.stopped, report.stopped)
        if report.stopped == BUDGET and report.budget:
            why += f" ({report.budget})"
        console.print(f"stopped: {why}", highlight=False, markup=False)
    console.print(
        f"results: {report.results} (dhcp-failover-worker rollout status {report.rollout_id})",
        highlight=False,
        markup=False,
    )


def _styled(outcome: str) -> str:
    style = _STYLE.get(outcome)
    return f"[{style}]{outcome}[/]" if style else outcome


def _settings_text(described: Mapping[str, object]) -> str:
    settings = described.get("settings")
    if isinstance(settings, dict):
        return " ".join(f"{k}={v}" for k, v in settings.items())
    return f"DeconfigureAction={described.get('deconfigureAction')}"
