"""Benchmark: changes per second and latency over K independent pairs, with 1 and 2 workers.

    python bench/throughput.py [--pairs 1,2,4,8,32] [--modifies 200] [--workers 1,2]
                               [--concurrency N] [--prefetch N] [--restart-seconds S]
                               [--py-spy DIR] [--amqp-url URL]

The rig (bench/rig.py): the largest K of sample pairs, each server its own loopback address
on a few sshds; real ``dhcpd -t`` validates, the restart command is a stand-in script (no dhcpd
runs: a restart costs a few milliseconds; ``--restart-seconds S`` makes each one wait S
seconds first, as a real restart does). The workers are real ``dhcp-failover-worker run``
processes on RabbitMQ, with names unique to the run; ``--concurrency`` / ``--prefetch``
override the worker's defaults (``DHCP_FAILOVER_CONCURRENCY`` / ``_PREFETCH``).

For each worker count, after a warm-up (every pair changed twice per worker, so that each
worker has its SSH connections and agents), and for each K: ``--modifies`` changes of
``max-response-delay`` spread over the first K pairs, one in flight per pair (a pair's next
change is published when its result arrives: two at once on one pair would serialise on the
pair's locks or fail ``concurrent_change``), every one a real change of both files with
validation and both restarts. Printed per K: changes per second (all changes / wall time from
the first publish to the last result), p50 / p95 of publish -> result event, and CPU
milliseconds per change of the workers, of the rig's servers (sshds and everything they run),
of RabbitMQ, of this process and of the rest of the machine (other jobs: the machine is
shared), from /proc.

``--py-spy DIR`` records every worker with ``py-spy record --gil`` (samples holding the GIL:
Python running, not waiting in a syscall) during each K, into DIR/<workers>w-k<K>-<pid>.txt
(collapsed stacks), and prints each file's samples by category (asyncssh, asyncio, the
worker's code, the config engine, logging, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aio_pika.abc import AbstractExchange

from bench.meters import broker_pid, cpu_meter, load_average
from bench.rig import (
    DEFAULT_AMQP,
    STAND_IN,
    WORKER_TREE,
    Figures,
    Requester,
    bench_settings,
    fleet_pairs,
    start_fleet,
    worker_processes,
)
from worker.demo.localhosts import LocalHosts
from worker.rollout.discovery import Pair
from worker.rollout.spec import Change

VALUES = (40, 41)  # max-response-delay alternates: every change really changes both files


@dataclass
class Driver:
    """Closed loop per pair: each pair's next change goes out when its last one answered."""

    requester: Requester
    exchange: AbstractExchange
    prefix: str
    current: dict[Pair, int] = field(default_factory=dict)
    sent: int = 0

    async def one(self, pair: Pair) -> float:
        """One change of ``pair``; milliseconds from publish to its result event."""
        self.sent += 1
        mrd = VALUES[1] if self.current.get(pair) == VALUES[0] else VALUES[0]
        body = Change.modify({"MaxResponseDelay": mrd}).body(
            pair, f"{self.prefix}-{self.sent}", False, "bench/throughput.py"
        )
        ms, reply = await self.requester.call(self.exchange, "request.modify", body)
        data = json.loads(reply)["data"]
        if data["outcome"] != "succeeded" or [s["changed"] for s in data["servers"]] != [
            True,
            True,
        ]:
            raise RuntimeError(f"{pair.primary}: {json.dumps(data)[:2000]}")
        self.current[pair] = mrd
        return ms

    async def run(self, pairs: Sequence[Pair], total: int) -> tuple[float, Figures]:
        """``total`` changes over ``pairs``: (wall seconds, latencies)."""
        latency = Figures("publish -> result")
        left = total

        async def loop(pair: Pair) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                latency.samples.append(await self.one(pair))

        started = time.perf_counter()
        await asyncio.gather(*(loop(p) for p in pairs))
        return time.perf_counter() - started, latency


@dataclass
class Row:
    workers: int
    pairs: int
    wall: float
    latency: Figures
    cpu: dict[str, float]
    load: str

    @property
    def rate(self) -> float:
        return len(self.latency.samples) / self.wall


