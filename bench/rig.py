"""The benchmarks' shared rig: many stand-in servers on few sshds, worker processes, figures.

**Servers.** A fleet of failover pairs, each server its own loopback address (``127.B.C.D``,
``B`` random per rig so two rigs on one machine do not meet), its own directory, config and
scripts, as :mod:`worker.demo.localhosts` makes them (its helpers are used here, not copied):
``validate.sh`` runs the real ``dhcpd -t``, ``restart.sh`` is a *stand-in* for ``systemctl
restart isc-dhcp-server`` (it checks the live file with ``dhcpd -t`` and appends a line to
``restart.log``; no dhcpd runs). OpenSSH listens on at most 16 sockets per sshd
(``MAX_LISTEN_SOCKS``), so the servers are spread over ``ceil(n / 16)`` sshd processes, each
with one host key and up to 16 ``ListenAddress``: 200 servers on 13 sshds. The result is an
ordinary :class:`~worker.demo.localhosts.LocalHosts` (inventory, known_hosts, ``restarts()``,
``stop()`` ending exactly what it started).

**Workers.** ``dhcp-failover-worker run`` processes (``tests.faults.cluster_support``) on
settings whose every exchange and queue name is unique to the run, deleted at the end.

**Figures.** :class:`Figures` (median, p95), :class:`Requester` (publish -> reply on one warm
connection). CPU, memory and load from ``/proc`` are in bench/meters.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from tests.e2e.support import worker_env
from tests.e2e.test_startup import start_worker
from tests.faults.cluster_support import WorkerProcess
from tests.fixtures.broker import delete_topology
from worker.consumer.client import request_message
from worker.consumer.topology import declare_topology
from worker.demo import RELATIONSHIP, sample_config
from worker.demo.hostfiles import write_scripts, write_sshd_config
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.demo.processes import (
    LocalHostsError,
    free_port,
    keygen,
    spawn_sshd,
    sshd_binary,
    wait_for_banner,
)
from worker.rollout.discovery import Pair
from worker.settings import Settings

DEFAULT_AMQP = os.environ.get("DHCP_FAILOVER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REPLY_TIMEOUT = 120.0
#: The source tree worker processes and the CLI run from: this checkout, or (to measure one
#: commit while the checkout is being edited) a ``git archive`` of it.
WORKER_TREE = os.environ.get("DFW_BENCH_WORKER_TREE", str(Path(__file__).resolve().parent.parent))
LISTEN_PER_SSHD = 16  # OpenSSH's MAX_LISTEN_SOCKS
STAND_IN = (
    "servers: real sshd + real `dhcpd -t` as validator; the restart command is a stand-in "
    "script (dhcpd -t on the live file + a log line), no dhcpd runs"
)


@dataclass
class Figures:
    """One measured series, in milliseconds."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=20, method="inclusive")[-1]


# -- the fleet ---------------------------------------------------------------------------------


def pair_names(i: int) -> tuple[str, str]:
    return f"dhcp{i:03d}a.example.net", f"dhcp{i:03d}b.example.net"


def fleet_pairs(count: int) -> list[Pair]:
    """The rig's pairs in the order a rollout takes them (sorted by primary)."""
    return sorted(Pair(a, RELATIONSHIP, b) for a, b in map(pair_names, range(count)))


