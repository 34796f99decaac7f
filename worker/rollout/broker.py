"""One AMQP connection for a whole rollout: requests out, each result event back to its pair.

``publish --wait`` (:func:`worker.consumer.client.publish_request`) opens a connection per
request; a rollout of hundreds of pairs keeps one, with one server-named exclusive reply
queue (``amq.gen-...``, which workers answer by default, docs/contract.md §8), and hands each
reply to the pair waiting on its ``correlation_id`` (the request id). Requests are published
as ``publish`` publishes them: to the first broker node that answers, persistent, with
confirms and ``mandatory``, after declaring the topology.

If the connection is lost, every pair still waiting fails with :class:`BrokerUnavailable`:
the requests already published stay queued and are still done by the workers; a rerun of the
rollout finds their outcomes in the servers' journals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import PublishError

from worker.consumer.client import RequestNotRouted, request_message
from worker.consumer.connect import BrokerUnavailable, connect_first, describe_urls
from worker.consumer.events import decode_event
from worker.consumer.topology import declare_topology
from worker.messages import ResultEvent
from worker.settings import Settings


class RequestChannel:
    """``async with RequestChannel(settings) as channel: await channel.request(...)``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._reply_to = ""
        #: Consumers of the request queue when the channel opened (0: no worker is running).
        self.consumers = 0
        self._waiting: dict[str, asyncio.Future[bytes]] = {}

    async def __aenter__(self) -> RequestChannel:
        self._connection = await connect_first(self._settings.amqp_url)
        try:
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            topology = await declare_topology(channel, self._settings)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            await self._connection.close()
            raise
        self._exchange = topology.request_exchange
        self._reply_to = queue.name
        self.consumers = topology.request_queue.declaration_result.consumer_count or 0
        self._connection.close_callbacks.add(self._on_close)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close_callbacks.discard(self._on_close)
            await connection.close()

    async def request(
        self, body: Mapping[str, Any], routing_key: str, wait: float
    ) -> ResultEvent | None:
        """Publish ``body`` and return its result event, or None after ``wait`` seconds
        without one (the request stays queued and is still answered on the event exchange).
        Raises :class:`RequestNotRouted`, :class:`BrokerUnavailable`."""
        assert self._exchange is not None, "use the channel inside 'async with'"
        request_id = str(body["requestId"])
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = reply
        try:
            message = request_message(body, request_id, self._reply_to)
            try:
                await self._exchange.publish(message, routing_key, mandatory=True)
            except PublishError as exc:
                raise RequestNotRouted(
                    f"no queue is bound to {self._settings.request_exchange!r} for {routing_key!r}"
                ) from exc
            try:
                data = await asyncio.wait_for(reply, timeout=wait)
            except TimeoutError:
                return None
        finally:
            if self._waiting.get(request_id) is reply:
                del self._waiting[request_id]
        return decode_event(data)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        waiting = self._waiting.get(message.correlation_id or "")
        if waiting is not None and not waiting.done():
            waiting.set_result(message.body)

    def _on_close(self, _: object, exc: BaseException | None = None) -> None:
        """The connection went: nobody waiting will get a reply on it."""
        lost = BrokerUnavailable(
            f"lost the connection to RabbitMQ at {describe_urls(self._settings.amqp_url)} "
            f"mid-rollout ({exc or 'closed'}); the requests already published are still done "
            "by the workers: rerun the same rollout (same --rollout-id) to collect them"
        )
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(lost)
