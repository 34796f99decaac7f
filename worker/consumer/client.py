"""Publishing a request (the CLI's ``publish``), optionally waiting for its result event.

The reply comes back the RabbitMQ RPC way: the request carries ``reply_to`` (an exclusive,
auto-deleted, server-named queue of this connection) and ``correlation_id``; the worker sends
the same event it publishes to the event exchange there (the broker names that queue
``amq.gen-...``, the worker's default ``reply_to_prefixes``: a worker configured without
that prefix sends no reply, and ``--wait`` times out). The topology is declared first
(idempotently), so a request published before any worker ever ran waits in its queue instead
of being dropped by an exchange with no binding. With a list of broker URLs (a cluster) the
request goes to the first node that answers (:func:`~worker.consumer.connect.connect_first`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import PublishError

from worker.consumer.connect import connect_first
from worker.consumer.events import decode_event
from worker.consumer.topology import declare_topology
from worker.messages import ResultEvent
from worker.settings import Settings

REQUEST_CONTENT_TYPE = "application/json"


class RequestNotRouted(Exception):
    """The broker found no queue for the routing key (it does not match the binding)."""


def request_message(
    body: Mapping[str, Any], message_id: str, reply_to: str | None
) -> aio_pika.Message:
    """A request as the worker expects it: persistent JSON, ``message_id`` and
    ``correlation_id`` the id its reply is matched on, ``reply_to`` the reply queue if any."""
    return aio_pika.Message(
        body=json.dumps(dict(body), ensure_ascii=False).encode(),
        content_type=REQUEST_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        correlation_id=message_id,
        reply_to=reply_to,
    )


async def publish_request(
    settings: Settings,
    body: Mapping[str, Any],
    routing_key: str,
    *,
    message_id: str | None = None,
    wait: float | None = None,
) -> ResultEvent | None:
    """Publish ``body`` persistently and, with ``wait`` seconds, return its result event.

    ``message_id`` defaults to the body's ``requestId`` (else a random UUID) and is also the
    ``correlation_id`` the reply is matched on. Returns None without ``wait``, and None when no
    event arrives within ``wait`` seconds (the request stays queued; a worker still answers
    it, on the event exchange). Raises :class:`RequestNotRouted` when nothing is bound to
    ``routing_key`` and ``pydantic.ValidationError`` for a reply that is not a result event.
    """
    body_id = body.get("requestId")
    mid = message_id or (body_id if isinstance(body_id, str) and body_id else str(uuid.uuid4()))
    connection = await connect_first(settings.amqp_urls)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = await declare_topology(channel, settings)

        reply: asyncio.Future[bytes] | None = None
        reply_to: str | None = None
        if wait is not None:
            reply = asyncio.get_running_loop().create_future()
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.consume(_reply_matcher(mid, reply), no_ack=True)
            reply_to = queue.name

        message = request_message(body, mid, reply_to)
        try:
            await topology.request_exchange.publish(message, routing_key, mandatory=True)
        except PublishError as exc:
            raise RequestNotRouted(
                f"no queue is bound to {settings.request_exchange!r} for {routing_key!r}"
            ) from exc
        if reply is None:
            return None
        try:
            data = await asyncio.wait_for(reply, timeout=wait)
        except TimeoutError:
            return None
        return decode_event(data)


def _reply_matcher(
    correlation_id: str, reply: asyncio.Future[bytes]
) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    """A consumer callback that resolves ``reply`` with the first matching message body."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        if message.correlation_id == correlation_id and not reply.done():
            reply.set_result(message.body)

    return on_message
