"""The results file: what a rerun and ``rollout status`` read back, and the exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.rollout.discovery import Pair
from worker.rollout.results import (
    PENDING,
    History,
    PairResult,
    ResultsFile,
    ResultsFileError,
    exit_status,
    worst,
)

A = Pair("dhcp1.example.net", "dhcp-failover", "dhcp2.example.net")
B = Pair("dhcp3.example.net", "dhcp-failover", "dhcp4.example.net")
C = Pair("dhcp5.example.net", "dhcp-failover", "dhcp6.example.net")


def plan_record(*pairs: Pair) -> dict[str, object]:
    return {
        "record": "start",
        "rollout": "r1",
        "plan": [
            {
                "relationship": p.relationship,
                "primary": p.primary,
                "secondary": p.secondary,
                "requestId": f"r1.{p.relationship}.{p.primary}",
                "wave": i,
            }
            for i, p in enumerate(pairs, 1)
        ],
        "excluded": ["r1.dhcp-failover.dhcp5.example.net:preflight"],
    }


def test_a_rerun_skips_done_pairs_and_retries_timeouts(tmp_path: Path) -> None:
    file = ResultsFile(tmp_path / "r.jsonl")
    file.append(plan_record(A, B))
    file.append({"rollout": "r1", **PairResult(A, "r1.a", "rolled_back", wave=1).record()})
    file.append({"rollout": "r1", **PairResult(B, "r1.b", "timeout", wave=2).record()})

    history = History.load(file, "r1")

    done = history.done("r1.a")
    assert done is not None and done.outcome == "rolled_back" and done.resumed
    assert history.done("r1.b") is None  # no outcome known yet: published again
    assert history.done("r1.c") is None


def test_status_lists_the_plan_with_pending_pairs_and_the_refused(tmp_path: Path) -> None:
    file = ResultsFile(tmp_path / "r.jsonl")
    refused = PairResult(C, "r1.dhcp-failover.dhcp5.example.net:preflight", "rejected")
    refused.dry_run, refused.code = True, "peer_not_found"
    file.append({"rollout": "r1", **refused.record()})
    file.append(plan_record(A, B))
    ok = PairResult(A, "r1.dhcp-failover.dhcp1.example.net", "succeeded", wave=1)
    file.append({"rollout": "r1", **ok.record()})
    file.append({"record": "end", "rollout": "r1", "stopped": "interrupted"})

    history = History.load(file, "r1")
    rows = history.status()

    assert [(r.pair, r.outcome) for r in rows] == [
        (A, "succeeded"),
        (B, PENDING),
        (C, "rejected"),
    ]
    assert rows[2].dry_run and rows[2].code == "peer_not_found"
    assert history.end is not None and history.end["stopped"] == "interrupted"
    assert worst(r.outcome for r in rows) == "rejected"


def test_a_torn_last_line_is_ignored_and_garbage_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    file = ResultsFile(path)
    file.append({"rollout": "r1", **PairResult(A, "r1.a", "succeeded").record()})
    with path.open("a") as f:
        f.write('{"record": "resu')  # killed mid-write
    assert [r["requestId"] for r in file.read()] == ["r1.a"]

    path.write_text('not json\n{"record": "end"}\n')
    with pytest.raises(ResultsFileError, match="line 1"):
        file.read()
    path.write_text('{"record": "end", "rollout": "other"}\n')
    with pytest.raises(ResultsFileError, match="belongs to rollout 'other'"):
        History.load(file, "r1")


def test_exit_status_is_publish_waits_for_the_worst_outcome() -> None:
    assert worst(["succeeded", "not_started", "pending"]) == "succeeded"
    assert worst(["not_started"]) is None
    assert worst(["failed", "rejected", "succeeded"]) == "failed"
    assert worst(["rolled_back", "timeout"]) == "timeout"
    assert worst(["timeout", "rollback_failed"]) == "rollback_failed"
    assert [exit_status(o) for o in ("succeeded", "rejected", "failed")] == [0, 2, 3]
    assert [exit_status(o) for o in ("rolled_back", "rollback_failed", "timeout")] == [4, 5, 124]
