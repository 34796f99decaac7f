"""Which ``reply_to`` the worker answers, on the real broker (setting ``reply_to_prefixes``).

Replies go to the default exchange, which reaches any queue of the vhost by name; only
direct reply-to and queue names with a configured prefix are answered. Server-named queues
(``amq.gen-``, what ``publish --wait`` uses) are covered by tests/consumer/test_worker.py and
tests/consumer/test_client.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
import structlog
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from tests.consumer.support import (
    MODIFY,
    MODIFY_ID,
    CheckedEvent,
    EventTap,
    StubHandler,
    assert_depth,
    get_one,
    modify,
    publish_raw,
    running_worker,
)
from worker.logging import configure_logging
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The worker's JSON log lines, as an operator would read them; logging put back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_direct_reply_to_is_answered_even_with_no_prefix_configured(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    settings = broker_settings.model_copy(update={"reply_to_prefixes": ""})
    channel = await amqp.channel()
    replies: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    pseudo = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    await pseudo.consume(replies.put, no_ack=True)
    exchange = await channel.get_exchange(settings.request_exchange)
    request = aio_pika.Message(
        json.dumps(MODIFY).encode(),
        content_type="application/json",
        reply_to="amq.rabbitmq.reply-to",  # the broker hands the worker its own name for it
        correlation_id="drt-1",
    )
    await exchange.publish(request, "request.modify")
    server_named = await channel.declare_queue(exclusive=True, auto_delete=True)
    await publish_raw(amqp, settings, modify(requestId="gen-1"), reply_to=server_named.name)
    async with running_worker(amqp, settings, handler):
        published: dict[str, CheckedEvent] = {}
        for _ in range(2):
            checked = await tap.next_checked()
            published[checked.event.id] = checked
        reply = await asyncio.wait_for(replies.get(), 10)

    assert reply.correlation_id == "drt-1"
    assert reply.body == published[f"{MODIFY_ID}/succeeded"].message.body
    assert "gen-1/succeeded" in published
    await assert_depth(amqp, server_named.name, 0)  # amq.gen- is not among the prefixes now
    await channel.close()


async def test_the_configured_prefixes_replace_the_default(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    prefix = f"{broker_settings.request_exchange}.replies."
    settings = broker_settings.model_copy(update={"reply_to_prefixes": f" {prefix} ,ops-"})
    channel = await amqp.channel()
    named = await channel.declare_queue(f"{prefix}caller-1", exclusive=True)
    server_named = await channel.declare_queue(exclusive=True, auto_delete=True)
    await publish_raw(amqp, settings, MODIFY, reply_to=named.name, correlation_id="pfx-1")
    await publish_raw(amqp, settings, modify(requestId="gen-2"), reply_to=server_named.name)
    async with running_worker(amqp, settings, handler):
        published: dict[str, CheckedEvent] = {}
        for _ in range(2):
            checked = await tap.next_checked()
            published[checked.event.id] = checked
        reply = await get_one(amqp, named.name)

    assert reply.correlation_id == "pfx-1"
    assert reply.body == published[f"{MODIFY_ID}/succeeded"].message.body
    assert "gen-2/succeeded" in published
    await assert_depth(amqp, server_named.name, 0)
    await channel.close()


async def test_a_reply_to_naming_another_queue_gets_no_reply_and_an_operator_warning(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    handler: StubHandler,
    log_lines: io.StringIO,
) -> None:
    victim = f"{broker_settings.request_exchange}.billing-inbox"
    channel = await amqp.channel()
    await channel.declare_queue(victim, exclusive=True)
    await publish_raw(amqp, broker_settings, MODIFY, reply_to=victim, correlation_id="v-1")
    async with running_worker(amqp, broker_settings, handler):
        published = await tap.next_checked()
        await assert_depth(amqp, broker_settings.request_queue, 0)
        await tap.assert_quiet(0.3)

    assert published.event.id == f"{MODIFY_ID}/succeeded"  # the event still goes out
    await assert_depth(amqp, victim, 0)
    [warning] = [line for line in _lines(log_lines) if line["event"].startswith("reply_to")]
    assert warning["level"] == "warning"
    assert warning["requestId"] == MODIFY_ID
    assert warning["reply_to"] == victim
    assert warning["event_id"] == f"{MODIFY_ID}/succeeded"
    assert "DHCP_FAILOVER_REPLY_TO_PREFIXES" in warning["event"]
    await channel.close()


async def test_a_reply_to_naming_the_request_queue_does_not_feed_the_event_back_in(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    queue = broker_settings.request_queue
    await publish_raw(amqp, broker_settings, MODIFY, reply_to=queue, correlation_id="loop-1")
    async with running_worker(amqp, broker_settings, handler):
        published = await tap.next_checked()
        await tap.assert_quiet(0.5)  # the event came back as a request: a second, rejected one
        await assert_depth(amqp, queue, 0)

    assert published.event.id == f"{MODIFY_ID}/succeeded"
    assert [rid for _, rid in handler.calls] == [MODIFY_ID]
    await assert_depth(amqp, broker_settings.dead_letter_queue, 0)


async def test_a_forged_direct_reply_to_costs_neither_the_ack_nor_the_worker_its_connection(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    # RabbitMQ closes the publishing connection (INTERNAL_ERROR) on a direct reply-to name of
    # the right shape that is no live channel's: replies go out on a connection of their own,
    # and a reply that fails never holds the request back.
    forged = "amq.rabbitmq.reply-to.AAAAAAAAAAAA.+AOBcydf7SI7EZm6chUYAg=="
    await publish_raw(amqp, broker_settings, MODIFY, reply_to=forged, correlation_id="f-1")
    async with running_worker(amqp, broker_settings, handler):
        first = await tap.next_checked()
        await assert_depth(amqp, broker_settings.request_queue, 0)  # acked
        await publish_raw(amqp, broker_settings, modify(requestId="after-forged"))
        second = await tap.next_checked()
        await assert_depth(amqp, broker_settings.request_queue, 0)

    assert first.event.id == f"{MODIFY_ID}/succeeded"
    assert second.event.id == "after-forged/succeeded"
    assert [rid for _, rid in handler.calls] == [MODIFY_ID, "after-forged"]  # no rerun
    await assert_depth(amqp, broker_settings.dead_letter_queue, 0)
