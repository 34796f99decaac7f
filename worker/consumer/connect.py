"""Connections to RabbitMQ: one broker or the nodes of a cluster; the wait at start.

``DHCP_FAILOVER_AMQP_URL`` is one URL or a comma-separated list of URLs naming the nodes of a
cluster (:attr:`Settings.amqp_urls`). aio-pika's ``connect_robust`` takes one URL and, after a
loss, reconnects to that same URL only, so a worker whose node is down would wait for that
node. :class:`RotatingConnection` is aio-pika's own ``RobustConnection`` with one change: each
time the connection closes without ``close()`` having been called (the node stopped, was
killed, or closed us), and each time a (re)connection attempt fails, it moves ``url`` to the
next node of the list, round-robin. Every attempt of aio-pika's reconnect loop reads ``url``
afresh (``Connection.connect``), and a failed attempt reports itself through the same
``_on_connection_close`` hook, so the loop itself, its ``reconnect_interval`` pause (the
first URL's query; default 5 s) and its restore of channels, exchanges, queues, bindings and
consumers are all aio-pika's, unchanged. Every node serves the same quorum queues, so the
restored consumer carries on from whichever node answers. With one URL nothing rotates.

The first connection: under compose or systemd the worker often starts before its broker, and
``connect_robust`` reconnects only after a first success, so the start-up wait is ours.
Each attempt is one pass over the list, in order; the first node that answers wins (a node
that does not is logged, and the next tried at once). When none does, bounded exponential
backoff (tenacity) up to ``startup_timeout`` seconds (0: forever), one log line per pass.
A refused login or virtual host is not retried: it will not fix itself, and the operator
should hear about it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError, ProtocolSyntaxError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential,
)
from yarl import URL

from worker.logging import get_logger, redact_url
from worker.settings import split_urls

log = get_logger(__name__)

#: Backoff between passes over the URLs: 0.5 s, 1 s, 2 s, ... capped here.
MAX_BACKOFF = 10.0
#: One attempt's TCP + AMQP handshake bound (per URL).
ATTEMPT_TIMEOUT = 10.0


class BrokerError(Exception):
    """The broker could not be used at start; the message says what to do."""


class BrokerUnavailable(BrokerError):
    """Nothing accepted an AMQP connection before the start-up timeout."""


class BrokerRefused(BrokerError):
    """The broker answered and refused us (credentials, virtual host): never retried."""


def _urls(url: str | Sequence[str]) -> tuple[str, ...]:
    return split_urls(url) if isinstance(url, str) else tuple(url)


def describe_urls(url: str | Sequence[str]) -> str:
    """One URL or a list (or the setting's comma-separated text), each password ``***``."""
    return ", ".join(redact_url(u) for u in _urls(url))


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def refused(url: str | Sequence[str], exc: Exception) -> BrokerRefused | None:
    """The :class:`BrokerRefused` that ``exc`` means, or None when it may be transient.

    ``url`` is the URL that refused, or the setting (the virtual host is then the first's).
    """
    urls = _urls(url)
    where = describe_urls(urls)
    if isinstance(exc, ProbableAuthenticationError):
        return BrokerRefused(
            f"RabbitMQ at {where} refused the login (ACCESS_REFUSED): check the user and "
            "password in DHCP_FAILOVER_AMQP_URL (rabbitmqctl list_users)"
        )
    if isinstance(exc, ProtocolSyntaxError) and "Connection.Close" in str(exc):
        # RabbitMQ answers connection.open of an unknown or forbidden vhost with a close;
        # aiormq reports it as an unexpected frame and keeps the reply text to itself.
        vhost = _vhost(urls[0]) if urls else "/"
        return BrokerRefused(
            f"RabbitMQ at {where} refused the virtual host {vhost!r} (it does not exist "
            "or the user has no access): check DHCP_FAILOVER_AMQP_URL's path "
            "(rabbitmqctl list_vhosts, list_permissions)"
        )
    return None


def unreachable_message(
    url: str | Sequence[str], error: BaseException, waited: float | None
) -> str:
    """One line for a broker that did not answer: what, where, for how long, what to do."""
    within = f" within {waited:g}s" if waited is not None else ""
    return (
        f"cannot reach RabbitMQ at {describe_urls(url)}{within}: {error}; is it running? "
        "('rabbitmq-diagnostics ping'; scripts/broker starts one here)"
    )


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, AMQPConnectionError | OSError | TimeoutError) and not isinstance(
        exc, ProbableAuthenticationError
    )


