"""Publishing result events (docs/contract.md §1, §3): CloudEvents structured JSON, confirmed.

The request is acked only after :meth:`EventPublisher.publish` returns, so "returned" must mean
"the broker has the event": the channel runs in publisher-confirm mode and we wait for the
confirm of the publication to the event exchange. Anything else (a broker nack, a timeout, the
connection dropping with the confirm pending) raises :class:`PublishFailed`, and the caller
leaves the request unacked so it is redelivered.

The answer to the caller's ``reply_to`` is sent at the same moment, on a channel of its own
connection, and is a courtesy: a caller that went away, or a ``reply_to`` the broker refuses,
is logged and never makes the request run again. Its own connection, because RabbitMQ (3.10
at least) closes the whole *connection* with ``INTERNAL_ERROR`` when a publisher names a
forged direct reply-to (``amq.rabbitmq.reply-to.<anything of the right shape>``): on the
consumer's connection that would cut every change in flight off from its channel.

An event is encoded before anything is sent (:class:`Outgoing`). One that cannot be built or
encoded is a bug; the consumer then sends :func:`failsafe_outgoing` instead, a minimal
``failed`` / ``internal_error`` event made of values that always encode, so a result never
hangs on its own content.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange

from worker.messages import (
    ErrorInfo,
    Outcome,
    Phase,
    ResultData,
    ResultEvent,
    make_event,
    routing_key,
    safe_text,
)

log = structlog.stdlib.get_logger(__name__)

#: Structured content mode of the CloudEvents AMQP/RabbitMQ bindings.
EVENT_CONTENT_TYPE = "application/cloudevents+json"
#: How long to wait for a publisher confirm before treating the publication as failed.
PUBLISH_TIMEOUT = 30.0
#: How long a reply may delay the ack of its request (it is a courtesy; see the docstring).
REPLY_TIMEOUT = 5.0
APP_ID = "dhcp-failover-worker"
#: RabbitMQ's direct reply-to pseudo-queue; the consumer of a request sees the name the
#: broker made of it, ``amq.rabbitmq.reply-to.<suffix>``.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: The longest text of an exception a failsafe event carries.
MAX_FAILSAFE_MESSAGE = 500


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


def reply_allowed(reply_to: object, prefixes: Sequence[str]) -> bool:
    """Whether the worker answers on a request's ``reply_to`` (setting ``reply_to_prefixes``).

    Replies go to the default exchange, which reaches every queue of the vhost by name: a
    ``reply_to`` taken as given would let a request drop events into any application's queue,
    the request queue included. Only direct reply-to and names with a configured prefix
    (``amq.gen-``: server-named queues, which ``publish --wait`` uses) are answered.
    """
    if not isinstance(reply_to, str) or not reply_to:
        return False
    if reply_to == DIRECT_REPLY_TO:
        return True
    if reply_to.startswith(DIRECT_REPLY_TO + ".") and len(reply_to) > len(DIRECT_REPLY_TO) + 1:
        return True
    return any(prefix and reply_to.startswith(prefix) for prefix in prefixes)


@dataclass(frozen=True)
class Outgoing:
    """An event encoded and ready to send: nothing left can fail on its content."""

    message: aio_pika.Message
    routing_key: str
    event_id: str
    outcome: Outcome
    code: str | None
    #: The :func:`failsafe_outgoing` stand-in: the request is dead-lettered after it.
    failsafe: bool = False


def outgoing(event: ResultEvent, *, correlation_id: str | None) -> Outgoing:
    """Encode ``event``; raises whatever encoding raises (the caller falls back)."""
    return Outgoing(
        message=event_message(event, correlation_id=correlation_id),
        routing_key=event_routing_key(event),
        event_id=event.id,
        outcome=event.data.outcome,
        code=event.data.error.code if event.data.error else None,
    )


def failsafe_outgoing(
    *,
    event_key: str,
    operation: str,
    request_id: str | None,
    command: str | None,
    dry_run: bool,
    phase: Phase,
    reason: str,
    lost_outcome: Outcome,
    source: str,
    correlationid: str | None,
    correlation_id: str | None,
) -> Outgoing:
    """The ``<event_key>/failed`` event with ``internal_error``, for a result whose event could
    not be built or encoded. Only the request's checked identity goes in (id, command,
    operation: safe by construction) plus the exception's text made UTF-8-safe, and it is
    serialised with the standard library's ASCII JSON rather than :meth:`ResultEvent.to_json`,
    so a bug there cannot take this event down with the first. ``error.detail.outcome`` is
    the outcome the lost event would have announced; ``correlationid`` is the CloudEvents
    attribute, ``correlation_id`` the AMQP property."""
    data = ResultData(
        requestId=request_id,
        command=command,
        outcome=Outcome.failed,
        dryRun=dry_run,
        error=ErrorInfo(
            code="internal_error",
            message="the result event could not be encoded: "
            + safe_text(reason)[:MAX_FAILSAFE_MESSAGE],
            phase=phase,
            detail={"outcome": lost_outcome.value},
        ),
    )
    event = make_event(
        data,
        operation=operation,
        subject=None,
        event_key=event_key,
        correlation_id=_safe_or_none(correlationid),
    )
    event = event.model_copy(update={"source": safe_text(source)})
    doc = {k: v for k, v in event.model_dump(mode="json").items() if v is not None}
    body = json.dumps(doc, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()
    message = aio_pika.Message(
        body=body,
        content_type=EVENT_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.id,
        correlation_id=_safe_or_none(correlation_id),
        timestamp=event.time,
        type=event.type,
        app_id=APP_ID,
    )
    return Outgoing(
        message=message,
        routing_key=event_routing_key(event),
        event_id=event.id,
        outcome=Outcome.failed,
        code="internal_error",
        failsafe=True,
    )


def _safe_or_none(value: str | None) -> str | None:
    """``value`` if it is an AMQP short string (at most 255 bytes of UTF-8), else None."""
    if value is None or safe_text(value) != value or len(value.encode()) > 255:
        return None
    return value


class EventPublisher:
    """Publishes events with confirms on a channel opened with ``publisher_confirms=True``."""

    def __init__(
        self,
        event_exchange: AbstractExchange,
        default_exchange: AbstractExchange,
        *,
        timeout: float = PUBLISH_TIMEOUT,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self._events = event_exchange
        self._default = default_exchange  # for replies: best on a connection of its own
        self._timeout = timeout
        self._reply_timeout = reply_timeout

    async def publish(
        self,
        event: ResultEvent,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Publish to the event exchange and to ``reply_to`` at once; return once the event is
        confirmed and the reply confirmed or given up on (:data:`REPLY_TIMEOUT`). Only the
        event's fate raises :class:`PublishFailed`; both have finished when it does.

        ``correlation_id`` is the AMQP property on both messages (the caller's own id for an
        RPC reply). Publications are not ``mandatory``: an event nobody has subscribed to yet,
        or a reply whose caller has gone away, is not a reason to process the request again.
        """
        await self.send(outgoing(event, correlation_id=correlation_id), reply_to=reply_to)

    async def send(self, out: Outgoing, *, reply_to: str | None = None) -> None:
        """:meth:`publish` for an event already encoded (the consumer's way)."""
        publications = [self._confirmed(self._events, out.message, out.routing_key)]
        if reply_to:
            publications.append(
                self._confirmed(self._default, out.message, reply_to, self._reply_timeout)
            )
        results = await asyncio.gather(*publications, return_exceptions=True)
        for result in results:  # a cancellation of this task first, then the event's failure
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        if isinstance(results[0], BaseException):
            raise results[0]
        if len(results) > 1 and isinstance(results[1], BaseException):
            log.warning(
                "reply not sent; the event is on the event exchange",
                reply_to=reply_to,
                event_id=out.event_id,
                error=str(results[1]),
            )

    async def _confirmed(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message,
        key: str,
        patience: float | None = None,
    ) -> None:
        task = asyncio.current_task()
        baseline = task.cancelling() if task is not None else 0
        where = exchange.name or "(default exchange)"
        try:
            # The timeout covers waiting for a reconnecting robust channel as well as the
            # confirm itself.
            async with asyncio.timeout(patience if patience is not None else self._timeout):
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
