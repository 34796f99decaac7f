"""Where one change's time goes, step by step: every server call of the in-process worker timed.

:func:`timing` wraps the methods of :class:`~worker.transport.ssh.SshHost` (the coordinator's
only way to touch a server: the ``RemoteHost`` port) while inside, recording each call's
start and end (wall clock, as the JSON log's timestamps) with the request id the worker bound
to its log context. Each call is put in a step by what it is and what it touches, using the
journal's own file names:

==========  ==========================================================================
plan        reads and the journal-directory listing before the server's lock is taken
lock        taking the change lock (an agent's ``flock``)
recheck     reads and the listing under the lock (live files compared with the plan)
stage       writing the candidate (``.<name>.<id>.new``)
validate    ``validate_command`` on the candidate (``dhcpd -t``)
journal     writing the running journal (``.dhcp-failover-journal.*``)
backup      the hard link of the live file
rename      the candidate renamed over the live file
restart     ``restart_command && verify_command``
record      writing the done record (``.dhcp-failover-done.*``)
cleanup     removing temps and the running journal, pruning, releasing the lock
==========  ==========================================================================

:func:`shares` cuts each change's window (publish -> result event) into these steps: time
while calls of one or more steps are in flight is split evenly between those steps (the two
servers' calls overlap); ``intake`` is publish -> the worker's ``request received`` log line;
``worker`` is the rest, when no server call is in flight (planning in its thread, building
and publishing the event, the event loop). The SSH packets the worker sends meanwhile are
counted too (asyncssh's ``send_packet``), by kind.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import posixpath
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE

from worker.change.journal import DONE_PREFIX, JOURNAL_PREFIX
from worker.transport.ssh import SshHost

STEPS = (
    "intake", "plan", "lock", "recheck", "stage", "validate", "journal", "backup", "rename",
    "restart", "record", "cleanup", "worker",
)  # fmt: skip


@dataclass
class Call:
    step: str
    server: str
    start: float
    end: float
    method: str = "lock"


@dataclass
class Timeline:
    """Server calls by request id, and which servers each request holds locked."""

    calls: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))
    packets: Counter[str] = field(default_factory=Counter)  # SSH packets sent, by kind
    locked: set[tuple[str, str]] = field(default_factory=set)
    recorded: set[tuple[str, str]] = field(default_factory=set)

    def step_of(self, request: str, server: str, method: str, args: tuple[Any, ...]) -> str:
        key = (request, server)
        if method in ("validate", "restart"):
            return method
        if method == "link":
            return "backup"
        name = posixpath.basename(str(args[-1] if method == "replace" else args[0]))
        if method == "write":
            if name.startswith(DONE_PREFIX):
                self.recorded.add(key)
                return "record"
            if name.startswith(JOURNAL_PREFIX):
                return "journal"
            return "stage"
        if method == "replace":
            return "rename"
        if method == "remove" or key in self.recorded:
            return "cleanup"
        return "recheck" if key in self.locked else "plan"  # read, listdir

    def add(self, request: str, call: Call) -> None:
        self.calls[request].append(call)


def _request_id() -> str:
    return str(structlog.contextvars.get_contextvars().get("requestId", "?"))


@contextlib.contextmanager
def timing() -> Iterator[Timeline]:
    """Time every ``SshHost`` call made while inside (the methods are restored after)."""
    timeline = Timeline()
    saved: dict[str, Any] = {}

    def wrap(method: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(SshHost, method)
        saved[method] = original

        async def timed(self: SshHost, *args: Any, **kwargs: Any) -> Any:
            request = _request_id()
            step = timeline.step_of(request, self.name, method, args)
            start = time.time()
            try:
                return await original(self, *args, **kwargs)
            finally:
                timeline.add(request, Call(step, self.name, start, time.time(), method))

        setattr(SshHost, method, timed)

    for method in ("read", "write", "replace", "link", "remove", "listdir", "validate", "restart"):
        wrap(method)
    original_lock = SshHost.lock
    saved["lock"] = original_lock

    def lock(self: SshHost, timeout: float) -> _TimedLock:
        return _TimedLock(original_lock(self, timeout), timeline, self.name)

    SshHost.lock = lock  # type: ignore[method-assign,assignment]
    send_packet = SSHConnection.send_packet

    def counted(self: SSHConnection, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        kind = {MSG_IGNORE: "ignore", MSG_CHANNEL_DATA: "data"}.get(pkttype, "other")
        timeline.packets[kind] += 1
        send_packet(self, pkttype, *args, **kwargs)

    SSHConnection.send_packet = counted  # type: ignore[method-assign]
    try:
        yield timeline
    finally:
        SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
        for method, original in saved.items():
            setattr(SshHost, method, original)


class _TimedLock:
    """The change lock, its taking timed as ``lock`` and its release as ``cleanup``."""

    def __init__(
        self, inner: contextlib.AbstractAsyncContextManager[None], timeline: Timeline, server: str
    ) -> None:
        self._inner, self._timeline, self._server = inner, timeline, server

    async def __aenter__(self) -> None:
        request, start = _request_id(), time.time()
        try:
            await self._inner.__aenter__()
        finally:
            self._timeline.add(request, Call("lock", self._server, start, time.time()))
        self._timeline.locked.add((request, self._server))

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        request, start = _request_id(), time.time()
        try:
            await self._inner.__aexit__(kind, exc, tb)
        finally:
            self._timeline.add(request, Call("cleanup", self._server, start, time.time(), "unlock"))
            self._timeline.locked.discard((request, self._server))
            self._timeline.recorded.discard((request, self._server))


# -- the shares ----------------------------------------------------------------------------------


def received_at(log: Path) -> dict[str, float]:
    """request id -> wall time of the worker's ``request received`` line (JSON log)."""
    out: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") == "request received" and "requestId" in record:
            stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
            out.setdefault(record["requestId"], stamp.timestamp())
    return out


