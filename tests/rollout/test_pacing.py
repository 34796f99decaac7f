"""How pairs are paced (``--concurrency``, stopping) and shown, without a broker: the engine's
scheduler on plain coroutines, the display on a forced terminal."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from worker.rollout.discovery import Pair
from worker.rollout.display import Display
from worker.rollout.engine import run_bounded
from worker.rollout.results import PairResult

PAIRS = [Pair(f"p{i:02d}", "rel", f"s{i:02d}") for i in range(10)]


async def test_at_most_k_in_flight_in_order() -> None:
    in_flight, peak, order = 0, 0, []

    async def work(pair: Pair) -> None:
        nonlocal in_flight, peak
        order.append(pair)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    await run_bounded(PAIRS, 3, lambda: False, work)

    assert peak == 3 and order == PAIRS and in_flight == 0


async def test_once_halted_nothing_starts_and_what_runs_is_waited_for() -> None:
    started: list[Pair] = []
    finished: list[Pair] = []
    halt = False

    async def work(pair: Pair) -> None:
        nonlocal halt
        started.append(pair)
        await asyncio.sleep(0.05 if pair == PAIRS[1] else 0.01)
        if pair == PAIRS[2]:
            halt = True  # e.g. this pair spent the budget
        finished.append(pair)

    await run_bounded(PAIRS, 2, lambda: halt, work)

    assert started == PAIRS[:3]  # 0 and 1, then 2 when 0 was done; 2 halts before 1 ends
    assert sorted(finished) == started  # pair 1, in flight at the halt, ran to its end


async def test_the_first_error_cancels_the_rest_and_is_raised() -> None:
    cancelled: list[Pair] = []

    async def work(pair: Pair) -> None:
        if pair == PAIRS[1]:
            raise ConnectionError("broker gone")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(pair)
            raise

    with pytest.raises(ConnectionError, match="broker gone"):
        await run_bounded(PAIRS, 4, lambda: False, work)
    assert PAIRS[0] in cancelled and PAIRS[5] not in cancelled  # not started after the error


def test_a_terminal_gets_a_progress_bar_per_wave() -> None:
    out = io.StringIO()
    display = Display(Console(file=out, force_terminal=True, width=120))
    waves = [PAIRS[:1], PAIRS[1:]]
    display.waves(waves, {})
    display.started(PAIRS[0], 1)
    display.finished(PairResult(PAIRS[0], "r.rel.p00", "rolled_back", wave=1))
    display.started(PAIRS[1], 2)
    display.close()

    text = out.getvalue()
    assert "wave 1/2" in text and "wave 2/2" in text
    assert "1/1" in text and "1 failed, 0 in flight" in text and "0 failed, 1 in flight" in text


def test_without_a_terminal_each_pair_is_one_line() -> None:
    out = io.StringIO()
    display = Display(Console(file=out, force_terminal=False, width=200))
    display.waves([PAIRS[:1]], {})
    display.finished(
        PairResult(PAIRS[0], "r.rel.p00", "failed", wave=1, duration_ms=12, code="lock_timeout")
    )
    assert out.getvalue() == "wave 1: rel p00 -> s00: failed (lock_timeout) in 12 ms\n"
