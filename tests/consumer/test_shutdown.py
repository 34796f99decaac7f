"""Stopping the worker: SIGTERM / SIGINT finish the change in flight, answer it, ack it, return."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.support import (
    MODIFY,
    MODIFY_ID,
    EventTap,
    StubHandler,
    assert_depth,
    modify,
    publish_raw,
    wait_for_consumer,
)
from worker.consumer.app import run_worker, stop_on_signals
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


async def test_stop_during_a_slow_change_lets_it_finish_publishes_acks_and_returns(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    handler = StubHandler(delay=1.0)
    stop = asyncio.Event()
    await publish_raw(amqp, broker_settings, MODIFY)
    worker = asyncio.create_task(run_worker(broker_settings, handler, stop))
    await asyncio.wait_for(handler.started.wait(), 10)

    stop.set()
    await asyncio.wait_for(worker, 10)  # returns normally, after the change

    assert handler.finished == [MODIFY_ID]
    checked = await tap.next_checked(within=1)
    assert checked.event.id == f"{MODIFY_ID}/succeeded"
    # Acked: nothing came back to the queue when the connection closed.
    await assert_depth(amqp, broker_settings.request_queue, 0)


async def test_sigterm_during_a_slow_change_lets_it_finish_publishes_acks_and_returns(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    handler = StubHandler(delay=1.0)
    stop = asyncio.Event()
    await publish_raw(amqp, broker_settings, MODIFY)
    with stop_on_signals(stop):
        worker = asyncio.create_task(run_worker(broker_settings, handler, stop))
        await asyncio.wait_for(handler.started.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(worker, 10)

    assert stop.is_set()
    assert handler.finished == [MODIFY_ID]
    assert (await tap.next_checked(within=1)).event.data.outcome == "succeeded"
    await assert_depth(amqp, broker_settings.request_queue, 0)


async def test_requests_not_started_at_stop_are_left_in_the_queue_for_another_worker(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    settings = broker_settings.model_copy(update={"concurrency": 1, "prefetch": 3})
    handler = StubHandler(delay=0.5)
    for n in range(3):
        await publish_raw(amqp, settings, modify(requestId=f"s-{n}"))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, handler, stop))
    await asyncio.wait_for(handler.started.wait(), 10)
    await asyncio.sleep(0.1)  # the other two are prefetched, waiting for the one slot

    stop.set()
    await asyncio.wait_for(worker, 10)

    assert handler.finished == ["s-0"]
    assert (await tap.next_checked(within=1)).event.id == "s-0/succeeded"
    await tap.assert_quiet(0.2)
    await assert_depth(amqp, settings.request_queue, 2)


async def test_an_idle_worker_stops_at_once(
    amqp: AbstractConnection, broker_settings: Settings, handler: StubHandler
) -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(broker_settings, handler, stop))
    await wait_for_consumer(amqp, broker_settings, worker)
    stop.set()
    await asyncio.wait_for(worker, 5)
    assert handler.calls == []


async def test_cancelling_the_worker_abandons_the_change_without_acking_it(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    handler = StubHandler(delay=30.0)
    await publish_raw(amqp, broker_settings, MODIFY)
    worker = asyncio.create_task(run_worker(broker_settings, handler, asyncio.Event()))
    await asyncio.wait_for(handler.started.wait(), 10)

    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(worker, 10)

    assert worker.cancelled()
    assert handler.finished == [MODIFY_ID]  # cancelled, through its finally
    await tap.assert_quiet(0.3)
    await assert_depth(amqp, broker_settings.request_queue, 1)  # back for redelivery
