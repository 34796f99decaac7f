"""Helpers of the end-to-end tests: request bodies, host checks, inventory tweaks, env vars.

Everything here drives or inspects the real pieces (RabbitMQ, sshd hosts, dhcpd, the worker);
the consumer and coordinator tests' own helpers are imported, not copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fcntl
import json
import os
import shlex
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractConnection

from tests.change.helpers import (
    backups,
    done_records,
    is_temp,
    journals,
    modify_request,
    remove_request,
)
from worker.consumer.topology import declare_topology
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
LOCK_FILE = ".dhcp-failover.lock"


def new_request_id(label: str) -> str:
    """A request id unique to one test run (journals and events are keyed by it)."""
    return f"e2e-{label}-{uuid.uuid4().hex[:12]}"


def modify_body(request_id: str, **params: Any) -> dict[str, Any]:
    """A modify request as a publisher sends it (docs/contract.md §2); ``params`` override."""
    body = modify_request(request_id).model_dump(mode="json", by_alias=True, exclude_none=True)
    body["params"].update(params)
    return body


def remove_body(
    request_id: str, *, dry_run: bool = False, action: str = "Disable"
) -> dict[str, Any]:
    """A remove request exactly as a publisher sends it (docs/contract.md §2)."""
    body = remove_request(request_id, action=action).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    body["dryRun"] = dry_run
    return body


def expected_diff(path: Path, before: bytes, after: bytes) -> str:
    """The diff docs/contract.md §3 puts in ``data.servers[].diff``, computed independently."""
    name = str(path).lstrip("/")
    return "".join(
        difflib.unified_diff(
            before.decode().splitlines(keepends=True),
            after.decode().splitlines(keepends=True),
            fromfile=f"a/{name}",
            tofile=f"b/{name}",
        )
    )


def config_dir_listing(host: LocalHost) -> set[str]:
    return set(os.listdir(host.config_dir))


async def change_ended(*hosts: LocalHost, within: float = 10.0) -> None:
    """Wait until no change holds the hosts' change locks. The worker publishes an outcome
    as soon as the servers are final and only then cleans up and records it (under the
    locks): what it leaves beside the live files is final once it lets go of them."""
    deadline = asyncio.get_running_loop().time() + within
    for host in hosts:
        with host.lock_path.open("a") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise AssertionError(f"{host.name}'s change lock still held") from None
                    await asyncio.sleep(0.01)
                    continue
                fcntl.flock(f, fcntl.LOCK_UN)
                break


def change_files(host: LocalHost) -> dict[str, list[str]]:
    """What a change leaves beside the live config, by kind (the lock file is not listed)."""
    names = sorted(config_dir_listing(host))
    return {
        "temps": [n for n in names if is_temp(n)],
        "journals": journals(names),
        "done": done_records(names),
        "backups": backups(names),
    }


def assert_untouched(hosts: LocalHosts, before: dict[str, bytes]) -> None:
    """Every live file byte-identical to ``before``, never restarted, nothing left behind
    but, after a ``failed`` outcome, its done record (docs/contract.md §7.3)."""
    for name, host in hosts.hosts.items():
        assert host.config_bytes() == before[name], f"{name}'s live config changed"
        assert host.restarts() == [], f"{name} was restarted"
        files = change_files(host)
        for record in files.pop("done"):
            outcome = json.loads((host.config_dir / record).read_bytes())["outcome"]
            assert outcome["outcome"] == "failed", (name, record)
        assert files == {"temps": [], "journals": [], "backups": []}


def rewrite_restart_command(hosts: LocalHosts, name: str, wrap: Callable[[str], str]) -> str:
    """Replace ``name``'s ``restart_command`` in the inventory by ``sh -c wrap(current)``.

    The inventory is the test's own file (written by LocalHosts); the restart script, the
    markers and every product module stay as they are. Must run before the worker starts.
    """
    text = hosts.inventory_path.read_text()
    current = tomllib.loads(text)["servers"][name]["restart_command"]
    old_line = f"restart_command = {json.dumps(current)}\n"
    assert text.count(old_line) == 1, "restart_command line not found exactly once"
    new = f"sh -c {shlex.quote(wrap(current))}"
    hosts.inventory_path.write_text(
        text.replace(old_line, f"restart_command = {json.dumps(new)}\n")
    )
    assert (
        tomllib.loads(hosts.inventory_path.read_text())["servers"][name]["restart_command"] == new
    )
    return new


def fail_restart_once(hosts: LocalHosts, name: str) -> None:
    """Make ``name``'s next restart fail via the ``fail-restart`` marker, once.

    The marker fails every restart while it exists, the rollback's restart of the restored file
    too (``rollback_failed``); here the failing attempt removes it, so the restore comes up.
    """
    host = hosts.hosts[name]
    host.set_marker("fail-restart")
    marker = shlex.quote(str(host.marker_path("fail-restart")))
    rewrite_restart_command(hosts, name, lambda cmd: f"{cmd} || {{ rm -f {marker}; exit 1; }}")


def slow_restart(hosts: LocalHosts, name: str, seconds: float) -> Path:
    """Make ``name``'s restart take ``seconds`` longer; returns the file touched as it begins."""
    host = hosts.hosts[name]
    begun = host.root / "restart-begun"
    rewrite_restart_command(
        hosts,
        name,
        lambda cmd: f"touch {shlex.quote(str(begun))}; sleep {seconds}; exec {cmd}",
    )
    return begun


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker or CLI subprocess: ``settings`` as ``DHCP_FAILOVER_*``.

    Inherited ``DHCP_FAILOVER_*`` variables are dropped so only this test's names apply; the
    inventory is left out (``run --inventory`` gives it).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHCP_FAILOVER_")}
    for field, value in settings.model_dump(mode="json", exclude={"inventory"}).items():
        env[f"DHCP_FAILOVER_{field.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


async def bind_event_queue(
    connection: AbstractConnection, settings: Settings, routing_key: str
) -> str:
    """An exclusive queue bound to the event exchange with exactly ``routing_key``; its name.

    It lives as long as ``connection``; read it with ``tests.consumer.support.get_one``.
    """
    channel = await connection.channel()
    topology = await declare_topology(channel, settings)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topology.event_exchange, routing_key=routing_key)
    return queue.name


def record_restart_order(hosts: LocalHosts) -> Path:
    """Every host's restart first appends its server name to one shared file; its path.

    Each host's own ``restart.log`` says what it restarted on; this says in which order the
    hosts were restarted.
    """
    timeline = hosts.base_dir / "restart-order.log"
    for name in hosts.hosts:
        prefix = f"echo {shlex.quote(name)} >> {shlex.quote(str(timeline))}; exec "
        rewrite_restart_command(hosts, name, prefix.__add__)
    return timeline


def restart_order(timeline: Path) -> list[str]:
    return timeline.read_text().split() if timeline.exists() else []


async def stop_serving(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Stop in-process workers as SIGTERM stops them; cancelled (and an error) only past 30 s."""
    stop.set()
    for task in tasks:
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
