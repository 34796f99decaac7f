"""An in-memory world for the coordinator: the sample pair on FakeHosts with test-only knobs."""

from __future__ import annotations

import asyncio
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.change.helpers import PRIMARY_CONF, SECONDARY_CONF, SimulatedCrash
from tests.change.ssh_world import env, make_env  # noqa: F401  (fixtures over real sshd)
from tests.fakes import FakeFleet, FakeHost
from worker.change.ports import CommandResult
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY


@dataclass(eq=False)
class KnobHost(FakeHost):
    """FakeHost plus what the coordinator tests need: a timeline shared across hosts, a
    restart that fails only N times or waits on a gate, a hook when the lock is taken, a
    crash at a chosen operation, and refused writes (and links) to chosen paths."""

    timeline: list[tuple[str, ...]] = field(default_factory=list)
    restart_failures: int = 0
    restart_gate: asyncio.Event | None = None
    restart_entered: asyncio.Event = field(default_factory=asyncio.Event)
    on_lock: Callable[[KnobHost], None] | None = None
    crash_at: Callable[[tuple[str, ...]], bool] = lambda op: False
    refuse_write: Callable[[str], bool] = lambda path: False

    def _op(self, *op: str) -> None:
        if self.crash_at(op):
            raise SimulatedCrash(f"{self.name}: worker died before {op}")
        self.timeline.append((self.name, *op))

    async def write(
        self, path: str, data: bytes, *, like: str | None = None, in_place: bool = False
    ) -> None:
        self._op("write", path)
        if self.refuse_write(path):
            from worker.errors import RemoteFileError

            raise RemoteFileError(f"{self.name}: permission denied: {path}", server=self.name)
        await super().write(path, data, like=like, in_place=in_place)

    async def replace(self, src: str, dst: str) -> None:
        self._op("replace", src, dst)
        await super().replace(src, dst)

    async def link(self, src: str, dst: str) -> None:
        self._op("link", src, dst)
        if self.refuse_write(dst):
            from worker.errors import RemoteFileError

            raise RemoteFileError(f"{self.name}: permission denied: {dst}", server=self.name)
        await super().link(src, dst)

    async def validate(self, path: str) -> CommandResult:
        self._op("validate", path)
        return await super().validate(path)

    async def restart(self) -> CommandResult:
        self._op("restart")
        self.restart_entered.set()
        if self.restart_gate is not None:
            await self.restart_gate.wait()
        if self.restart_failures > 0:
            self.restart_failures -= 1
            self.events.append(("restart",))
            self.restarts += 1
            return CommandResult("restart", 1, "", "Job for isc-dhcp-server.service failed")
        return await super().restart()

    def lock(self, timeout: float):  # type: ignore[no-untyped-def]
        return _HookedLock(self, super().lock(timeout))

    # -- looking behind the host's back ------------------------------------------------------

    @property
    def config(self) -> bytes:
        return self.files[self.config_path]

    def names(self) -> list[str]:
        return sorted(self.files)

    def restart_count(self) -> int:
        return sum(1 for e in self.events if e == ("restart",))


class _HookedLock:
    def __init__(self, host: KnobHost, inner: object) -> None:
        self.host, self.inner = host, inner

    async def __aenter__(self) -> None:
        await self.inner.__aenter__()  # type: ignore[attr-defined]
        self.host.timeline.append((self.host.name, "lock"))
        if self.host.on_lock is not None:
            self.host.on_lock(self.host)

    async def __aexit__(self, *exc: object) -> None:
        self.host.timeline.append((self.host.name, "unlock"))
        await self.inner.__aexit__(*exc)  # type: ignore[attr-defined]


@dataclass
class World:
    hosts: dict[str, KnobHost]
    fleet: FakeFleet
    timeline: list[tuple[str, ...]]

    @property
    def primary(self) -> KnobHost:
        return self.hosts[PRIMARY]

    @property
    def secondary(self) -> KnobHost:
        return self.hosts[SECONDARY]

    def locked(self) -> list[str]:
        return [n for n, h in self.hosts.items() if h._lock.locked()]


def make_world(configs: dict[str, str | bytes], addresses: dict[str, tuple[str, ...]]) -> World:
    timeline: list[tuple[str, ...]] = []
    hosts = {}
    for name, conf in configs.items():
        host = KnobHost(name, addresses=addresses.get(name, ()), timeline=timeline)
        data = conf.encode() if isinstance(conf, str) else conf
        host.files[host.config_path] = data
        host.modes[host.config_path] = 0o640
        hosts[name] = host
    return World(hosts, FakeFleet(dict(hosts)), timeline)


@pytest.fixture
def world() -> World:
    """The sample pair: dhcp1 primary, dhcp2 secondary of "dhcp-failover"."""
    return make_world({PRIMARY: PRIMARY_CONF, SECONDARY: SECONDARY_CONF}, SAMPLE_ADDRESSES)


def in_dir(host: FakeHost) -> list[str]:
    directory = posixpath.dirname(host.config_path)
    return sorted(p for p in host.files if posixpath.dirname(p) == directory)


def untouched_dir(host: FakeHost) -> None:
    """Nothing beside the live file but, after a ``failed`` outcome, its done record (a
    redelivery answers with it: coordinator ``_ended``)."""
    names = in_dir(host)
    records = [n for n in names if posixpath.basename(n).startswith(".dhcp-failover-done.")]
    assert [n for n in names if n not in records] == [host.config_path]
    for record in records:
        assert json.loads(host.files[record])["outcome"]["outcome"] == "failed"
