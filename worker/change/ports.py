"""The small protocols the coordinator needs; the SSH adapter and the test fakes implement them.

The coordinator never sees an SSH connection: it reads, stages, renames and runs commands
through :class:`RemoteHost`, and resolves names through :class:`Fleet`.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from worker.change.running import RunningState, VerifyPolicy

#: The most one :meth:`RemoteHost.read` returns. A dhcpd.conf of 20,000 subnets is about
#: 4 MiB; anything beyond this is a mistake or a device (``include "/dev/zero";``).
MAX_READ_BYTES = 32 * 1024 * 1024

#: The temp file :meth:`RemoteHost.write` uses beside ``path``: ``.<name>.<12 hex>.tmp``. A
#: write cut off by a lost connection can leave one behind; a change removes them under the
#: lock (:mod:`worker.change.finish`), so adapters must name their temp files this way.
WRITE_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


@dataclass(frozen=True)
class CommandResult:
    """A finished remote command. ``exit_status`` is None when it was killed by a signal."""

    command: str
    exit_status: int | None
    stdout: str
    stderr: str
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class RemoteHost(Protocol):
    """One DHCP server as the coordinator sees it.

    Errors are raised as :mod:`worker.errors` classes: ``Unreachable`` / ``HostKeyMismatch``
    when the host cannot be reached, ``LockTimeout`` from :meth:`lock`, ``Ambiguous`` when a
    command or file operation may or may not have happened (timeout, connection lost).
    A command that ran and exited non-zero is *not* an exception: it is a ``CommandResult``.
    """

    @property
    def name(self) -> str: ...

    @property
    def config_path(self) -> str:
        """Absolute path of the live dhcpd.conf on the server."""
        ...

    @property
    def working_directory(self) -> str:
        """The directory dhcpd resolves a relative ``include`` path against: its working
        directory when it starts. ``validate_command`` runs there too, so ``dhcpd -t`` reads
        the same files the worker read (default: the directory of ``config_path``)."""
        ...

    async def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist. At most :data:`MAX_READ_BYTES`:
        a longer file, or one that never ends, is ``RemoteFileTooLarge``."""
        ...

    async def write(
        self, path: str, data: bytes, *, like: str | None = None, in_place: bool = False
    ) -> None:
        """Write ``path`` (created or replaced), copying mode and owner of ``like`` if given.

        Atomic: ``path`` holds its old bytes (or does not exist) until the new bytes are all
        there, durable, and then it holds them whole -- a reader or a crash never sees half a
        file (the SSH adapter writes a temp file beside it, fsyncs and renames it over).
        Callers rely on this and add no temp file of their own. Being a replace, it gives
        ``path`` a new file: another name linked to the old one (:meth:`link`) keeps the old
        bytes. Writers use a path in the live file's own directory so a later rename is atomic.

        ``in_place``: a new ``path`` written straight (created exclusively: no rename, one
        round trip less), durable when this returns; a crash meanwhile can leave it partial.
        If ``path`` exists, the atomic way instead: never truncated in place, so a dead
        worker's write still in flight cannot cut a newer file short. Only for a file of
        this change's own that nothing uses before the write has returned, and whose bytes
        are checked before any later use: a staged candidate (validated next; a resumed
        change takes it only if its sha256 matches the journal) or a validation copy.
        """
        ...

    async def replace(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` over ``dst`` (POSIX rename semantics)."""
        ...

    async def link(self, src: str, dst: str) -> None:
        """Make ``dst`` a hard link to ``src`` (one file, two names): a backup that costs no
        copy. ``dst`` must not exist (``RemoteFileError``); a missing ``src`` is
        ``RemoteFileNotFound``. Since :meth:`write` and :meth:`replace` give ``src`` a new file,
        ``dst`` keeps the bytes ``src`` had when it was linked. Same directory as ``src``."""
        ...

    async def remove(self, path: str) -> None:
        """Delete ``path``; a missing file is not an error."""
        ...

    async def listdir(self, directory: str) -> list[str]:
        """Names (not paths) of the entries in ``directory``."""
        ...

    async def validate(self, path: str) -> CommandResult:
        """Run the server's validate command (``dhcpd -t -cf {path}``) on a candidate."""
        ...

    async def restart(self) -> CommandResult:
        """Run the server's restart command and then its verify command, if any."""
        ...

    def lock(self, timeout: float) -> AbstractAsyncContextManager[None]:
        """Hold the server's change lock for the ``async with`` body; bounded wait."""
        ...

    def lock_lost(self) -> bool:
        """True when the current task held this host's change lock (:meth:`lock`) and it
        vanished with the connection: every step on the host is then refused (``LockLost``)
        until the lock is taken again."""
        ...

    @property
    def omapi(self) -> VerifyPolicy | None:
        """How to verify the running dhcpd (the inventory's ``omapi`` table); None when the
        server has none, and its changes are then reported ``verified: false``."""
        ...

    async def failover_state(self, relationship: str) -> RunningState | None:
        """The running dhcpd's ``failover-state`` object of that name, read over OMAPI; None
        when dhcpd answers that no such relationship exists. ``OmapiAuthFailed`` when the key
        is refused (or a keyed dhcpd is asked without one), ``OmapiUnreachable`` when nothing
        answers on the OMAPI port. Only called when :attr:`omapi` is not None."""
        ...


class Fleet(Protocol):
    """The inventory as the coordinator sees it: only these servers are ever contacted."""

    def host(self, name: str) -> RemoteHost:
        """The host for an inventory name; raises ``UnknownServer`` for any other name."""
        ...

    def server_for_address(self, address: str) -> str | None:
        """The inventory name whose host or failover address is ``address``, if any."""
        ...
