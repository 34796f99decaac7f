"""What the request queue's ``x-delivery-limit`` does on the broker the tests run against.

The worker's settlement (worker/consumer/app.py ``Settlement``) puts a request back in two
ways: ``basic.reject(requeue)`` when an attempt produced no confirmed outcome, and
``basic.nack(requeue)`` when it was never attempted (shutdown). Which of them counts toward
the limit depends on the RabbitMQ version (docs/design.md, "RabbitMQ versions"): every return
counts before 4.3; from 4.3 a nack does not. The worker relies only on what holds on all of
them: a request returned ``delivery_limit`` times more is dead-lettered, not looped for ever.
These tests pin the behaviour of the version actually running, so a broker upgrade that
changes it shows up here first.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from worker.consumer.topology import declare_topology
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


def broker_version(connection: AbstractConnection) -> tuple[int, ...]:
    properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
    raw = properties["version"]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


async def deliveries_until_dead_lettered(
    amqp: AbstractConnection, settings: Settings, *, nack: bool
) -> tuple[int, bool]:
    """Return one request to the queue over and over; how many deliveries it got, and
    whether it ended in the dead-letter queue (else it was still being redelivered)."""
    channel = await amqp.channel()
    topology = await declare_topology(channel, settings)
    await topology.request_exchange.publish(
        aio_pika.Message(b"{}", message_id="limit-probe"), "request.modify"
    )
    deliveries = 0
    for _ in range(settings.delivery_limit + 4):
        message = await _get(topology.request_queue)
        if message is None:
            break
        deliveries += 1
        if nack:
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=True)
    dead = await _get(topology.dead_letter_queue)
    if dead is not None:
        await dead.ack()
    await channel.close()
    return deliveries, dead is not None


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage | None:
    for _ in range(50):  # a requeued message is back within a few ms
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    return None


async def test_a_request_rejected_with_requeue_is_dead_lettered_after_the_delivery_limit(
    amqp: AbstractConnection, broker_settings: Settings
) -> None:
    deliveries, dead = await deliveries_until_dead_lettered(amqp, broker_settings, nack=False)

    assert dead, "a request that keeps failing must end in the dead-letter queue"
    assert deliveries == broker_settings.delivery_limit + 1


async def test_whether_a_nack_with_requeue_counts_is_what_this_broker_version_does(
    amqp: AbstractConnection, broker_settings: Settings
) -> None:
    version = broker_version(amqp)
    deliveries, dead = await deliveries_until_dead_lettered(amqp, broker_settings, nack=True)

    if version < (4, 3):  # every return counts: a hand-back at shutdown spends an attempt
        assert dead and deliveries == broker_settings.delivery_limit + 1, version
    else:  # a nack is "not now": it does not count
        assert not dead and deliveries == broker_settings.delivery_limit + 4, version
