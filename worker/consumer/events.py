"""Publishing result events (CONTRACT.md §1, §3): CloudEvents structured JSON, confirmed.

The request is acked only after :meth:`EventPublisher.publish` returns, so "returned" must mean
"the broker has the event": the channel runs in publisher-confirm mode and we wait for the
confirm of every publication, to the event exchange and to the caller's ``reply_to``.
Anything else (a broker nack, a timeout, the connection dropping with the confirm pending)
raises :class:`PublishFailed`, and the caller leaves the request unacked so it is redelivered.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractExchange

from worker.messages import ResultEvent, routing_key

#: Structured content mode of the CloudEvents AMQP/RabbitMQ bindings.
EVENT_CONTENT_TYPE = "application/cloudevents+json"
#: How long to wait for a publisher confirm before treating the publication as failed.
PUBLISH_TIMEOUT = 30.0
APP_ID = "dhcp-failover-worker"


class PublishFailed(Exception):
    """The broker did not confirm an event; the request must not be acked."""


def encode_event(event: ResultEvent) -> bytes:
    """The event as structured-mode JSON (see :meth:`ResultEvent.to_json` for the nulls)."""
    return event.to_json()


def decode_event(body: bytes | str) -> ResultEvent:
    """Parse a structured-mode event; raises ``pydantic.ValidationError`` when malformed."""
    return ResultEvent.model_validate_json(body)


def event_routing_key(event: ResultEvent) -> str:
    """``event.<operation>.<outcome>``; the operation is the second-to-last part of the type."""
    operation = event.type.rsplit(".", 2)[-2]
    return routing_key(operation, event.data.outcome)


def event_message(event: ResultEvent, *, correlation_id: str | None) -> aio_pika.Message:
    """The AMQP message: persistent, ``message_id`` = event id so consumers can dedupe."""
    return aio_pika.Message(
        body=encode_event(event),
        content_type=EVENT_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.id,
        correlation_id=correlation_id,
        timestamp=event.time,
        type=event.type,
        app_id=APP_ID,
    )


class EventPublisher:
    """Publishes events with confirms on a channel opened with ``publisher_confirms=True``."""

    def __init__(
        self,
        event_exchange: AbstractExchange,
        default_exchange: AbstractExchange,
        *,
        timeout: float = PUBLISH_TIMEOUT,
    ) -> None:
        self._events = event_exchange
        self._default = default_exchange
        self._timeout = timeout

    async def publish(
        self,
        event: ResultEvent,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Publish to the event exchange and to ``reply_to`` at once; return once both are
        confirmed (their confirms are independent, so waiting for one before sending the other
        would only add a broker round trip). If either is not confirmed, both have finished
        when :class:`PublishFailed` is raised.

        ``correlation_id`` is the AMQP property on both messages (the caller's own id for an
        RPC reply). Publications are not ``mandatory``: an event nobody has subscribed to yet,
        or a reply whose caller has gone away, is not a reason to process the request again.
        """
        message = event_message(event, correlation_id=correlation_id)
        publications = [self._confirmed(self._events, message, event_routing_key(event))]
        if reply_to:
            publications.append(self._confirmed(self._default, message, reply_to))
        results = await asyncio.gather(*publications, return_exceptions=True)
        for result in results:  # a cancellation of this task first, then the first failure
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _confirmed(
        self, exchange: AbstractExchange, message: aio_pika.Message, key: str
    ) -> None:
        task = asyncio.current_task()
        baseline = task.cancelling() if task is not None else 0
        where = exchange.name or "(default exchange)"
        try:
            # The timeout covers waiting for a reconnecting robust channel as well as the
            # confirm itself.
            async with asyncio.timeout(self._timeout):
                await exchange.publish(message, key, mandatory=False)
        except asyncio.CancelledError as exc:
            # aiormq may fail a pending confirm by cancelling it when the channel closes; only a
            # cancellation of *this* task is a real cancellation and must propagate.
            if task is not None and task.cancelling() > baseline:
                raise
            raise PublishFailed(f"publish to {where} cancelled by the channel") from exc
        except Exception as exc:
            # Pending confirms are failed with whatever closed the connection (AMQP errors,
            # OSError, ChannelInvalidStateError, TimeoutError, even a bare Exception), so the
            # only safe reading of any exception here is "not confirmed".
            raise PublishFailed(
                f"publish to {where} not confirmed: {type(exc).__name__}: {exc}"
            ) from exc
