"""The rollout commands' refusals before anything is read or published, and ``status``
(no server, no broker: click's runner)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.rollout.discovery import Pair
from worker.rollout.results import PairResult, ResultsFile

A = Pair("dhcp1.example.net", "dhcp-failover", "dhcp2.example.net")
B = Pair("dhcp3.example.net", "dhcp-failover", "dhcp4.example.net")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["rollout", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mclt", "1800"], "give --all, or --relationship / --server"),
        (["--all", "--relationship", "x", "--mclt", "1800"], "give --all, or"),
        (["--all"], "at least one setting must be given"),
        (["--all", "--mclt", "-5"], "Mclt: Input should be greater than or equal to 0"),
        (["--all", "--mclt", "1800", "--waves", "1,0"], "wave '0' is out of range"),
        (["--all", "--mclt", "1800", "--rollout-id", "a.b"], "'a.b' is not a rollout id"),
        (["--all", "--mclt", "1800", "--max-failure-percent", "101"], "101"),
    ],
)
def test_usage_errors_change_nothing(args: list[str], says: str) -> None:
    status, out = invoke("modify", *args)
    assert status == 2
    assert says in out


def test_status_reads_the_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    file = ResultsFile(tmp_path / "rollout-r1.jsonl")
    plan = [
        {
            "relationship": p.relationship,
            "primary": p.primary,
            "secondary": p.secondary,
            "requestId": f"r1.{p.relationship}.{p.primary}",
            "wave": 1,
        }
        for p in (A, B)
    ]
    file.append({"record": "start", "rollout": "r1", "plan": plan, "excluded": []})
    file.append({"rollout": "r1", **PairResult(A, str(plan[0]["requestId"]), "succeeded").record()})

    status, out = invoke("status", "r1", "--json")
    assert status == 1  # nothing failed, one pair not done yet
    assert '"outcome": "pending"' in out and '"outcome": "succeeded"' in out

    file.append(
        {"rollout": "r1", **PairResult(B, str(plan[1]["requestId"]), "rolled_back").record()}
    )
    status, out = invoke("status", "r1")
    assert status == 4
    assert "rolled_back" in out and "1 succeeded" in out

    status, out = invoke("status", "r2")
    assert status == 74
    assert "no results file of rollout r2" in out