def pair_configs(count: int) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Configs and failover addresses of ``count`` sample pairs (``tests/rollout`` makes
    twelve the same way; 200 servers need more addresses than its 192.0.2.x plan has, so
    these are 198.18.0.0/15, the benchmarking range: text in the configs, never bound)."""
    primary, secondary = sample_config("primary"), sample_config("secondary")
    configs: dict[str, str] = {}
    addresses: dict[str, tuple[str, ...]] = {}
    for i in range(count):
        a, b = pair_names(i)
        net, host = divmod(i, 127)  # .1 to .254 of each /24: never .0, .255 or past it
        own_a, own_b = f"198.18.{net}.{2 * host + 1}", f"198.18.{net}.{2 * host + 2}"
        for name, text, own in ((a, primary, own_a), (b, secondary, own_b)):
            text = re.sub(r"\b192\.0\.2\.10\b", own_a, text)
            configs[name] = re.sub(r"\b192\.0\.2\.11\b", own_b, text)
            addresses[name] = (own,)
    return configs, addresses


def start_fleet(
    base: Path,
    pairs: int,
    *,
    plain_login: bool = True,
    restart_seconds: float = 0.0,
    startup_timeout: float = 20.0,
) -> LocalHosts:
    """``pairs`` sample pairs on ``ceil(2 * pairs / 16)`` sshds, one loopback address each.

    ``plain_login`` (default) gives sessions an empty ``HOME``, as a service account on a DHCP
    host has (root's ``.bashrc`` here runs pyenv's init on every exec). ``restart_seconds``
    makes every restart wait that long first, as a real one does (the lab's restart command
    waits 0.5 s to see the new dhcpd stay up; Debian's init script 2 s)."""
    configs, addresses = pair_configs(pairs)
    hosts = start_servers(
        base, configs, addresses, plain_login=plain_login, startup_timeout=startup_timeout
    )
    if restart_seconds > 0:
        for h in hosts.hosts.values():
            script = h.root / "bin" / "restart.sh"
            shebang, rest = script.read_text().split("\n", 1)
            script.write_text(f"{shebang}\nsleep {restart_seconds:g}\n{rest}")
    return hosts


def start_servers(
    base: Path,
    configs: Mapping[str, str],
    addresses: Mapping[str, Sequence[str]],
    *,
    plain_login: bool = True,
    startup_timeout: float = 20.0,
) -> LocalHosts:
    sshd = sshd_binary()
    hosts = LocalHosts.empty(base, "dhcp-failover-worker@bench-rig")
    base = hosts.base_dir
    block = random.randrange(64, 250)  # 127.<block>.x.y: this rig's addresses
    names = list(configs)
    try:
        for first in range(0, len(names), LISTEN_PER_SSHD):
            chunk = names[first : first + LISTEN_PER_SSHD]
            listen = [
                f"127.{block}.{(first + j) // 250}.{(first + j) % 250 + 1}"
                for j in range(len(chunk))
            ]
            started = _start_sshd(
                sshd, base / "sshd" / str(first // LISTEN_PER_SSHD), listen, hosts, plain_login,
                startup_timeout,
            )  # fmt: skip
            process, port, host_key, log = started
            for name, address in zip(chunk, listen, strict=True):
                hosts.hosts[name] = _server(base, name, configs[name], addresses, address)(
                    port=port, host_key=host_key, sshd_log=log, process=process
                )
        hosts.write_known_hosts()
        hosts.write_inventory()
    except BaseException:
        hosts.stop()
        raise
    return hosts


@dataclass
class _ServerFiles:
    """A server's directory and scripts, waiting for the sshd that will serve it."""

    name: str
    root: Path
    config_path: Path
    addresses: tuple[str, ...]
    listen: str

    def __call__(
        self, *, port: int, host_key: Path, sshd_log: Path, process: subprocess.Popen[bytes]
    ) -> LocalHost:
        return LocalHost(
            name=self.name,
            root=self.root,
            port=port,
            addresses=self.addresses,
            host_key=host_key,
            config_path=self.config_path,
            restart_log=self.root / "restart.log",
            sshd_log=sshd_log,
            process=process,
            listen=self.listen,
        )


def _server(
    base: Path, name: str, conf: str, addresses: Mapping[str, Sequence[str]], listen: str
) -> _ServerFiles:
    root = base / "hosts" / name
    (root / "bin").mkdir(parents=True, exist_ok=True)
    config_path = root / "etc" / "dhcp" / "dhcpd.conf"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(conf)
    config_path.chmod(0o644)
    write_scripts(root, config_path, hang_seconds=60)
    return _ServerFiles(name, root, config_path, tuple(addresses.get(name, ())), listen)


def _start_sshd(
    sshd: str,
    root: Path,
    listen: Sequence[str],
    hosts: LocalHosts,
    plain_login: bool,
    timeout: float,
) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    """One sshd on ``listen`` (same port on each address); (process, port, host key, log)."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = root / "ssh_host_ed25519_key"
    keygen(host_key, f"host key of {root.name}")
    shutil.copyfile(hosts.client_key.with_suffix(".pub"), root / "authorized_keys")
    home = root / "home" if plain_login else None
    if home is not None:
        home.mkdir(exist_ok=True)
    log = root / "sshd.log"
    for _attempt in range(5):  # a port free on 127.0.0.1 may be taken on one of ours: retry
        port = free_port()
        config = write_sshd_config(root, port, host_key, hosts.token, home, listen=listen)
        # Every worker connects to every server of a rollout at once: sshd's default
        # MaxStartups (10 unauthenticated, then random drops) would refuse some.
        with config.open("a") as f:
            f.write("MaxStartups 1000\n")
        process = spawn_sshd(sshd, config, log, hosts.token)
        if all(wait_for_banner(port, process, timeout, host=a) for a in listen):
            return process, port, host_key, log
        process.kill()
        process.wait()
    raise LocalHostsError(f"sshd under {root} did not start; its log ends with:\n"
                          f"{log.read_text(errors='replace')[-2000:]}")  # fmt: skip


# -- worker processes ----------------------------------------------------------------------------


def bench_settings(amqp_url: str, **overrides: Any) -> Settings:
    """Settings whose exchange and queue names are unique to this run (JSON logs at info)."""
    prefix = f"dfw-bench-{uuid.uuid4().hex[:8]}"
    fields: dict[str, Any] = {
        "amqp_url": amqp_url,
        "request_exchange": f"{prefix}.requests",
        "request_queue": f"{prefix}.requests",
        "dead_letter_exchange": f"{prefix}.dlx",
        "dead_letter_queue": f"{prefix}.dead",
        "event_exchange": f"{prefix}.events",
        "log_format": "json",
        "log_level": "info",
    }
    fields.update(overrides)
    return Settings(**fields)


def tree_env() -> dict[str, str]:
    """What makes a ``python -m worker.cli`` subprocess import :data:`WORKER_TREE`."""
    return {"PYTHONPATH": WORKER_TREE, "PYTHONSAFEPATH": "1"}  # SAFEPATH: not the cwd's


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment of a CLI subprocess (``rollout``, ``publish``) on ``settings``."""
    return worker_env(settings) | {"DHCP_FAILOVER_LOG_FORMAT": "json"} | tree_env()


def start_workers(
    settings: Settings, inventory: Path, count: int, logs: Path
) -> list[WorkerProcess]:
    """``count`` ``dhcp-failover-worker run`` processes, each logging JSON to a file in ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    return [
        WorkerProcess(start_worker(settings, inventory, log, **tree_env()), log)
        for log in (logs / f"worker-{tag}-{i}.log" for i in range(count))
    ]


@contextlib.asynccontextmanager
async def worker_processes(
    settings: Settings, inventory: Path, count: int, logs: Path
) -> AsyncIterator[list[WorkerProcess]]:
    """:func:`start_workers`, yielded once each one consumes; SIGTERM (then KILL) at the
    end, and the run's exchanges and queues deleted."""
    workers: list[WorkerProcess] = []
    try:
        workers = start_workers(settings, inventory, count, logs)
        deadline = time.monotonic() + 60
        while not all(w.count("worker started") for w in workers):
            for w in workers:
                if w.process.poll() is not None:
                    raise RuntimeError(f"worker exited: {w.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start within 60 s")
            await asyncio.sleep(0.1)
        yield workers
    except BaseException:
        kept = Path(tempfile.mkdtemp(prefix="dfw-bench-logs-"))
        for w in workers:
            with contextlib.suppress(OSError):
                shutil.copy(w.log, kept)
        print(f"worker logs kept in {kept}", file=sys.stderr)
        raise
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                await asyncio.to_thread(w.process.wait, 60)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
        await delete_topology(settings)


# -- RabbitMQ: one warm requester ----------------------------------------------------------------


class Requester:
    """A warm AMQP connection that publishes requests and matches replies on ``reply_to``."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    async def open(self) -> None:
        self.connection = await aio_pika.connect(self._url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.replies = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.replies.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        await self.connection.close()

    async def exchange(self, settings: Settings) -> AbstractExchange:
        """The request exchange of ``settings`` (the topology declared, as a worker does)."""
        return (await declare_topology(self.channel, settings)).request_exchange

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(
        self, exchange: AbstractExchange, key: str, body: Mapping[str, Any]
    ) -> tuple[float, bytes]:
        """Publish and wait for the reply: (milliseconds from publish to reply, reply body)."""
        started = time.perf_counter()
        future = await self.send(exchange, key, body)
        reply = await asyncio.wait_for(future, REPLY_TIMEOUT)
        return (time.perf_counter() - started) * 1000, reply

    async def send(
        self, exchange: AbstractExchange, key: str, body: Mapping[str, Any]
    ) -> asyncio.Future[bytes]:
        """Publish (confirmed); the future its reply will resolve."""
        cid = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        await exchange.publish(request_message(body, cid, self.replies.name), key)
        return future
