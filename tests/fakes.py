"""An in-memory ``RemoteHost`` and ``Fleet`` for unit tests of the coordinator.

The same behaviour tests run against this fake and the real SSH adapter
(tests/transport/test_remote_host_contract.py), so the fake cannot drift from reality.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.change.ports import MAX_READ_BYTES, CommandResult, RemoteHost
from worker.errors import (
    Ambiguous,
    LockTimeout,
    RemoteFileError,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    UnknownServer,
    Unreachable,
)


@dataclass
class FakeHost:
    """Files in a dict; validate/restart decided by callables the test sets.

    ``validator(path, data)`` returns ``(ok, output)``; the default accepts everything.
    ``fail_restart`` / ``hang_restart`` / ``unreachable`` make the matching step fail.
    ``events`` records every mutating call in order, for assertions.
    Like ``RemoteHost.write`` requires, a write is atomic: the dict entry is replaced whole.
    """

    name: str
    config_path: str = "/etc/dhcp/dhcpd.conf"
    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    validator: Callable[[str, bytes], tuple[bool, str]] = lambda path, data: (True, "")
    fail_restart: bool = False
    hang_restart: bool = False
    unreachable: bool = False
    fail_writes: bool = False
    addresses: tuple[str, ...] = ()
    events: list[tuple[str, ...]] = field(default_factory=list)
    restarts: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    #: None: the directory of ``config_path`` (``RemoteHost.working_directory``).
    cwd: str | None = None

    @property
    def working_directory(self) -> str:
        return self.cwd if self.cwd is not None else posixpath.dirname(self.config_path)

    def _check(self) -> None:
        if self.unreachable:
            raise Unreachable(f"{self.name}: connection refused", server=self.name)

    async def read(self, path: str) -> bytes | None:
        self._check()
        data = self.files.get(path)
        if data is not None and len(data) > MAX_READ_BYTES:
            raise RemoteFileTooLarge(
                f"{self.name}: {path} is larger than {MAX_READ_BYTES} bytes", server=self.name
            )
        return data

    async def write(self, path: str, data: bytes, *, like: str | None = None) -> None:
        self._check()
        if self.fail_writes:
            raise Ambiguous(f"{self.name}: write {path} failed", server=self.name)
        self.files[path] = bytes(data)
        self.modes[path] = self.modes.get(like, 0o644) if like else 0o644
        self.events.append(("write", path))

    async def replace(self, src: str, dst: str) -> None:
        self._check()
        if src not in self.files:
            raise FileNotFoundError(src)
        self.files[dst] = self.files.pop(src)
        self.modes[dst] = self.modes.pop(src, 0o644)
        self.events.append(("replace", src, dst))

    async def link(self, src: str, dst: str) -> None:
        """A copy of the bytes is a faithful hard link here: nothing rewrites a file in place
        (``write`` and ``replace`` put a new entry in the dict)."""
        self._check()
        if src not in self.files:
            raise RemoteFileNotFound(f"{self.name}: link {dst} to {src}: no such file")
        if dst in self.files:
            raise RemoteFileError(f"{self.name}: link {dst} to {src}: file exists")
        self.files[dst] = self.files[src]
        self.modes[dst] = self.modes.get(src, 0o644)
        self.events.append(("link", src, dst))

    async def remove(self, path: str) -> None:
        self._check()
        self.files.pop(path, None)
        self.modes.pop(path, None)
        self.events.append(("remove", path))

    async def listdir(self, directory: str) -> list[str]:
        self._check()
        return sorted(
            posixpath.basename(p) for p in self.files if posixpath.dirname(p) == directory
        )

    async def validate(self, path: str) -> CommandResult:
        self._check()
        data = self.files.get(path)
        if data is None:
            return CommandResult(f"validate {path}", 1, "", f"Can't open {path}")
        ok, output = self.validator(path, data)
        self.events.append(("validate", path))
        return CommandResult(f"validate {path}", 0 if ok else 1, "", output)

    async def restart(self) -> CommandResult:
        self._check()
        self.events.append(("restart",))
        if self.hang_restart:
            raise Ambiguous(f"{self.name}: restart timed out", server=self.name)
        self.restarts += 1
        if self.fail_restart:
            return CommandResult("restart", 1, "", "Job for isc-dhcp-server.service failed")
        return CommandResult("restart", 0, "", "")

    def lock(self, timeout: float) -> _FakeLock:
        return _FakeLock(self, timeout)


class _FakeLock:
    def __init__(self, host: FakeHost, timeout: float) -> None:
        self.host, self.timeout = host, timeout

    async def __aenter__(self) -> None:
        self.host._check()
        try:
            if self.timeout <= 0 and not self.host._lock.locked():  # a try, like flock -w 0
                await self.host._lock.acquire()
            else:
                await asyncio.wait_for(self.host._lock.acquire(), self.timeout)
        except TimeoutError:
            raise LockTimeout(
                f"{self.host.name}: change lock not obtained in {self.timeout}s",
                server=self.host.name,
            ) from None
        self.host.events.append(("lock",))

    async def __aexit__(self, *exc: object) -> None:
        self.host._lock.release()
        self.host.events.append(("unlock",))


@dataclass
class FakeFleet:
    hosts: dict[str, FakeHost]

    def host(self, name: str) -> RemoteHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise UnknownServer(f"server {name!r} is not in the inventory") from None

    def server_for_address(self, address: str) -> str | None:
        for name, h in self.hosts.items():
            if address == name or address in h.addresses:
                return name
        return None
