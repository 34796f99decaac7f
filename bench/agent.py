"""Benchmark: what one agent request costs, beside the same command written to a bare shell.

    python bench/agent.py [--samples 200] [--login]

Two local sshd hosts (worker.demo.localhosts, the sample configs, ``--login``: root's own
login instead of an empty ``HOME``). On one warm connection: the worker's agent
(worker/transport/agent.py, started as the worker starts it) and a bare ``/bin/sh`` started
beside it, which runs each command as ``CMD </dev/null >/dev/null 2>&1; echo <marker> $?``
(what bench/e2e.py's floor/sh does). Every figure is the median / p95 of ``--samples``
requests, one at a time, after 10 not counted:

* ``run true``: the fixed cost of one ``run`` request. The agent runs the body under GNU
  ``timeout`` (a server-side time limit, its own process group) through ``/bin/sh -c``, with a
  watcher subshell that kills that group if the channel closes; the bare shell runs the
  builtin in-process.
* ``validate``: the host's ``validate_command`` on its live file (``dhcpd -t``).
* ``restart``: ``restart_command && verify_command``, as the worker's commit sends it.
* ``lock + unlock``: the change lock (``flock -w 0`` on fd 9, then closing it): two requests.
* ``list``: the journal directory listing (shell builtins in a subshell).

A change runs three ``run`` requests one after the other on its critical path (the two
validations at once, then each server's restart) and one lock per server: the difference
between the two columns, times that, is what the agent's guarantees cost a change's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import posixpath
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh

from bench.meters import load_average
from worker.demo import SAMPLE_ADDRESSES, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.transport import ServerEntry, load_inventory
from worker.transport.agent import AGENT_COMMAND, Agent

Request = Callable[[], Awaitable[object]]


async def timed(request: Request, samples: int) -> tuple[float, float]:
    """Median and p95 milliseconds of ``samples`` requests (10 more first, not counted)."""
    times = []
    for i in range(samples + 10):
        started = time.perf_counter()
        await request()
        if i >= 10:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=20)[-1]


async def measure(server: ServerEntry, samples: int) -> list[tuple[str, str, float, float]]:
    conn = await asyncssh.connect(
        server.host,
        server.port,
        username=server.username,
        client_keys=[str(k) for k in server.client_keys],
        known_hosts=str(server.known_hosts),
        config=None,
        agent_path=None,
    )
    try:
        agent = await Agent.start(conn, await conn.create_process(AGENT_COMMAND, encoding=None), 30)
        shell = await conn.create_process("exec /bin/sh")

        async def bare(command: str) -> int:
            shell.stdin.write(f"{command} </dev/null >/dev/null 2>&1; echo __bench $?\n")
            await shell.stdout.readuntil("__bench ")
            return int(await shell.stdout.readline())

        async def lock_unlock() -> None:
            await agent.request("lock", "0", lock_path, 30)
            await agent.request("unlock", "", "", 30)

        directory = posixpath.dirname(server.config_path)
        lock_path = posixpath.join(directory, ".dfw-bench-agent.lock")
        validate = server.validate_command.replace("{path}", server.config_path)
        restart = f"{server.restart_command} && {server.verify_command}"
        cases: list[tuple[str, Request, Request | None]] = [
            ("run true", lambda: agent.run("true", 30), lambda: bare("true")),
            ("validate", lambda: agent.run(validate, 30), lambda: bare(validate)),
            ("restart", lambda: agent.run(restart, 30), lambda: bare(restart)),
            ("lock + unlock", lock_unlock, lambda: bare(f"flock -w 0 {lock_path} true")),
            ("list", lambda: agent.request("list", "", directory, 30), lambda: bare("ls -a")),
        ]
        rows = []
        for name, with_agent, with_shell in cases:
            rows.append((name, "agent", *await timed(with_agent, samples)))
            if with_shell is not None:
                rows.append((name, "bare sh", *await timed(with_shell, samples)))
        return rows
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--login", action="store_true", help="root's login, not an empty HOME")
    args = parser.parse_args(argv)
    print(f"load {load_average()}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="dfw-bench-agent-") as tmp,
        LocalHosts.start(
            Path(tmp), sample_configs(), addresses=SAMPLE_ADDRESSES, plain_login=not args.login
        ) as hosts,
    ):
        server = next(iter(load_inventory(hosts.inventory_path).servers.values()))
        rows = asyncio.run(measure(server, args.samples))
    print(f"\n{'request':16}{'via':10}{'median':>10}{'p95':>10}")
    for name, via, median, p95 in rows:
        print(f"{name:16}{via:10}{median:8.2f}ms{p95:8.2f}ms")
    medians = {(name, via): median for name, via, median, _ in rows}
    extra = medians[("run true", "agent")] - medians[("run true", "bare sh")]
    print(f"\nfixed cost of one agent run over a bare shell: {extra:.2f} ms")
    print(f"load {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
