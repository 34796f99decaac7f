"""``check --connect``: reach every server of an inventory the way a change would, and say how
far each one got, before a change finds out half-way through.

Per server, in parallel: an SSH connection (host key verified against the inventory's
known_hosts), the validate command run on the live config (it is there, and the live file
passes it), and with an ``omapi`` table the running state of every relationship the live
config declares. Nothing is written; no lock is taken.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from worker.change.planning import parse
from worker.change.snapshot import read_snapshot
from worker.errors import HostKeyMismatch, WorkerError
from worker.settings import Settings
from worker.transport.inventory import Inventory
from worker.transport.ssh import SshFleet, SshHost

OK = "ok"
SKIPPED = "-"


@dataclass
class ServerCheck:
    """One row of the table: ``ok``, ``-`` (not tried), or what went wrong."""

    server: str
    reachable: str = SKIPPED
    host_key: str = SKIPPED
    validate: str = SKIPPED
    omapi: str = SKIPPED
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def check_servers(inventory: Inventory, settings: Settings) -> list[ServerCheck]:
    """Check every server at once; never raises for a server's own trouble."""
    async with SshFleet(inventory, settings) as fleet:
        return list(
            await asyncio.gather(*(_check(fleet.host(name)) for name in sorted(inventory.servers)))
        )


async def _check(host: SshHost) -> ServerCheck:
    row = ServerCheck(host.name)
    try:
        result = await host.validate(host.config_path)
    except HostKeyMismatch as exc:
        row.reachable, row.host_key = OK, "rejected"
        row.problems.append(exc.message)
        return row
    except WorkerError as exc:
        row.reachable = "no"
        row.problems.append(exc.message)
        return row
    row.reachable = row.host_key = OK
    if result.ok:
        row.validate = OK
    elif result.exit_status == 127:
        row.validate = "not found"
        row.problems.append(f"{host.name}: validate command not found: {result.command}")
    else:
        row.validate = f"exit {result.exit_status}"
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        row.problems.append(
            f"{host.name}: the live config fails `{result.command}`"
            + (f": {tail[0]}" if tail else "")
        )
    if host.omapi is not None:
        row.omapi = await _omapi(host, row)
    return row


async def _omapi(host: SshHost, row: ServerCheck) -> str:
    """``NAME: state/partner-state`` for each relationship in the live config."""
    try:
        names = sorted(parse(await read_snapshot(host)).peers())
    except WorkerError as exc:
        row.problems.append(exc.message)
        return "config unreadable"
    if not names:
        return "no relationship"
    seen = []
    for name in names:
        try:
            state = await host.failover_state(name)
        except WorkerError as exc:
            row.problems.append(exc.message)
            return exc.code
        if state is None:
            row.problems.append(f"{host.name}: dhcpd runs no relationship {name!r}")
            seen.append(f"{name}: absent")
        else:
            seen.append(f"{name}: {state.local_state.label}/{state.partner_state.label}")
    return ", ".join(seen)
