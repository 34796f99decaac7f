"""The first connection to RabbitMQ: wait for a broker that is still starting, not for a wrong
password.

Under compose or systemd the worker often starts before its broker. ``connect_robust``
reconnects only after a first success, so the start-up wait is ours: bounded exponential
backoff (tenacity) up to ``startup_timeout`` seconds (0: forever), one log line per attempt.
A refused login or virtual host is not retried: it will not fix itself, and the operator
should hear about it at once.
"""

from __future__ import annotations

import time
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError, ProtocolSyntaxError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from worker.logging import get_logger, redact_url

log = get_logger(__name__)

#: Backoff between attempts: 0.5 s, 1 s, 2 s, ... capped here.
MAX_BACKOFF = 10.0
#: One attempt's TCP + AMQP handshake bound.
ATTEMPT_TIMEOUT = 10.0


class BrokerError(Exception):
    """The broker could not be used at start; the message says what to do."""


class BrokerUnavailable(BrokerError):
    """Nothing accepted an AMQP connection before the start-up timeout."""


class BrokerRefused(BrokerError):
    """The broker answered and refused us (credentials, virtual host): never retried."""


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def refused(url: str, exc: Exception) -> BrokerRefused | None:
    """The :class:`BrokerRefused` that ``exc`` means, or None when it may be transient."""
    where = redact_url(url)
    if isinstance(exc, ProbableAuthenticationError):
        return BrokerRefused(
            f"RabbitMQ at {where} refused the login (ACCESS_REFUSED): check the user and "
            "password in DHCP_FAILOVER_AMQP_URL (rabbitmqctl list_users)"
        )
    if isinstance(exc, ProtocolSyntaxError) and "Connection.Close" in str(exc):
        # RabbitMQ answers connection.open of an unknown or forbidden vhost with a close;
        # aiormq reports it as an unexpected frame and keeps the reply text to itself.
        return BrokerRefused(
            f"RabbitMQ at {where} refused the virtual host {_vhost(url)!r} (it does not exist "
            "or the user has no access): check DHCP_FAILOVER_AMQP_URL's path "
            "(rabbitmqctl list_vhosts, list_permissions)"
        )
    return None


def unreachable_message(url: str, error: BaseException, waited: float | None) -> str:
    """One line for a broker that did not answer: what, where, for how long, what to do."""
    within = f" within {waited:g}s" if waited is not None else ""
    return (
        f"cannot reach RabbitMQ at {redact_url(url)}{within}: {error}; is it running? "
        "('rabbitmq-diagnostics ping'; scripts/broker starts one here)"
    )


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, AMQPConnectionError | OSError | TimeoutError) and not isinstance(
        exc, ProbableAuthenticationError
    )


async def connect_with_retry(
    url: str, *, startup_timeout: float, connection_name: str
) -> AbstractRobustConnection:
    """A robust connection, waiting up to ``startup_timeout`` s (0: forever) for the broker.

    Raises :class:`BrokerRefused` at once for a refused login or vhost, and
    :class:`BrokerUnavailable` when the time is up.
    """
    started = time.monotonic()

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "broker not reachable yet; retrying",
            amqp_url=redact_url(url),
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
                try:
                    return await aio_pika.connect_robust(
                        url,
                        timeout=ATTEMPT_TIMEOUT,
                        client_properties={"connection_name": connection_name},
                    )
                except ProtocolSyntaxError as exc:
                    if (why := refused(url, exc)) is not None:
                        raise why from None
                    raise
    except ProbableAuthenticationError as exc:
        raise refused(url, exc) or BrokerRefused(str(exc)) from None
    except (AMQPConnectionError, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(
            unreachable_message(url, exc, round(time.monotonic() - started, 1))
        ) from None
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