@dataclass
class Window:
    """One change as the publisher saw it: its request id, publish and reply times."""

    request_id: str
    published: float
    replied: float


@dataclass
class Shares:
    """Milliseconds per step summed over the changes, and the calls counted per step."""

    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEPS, 0))
    after_reply_ms: float = 0.0  # cleanup still running once the event had arrived
    changes: int = 0
    windows_ms: list[float] = field(default_factory=list)
    packets: Counter[str] = field(default_factory=Counter)
    timelines: list[str] = field(default_factory=list)  # the last changes, call by call

    @property
    def total(self) -> float:
        return sum(self.ms.values())


def shares(
    windows: list[Window], timeline: Timeline, received: dict[str, float], show: int = 0
) -> Shares:
    """The steps' shares of ``windows``; ``show``: the last that many also call by call."""
    out = Shares(packets=timeline.packets)
    for w in windows[len(windows) - show :] if show else []:
        out.timelines.extend(_timeline(w, timeline.calls.get(w.request_id, []), received))
    for w in windows:
        calls = timeline.calls.get(w.request_id, [])
        start = min(max(received.get(w.request_id, w.published), w.published), w.replied)
        out.ms["intake"] += (start - w.published) * 1000
        edges = sorted({start, w.replied, *(t for c in calls for t in (c.start, c.end))})
        for a, b in itertools.pairwise(edges):
            if a < start or b > w.replied:
                continue
            active = {c.step for c in calls if c.start <= a and c.end >= b}
            for step in active or {"worker"}:
                out.ms[step] += (b - a) * 1000 / max(len(active), 1)
        for c in calls:
            out.calls[c.step] += 1
            out.after_reply_ms += max(0.0, c.end - max(c.start, w.replied)) * 1000
        out.changes += 1
        out.windows_ms.append((w.replied - w.published) * 1000)
    return out


def _timeline(w: Window, calls: list[Call], received: dict[str, float]) -> list[str]:
    """One change's server calls in the order they started, in ms from the publish: where
    the critical path waits on what."""

    def ms(t: float) -> float:
        return (t - w.published) * 1000

    lines = [
        f"\n{w.request_id}: result event at {ms(w.replied):.1f} ms, "
        f"received by the worker at {ms(received.get(w.request_id, w.published)):.1f} ms",
        f"  {'server':20} {'step':9} {'call':8} {'start':>7} {'end':>7} {'ms':>5}",
    ]
    for c in sorted(calls, key=lambda c: c.start):
        lines.append(
            f"  {c.server:20.20} {c.step:9} {c.method:8} {ms(c.start):7.1f} {ms(c.end):7.1f} "
            f"{(c.end - c.start) * 1000:5.1f}"
        )
    return lines


def print_shares(s: Shares) -> None:
    if not s.changes:
        return
    total = s.total
    print(
        f"\nwhere one change's time goes ({s.changes} changes, publish -> result event: median "
        f"{statistics.median(s.windows_ms):.1f} ms, mean {total / s.changes:.1f} ms)"
    )
    print(f"  {'step':10}{'share':>8}{'mean ms':>11}{'calls/change':>14}")
    for step in STEPS:
        calls = f"{s.calls[step] / s.changes:14.1f}" if s.calls[step] else f"{'':14}"
        print(f"  {step:10}{s.ms[step] / total * 100:7.1f}%{s.ms[step] / s.changes:11.1f}{calls}")
    per_change = sum(s.calls.values()) / s.changes
    print(f"  {'total':10}{100:7.1f}%{total / s.changes:11.1f}{per_change:14.1f}")
    print(
        f"  after the event arrived, cleanup still ran {s.after_reply_ms / s.changes:.1f} ms "
        "per change (not in the latency)"
    )
    sent, data, ignore = (
        n / s.changes for n in (sum(s.packets.values()), s.packets["data"], s.packets["ignore"])
    )
    print(
        f"  SSH packets sent per change: {sent:.1f}, of which channel data {data:.1f} and "
        f"SSH_MSG_IGNORE {ignore:.1f} (asyncssh sends one before every packet)"
    )
    for line in s.timelines:
        print(line)
