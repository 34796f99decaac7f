"""Broker faults, made on purpose with a TCP proxy between the worker and RabbitMQ.

What users rely on: a request is acked only after its event is confirmed, so cutting the
connection at any point loses nothing (the request comes back); a request that can never be
answered stops after the queue's delivery limit, in the dead-letter queue.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.proxy import TcpProxy
from tests.consumer.support import (
    MODIFY,
    MODIFY_ID,
    EventTap,
    StubHandler,
    assert_depth,
    consumer_count,
    get_one,
    publish_raw,
    running_worker,
    take_unacked,
    x_death,
)
from worker.consumer.settlement import Settlement, settle
from worker.messages import ModifyRequest, Outcome, RemoveRequest, ResultData
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


def through(proxy: TcpProxy, settings: Settings, **changes: object) -> Settings:
    """The worker's settings, connecting through the proxy and reconnecting quickly."""
    url = proxy.url(settings.amqp_url, reconnect_interval="0.2")
    return settings.model_copy(update={"amqp_url": url, **changes})


async def test_a_connection_cut_while_the_event_is_published_redelivers_the_request(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    handler: StubHandler,
    proxy: TcpProxy,
) -> None:
    proxy.cut_on(b"event.modify.succeeded")  # the basic.publish of the event never arrives
    await publish_raw(amqp, broker_settings, MODIFY)
    async with running_worker(amqp, through(proxy, broker_settings), handler):
        checked = await tap.next_checked(within=20)
        await tap.assert_quiet(0.5)

    assert proxy.triggered.is_set()
    assert proxy.accepted >= 2  # the worker reconnected
    # Not acked after the failed publish: delivered again, handled again (idempotently),
    # and this time published and acked. Exactly one event reached the broker.
    assert [rid for _, rid in handler.calls] == [MODIFY_ID, MODIFY_ID]
    assert checked.event.id == f"{MODIFY_ID}/succeeded"
    await assert_depth(amqp, broker_settings.request_queue, 0)
    await assert_depth(amqp, broker_settings.dead_letter_queue, 0)


async def test_an_event_that_can_never_be_published_stops_at_the_delivery_limit_unacked(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    handler: StubHandler,
    proxy: TcpProxy,
) -> None:
    limit = broker_settings.delivery_limit
    settings = through(proxy, broker_settings)
    proxy.cut_on(b"event.modify.succeeded", every_time=True)
    await publish_raw(amqp, settings, MODIFY, message_id="loop-1")
    async with running_worker(amqp, settings, handler):
        dead = await get_one(amqp, settings.dead_letter_queue, within=30)
        await asyncio.sleep(0.5)  # nothing further is delivered

    # The request was never acked (no event was ever confirmed), so the broker kept
    # redelivering it until the delivery limit moved it to the dead-letter queue.
    assert proxy.triggers == limit + 1
    assert len(handler.calls) == limit + 1
    await tap.assert_quiet(0.2)
    assert dead.message_id == "loop-1"
    [death] = x_death(dead)
    assert death["reason"] == "delivery_limit"
    await assert_depth(amqp, settings.request_queue, 0)


async def test_a_request_that_kills_the_worker_connection_every_time_ends_in_the_dead_queue(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, proxy: TcpProxy
) -> None:
    limit = broker_settings.delivery_limit
    settings = through(proxy, broker_settings)

    async def poison(request: ModifyRequest | RemoveRequest, request_id: str) -> ResultData:
        proxy.cut()  # as if this request crashed the worker process every time
        await asyncio.sleep(0.1)
        return ResultData(requestId=request_id, command=request.command, outcome=Outcome.succeeded)

    handler = StubHandler(behaviour=poison)
    await publish_raw(amqp, settings, MODIFY, message_id="poison-1")
    async with running_worker(amqp, settings, handler):
        dead = await get_one(amqp, settings.dead_letter_queue, within=30)
        await asyncio.sleep(0.5)

    assert len(handler.calls) == limit + 1
    assert dead.message_id == "poison-1"
    assert [d["reason"] for d in x_death(dead)] == ["delivery_limit"]
    await assert_depth(amqp, settings.request_queue, 0)


async def test_the_worker_reconnects_after_the_connection_drops_and_keeps_consuming(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    handler: StubHandler,
    proxy: TcpProxy,
) -> None:
    async with running_worker(amqp, through(proxy, broker_settings), handler):
        proxy.cut()
        for _ in range(200):
            if proxy.accepted >= 2 and await consumer_count(amqp, broker_settings.request_queue):
                break
            await asyncio.sleep(0.05)
        await publish_raw(amqp, broker_settings, MODIFY)
        checked = await tap.next_checked(within=20)

    assert proxy.accepted >= 2
    assert checked.event.id == f"{MODIFY_ID}/succeeded"
    await assert_depth(amqp, broker_settings.request_queue, 0)


async def test_settling_on_a_channel_that_died_is_reported_not_raised(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    await publish_raw(amqp, broker_settings, MODIFY)
    channel = await amqp.channel()
    message = await take_unacked(channel, broker_settings.request_queue)
    await channel.close()

    for settlement in Settlement:
        assert await settle(message, settlement) is False
    # The broker took the unacked message back when the channel closed.
    await assert_depth(amqp, broker_settings.request_queue, 1)
    assert isinstance(message, aio_pika.IncomingMessage)


@pytest.mark.parametrize(
    ("settlement", "request_depth", "dead_depth"),
    [
        (Settlement.ack, 0, 0),
        (Settlement.dead_letter, 0, 1),
        (Settlement.requeue, 1, 0),
        (Settlement.release, 1, 0),
    ],
)
async def test_settling_on_a_live_channel_does_what_the_settlement_says(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    settlement: Settlement,
    request_depth: int,
    dead_depth: int,
) -> None:
    await publish_raw(amqp, broker_settings, MODIFY)
    channel = await amqp.channel()
    message = await take_unacked(channel, broker_settings.request_queue)

    assert await settle(message, settlement) is True

    await channel.close()
    await assert_depth(amqp, broker_settings.request_queue, request_depth)
    await assert_depth(amqp, broker_settings.dead_letter_queue, dead_depth)
    if request_depth:
        again = await get_one(amqp, broker_settings.request_queue)
        assert again.redelivered
        count = again.headers.get("x-delivery-count")
        if settlement is Settlement.requeue:
            assert count == 1  # a failed attempt: counts toward the delivery limit
        else:
            assert count in (None, 0, 1)  # "not now": counts only before RabbitMQ 4.3
