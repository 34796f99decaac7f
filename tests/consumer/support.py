"""Helpers for the consumer tests: a stub handler, request bodies, an event tap, checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import jsonschema
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_structured_event

from tests.examples import MODIFY as MODIFY  # re-exported for the consumer tests
from tests.examples import MODIFY_ID as MODIFY_ID
from tests.examples import REMOVE as REMOVE
from tests.examples import REMOVE_ID as REMOVE_ID
from worker.consumer.app import run_worker
from worker.consumer.events import EVENT_CONTENT_TYPE
from worker.consumer.results import Handler
from worker.consumer.topology import declare_topology
from worker.messages import (
    ModifyRequest,
    Outcome,
    RemoveRequest,
    ResultData,
    ResultEvent,
    ServerResult,
)
from worker.settings import Settings

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "result-event.schema.json"


def modify(**changes: Any) -> dict[str, Any]:
    """A copy of the docs/contract.md §2 modify with top-level keys replaced (None deletes)."""
    body = deepcopy(MODIFY)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def with_mclt(number: str) -> bytes:
    """The modify example with ``Mclt`` written as the given JSON number text (``NaN``,
    ``1e999``, 5,000 digits: what ``json.dumps`` will not write)."""
    body = json.dumps(modify(params={**MODIFY["params"], "Mclt": "@"}))
    return body.replace('"@"', number).encode()


def servers_for(request: ModifyRequest | RemoveRequest) -> list[ServerResult]:
    if isinstance(request, ModifyRequest):
        names = [request.params.primary_server, request.params.secondary_server]
    else:
        names = [request.params.server, "dhcp2.example.net"]
    return [
        ServerResult(
            name=name,
            role=role,
            changed=True,
            sha256Before="a" * 64,
            sha256After="b" * 64,
            diff=f"--- a/etc/dhcp/dhcpd.conf\n+++ b/etc/dhcp/dhcpd.conf\n@@ {name} @@\n",
            restarted=True,
            state="new",
        )
        for name, role in zip(names, ("primary", "secondary"), strict=True)
    ]


@dataclass
class StubHandler:
    """Stands in for the coordinator: records calls, optionally slow, returns ``succeeded``.

    ``behaviour`` replaces the default result (it may raise, or return another outcome).
    ``started`` is set when a call begins; ``running`` / ``peak`` count concurrent calls.
    With ``finish_gate``, the result is announced first (as the coordinator does once the
    servers are final) and returned only when the gate opens (its clean-up done).
    """

    delay: float = 0.0
    behaviour: Callable[[ModifyRequest | RemoveRequest, str], Awaitable[ResultData]] | None = None
    calls: list[tuple[ModifyRequest | RemoveRequest, str]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    peak: int = 0
    finish_gate: asyncio.Event | None = None

    async def __call__(
        self,
        request: ModifyRequest | RemoveRequest,
        request_id: str,
        announce: Callable[[ResultData], None],
    ) -> ResultData:
        self.calls.append((request, request_id))
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.set()
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.behaviour is not None:
                return await self.behaviour(request, request_id)
            result = ResultData(
                requestId=request_id,
                command=request.command,
                outcome=Outcome.succeeded,
                dryRun=request.dry_run,
                servers=servers_for(request),
                durationMs=412,
            )
            if self.finish_gate is not None:
                announce(result)
                await self.finish_gate.wait()
            return result
        finally:
            self.running -= 1
            self.finished.append(request_id)


@dataclass
class CheckedEvent:
    """An event message after every check: the model, the raw JSON and the AMQP message."""

    event: ResultEvent
    raw: dict[str, Any]
    message: AbstractIncomingMessage


def check_event_message(message: AbstractIncomingMessage) -> CheckedEvent:
    """Validate an event the way an outside consumer would, and return it parsed.

    The official CloudEvents SDK (RabbitMQ binding, structured mode) must accept it, the
    checked-in JSON Schema must accept it, and the AMQP properties must match the contract.
    """
    assert message.content_type == EVENT_CONTENT_TYPE
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    ce = from_structured_event(
        RabbitMQMessage(headers={}, content_type=message.content_type, body=message.body)
    )
    assert ce.get_specversion() == "1.0"
    raw = json.loads(message.body)
    if SCHEMA.is_file():
        jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(raw)
    event = ResultEvent.model_validate_json(message.body)
    assert message.message_id == event.id == ce.get_id()
    assert ce.get_type() == event.type
    assert ce.get_data() == raw["data"]
    return CheckedEvent(event=event, raw=raw, message=message)


class EventTap:
    """Every event published to the event exchange, in order (an exclusive test queue)."""

    def __init__(self) -> None:
        self._messages: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def start(self, connection: AbstractConnection, settings: Settings) -> EventTap:
        channel = await connection.channel()
        topology = await declare_topology(channel, settings)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(topology.event_exchange, routing_key="#")
        await queue.consume(self._messages.put, no_ack=True)
        return self

    async def next(self, within: float = 10.0) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self._messages.get(), within)

    async def next_checked(self, within: float = 10.0) -> CheckedEvent:
        return check_event_message(await self.next(within))

    async def assert_quiet(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(self._messages.get(), seconds)
            raise AssertionError(f"unexpected event {message.message_id}: {message.body!r}")


async def publish_raw(
    connection: AbstractConnection,
    settings: Settings,
    body: bytes | dict[str, Any],
    routing_key: str = "request.modify",
    **properties: Any,
) -> None:
    """Publish a request exactly as given (bytes, or a dict dumped as JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    properties.setdefault("content_type", "application/json")
    properties.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
    channel = await connection.channel()
    try:
        exchange = await channel.get_exchange(settings.request_exchange)
        await exchange.publish(aio_pika.Message(data, **properties), routing_key)
    finally:
        await channel.close()


async def queue_depth(connection: AbstractConnection, name: str) -> int:
    """Ready messages in a queue (unacked ones are not counted)."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        return int(count or 0)
    finally:
        await channel.close()


async def consumer_count(connection: AbstractConnection, name: str) -> int:
    channel = await connection.channel()
    try:
        queue: AbstractQueue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.consumer_count or 0)
    finally:
        await channel.close()


async def get_one(
    connection: AbstractConnection, name: str, within: float = 10.0
) -> AbstractIncomingMessage:
    """The next message of a queue (polled; acked), or AssertionError after ``within`` seconds."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        deadline = asyncio.get_running_loop().time() + within
        while True:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                return message
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nothing arrived in {name} within {within} s")
            await asyncio.sleep(0.05)
    finally:
        await channel.close()


async def take_unacked(
    channel: AbstractChannel, name: str, within: float = 5.0
) -> AbstractIncomingMessage:
    """The next message of a queue, left unacked on ``channel`` (the test settles it)."""
    queue = await channel.declare_queue(name, passive=True)
    deadline = asyncio.get_running_loop().time() + within
    while (message := await queue.get(fail=False)) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"nothing arrived in {name} within {within} s")
        await asyncio.sleep(0.05)
    return message


