"""The worker loop: consume requests, run the handler, publish the result, then settle.

Per delivery (each in its own task, at most ``settings.concurrency`` handlers at once):

    read_delivery (size, UTF-8, JSON, schema, request id)  -> Delivery (never raises)
    handler(request, request_id, announce) or the rejection -> ResultData
    make_event, encode (or the failsafe internal_error)    -> Outgoing
    publish with confirms, then settle (shielded tail)     -> ack / dead-letter / requeue

Every delivery ends with exactly one terminal event, whatever its bytes and properties: a bug
reading it, or building or encoding its event, is answered ``failed`` / ``internal_error``
and the delivery dead-lettered, never left unacked holding a prefetch slot.

The handler may ``announce`` its outcome before it returns (the coordinator does, as soon as
the servers are in their final state, and then cleans up and records the outcome): the event
is published at once, while the handler finishes, and the request is settled only when both
are over. The publish and the settle are tasks we track, so a cancel or a shutdown waits
for them.

:func:`~worker.consumer.settlement.decide` is the one place that maps what happened to ack /
dead-letter / requeue, and :func:`~worker.consumer.settlement.settle` the one place that talks
to the broker about it. A request is acked only
after its event is confirmed; if the event cannot be published the request is not acked
(rejected with requeue, or simply returned when the channel dies) and is redelivered, where
the idempotent handler converges and the deterministic event id lets consumers drop the
repeat. The quorum queue's delivery limit ends a loop of failed attempts in the dead queue.

Processing runs in tasks we own, not in aio-pika's consumer callback: aiormq cancels its
callback tasks when a channel closes, and a change in flight must never be cancelled by a
network blip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import (
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from worker.change.faults import step
from worker.consumer.amqp_text import amqp_text, tolerate_non_utf8
from worker.consumer.connect import connect_with_retry, describe_urls
from worker.consumer.events import EventPublisher, Outgoing, PublishFailed, reply_allowed
from worker.consumer.intake import Delivery, read_delivery
from worker.consumer.results import Handler, encode_result, run_handler
from worker.consumer.settlement import decide, settle
from worker.consumer.topology import declare_topology
from worker.health import Readiness
from worker.logging import bind_request, get_logger
from worker.messages import ResultData
from worker.metrics import (
    BROKER_CONNECTED,
    BROKER_RECONNECTS,
    REDELIVERIES,
    REQUESTS,
)
from worker.settings import Settings

tolerate_non_utf8()  # before any connection (worker/consumer/amqp_text.py says why)

log = get_logger(__name__)


#: ``/readyz`` while aio-pika re-establishes the consuming connection.
LOST = "broker connection lost; reconnecting"


@dataclass(frozen=True)
class _Publication:
    """A result on its way: the publishing task (whether the broker confirmed it) and whether
    the request is dead-lettered after it."""

    task: asyncio.Task[bool]
    poison: bool


class _Consumer:
    """Owns the processing tasks of one worker connection."""

    def __init__(self, settings: Settings, handler: Handler, publisher: EventPublisher) -> None:
        self._settings = settings
        self._handler = handler
        self._publisher = publisher
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tails: set[asyncio.Task[Any]] = set()
        self.stopping = False

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """aio-pika's callback: hand the message to a task we own and return at once."""
        self._track(asyncio.create_task(self._process(message)))

    def _track(self, task: asyncio.Task[Any], *, tail: bool = False) -> None:
        self._tasks.add(task)
        if tail:
            self._tails.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._tails.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("request task failed", exc_info=exc)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        started = time.monotonic()
        delivery = read_delivery(
            message.body,
            message_id=message.message_id,
            routing_key=message.routing_key,
            correlation_id=message.correlation_id,
        )
        if message.redelivered:
            REDELIVERIES.inc()
        with bind_request(delivery.request_id, delivery.subject, delivery.servers):
            log.info(
                "request received",
                operation=delivery.operation,
                redelivered=message.redelivered,
                delivery_count=(message.headers or {}).get("x-delivery-count"),
                rejected=delivery.rejection.code if delivery.rejection else None,
            )
            publication: _Publication | None = None

            def announce(data: ResultData) -> None:
                nonlocal publication
                if publication is None:
                    publication = self._publish(message, delivery, data, started)

            data: ResultData | None = None  # never handled: the delivery's own answer
            if delivery.request is not None:
                async with self._slots:
                    if self.stopping:
                        log.info("shutting down: request handed back unstarted")
                        await settle(message, decide(published=None, poison=False))
                        return
                    try:
                        data = await run_handler(self._handler, delivery, announce)
                    except asyncio.CancelledError:
                        if publication is not None:  # an outcome is out: ack it when confirmed
                            await asyncio.shield(self._settle_after(message, publication))
                            raise
                        log.warning("cancelled before an outcome: request handed back")
                        release = settle(message, decide(published=None, poison=False))
                        await asyncio.shield(release)
                        raise
            if publication is None:
                publication = self._publish(message, delivery, data, started)
            # Once the outcome exists, publishing it and acking must happen even if we are
            # cancelled: the change is done and must not be repeated for nothing.
            await asyncio.shield(self._settle_after(message, publication))

    def _publish(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        data: ResultData | None,
        started: float,
    ) -> _Publication:
        """Start publishing the result event (a task we track: it outlives a cancel)."""
        out = encode_result(
            delivery,
            data,
            self._settings,
            correlation_id=amqp_text(message.correlation_id) or delivery.request_id,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        task = asyncio.create_task(
            self._confirmed(out, self._reply_to(message, out), delivery.operation)
        )
        self._track(task, tail=True)
        return _Publication(task, poison=delivery.poison or out.failsafe)

    def _reply_to(self, message: AbstractIncomingMessage, out: Outgoing) -> str | None:
        """The request's ``reply_to`` if the worker may answer there (:func:`reply_allowed`)."""
        reply_to = amqp_text(message.reply_to)  # one that is not UTF-8: no reply
        if not reply_to or reply_allowed(reply_to, self._settings.reply_prefixes):
            return reply_to or None
        log.warning(
            "reply_to refused, no reply sent (the event still goes to the event exchange): "
            "add its prefix to DHCP_FAILOVER_REPLY_TO_PREFIXES to answer there",
            reply_to=reply_to,
            event_id=out.event_id,
            reply_to_prefixes=self._settings.reply_to_prefixes,
        )
        return None

    def _settle_after(
        self, message: AbstractIncomingMessage, publication: _Publication
    ) -> asyncio.Task[None]:
        """Settle once the event's fate is known; tracked too, so shutdown waits for it."""

        async def tail() -> None:
            published = await publication.task
            await step("published")  # test-only (worker/change/faults.py)
            await settle(message, decide(published=published, poison=publication.poison))

        task = asyncio.create_task(tail())
        self._track(task, tail=True)
        return task

    async def _confirmed(self, out: Outgoing, reply_to: str | None, operation: str) -> bool:
        """Publish the event; whether the broker confirmed it."""
        try:
            await self._publisher.send(out, reply_to=reply_to)
        except PublishFailed as exc:
            log.warning("result not confirmed; the request will be redelivered", error=str(exc))
            return False
        REQUESTS.labels(operation, out.outcome.value).inc()
        log.info(
            "result published", outcome=out.outcome.value, event_id=out.event_id, code=out.code
        )
        return True

    async def drain(self) -> None:
        """Wait for every task, including publish tails started while waiting."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def abort(self) -> None:
        """Hard stop: cancel the handlers, let publish-and-ack tails finish, wait for all."""
        for task in self._tasks - self._tails:
            task.cancel()
        await self.drain()


async def run_worker(
    settings: Settings, handler: Handler, stop: asyncio.Event, readiness: Readiness | None = None
) -> None:
    """Consume requests until ``stop`` is set, then finish what is in flight and return.

    On ``stop``: the consumer is cancelled (no new deliveries), changes already running finish
    and their events are published and acked, prefetched requests not yet started are handed
    back (``basic.nack`` with requeue) for another worker, and the connection is closed.
    Cancelling the task instead is a hard stop: handlers are cancelled and their requests
    handed back, publish-and-ack tails already started still finish.

    At start it waits up to ``settings.startup_timeout`` for the broker
    (:func:`~worker.consumer.connect.connect_with_retry`: ``BrokerUnavailable`` after that,
    ``BrokerRefused`` at once for a refused login or vhost); afterwards a lost connection is
    re-established by aio-pika and the topology and consumer are restored.

    ``readiness.broker`` (``/readyz``) and the broker metrics follow the consuming connection:
    ready once consuming, not while a lost connection is being re-established, nor from
    ``stop`` on.
    """
    readiness = readiness or Readiness()
    try:
        await _consume(settings, handler, stop, readiness)
    finally:
        readiness.broker = "worker stopped"
        BROKER_CONNECTED.set(0)
    log.info("worker stopped")


async def _consume(
    settings: Settings, handler: Handler, stop: asyncio.Event, readiness: Readiness
) -> None:
    """:func:`run_worker` but for the end: connect, declare, consume, stop."""
    log.info("connecting", amqp_url=describe_urls(settings.amqp_urls))
    name = f"dhcp-failover-worker {socket.gethostname()}:{os.getpid()}"
    async with contextlib.AsyncExitStack() as connections:
        connection = await connections.enter_async_context(
            await connect_with_retry(
                settings.amqp_urls, startup_timeout=settings.startup_timeout, connection_name=name
            )
        )
        # Replies go out on a connection of their own: a forged reply_to can make the broker
        # close the publishing connection (worker/consumer/events.py).
        replies = await connections.enter_async_context(
            await connect_with_retry(
                settings.amqp_urls,
                startup_timeout=settings.startup_timeout,
                connection_name=f"{name} replies",
            )
        )
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=settings.prefetch)
        topology = await declare_topology(channel, settings)
        reply_channel = await replies.channel(publisher_confirms=True)
        publisher = EventPublisher(topology.event_exchange, reply_channel.default_exchange)
        consumer = _Consumer(settings, handler, publisher)
        tag = await topology.request_queue.consume(consumer.on_message)
        _follow(connection, readiness)
        log.info(
            "worker started",
            queue=settings.request_queue,
            prefetch=settings.prefetch,
            concurrency=settings.concurrency,
        )
        try:
            await stop.wait()
        except asyncio.CancelledError:
            # Stop deliveries first, or requests handed back would come straight back to us.
            consumer.stopping = True
            await _cancel_consumer(topology.request_queue, tag)
            await consumer.abort()
            raise
        consumer.stopping = True
        readiness.broker = "stopping: finishing the requests in flight"
        log.info("stopping: no new requests; finishing the ones in flight")
        await _cancel_consumer(topology.request_queue, tag)
        await consumer.drain()


def _follow(connection: AbstractRobustConnection, readiness: Readiness) -> None:
    """Consuming now: keep ``readiness`` and the broker metrics in step with the connection
    (aio-pika calls back on a loss, and once channels and consumer are restored)."""

    def lost(_: AbstractConnection | None, exc: BaseException | None) -> None:
        BROKER_CONNECTED.set(0)
        if readiness.broker is None:  # not once stopping
            readiness.broker = LOST

    def restored(_: AbstractRobustConnection | None) -> None:
        BROKER_CONNECTED.set(1)
        BROKER_RECONNECTS.inc()
        if readiness.broker == LOST:
            readiness.broker = None

    connection.close_callbacks.add(lost)
    connection.reconnect_callbacks.add(restored)
    BROKER_CONNECTED.set(1)
    readiness.broker = None


async def _cancel_consumer(queue: AbstractQueue, tag: str) -> None:
    """basic.cancel: no new deliveries (and no restore after a reconnect); best effort."""
    try:
        await queue.cancel(tag)
    except (AMQPError, ChannelInvalidStateError, OSError) as exc:
        log.warning("could not cancel the consumer", error=f"{type(exc).__name__}: {exc}")


@contextmanager
def stop_on_signals(
    stop: asyncio.Event, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Iterator[None]:
    """Set ``stop`` on SIGTERM / SIGINT while inside (for the CLI around :func:`run_worker`)."""
    loop = asyncio.get_running_loop()

    def request_stop(sig: signal.Signals) -> None:
        log.info("signal received: stopping", signal=sig.name, already=stop.is_set())
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, request_stop, sig)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
