"""What :class:`~worker.transport.ssh.SshHost` sends to agent shells: commands, listings and
the change lock.

Here because they share the pool of agents (:mod:`worker.transport.agent`) on the pooled
connection, and because the lock and the commands are one concern: while a change holds the
lock, that same agent runs its commands, so a worker that dies never leaves a command running
without the lock.
"""

from __future__ import annotations

import asyncio
import contextvars
import posixpath
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import asyncssh
import structlog

from worker.change.ports import CommandResult
from worker.errors import (
    Ambiguous,
    CommandFailed,
    LockTimeout,
    RemoteFileError,
    RemoteFileNotFound,
    Unreachable,
)
from worker.transport.agent import Agent, AgentLost, AgentTimeout, Reply
from worker.transport.agentscript import (
    AGENT_COMMAND,
    LIST_MISSING_EXIT,
    LISTED,
    LOCK_BUSY_EXIT,
)
from worker.transport.connection import (
    _AGENT_START_ERRORS,
    _HELD_LOCKS,
    _START_ERRORS,
    ServerConnection,
    SshOptions,
    _HeldLock,
    _reason,
    _text,
)
from worker.transport.inventory import ServerEntry

log = structlog.get_logger(__name__)

MAX_IDLE_AGENTS = 4
"""Agent shells kept open per connection between requests (each is an SSH session)."""


class AgentCommands(ServerConnection):
    """Validate, restart and verify, list a directory and hold the change lock, on pooled
    agents of the connection."""

    def __init__(self, name: str, server: ServerEntry, options: SshOptions | None = None) -> None:
        super().__init__(name, server, options)
        self._agents: list[Agent] = []
        self.execs_started = 0
        """Exec channels started, each paying the shell's start-up files: one per agent."""

    async def listdir(self, directory: str) -> list[str]:
        """Names in ``directory``, listed by an agent with shell builtins: one small reply.
        (SFTP sends every entry's attributes, which asyncssh decodes in Python: 5 ms of CPU
        for a config directory holding a hundred journal records, several times a change.)"""
        held = self._held_lock()
        if (
            held is not None
            and held.listing is not None
            and held.listing[0] == directory
            and self._unwritten_since(held.mark)
        ):
            self._check_lock()
            names, held.listing = held.listing[1], None
            return names
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
        return _names(reply.stdout)

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
            with self._writing():  # a command may change the directory too
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
        """The lock, and with it (in the same request) a listing of the config directory,
        which the change's first look under the lock asks for (journals, leftovers)."""
        path = self._server.effective_lock_path
        directory = posixpath.dirname(self._server.config_path)
        wait = max(wait_seconds, 0.0)
        await self._sftp_client()  # up before the lock, so the agent knows whom to wait for
        mark = self._write_mark()
        try:
            agent, reply = await self._request(
                lambda a: a.request(
                    "lock",
                    f"{wait:.3f}",
                    f"{path}\n{directory}",
                    wait + self._options.connect_timeout,
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
            names, listed, status = reply.stdout.rpartition(LISTED)
            ok = listed and status == b"0"  # a listing that failed is left to listdir
            return _HeldLock(agent, (directory, _names(names)) if ok else None, mark)
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


class _ChangeLock(AbstractAsyncContextManager[None]):
    def __init__(self, host: AgentCommands, timeout: float) -> None:
        self._host = host
        self._timeout = timeout
        self._held: _HeldLock | None = None
        self._token: contextvars.Token[Mapping[ServerConnection, _HeldLock]] | None = None

    async def __aenter__(self) -> None:
        # Taken again (its lock was lost): acquire as a task without it, and put the lost one
        # back if that fails. Each update is a fresh mapping set between awaits, never a
        # reset: the locks of one change are taken by tasks sharing one context.
        lost = _HELD_LOCKS.get().get(self._host)
        if lost is not None:
            _HELD_LOCKS.set({h: v for h, v in _HELD_LOCKS.get().items() if h is not self._host})
        try:
            self._held = await self._host._acquire(self._timeout)
        except BaseException:
            if lost is not None:
                _HELD_LOCKS.set({**_HELD_LOCKS.get(), self._host: lost})
            raise
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


def _names(listing: bytes) -> list[str]:
    """A ``list`` reply: every name followed by ``/``."""
    return sorted(n.decode("utf-8", "replace") for n in listing.split(b"/")[:-1])


def _substitute(template: str, path: str) -> str:
    """Put the shell-quoted ``path`` where ``{path}`` stands; nothing else is interpolated."""
    return template.replace("{path}", shlex.quote(path))
