"""Settling a delivery: the one place that decides ack / dead-letter / requeue / hand back
(:func:`decide`) and the one place that tells the broker (:func:`settle`)."""

from __future__ import annotations

from enum import StrEnum

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from worker.logging import get_logger
from worker.metrics import DEAD_LETTERED

log = get_logger(__name__)


class Settlement(StrEnum):
    """What happens to a delivery once processing is over, and the AMQP method that says it.

    ``requeue`` and ``release`` both put the request back, but mean different things to a
    quorum queue from RabbitMQ 4.3 on: ``basic.reject(requeue)`` is a failed attempt and
    counts toward ``x-delivery-limit``; ``basic.nack(requeue)`` is "not now" and does not
    (before 4.3 both count). So a request whose event never got out can only loop up to the
    delivery limit, and one merely handed back at shutdown loses no attempt.
    """

    ack = "ack"  # outcome published and confirmed: basic.ack
    dead_letter = "dead_letter"  # unreadable bytes, answered: basic.reject, broker dead-letters
    requeue = "requeue"  # attempt failed, no confirmed outcome: basic.reject(requeue)
    release = "release"  # not attempted (shutting down, cancelled): basic.nack(requeue)


def decide(*, published: bool | None, poison: bool) -> Settlement:
    """The one mapping from what happened to what the broker is told.

    ``published`` is None when no outcome was reached (shutdown before the handler started, or
    the handler was cancelled), False when the event was not confirmed. Every terminal outcome
    (``succeeded``, ``rejected``, ``failed``, ``rolled_back``, ``rollback_failed``) is acked:
    retrying a ``failed`` change is the publisher's decision, made on the event it received.
    """
    if published is None:
        return Settlement.release
    if not published:
        return Settlement.requeue
    if poison:
        return Settlement.dead_letter
    return Settlement.ack


async def settle(message: AbstractIncomingMessage, settlement: Settlement) -> bool:
    """Tell the broker; the only place a request is acked, rejected or requeued.

    A channel that died meanwhile is not an error: the broker has already returned the message
    to the queue and redelivers it. Returns whether the broker was told.
    """
    try:
        if settlement is Settlement.ack:
            await message.ack()
        elif settlement is Settlement.dead_letter:
            await message.reject(requeue=False)
        elif settlement is Settlement.requeue:
            await message.reject(requeue=True)
        elif settlement is Settlement.release:
            await message.nack(requeue=True)
    except (AMQPError, ChannelInvalidStateError, OSError) as exc:
        log.warning(
            "request not settled: the channel is gone and the broker will redeliver it",
            settlement=settlement.value,
            error=f"{type(exc).__name__}: {exc}",
        )
        return False
    if settlement is Settlement.dead_letter:
        DEAD_LETTERED.inc()
    log.debug("request settled", settlement=settlement.value)
    return True
