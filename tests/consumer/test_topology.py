"""The RabbitMQ objects of docs/contract.md §1 on the real broker: kinds, arguments, bindings."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed, PublishError

from tests.consumer.proxy import TcpProxy
from tests.consumer.support import StubHandler, consumer_count, get_one, running_worker
from worker.consumer.topology import declare_topology, request_queue_arguments
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


async def test_declaring_the_topology_twice_is_idempotent(
    amqp: AbstractConnection, broker_settings: Settings
) -> None:
    for _ in range(2):
        channel = await amqp.channel()
        topology = await declare_topology(channel, broker_settings)
        assert topology.request_queue.name == broker_settings.request_queue
        await channel.close()

    channel = await amqp.channel()
    for name in (broker_settings.request_queue, broker_settings.dead_letter_queue):
        await channel.declare_queue(name, passive=True)
    for name in (
        broker_settings.request_exchange,
        broker_settings.dead_letter_exchange,
        broker_settings.event_exchange,
    ):
        await channel.get_exchange(name, ensure=True)
    await channel.close()


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-queue-type": "classic"},
        {"x-delivery-limit": 99},
        {"x-dead-letter-exchange": "somewhere.else"},
    ],
    ids=["not quorum", "another delivery limit", "another dead-letter exchange"],
)
async def test_the_request_queue_is_quorum_with_the_configured_limit_and_dead_lettering(
    amqp: AbstractConnection, broker_settings: Settings, arguments: dict[str, Any]
) -> None:
    channel = await amqp.channel()
    await declare_topology(channel, broker_settings)
    # The broker refuses a declaration whose arguments differ from the existing queue's,
    # which proves what the existing queue's arguments are.
    other = await amqp.channel()
    with pytest.raises(ChannelPreconditionFailed):
        await other.declare_queue(
            broker_settings.request_queue,
            durable=True,
            arguments={**request_queue_arguments(broker_settings), **arguments},
        )
    await channel.close()


async def test_the_dead_queue_is_quorum_and_gets_whatever_reaches_the_fanout_dlx(
    amqp: AbstractConnection, broker_settings: Settings
) -> None:
    channel = await amqp.channel()
    topology = await declare_topology(channel, broker_settings)
    await topology.dead_letter_exchange.publish(aio_pika.Message(b"x"), "any.key.at.all")
    assert (await get_one(amqp, broker_settings.dead_letter_queue)).body == b"x"
    other = await amqp.channel()
    with pytest.raises(ChannelPreconditionFailed):
        await other.declare_queue(
            broker_settings.dead_letter_queue,
            durable=True,
            arguments={"x-queue-type": "classic"},
        )
    await channel.close()


@pytest.mark.parametrize(
    ("key", "routed"),
    [("request.modify", True), ("request.remove", True), ("event.modify.succeeded", False)],
)
async def test_the_request_queue_is_bound_with_the_request_binding_key(
    amqp: AbstractConnection, broker_settings: Settings, key: str, routed: bool
) -> None:
    channel = await amqp.channel(on_return_raises=True)
    topology = await declare_topology(channel, broker_settings)
    if routed:
        await topology.request_exchange.publish(aio_pika.Message(b"{}"), key)
        assert (await get_one(amqp, broker_settings.request_queue)).routing_key == key
    else:
        with pytest.raises(PublishError):
            await topology.request_exchange.publish(aio_pika.Message(b"{}"), key)
    await channel.close()


async def test_the_worker_declares_the_topology_again_after_a_reconnect(
    amqp: AbstractConnection, broker_settings: Settings, proxy: TcpProxy
) -> None:
    url = proxy.url(broker_settings.amqp_url, reconnect_interval="0.2")
    settings = broker_settings.model_copy(update={"amqp_url": url})
    async with running_worker(amqp, settings, StubHandler()):
        channel = await amqp.channel()
        await channel.exchange_delete(settings.event_exchange)
        await channel.close()
        proxy.cut()
        for _ in range(200):
            try:
                probe = await amqp.channel()
                await probe.get_exchange(settings.event_exchange, ensure=True)
                await probe.close()
            except ChannelNotFoundEntity:
                await asyncio.sleep(0.05)
                continue
            if await consumer_count(amqp, settings.request_queue):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the event exchange was not declared again")
    assert proxy.accepted >= 2
