"""A TCP proxy on 127.0.0.1 between the worker and RabbitMQ, to cut connections on purpose.

As in aio-pika's own tests: the worker connects to the proxy, the proxy to the broker, and the
test drops every connection (``cut``) or drops them the moment the worker sends a chosen byte
pattern (``cut_on``), which is how "the broker went away while the event was being published"
is made to happen at exactly that point. New connections are accepted after a cut, so a
robust connection reconnects through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the broker; ``cut`` drops every connection at once."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.accepted = 0
        self.cuts = 0
        self._pairs: set[_Pair] = set()
        self._server: asyncio.Server | None = None
        self._trigger: bytes | None = None
        self._every_time = False
        self.triggers = 0
        self.triggered = asyncio.Event()

    @classmethod
    async def to(cls, amqp_url: str) -> TcpProxy:
        parts = urlsplit(amqp_url)
        proxy = cls(parts.hostname or "127.0.0.1", parts.port or 5672)
        await proxy.start()
        return proxy

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:``port`` (0: any free port); again after :meth:`close` too."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, amqp_url: str, **query: str) -> str:
        """``amqp_url`` pointed at the proxy, with extra query parameters (reconnect_interval)."""
        parts = urlsplit(amqp_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        params = dict(parse_qsl(parts.query)) | query
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(params)))

    def cut(self) -> int:
        """Drop every open connection (both sides, abruptly); later connections still work.
        Returns how many were dropped."""
        self.cuts += 1
        pairs = list(self._pairs)
        for pair in pairs:
            pair.abort()
        return len(pairs)

    def cut_on(self, pattern: bytes, *, every_time: bool = False) -> None:
        """Cut everything when the client sends ``pattern`` (which is not forwarded).

        Once, or ``every_time`` until :meth:`cut_on` is called again. ``triggers`` counts.
        """
        self._trigger = pattern
        self._every_time = every_time
        self.triggers = 0
        self.triggered.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.abort()
        tasks = [t for pair in list(self._pairs) for t in pair.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pair, inspect=True)),
            asyncio.create_task(self._pump(up_reader, writer, pair, inspect=False)),
        ]
        try:
            await asyncio.gather(*pair.tasks, return_exceptions=True)
        finally:
            pair.abort()
            self._pairs.discard(pair)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        *,
        inspect: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if inspect and self._trigger is not None and self._trigger in data:
                    if not self._every_time:
                        self._trigger = None
                    self.triggers += 1
                    self.triggered.set()
                    self.cut()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                pair.abort()
