"""What the ``publish`` and ``rollout`` commands share: the settings, and the modify flags.

Its own module because :mod:`worker.rollout.cli` is registered by :mod:`worker.cli`, so neither
may import the other at load time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from worker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

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
