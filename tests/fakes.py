"""An in-memory ``RemoteHost`` and ``Fleet`` for unit tests of the coordinator.

The same behaviour tests run against this fake and the real SSH adapter
(tests/transport/test_remote_host_contract.py), so the fake cannot drift from reality.

The fake also runs a pretend dhcpd for the verify phase: it "loads" the live main config at
each successful restart and answers :meth:`FakeHost.failover_state` from it (the module's
:func:`running_state`), pairing with the fleet's other hosts the way dhcpd does: normal when
one dials the port the other listens on and that port is in neither host's ``blocked_ports``.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.change.ports import MAX_READ_BYTES, CommandResult, RemoteHost
from worker.change.running import PeerState, RunningState, VerifyPolicy
from worker.dhcpconf import ConfigSet
from worker.dhcpconf.failover import PeerDecl
from worker.errors import (
    Ambiguous,
    LockTimeout,
    OmapiUnreachable,
    RemoteFileError,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    UnknownServer,
    Unreachable,
)

#: ``omapi_filter(host, relationship, reading)``: what the fake dhcpd answers instead.
OmapiFilter = Callable[["FakeHost", str, RunningState | None], RunningState | None]


@dataclass
class FakeHost:
    """Files in a dict; validate/restart decided by callables the test sets.

    ``validator(path, data)`` returns ``(ok, output)``; the default accepts everything.
    ``fail_restart`` / ``hang_restart`` / ``unreachable`` make the matching step fail.
    ``events`` records every mutating call in order, for assertions.
    Like ``RemoteHost.write`` requires, a write is atomic: the dict entry is replaced whole.

    OMAPI (only asked when ``omapi`` is set): ``omapi_script`` items are answered first, in
    order (an exception is raised); then the pretend dhcpd's reading, passed through
    ``omapi_filter`` if set. ``omapi_reads`` records every answer (or exception) in order.
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
    omapi: VerifyPolicy | None = None
    omapi_script: list[RunningState | BaseException | None] = field(default_factory=list)
    omapi_filter: OmapiFilter | None = None
    omapi_reads: list[tuple[str, RunningState | BaseException | None]] = field(default_factory=list)
    #: Ports a firewall on this host drops: a pair using one of them cannot form.
    blocked_ports: set[int] = field(default_factory=set)
    #: The pretend dhcpd: the main config it loaded at its last start (None: the live one,
    #: never restarted), when that was (wall clock), and whether it runs at all.
    loaded: bytes | None = None
    started: float = field(default_factory=lambda: time.time() - 3600)
    dhcpd_down: bool = False
    #: The state and its time (``local-stos``) of each relationship when it last stopped.
    saved: dict[str, tuple[PeerState, int]] = field(default_factory=dict)
    #: Every host of the fleet, by name (set by :class:`FakeFleet`): the partners.
    peers: dict[str, FakeHost] = field(default_factory=dict, repr=False, compare=False)

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

    async def write(
        self, path: str, data: bytes, *, like: str | None = None, in_place: bool = False
    ) -> None:
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
            self.dhcpd_down = True
            return CommandResult("restart", 1, "", "Job for isc-dhcp-server.service failed")
        self.saved = {}  # what dhcpd writes to its lease file: each relationship's state
        for name in self.relationships():
            if (now := running_state(self, name)) is not None:
                self.saved[name] = (now.local_state, now.local_stos or 0)
        self.loaded, self.dhcpd_down = self.files.get(self.config_path), False
        self.started = time.time()
        return CommandResult("restart", 0, "", "")

    def lock_lost(self) -> bool:
        """The fake's lock is an asyncio lock in the same process: never lost."""
        return False

    async def failover_state(self, relationship: str) -> RunningState | None:
        self._check()
        try:
            if self.omapi_script:
                item = self.omapi_script.pop(0)
                if isinstance(item, BaseException):
                    raise item
                answer = item
            else:
                answer = running_state(self, relationship)
                if self.omapi_filter is not None:
                    answer = self.omapi_filter(self, relationship, answer)
        except BaseException as exc:
            self.omapi_reads.append((relationship, exc))
            raise
        self.omapi_reads.append((relationship, answer))
        return answer

    def declaration(self, relationship: str) -> PeerDecl | None:
        """The peer block the pretend dhcpd runs for ``relationship`` (None: none)."""
        cs = self._running_config()
        return cs.declarations.get(relationship) if cs is not None else None

    def relationships(self) -> list[str]:
        cs = self._running_config()
        return list(cs.declarations) if cs is not None else []

    def _running_config(self) -> ConfigSet | None:
        data = self.loaded if self.loaded is not None else self.files.get(self.config_path)
        if data is None or self.dhcpd_down:
            return None
        text = data.decode("utf-8", "surrogateescape")
        return ConfigSet.parse({self.config_path: text}, self.config_path)

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


