"""Helpers for the transport tests on real sshd: a fleet of the primary with changed inventory
fields, and the processes the stand-in hosts' sshds started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from worker.demo import PRIMARY
from worker.demo.localhosts import LocalHosts
from worker.demo.processes import tagged_pids
from worker.transport import ServerEntry, SshFleet, SshOptions, parse_inventory
from worker.transport.agentscript import AGENT_COMMAND

FAST = SshOptions(connect_timeout=5, command_timeout=5, keepalive_interval=5)

#: The agent's start command as a server without bash (``timeout``: GNU timeout keeps the time
#: limit) and without bash or GNU timeout (``""``) starts it; ``jobs`` is the command itself
#: (bash is on every machine these tests run on).
AGENT_MODES = {
    "jobs": AGENT_COMMAND,
    "timeout": AGENT_COMMAND.replace("command -v bash", "command -v dfw-no-such-bash"),
    "": AGENT_COMMAND.replace("command -v bash", "command -v dfw-no-such-bash").replace(
        "command -v timeout", "command -v dfw-no-such-timeout"
    ),
}
assert len(set(AGENT_MODES.values())) == 3, "the agent's mode checks were renamed"


async def raw_connection(server: ServerEntry) -> asyncssh.SSHClientConnection:
    """A bare asyncssh connection to an inventory server, outside the worker's transport (as
    a hand-written script would open one; the benchmarks' floors use it too)."""
    return await asyncssh.connect(
        server.host,
        server.port,
        username=server.username,
        client_keys=[str(k) for k in server.client_keys],
        known_hosts=str(server.known_hosts),
        config=None,
        agent_path=None,
    )


def primary_entry(hosts: LocalHosts, **changes: Any) -> dict[str, Any]:
    """The primary's inventory entry with ``changes`` applied (a None value drops the field)."""
    raw: dict[str, Any] = tomllib.loads(hosts.inventory_path.read_text())["servers"][PRIMARY]
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def fleet_for(hosts: LocalHosts, options: SshOptions = FAST, **changes: Any) -> SshFleet:
    """A fleet of the primary alone, its entry changed as :func:`primary_entry` does."""
    raw = {"servers": {PRIMARY: primary_entry(hosts, **changes)}}
    return SshFleet(parse_inventory(raw, hosts.inventory_path), options)


def inventory_file(hosts: LocalHosts, name: str, **changes: Any) -> Path:
    """The same as a file beside the hosts' own inventory (relative key paths still hold), for
    a worker in another process."""
    path = hosts.base_dir / name
    entry = primary_entry(hosts, **changes)
    lines = [f"[servers.{json.dumps(PRIMARY)}]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def processes(hosts: LocalHosts, needle: str) -> list[int]:
    """Processes the hosts' sshds started whose command line contains ``needle`` (a zombie
    has none)."""
    found = []
    for pid in tagged_pids(hosts.token):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if needle.encode() in cmdline:
                found.append(pid)
    return found


async def gone(hosts: LocalHosts, needle: str, within: float) -> bool:
    """True once no process matching ``needle`` is left, polling for up to ``within`` s."""
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        if not processes(hosts, needle) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return not processes(hosts, needle)


async def wait_until_locked(process: asyncio.subprocess.Process, within: float = 20) -> None:
    """Read a lock-holding child's stdout until it prints ``locked`` (debug log lines may come
    first); fail if it exits before."""
    assert process.stdout is not None
    async with asyncio.timeout(within):
        while line := await process.stdout.readline():
            if line.strip() == b"locked":
                return
    pytest.fail("the process exited without taking the lock")
