"""The SSH adapter: :class:`SshHost` implements ``RemoteHost``, :class:`SshFleet` ``Fleet``.

What the remote account needs
-----------------------------
* Key authentication for ``username`` with one of ``client_keys``; the server's host key listed
  in the inventory's ``known_hosts`` (an unknown or changed key is refused, never learned).
* The SFTP subsystem (OpenSSH's default ``Subsystem sftp``) with the ``posix-rename@openssh.com``
  and ``hardlink@openssh.com`` extensions (backups are hard links); file reads and writes go
  over one SFTP session per connection.
* Write access to the directory holding ``config_path``: candidates, backups and the lock file
  are created next to the live file so renames stay atomic and on one filesystem (and inside
  what an AppArmor profile for dhcpd allows). To keep the live file's owner on a replace the
  account must own it or be root; otherwise writes fail rather than silently change owner.
* A login shell that runs a POSIX command line (sh, bash, dash, ksh, zsh) and start-up files
  that print nothing on stdout (noise before the agent's banner is skipped, but is better not
  there). On the server's PATH: ``/bin/sh``, ``flock`` (util-linux) for the change lock and
  ``timeout`` (GNU coreutils), which stops a command at ``command_timeout`` on the server and
  gives it a process group of its own, so that the agent can end all of it when the worker
  goes. Without ``timeout`` everything works, but the worker times a command out itself
  (dropping its agent, and with it a change lock that agent held), and a command whose worker
  went is ended by killing the agent's own process group, together with the lock.
* The ``validate_command`` (default ``dhcpd -t -cf {path}``), ``restart_command`` and optional
  ``verify_command`` allowed to it (root, or sudo rules without a password prompt or tty).
  They run under ``/bin/sh -c`` with the environment the login shell exported once, when the
  agent started: ``PATH`` and other exported variables from start-up files apply, aliases and
  shell functions do not.
* Ideally ``ClientAliveInterval`` in sshd_config, so a lock held by a worker that vanished
  without closing its TCP connection is released within a bounded time.
* ``MaxSessions`` (default 10) above what one worker opens on one connection: an SFTP session,
  and one agent shell per change holding or waiting for the lock plus one per listing (or
  command run without the lock) at the same moment (up to ``MAX_IDLE_AGENTS`` of them stay
  open between changes).

Execs: sshd runs every exec through the login shell, which reads its start-up files (150 ms
or far more with a version manager in ``.bashrc``). So commands and the lock go to *agents*
(:mod:`worker.transport.agent`): small ``/bin/sh`` loops started with one exec each, pooled per
connection and reused, that run a request framed on their stdin and frame the reply. A warm
change starts no exec: a pooled agent takes the lock, and while the change holds it that same
agent runs validate and restart-and-verify (``restart && verify``, one request), so when the
worker or its connection dies the agent ends the running command before the lock is free (see
the agent module). Reads, writes, renames and removes are SFTP requests; directory listings
go to another agent (SFTP sends every entry's attributes, which asyncssh decodes in Python).
A command past ``command_timeout`` is stopped on the server and ``Ambiguous``; its agent (and
the lock) stays usable. Only a reply that never comes (``command_timeout`` plus the kill grace
and a margin) discards the agent: the connection is then dead or wedged, and the lock with it.

Failure mapping: cannot connect / authenticate -> ``Unreachable``; host key not trusted ->
``HostKeyMismatch``; a command past its timeout, or a connection lost in the middle of a
mutating step -> ``Ambiguous``; a refused file operation -> ``RemoteFileError``
(``RemoteFileNotFound`` for a missing file).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import posixpath
import shlex
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, NoReturn, TypeVar

import asyncssh
import structlog

from worker.change.ports import MAX_READ_BYTES, CommandResult, Fleet, RemoteHost
from worker.errors import (
    Ambiguous,
    CommandFailed,
    HostKeyMismatch,
    LockTimeout,
    RemoteFileError,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    UnknownServer,
    Unreachable,
)
from worker.settings import Settings
from worker.transport.agent import (
    AGENT_COMMAND,
    LIST_MISSING_EXIT,
    LOCK_BUSY_EXIT,
    Agent,
    AgentLost,
    AgentTimeout,
    Reply,
)
from worker.transport.inventory import Inventory, ServerEntry

log = structlog.get_logger(__name__)

T = TypeVar("T")

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

MAX_IDLE_AGENTS = 4
"""Agent shells kept open per connection between requests (each is an SSH session)."""

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


class _Gone(Exception):
    """Internal: the pooled connection died before the step was sent; safe to retry once."""


class _HeldLock:
    """A change lock: the agent shell whose file descriptor holds the ``flock``, and which
    runs the change's commands on that host while it is held."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.released = False
        """Set when the change lets go; a task that outlived the ``async with`` (its context
        still names the lock) then acts as one without a lock."""

    @property
    def lost(self) -> bool:
        return self.agent.closed