def per_change_ms(row: Row, key: str) -> float:
    return row.cpu.get(key, 0.0) * 1000 / len(row.latency.samples)


def py_spy_binary() -> str:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"


@contextlib.contextmanager
def py_spy(directory: Path | None, label: str, pids: Sequence[int]) -> Iterator[None]:
    """``py-spy record`` of each pid while inside (nothing without a directory)."""
    if directory is None:
        yield
        return
    binary = py_spy_binary()
    directory.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
             "--output", str(directory / f"{label}-{pid}.txt"), "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]  # fmt: skip
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for spy in spies:
            spy.wait(30)


#: Where a py-spy sample's time goes: the first of these its stack meets, leaf first.
CATEGORIES = (
    (
        "socket send (syscall; on loopback the kernel's TCP for both ends)",
        ("selector_events.py:1057",),
    ),
    ("socket receive", ("_read_ready",)),
    ("SSH crypto", ("asyncssh/crypto", "cryptography/")),
    ("asyncssh: packets, channels, SFTP", ("asyncssh/",)),
    ("config engine (parse, edit, render, diff)", ("worker/dhcpconf",)),
    ("logging (structlog, JSON lines)", ("structlog/", "logging/", "json/")),
    ("pydantic (models, events)", ("pydantic",)),
    ("AMQP (aio-pika, aiormq, pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("worker code", ("worker/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py", "concurrent/futures")),
)
#: Leaf frames where a thread waits (py-spy may count such samples as active).
IDLE = ("EpollSelector.select", "concurrent/futures/thread.py:81")


def summarize_profile(path: Path) -> tuple[int, list[tuple[float, str]]]:
    """Busy samples of a ``py-spy --format raw`` file and their share per category."""
    found: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or any(idle in frames[-1] for idle in IDLE):
            continue
        category = next(
            (
                name
                for frame in reversed(frames)
                for name, keys in CATEGORIES
                if any(k in frame for k in keys)
            ),
            "other",
        )
        found[category] += int(count)
    total = sum(found.values())
    return total, [(n / total, name) for name, n in found.most_common()] if total else []


def print_profiles(directory: Path) -> None:
    for path in sorted(directory.glob("*.txt")):
        total, rows = summarize_profile(path)
        print(f"\npy-spy {path.name}: {total} busy samples (200/s), by category")
        for share, name in rows:
            print(f"  {share * 100:5.1f}%  {name}")


async def measure(args: argparse.Namespace, hosts: LocalHosts, workdir: Path) -> list[Row]:
    pairs = fleet_pairs(max(args.pairs))
    overrides = {
        k: v for k, v in (("concurrency", args.concurrency), ("prefetch", args.prefetch)) if v
    }
    rows: list[Row] = []
    current: dict[Pair, int] = {}  # each pair's max-response-delay, across the worker counts
    requester = Requester(args.amqp_url)
    await requester.open()
    try:
        for count in args.workers:
            settings = bench_settings(args.amqp_url, **overrides)
            async with worker_processes(
                settings, hosts.inventory_path, count, workdir / "logs"
            ) as ws:
                exchange = await requester.exchange(settings)
                driver = Driver(requester, exchange, settings.request_queue, current)
                print(
                    f"{count} worker(s) (concurrency {settings.concurrency}, prefetch "
                    f"{settings.prefetch}): warming up on {len(pairs)} pairs",
                    flush=True,
                )
                await driver.run(pairs, 2 * count * len(pairs))
                pids = {f"worker{i}": w.process.pid for i, w in enumerate(ws)}
                if (broker := broker_pid()) is not None:
                    pids["broker"] = broker
                for k in args.pairs:
                    load = load_average()
                    label = f"{count}w-k{k}"
                    spied = [w.process.pid for w in ws]
                    with py_spy(args.py_spy, label, spied), cpu_meter(pids, hosts) as cpu:
                        wall, latency = await driver.run(pairs[:k], args.modifies)
                    row = Row(count, k, wall, latency, cpu, load)
                    rows.append(row)
                    print(
                        f"  K={k:3d}: {row.rate:6.1f} changes/s  p50 {latency.median:6.1f} ms  "
                        f"p95 {latency.p95:6.1f} ms  (load {load})",
                        flush=True,
                    )
    finally:
        await requester.close()
    return rows


def report(rows: list[Row], args: argparse.Namespace, command: str) -> None:
    print(f"\n{STAND_IN}")
    if args.restart_seconds:
        print(f"each restart waits {args.restart_seconds:g} s first (--restart-seconds)")
    print(
        f"{args.modifies} modifies per K, one in flight per pair; CPU in ms per change; "
        f"worker tree {WORKER_TREE}"
    )
    print(
        f"{'workers':>7} {'K':>4} {'changes/s':>10} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'worker':>7} {'servers':>8} {'broker':>7} {'bench':>6} {'others':>7} {'machine':>8}"
        f"  load"
    )
    for r in rows:
        worker = sum(v for k, v in r.cpu.items() if k.startswith("worker"))
        ours = worker + sum(r.cpu.get(k, 0.0) for k in ("servers", "broker", "bench"))
        n = len(r.latency.samples)
        print(
            f"{r.workers:7d} {r.pairs:4d} {r.rate:10.1f} {r.latency.median:8.1f} "
            f"{r.latency.p95:8.1f} {worker * 1000 / n:7.1f} {per_change_ms(r, 'servers'):8.1f} "
            f"{per_change_ms(r, 'broker'):7.1f} {per_change_ms(r, 'bench'):6.1f} "
            f"{(r.cpu['machine'] - ours) * 1000 / n:7.1f} {per_change_ms(r, 'machine'):8.1f}"
            f"  {r.load}"
        )
    print(
        "worker: the worker processes; servers: the rig's sshds and all they run (agents, "
        "dhcpd -t, restart script); others: the rest of the machine (other jobs); machine: "
        "every core busy (2 cores: 2000 ms per second at most)"
    )
    by = {(r.workers, r.pairs): r for r in rows}
    for w in sorted({r.workers for r in rows}):
        if (w, 1) in by and (w, 8) in by:
            ratio = by[(w, 8)].rate / by[(w, 1)].rate
            print(f"  {w} worker(s): K=8 / K=1 = {ratio:4.2f}x   target >= 5x")
    for k in sorted({r.pairs for r in rows if r.pairs >= 8}):
        if (1, k) in by and (2, k) in by:
            ratio = by[(2, k)].rate / by[(1, k)].rate
            print(f"  K={k}: 2 workers / 1 worker = {ratio:4.2f}x   target > 1")
    if args.py_spy is not None:
        print_profiles(args.py_spy)
    print(f"\ncommand: {command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="1,2,4,8,32", help="the K values, comma-separated")
    parser.add_argument("--modifies", type=int, default=200, help="changes per K")
    parser.add_argument("--workers", default="1,2", help="worker process counts")
    parser.add_argument("--concurrency", type=int, default=0, help="override (0: the default)")
    parser.add_argument("--prefetch", type=int, default=0, help="override (0: the default)")
    parser.add_argument(
        "--restart-seconds",
        type=float,
        default=0.0,
        help="each stand-in restart waits this long first, as a real one does (default 0)",
    )
    parser.add_argument("--py-spy", type=Path, default=None, help="record the workers here")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    args = parser.parse_args(argv)
    args.pairs = [int(k) for k in args.pairs.split(",")]
    args.workers = [int(w) for w in args.workers.split(",")]
    command = "python bench/throughput.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    with tempfile.TemporaryDirectory(prefix="dfw-bench-tp-") as tmp:
        workdir = Path(tmp)
        count = max(args.pairs)
        print(f"starting {count} pairs ({2 * count} servers) under {workdir}", flush=True)
        with start_fleet(workdir / "fleet", count, restart_seconds=args.restart_seconds) as hosts:
            rows = asyncio.run(measure(args, hosts, workdir))
        report(rows, args, command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
