"""The floor of bench/e2e.py: a minimal hand-written asyncssh change, to compare the worker
with (read both files, write both candidates, validate both, rename and restart), over
connections, SFTP sessions and shells opened before anything is timed."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncssh

from tests.transport.support import raw_connection
from worker.demo.localhosts import LocalHosts
from worker.transport import ServerEntry, load_inventory

MRD = re.compile(rb"max-response-delay \d+;")


@dataclass
class FloorHost:
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    path: str
    candidate: str
    validate: str
    restart: str
    shell: asyncssh.SSHClientProcess[str] | None = None


Runner = Callable[[FloorHost, str], Awaitable[int]]


async def run_exec(host: FloorHost, command: str) -> int:
    """One exec per command: what ``conn.run`` does (the login shell starts every time)."""
    result = await host.conn.run(command, check=False)
    return int(result.exit_status or 0) if result.exit_signal is None else -1


async def run_in_shell(host: FloorHost, command: str) -> int:
    """The command written to a ``/bin/sh`` started beforehand on this connection."""
    assert host.shell is not None
    host.shell.stdin.write(f"{command} </dev/null >/dev/null 2>&1; echo __floor $?\n")
    await host.shell.stdout.readuntil("__floor ")
    return int(await host.shell.stdout.readline())


async def floor_change(
    hosts: Sequence[FloorHost], mrd: int, run: Runner, *, serial: bool = False
) -> None:
    """Read both, write both candidates, validate both, then rename and restart on both at
    once (``serial``: one server after the other, as the worker's commit must)."""

    async def read(h: FloorHost) -> bytes:
        async with h.sftp.open(h.path, "rb") as f:
            data: bytes = await f.read()
            return data

    async def stage(h: FloorHost, text: bytes) -> None:
        async with h.sftp.open(h.candidate, "wb") as f:
            await f.write(MRD.sub(b"max-response-delay %d;" % mrd, text))

    async def commit(h: FloorHost) -> None:
        await h.sftp.posix_rename(h.candidate, h.path)
        if await run(h, h.restart) != 0:
            raise RuntimeError(f"floor: restart failed: {h.restart}")

    texts = await asyncio.gather(*(read(h) for h in hosts))
    await asyncio.gather(*(stage(h, t) for h, t in zip(hosts, texts, strict=True)))
    if any(await asyncio.gather(*(run(h, h.validate) for h in hosts))):
        raise RuntimeError("floor: a candidate failed validation")
    if serial:
        for h in hosts:
            await commit(h)
    else:
        await asyncio.gather(*(commit(h) for h in hosts))


async def open_floor_hosts(hosts: LocalHosts) -> list[FloorHost]:
    """Connections, SFTP sessions and shells, all opened before anything is timed."""
    servers = load_inventory(hosts.inventory_path).servers.values()
    return list(await asyncio.gather(*(_floor_host(s) for s in servers)))


def close_floor_hosts(hosts: Sequence[FloorHost]) -> None:
    for h in hosts:
        if h.shell is not None:
            h.shell.close()
        h.conn.close()


async def _floor_host(s: ServerEntry) -> FloorHost:
    conn = await raw_connection(s)
    directory, name = os.path.split(s.config_path)
    candidate = os.path.join(directory, f".{name}.floor")
    restart = s.restart_command
    if s.verify_command:
        restart = f"{restart} && {s.verify_command}"
    return FloorHost(
        conn=conn,
        sftp=await conn.start_sftp_client(),
        path=s.config_path,
        candidate=candidate,
        validate=s.validate_command.replace("{path}", shlex.quote(candidate)),
        restart=restart,
        shell=await conn.create_process("exec /bin/sh"),
    )
