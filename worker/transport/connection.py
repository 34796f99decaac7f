"""One server's pooled asyncssh connection, which :class:`~worker.transport.ssh.SshHost` builds on.

Here so that the SFTP file operations (:mod:`worker.transport.files`) and the agents' commands
and change lock (:mod:`worker.transport.commands`) share one connection, one way to open it
(with the inventory as the whole truth and the host key never learned) and one check that a
change's lock is still held, each without the other. What the remote account needs, and the
failure mapping, are in :mod:`worker.transport.ssh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import asyncssh
import structlog

from worker.errors import HostKeyMismatch, LockLost, Unreachable
from worker.metrics import SSH_CONNECTIONS_OPEN, SSH_RECONNECTS
from worker.settings import Settings
from worker.transport.agent import Agent
from worker.transport.inventory import ServerEntry

log = structlog.get_logger(__name__)

_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
"""AES-GCM first: asyncssh does chacha20-poly1305 in several Python-level calls per packet,
AES-GCM in one (with AES-NI), so it costs the worker far less CPU per SFTP round trip. All of
these are in OpenSSH's default server list; the weak legacy ciphers are never offered."""

# Errors meaning "the connection or channel went away", as opposed to a definite refusal.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncssh.DisconnectError,
    asyncssh.ChannelOpenError,
    asyncssh.SFTPConnectionLost,
    asyncssh.SFTPNoConnection,
    BrokenPipeError,
    ConnectionError,
    EOFError,
)
_START_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_CONNECTION_ERRORS)
_AGENT_START_ERRORS: tuple[type[BaseException], ...] = (asyncio.IncompleteReadError, *_START_ERRORS)


@dataclass(frozen=True)
class SshOptions:
    """Timeouts and keepalive for every connection of a fleet."""

    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> SshOptions:
        return cls(
            connect_timeout=settings.connect_timeout, command_timeout=settings.command_timeout
        )


class _Counted(asyncssh.SSHClient):
    """Keeps ``dhcp_failover_ssh_connections_open`` right, and logs a connection that died
    of something other than our own close: asyncssh calls these on every connection,
    however it ends (a close, a keepalive timeout, a reset)."""

    def __init__(self, server: str) -> None:
        self._server = server
        self._open = SSH_CONNECTIONS_OPEN.labels(server)
        self._counted = False

    def auth_completed(self) -> None:
        self._counted = True
        self._open.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._open.dec()
            if exc is not None:  # not our own close: a cut, a reset, a keepalive timeout
                # asyncssh marks the connection closed right after this returns, in the
                # same call: a change's next step sees it (and any lock held on it) gone.
                log.warning("ssh.connection_lost", server=self._server, error=str(exc))


class _Gone(Exception):
    """Internal: the pooled connection died before the step was sent; safe to retry once."""


class _HeldLock:
    """A change lock: the agent shell whose file descriptor holds the ``flock``, and which
    runs the change's commands on that host while it is held."""

    def __init__(
        self, agent: Agent, listing: tuple[str, list[str]] | None = None, mark: int | None = None
    ) -> None:
        self.agent = agent
        self.listing = listing
        """The config directory as the lock request listed it, just after the lock was taken:
        the first listing of that directory under the lock, served once (no round trip),
        and forgotten as soon as this host changes anything."""
        self.mark = mark
        """:meth:`ServerConnection._write_mark` when the lock request was sent: the listing
        is served only if no write to this host began since (see there)."""
        self.released = False
        """Set when the change lets go; a task that outlived the ``async with`` (its context
        still names the lock) then acts as one without a lock."""

    @property
    def lost(self) -> bool:
        return self.agent.closed


# Locks held by the current task (and tasks it spawns): host -> lock. Lets every operation
# refuse to run on a host whose lock silently disappeared with its connection, instead of
# reconnecting and carrying on without mutual exclusion.
_HELD_LOCKS: contextvars.ContextVar[Mapping[ServerConnection, _HeldLock]] = contextvars.ContextVar(
    "dhcp_failover_held_locks", default=MappingProxyType({})
)


