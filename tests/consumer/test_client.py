"""``publish_request`` (what ``dhcp-failover-worker publish`` calls) against the real broker."""

from __future__ import annotations

import json

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.support import (
    MODIFY,
    MODIFY_ID,
    REMOVE,
    REMOVE_ID,
    EventTap,
    StubHandler,
    assert_depth,
    get_one,
    running_worker,
)
from worker.consumer.client import RequestNotRouted, publish_request
from worker.messages import Outcome
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


async def test_publish_with_wait_returns_the_result_event_the_worker_published(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    async with running_worker(amqp, broker_settings, handler):
        event = await publish_request(
            broker_settings, MODIFY, "request.modify", message_id=MODIFY_ID, wait=10
        )
        published = await tap.next_checked()

    assert event is not None
    assert event == published.event
    assert event.id == f"{MODIFY_ID}/succeeded"
    assert event.data.outcome is Outcome.succeeded
    assert event.correlationid == MODIFY_ID


async def test_publish_without_wait_queues_the_request_with_the_contract_properties(
    amqp: AbstractConnection, broker_settings: Settings
) -> None:
    # No worker has run and nothing declared the topology: the client declares it, so the
    # request waits in its queue instead of vanishing into an exchange without bindings.
    result = await publish_request(broker_settings, REMOVE, "request.remove")

    assert result is None
    message = await get_one(amqp, broker_settings.request_queue)
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == REMOVE_ID  # defaults to the body's requestId
    assert message.routing_key == "request.remove"
    assert message.exchange == broker_settings.request_exchange
    assert message.reply_to is None
    assert json.loads(message.body) == REMOVE


async def test_publish_with_wait_returns_none_when_no_worker_answers_in_time(
    amqp: AbstractConnection, broker_settings: Settings
) -> None:
    result = await publish_request(broker_settings, MODIFY, "request.modify", wait=0.3)

    assert result is None
    await assert_depth(amqp, broker_settings.request_queue, 1)  # still queued


async def test_publish_to_a_routing_key_nothing_is_bound_to_raises(
    broker_settings: Settings,
) -> None:
    with pytest.raises(RequestNotRouted, match="modify-now"):
        await publish_request(broker_settings, MODIFY, "modify-now")
