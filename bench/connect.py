"""Benchmark: what the machine spends on a worker's new SSH connections (a cold rollout's extra).

    python bench/connect.py [--pairs 100] [--parts]

The rollout rig's fleet (bench/rig.py: ``--pairs`` sample pairs, 200 servers on 13 sshds).
One :class:`~worker.transport.SshFleet`, as a worker holds it, opens a connection to every
server the way a worker's first change does: the SFTP session (a ``read`` of the config) and
the agent (a ``listdir``, which the agent answers). Printed: wall seconds, and CPU seconds of
the whole machine (``/proc/stat``) beside the CPU ``/proc`` attributes to processes alive then
(each with the children it has reaped), first while the connections stay open, then once
they are closed. The gap while they are open is CPU the sshds spent setting them up that no
live process's counters show yet; it appears once the connections close. bench/rollout.py's
*others* column in a cold run is mostly this: the workers' connections stay open.

``--parts`` then opens the fleet three times more, each time a step further, and prints the
machine's CPU per connection once they are closed: the SSH handshake alone, with the SFTP
session, with the agent too (and this process's own share of each).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from bench.meters import load_average, machine_busy_seconds
from bench.rig import DEFAULT_AMQP, bench_settings, start_fleet
from worker.demo.localhosts import LocalHosts
from worker.transport import SshFleet, load_inventory

_TICK = os.sysconf("SC_CLK_TCK")


def attributed_seconds() -> float:
    """CPU of every live process with the children it has reaped, machine-wide."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(v) for v in fields[11:15])
    return total / _TICK


async def measure(hosts: LocalHosts) -> None:
    settings = bench_settings(DEFAULT_AMQP, inventory=hosts.inventory_path)
    inventory = load_inventory(hosts.inventory_path)
    names = sorted(inventory.servers)
    busy, seen, started = machine_busy_seconds(), attributed_seconds(), time.perf_counter()
    async with SshFleet(inventory, settings) as fleet:
        await asyncio.gather(*(fleet.host(n).read(fleet.host(n).config_path) for n in names))
        await asyncio.gather(*(fleet.host(n).listdir("/") for n in names))
        wall = time.perf_counter() - started
        machine, processes = machine_busy_seconds() - busy, attributed_seconds() - seen
        print(f"{len(names)} connections opened (SFTP + agent) in {wall:.2f} s")
        print(
            f"  while open:   machine {machine:5.2f} CPU s, attributed {processes:5.2f}, "
            f"not yet attributed {machine - processes:5.2f}"
        )
    await asyncio.sleep(1.0)  # the sshds reap what the closed connections ran
    machine, processes = machine_busy_seconds() - busy, attributed_seconds() - seen
    print(
        f"  once closed:  machine {machine:5.2f} CPU s, attributed {processes:5.2f}, "
        f"not yet attributed {machine - processes:5.2f}"
    )
    print(f"  machine CPU per connection: {machine / len(names) * 1000:.1f} ms")


async def parts(hosts: LocalHosts) -> None:
    """Machine CPU per connection for each part of a worker's connection setup."""
    settings = bench_settings(DEFAULT_AMQP, inventory=hosts.inventory_path)
    inventory = load_inventory(hosts.inventory_path)
    names = sorted(inventory.servers)
    print("machine CPU per connection, once closed (this process's share):")
    for label, depth in (("handshake", 0), ("+ SFTP session", 1), ("+ agent", 2)):
        busy, own = machine_busy_seconds(), time.process_time()
        async with SshFleet(inventory, settings) as fleet:
            hosts_ = [fleet.host(n) for n in names]
            await asyncio.gather(*(h._connection() for h in hosts_))  # the bench looks inside
            if depth >= 1:
                await asyncio.gather(*(h.read(h.config_path) for h in hosts_))
            if depth >= 2:
                await asyncio.gather(*(h.listdir("/") for h in hosts_))
        own = time.process_time() - own
        await asyncio.sleep(1.0)
        machine = machine_busy_seconds() - busy
        print(
            f"  {label:<16} {machine / len(names) * 1000:5.1f} ms"
            f"  ({own / len(names) * 1000:4.1f} ms)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--parts", action="store_true", help="then each part's CPU alone")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the transport's debug lines, one per connection
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    print(f"load {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dfw-bench-connect-") as tmp:
        hosts = start_fleet(Path(tmp), args.pairs)
        try:
            asyncio.run(measure(hosts))
            if args.parts:
                asyncio.run(parts(hosts))
        finally:
            hosts.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