class ServerConnection:
    """One inventory server's state: its entry, and a pooled asyncssh connection with one SFTP
    session on it (both reconnected when the connection dies)."""

    def __init__(self, name: str, server: ServerEntry, options: SshOptions | None = None) -> None:
        self._name = name
        self._server = server
        self._options = options or SshOptions()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._pool_lock = asyncio.Lock()
        self.connections_opened = 0
        """Handshakes done so far: a warm host does none (for metrics and tests)."""
        self._writes_begun = 0
        self._writes_ended = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def config_path(self) -> str:
        return self._server.config_path

    @property
    def working_directory(self) -> str:
        return self._server.effective_working_directory

    @property
    def server(self) -> ServerEntry:
        return self._server

    # -- connection pool ------------------------------------------------------------------------

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._pool_lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn, self._sftp = None, None
            self._conn = await self._connect()
            return self._conn

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self._connection()
        async with self._pool_lock:
            if self._sftp is not None and self._conn is conn:
                return self._sftp
            try:
                sftp = await asyncio.wait_for(
                    # A path holding a byte that is not UTF-8 (a Latin-1 include name) comes
                    # from the engine as a surrogate (surrogateescape): send that byte back.
                    conn.start_sftp_client(path_errors="surrogateescape"),
                    self._options.connect_timeout,
                )
            except (TimeoutError, asyncssh.Error, OSError) as e:
                raise Unreachable(
                    f"{self._name}: SFTP subsystem not available ({_reason(e)}); "
                    "enable `Subsystem sftp` in the server's sshd_config",
                    server=self._name,
                ) from e
            if self._conn is conn:
                self._sftp = sftp
            return sftp

    def _forget(self, conn: asyncssh.SSHClientConnection | None = None) -> None:
        """Drop a dead connection from the pool so the next step reconnects."""
        current = self._conn
        if (conn is None or current is conn) and current is not None and current.is_closed():
            self._conn, self._sftp = None, None

    def _reset_sftp(self) -> None:
        """Abandon a stuck SFTP session (the connection itself may be fine)."""
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            sftp.exit()

    async def _connect(self) -> asyncssh.SSHClientConnection:
        s = self._server
        target = f"{s.username}@{s.host}:{s.port}"
        started = time.monotonic()
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    s.host,
                    s.port,
                    username=s.username,
                    client_keys=[str(k) for k in s.client_keys],
                    known_hosts=known_hosts(s.known_hosts),
                    config=None,  # never read ~/.ssh/config: the inventory is the whole truth
                    agent_path=None,
                    password_auth=False,
                    kbdint_auth=False,
                    host_based_auth=False,
                    gss_auth=False,
                    gss_kex=False,
                    public_key_auth=True,
                    encryption_algs=_CIPHERS,
                    connect_timeout=self._options.connect_timeout,
                    keepalive_interval=self._options.keepalive_interval,
                    keepalive_count_max=self._options.keepalive_count_max,
                    client_factory=lambda: _Counted(self._name),
                ),
                self._options.connect_timeout,
            )
        except asyncssh.HostKeyNotVerifiable as e:
            raise HostKeyMismatch(self._host_key_message(), server=self._name) from e
        except asyncssh.PermissionDenied as e:
            raise Unreachable(
                f"{self._name}: {target} refused key authentication with "
                f"{', '.join(str(k) for k in s.client_keys)}; add the public key to the "
                "account's authorized_keys",
                server=self._name,
            ) from e
        except asyncssh.DisconnectError as e:
            raise Unreachable(
                f"{self._name}: {target} closed the SSH connection: {_reason(e)}",
                server=self._name,
            ) from e
        except TimeoutError as e:
            raise Unreachable(
                f"{self._name}: no SSH answer from {target} within "
                f"{self._options.connect_timeout:g}s (host down or filtered?)",
                server=self._name,
            ) from e
        except OSError as e:
            raise Unreachable(
                f"{self._name}: cannot connect to {target}: {_reason(e)}", server=self._name
            ) from e
        except (asyncssh.KeyImportError, ValueError) as e:
            raise Unreachable(
                f"{self._name}: cannot load client key(s) {', '.join(map(str, s.client_keys))}: "
                f"{e} (keys must be unencrypted)",
                server=self._name,
            ) from e
        if self.connections_opened:
            SSH_RECONNECTS.labels(self._name).inc()
        self.connections_opened += 1
        log.debug(
            "ssh.connected",
            server=self._name,
            target=target,
            ms=int((time.monotonic() - started) * 1000),
        )
        return conn

    def _host_key_message(self) -> str:
        """Say whether the key is unknown or changed: the operator's next step differs."""
        s = self._server
        try:
            trusted = asyncssh.read_known_hosts(str(s.known_hosts)).match(s.host, "", s.port)[0]
        except (OSError, ValueError):
            trusted = []
        entry = s.host if s.port == 22 else f"[{s.host}]:{s.port}"
        if trusted:
            return (
                f"{self._name}: host key of {entry} does not match the one in {s.known_hosts} "
                "(server reinstalled, or someone in the middle?); verify it out of band "
                "before updating known_hosts"
            )
        return (
            f"{self._name}: host key of {entry} is not in {s.known_hosts}; add it after "
            "verifying its fingerprint (e.g. ssh-keyscan, compared with the server's console)"
        )

    def _held_lock(self) -> _HeldLock | None:
        """The lock the current task holds on this host, if any."""
        held = _HELD_LOCKS.get().get(self)
        return None if held is None or held.released else held

    def lock_lost(self) -> bool:
        """The current task held this host's change lock and it vanished with its
        connection (see :meth:`RemoteHost.lock_lost`)."""
        held = self._held_lock()
        return held is not None and held.lost

    def _forget_listing(self) -> None:
        """Something may change the config directory: the lock's listing is no longer true."""
        held = self._held_lock()
        if held is not None:
            held.listing = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around anything that may change this host's files (a write, a command)."""
        if self._held_lock() is not None:
            self._forget_listing()
            yield
            return
        self._writes_begun += 1  # see _write_mark
        try:
            yield
        finally:
            self._writes_ended += 1

    def _write_mark(self) -> int | None:
        """Taken when a lock request (and its listing) is sent. Another request's plan may
        write on this server without a lock meanwhile (it completes the bookkeeping of a
        change that has ended); so may a failed request's done record. Such a write under
        way when the request is sent (then None), or begun after it, may be missing from
        the listing, which is then not served. Writes under a lock need no mark: the
        holder's own forget the listing, another holder's end before its lock is free."""
        begun = self._writes_begun
        return begun if begun == self._writes_ended else None

    def _unwritten_since(self, mark: int | None) -> bool:
        return mark is not None and self._writes_begun == mark

    def _check_lock(self) -> None:
        """Refuse to act for a change whose lock on this host vanished with its connection."""
        if self.lock_lost():
            raise LockLost(
                f"{self._name}: the change lock was lost (its SSH connection dropped); "
                "refusing to continue without it",
                server=self._name,
            )


# -- helpers ------------------------------------------------------------------------------------


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _reason(error: BaseException) -> str:
    if isinstance(error, asyncssh.Error):
        return error.reason or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    """``path`` parsed once per version of the file (its mtime and size), not at every
    connect: asyncssh re-reads a file name each time, 1.2 ms for every server of a fleet
    whose known_hosts lists them all. A changed file is read again."""
    stat = path.stat()
    return _parsed_known_hosts(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _parsed_known_hosts(path: str, mtime_ns: int, size: int) -> asyncssh.SSHKnownHosts:
    return asyncssh.read_known_hosts(path)
