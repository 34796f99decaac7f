"""Benchmark: publish -> result event latency of a warm worker, beside its floor and Ansible.

    python bench/e2e.py [--modifies 60] [--ansible-runs 5] [--steps 20] [--pause MS]
                        [--plain-login] [--amqp-url URL]

Two OpenSSH servers on 127.0.0.1 stand in for the DHCP pair (worker.demo.localhosts: the sample
configs, the real ``dhcpd -t`` as validator, a restart script that records each restart), and
every figure is the same change on the same two files: ``max-response-delay`` on both servers,
alternating between two values so that each run really changes, validates and restarts.
They log in as the user running the bench (root here, whose ``.bashrc`` runs pyenv's init on
every exec); ``--plain-login`` gives their sessions an empty ``HOME`` instead, as a service
account on a real DHCP host would have: then an exec costs milliseconds, not a tenth of a second.

* **worker**: ``worker.service.serve`` in this process against RabbitMQ (own exchange and
  queue names, deleted at the end). A request goes to the request exchange with ``reply_to``;
  the latency runs from ``publish`` to the result event arriving on the reply queue. Warm:
  the first requests (not counted) open the SSH connections and agent shells. The worker logs
  at ``info`` as JSON lines, to a file, as it would in production.
* **floor**: a minimal hand-written asyncssh script making the same change over connections
  (and SFTP sessions) opened beforehand: read both files, write both candidates, validate
  both with ``validate_command``, then on both at once rename and restart (``conn.run`` per
  command, as anyone would write it). **floor/sh** is the same script sending its commands
  to a ``/bin/sh`` started beforehand on each connection: what is left once the login shell's
  start-up files are not paid per command.
  **floor/sh serial** commits one server after the other (rename, restart, verify; then the
  next), as the worker's commit does (docs/design.md), so that a failover pair never has
  both peers restarting at once and a failure on the first is undone before the second
  changes: the floor for a change made the way this product must make it. **floor serial**
  is the same serial commit with ``conn.run`` per command. The targets are taken against the
  serial floors (the issue's "serial floor + broker round trip"); ``ansible / floor/sh
  serial`` is the most any tool committing one peer after the other could reach here.
* **broker**: the bare RabbitMQ request/result round trip on a warm connection: a persistent
  request to a quorum queue, a trivial consumer answering on ``reply_to`` with confirms.
* **ansible**: ``ansible-playbook`` with ``replace`` (``validate:`` the hosts' ``dhcpd -t``
  script) and then the restart script, pipelining and ControlPersist on, host keys checked
  against the same known_hosts; each run timed whole, as an operator would run it
  (bench/playbook.py).
* **steps**: after the rest, ``--steps`` more worker changes with every server call timed
  (bench/steps.py): each change's publish -> result window cut into intake, plan, lock,
  recheck, stage, validate, journal, backup, rename, restart, record, cleanup and the
  worker's own time between server calls; printed as shares, milliseconds and calls per
  change. Not part of the figures above.

Worker, floor and broker samples are taken in interleaved blocks so that a change in the
machine's load affects them alike. Everything started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench.floor import (
    close_floor_hosts,
    floor_change,
    open_floor_hosts,
    run_exec,
    run_in_shell,
)
from bench.playbook import playbook, plays
from bench.rig import DEFAULT_AMQP, Figures, Requester, bench_settings
from bench.steps import Shares, Window, print_shares, received_at, shares, timing
from worker.consumer.topology import declare_topology
from worker.demo import PRIMARY, RELATIONSHIP, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.messages import MODIFY_COMMAND
from worker.service import serve

# -- the worker --------------------------------------------------------------------------------


class WorkerBench:
    """The real worker in this process, fed through the broker; one change per call."""

    def __init__(self, inventory: Path, url: str, log: TextIO) -> None:
        self.settings = bench_settings(url, inventory=inventory)
        self.prefix = self.settings.request_queue
        self.log = log
        self.latency = Figures("worker")
        self.inside = Figures("worker, change itself")
        self.windows: list[Window] = []  # every change's publish and reply (wall clock)
        self._count = 0

    async def start(self, requester: Requester) -> None:
        self.requester = requester
        self.stop = asyncio.Event()
        with contextlib.redirect_stderr(self.log):  # the worker's log lines go to the file
            self.task = asyncio.create_task(serve(self.settings, self.stop), name="worker")
            await asyncio.sleep(0.1)
        topology = await declare_topology(requester.channel, self.settings)
        self.exchange = topology.request_exchange

    async def change(self, mrd: int, *, record: bool = True) -> None:
        self._count += 1
        request_id = f"{self.prefix}-{self._count}"
        body = {
            "requestId": request_id,
            "command": MODIFY_COMMAND,
            "params": {
                "Name": RELATIONSHIP,
                "PrimaryServer": PRIMARY,
                "SecondaryServer": SECONDARY,
                "MaxResponseDelay": mrd,
            },
        }
        ms, reply = await self.requester.call(self.exchange, "request.modify", body)
        replied = time.time()
        data = json.loads(reply)["data"]
        changed = [s["changed"] for s in data["servers"]]
        if data["outcome"] != "succeeded" or changed != [True, True]:
            raise RuntimeError(f"worker change {self._count}: {json.dumps(data)[:2000]}")
        self.windows.append(Window(request_id, replied - ms / 1000, replied))
        if record:
            self.latency.samples.append(ms)
            self.inside.samples.append(float(data["durationMs"]))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 60)
        s = self.settings
        channel = await self.requester.connection.channel()
        for queue in (s.request_queue, s.dead_letter_queue):
            await channel.queue_delete(queue)
        for exchange in (s.request_exchange, s.dead_letter_exchange, s.event_exchange):
            await channel.exchange_delete(exchange)
        await channel.close()


# -- the bare broker round trip ------------------------------------------------------------------


class BrokerBench:
    """A trivial responder on a quorum queue: the broker's share of the worker's latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"dfw-bench-rtt-{uuid.uuid4().hex[:8]}"
        self.figures = Figures("broker")

    async def start(self, requester: Requester) -> None:
        self.requester = requester
        self.connection = await aio_pika.connect(self.url)
        channel = await self.connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(self.prefix, aio_pika.ExchangeType.TOPIC)
        self.queue = await channel.declare_queue(
            self.prefix, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await self.queue.bind(exchange, "request.#")
        self.exchange = await requester.channel.get_exchange(self.prefix)

        async def answer(message: AbstractIncomingMessage) -> None:
            reply = aio_pika.Message(
                b"{}",
                correlation_id=message.correlation_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(reply, message.reply_to or "")
            await message.ack()

        await self.queue.consume(answer)

    async def round_trip(self, *, record: bool = True) -> None:
        ms, _ = await self.requester.call(self.exchange, "request.ping", {})
        if record:
            self.figures.samples.append(ms)

    async def close(self) -> None:
        channel = await self.connection.channel()
        await channel.queue_delete(self.prefix)
        await channel.exchange_delete(self.prefix)
        await self.connection.close()


# -- Ansible ---------------------------------------------------------------------------------------


def ansible_runs(hosts: LocalHosts, workdir: Path, runs: int, first: int) -> Figures:
    """Time ``ansible-playbook`` runs making the change; check each one really changed."""
    figures = Figures("ansible")
    with playbook(hosts, workdir, plays("dhcp")) as play:
        for i in range(runs):
            mrd = first + i % 2
            before = {n: len(h.restarts()) for n, h in hosts.hosts.items()}
            figures.samples.append(play.run(mrd=mrd) * 1000)
            for name, h in hosts.hosts.items():
                if f"max-response-delay {mrd};".encode() not in h.config_bytes():
                    raise RuntimeError(f"ansible run {i}: {name} was not changed")
                if len(h.restarts()) != before[name] + 1:
                    raise RuntimeError(f"ansible run {i}: {name} was not restarted once")
    return figures


# -- the run -------------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace, hosts: LocalHosts, workdir: Path
) -> tuple[list[Figures], Shares | None]:
    """Worker, floor, floor/sh and broker, in interleaved blocks; all warm."""
    floor, floor_sh, serial = Figures("floor"), Figures("floor/sh"), Figures("floor/sh serial")
    exec_serial = Figures("floor serial")
    async with contextlib.AsyncExitStack() as stack:  # closes whatever was started, in reverse
        log = stack.enter_context((workdir / "worker.log").open("w"))
        requester = Requester(args.amqp_url)
        await requester.open()
        stack.push_async_callback(requester.close)
        worker = WorkerBench(hosts.inventory_path, args.amqp_url, log)
        await worker.start(requester)
        stack.push_async_callback(worker.close)
        broker = BrokerBench(args.amqp_url)
        await broker.start(requester)
        stack.push_async_callback(broker.close)
        floor_hosts = await open_floor_hosts(hosts)
        stack.callback(close_floor_hosts, floor_hosts)
        for i in range(args.warmup):  # connections, agent shells, caches: all warm
            await worker.change(40 + i % 2, record=False)
            await floor_change(floor_hosts, 50 + i % 2, run_exec)
            await floor_change(floor_hosts, 50 + i % 2, run_exec, serial=True)
            await floor_change(floor_hosts, 50 + i % 2, run_in_shell)
            await floor_change(floor_hosts, 50 + i % 2, run_in_shell, serial=True)
            await broker.round_trip(record=False)
        block = 10
        pause = args.pause / 1000
        for start in range(0, args.modifies, block):
            count = min(block, args.modifies - start)
            for i in range(start, start + count):
                await asyncio.sleep(pause)
                await worker.change(40 + i % 2)
            for i in range(start, start + count):
                await asyncio.sleep(pause)
                started = time.perf_counter()
                await floor_change(floor_hosts, 50 + i % 2, run_exec)
                floor.samples.append((time.perf_counter() - started) * 1000)
            for i in range(start, start + count):
                await asyncio.sleep(pause)
                started = time.perf_counter()
                await floor_change(floor_hosts, 50 + i % 2, run_exec, serial=True)
                exec_serial.samples.append((time.perf_counter() - started) * 1000)
            for i in range(start, start + count):
                await asyncio.sleep(pause)
                started = time.perf_counter()
                await floor_change(floor_hosts, 50 + i % 2, run_in_shell)
                floor_sh.samples.append((time.perf_counter() - started) * 1000)
            for i in range(start, start + count):
                await asyncio.sleep(pause)
                started = time.perf_counter()
                await floor_change(floor_hosts, 50 + i % 2, run_in_shell, serial=True)
                serial.samples.append((time.perf_counter() - started) * 1000)
            for _ in range(count * 4):
                await asyncio.sleep(pause)
                await broker.round_trip()
            print(f"  {start + count}/{args.modifies} rounds", flush=True)
        steps = None
        if args.steps:
            worker.windows.clear()  # a series of its own, not in the figures above
            with timing() as timeline:
                for i in range(args.steps):
                    await asyncio.sleep(pause)
                    await worker.change(40 + i % 2, record=False)
            log.flush()
            received = received_at(workdir / "worker.log")
            steps = shares(worker.windows, timeline, received, args.timeline)
    series = [worker.latency, worker.inside, floor, exec_serial, floor_sh, serial]
    return [*series, broker.figures], steps


def report(figures: dict[str, Figures], command: str) -> None:
    rows = [
        ("worker", "worker: publish -> result event"),
        ("worker, change itself", "  of which the change (event durationMs)"),
        ("floor", "floor: asyncssh, conn.run per command"),
        ("floor serial", "floor serial: the same, one server then the other"),
        ("floor/sh", "floor/sh: asyncssh, commands to a started sh"),
        ("floor/sh serial", "floor/sh serial: commit one server, then the other"),
        ("broker", "broker: request/reply round trip"),
        ("ansible", "ansible-playbook (pipelining, ControlPersist)"),
    ]
    print(f"\n{'':48}{'median':>10}{'p95':>10}{'n':>6}")
    for key, label in rows:
        if key in figures:
            f = figures[key]
            print(f"{label:48}{f.median:8.1f}ms{f.p95:8.1f}ms{len(f.samples):6d}")
    worker, broker = figures["worker"].median, figures["broker"].median
    serial, serial_sh = figures["floor serial"].median, figures["floor/sh serial"].median
    ratios = [
        ("worker / (floor serial + broker)", worker / (serial + broker), "   target <= 1.3"),
        ("worker / (floor/sh serial + broker)", worker / (serial_sh + broker), ""),
        ("worker / (floor + broker)", worker / (figures["floor"].median + broker), ""),
        ("worker / (floor/sh + broker)", worker / (figures["floor/sh"].median + broker), ""),
    ]
    print("\nratios (medians)")
    for label, value, note in ratios:
        print(f"  {label:38}{value:6.2f}{note}")
    if "ansible" in figures:
        ansible = figures["ansible"].median
        print(f"  {'ansible / worker':38}{ansible / worker:6.1f}x  target >= 50x")
        best = ansible / serial_sh
        print(f"  {'ansible / floor/sh serial':38}{best:6.1f}x  (a serial tool's best)")
    print(f"\ncommand: {command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modifies", type=int, default=60, help="measured changes per series")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured changes first")
    parser.add_argument("--ansible-runs", type=int, default=5, help="0 to skip Ansible")
    parser.add_argument(
        "--steps", type=int, default=20, help="changes timed step by step, after the rest (0: none)"
    )
    parser.add_argument(
        "--plain-login",
        action="store_true",
        help="sessions get an empty HOME: no start-up files (a typical DHCP host's account)",
    )
    parser.add_argument(
        "--pause", type=float, default=0.0, help="ms between two samples (0: back to back)"
    )
    parser.add_argument(
        "--timeline", type=int, default=0, help="print the last N step-timed changes call by call"
    )
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    args = parser.parse_args(argv)
    command = "python bench/e2e.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    with tempfile.TemporaryDirectory(prefix="dfw-bench-") as tmp:
        workdir = Path(tmp)
        print(f"starting two local sshd hosts under {workdir}", flush=True)
        with LocalHosts.start(
            workdir, sample_configs(), addresses=SAMPLE_ADDRESSES, plain_login=args.plain_login
        ) as hosts:
            print(f"measuring {args.modifies} changes per series (+{args.warmup} warm-up)")
            series, steps = asyncio.run(measure(args, hosts, workdir))
            if args.ansible_runs > 0:
                print(f"running ansible-playbook {args.ansible_runs} times", flush=True)
                series.append(ansible_runs(hosts, workdir, args.ansible_runs, first=60))
        report({f.name: f for f in series}, command.strip())
        if steps is not None:
            print_shares(steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
