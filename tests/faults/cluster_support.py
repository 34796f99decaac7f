"""Helpers of the broker fault tests: pairs of sshd hosts, the worker process, a publisher
that retries until the broker confirms, and an event log that survives the loss of a node.

The publisher and the event log connect like the worker does (``connect_with_retry`` over
every node, a :class:`~worker.consumer.connect.RotatingConnection`), and the log reads a
*quorum* queue bound to the event exchange with manual acks: an event the broker accepted is
neither lost with a node nor dropped by a tap that was disconnected at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from tests.change.helpers import PRIMARY_CONF, SECONDARY_CONF, done_records, sha
from tests.e2e.support import change_files, modify_body
from tests.e2e.test_startup import finish, start_worker
from worker.consumer.topology import declare_topology
from worker.demo.localhosts import LocalHosts
from worker.settings import Settings


@dataclass(frozen=True)
class Pair:
    """One failover pair of the load: its server names and failover addresses."""

    index: int

    @property
    def primary(self) -> str:
        return f"dhcp{self.index}a.example.net"

    @property
    def secondary(self) -> str:
        return f"dhcp{self.index}b.example.net"

    @property
    def addresses(self) -> tuple[str, str]:
        return f"192.0.2.{20 + 2 * self.index}", f"192.0.2.{21 + 2 * self.index}"

    def _own(self, text: str) -> str:
        a, b = self.addresses
        return text.replace("192.0.2.10;", f"{a};").replace("192.0.2.11;", f"{b};")

    def configs(self) -> dict[str, str]:
        return {self.primary: self._own(PRIMARY_CONF), self.secondary: self._own(SECONDARY_CONF)}

    def expected(self, port: int, mclt: int) -> dict[str, str]:
        """Both live files once a modify to ``Port=port, Mclt=mclt`` is applied (the
        secondary's ``port``/``peer port`` follow ``Port``; only the primary holds MCLT)."""
        return {
            self.primary: self._own(PRIMARY_CONF)
            .replace("port 647;", f"port {port};")
            .replace("mclt 3600;", f"mclt {mclt};"),
            self.secondary: self._own(SECONDARY_CONF).replace("port 647;", f"port {port};"),
        }

    def body(self, request_id: str, port: int, mclt: int) -> dict[str, Any]:
        return modify_body(
            request_id,
            PrimaryServer=self.primary,
            SecondaryServer=self.secondary,
            Port=port,
            Mclt=mclt,
        )


def start_pairs(
    local_hosts: Callable[..., LocalHosts], count: int
) -> tuple[list[Pair], LocalHosts]:
    pairs = [Pair(k) for k in range(count)]
    configs: dict[str, str] = {}
    addresses: dict[str, tuple[str, ...]] = {}
    for pair in pairs:
        configs |= pair.configs()
        addresses |= {pair.primary: (pair.addresses[0],), pair.secondary: (pair.addresses[1],)}
    return pairs, local_hosts(configs, addresses=addresses)


# -- the worker process -------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """``dhcp-failover-worker run`` as a real process, its output in a file; its main
    connection's name. The one such helper of the tests (tests/e2e and tests/faults)."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def connection_name(self) -> str:
        return f"dhcp-failover-worker {socket.gethostname()}:{self.process.pid}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def exit_status(self, within: float) -> int:
        try:
            return await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the worker did not exit within {within}s; its log:\n{self.output()[-4000:]}"
            ) from None

    def events(self) -> list[dict[str, Any]]:
        lines = self.output().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def stop(self, within: float = 60.0) -> int:
        """SIGTERM and the exit status (killed, and AssertionError, past ``within``)."""
        if self.process.poll() is None:
            self.process.terminate()
        return finish(self.process, within)


def run_worker_process(settings: Settings, inventory: Path, log: Path) -> WorkerProcess:
    return WorkerProcess(start_worker(settings, inventory, log), log)


# -- the publisher and the event log ------------------------------------------------------------

