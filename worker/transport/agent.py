"""The worker's side of an agent: one shell per SSH channel, started once, that takes framed
requests (the script and its protocol are in :mod:`worker.transport.agentscript`). Why a
class of its own: a request that does not complete leaves the stream at an unknown place, so
the agent is discarded and no later reply can be mistaken for it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

import asyncssh

from worker.change.aio import retrieve
from worker.transport.agentscript import (
    BASH_WHERE,
    KILL_GRACE,
    READY,
    REPLY_MARGIN,
    TIMEOUT_EXITS,
)


class AgentLost(Exception):
    """The agent's channel ended. ``sent`` says whether the request may have reached it."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class AgentTimeout(Exception):
    """No reply within the limit; the agent has been discarded (its watcher then ends a
    command it was running)."""


@dataclass(frozen=True)
class Reply:
    """One finished request: the agent's status for it and the captured output."""

    status: int
    stdout: bytes
    stderr: bytes
    seconds: float = 0.0
    """From sending the request to its reply, as the worker saw it."""
    timed_out: bool = False
    """``run`` only: the server-side ``timeout`` stopped the command (see :meth:`Agent.run`)."""


class Agent:
    """One agent shell on one connection. Requests are serialised; a request that does not
    complete (timeout, cancellation, lost channel) discards the agent, because the stream
    can no longer be trusted to be at a frame boundary."""

    def __init__(
        self, conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess[bytes]
    ) -> None:
        self.conn = conn
        self.process = process
        self.mode = ""
        """How ``run`` is timed out on the server: ``jobs``, ``timeout`` or ``""`` (not)."""
        self.kills_on_timeout = False
        """The banner named a mode that times ``run`` out on the server."""
        self._busy = asyncio.Lock()
        self._broken = False
        self._token = uuid.uuid4().hex
        self._out_end = f"\n{self._token} ".encode()
        self._err_end = f"\n{self._token}\n".encode()

    @classmethod
    async def start(
        cls,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        limit: float,
    ) -> Agent:
        """Wait for the agent's banner on both streams (start-up noise before it is skipped)."""
        agent = cls(conn, process)

        async def banner() -> bytes:
            await process.stdout.readuntil(READY)
            return await process.stdout.readline()

        try:
            async with asyncio.timeout(limit):
                features, _ = await _both(banner(), process.stderr.readuntil(READY))
        except BaseException:
            agent.discard()
            raise
        agent.mode = features.strip().decode("ascii", "replace")
        agent.kills_on_timeout = agent.mode in ("jobs", "timeout")
        return agent

    @property
    def closed(self) -> bool:
        """True once the agent cannot take another request."""
        return (
            self._broken
            or self.conn.is_closed()
            or self.process.is_closing()
            or self.process.exit_status is not None
        )

    async def request(self, op: str, arg: str, body: str, limit: float) -> Reply:
        """Send one request and wait for its reply (its frame: see ``agentscript``)."""
        if "\0" in body:
            raise ValueError("a NUL byte cannot be passed through a shell")
        async with self._busy:
            if self.closed:
                raise AgentLost("agent channel already closed", sent=False)
            token = self._token
            frame = f"{op} {token} {arg}\n{body}"
            if body and not body.endswith("\n"):
                frame += "\n"
            frame += f"{token}\n"
            done = False
            sent = False
            started = time.monotonic()
            try:
                self.process.stdin.write(frame.encode("utf-8", "surrogateescape"))
                sent = True
                async with asyncio.timeout(limit):
                    out, err = await _both(
                        self.process.stdout.readuntil(self._out_end),
                        self.process.stderr.readuntil(self._err_end),
                    )
                    status_line = await self.process.stdout.readline()
                status = int(status_line.strip())
                done = True
            except TimeoutError as e:
                raise AgentTimeout(f"no reply within {limit:g}s") from e
            except asyncio.IncompleteReadError as e:
                if not self.process.is_closing() and self.process.exit_status is None:
                    raise AgentLost(
                        f"reply over {len(e.partial)} bytes, more than the channel window",
                        sent=sent,
                    ) from e
                raise AgentLost("the channel closed", sent=sent) from e
            except ValueError as e:
                raise AgentLost(f"unreadable reply: {e}", sent=sent) from e
            except (asyncssh.Error, OSError) as e:
                raise AgentLost(f"agent channel failed: {e}", sent=sent) from e
            finally:
                if not done:
                    self.discard()
            cut = len(token) + 2  # "\n" + token + " " (stdout), "\n" + token + "\n" (stderr)
            return Reply(status, out[:-cut], err[:-cut], time.monotonic() - started)

    async def run(self, body: str, time_limit: float) -> Reply:
        """Run ``body`` as a ``run`` request timed out on the server after ``time_limit`` s.

        The reply is awaited :data:`KILL_GRACE` + :data:`REPLY_MARGIN` longer than that, so
        a command that runs too long comes back as a reply (``timed_out``: status 124 or 137
        after at least ``time_limit``) and the agent, and a lock it holds, stay usable.
        Without GNU ``timeout`` on the server the worker gives up after ``time_limit`` itself:
        the agent is discarded (its watcher ends the command) and :class:`AgentTimeout` raised.
        """
        own = self.kills_on_timeout
        limit = time_limit + KILL_GRACE + REPLY_MARGIN if own else time_limit
        reply = await self.request("run", f"{max(time_limit, 0.001):.3f}", body, limit)
        if self.mode == "jobs":
            reply = dataclasses.replace(reply, stderr=BASH_WHERE.sub(b"", reply.stderr))
        if own and reply.status in TIMEOUT_EXITS and reply.seconds >= time_limit:
            return dataclasses.replace(reply, timed_out=True)
        return reply

    def discard(self) -> None:
        """Drop the agent now: close the channel. Its shell sees EOF: the watcher of a running
        command kills the command's process group, then the shell exits (and a lock it held
        goes). No signal is asked for: sshd would send it to the agent's process group,
        killing the agent and its watcher but not the command's group, and a lock would then
        be free while the command still ran."""
        self._broken = True
        self.process.close()

    def retire(self) -> None:
        """End an idle agent politely: EOF on its stdin ends its loop, and the shell exits."""
        self._broken = True
        with contextlib.suppress(OSError, asyncssh.Error):
            self.process.stdin.write_eof()
        self.process.close()


async def _both(a: Awaitable[bytes], b: Awaitable[bytes]) -> tuple[bytes, bytes]:
    """Read both streams at once (a full stderr must not stall stdout); if one fails, the
    other read is cancelled instead of lingering on a stream nobody will read again."""
    tasks = [asyncio.ensure_future(a), asyncio.ensure_future(b)]
    try:
        first, second = await asyncio.gather(*tasks)
        return first, second
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
            task.add_done_callback(retrieve)
