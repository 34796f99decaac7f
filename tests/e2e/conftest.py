"""Fixtures of the end-to-end tests: the whole stack on a real broker and real sshd hosts.

``broker_settings`` (unique names, deleted after) and ``local_hosts`` / ``sample_hosts`` (sshd
stand-ins, stopped after) come from tests/fixtures; this adds the test's own AMQP connection, an
event tap, and the real ``serve`` (inventory -> SshFleet -> coordinator -> consumer) running in
this process until the test ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from aio_pika.abc import AbstractConnection

from tests.consumer.support import EventTap, wait_for_consumer
from tests.e2e.support import stop_serving
from tests.fixtures.sshd import LocalHostsFactory
from worker.consumer.client import publish_request
from worker.demo import PRIMARY, SECONDARY
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.messages import ResultEvent
from worker.service import serve
from worker.settings import Settings

#: Bounds for the SSH side, well under each test's timeout.
SSH_TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 5.0,
    "command_timeout": 20.0,
    "lock_timeout": 10.0,
}
#: How long a publisher waits for its result event.
WAIT = 30.0


@dataclass
class Stack:
    """A running worker (the real ``serve``) on ``hosts``, and what the test talks to it with."""

    hosts: LocalHosts
    settings: Settings
    amqp: AbstractConnection
    tap: EventTap

    @property
    def primary(self) -> LocalHost:
        return self.hosts.hosts[PRIMARY]

    @property
    def secondary(self) -> LocalHost:
        return self.hosts.hosts[SECONDARY]

    def live(self) -> dict[str, bytes]:
        return {name: host.config_bytes() for name, host in self.hosts.hosts.items()}

    async def request(self, body: dict[str, Any], routing_key: str) -> ResultEvent:
        """Publish like ``dhcp-failover-worker publish --wait`` and return the reply."""
        event = await publish_request(self.settings, body, routing_key, wait=WAIT)
        assert event is not None, f"no result event for {body['requestId']} within {WAIT}s"
        return event


ServeOn = Callable[..., Awaitable[Stack]]
"""``await serve_on(hosts, **settings_changes)``."""


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``serve`` configures process-wide logging; put it back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
async def serve_on(
    broker_settings: Settings,
    amqp: AbstractConnection,
    tap: EventTap,
    local_hosts: LocalHostsFactory,  # set up first, so the hosts outlive the worker
    restore_logging: None,
) -> AsyncIterator[ServeOn]:
    """``await serve_on(hosts)``: the real ``serve`` on ``hosts``' inventory, consuming.

    Started after the hosts (and any inventory tweak), stopped at teardown the way SIGTERM
    stops it: the stop event, then wait for in-flight changes; cancelled only past a timeout.
    """
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(hosts: LocalHosts, **changes: Any) -> Stack:
        assert not tasks, "one worker per test"
        settings = broker_settings.model_copy(
            update={
                "inventory": hosts.inventory_path,
                "log_format": "json",
                **SSH_TIMEOUTS,
                **changes,
            }
        )
        task = asyncio.create_task(serve(settings, stop), name="serve")
        tasks.append(task)
        await wait_for_consumer(amqp, settings, task)
        return Stack(hosts, settings, amqp, tap)

    try:
        yield start
    finally:
        await stop_serving(stop, tasks)
