"""Benchmark: what one agent request costs, beside the same command written to a bare shell.

    python bench/agent.py [--samples 200] [--login]

Two local sshd hosts (worker.demo.localhosts, the sample configs, ``--login``: root's own
login instead of an empty ``HOME``). On one warm connection: the worker's agent
(worker/transport/agent.py) in each of its two timed modes, started as the worker starts it —
``jobs`` (bash in POSIX mode, which this machine has) and ``timeout`` (``/bin/sh`` and GNU
``timeout``, as on a server without bash; tests/transport/support.py's ``AGENT_MODES``) — and
a bare ``/bin/sh`` started beside them, which runs each command as ``CMD </dev/null
>/dev/null 2>&1; echo <marker> $?`` (what bench/e2e.py's floor/sh does). Every figure is the
median / p95 of ``--samples`` requests, one at a time, after 10 not counted:

* ``run true``: the fixed cost of one ``run`` request. In its own process group, with a
  server-side time limit and a watcher subshell that kills that group if the channel closes:
  ``jobs`` forks a subshell that evaluates the body; ``timeout`` runs ``timeout ... /bin/sh -c
  BODY`` (two execs). The bare shell runs the builtin in-process.
* ``validate``: the host's ``validate_command`` on its live file (``dhcpd -t``).
* ``restart``: ``restart_command && verify_command``, as the worker's commit sends it.
* ``lock + unlock``: the change lock (``flock -w 0`` on fd 9, then closing it): two requests.
* ``list``: the journal directory listing (shell builtins in a subshell).

A change runs three ``run`` requests one after the other on its critical path (the two
validations at once, then each server's restart) and one lock per server: the difference
between an agent's row and the bare shell's, times that, is what the agent's guarantees cost
a change's latency.
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


from bench.meters import load_average
from tests.transport.support import AGENT_MODES, raw_connection
from worker.demo import SAMPLE_ADDRESSES, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.transport import ServerEntry, load_inventory
from worker.transport.agent import Agent

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
    conn = await raw_connection(server)
    try:
        agents = {
            mode: await Agent.start(
                conn, await conn.create_process(AGENT_MODES[mode], encoding=None), 30
            )
            for mode in ("jobs", "timeout")
        }
        shell = await conn.create_process("exec /bin/sh")

        async def bare_sh(command: str) -> int:
            shell.stdin.write(f"{command} </dev/null >/dev/null 2>&1; echo __bench $?\n")
            await shell.stdout.readuntil("__bench ")
            return int(await shell.stdout.readline())

        async def lock_unlock(agent: Agent) -> None:
            await agent.request("lock", "0", lock_path, 30)
            await agent.request("unlock", "", "", 30)

        directory = posixpath.dirname(server.config_path)
        lock_path = posixpath.join(directory, ".dfw-bench-agent.lock")
        validate = server.validate_command.replace("{path}", server.config_path)
        restart = f"{server.restart_command} && {server.verify_command}"

        def cases(agent: Agent) -> list[tuple[str, Request]]:
            return [
                ("run true", lambda: agent.run("true", 30)),
                ("validate", lambda: agent.run(validate, 30)),
                ("restart", lambda: agent.run(restart, 30)),
                ("lock + unlock", lambda: lock_unlock(agent)),
                ("list", lambda: agent.request("list", "", directory, 30)),
            ]

        bare: dict[str, Request] = {
            "run true": lambda: bare_sh("true"),
            "validate": lambda: bare_sh(validate),
            "restart": lambda: bare_sh(restart),
            "lock + unlock": lambda: bare_sh(f"flock -w 0 {lock_path} true"),
            "list": lambda: bare_sh("ls -a"),
        }
        rows = []
        for name, _ in cases(agents["jobs"]):
            for mode, agent in agents.items():
                request = dict(cases(agent))[name]
                rows.append((name, mode, *await timed(request, samples)))
            rows.append((name, "bare sh", *await timed(bare[name], samples)))
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
    for mode in ("jobs", "timeout"):
        extra = medians[("run true", mode)] - medians[("run true", "bare sh")]
        print(f"\nfixed cost of one run ({mode}) over a bare shell: {extra:.2f} ms", end="")
    print()
    print(f"load {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