# Locks held by the current task (and tasks it spawns): host -> lock. Lets every operation
# refuse to run on a host whose lock silently disappeared with its connection, instead of
# reconnecting and carrying on without mutual exclusion.
_HELD_LOCKS: contextvars.ContextVar[Mapping[SshHost, _HeldLock]] = contextvars.ContextVar(
    "dhcp_failover_held_locks", default=MappingProxyType({})
)


class SshHost:
    """One inventory server over a pooled asyncssh connection (reconnected when it dies).

    Safe to share between concurrent changes: SSH multiplexes channels and SFTP requests.
    """

    def __init__(self, name: str, server: ServerEntry, options: SshOptions | None = None) -> None:
        self._name = name
        self._server = server
        self._options = options or SshOptions()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._pool_lock = asyncio.Lock()
        self.connections_opened = 0
        """Handshakes done so far: a warm host does none (for metrics and tests)."""
        self._agents: list[Agent] = []
        self.execs_started = 0
        """Exec channels started, each paying the shell's start-up files: one per agent."""

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

    def __repr__(self) -> str:
        s = self._server
        return f"SshHost({self._name!r}, {s.username}@{s.host}:{s.port})"

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
                    known_hosts=str(s.known_hosts),
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

    def _check_lock(self) -> None:
        """Refuse to act for a change whose lock on this host vanished with its connection."""
        held = self._held_lock()
        if held is not None and held.lost:
            raise Ambiguous(
                f"{self._name}: the change lock was lost (its SSH connection dropped); "
                "refusing to continue without it",
                server=self._name,
            )

    # -- file operations (SFTP) -----------------------------------------------------------------

    async def _sftp_call(
        self,
        what: str,
        op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
        *,
        mutating: bool,
    ) -> T:
        """Run one SFTP step with the timeout and the failure mapping of the module docstring.

        A read on a connection that turns out dead is retried once on a fresh one; a mutating
        step is retried only if the connection was already known dead before it was sent.
        """
        for attempt in (1, 2):  # a plain loop: tenacity's machinery cost more than the request
            try:
                return await self._sftp_once(what, op, mutating=mutating)
            except _Gone:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _sftp_once(
        self,
        what: str,
        op: Callable[[asyncssh.SFTPClient], Awaitable[T]],
        *,
        mutating: bool,
    ) -> T:
        self._check_lock()
        sftp = await self._sftp_client()
        conn = self._conn
        try:
            async with asyncio.timeout(self._options.command_timeout):
                return await op(sftp)
        except asyncssh.SFTPNoSuchFile as e:
            raise RemoteFileNotFound(f"{self._name}: {what}: {e.reason}", server=self._name) from e
        except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection) as e:
            self._lost(what, e, conn, mutating=mutating)
        except asyncssh.SFTPError as e:
            raise RemoteFileError(f"{self._name}: {what}: {e.reason}", server=self._name) from e
        except TimeoutError as e:
            self._reset_sftp()
            cls = Ambiguous if mutating else Unreachable
            raise cls(
                f"{self._name}: {what} got no answer within {self._options.command_timeout:g}s",
                server=self._name,
            ) from e
        except _CONNECTION_ERRORS as e:
            self._lost(what, e, conn, mutating=mutating)

    def _lost(
        self,
        what: str,
        error: BaseException,
        conn: asyncssh.SSHClientConnection | None,
        *,
        mutating: bool,
    ) -> NoReturn:
        """The connection broke under a step: retry reads, call writes ambiguous."""
        self._forget(conn)
        self._reset_sftp()
        if not mutating:
            raise _Gone(str(error)) from error
        raise Ambiguous(
            f"{self._name}: connection lost during {what}; it may or may not have happened",
            server=self._name,
        ) from error

    async def read(self, path: str) -> bytes | None:
        async def op(sftp: asyncssh.SFTPClient) -> bytes | None:
            # No fstat for the size: one read of the most the server sends at once. SFTP
            # guarantees a disk file's read returns the length asked for or up to its end,
            # so a shorter answer is the end: open, read, close (a longer file reads on).
            # The close is not waited for (a read-only handle: nothing can fail that matters).
            block = max(sftp.limits.max_read_len, 1)
            try:
                f = await sftp.open(path, "rb", block_size=0)
            except asyncssh.SFTPNoSuchFile:
                return None
            try:
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk: bytes = await f.read(block)
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_READ_BYTES:  # a huge file, or a device that never ends
                        raise RemoteFileTooLarge(
                            f"{self._name}: {path} is larger than {MAX_READ_BYTES} bytes; not read",
                            server=self._name,
                        )
                    if len(chunk) < block:
                        return b"".join(chunks)
            finally:
                _in_background(f.close())

        return await self._reads(f"read {path}", op)

    async def _reads(self, what: str, op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        try:
            return await self._sftp_call(what, op, mutating=False)
        except _Gone as e:
            raise Unreachable(
                f"{self._name}: connection lost twice during {what}", server=self._name
            ) from e

    async def write(self, path: str, data: bytes, *, like: str | None = None) -> None:
        """Write via a hidden temp file renamed over ``path``: never a half-written ``path``.

        The temp file is ``.<name>.<12 hex>.tmp`` beside ``path``; it is removed on any error,
        but a connection cut mid-write can leave one behind for a later cleanup to find.
        """
        directory, base = posixpath.split(path)
        tmp = posixpath.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp")

        async def like_attrs(sftp: asyncssh.SFTPClient) -> tuple[int, tuple[int, int] | None]:
            mode, owner = 0o644, None
            if like is not None:
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    attrs = await sftp.stat(like)
                    if attrs.permissions is not None:
                        mode = attrs.permissions & 0o7777
                    if attrs.uid is not None and attrs.gid is not None:
                        owner = (attrs.uid, attrs.gid)
            return mode, owner

        async def op(sftp: asyncssh.SFTPClient) -> None:
            # Three round trips: open (the stat of ``like`` beside it); then data, owner and
            # mode, fsync and close sent together (an SFTP server handles one handle's
            # requests in order); the rename only once all of them succeeded.
            attrs = asyncio.ensure_future(like_attrs(sftp))
            # Data larger than one request is written first (asyncssh splits it into requests
            # in flight together, sent from tasks of its own: not in order with the close).
            big = len(data) > max(sftp.limits.max_write_len, 1)
            try:
                f = await sftp.open(
                    tmp, "xb", asyncssh.SFTPAttrs(permissions=0o600), block_size=-1 if big else 0
                )
                try:
                    mode, owner = await attrs
                except BaseException:
                    await asyncio.gather(f.close(), return_exceptions=True)
                    raise
                wrote = await _outcome(f.write(data, 0)) if big else None
                # A chown may clear set-id bits: with those, owner and mode go one by one.
                at_once = owner is None or not mode & 0o6000
                attributes = asyncssh.SFTPAttrs(
                    uid=owner[0] if owner else None,
                    gid=owner[1] if owner else None,
                    permissions=mode,
                )
                first, set_at_once, synced, closed = await asyncio.gather(
                    _nothing() if big else f.write(data, 0),
                    f.setstat(attributes) if at_once else _nothing(),
                    f.fsync(),
                    f.close(),
                    return_exceptions=True,
                )
                if isinstance(synced, asyncssh.SFTPOpUnsupported):
                    synced = None  # a server without fsync@openssh.com: close is all there is
                for outcome in (wrote if big else first, synced, closed):
                    if isinstance(outcome, BaseException):
                        raise outcome
                if isinstance(set_at_once, BaseException) and not isinstance(
                    set_at_once, asyncssh.SFTPError
                ):
                    raise set_at_once
                if not at_once or set_at_once is not None:  # not tried, or refused
                    await self._set_owner_and_mode(sftp, tmp, owner, mode, path, like)
                await sftp.posix_rename(tmp, path)
            except BaseException:
                attrs.add_done_callback(_retrieve)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await sftp.remove(tmp)
                raise

        await self._sftp_call(f"write {path}", op, mutating=True)

    async def _set_owner_and_mode(
        self,
        sftp: asyncssh.SFTPClient,
        tmp: str,
        owner: tuple[int, int] | None,
        mode: int,
        path: str,
        like: str | None,
    ) -> None:
        """Owner and mode one by one, when setting them at once was refused: a non-root
        account may not chown, which is fine only if the owner already matches; set-id bits
        are set after the owner, as a chown may clear them."""
        if owner is not None:
            try:
                await sftp.chown(tmp, *owner)
            except asyncssh.SFTPError as e:
                current = await sftp.stat(tmp)
                if (current.uid, current.gid) != owner:
                    raise RemoteFileError(
                        f"{self._name}: cannot give {path} the owner {owner[0]}:{owner[1]} of "
                        f"{like} ({e.reason}); the account must own the config or be root",
                        server=self._name,
                    ) from e
        await sftp.chmod(tmp, mode)

    async def replace(self, src: str, dst: str) -> None:
        await self._sftp_call(
            f"rename {src} over {dst}",
            lambda sftp: sftp.posix_rename(src, dst),
            mutating=True,
        )

    async def link(self, src: str, dst: str) -> None:
        """A hard link over SFTP (``hardlink@openssh.com``): one request, no data copied."""
        await self._sftp_call(
            f"link {dst} to {src}", lambda sftp: sftp.link(src, dst), mutating=True
        )

    async def remove(self, path: str) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)

        await self._sftp_call(f"remove {path}", op, mutating=True)

    async def listdir(self, directory: str) -> list[str]:
        """Names in ``directory``, listed by an agent with shell builtins: one small reply.
        (SFTP sends every entry's attributes, which asyncssh decodes in Python: 5 ms of CPU
        for a config directory holding a hundred journal records, several times a change.)"""
        what = f"list {directory}"
        try:
            agent, reply = await self._request(
                lambda a: a.request("list", "0", directory, self._options.command_timeout),
                idempotent=True,
            )
        except AgentTimeout as e:
            raise Unreachable(
                f"{self._name}: {what} got no answer within {self._options.command_timeout:g}s",
                server=self._name,
            ) from e
        except AgentLost as e:
            raise Unreachable(
                f"{self._name}: connection lost twice during {what}", server=self._name
            ) from e
        self._checkin(agent)
        if reply.status != 0:
            reason = _text(reply.stderr).strip() or f"exit status {reply.status}"
            cls = RemoteFileNotFound if reply.status == LIST_MISSING_EXIT else RemoteFileError
            raise cls(f"{self._name}: {what}: {reason}", server=self._name)
        names = reply.stdout.split(b"/")[:-1]
        return sorted(n.decode("utf-8", "replace") for n in names)

    # -- the agent pool ---------------------------------------------------------------------------

    async def _checkout(self) -> Agent:
        """An idle agent on the live pooled connection, or a new one: the only exec a warm
        host ever starts is for a second change running on it at the same moment."""
        self._check_lock()
        conn = await self._connection()
        while self._agents:
            agent = self._agents.pop()
            if agent.conn is conn and not agent.closed:
                return agent
            agent.discard()
        return await self._start_agent()

    def _checkin(self, agent: Agent) -> None:
        """Back to the pool after a complete request; surplus or dead agents are ended."""
        if agent.closed or agent.conn is not self._conn:
            agent.discard()
        elif len(self._agents) >= MAX_IDLE_AGENTS:
            agent.retire()
        else:
            self._agents.append(agent)

    async def _start_agent(self) -> Agent:
        """Start an agent with one exec; if the pooled connection was dead, nothing ran and
        the start is retried once on a fresh one."""
        for attempt in (1, 2):
            self._check_lock()
            conn = await self._connection()
            try:
                async with asyncio.timeout(self._options.connect_timeout):
                    process: asyncssh.SSHClientProcess[bytes] = await conn.create_process(
                        AGENT_COMMAND, encoding=None
                    )
                self.execs_started += 1
            except _START_ERRORS as e:
                self._forget(conn)
                if attempt == 2 or not conn.is_closed():
                    raise Unreachable(
                        f"{self._name}: cannot start a command: {_reason(e)}", server=self._name
                    ) from e
                continue
            try:
                return await Agent.start(conn, process, self._options.connect_timeout)
            except _AGENT_START_ERRORS as e:
                self._forget(conn)
                if conn.is_closed():
                    raise Unreachable(
                        f"{self._name}: connection lost while starting a command: {_reason(e)}",
                        server=self._name,
                    ) from e
                output = _text(getattr(e, "partial", b""))
                raise CommandFailed(
                    f"{self._name}: the remote shell did not start "
                    f"({'no answer' if isinstance(e, TimeoutError) else 'it exited'}); "
                    "the account needs a POSIX login shell, /bin/sh and quiet start-up files",
                    server=self._name,
                    detail={"output": output[-2000:]},
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(
        self, send: Callable[[Agent], Awaitable[Reply]], *, idempotent: bool = False
    ) -> tuple[Agent, Reply]:
        """One request (``send``) on a checked-out agent, which the caller then owns (check it
        in, keep it for a held lock). A request that surely never reached a shell is retried
        once, an ``idempotent`` one (a listing) even if it may have."""
        for attempt in (1, 2):
            agent = await self._checkout()
            try:
                return agent, await send(agent)
            except AgentLost as e:
                self._forget(agent.conn)
                if attempt == 2 or (e.sent and not idempotent):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- commands -------------------------------------------------------------------------------

    async def validate(self, path: str) -> CommandResult:
        """``validate_command`` run in the working directory, where dhcpd resolves a
        relative include (as the worker did when it read the tree)."""
        command = _substitute(self._server.validate_command, path)
        return await self._run(command, cwd=self.working_directory)

    async def restart(self) -> CommandResult:
        """Restart and verify in one request: ``restart && verify``."""
        s = self._server
        command = _substitute(s.restart_command, s.config_path)
        if s.verify_command is not None:
            command = f"{command} && {_substitute(s.verify_command, s.config_path)}"
        return await self._run(command)

    async def _run(self, command: str, *, cwd: str | None = None) -> CommandResult:
        """On the agent holding the change lock, if this task holds it: the agent then ends
        the command before it lets go of the lock, should the worker or its connection die.
        (One agent runs one request at a time; a change's commands are sequential anyway.)"""
        timeout = self._options.command_timeout
        started = time.monotonic()
        line = command if cwd is None else f"cd {shlex.quote(cwd)} && {command}"
        held = self._held_lock()
        try:
            if held is not None:
                self._check_lock()
                agent, reply = held.agent, await held.agent.run(line, timeout)
            else:
                agent, reply = await self._request(lambda a: a.run(line, timeout))
        except AgentTimeout as e:
            raise Ambiguous(
                f"{self._name}: `{command}` got {e} (past its {timeout:g}s timeout); "
                "its effect is unknown",
                server=self._name,
                detail={"command": command},
            ) from e
        except AgentLost as e:
            raise Ambiguous(
                f"{self._name}: no complete reply for `{command}` ({e}); its effect is unknown",
                server=self._name,
                detail={"command": command},
            ) from e
        if held is None:
            self._checkin(agent)
        if reply.timed_out:
            raise Ambiguous(
                f"{self._name}: `{command}` did not finish within {timeout:g}s and was stopped "
                "on the server; its effect is unknown",
                server=self._name,
                detail={"command": command, "exit_status": reply.status},
            )
        return CommandResult(
            command=command,
            exit_status=reply.status,
            stdout=_text(reply.stdout),
            stderr=_text(reply.stderr),
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    # -- change lock ----------------------------------------------------------------------------

    def lock(self, timeout: float) -> AbstractAsyncContextManager[None]:
        """``flock`` on the lock file, held on a file descriptor of an agent shell.

        The worker dying (or its connection) closes the agent's stdin, the shell exits and the
        lock is free again; nothing is left to clean up by hand. While the lock is held, this
        host's commands run on that same agent, which kills a running one before it exits;
        a command that times out is stopped on the server and leaves the lock held.
        """
        return _ChangeLock(self, timeout)

    async def _acquire(self, wait_seconds: float) -> _HeldLock:
        path = self._server.effective_lock_path
        wait = max(wait_seconds, 0.0)
        try:
            agent, reply = await self._request(
                lambda a: a.request(
                    "lock", f"{wait:.3f}", path, wait + self._options.connect_timeout
                )
            )
        except AgentTimeout as e:
            raise LockTimeout(
                f"{self._name}: change lock {path} not obtained within {wait:g}s",
                server=self._name,
            ) from e
        except AgentLost as e:
            raise Unreachable(
                f"{self._name}: connection lost while taking the change lock: {e}",
                server=self._name,
            ) from e
        if reply.status == 0:
            log.debug("ssh.locked", server=self._name, path=path)
            return _HeldLock(agent)
        self._checkin(agent)
        if reply.status == LOCK_BUSY_EXIT:
            raise LockTimeout(
                f"{self._name}: change lock {path} is held by another change; "
                f"not obtained within {wait:g}s",
                server=self._name,
            )
        stderr = _text(reply.stderr)
        raise CommandFailed(
            f"{self._name}: cannot take change lock {path}: {stderr.strip() or 'no output'} "
            f"(exit {reply.status}); the account needs flock and write access there",
            server=self._name,
            detail={"lock": path, "exit_status": reply.status, "stderr": stderr},
        )

    async def _release(self, held: _HeldLock) -> None:
        """Close the lock's file descriptor in the agent (the lock is free once it answers)
        and pool the agent again; if that fails, drop the agent, which frees the lock too."""
        agent = held.agent
        held.released = True
        if not held.lost:
            try:
                await agent.request("unlock", "0", "", self._options.connect_timeout)
            except (AgentLost, AgentTimeout):
                pass  # discarded: its shell exits and the kernel drops the lock
            else:
                self._checkin(agent)
                log.debug("ssh.unlocked", server=self._name)
                return
        agent.discard()
        log.debug("ssh.unlocked", server=self._name, dropped=True)

    async def close(self) -> None:
        """Close the pooled connection (locks held on it are released by the server)."""
        async with self._pool_lock:
            conn, self._conn, self._sftp = self._conn, None, None
            agents, self._agents = self._agents, []
        for agent in agents:
            agent.retire()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._options.connect_timeout):
                    await conn.wait_closed()


class _ChangeLock(AbstractAsyncContextManager[None]):
    def __init__(self, host: SshHost, timeout: float) -> None:
        self._host = host
        self._timeout = timeout
        self._held: _HeldLock | None = None
        self._token: contextvars.Token[Mapping[SshHost, _HeldLock]] | None = None

    async def __aenter__(self) -> None:
        self._held = await self._host._acquire(self._timeout)
        self._token = _HELD_LOCKS.set({**_HELD_LOCKS.get(), self._host: self._held})

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            try:
                _HELD_LOCKS.reset(self._token)
            except ValueError:  # exited in another context than entered
                _HELD_LOCKS.set({h: v for h, v in _HELD_LOCKS.get().items() if h is not self._host})
        if self._held is not None:
            await asyncio.shield(self._host._release(self._held))


class SshFleet:
    """The inventory's servers over SSH: one pooled :class:`SshHost` per server name.

    Raises :class:`~worker.transport.inventory.InventoryError` at once if a client key or
    known_hosts file is missing: better at start-up than in the middle of a change.
    """

    def __init__(self, inventory: Inventory, settings: Settings | SshOptions | None = None) -> None:
        if isinstance(settings, Settings):
            options = SshOptions.from_settings(settings)
        else:
            options = settings or SshOptions()
        inventory.check_files()
        self._inventory = inventory
        self._hosts = {name: SshHost(name, s, options) for name, s in inventory.servers.items()}

    @property
    def inventory(self) -> Inventory:
        return self._inventory

    def host(self, name: str) -> SshHost:
        try:
            return self._hosts[name]
        except KeyError:
            raise UnknownServer(f"server {name!r} is not in the inventory", server=name) from None

    def server_for_address(self, address: str) -> str | None:
        return self._inventory.server_for_address(address)

    async def close(self) -> None:
        await asyncio.gather(*(h.close() for h in self._hosts.values()))

    async def __aenter__(self) -> SshFleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- helpers ------------------------------------------------------------------------------------


def _substitute(template: str, path: str) -> str:
    """Put the shell-quoted ``path`` where ``{path}`` stands; nothing else is interpolated."""
    return template.replace("{path}", shlex.quote(path))


async def _all_of(*steps: Awaitable[object]) -> None:
    """Await ``steps`` at once; all finish before the first error (in order) is raised, so
    nothing is still in flight on a handle the caller is about to close."""
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


_BACKGROUND: set[asyncio.Future[None]] = set()


def _in_background(step: Awaitable[None]) -> None:
    """Send a request whose answer nobody needs; kept referenced until it is in."""
    task = asyncio.ensure_future(step)
    _BACKGROUND.add(task)
    task.add_done_callback(_forget_background)


def _forget_background(task: asyncio.Future[None]) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled():
        task.exception()


async def _outcome(step: Awaitable[object]) -> object:
    """What ``step`` returned or raised (raised later, once the handle is closed)."""
    try:
        return await step
    except Exception as e:
        return e


async def _nothing() -> None:
    """A step already taken, or one taken afterwards on its own."""


def _retrieve(task: asyncio.Future[tuple[int, tuple[int, int] | None]]) -> None:
    """Mark an abandoned side request's outcome as seen; the write already failed."""
    if not task.cancelled():
        task.exception()


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


if TYPE_CHECKING:

    def _implements_the_ports(host: SshHost, fleet: SshFleet) -> tuple[RemoteHost, Fleet]:
        """mypy proves here that the adapter satisfies the coordinator's protocols."""
        return host, fleet
