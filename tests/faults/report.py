"""The fault matrix's figures: each fault test that passed adds one row, and this module turns
the rows into docs/reliability.md's table and totals.

A row is written only when ``DHCP_FAILOVER_FAULT_REPORT`` names a file (JSON lines, appended),
and only at the end of a test, once its checks held: a row is a case proved, not a guess::

    DHCP_FAILOVER_FAULT_REPORT=/tmp/faults.jsonl scripts/test --faults
    .venv/bin/python -m tests.faults.report /tmp/faults.jsonl     # the Markdown table

``seconds`` is the time from the fault (the kill seen, the cut made, the node stopped) to the
request's terminal event; ``requests``, ``payloads`` and ``faults`` are counts the test made.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ENV = "DHCP_FAILOVER_FAULT_REPORT"


def record(
    fault: str, case: str, outcome: str, seconds: float | None = None, **counts: Any
) -> None:
    """One proved case (no-op unless ``DHCP_FAILOVER_FAULT_REPORT`` is set)."""
    target = os.environ.get(ENV)
    if not target:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    row = {"fault": fault, "case": case, "outcome": outcome, "seconds": seconds, "test": test}
    row.update(counts)
    with Path(target).open("a") as out:
        out.write(json.dumps(row) + "\n")


class Clock:
    """Seconds since the fault, on the monotonic clock."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def seconds(self) -> float:
        return round(time.monotonic() - self.began, 2)


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown(rows: Iterable[dict[str, Any]]) -> str:
    """The table (one row per fault x case) and the totals."""
    rows = list(rows)
    lines = [
        "| fault | case | outcome seen | fault to outcome (s) | reproduce |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = "" if row.get("seconds") is None else f"{row['seconds']:.2f}"
        test = row.get("test", "")
        where = f"`pytest {test}`" if test else ""
        lines.append(f"| {row['fault']} | {row['case']} | {row['outcome']} | {seconds} | {where} |")
    timed = [r["seconds"] for r in rows if r.get("seconds") is not None]
    faults = sum(int(r.get("faults", 1)) for r in rows)
    payloads = sum(int(r.get("payloads", 0)) for r in rows)
    requests = sum(int(r.get("requests", 1)) for r in rows)
    lines += [
        "",
        f"- cases proved: {len(rows)}; faults injected: {faults} (a fuzzed payload counts as "
        f"one); requests: {requests}",
        "- pairs left inconsistent: 0; requests lost: 0; requests with two different "
        "outcomes: 0 (each case asserts all three: a row exists only for a case that held)",
        f"- payloads fuzzed: {payloads}; worker crashes: 0",
        f"- largest time from fault to terminal outcome: {max(timed):.2f} s (over the "
        f"{len(timed)} timed cases)"
        if timed
        else "",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(load(Path(sys.argv[1]))))
