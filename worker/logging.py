"""Structured logs: JSON lines for machines, readable lines for people, never a secret.

Everything goes through the stdlib root logger, so the lines of aio-pika, asyncssh and our own
structlog calls come out in one format. Request context (``requestId``, ``relationship``,
``server``) lives in contextvars: bound once per message in the consumer task, it is on every
line the coordinator and transport log for that message, without passing loggers around.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit, urlunsplit

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.settings import Settings

LogFormat = Literal["auto", "json", "console"]

REDACTED = "***"
#: Keys whose values are never written, whatever they hold.
SECRET_KEYS = frozenset(
    {"password", "passwd", "passphrase", "secret", "token", "authorization", "private_key"}
)
#: ``scheme://user:password@`` anywhere in a string.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s@/]*@")

_HANDLER_NAME = "dhcp-failover-worker"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (user, host, vhost and query kept)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` in free text, password replaced."""
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in SECRET_KEYS:
        return REDACTED
    if isinstance(value, str) and "://" in value:
        return redact_text(value)
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last line of defence against a password in a log line."""
    return {k: _redact_value(k, v) for k, v in event_dict.items()}


def _resolve_format(log_format: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    if log_format != "auto":
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "console" if callable(isatty) and isatty() else "json"


def configure_logging(
    settings: Settings | None = None,
    *,
    log_format: LogFormat | None = None,
    level: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (replaces ours).

    ``auto`` picks console lines when ``stream`` (default stderr) is a terminal, JSON lines
    otherwise. Explicit arguments win over ``settings``.
    """
    settings = settings or Settings()
    stream = stream if stream is not None else sys.stderr
    fmt = _resolve_format(log_format or settings.log_format, stream)
    level_no = logging.getLevelName((level or settings.log_level).upper())

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        final += [
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ]
    else:
        final += [redact_secrets, structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)

    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    # asyncssh logs every channel open/close at INFO: a line per SFTP call drowns the change's
    # own story. Its warnings and errors still come through; DEBUG shows everything.
    quiet = logging.DEBUG if level_no <= logging.DEBUG else max(level_no, logging.WARNING)
    logging.getLogger("asyncssh").setLevel(quiet)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named like a stdlib one (``worker.consumer.app``)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


@contextmanager
def bind_request(
    request_id: str | None = None,
    relationship: str | None = None,
    server: str | None = None,
    **extra: Any,
) -> Iterator[None]:
    """Bind ``requestId``, ``relationship`` and ``server`` to every line logged inside.

    Context variables are per task, so concurrent requests never see each other's ids.
    """
    values: MutableMapping[str, Any] = {
        "requestId": request_id,
        "relationship": relationship,
        "server": server,
        **extra,
    }
    with structlog.contextvars.bound_contextvars(
        **{k: v for k, v in values.items() if v is not None}
    ):
        yield
