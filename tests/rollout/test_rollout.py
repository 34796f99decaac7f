"""Rollouts through the real broker to the real worker, on 12 pairs of real sshd hosts.

The rollout runs in this process (``prepare`` then ``execute``, what the command runs after
its confirmation); the worker is the real ``serve``; every check reads the hosts' live
files and restart logs, and the results file the rollout wrote.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    fail_restart_once,
    record_restart_order,
    restart_order,
    slow_restart,
)
from tests.rollout.conftest import RigFactory, StopAfter
from worker.demo.localhosts import LocalHosts
from worker.failures import OperatorError
from worker.rollout.engine import BUDGET, INTERRUPTED
from worker.rollout.ids import preflight_id
from worker.rollout.results import NOT_STARTED, ResultsFile
from worker.rollout.spec import Change
from worker.rollout.waves import Budget, parse_waves

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PAIRS = 12


def records(path: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in ResultsFile(path).read() if r["record"] == kind]


async def test_a_rollout_of_12_pairs_succeeds_wave_after_wave(rig: RigFactory) -> None:
    timeline: list[Path] = []
    made = await rig(PAIRS, lambda hosts: timeline.append(record_restart_order(hosts)))
    spec = made.spec("waves", waves=parse_waves("1,1,25%,100%"))

    report = await made.roll(spec)

    assert report.exit_status() == 0 and report.stopped is None
    assert [r.outcome for r in report.rows] == ["succeeded"] * PAIRS
    assert all(made.changed(p) for p in made.pairs)
    # Per-wave sizes as Ansible's serial: 1, 1, 25 % of 12 = 3, then 100 % (the 7 left).
    waves = {r.pair.primary: r.wave or 0 for r in report.rows}
    assert [sum(w == i for w in waves.values()) for i in (1, 2, 3, 4)] == [1, 1, 3, 7]
    assert [waves[p.primary] for p in made.pairs] == sorted(waves.values())  # in pair order
    # In order: every restart of a wave's pairs happened before any of the next wave's.
    restarted = restart_order(timeline[0])
    wave_of_host = {h: waves[p.primary] for p in made.pairs for h in (p.primary, p.secondary)}
    assert len(restarted) == 2 * PAIRS
    assert [wave_of_host[h] for h in restarted] == sorted(wave_of_host[h] for h in restarted)
    # The preflight dry-ran every pair first (own ids), and the results file has each pair once.
    dry = records(spec.results, "preflight")
    assert {d["requestId"] for d in dry} == {preflight_id(r.request_id) for r in report.rows}
    assert all(d["outcome"] == "succeeded" and d["linesChanged"] == 6 for d in dry)
    done = records(spec.results, "result")
    assert sorted(d["requestId"] for d in done) == sorted(r.request_id for r in report.rows)
    assert all(d["requestId"] == f"waves.dhcp-failover.{d['primary']}" for d in done)


async def test_a_failed_canary_stops_the_rollout_before_wave_2(rig: RigFactory) -> None:
    canary = "dhcp00a.example.net"  # the first pair in rollout order
    made = await rig(PAIRS, before_worker=lambda hosts: fail_restart_once(hosts, canary))
    spec = made.spec("canary", waves=parse_waves("1,1,100%"))

    report = await made.roll(spec)

    first, *rest = report.rows
    assert first.pair.primary == canary and first.wave == 1
    assert (first.outcome, first.code) == ("rolled_back", "command_failed")
    assert report.stopped == BUDGET and report.exit_status() == 4
    assert [r.outcome for r in rest] == [NOT_STARTED] * (PAIRS - 1)
    # Nothing else changed: the canary holds its old config again, every other server was
    # never restarted and holds its original bytes.
    assert not any(made.changed(p) for p in made.pairs)
    assert {n: c for n, c in made.restarts().items() if c} == {canary: 2}  # failed, restored
    assert [r["requestId"] for r in records(spec.results, "result")] == [first.request_id]
    assert records(spec.results, "end")[-1]["stopped"] == BUDGET


async def test_the_global_budget_stops_a_rollout_mid_way(rig: RigFactory) -> None:
    failing = ["dhcp03a.example.net", "dhcp05a.example.net"]

    def fail_two(hosts: LocalHosts) -> None:
        for name in failing:
            fail_restart_once(hosts, name)
        # Published as soon as pair 4 is done, so still in flight when pair 5 fails.
        slow_restart(hosts, "dhcp06a.example.net", 1.5)

    made = await rig(PAIRS, before_worker=fail_two)
    spec = made.spec("budget", waves=parse_waves("1,100%"), budget=Budget(1), concurrency=2)

    report = await made.roll(spec)

    assert report.stopped == BUDGET and report.exit_status() == 4
    outcome = {r.pair.primary: r.outcome for r in report.rows}
    assert [outcome[n] for n in failing] == ["rolled_back", "rolled_back"]
    # The first failure was within the budget (1 allowed): the pairs around it went on.
    assert all(outcome[p.primary] == "succeeded" for p in made.pairs[:5] if p.primary != failing[0])
    # The second spent it: what was in flight then (pair 6, unless pair 5 failed before
    # pair 4 was done) finished and was recorded; nothing more was started.
    started = [p for p in made.pairs if outcome[p.primary] != NOT_STARTED]
    assert 6 <= len(started) <= 7
    assert made.pairs[: len(started)] == started
    for pair in made.pairs:
        assert made.changed(pair) == (outcome[pair.primary] == "succeeded")
    assert len(records(spec.results, "result")) == len(started)


async def test_a_rerun_with_the_same_id_resumes(rig: RigFactory) -> None:
    made = await rig(PAIRS)
    stop = asyncio.Event()
    spec = made.spec("resume", waves=parse_waves("1,2,100%"), concurrency=1)

    first = await made.roll(spec, StopAfter(3, stop), stop)

    assert first.stopped == INTERRUPTED and first.exit_status() == 130
    done = [r.pair for r in first.rows if r.outcome == "succeeded"]
    assert done == made.pairs[:3]
    assert [made.changed(p) for p in made.pairs] == [True] * 3 + [False] * (PAIRS - 3)
    restarts = made.restarts()

    second = await made.roll(spec)

    assert second.stopped is None and second.exit_status() == 0
    assert [r.outcome for r in second.rows] == ["succeeded"] * PAIRS
    assert [r.resumed for r in second.rows] == [True] * 3 + [False] * (PAIRS - 3)
    assert all(made.changed(p) for p in made.pairs)
    # The done pairs were not dry-run, published or restarted again.
    for pair in done:
        for name in (pair.primary, pair.secondary):
            assert made.restarts()[name] == restarts[name] == 1
    results = records(spec.results, "result")
    assert sorted(r["requestId"] for r in results) == sorted(r.request_id for r in second.rows)
    dry = records(spec.results, "preflight")
    assert len(dry) == PAIRS + PAIRS - 3


async def test_a_rerun_without_the_results_file_is_answered_by_the_journals(
    rig: RigFactory,
) -> None:
    made = await rig(PAIRS)
    stop = asyncio.Event()
    spec = made.spec("journal", waves=parse_waves("2,100%"), concurrency=2)
    first = await made.roll(spec, StopAfter(2, stop), stop)
    done = [r for r in first.rows if r.outcome == "succeeded"]
    assert len(done) >= 2
    restarts = made.restarts()
    spec.results.rename(spec.results.with_suffix(".first"))

    second = await made.roll(spec)

    # Every pair was published again under its id; the done ones were answered with their
    # recorded outcome by the worker's journals, without a second change or restart.
    assert [r.outcome for r in second.rows] == ["succeeded"] * PAIRS
    assert not any(r.resumed for r in second.rows)
    assert all(made.changed(p) for p in made.pairs)
    for row in done:
        assert [r.request_id for r in second.rows if r.pair == row.pair] == [row.request_id]
        for name in (row.pair.primary, row.pair.secondary):
            assert made.restarts()[name] == restarts[name] == 1
    assert len(records(spec.results, "result")) == PAIRS


async def test_a_remove_rollout_and_its_rerun_once_the_relationships_are_gone(
    rig: RigFactory,
) -> None:
    made = await rig(3)
    spec = made.spec("gone", change=Change.remove("Disable"), waves=parse_waves("1,100%"))

    first = await made.roll(spec)

    assert first.exit_status() == 0, first.rows
    for pair in made.pairs:
        for name in (pair.primary, pair.secondary):
            text = made.host(name).config_bytes()
            assert b'failover peer "dhcp-failover" {' not in text
        assert b"deny all clients;" in made.host(pair.secondary).config_bytes()
    restarts = made.restarts()

    # The servers no longer declare the relationships: the rerun knows them from its results
    # file, reports them done and publishes nothing.
    second = await made.roll(spec)

    assert [(r.outcome, r.resumed) for r in second.rows] == [("succeeded", True)] * 3
    assert made.restarts() == restarts
    assert len(records(spec.results, "result")) == 3


async def test_a_rerun_with_other_settings_is_refused(rig: RigFactory) -> None:
    made = await rig(2)
    spec = made.spec("same", waves=parse_waves("100%"))
    assert (await made.roll(spec)).exit_status() == 0

    other = made.spec("same", change=Change.modify({"Mclt": 900}))
    with pytest.raises(OperatorError, match="rollout same was started as") as refused:
        await made.roll(other)
    assert refused.value.exit_code == 2
