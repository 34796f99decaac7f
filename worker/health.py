"""The HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (ready).

Off unless ``DHCP_FAILOVER_HTTP_PORT`` is set; listens on ``DHCP_FAILOVER_HTTP_HOST``
(127.0.0.1 by default: nothing here is authenticated). The server is the standard library's
threaded HTTP server in a thread of its own, with prometheus-client's handler for
``/metrics``: a scrape never waits for the event loop, and a busy loop cannot fail a
health check that only asks whether the process is alive.

``/readyz`` answers 200 ``ready`` only while every part a :class:`Readiness` names is up (the
inventory is loaded, the worker is connected to the broker and consuming), else 503 with the
reasons on one line. The layers set it from the event loop; the HTTP thread only reads it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import MetricsHandler

from worker.failures import EXIT_CONFIG, OperatorError
from worker.logging import get_logger
from worker.settings import Settings

log = get_logger(__name__)

ENDPOINTS = ("/metrics", "/healthz", "/readyz")


@dataclass
class Readiness:
    """What ``/readyz`` checks: ``broker`` is None while consuming, else why not."""

    inventory: bool = False
    broker: str | None = "not connected to the broker yet"

    def problems(self) -> list[str]:
        """Why the worker is not ready; empty when it is."""
        found = [] if self.inventory else ["inventory not loaded"]
        broker = self.broker
        return found if broker is None else [*found, broker]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scrape never holds the process at exit

    def __init__(self, address: tuple[str, int], readiness: Readiness | None) -> None:
        self.readiness = readiness
        super().__init__(address, _Handler)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(MetricsHandler):
    """prometheus-client's ``/metrics`` handler, and the two health endpoints beside it."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        server = self.server
        assert isinstance(server, _Server)
        if path == "/metrics":
            super().do_GET()
        elif path == "/healthz":
            self._answer(200, "ok")
        elif path == "/readyz" and server.readiness is not None:
            problems = server.readiness.problems()
            self._answer(503 if problems else 200, "; ".join(problems) or "ready")
        else:
            served = [e for e in ENDPOINTS if e != "/readyz" or server.readiness is not None]
            self._answer(404, f"not found; try {', '.join(served)}")

    def _answer(self, status: int, text: str) -> None:
        body = f"{text}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@asynccontextmanager
async def serving(
    settings: Settings, readiness: Readiness | None, *, required: bool = True
) -> AsyncIterator[tuple[str, int] | None]:
    """Serve the endpoints while inside (``/readyz`` only with a ``readiness``); yields the
    address listened on, or None when ``http_port`` is 0.

    A port that cannot be bound raises :class:`OperatorError` (exit 78) when ``required``
    (``run``: an operator asked for health checks), else is logged and nothing is served
    (``rollout`` inside a worker's container finds the worker's port taken)."""
    if not settings.http_port:
        yield None
        return
    address = (settings.http_host, settings.http_port)
    cls = _Server6 if ":" in settings.http_host else _Server
    try:
        server = cls(address, readiness)
    except OSError as exc:
        where = f"{settings.http_host}:{settings.http_port}"
        why = f"cannot listen on {where}: {exc.strerror or exc}"
        if required:
            raise OperatorError(
                f"{why}; set DHCP_FAILOVER_HTTP_PORT to a free port (0: off) or "
                "DHCP_FAILOVER_HTTP_HOST to an address of this host",
                EXIT_CONFIG,
            ) from None
        log.warning("http endpoints not served", error=why)
        yield None
        return
    thread = threading.Thread(target=server.serve_forever, name="http-endpoints", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    log.info("http endpoints serving", http_host=host, http_port=port, endpoints=ENDPOINTS)
    try:
        yield str(host), int(port)
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join()
