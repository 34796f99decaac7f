"""Helpers of the live fuzz (tests/faults/test_live_fuzz.py): deliveries as the broker carries
them, their fates as the worker's own intake decides them, and the broker-side readers.

:data:`CASES` builds on the intake fuzz's strategies (tests/consumer/payloads.py) and adds what
only a broker carries: huge bodies, content types, header tables of every AMQP type, routing
keys, forged ``reply_to``. Property values are the intake fuzz's, made into what an AMQP short
string can carry (:func:`short`); :func:`undecodable_case` gives one property bytes that are
not UTF-8 instead. Publishing and reading the dead-letter queue go through pika: it sends a
message without ``message_id``, writes property bytes as given and reads them back, where
aio-pika fills in a ``message_id`` and drops its connection on bytes it cannot decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pika  # type: ignore[import-untyped]
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.consumer.payloads import PAYLOADS, PROPERTIES, TEXT, WIRE_TEXT
from tests.consumer.support import CheckedEvent, EventTap
from tests.faults.cluster_support import WorkerProcess, leftovers
from worker.consumer.amqp_text import amqp_text
from worker.consumer.intake import read_delivery
from worker.demo.localhosts import LocalHosts
from worker.messages import MAX_REQUEST_BYTES, Outcome, safe_text
from worker.settings import Settings

#: How long the worker may go without answering anything before it counts as stalled.
STALL = 60.0
#: What aiormq logs when it drops a connection on a frame it cannot parse.
DROPPED = "Cancelling cause reader exited abnormally"

#: The worker's RSS bound in the live tests: only gross leaks (the figures are printed).
RSS_LIMIT_KB = 300 * 1024

T = TypeVar("T")

# -- deliveries -----------------------------------------------------------------------------------


def short(value: object) -> str | None:
    """A property value as an AMQP short string carries it: at most 255 bytes of UTF-8."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else safe_text(str(value))
    text = text[:255]
    while len(text.encode()) > 255:
        text = text[:-1]
    return text


#: Hostile bytes no request reaches: 64 KiB + 1 up to 2 MiB (one body in 500).
HUGE = st.builds(
    lambda size, unit: (unit * (size // len(unit) + 1))[:size],
    st.integers(MAX_REQUEST_BYTES + 1, 2 * 2**20),
    st.sampled_from([b"[", b"{", b" ", b"\xff", b'{"requestId":"huge",'])
    | st.binary(min_size=1, max_size=8),
)
BODIES = st.integers(0, 499).flatmap(lambda k: HUGE if k == 0 else PAYLOADS)
#: The intake fuzz's property values as they can travel (text, or absent).
WIRE = PROPERTIES.map(short)
ROUTING_KEYS = st.sampled_from(
    ["request.modify", "request.remove", "request", "request.", "request.modify.x"]
) | WIRE_TEXT.map(lambda s: str(short("request." + s)))
#: A direct reply-to name of the right shape that belongs to nobody (contract §8).
FORGED_REPLY_TO = "amq.rabbitmq.reply-to.AAAAAAAAAAAA.+AOBcydf7SI7EZm6chUYAg=="
REPLY_TO = WIRE | st.sampled_from([FORGED_REPLY_TO, "amq.gen-nobody", "amq.rabbitmq.reply-to.x"])
CONTENT_TYPES = WIRE | st.sampled_from(
    ["application/json", "text/plain", "application/xml", "application/json; charset=latin-1"]
)
#: Every AMQP field-table type pika writes: void, bool, int64, decimal, timestamp, long string,
#: byte array (non-UTF-8 included), array and table.
HEADER_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.decimals(-(10**6), 10**6, places=3, allow_nan=False, allow_infinity=False)
    | st.datetimes(datetime.datetime(1970, 1, 2), datetime.datetime(2100, 1, 1))
    | WIRE_TEXT
    | st.binary(max_size=40)
    | TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(WIRE_TEXT, inner, max_size=3),
    max_leaves=10,
)
HEADER_KEYS = WIRE_TEXT | st.sampled_from(["x-delivery-count", "x-first-death-reason", "x-retry"])
HEADERS = st.dictionaries(HEADER_KEYS, HEADER_VALUES, max_size=4)


@dataclass(frozen=True)
class Case:
    """One delivery as published."""

    body: bytes
    routing_key: str
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    content_type: str | None
    headers: dict[str, Any]
    #: Carries ``fz-<index>`` as its ``correlation_id`` (its event is then its own).
    tagged: bool

    def properties(self, index: int) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type=self.content_type,
            delivery_mode=2,
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            reply_to=self.reply_to,
            headers={**self.headers, "x-fuzz-index": index},
        )