#: What a publication may fail with while a node is lost; the publisher then tries again.
#: (RuntimeError: aiormq refuses a channel on a connection closed under it mid-reconnect.)
PUBLISH_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError, RuntimeError)


@dataclass
class Publisher:
    """Publishes requests with confirms, each one again until the broker confirms it (as a
    careful publisher does: a request whose confirm was lost may be queued twice, under the
    same id; the worker must apply it once)."""

    connection: AbstractRobustConnection
    settings: Settings
    confirmed: list[str] = field(default_factory=list)
    retries: int = 0
    #: Publications confirmed only after waiting more than a second (through a reconnect).
    slow: int = 0

    async def publish(self, body: dict[str, Any], routing_key: str = "request.modify") -> None:
        request_id = str(body["requestId"])
        data = json.dumps(body).encode()
        began = time.monotonic()
        while True:
            try:
                channel = await self.connection.channel(publisher_confirms=True)
                try:
                    exchange = await channel.get_exchange(self.settings.request_exchange)
                    message = aio_pika.Message(
                        data,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=request_id,
                        correlation_id=request_id,
                    )
                    await asyncio.wait_for(exchange.publish(message, routing_key), 20)
                finally:
                    with contextlib.suppress(*PUBLISH_ERRORS):
                        await channel.close()
            except PUBLISH_ERRORS:
                self.retries += 1
                await asyncio.sleep(0.5)
                continue
            self.confirmed.append(request_id)
            self.slow += time.monotonic() - began > 1.0
            return


@dataclass
class EventLog:
    """Every event message read from a quorum queue bound to the event exchange (``#``)."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(
        self, connection: AbstractRobustConnection, settings: Settings, name: str
    ) -> EventLog:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=200)
        topology = await declare_topology(channel, settings)
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(topology.event_exchange, routing_key="#")
        await queue.consume(self._on_message)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append((str(message.message_id), json.loads(message.body)))
        self.changed.set()
        with contextlib.suppress(*PUBLISH_ERRORS):
            await message.ack()  # a lost ack only means the same event again

    def request_ids(self) -> set[str]:
        return {raw["data"]["requestId"] for _, raw in self.messages}

    async def wait_for(self, count: int, within: float) -> None:
        """Until events for ``count`` distinct requests have arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.request_ids()) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"events for {len(self.request_ids())} requests, not {count}, within {within}s"
                )
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))


# -- checks -------------------------------------------------------------------------------------


def done_ids(hosts: LocalHosts, server: str) -> list[str]:
    """The request id of every done record on ``server`` (``.dhcp-failover-done.<stamp>.<id>
    .json``)."""
    names = done_records(sorted(p.name for p in hosts.hosts[server].config_dir.iterdir()))
    return [n.removesuffix(".json").split(".", 3)[3] for n in names]


def restart_values(
    hosts: LocalHosts, pair: Pair, values: dict[str, tuple[int, int]]
) -> dict[str, list[str]]:
    """Per server of ``pair``, the request id whose file each restart came up on, in order
    (``?<sha>`` for a file no request of the pair would have written)."""
    by_sha: dict[str, dict[str, str]] = {pair.primary: {}, pair.secondary: {}}
    for request_id, (port, mclt) in values.items():
        for server, text in pair.expected(port, mclt).items():
            by_sha[server][sha(text)] = request_id
    out: dict[str, list[str]] = {}
    for server in (pair.primary, pair.secondary):
        restarts = hosts.hosts[server].restarts()
        assert all(r.status == "ok" for r in restarts), (server, restarts)
        out[server] = [by_sha[server].get(r.sha256, f"?{r.sha256}") for r in restarts]
    return out


def leftovers(hosts: LocalHosts) -> dict[str, dict[str, list[str]]]:
    """Per server, the temps and running journals a change left behind (none expected)."""
    out = {}
    for name, host in hosts.hosts.items():
        files = change_files(host)
        if files["temps"] or files["journals"]:
            out[name] = {"temps": files["temps"], "journals": files["journals"]}
    return out
