"""A rollout, start to end: discover the pairs, dry-run them all, then the waves.

Two steps, so that an operator can be asked in between with no connection held open:
:func:`prepare` (discovery and the preflight dry runs) and :func:`execute` (the waves). Both
take ``stop``: once it is set (Ctrl-C) nothing more is published, the pairs in flight are
waited for and recorded, and the step returns; cancelling the step instead leaves them in
flight (the workers still do them; a rerun collects their outcomes from the journals).

Every pair is one request, pair-atomic on the workers, so at any moment each pair holds
either its old or its new config: stopping a rollout anywhere leaves no pair half-changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.failures import OperatorError
from worker.health import serving
from worker.messages import Outcome
from worker.metrics import RolloutProgress
from worker.rollout.broker import RequestChannel
from worker.rollout.discovery import Discovery, Pair, discover, servers_of
from worker.rollout.ids import preflight_id, request_id
from worker.rollout.results import (
    NOT_STARTED,
    History,
    PairResult,
    ResultsFile,
    exit_status,
    is_failure,
    load_history,
    worst,
)
from worker.rollout.spec import RolloutSpec
from worker.rollout.waves import format_waves, split_waves
from worker.settings import Settings
from worker.transport.inventory import Inventory
from worker.transport.ssh import SshFleet

#: Why a run of the waves ended early (``None``: every wave ran).
BUDGET, ROLLBACK_FAILED, INTERRUPTED = "budget", "rollback_failed", "interrupted"
EXIT_INTERRUPTED = 130


class Observer:
    """What a rollout reports as it goes (the display); every method does nothing here."""

    def preflight(self, pairs: Sequence[Pair]) -> None: ...

    def waves(self, waves: Sequence[Sequence[Pair]], done: Mapping[Pair, PairResult]) -> None: ...

    def started(self, pair: Pair, wave: int | None) -> None: ...

    def finished(self, result: PairResult) -> None: ...

    def stopping(self, reason: str) -> None: ...

    def warning(self, text: str) -> None: ...


@dataclass
class Prepared:
    """Discovery and preflight done: what the waves would do."""

    spec: RolloutSpec
    discovery: Discovery
    pairs: list[Pair]
    ids: dict[Pair, str]
    done: dict[Pair, PairResult]
    preflight: dict[Pair, PairResult]
    interrupted: bool = False

    @property
    def refused(self) -> list[PairResult]:
        """Pairs whose dry run did not succeed: left out of the waves."""
        return [r for r in self.preflight.values() if r.outcome != Outcome.succeeded.value]

    @property
    def plan(self) -> list[Pair]:
        """The pairs of the waves, in order: those done before and those that passed."""
        passed = {r.pair for r in self.preflight.values() if r.outcome == Outcome.succeeded.value}
        return [p for p in self.pairs if p in self.done or p in passed]

    @property
    def waves(self) -> list[list[Pair]]:
        return split_waves(self.plan, self.spec.waves) if self.plan else []

    @property
    def lines_changed(self) -> int:
        passed = (r for r in self.preflight.values() if r.outcome == Outcome.succeeded.value)
        return sum(r.lines_changed or 0 for r in passed)

    @property
    def servers(self) -> set[str]:
        return servers_of(self.pairs)


@dataclass
class Report:
    """The rollout's outcome: one row per pair, and why it stopped early, if it did."""

    rollout_id: str
    results: Path
    rows: list[PairResult]
    stopped: str | None
    budget: str

    def exit_status(self) -> int:
        if self.stopped == INTERRUPTED:
            return EXIT_INTERRUPTED
        found = worst(r.outcome for r in self.rows)
        return exit_status(found) if found is not None else 0


