"""Every Prometheus metric of the worker and the ``rollout`` command, defined once, here.

A leaf like :mod:`worker.logging`: each layer imports the objects (or the helpers below) from
here and observes them where the thing happens, so names, types and labels are in one place
(README, "Metrics"). They live in prometheus-client's default registry, which
:mod:`worker.health` serves on ``/metrics``.

Phase timing without the change layer knowing a metric: its phase functions carry
:func:`timed` (or call :func:`spend`), which add their time to the clock of the change
running in this task, if any; :func:`observed_change` (``serve`` runs every change in it)
owns that clock and observes each phase once per change, when the change ends. Outside it
(the offline ``plan``, tests calling ``execute``) the phases cost nothing and observe nothing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Literal, ParamSpec, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from worker.messages import ResultData

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds, from a warm no-op change to a slow restart or a long verify.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# -- requests and changes (worker/consumer/app.py, worker/service.py) ---------------------------

REQUESTS = Counter(
    "dhcp_failover_requests_total",
    "Result events published and confirmed, by operation (modify, remove, unknown for an "
    "unreadable request) and outcome.",
    ["operation", "outcome"],
)
CHANGE_DURATION = Histogram(
    "dhcp_failover_change_duration_seconds",
    "Wall time of one change (execute), by operation and outcome.",
    ["operation", "outcome"],
    buckets=BUCKETS,
)
PHASE_DURATION = Histogram(
    "dhcp_failover_change_phase_duration_seconds",
    "Time one change spent in a phase (plan, prepare, commit, verify, rollback, finish); "
    "observed once per change for each phase it ran.",
    ["operation", "phase"],
    buckets=BUCKETS,
)
CHANGES_IN_FLIGHT = Gauge("dhcp_failover_changes_in_flight", "Changes running now.")
LOCK_WAIT = Histogram(
    "dhcp_failover_lock_wait_seconds",
    "Time taken to acquire a change's server locks (each hold_locks, timeouts included).",
    buckets=BUCKETS,
)

# -- SSH (worker/transport/connection.py) -------------------------------------------------------

SSH_CONNECTIONS_OPEN = Gauge(
    "dhcp_failover_ssh_connections_open", "Authenticated SSH connections open.", ["server"]
)
SSH_RECONNECTS = Counter(
    "dhcp_failover_ssh_reconnects_total",
    "SSH connections opened to a server after its first (the pooled one had died).",
    ["server"],
)

# -- the broker (worker/consumer/app.py) --------------------------------------------------------

BROKER_CONNECTED = Gauge(
    "dhcp_failover_broker_connected",
    "1 while the consuming AMQP connection is up (channels and consumer restored), else 0.",
)
BROKER_RECONNECTS = Counter(
    "dhcp_failover_broker_reconnects_total",
    "Times the consuming AMQP connection was re-established after a loss.",
)
REDELIVERIES = Counter(
    "dhcp_failover_redeliveries_total", "Requests received with the AMQP redelivered flag."
)
DEAD_LETTERED = Counter(
    "dhcp_failover_dead_lettered_total",
    "Requests this worker dead-lettered (basic.reject without requeue) after answering them.",
)

# -- rollout (worker/rollout/engine.py) ---------------------------------------------------------

ROLLOUT_PAIRS = Gauge(
    "dhcp_failover_rollout_pairs",
    "Pairs of a rollout's waves by state: planned, in_flight, done (succeeded), failed "
    "(any other result, timeouts included); pairs done by an earlier run are counted.",
    ["rollout", "state"],
)


class RolloutProgress:
    """The ``dhcp_failover_rollout_pairs`` gauges of one rollout."""

    def __init__(self, rollout_id: str, planned: int, done: int, failed: int) -> None:
        self._id = rollout_id
        self._gauge("planned").set(planned)
        self._gauge("done").set(done)
        self._gauge("failed").set(failed)
        self._gauge("in_flight").set(0)

    def _gauge(self, state: str) -> Gauge:
        return ROLLOUT_PAIRS.labels(self._id, state)

    def started(self) -> None:
        self._gauge("in_flight").inc()

    def finished(self, failed: bool) -> None:
        self._gauge("in_flight").dec()
        self._gauge("failed" if failed else "done").inc()


# -- phase timing -------------------------------------------------------------------------------

PhaseName = Literal["plan", "prepare", "commit", "verify", "rollback", "finish"]

#: The phase times of the change running in this task (and the tasks it starts).
_CLOCK: ContextVar[dict[str, float] | None] = ContextVar("dhcp_failover_phases", default=None)


def spend(phase: PhaseName, seconds: float) -> None:
    """Add ``seconds`` to ``phase`` of the change running here (none: nothing happens)."""
    clock = _CLOCK.get()
    if clock is not None:
        clock[phase] = clock.get(phase, 0.0) + seconds


def timed(
    phase: PhaseName,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate an async step of ``phase``: its time goes to :func:`spend`, however it ends.
    Steps of one phase must not run inside each other (their times would add up twice)."""

    def decorate(step: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(step)
        async def timed_step(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.monotonic()
            try:
                return await step(*args, **kwargs)
            finally:
                spend(phase, time.monotonic() - started)

        return timed_step

    return decorate


async def observed_change(operation: str, change: Awaitable[ResultData]) -> ResultData:
    """Await ``change`` (one ``execute``) as a change in flight with its own phase clock;
    then observe its phases and its whole duration by outcome."""
    clock: dict[str, float] = {}
    token = _CLOCK.set(clock)
    CHANGES_IN_FLIGHT.inc()
    started = time.monotonic()
    try:
        result = await change
    finally:
        CHANGES_IN_FLIGHT.dec()
        _CLOCK.reset(token)
        for phase, seconds in clock.items():
            PHASE_DURATION.labels(operation, phase).observe(seconds)
    CHANGE_DURATION.labels(operation, result.outcome.value).observe(time.monotonic() - started)
    return result
