"""Benchmark: one modify of a 100-pair fleet by ``dhcp-failover-worker rollout``, and by Ansible.

    python bench/rollout.py [--pairs 100] [--workers 2] [--concurrency 16] [--forks 20]
                            [--ansible/--no-ansible] [--amqp-url URL]

The rig (bench/rig.py): ``--pairs`` sample pairs, 200 servers on 13 sshds, each server its own
loopback address; the real ``dhcpd -t`` validates; the restart command is a stand-in script
(``dhcpd -t`` on the live file and a log line: no dhcpd runs, so a restart costs milliseconds
where a real one takes seconds).

**rollout**: ``--workers`` ``dhcp-failover-worker run`` processes on RabbitMQ (names unique to
the run), then ``dhcp-failover-worker rollout modify --all --max-response-delay N --waves
1,5%,100% --concurrency C --yes``, timed whole, as an operator runs it: discovery (it reads
every server's config over SSH), a dry run of every pair, then the waves (1 pair, 5 pairs, the
rest). Twice: *cold* (the workers just started, no SSH connection open yet) and *warm* (the
same workers, the next value). The phases are read from the results file's timestamps.

**ansible**: the same change on the same 200 hosts by ``ansible-playbook`` (forks 20): a play
on the primaries, then one on the secondaries, so that both peers of a pair are never
restarted together; ``replace`` with ``validate:`` (``dhcpd -t -cf %s`` through the hosts'
validator), the restart when the file changed; pipelining and ControlPersist on.

Every figure is checked: each pair's result ``succeeded``, every server holding the new value
and restarted exactly once more. Everything started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.meters import broker_pid, cpu_meter, load_average, rss_mb
from bench.playbook import playbook, plays
from bench.rig import (
    DEFAULT_AMQP,
    STAND_IN,
    WORKER_TREE,
    bench_settings,
    cli_env,
    fleet_pairs,
    start_fleet,
    worker_processes,
)
from bench.throughput import print_profiles, py_spy, py_spy_binary
from worker.demo.localhosts import LocalHosts
from worker.settings import Settings

CLI = [sys.executable, "-m", "worker.cli"]


@dataclass
class Run:
    """One timed run: its name, wall seconds, CPU seconds and the load before it."""

    name: str
    wall: float
    cpu: dict[str, float]
    load: str
    phases: dict[str, float]
    rss: list[tuple[float, float]] = field(default_factory=list)
    """Each worker's (RSS, peak RSS) in MB after the run: a connection per server it changed."""


def check_changed(hosts: LocalHosts, mrd: int, restarts: dict[str, int]) -> None:
    """Every server holds ``max-response-delay mrd`` and was restarted exactly once more."""
    line = f"max-response-delay {mrd};".encode()
    wrong = [n for n, h in hosts.hosts.items() if line not in h.config_bytes()]
    again = [n for n, h in hosts.hosts.items() if len(h.restarts()) != restarts[n] + 1]
    if wrong or again:
        raise RuntimeError(f"not changed: {wrong[:5]}; not restarted once: {again[:5]}")


def restart_counts(hosts: LocalHosts) -> dict[str, int]:
    return {n: len(h.restarts()) for n, h in hosts.hosts.items()}


def phases(results: Path, started: float) -> dict[str, float]:
    """Seconds from the command's start to the first dry run's result, the end of the
    preflight and the end of each wave (the results file's timestamps)."""
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]

    def at(record: dict[str, object]) -> float:
        stamp = datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
        return stamp.timestamp() - started

    preflight = [r for r in records if r["record"] == "preflight"]
    out = {"first dry run": at(preflight[0]), "preflight done": at(preflight[-1])}
    for r in records:
        if r["record"] == "result":
            out[f"wave {r['wave']} done"] = at(r)  # the last result of each wave wins
        elif r["record"] == "end":
            out["end record"] = at(r)
    return out


async def rollout(
    args: argparse.Namespace,
    settings: Settings,
    hosts: LocalHosts,
    workdir: Path,
    mrd: int,
    pids: dict[str, int],
) -> Run:
    rollout_id = f"bench-{mrd}-{int(time.time())}"
    results = workdir / f"{rollout_id}.jsonl"
    command = [
        *CLI, "rollout", "modify", "--inventory", str(hosts.inventory_path), "--all",
        "--max-response-delay", str(mrd), "--waves", "1,5%,100%",
        "--concurrency", str(args.concurrency), "--timeout", "120", "--yes",
        "--rollout-id", rollout_id, "--results", str(results), "--json",
    ]  # fmt: skip
    before, load = restart_counts(hosts), load_average()
    if args.py_spy is not None:  # the CLI under py-spy, and each worker beside it
        args.py_spy.mkdir(parents=True, exist_ok=True)
        out = args.py_spy / f"rollout-{mrd}-cli.txt"
        command = [py_spy_binary(), "record", "--format", "raw", "--rate", "200", "--gil",
                   "--output", str(out), "--", *command]  # fmt: skip
    spied = [pid for name, pid in pids.items() if name.startswith("worker")]
    label = f"rollout-{mrd}"
    with py_spy(args.py_spy, label, spied), cpu_meter(pids, hosts) as cpu:
        started = time.time()
        done = await asyncio.to_thread(
            subprocess.run, command, env=cli_env(settings), capture_output=True, text=True
        )
        wall = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"rollout exit {done.returncode}:\n{done.stdout[-3000:]}{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]  # py-spy talks
    outcomes = [json.loads(line)["outcome"] for line in lines]
    if outcomes.count("succeeded") != args.pairs:
        raise RuntimeError(f"rollout results: {outcomes}")
    check_changed(hosts, mrd, before)
    return Run("rollout", wall, cpu, load, phases(results, started))


