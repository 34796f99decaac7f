"""The RabbitMQ objects of docs/contract.md §1, declared idempotently from :class:`Settings`.

Declaring is idempotent as long as the arguments match what already exists; a queue declared
earlier with other arguments (say another ``x-delivery-limit``) makes the broker close the
channel with ``PRECONDITION_FAILED`` rather than silently keeping the old behaviour, which is
what an operator wants to see at start.

On a robust channel (``connect_robust``) every object declared here, and the binding, is
re-declared by aio-pika after a reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from worker.settings import Settings


@dataclass(frozen=True)
class Topology:
    """Handles on the declared objects (the names are in the settings)."""

    request_exchange: AbstractExchange
    request_queue: AbstractQueue
    dead_letter_exchange: AbstractExchange
    dead_letter_queue: AbstractQueue
    event_exchange: AbstractExchange


def request_queue_arguments(settings: Settings) -> dict[str, Any]:
    """Arguments of the request queue; any declarer must pass exactly these."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.dead_letter_exchange,
    }


DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


async def declare_topology(channel: AbstractChannel, settings: Settings) -> Topology:
    """Declare every exchange, queue and binding of the contract; safe to call repeatedly.

    The dead-letter exchange is declared before the request queue that names it, so a message
    dead-lettered in the first moments has somewhere to go.
    """
    dlx = await channel.declare_exchange(
        settings.dead_letter_exchange, ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        settings.dead_letter_queue, durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS
    )
    await dead.bind(dlx, routing_key="")

    requests = await channel.declare_exchange(
        settings.request_exchange, ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(
        settings.request_queue, durable=True, arguments=request_queue_arguments(settings)
    )
    await queue.bind(requests, routing_key=settings.request_binding_key)

    events = await channel.declare_exchange(
        settings.event_exchange, ExchangeType.TOPIC, durable=True
    )
    return Topology(
        request_exchange=requests,
        request_queue=queue,
        dead_letter_exchange=dlx,
        dead_letter_queue=dead,
        event_exchange=events,
    )
