"""The rollout rig: N pairs of real sshd stand-in hosts, and the real worker on the real broker.

Each pair is the sample pair (worker.demo) under its own names and failover addresses:
``dhcpNNa.example.net`` (primary, ``192.0.2.<10+2N>``) and ``dhcpNNb.example.net``
(secondary, the next address), relationship ``dhcp-failover`` everywhere, as a fleet rolled
out from one template has. One sshd per server (24 start in under 2 s here); logins skip the
account's start-up files (``plain_login``) so an exec costs milliseconds.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServeOn, Stack
from tests.e2e.conftest import restore_logging as restore_logging  # fixtures used here
from tests.e2e.conftest import serve_on as serve_on
from tests.fixtures.sshd import LocalHostsFactory
from worker.demo import RELATIONSHIP, sample_config
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.rollout.discovery import Pair, Selection
from worker.rollout.engine import Observer, Report, execute, prepare
from worker.rollout.results import PairResult
from worker.rollout.spec import Change, RolloutSpec
from worker.rollout.waves import Budget, parse_waves
from worker.transport.inventory import load_inventory

#: What the rollout tests change: max-response-delay 60 -> 30 on both peers (so both are
#: written and restarted) and the primary's mclt 3600 -> 1800.
CHANGE = Change.modify({"Mclt": 1800, "MaxResponseDelay": 30})
NEW_LINE = b"  max-response-delay 30;"


def pair_names(i: int) -> tuple[str, str]:
    return f"dhcp{i:02d}a.example.net", f"dhcp{i:02d}b.example.net"


def pair_configs(
    count: int, relationship: str = RELATIONSHIP, first: int = 0
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Configs and failover addresses of ``count`` pairs (numbered from ``first``)."""
    primary, secondary = sample_config("primary"), sample_config("secondary")
    configs: dict[str, str] = {}
    addresses: dict[str, tuple[str, ...]] = {}
    for i in range(first, first + count):
        a, b = pair_names(i)
        address_a, address_b = f"192.0.2.{100 + 2 * i}", f"192.0.2.{101 + 2 * i}"
        for name, text, own in ((a, primary, address_a), (b, secondary, address_b)):
            text = re.sub(r"\b192\.0\.2\.10\b", address_a, text)
            text = re.sub(r"\b192\.0\.2\.11\b", address_b, text)
            configs[name] = text.replace(f'"{RELATIONSHIP}"', f'"{relationship}"')
            addresses[name] = (own,)
    return configs, addresses


@dataclass
class Rig:
    """The hosts, the running worker, and the pairs in the order a rollout takes them."""

    hosts: LocalHosts
    stack: Stack
    pairs: list[Pair]
    tmp_path: Path
    original: dict[str, str] = field(default_factory=dict)  # server -> sha256 at start

    def host(self, name: str) -> LocalHost:
        return self.hosts.hosts[name]

    def changed(self, pair: Pair) -> bool:
        """True when both servers hold the new config and last came up on it, False when
        both hold their original bytes; a pair in any other state fails the test."""
        peers = [self.host(pair.primary), self.host(pair.secondary)]
        new = [NEW_LINE in h.config_bytes() for h in peers]
        assert new[0] == new[1], f"{pair.label} is half-changed"
        for host in peers:
            if new[0]:
                last = host.restarts()[-1]
                assert (last.status, last.sha256) == ("ok", host.config_sha256()), host.name
            else:
                assert host.config_sha256() == self.original[host.name], host.name
        return new[0]

    def restarts(self) -> dict[str, int]:
        return {name: len(h.restarts()) for name, h in self.hosts.hosts.items()}

    def spec(self, rollout_id: str, **changes: Any) -> RolloutSpec:
        fields: dict[str, Any] = {
            "rollout_id": rollout_id,
            "change": CHANGE,
            "selection": Selection(),
            "waves": parse_waves("1,5%,100%"),
            "budget": Budget(),
            "results": self.tmp_path / f"rollout-{rollout_id}.jsonl",
            "concurrency": 8,
            "timeout": 60.0,
        }
        fields.update(changes)
        return RolloutSpec(**fields)

    async def roll(
        self, spec: RolloutSpec, observer: Observer | None = None, stop: asyncio.Event | None = None
    ) -> Report:
        """The whole rollout in this process: preflight, then the waves (no confirmation)."""
        seen = observer or Observer()
        halt = stop or asyncio.Event()
        inventory = load_inventory(self.hosts.inventory_path)
        prepared = await prepare(spec, self.stack.settings, inventory, seen, halt)
        return await execute(prepared, self.stack.settings, seen, halt)


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
def rig(local_hosts: LocalHostsFactory, serve_on: ServeOn, tmp_path: Path) -> RigFactory:
    """``await rig(pairs, before_worker=None)``: the hosts, then (after ``before_worker(hosts)``,
    where a test rewrites a restart command) the worker on their inventory."""

    async def start(
        count: int, before_worker: Callable[[LocalHosts], None] | None = None, **worker: Any
    ) -> Rig:
        configs, addresses = pair_configs(count)
        hosts = local_hosts(configs, addresses=addresses, plain_login=True)
        if before_worker is not None:
            before_worker(hosts)
        stack = await serve_on(hosts, **worker)
        pairs = [Pair(a, RELATIONSHIP, b) for a, b in map(pair_names, range(count))]
        original = {n: h.config_sha256() for n, h in hosts.hosts.items()}
        return Rig(hosts, stack, sorted(pairs), tmp_path, original)

    return start


class StopAfter(Observer):
    """Sets ``stop`` once ``count`` pairs have a real result (what a first Ctrl-C does)."""

    def __init__(self, count: int, stop: asyncio.Event) -> None:
        self.count, self.stop = count, stop
        self.results: list[PairResult] = []

    def finished(self, result: PairResult) -> None:
        if not result.dry_run:
            self.results.append(result)
            if len(self.results) >= self.count:
                self.stop.set()