class RotatingConnection(RobustConnection):
    """aio-pika's robust connection over several broker URLs (see the module docstring).

    ``first`` is the index of the URL tried first; ``url`` is always the node in use or
    about to be tried.
    """

    def __init__(self, urls: Sequence[str], *, first: int = 0, **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self._urls = tuple(URL(u) for u in urls)
        self._index = first % len(self._urls)
        super().__init__(self._urls[self._index], **kwargs)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called when an open connection closes and when an attempt fails: move on before
        # aio-pika's loop makes its next attempt (it reads ``self.url`` then).
        if not (self._close_called or self.is_closed) and len(self._urls) > 1:
            self._index = (self._index + 1) % len(self._urls)
            self.url = self._urls[self._index]
            if self.connection_attempt:  # connected before: a node was lost, say where next
                log.warning(
                    "broker connection lost; the next attempt goes to another node",
                    next_amqp_url=redact_url(str(self.url)),
                )
        await super()._on_connection_close(closing)


async def _open(
    urls: tuple[str, ...], index: int, connection_name: str
) -> AbstractRobustConnection:
    connection = RotatingConnection(
        urls, first=index, client_properties={"connection_name": connection_name}
    )
    try:
        await connection.connect(timeout=ATTEMPT_TIMEOUT)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


async def _first_answering(urls: tuple[str, ...], connection_name: str) -> AbstractRobustConnection:
    """One pass over ``urls``: the first that connects, or the last retryable error raised."""
    for index, url in enumerate(urls):
        try:
            connection = await _open(urls, index, connection_name)
        except ProtocolSyntaxError as exc:
            if (why := refused(url, exc)) is not None:
                raise why from None
            error: Exception = exc
        except ProbableAuthenticationError as exc:
            raise refused(url, exc) or BrokerRefused(str(exc)) from None
        except (AMQPConnectionError, OSError, TimeoutError) as exc:
            error = exc
        else:
            if index:
                log.info("connected to a later broker node", amqp_url=redact_url(url))
            return connection
        if index + 1 < len(urls):
            log.warning(
                "broker node not reachable; trying the next",
                amqp_url=redact_url(url),
                error=f"{type(error).__name__}: {error}",
            )
        else:
            raise error
    raise AssertionError("unreachable: the last URL returns or raises")  # pragma: no cover


async def connect_with_retry(
    url: str | Sequence[str], *, startup_timeout: float, connection_name: str
) -> AbstractRobustConnection:
    """A robust connection to the first node of ``url`` that answers (one URL, a list, or the
    setting's comma-separated text), waiting up to ``startup_timeout`` s (0: forever).

    Raises :class:`BrokerRefused` at once for a refused login or vhost, and
    :class:`BrokerUnavailable` when the time is up.
    """
    urls = _urls(url)
    if not urls:
        raise ValueError("no broker URL")
    started = time.monotonic()

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "broker not reachable yet; retrying",
            amqp_url=describe_urls(urls),
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 2),
            waited_s=round(time.monotonic() - started, 1),
            error=f"{type(error).__name__}: {error}" if error else None,
        )

    retrying = AsyncRetrying(
        stop=stop_never if startup_timeout == 0 else stop_after_delay(startup_timeout),
        wait=wait_exponential(multiplier=0.5, max=MAX_BACKOFF),
        retry=retry_if_exception(_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await _first_answering(urls, connection_name)
    except (AMQPConnectionError, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(
            unreachable_message(urls, exc, round(time.monotonic() - started, 1))
        ) from None
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover


async def connect_first(url: str | Sequence[str]) -> AbstractConnection:
    """A plain (not robust) connection to the first node of ``url`` that answers, for a
    short-lived client such as ``publish``. Errors are aio-pika's: a refused login at once,
    otherwise the last node's error when none answers."""
    urls = _urls(url)
    if not urls:
        raise ValueError("no broker URL")
    for index, one in enumerate(urls):
        try:
            return await aio_pika.connect(one, timeout=ATTEMPT_TIMEOUT)
        except ProbableAuthenticationError:
            raise
        except (AMQPConnectionError, OSError, TimeoutError) as exc:
            if index + 1 == len(urls) or refused(one, exc) is not None:
                raise
            log.warning(
                "broker node not reachable; trying the next",
                amqp_url=redact_url(one),
                error=f"{type(exc).__name__}: {exc}",
            )
    raise AssertionError("unreachable: the last URL returns or raises")  # pragma: no cover