CASES = st.builds(
    Case,
    body=BODIES,
    routing_key=ROUTING_KEYS,
    message_id=WIRE,
    correlation_id=WIRE,
    reply_to=REPLY_TO,
    content_type=CONTENT_TYPES,
    headers=HEADERS,
    tagged=st.integers(0, 3).map(bool),
)


def draw(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` values of ``strategy``, the same ones on every run (derandomised, generation
    only: nothing is shrunk or replayed)."""
    out: list[T] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: T) -> None:
        out.append(value)

    collect()
    assert len(out) == count, f"hypothesis generated {len(out)} values, not {count}"
    return out


def tag(cases: list[Case]) -> list[Case]:
    """The tagged cases with ``fz-<index>`` as their ``correlation_id``."""
    return [replace(c, correlation_id=f"fz-{i}") if c.tagged else c for i, c in enumerate(cases)]


@dataclass(frozen=True)
class Expected:
    """A delivery's fate, as the worker's own intake decides it."""

    event: tuple[str, str | None, str]  # (event id, AMQP correlation_id, error.code)
    dead: bool


def expected(case: Case) -> Expected:
    """Readable and valid requests name servers the inventory does not have (the contract's
    examples, mangled): ``rejected``, ``unknown_server``."""
    # aio-pika hands an empty short string over as None; one that is not UTF-8 is absent
    # to the worker (worker/consumer/amqp_text.py).
    message_id, correlation_id = wire_text(case.message_id), wire_text(case.correlation_id)
    delivery = read_delivery(
        case.body,
        message_id=message_id,
        routing_key=case.routing_key,
        correlation_id=correlation_id,
    )
    if delivery.rejection is None:
        outcome, code = Outcome.rejected, "unknown_server"
    else:
        outcome, code = delivery.outcome, delivery.rejection.code
    event_id = f"{delivery.event_key}/{outcome.value}"
    return Expected((event_id, correlation_id or delivery.request_id, code), delivery.poison)


def wire_text(value: object) -> str | None:
    """A property as the worker reads it: text that is UTF-8 and not empty, else None."""
    return value if isinstance(value, str) and value and amqp_text(value) else None


# -- the broker side --------------------------------------------------------------------------


def publish_all(settings: Settings, cases: list[Case]) -> None:
    """Publish with confirms and ``mandatory`` (an unroutable case fails the test), through
    pika: it sends a message without ``message_id`` and property bytes as given."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for index, case in enumerate(cases):
            channel.basic_publish(
                settings.request_exchange,
                case.routing_key,
                case.body,
                case.properties(index),
                mandatory=True,
            )
    finally:
        connection.close()


@dataclass(frozen=True)
class DeadLetter:
    index: int | None
    deaths: list[tuple[str, int]]  # (reason, count) of each x-death entry


def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    """Everything in the dead-letter queue, read with pika: it keeps property bytes that are
    not UTF-8 (aio-pika's parser drops the connection on them)."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    out: list[DeadLetter] = []
    try:
        channel = connection.channel()
        for method, properties, _ in channel.consume(
            settings.dead_letter_queue, auto_ack=True, inactivity_timeout=2.0
        ):
            if method is None:
                break
            headers = properties.headers or {}
            deaths = [(str(d["reason"]), int(d["count"])) for d in headers.get("x-death", [])]
            index = headers.get("x-fuzz-index")
            out.append(DeadLetter(index if isinstance(index, int) else None, deaths))
        channel.cancel()
    finally:
        connection.close()
    return out


@dataclass
class Memory:
    """The worker's resident set size (``VmRSS``, kB), sampled every 0.2 s."""

    pid: int
    samples: list[int] = field(default_factory=list)

    def sample(self) -> None:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.2)

    def figures(self) -> str:
        s = self.samples
        return f"RSS start {s[0] // 1024} MB, peak {max(s) // 1024} MB, end {s[-1] // 1024} MB"


@contextlib.asynccontextmanager
async def sampled(worker: WorkerProcess) -> AsyncIterator[Memory]:
    memory = Memory(worker.process.pid)
    task = asyncio.create_task(memory.run())
    try:
        yield memory
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        memory.sample()


async def collect_events(
    tap: EventTap,
    worker: WorkerProcess,
    done: Callable[[list[AbstractIncomingMessage]], bool],
    *,
    quiet: float = 2.0,
) -> list[AbstractIncomingMessage]:
    """Events until ``done`` says enough, then until ``quiet`` seconds pass without one.

    Fails when the worker exits, or answers nothing for :data:`STALL` seconds (a stall)."""
    events: list[AbstractIncomingMessage] = []
    idle = 0.0
    while True:
        assert worker.process.poll() is None, f"the worker died:\n{worker.log.read_text()[-4000:]}"
        finished = done(events)
        try:
            events.append(await tap.next(within=quiet if finished else 1.0))
            idle = 0.0
        except TimeoutError:
            if finished:
                return events
            idle += 1.0
            assert idle < STALL, f"no event for {STALL:.0f} s after {len(events)} events"


async def dead_letters(settings: Settings, worker: WorkerProcess, count: int) -> list[DeadLetter]:
    """Read the dead-letter queue until ``count`` messages came out of it (the worker alive)."""
    dead: list[DeadLetter] = []
    deadline = time.monotonic() + STALL
    while len(dead) < count:
        assert worker.process.poll() is None, worker.log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"{len(dead)} of {count} dead-lettered: {dead}"
        dead += await asyncio.to_thread(read_dead_letters, settings)
    return dead


def code_of(event: CheckedEvent) -> str:
    return event.event.data.error.code if event.event.data.error else ""


def worker_errors(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's own error lines (aio-pika logs the reply connection a forged ``reply_to``
    makes the broker close as an error; that is expected, contract §8)."""
    return [
        e
        for e in worker.events()
        if e.get("level") in ("error", "critical") and str(e.get("logger")).startswith("worker")
    ]


#: Property values the AMQP client cannot decode: not UTF-8, or a lone surrogate as bytes.
UNDECODABLE = (
    (st.binary(min_size=1, max_size=40) | TEXT.map(lambda s: s + "\udcff"))
    .map(lambda v: (v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass"))[:255])
    .filter(lambda b: not _utf8(b))
)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def undecodable_case(draw_: st.DrawFn) -> Case:
    """A fuzz case with one property the client cannot decode."""
    case: Case = draw_(CASES)
    bad: Any = draw_(UNDECODABLE)  # bytes where the client expects str: the point of the case
    if draw_(st.integers(0, 4)) == 0:  # a header name
        return replace(case, headers={**case.headers, bad: 1})
    where = draw_(st.sampled_from(["message_id", "correlation_id", "reply_to", "content_type"]))
    return replace(case, **{where: bad})


def assert_untouched(hosts: LocalHosts, before: dict[str, bytes], memory: Memory) -> None:
    """The pair as it was (no file changed, no restart, nothing left) and memory bounded."""
    assert {name: host.config_bytes() for name, host in hosts.hosts.items()} == before
    assert all(host.restarts() == [] for host in hosts.hosts.values())
    assert leftovers(hosts) == {}
    assert max(memory.samples) < RSS_LIMIT_KB, memory.figures()