async def prepare(
    spec: RolloutSpec,
    settings: Settings,
    inventory: Inventory,
    observer: Observer,
    stop: asyncio.Event,
) -> Prepared:
    """Find the pairs and dry-run every one not done by an earlier run of this rollout."""
    file = ResultsFile(spec.results)
    history = load_history(spec.results, spec.rollout_id)
    _check_same_change(history, spec)
    async with SshFleet(inventory, settings) as fleet:
        discovery = await discover(fleet, inventory.servers, spec.selection)
    earlier = [r.pair for r in history.results.values() if history.done(r.request_id)]
    pairs = sorted(set(discovery.pairs) | {p for p in earlier if spec.selection.matches(p)})
    ids = {p: request_id(spec.rollout_id, p.relationship, p.primary) for p in pairs}
    done = {p: found for p in pairs if (found := history.done(ids[p])) is not None}
    todo = [p for p in pairs if p not in done]
    prepared = Prepared(spec, discovery, pairs, ids, done, {})
    if not todo:
        return prepared
    observer.preflight(todo)

    async def dry_run(channel: RequestChannel, pair: Pair) -> None:
        rid = preflight_id(ids[pair])
        observer.started(pair, None)
        result = await _request(channel, spec, pair, rid, None, dry_run=True)
        prepared.preflight[pair] = result
        file.append({"rollout": spec.rollout_id, **result.record()})
        observer.finished(result)

    async with RequestChannel(settings) as channel:
        if not channel.consumers:
            observer.warning(
                f"no worker consumes {settings.request_queue!r} now: the requests wait there "
                f"until one does (each pair for at most --timeout {spec.timeout:g}s)"
            )
        await run_bounded(todo, spec.concurrency, stop.is_set, lambda p: dry_run(channel, p))
    prepared.interrupted = stop.is_set()
    return prepared


async def execute(
    prepared: Prepared, settings: Settings, observer: Observer, stop: asyncio.Event
) -> Report:
    """The waves, each after the last ended within the budget; the report of every pair.
    With ``http_port`` set, ``/metrics`` (the ``dhcp_failover_rollout_pairs`` gauges) and
    ``/healthz`` are served while they run (a port already taken is only warned about)."""
    async with serving(settings, None, required=False):
        return await _waves(prepared, settings, observer, stop)


async def _waves(
    prepared: Prepared, settings: Settings, observer: Observer, stop: asyncio.Event
) -> Report:
    spec = prepared.spec
    file = ResultsFile(spec.results)
    plan, waves = prepared.plan, prepared.waves
    total = len(plan)
    wave_of = {p: i for i, wave in enumerate(waves, 1) for p in wave}
    results: dict[Pair, PairResult] = dict(prepared.done)
    state = _State(failures=sum(is_failure(r.outcome) for r in prepared.done.values()))
    progress = RolloutProgress(
        spec.rollout_id, total, len(prepared.done) - state.failures, state.failures
    )
    file.append(_start_record(prepared, wave_of))
    observer.waves(waves, prepared.done)

    async def change(channel: RequestChannel, pair: Pair) -> None:
        observer.started(pair, wave_of[pair])
        progress.started()
        rid = prepared.ids[pair]
        result = await _request(channel, spec, pair, rid, wave_of[pair], dry_run=False)
        progress.finished(is_failure(result.outcome))
        results[pair] = result
        file.append({"rollout": spec.rollout_id, **result.record()})
        if is_failure(result.outcome):
            state.failures += 1
            if result.outcome == Outcome.rollback_failed.value:
                state.stop(ROLLBACK_FAILED, observer)
            elif spec.budget.exceeded(state.failures, total):
                state.stop(BUDGET, observer)
        observer.finished(result)

    def halted() -> bool:
        if stop.is_set():
            state.stop(INTERRUPTED, observer)
        return state.stopped is not None

    try:
        async with RequestChannel(settings) as channel:
            for wave in waves:
                if spec.budget.exceeded(state.failures, total):
                    state.stop(BUDGET, observer)  # a resumed rollout already past it
                if halted():
                    break
                todo = [p for p in wave if p not in results]
                await run_bounded(todo, spec.concurrency, halted, lambda p: change(channel, p))
    except asyncio.CancelledError:
        state.stopped = INTERRUPTED
        raise
    finally:
        file.append(
            {
                "record": "end",
                "rollout": spec.rollout_id,
                "stopped": state.stopped,
                "failures": state.failures,
                "done": len(results),
                "pairs": total,
            }
        )
    return _report(prepared, results, wave_of, state.stopped)


@dataclass
class _State:
    failures: int
    stopped: str | None = None

    def stop(self, reason: str, observer: Observer) -> None:
        if self.stopped is None:
            self.stopped = reason
            observer.stopping(reason)


