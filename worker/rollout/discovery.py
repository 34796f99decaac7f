"""Which pairs a rollout changes: read from the inventory's servers' own configs.

Every server's live tree is read the way a change reads it (:func:`read_snapshot`, then
:func:`~worker.change.planning.parse`), in parallel. Each failover peer declared there names
its partner by ``peer address``, looked up in the inventory as a remove does; a relationship
is a pair of the rollout when both its servers are in the inventory. A pair is seen from
either side, so one unreadable server does not hide its partner's relationships (its dry
run says what is wrong with it). Roles come from the peer blocks: ``primary;`` (or no role,
which dhcpd reads as primary) makes the server the primary.

With ``--server`` globs only the servers they match are read: every pair they select has a
matching peer, whose config names it. If one of those cannot be read, the others are read
too, since its pairs can then be seen only from their other side.

Nothing here checks that a pair is sound (roles, mirrored addresses and ports): that is the
worker's plan, which the preflight dry run runs on every pair.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import TypeAdapter, ValidationError

from worker.change.planning import parse
from worker.change.ports import Fleet
from worker.change.snapshot import read_snapshot
from worker.dhcpconf import ConfigSet
from worker.errors import WorkerError
from worker.messages import RelationshipName, ServerName

#: Servers read at once: each read is an SSH connection and a few SFTP reads.
PARALLEL_READS = 32

_RELATIONSHIP: TypeAdapter[str] = TypeAdapter(RelationshipName)
_SERVER: TypeAdapter[str] = TypeAdapter(ServerName)


@dataclass(frozen=True, order=True)
class Pair:
    """One relationship of the rollout; sorted by primary, then relationship name."""

    primary: str
    relationship: str
    secondary: str

    @property
    def label(self) -> str:
        return f"{self.relationship} {self.primary} -> {self.secondary}"


@dataclass(frozen=True)
class Selection:
    """``--relationship NAME`` (repeatable) and ``--server GLOB`` (repeatable, either peer);
    nothing given selects every pair (``--all``)."""

    relationships: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()

    def matches(self, pair: Pair) -> bool:
        if self.relationships and pair.relationship not in self.relationships:
            return False
        return not self.servers or self.names(pair.primary) or self.names(pair.secondary)

    def names(self, server: str) -> bool:
        """``server`` matches a ``--server`` glob (every server does when none is given)."""
        return not self.servers or any(fnmatch.fnmatchcase(server, g) for g in self.servers)


@dataclass(frozen=True)
class Skipped:
    """A peer block that is not a pair of the rollout, and why (server, relationship)."""

    server: str
    relationship: str
    reason: str


@dataclass(frozen=True)
class Unread:
    """A server whose config could not be read: the error code and message."""

    server: str
    code: str
    message: str


@dataclass
class Discovery:
    """The selected pairs (sorted) and everything that was not one."""

    pairs: list[Pair]
    servers_read: int
    unread: list[Unread] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: Servers the ``--server`` globs do not match were read too: one they match could not be.
    widened: bool = False


async def discover(fleet: Fleet, servers: Iterable[str], selection: Selection) -> Discovery:
    """Read the servers of ``servers`` (inventory names) that can hold a selected pair, and
    find the selected pairs."""
    everyone = sorted(servers)
    gate = asyncio.Semaphore(PARALLEL_READS)

    async def read(name: str) -> ConfigSet | Unread:
        async with gate:
            try:
                snapshot = await read_snapshot(fleet.host(name))
                return await asyncio.to_thread(parse, snapshot)
            except WorkerError as exc:
                return Unread(name, exc.code, exc.message)

    async def read_all(names: list[str]) -> dict[str, ConfigSet | Unread]:
        return dict(zip(names, await asyncio.gather(*(read(n) for n in names)), strict=True))

    read_in = await read_all([n for n in everyone if selection.names(n)])
    others = [n for n in everyone if n not in read_in]
    widened = bool(others) and any(isinstance(c, Unread) for c in read_in.values())
    if widened:
        read_in |= await read_all(others)
    names = sorted(read_in)  # a pair seen from both sides is taken as its first server sees it
    configs = [read_in[n] for n in names]
    found: dict[tuple[str, frozenset[str]], Pair] = {}
    skipped: list[Skipped] = []
    for name, config in zip(names, configs, strict=True):
        if isinstance(config, Unread):
            continue
        for pair in _pairs_of(fleet, name, config, skipped):
            found.setdefault((pair.relationship, frozenset((pair.primary, pair.secondary))), pair)
    selected = sorted(p for p in found.values() if selection.matches(p))
    return Discovery(
        pairs=selected,
        servers_read=sum(not isinstance(c, Unread) for c in configs),
        unread=[c for c in configs if isinstance(c, Unread)],
        skipped=sorted(skipped, key=lambda s: (s.server, s.relationship)),
        widened=widened,
    )


def _pairs_of(fleet: Fleet, server: str, config: ConfigSet, skipped: list[Skipped]) -> list[Pair]:
    """The relationships of one server whose partner is in the inventory."""
    pairs = []
    for name, peer in config.peers().items():
        address = peer.params.get("peer address")
        partner = fleet.server_for_address(address) if address else None
        if not _usable(_RELATIONSHIP, name):
            skipped.append(Skipped(server, name, "not a relationship name a request can carry"))
        elif address is None:
            skipped.append(Skipped(server, name, "no 'peer address'"))
        elif partner is None:
            skipped.append(Skipped(server, name, f"peer address {address} is not in the inventory"))
        elif partner == server:
            skipped.append(Skipped(server, name, f"peer address {address} is {server} itself"))
        elif not (_usable(_SERVER, server) and _usable(_SERVER, partner)):
            skipped.append(Skipped(server, name, "a server name a request cannot carry"))
        elif peer.role == "primary":
            pairs.append(Pair(server, name, partner))
        else:
            pairs.append(Pair(partner, name, server))
    return pairs


def _usable(adapter: TypeAdapter[str], name: str) -> bool:
    try:
        adapter.validate_python(name)
    except ValidationError:
        return False
    return True


def servers_of(pairs: Sequence[Pair]) -> set[str]:
    return {s for p in pairs for s in (p.primary, p.secondary)}
