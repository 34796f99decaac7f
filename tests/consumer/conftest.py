"""Fixtures of the consumer tests; the broker itself comes from tests/fixtures/broker.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.proxy import TcpProxy
from tests.consumer.support import EventTap, StubHandler
from worker.settings import Settings


@pytest.fixture
async def amqp(broker_settings: Settings) -> AsyncIterator[AbstractConnection]:
    """The test's own connection (publishing, inspecting queues), closed after the test."""
    connection = await aio_pika.connect(broker_settings.amqp_url)
    async with connection:
        yield connection


@pytest.fixture
async def tap(amqp: AbstractConnection, broker_settings: Settings) -> EventTap:
    """Declares the topology and captures every event published on the event exchange."""
    return await EventTap().start(amqp, broker_settings)


@pytest.fixture
def handler() -> StubHandler:
    return StubHandler()


@pytest.fixture
async def proxy(broker_settings: Settings) -> AsyncIterator[TcpProxy]:
    """A cuttable TCP proxy in front of the test broker."""
    proxy = await TcpProxy.to(broker_settings.amqp_url)
    try:
        yield proxy
    finally:
        await proxy.close()
