"""Several broker URLs (worker/consumer/connect.py) on the real broker, without a cluster.

Each "node" is a TCP proxy to the one test broker (tests/consumer/proxy.py): closing a proxy
is a node that went away for good, so a connection that did not rotate would retry it forever.
The three-node cluster itself is in test_cluster.py.
"""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pydantic import ValidationError

from tests.consumer.proxy import TcpProxy
from tests.consumer.support import REMOVE, REMOVE_ID, get_one
from tests.e2e.test_startup import with_netloc
from worker.consumer.client import publish_request
from worker.consumer.connect import connect_with_retry, describe_urls, unreachable_message
from worker.demo.processes import free_port
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]


def test_a_comma_separated_setting_names_every_node_and_each_password_is_redacted() -> None:
    settings = Settings(
        amqp_url=" amqp://w:s3cret-a@rabbit-a:5672/prod , amqp://w:s3cret-b@rabbit-b/prod,"
    )

    assert settings.amqp_urls == (
        "amqp://w:s3cret-a@rabbit-a:5672/prod",
        "amqp://w:s3cret-b@rabbit-b/prod",
    )
    shown = describe_urls(settings.amqp_url) + unreachable_message(settings.amqp_url, OSError(), 1)
    assert "s3cret" not in shown
    assert "amqp://w:***@rabbit-a:5672/prod, amqp://w:***@rabbit-b/prod" in shown
    assert Settings(amqp_url="amqp://localhost/").amqp_urls == ("amqp://localhost/",)
    with pytest.raises(ValidationError, match="no AMQP URL"):
        Settings(amqp_url=" , ")


async def test_the_first_node_that_answers_at_start_is_used(amqp_url: str) -> None:
    dead = with_netloc(amqp_url, port=free_port())

    connection = await connect_with_retry(
        [dead, amqp_url], startup_timeout=5, connection_name="rotation test"
    )
    async with connection:
        assert isinstance(connection, aio_pika.RobustConnection)
        assert connection.url.port == urlsplit(amqp_url).port
        channel = await connection.channel()
        assert not channel.is_closed


async def test_a_node_gone_for_good_is_replaced_by_the_next_and_the_consumer_restored(
    amqp_url: str, amqp: AbstractConnection
) -> None:
    first, second = await TcpProxy.to(amqp_url), await TcpProxy.to(amqp_url)
    queue_name = f"test.rotation.{secrets.token_hex(4)}"
    received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    try:
        connection = await connect_with_retry(
            [first.url(amqp_url), second.url(amqp_url)],
            startup_timeout=5,
            connection_name="rotation test",
        )
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, auto_delete=True)
            await queue.consume(received.put, no_ack=True)
            assert (first.accepted, second.accepted) == (1, 0)

            await first.close()  # the node is gone: it refuses every later connection too
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while second.accepted == 0 or not connection.connected.is_set():
                assert loop.time() < deadline, "no reconnection to the second node"
                await asyncio.sleep(0.05)

            # The consumer was restored on the second node's connection: it gets what arrives.
            publisher = await amqp.channel()
            await publisher.default_exchange.publish(aio_pika.Message(b"after"), queue_name)
            message = await asyncio.wait_for(received.get(), 20)
            assert message.body == b"after"
            assert isinstance(connection, aio_pika.RobustConnection)
            assert connection.url.port == second.port
    finally:
        await first.close()
        await second.close()


async def test_publish_goes_to_the_first_node_that_answers(
    broker_settings: Settings, amqp: AbstractConnection
) -> None:
    dead = with_netloc(broker_settings.amqp_url, port=free_port())
    settings = broker_settings.model_copy(update={"amqp_url": f"{dead},{broker_settings.amqp_url}"})

    await publish_request(settings, REMOVE, "request.remove")

    message = await get_one(amqp, broker_settings.request_queue)
    assert message.message_id == REMOVE_ID
