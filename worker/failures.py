"""What an operator reads when a command fails: one message, one documented exit status.

Every command's errors go through :func:`explain`, the one place that turns an exception into
the line printed on stderr (what failed, which file, server or URL, what to do; passwords
redacted) and the exit status (sysexits(3), so a systemd unit can say
``RestartPreventExitStatus=77 78``: retrying a bad inventory or password cannot help).
A traceback is printed only in debug mode (``--debug``, ``DHCP_FAILOVER_LOG_LEVEL=debug``).
"""

from __future__ import annotations

import os

import click
from pydantic import ValidationError

#: Exit statuses of operational errors (README, "Command line").
EXIT_UNAVAILABLE = 69  # broker or server not reachable (may fix itself: restart later)
EXIT_SOFTWARE = 70  # a bug: the message says so and --debug shows the traceback
EXIT_IOERR = 74  # a local file could not be read or written
EXIT_NOPERM = 77  # the broker refused our credentials or virtual host
EXIT_CONFIG = 78  # inventory or settings invalid


class OperatorError(click.ClickException):
    """A failure explained for the operator: printed as ``Error: <message>``, exit ``code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click's ClassVar, per instance here


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` or ``DHCP_FAILOVER_LOG_LEVEL=debug`` (read raw: the settings may be the very
    thing that failed)."""
    return flag or os.environ.get("DHCP_FAILOVER_LOG_LEVEL", "").strip().lower() == "debug"


def explain(exc: BaseException, amqp_url: str | None = None) -> OperatorError:
    """The operator's message and exit status for ``exc``."""
    from aiormq.exceptions import AMQPConnectionError

    from worker.consumer.client import RequestNotRouted
    from worker.consumer.connect import (
        BrokerRefused,
        BrokerUnavailable,
        refused,
        unreachable_message,
    )
    from worker.logging import redact_text
    from worker.transport.inventory import InventoryError

    if isinstance(exc, OperatorError):
        return exc
    if isinstance(exc, InventoryError):
        return OperatorError(
            f"{exc}. Fix the inventory (docs/contract.md §4); "
            "'dhcp-failover-worker check --inventory FILE' checks it",
            EXIT_CONFIG,
        )
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return OperatorError(_settings_message(exc), EXIT_CONFIG)
    if isinstance(exc, BrokerRefused):
        return OperatorError(str(exc), EXIT_NOPERM)
    if isinstance(exc, BrokerUnavailable | RequestNotRouted):
        return OperatorError(str(exc), EXIT_UNAVAILABLE)
    if amqp_url is not None and isinstance(exc, Exception):
        if (why := refused(amqp_url, exc)) is not None:
            return OperatorError(str(why), EXIT_NOPERM)
        if isinstance(exc, AMQPConnectionError | OSError | TimeoutError):
            return OperatorError(unreachable_message(amqp_url, exc, None), EXIT_UNAVAILABLE)
    if isinstance(exc, OSError) and exc.filename is not None:
        return OperatorError(
            f"cannot use {exc.filename}: {exc.strerror or exc} (check the path and its "
            "permissions)",
            EXIT_IOERR,
        )
    detail = redact_text(f"{type(exc).__name__}: {exc}")
    return OperatorError(
        f"internal error ({detail}); this is a bug: run again with --debug for the traceback "
        "and report it",
        EXIT_SOFTWARE,
    )


def _settings_message(exc: ValidationError) -> str:
    parts = []
    for item in exc.errors(include_url=False):
        name = "DHCP_FAILOVER_" + "_".join(str(p) for p in item["loc"]).upper()
        parts.append(f"{name}: {item['msg']}")
    return "invalid setting " + "; ".join(parts) + " (see the README's Configuration table)"
