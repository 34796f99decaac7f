"""Test-only fault injection at named steps of a change (docs/design.md §4, last paragraph).

The crash matrix (tests/faults/) must kill the worker, or cut its SSH connections, at an exact
point of a change, not after a guessed delay. So the change code calls :func:`step` at each
point, and a worker started with ``DHCP_FAILOVER_FAULT_AT=<step>[:<N>]`` acts at the ``N``-th
call of that step in the process (default the first):

* ``DHCP_FAILOVER_FAULT_ACTION=kill`` (default): ``SIGKILL`` to its own process, so no cleanup
  code, ``finally`` block or ``atexit`` hook runs: a crash, as a power cut or the OOM killer
  does it;
* ``DHCP_FAILOVER_FAULT_ACTION=pause``: create ``<DHCP_FAILOVER_FAULT_DIR>/<step>.paused``
  and wait (on the event loop: keepalives and heartbeats go on) until the test creates
  ``<step>.go`` beside it, at most :data:`PAUSE_LIMIT` seconds; a test cuts the SSH
  connections meanwhile, then lets the change go on.

The variables are read once, at import; unset (production), :func:`step` returns at once.
Nothing else in the worker reads them. The fault logs ``fault.injected`` (step, occurrence,
action) just before it acts, so a test can tell its kill from any other death.

The steps, in the order a change reaches them (``:N`` counts per process; the servers of a
change prepare at once, so ``staged:2`` means "both staged", and commit goes server by
server, so ``renamed:2`` is the second server's):

=============  ===========================================================  ===========
step           reached                                                      where
=============  ===========================================================  ===========
``planned``    the plan is computed, something changes; locks may be held   coordinator
``staged``     one server's candidates written beside its live files        prepare
``validated``  one server's candidates passed its ``validate_command``      prepare
``journaled``  one server's journal written                                 prepare
``backed_up``  one server's live files hard-linked as backups               commit
``renamed``    one live file replaced by its candidate                      commit
``restarted``  one server restarted on its new files                        commit
``verified``   the verify phase is over (a no-op without ``omapi``)         verify
``recorded``   the outcome is in the done records, not yet announced        coordinator
``published``  the event is confirmed by the broker; the request not acked  consumer
=============  ===========================================================  ===========

The outcome is recorded before it is announced (docs/design.md §3, Finish), so "after
recording, before publish" is ``recorded`` and "after publish, before ack" is ``published``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.stdlib.get_logger(__name__)

AT_VARIABLE = "DHCP_FAILOVER_FAULT_AT"
ACTION_VARIABLE = "DHCP_FAILOVER_FAULT_ACTION"
DIR_VARIABLE = "DHCP_FAILOVER_FAULT_DIR"

STEPS = (
    "planned",
    "staged",
    "validated",
    "journaled",
    "backed_up",
    "renamed",
    "restarted",
    "verified",
    "recorded",
    "published",
)
#: The longest a paused step waits for its ``.go`` file: a test that died never hangs a worker.
PAUSE_LIMIT = 120.0
_POLL = 0.01


@dataclass(frozen=True)
class Fault:
    """Where to act (the ``occurrence``-th call of ``step``), how, and the pause directory."""

    step: str
    occurrence: int = 1
    action: str = "kill"
    directory: Path | None = None

    @classmethod
    def parse(cls, at: str, action: str = "kill", directory: str | None = None) -> Fault:
        """From the variables' values; a ValueError names a mistyped one."""
        name, _, count = at.partition(":")
        if name not in STEPS:
            raise ValueError(f"{AT_VARIABLE}={at!r}: unknown step (one of {', '.join(STEPS)})")
        occurrence = int(count) if count else 1
        if occurrence < 1:
            raise ValueError(f"{AT_VARIABLE}={at!r}: the occurrence counts from 1")
        if action not in ("kill", "pause"):
            raise ValueError(f"{ACTION_VARIABLE}={action!r}: kill or pause")
        if action == "pause" and not directory:
            raise ValueError(f"{ACTION_VARIABLE}=pause needs {DIR_VARIABLE}")
        return cls(name, occurrence, action, Path(directory) if directory else None)


def _from_environment() -> Fault | None:
    at = os.environ.get(AT_VARIABLE)
    if not at:
        return None
    return Fault.parse(
        at, os.environ.get(ACTION_VARIABLE) or "kill", os.environ.get(DIR_VARIABLE) or None
    )


_fault = _from_environment()
_seen: dict[str, int] = {}


def configure(fault: Fault | None) -> None:
    """Set (or clear) the fault of this process and reset the counts: for in-process tests."""
    global _fault
    _fault = fault
    _seen.clear()


async def step(name: str) -> None:
    """A change reached step ``name``: act if the fault names this occurrence of it."""
    fault = _fault
    if fault is None or fault.step != name:
        return
    _seen[name] = count = _seen.get(name, 0) + 1
    if count != fault.occurrence:
        return
    log.warning("fault.injected", step=name, occurrence=count, action=fault.action)
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    assert fault.directory is not None  # Fault.parse requires it for a pause
    (fault.directory / f"{name}.paused").touch()
    go = fault.directory / f"{name}.go"
    deadline = time.monotonic() + PAUSE_LIMIT
    while True:  # a file, not an Event: the test is another process
        if go.exists() or time.monotonic() >= deadline:
            return
        await asyncio.sleep(_POLL)


__all__ = ["ACTION_VARIABLE", "AT_VARIABLE", "DIR_VARIABLE", "STEPS", "Fault", "configure", "step"]