def ansible(
    args: argparse.Namespace, hosts: LocalHosts, workdir: Path, mrd: int, pids: dict[str, int]
) -> Run:
    pairs = fleet_pairs(args.pairs)
    groups = {"primaries": [p.primary for p in pairs], "secondaries": [p.secondary for p in pairs]}
    before, load = restart_counts(hosts), load_average()
    text = plays("primaries", "secondaries")
    with (
        playbook(hosts, workdir, text, groups, forks=args.forks) as play,
        cpu_meter(pids, hosts) as cpu,
    ):
        wall = play.run(mrd=mrd)
    check_changed(hosts, mrd, before)
    return Run("ansible", wall, cpu, load, {})


async def measure(args: argparse.Namespace, hosts: LocalHosts, workdir: Path) -> list[Run]:
    runs = []
    overrides = {}
    if args.worker_concurrency:  # DHCP_FAILOVER_CONCURRENCY, and a prefetch of twice that
        overrides = {
            "concurrency": args.worker_concurrency,
            "prefetch": 2 * args.worker_concurrency,
        }
    settings = bench_settings(args.amqp_url, **overrides)
    broker = broker_pid()
    pids = {"broker": broker} if broker is not None else {}
    logs = workdir / "logs"
    async with worker_processes(settings, hosts.inventory_path, args.workers, logs) as workers:
        pids |= {f"worker{i}": w.process.pid for i, w in enumerate(workers)}
        for name, mrd in (("cold", 30), ("warm", 31)):
            print(f"rollout ({name}): max-response-delay {mrd} on {args.pairs} pairs", flush=True)
            run = await rollout(args, settings, hosts, workdir, mrd, pids)
            run.name = f"rollout, {name}"
            run.rss = [rss_mb(w.process.pid) for w in workers]
            print(f"  {run.wall:.1f} s (load {run.load})", flush=True)
            runs.append(run)
    if args.ansible:
        print(f"ansible-playbook, forks {args.forks}: max-response-delay 32", flush=True)
        pids = {k: v for k, v in pids.items() if not k.startswith("worker")}
        run = await asyncio.to_thread(ansible, args, hosts, workdir, 32, pids)
        print(f"  {run.wall:.1f} s (load {run.load})", flush=True)
        runs.append(run)
    return runs


def report(runs: list[Run], args: argparse.Namespace, command: str) -> None:
    print(f"\n{STAND_IN}")
    print(
        f"{args.pairs} pairs ({2 * args.pairs} servers); rollout: {args.workers} worker "
        f"process(es) (concurrency {args.worker_concurrency or 'default'}), --concurrency "
        f"{args.concurrency}, waves 1,5%,100%; worker tree {WORKER_TREE}"
    )
    print(
        f"{'':16}{'wall s':>7}  CPU s: {'workers':>7}{'client':>7}{'servers':>8}{'broker':>7}"
        f"{'others':>7}{'machine':>8}  load before"
    )
    for r in runs:
        workers = sum(v for k, v in r.cpu.items() if k.startswith("worker"))
        client = r.cpu["reaped"] + r.cpu["bench"]
        ours = workers + client + r.cpu["servers"] + r.cpu.get("broker", 0.0)
        print(
            f"{r.name:16}{r.wall:7.1f}         {workers:7.1f}{client:7.1f}{r.cpu['servers']:8.1f}"
            f"{r.cpu.get('broker', 0.0):7.1f}{r.cpu['machine'] - ours:7.1f}"
            f"{r.cpu['machine']:8.1f}  {r.load}"
        )
        for phase, at in r.phases.items():
            print(f"    {phase:24} at {at:5.1f} s")
        if r.rss:
            shown = ", ".join(f"{rss:.1f} (peak {peak:.1f})" for rss, peak in r.rss)
            print(f"    workers' RSS after, MB: {shown}")
    print(
        "  client: the rollout CLI, or ansible-playbook and its forks; servers: the sshds and "
        "all they run; others: the rest of the machine (other jobs; Ansible's SSH masters); "
        "2 cores: at most 2 CPU s per wall s"
    )
    by = {r.name: r for r in runs}
    for name in ("rollout, cold", "rollout, warm"):
        if name in by:
            print(f"  {name}: {by[name].wall:.1f} s   target <= 10 s")
            if "ansible" in by:
                print(f"    ansible / {name} = {by['ansible'].wall / by[name].wall:.1f}x")
    if args.py_spy is not None:
        print_profiles(args.py_spy)
    print(f"\ncommand: {command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="rollout --concurrency")
    parser.add_argument(
        "--worker-concurrency", type=int, default=0, help="each worker's concurrency (0: default)"
    )
    parser.add_argument("--forks", type=int, default=20, help="ansible forks")
    parser.add_argument("--ansible", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--py-spy", type=Path, default=None, help="profile CLI and workers here")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP)
    args = parser.parse_args(argv)
    command = "python bench/rollout.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    with tempfile.TemporaryDirectory(prefix="dfw-bench-rollout-") as tmp:
        workdir = Path(tmp)
        print(f"starting {args.pairs} pairs ({2 * args.pairs} servers) under {workdir}", flush=True)
        with start_fleet(workdir / "fleet", args.pairs) as hosts:
            runs = asyncio.run(measure(args, hosts, workdir))
        report(runs, args, command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
