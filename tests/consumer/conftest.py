"""Fixtures of the consumer tests; the broker itself comes from tests/fixtures/broker.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.consumer.proxy import TcpProxy
from tests.consumer.support import StubHandler
from worker.settings import Settings


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
