"""The preflight summary says what discovery did beyond the obvious."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from worker.rollout.discovery import Discovery, Pair, Selection, Unread
from worker.rollout.display import print_summary
from worker.rollout.engine import Prepared
from worker.rollout.spec import Change, RolloutSpec
from worker.rollout.waves import Budget, parse_waves


def summary(discovery: Discovery) -> str:
    spec = RolloutSpec(
        rollout_id="r1",
        change=Change.modify({"Mclt": 1800}),
        selection=Selection(servers=("dhcp1*",)),
        waves=parse_waves("100%"),
        budget=Budget.of(None, None),
        results=Path("rollout-r1.jsonl"),
    )
    pair = Pair("dhcp1a.example.net", "dhcp-failover", "dhcp1b.example.net")
    out = io.StringIO()
    print_summary(Console(file=out, width=200), Prepared(spec, discovery, [pair], {}, {}, {}))
    return out.getvalue()


def test_a_widened_discovery_says_why_every_server_was_read() -> None:
    unread = Unread("dhcp1a.example.net", "unreachable", "no SSH answer")
    widened = summary(Discovery([], servers_read=9, unread=[unread], widened=True))
    plain = summary(Discovery([], servers_read=1))

    assert "configs read: 9 server(s)" in widened
    assert "a server --server matches could not be read: every other server was read" in widened
    assert "every other server" not in plain