def _number(decl: PeerDecl, key: str, default: int | None = None) -> int | None:
    param = decl.get(key)
    return int(param.value) if param is not None else default


def _stos(host: FakeHost, partner: FakeHost, relationship: str) -> int:
    """When ``host`` entered ``normal``, as dhcpd 4.4.3-P1 reports it: the one restarted last,
    if it saved ``normal``, got back to it and restores that state's old time; otherwise it
    entered normal after its restart; its partner lost the link and re-entered normal after
    that restart."""
    if host.started > partner.started:
        saved = host.saved.get(relationship)
        return saved[1] if saved and saved[0] is PeerState.normal else int(host.started)
    return int(partner.started)


def running_state(host: FakeHost, relationship: str) -> RunningState | None:
    """What the pretend dhcpd on ``host`` says over OMAPI, from the configs loaded: its own
    values (dhcpd exports only those), the primary's MCLT on a connected secondary, and
    ``normal`` on both when one of them dials the port the other listens on, unblocked."""
    if host.dhcpd_down:
        raise OmapiUnreachable(f"{host.name}: connection refused (OMAPI)", server=host.name)
    mine = host.declaration(relationship)
    if mine is None:
        return None
    port, peer_port = _number(mine, "port", 647), _number(mine, "peer port", 647)
    partner = None
    for other in host.peers.values():
        theirs = other.declaration(relationship) if other is not host else None
        if theirs is not None and theirs.role != mine.role:
            partner = (other, theirs)
    formed = False
    mclt = _number(mine, "mclt", 0)
    state = PeerState.communications_interrupted
    stos = partner_stos = int(host.started)
    if partner is not None:
        other, theirs = partner
        blocked = host.blocked_ports | other.blocked_ports
        # One TCP connection carries the link: either side dialling the other's port will do.
        dials = [
            (peer_port, _number(theirs, "port", 647)),
            (_number(theirs, "peer port", 647), port),
        ]
        formed = any(to == listens and to not in blocked for to, listens in dials)
        if formed:
            state = PeerState.normal
            stos = _stos(host, partner=other, relationship=relationship)
            partner_stos = _stos(other, partner=host, relationship=relationship)
            if mine.role == "secondary":
                mclt = _number(theirs, "mclt", 0)
        elif host.started > other.started and relationship in host.saved:
            # Restarted, and never reached its partner since: dhcpd leaves startup for the
            # state it saved, with that state's time (it may well say normal, alone).
            state, stos = host.saved[relationship]
            partner_stos = stos
        else:  # it lost the link when its partner restarted (or never had one)
            stos = partner_stos = int(max(host.started, other.started))
    return RunningState(
        relationship=relationship,
        local_state=state,
        partner_state=PeerState.normal,
        read_at=datetime.now(UTC),
        mclt=mclt,
        local_port=port,
        partner_port=peer_port,
        max_outstanding_updates=_number(mine, "max-unacked-updates"),
        max_response_delay=_number(mine, "max-response-delay"),
        load_balance_max_secs=_number(mine, "load balance max seconds"),
        local_stos=stos,
        partner_stos=partner_stos,
        hierarchy=0 if mine.role == "primary" else 1,
    )


@dataclass
class FakeFleet:
    hosts: dict[str, FakeHost]

    def __post_init__(self) -> None:
        for host in self.hosts.values():
            host.peers = self.hosts

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