def preflight_report(prepared: Prepared) -> Report:
    """The report of a rollout that went no further than its preflight."""
    rows = [
        prepared.done.get(p) or prepared.preflight.get(p) or _not_started(prepared, p, None)
        for p in prepared.pairs
    ]
    stopped = INTERRUPTED if prepared.interrupted else None
    return Report(
        prepared.spec.rollout_id,
        prepared.spec.results,
        rows,
        stopped,
        prepared.spec.budget.describe(len(prepared.plan)),
    )


def _report(
    prepared: Prepared,
    results: Mapping[Pair, PairResult],
    wave_of: Mapping[Pair, int],
    stopped: str | None,
) -> Report:
    rows = []
    for pair in prepared.pairs:
        found = results.get(pair) or prepared.preflight.get(pair)
        if found is None or (found.dry_run and found.outcome == Outcome.succeeded.value):
            found = _not_started(prepared, pair, wave_of.get(pair))
        rows.append(found)
    budget = prepared.spec.budget.describe(len(prepared.plan))
    return Report(prepared.spec.rollout_id, prepared.spec.results, rows, stopped, budget)


def _not_started(prepared: Prepared, pair: Pair, wave: int | None) -> PairResult:
    return PairResult(pair, prepared.ids[pair], NOT_STARTED, wave=wave)


async def _request(
    channel: RequestChannel,
    spec: RolloutSpec,
    pair: Pair,
    rid: str,
    wave: int | None,
    *,
    dry_run: bool,
) -> PairResult:
    """One pair's request and its result (``timeout`` when no event came in time)."""
    body = spec.change.body(pair, rid, dry_run, spec.audit_comment)
    began = time.monotonic()
    event = await channel.request(body, spec.change.routing_key, spec.timeout)
    ms = int((time.monotonic() - began) * 1000)
    if event is None:
        return PairResult(
            pair,
            rid,
            "timeout",
            wave=wave,
            duration_ms=ms,
            code="timeout",
            message=f"no result event within {spec.timeout:g}s (the request stays queued)",
            dry_run=dry_run,
        )
    return PairResult.from_event(pair, rid, event, wave, ms)


async def run_bounded(
    items: Iterable[Pair],
    limit: int,
    halted: Callable[[], bool],
    work: Callable[[Pair], Awaitable[None]],
) -> None:
    """``work`` on each item, at most ``limit`` at once, in order; nothing more is started
    once ``halted()``, and what was started is waited for. The first error cancels the rest
    and is raised."""
    gate = asyncio.Semaphore(limit)
    tasks: list[asyncio.Task[None]] = []
    errors: list[BaseException] = []

    async def one(item: Pair) -> None:
        try:
            await work(item)
        except Exception as exc:
            errors.append(exc)
            raise
        finally:
            gate.release()

    try:
        for item in items:
            await gate.acquire()
            if errors or halted():
                gate.release()
                break
            tasks.append(asyncio.create_task(one(item)))
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            raise errors[0] from None
        raise


def _check_same_change(history: History, spec: RolloutSpec) -> None:
    """A rerun must make the same change: otherwise done pairs keep the old values and the
    rest get the new, and the rollout id no longer names one change."""
    if history.start is None:
        return
    before, now = history.start.get("change"), spec.change.describe()
    if before != now:
        raise OperatorError(
            f"rollout {spec.rollout_id} was started as {before}, not {now} "
            f"({spec.results}): rerun it with the same settings to resume it, or give a new "
            "--rollout-id",
            2,
        )


def _start_record(prepared: Prepared, wave_of: Mapping[Pair, int]) -> dict[str, Any]:
    spec = prepared.spec
    return {
        "record": "start",
        "rollout": spec.rollout_id,
        "change": spec.change.describe(),
        "waves": format_waves(spec.waves),
        "maxFailures": spec.budget.max_failures,
        "maxFailurePercent": (
            None
            if spec.budget.max_failure_percent is None
            else float(spec.budget.max_failure_percent)
        ),
        "concurrency": spec.concurrency,
        "plan": [
            {
                "relationship": p.relationship,
                "primary": p.primary,
                "secondary": p.secondary,
                "requestId": prepared.ids[p],
                "wave": wave_of[p],
            }
            for p in prepared.plan
        ],
        "excluded": [r.request_id for r in prepared.refused],
    }
