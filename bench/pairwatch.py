"""The observers of bench/verify.py: the worker's own log lines telling when the last restart
started and returned, and a thread reading both dhcpds over OMAPI every 20 ms from then on."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import pypureomapi  # type: ignore[import-untyped,unused-ignore]

from worker.lab import NORMAL, Lab, as_int, dhcpd

POLL = 0.02  # the observer's interval, as the issue asks
PAIR = ("primary", "secondary")


# -- the worker's own log lines: when each restart started and returned ----------------------


class RestartMarks(logging.Handler):
    """Records ``commit.replaced`` (the restart starts right after it) and ``commit.restarted``
    by request and server, with the record's time; tells the armed observer when the last
    server's (the second one's) restart starts and returns."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: dict[tuple[str, str, str], float] = {}
        self.last: dict[str, str] = {}  # request -> the server restarted last
        self.watch: PairWatch | None = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        if not isinstance(msg, dict) or msg.get("event") not in (
            "commit.replaced",
            "commit.restarted",
        ):
            return
        request, server, event = str(msg.get("requestId")), str(msg.get("server")), msg["event"]
        self.marks[(request, server, event)] = record.created
        if event == "commit.replaced":
            started = {s for r, s, e in self.marks if r == request and e == event}
            if len(started) == len(PAIR):
                self.last[request] = server
        watch = self.watch
        if watch is None or request != watch.request_id or self.last.get(request) != server:
            return
        if event == "commit.replaced":
            watch.restart_started(server, record.created)
        else:
            watch.restart_returned(record.created)


# -- the observer: OMAPI from the root namespace, every 20 ms ------------------------------------


@dataclass
class Sample:
    start: float
    end: float
    last_answered: bool  # the server restarted last answered
    ok: bool  # both normal/normal with the new values


@dataclass
class PairWatch:
    """Polls both dhcpds from the last restart's start (O) on; restarts its poll at R."""

    lab: Lab
    request_id: str
    mclt: int
    mrd: int
    last: str = ""
    origin: float | None = None
    returned: float | None = None
    samples: list[Sample] = field(default_factory=list)
    after_return: float | None = None  # seconds from the first poll after R to normal
    _go: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pair-watch", daemon=True)
        self._thread.start()

    def restart_started(self, server: str, at: float) -> None:
        self.last, self.origin = server, at
        self._go.set()

    def restart_returned(self, at: float) -> None:
        self.returned = at
        self._wake.set()

    def close(self, timeout: float = 30.0) -> None:
        """Wait until the observer saw the pair normal after R (or ``timeout``), then stop;
        at once when the restart never started (the change failed before it)."""
        self._thread.join(timeout if self._go.is_set() else 0)
        self._done.set()
        self._go.set()
        self._thread.join(5)

    def _read(self) -> tuple[bool, bool]:
        answered, ok = {}, True
        for name in PAIR:
            try:
                raw = self.lab.failover_state(name, timeout=1.0)
            except (OSError, pypureomapi.OmapiError):
                answered[name], ok = False, False
                continue
            answered[name] = True
            ok = (
                ok
                and dhcpd.states(raw) == (NORMAL, NORMAL)
                and as_int(raw["mclt"]) == self.mclt
                and as_int(raw["max-response-delay"]) == self.mrd
            )
        return answered[self.last], ok

    def _run(self) -> None:
        if not self._go.wait(60) or self._done.is_set():
            return
        first_after_return: float | None = None
        deadline = time.monotonic() + 30
        while not self._done.is_set() and time.monotonic() < deadline:
            start = time.time()
            answered, ok = self._read()
            end = time.time()
            self.samples.append(Sample(start, end, answered, ok))
            if self.returned is not None and start >= self.returned:
                first_after_return = first_after_return or start
                if ok:
                    self.after_return = end - first_after_return
                    return
            self._wake.wait(POLL)
            self._wake.clear()

    def pair_normal(self) -> float | None:
        """P: the first good reading after one where the last restarted did not answer."""
        gone = False
        for s in self.samples:
            gone = gone or not s.last_answered
            if gone and s.ok:
                return s.end
        return None