@dataclass
class RunningWorker:
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_worker(
    connection: AbstractConnection,
    settings: Settings,
    handler: Handler,
    *,
    stop_timeout: float = 20.0,
) -> AsyncIterator[RunningWorker]:
    """Run :func:`run_worker` in a task until the block ends; its consumer is up on entry."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, handler, stop))
    worker = RunningWorker(stop, task)
    try:
        await wait_for_consumer(connection, settings, task)
        yield worker
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), stop_timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise


async def wait_for_consumer(
    connection: AbstractConnection,
    settings: Settings,
    task: asyncio.Task[None],
    within: float = 10.0,
) -> None:
    """Until the worker's consumer is registered on the request queue (or the worker died)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        if task.done():
            task.result()
            raise AssertionError("run_worker returned before consuming")
        with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
            if await consumer_count(connection, settings.request_queue) >= 1:
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the worker did not start consuming")
        await asyncio.sleep(0.05)


def _publish_with_pika(settings: Settings, body: bytes, routing_key: str) -> None:
    import pika  # type: ignore[import-untyped]

    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        channel.basic_publish(settings.request_exchange, routing_key, body, properties)
    finally:
        connection.close()


async def publish_without_message_id(settings: Settings, body: bytes, routing_key: str) -> None:
    """Publish with no AMQP ``message_id`` at all.

    aiormq fills in a random ``message_id`` on every publish, so this goes through pika (in a
    thread), like a publisher that sets none.
    """
    await asyncio.to_thread(_publish_with_pika, settings, body, routing_key)


def x_death(message: AbstractIncomingMessage) -> list[dict[str, Any]]:
    """The ``x-death`` entries RabbitMQ adds to a dead-lettered message."""
    deaths = (message.headers or {}).get("x-death")
    assert isinstance(deaths, list), message.headers
    return [dict(d) for d in deaths if isinstance(d, dict)]


async def assert_depth(
    connection: AbstractConnection,
    name: str,
    expected: int,
    *,
    within: float = 5.0,
    stable: float = 0.2,
) -> None:
    """The queue holds ``expected`` ready messages and keeps holding them for ``stable`` s.

    Quorum queues apply acks and returns through their log, so a count read right after a
    channel closes can lag; waiting, then re-checking, makes both "acked" (0 stays 0) and
    "returned" (the message shows up) reliable.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (depth := await queue_depth(connection, name)) != expected:
        assert loop.time() < deadline, f"{name} holds {depth} ready messages, not {expected}"
        await asyncio.sleep(0.05)
    await asyncio.sleep(stable)
    depth = await queue_depth(connection, name)
    assert depth == expected, f"{name} holds {depth} ready messages, not {expected}"
