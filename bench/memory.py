"""Benchmark: the worker's memory with 1,000 requests queued, and across 10,000 processed.

    python bench/memory.py [--pairs 4] [--queued 1000] [--processed 10000] [--batch 1000]
                           [--amqp-url URL]

One ``dhcp-failover-worker run`` process (default settings, names unique to the run) on a rig
of ``--pairs`` sample pairs (bench/rig.py; real ``dhcpd -t``, a stand-in restart script). The
requests are cheap on purpose: modifies that change nothing (``MaxResponseDelay`` 60, what the
sample configs hold), spread over the pairs. Each one is read, planned (both configs read over
SFTP and parsed, the journal directory listed) and answered ``succeeded`` / ``changed: false``
with nothing written (a modify's locks, tried before it plans, are released), so thousands
go through in a few minutes.

1. **queued**: ``--queued`` requests are published *before* the worker starts; then the worker
   starts and works the queue down (it holds ``DHCP_FAILOVER_PREFETCH`` of them at a time).
2. **processed**: ``--processed`` more, ``--batch`` published at once, the next batch when all
   of the last are answered.

Printed: RSS (``VmRSS`` of /proc/<pid>/status, sampled every 50 ms) when the worker started
consuming, the highest sample and the last of each phase, the RSS after every batch, and the
kernel's high-water mark (``VmHWM``). Target: at most 100 MB, and flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aio_pika.abc import AbstractExchange

from bench.meters import load_average, rss_mb
from bench.rig import (
    DEFAULT_AMQP,
    STAND_IN,
    Requester,
    bench_settings,
    fleet_pairs,
    start_fleet,
    worker_processes,
)
from worker.rollout.discovery import Pair
from worker.rollout.spec import Change

NO_CHANGE = Change.modify({"MaxResponseDelay": 60})  # the sample configs' value


@dataclass
class Sampler:
    """VmRSS of one process every ``interval`` seconds, while running."""

    pid: int
    interval: float = 0.05
    samples: list[tuple[float, float]] = field(default_factory=list)  # (time, MB)

    async def run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), rss_mb(self.pid)[0]))
            await asyncio.sleep(self.interval)

    def since(self, start: float) -> list[float]:
        return [mb for t, mb in self.samples if t >= start]


@dataclass
class Publisher:
    requester: Requester
    exchange: AbstractExchange
    prefix: str
    pairs: list[Pair]

    async def publish(self, first: int, count: int) -> list[asyncio.Future[bytes]]:
        """``count`` no-change modifies, round robin over the pairs; their reply futures."""
        pairs = self.pairs
        bodies = [
            NO_CHANGE.body(pairs[i % len(pairs)], f"{self.prefix}-{i}", False, "bench/memory.py")
            for i in range(first, first + count)
        ]
        sends = (self.requester.send(self.exchange, "request.modify", b) for b in bodies)
        return list(await asyncio.gather(*sends))


async def answered(futures: list[asyncio.Future[bytes]]) -> None:
    for reply in await asyncio.wait_for(asyncio.gather(*futures), 600):
        data = json.loads(reply)["data"]
        if data["outcome"] != "succeeded" or any(s["changed"] for s in data["servers"]):
            raise RuntimeError(json.dumps(data)[:2000])


async def measure(args: argparse.Namespace, inventory: Path, workdir: Path) -> None:
    settings = bench_settings(args.amqp_url)
    prefix = settings.request_queue
    requester = Requester(args.amqp_url)
    await requester.open()
    try:
        exchange = await requester.exchange(settings)  # the queue exists before the worker
        publisher = Publisher(requester, exchange, prefix, fleet_pairs(args.pairs))
        queued = await publisher.publish(0, args.queued)
        print(f"{args.queued} requests queued; starting the worker", flush=True)
        async with worker_processes(settings, inventory, 1, workdir / "logs") as workers:
            pid = workers[0].process.pid
            sampler = Sampler(pid)
            sampling = asyncio.create_task(sampler.run())
            started = time.monotonic()
            await asyncio.sleep(0)
            await answered(queued)
            phase1 = sampler.since(started)
            took = time.monotonic() - started
            print(
                f"1. queued: {args.queued} answered in {took:.1f} s; RSS start "
                f"{phase1[0]:.1f} MB, peak {max(phase1):.1f} MB, end {phase1[-1]:.1f} MB "
                f"(load {load_average()})",
                flush=True,
            )
            second = time.monotonic()
            after: list[float] = []
            done = args.queued
            while done < args.queued + args.processed:
                count = min(args.batch, args.queued + args.processed - done)
                await answered(await publisher.publish(done, count))
                done += count
                after.append(rss_mb(pid)[0])
                print(f"   {done - args.queued:6d} processed: RSS {after[-1]:.1f} MB", flush=True)
            phase2 = sampler.since(second)
            took = time.monotonic() - second
            hwm = rss_mb(pid)[1]
            sampling.cancel()
        rate = args.processed / took
        print(f"\n{STAND_IN}")
        print(
            f"requests: modifies that change nothing, over {args.pairs} pairs; one worker, "
            f"prefetch {settings.prefetch}, concurrency {settings.concurrency}"
        )
        print(
            f"1. {args.queued} queued before the worker started: RSS start {phase1[0]:.1f} MB, "
            f"peak {max(phase1):.1f} MB, end {phase1[-1]:.1f} MB"
        )
        print(
            f"2. {args.processed} processed ({rate:.0f}/s, {args.batch} queued at a time): "
            f"RSS start {phase2[0]:.1f} MB, peak {max(phase2):.1f} MB, end {phase2[-1]:.1f} MB; "
            f"after each batch {', '.join(f'{mb:.0f}' for mb in after)} MB"
        )
        print(f"   VmHWM (the kernel's peak over the whole run) {hwm:.1f} MB   target <= 100 MB")
        growth = after[-1] - after[0] if after else 0.0
        print(f"   growth from the first batch to the last: {growth:+.1f} MB   target: flat")
    finally:
        await requester.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--processed", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    args = parser.parse_args(argv)
    command = "python bench/memory.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    with tempfile.TemporaryDirectory(prefix="dfw-bench-mem-") as tmp:
        workdir = Path(tmp)
        with start_fleet(workdir / "fleet", args.pairs) as hosts:
            asyncio.run(measure(args, hosts.inventory_path, workdir))
    print(f"\ncommand: {command.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
