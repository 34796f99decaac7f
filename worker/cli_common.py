"""What the commands share: the settings, the modify flags, and consoles for tables.

Its own module because :mod:`worker.rollout.cli` is registered by :mod:`worker.cli`, so neither
may import the other at load time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

    from worker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

#: Width of the tables when their stream is not a terminal (two FQDNs and an error code fit).
PIPE_WIDTH = 400

#: ``ctx.meta`` key of the broker URL a command uses: what a connection error is about.
AMQP_URL_KEY = "dhcp_failover.amqp_url"

#: The settings of ``ModifyDHCPFailoverRelationship`` as flags (``Name`` and the servers
#: aside): ``publish modify`` and ``rollout modify`` take the same ones.
MODIFY_FLAGS = (
    click.option("--mclt", type=int, help="Mclt, seconds (primary only)."),
    click.option("--port", type=int, help="Port: primary's port, secondary's peer port."),
    click.option("--partner-port", type=int, help="PartnerPort: secondary's port (default: Port)."),
    click.option("--load-balance-max-seconds", type=int, help="LoadBalanceMaxSeconds."),
    click.option("--max-response-delay", type=int, help="MaxResponseDelay, seconds."),
    click.option("--max-unacked-updates", type=int, help="MaxUnackedUpdates."),
)


#: ``RemoveDHCPFailoverRelationships``' DeconfigureAction, for ``publish`` and ``rollout``.
deconfigure_action = click.option(
    "--deconfigure-action",
    type=click.Choice(["None", "Disable", "Delete"]),
    default="Disable",
    show_default=True,
    help="What happens to the secondary's scopes (DeconfigureAction).",
)


def modify_flags(f: F) -> F:
    """Add :data:`MODIFY_FLAGS` to a command."""
    for option in reversed(MODIFY_FLAGS):
        f = option(f)
    return f


def settings_for(ctx: click.Context) -> Settings:
    """The settings from the environment; remembers the broker URL for error messages."""
    from worker.settings import Settings

    settings = Settings()
    ctx.meta[AMQP_URL_KEY] = settings.amqp_url
    return settings


def console(*, stderr: bool) -> Console:
    """A rich console on stdout or stderr. Not a terminal (a pipe, a log): as wide as the rows
    need, never cut to 80 columns (a table's long cells one word per line)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, soft_wrap=True, width=width)
