"""Real sshd hosts for the coordinator's tests: the worker.demo.localhosts stand-ins behind
a thin :class:`Probe` around the real ``SshHost``, which records the order of restarts across
hosts and can pause or "kill" the worker at a chosen step; every byte still goes over SSH.

Its fixtures (``make_env``, ``env``) are registered in tests/change/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType

import pytest

from tests.change.helpers import PRIMARY_CONF, SECONDARY_CONF, SimulatedCrash, is_temp
from tests.fixtures.sshd import LocalHostsFactory
from worker.change.ports import CommandResult, RemoteHost
from worker.change.running import RunningState, VerifyPolicy
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.transport import SshFleet, SshOptions, load_inventory

OPTIONS = SshOptions(connect_timeout=5, command_timeout=15)


# -- a pass-through RemoteHost that can watch and interrupt ------------------------------------


@dataclass(eq=False)
class Probe:
    """The real host, plus: a shared timeline of restarts and locks, a gate before a
    restart, a hook once the lock is held, and a simulated worker death at an operation."""

    inner: RemoteHost
    timeline: list[tuple[str, str]]
    restart_gate: asyncio.Event | None = None
    restart_entered: asyncio.Event = field(default_factory=asyncio.Event)
    on_lock: Callable[[], None] | None = None
    crash_at: Callable[[tuple[str, ...]], bool] = lambda op: False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def config_path(self) -> str:
        return self.inner.config_path

    @property
    def working_directory(self) -> str:
        return self.inner.working_directory

    async def read(self, path: str) -> bytes | None:
        return await self.inner.read(path)

    async def write(
        self, path: str, data: bytes, *, like: str | None = None, in_place: bool = False
    ) -> None:
        await self.inner.write(path, data, like=like, in_place=in_place)

    async def replace(self, src: str, dst: str) -> None:
        if self.crash_at(("replace", src, dst)):
            raise SimulatedCrash(f"{self.name}: worker died before replacing {dst}")
        await self.inner.replace(src, dst)

    async def link(self, src: str, dst: str) -> None:
        await self.inner.link(src, dst)

    async def remove(self, path: str) -> None:
        await self.inner.remove(path)

    async def listdir(self, directory: str) -> list[str]:
        return await self.inner.listdir(directory)

    async def validate(self, path: str) -> CommandResult:
        return await self.inner.validate(path)

    async def restart(self) -> CommandResult:
        self.timeline.append((self.name, "restart"))
        self.restart_entered.set()
        if self.restart_gate is not None:
            await self.restart_gate.wait()
        return await self.inner.restart()

    def lock(self, timeout: float) -> AbstractAsyncContextManager[None]:
        return _ProbeLock(self, self.inner.lock(timeout))

    @property
    def omapi(self) -> VerifyPolicy | None:
        return self.inner.omapi

    async def failover_state(self, relationship: str) -> RunningState | None:
        return await self.inner.failover_state(relationship)

    def lock_lost(self) -> bool:
        return self.inner.lock_lost()


class _ProbeLock(AbstractAsyncContextManager[None]):
    def __init__(self, probe: Probe, inner: AbstractAsyncContextManager[None]) -> None:
        self.probe, self.inner = probe, inner

    async def __aenter__(self) -> None:
        await self.inner.__aenter__()
        self.probe.timeline.append((self.probe.name, "lock"))
        if self.probe.on_lock is not None:
            self.probe.on_lock()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)


@dataclass
class ProbeFleet:
    fleet: SshFleet
    probes: dict[str, Probe] = field(default_factory=dict)
    timeline: list[tuple[str, str]] = field(default_factory=list)

    def host(self, name: str) -> Probe:
        if name not in self.probes:
            self.probes[name] = Probe(self.fleet.host(name), self.timeline)
        return self.probes[name]

    def server_for_address(self, address: str) -> str | None:
        return self.fleet.server_for_address(address)


@dataclass
class Env:
    hosts: LocalHosts
    fleet: ProbeFleet

    @property
    def primary(self) -> LocalHost:
        return self.hosts.hosts[PRIMARY]

    @property
    def secondary(self) -> LocalHost:
        return self.hosts.hosts[SECONDARY]

    def probe(self, name: str) -> Probe:
        return self.fleet.host(name)

    def restarts(self) -> list[str]:
        return [name for name, op in self.fleet.timeline if op == "restart"]

    def leftovers(self) -> list[str]:
        return [
            f"{h.name}:{n}"
            for h in self.hosts.hosts.values()
            for n in os.listdir(h.config_dir)
            if is_temp(n)
        ]

    def assert_untouched(self) -> None:
        """Both live files byte-identical, nothing left behind, no restart, locks free."""
        assert self.primary.config_bytes() == PRIMARY_CONF.encode()
        assert self.secondary.config_bytes() == SECONDARY_CONF.encode()
        assert self.leftovers() == []
        assert self.primary.restarts() == self.secondary.restarts() == []


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(local_hosts: LocalHostsFactory) -> AsyncIterator[EnvFactory]:
    fleets: list[SshFleet] = []

    async def start(configs: Mapping[str, str] | None = None, hang_seconds: int = 30) -> Env:
        hosts = local_hosts(
            configs or sample_configs(), addresses=SAMPLE_ADDRESSES, hang_seconds=hang_seconds
        )
        fleet = SshFleet(load_inventory(hosts.inventory_path), OPTIONS)
        fleets.append(fleet)
        return Env(hosts, ProbeFleet(fleet))

    try:
        yield start
    finally:
        for fleet in fleets:
            await fleet.close()


@pytest.fixture
async def env(make_env: EnvFactory) -> Env:
    return await make_env()


async def other_worker(env: Env) -> SshFleet:
    """A second fleet: its own connections, like another worker process."""
    return SshFleet(load_inventory(env.hosts.inventory_path), OPTIONS)


async def wait_for(condition: Callable[[], bool], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
