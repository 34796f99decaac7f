"""Helpers of the crash matrix: the operations, worker processes with a fault, and the checks.

Everything here drives or inspects real pieces: a ``dhcp-failover-worker run`` subprocess, the
sshd stand-ins of :mod:`worker.demo.localhosts` (their live files, restart logs and lock
files), and the events on the test's exchange. The e2e helpers are imported, not copied.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.change.helpers import PRIMARY_AFTER, SECONDARY_AFTER, sha
from tests.consumer.proxy import TcpProxy
from tests.consumer.support import CheckedEvent, EventTap
from tests.e2e.support import REPO, change_ended, change_files, modify_body, remove_body, worker_env
from tests.e2e.test_worker_process import CLI
from tests.faults.cluster_support import WorkerProcess
from worker.change.faults import ACTION_VARIABLE, AT_VARIABLE, DIR_VARIABLE
from worker.demo import PRIMARY, RELATIONSHIP, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHosts, Restart
from worker.dhcpconf import ConfigSet
from worker.dhcpconf.edits import remove
from worker.messages import DeconfigureAction
from worker.settings import Settings

Version = Literal["old", "new"]

#: Every step point a change reaches on the sample pair (no ``omapi`` table there, so
#: ``verified`` comes right after ``restarted:2``), in order. ``:N`` counts occurrences in the
#: worker process: the two servers prepare at once (``staged:2`` = both staged), and commit one
#: after the other (``backed_up:2`` = the second server's backup).
STEPS = (
    "planned",
    "staged:1",
    "staged:2",
    "validated:1",
    "validated:2",
    "journaled:1",
    "journaled:2",
    "backed_up:1",
    "renamed:1",
    "restarted:1",
    "backed_up:2",
    "renamed:2",
    "restarted:2",
    "verified",
    "recorded",
    "published",
)
#: Steps before the first live file is touched (the commit begins with the first backup).
BEFORE_COMMIT = frozenset(STEPS[: STEPS.index("backed_up:1")])
#: Steps after the outcome is recorded in the done records.
AFTER_RECORD = frozenset({"recorded", "published"})


@dataclass(frozen=True)
class Operation:
    """One kind of request of the matrix, and what it does to the sample pair."""

    name: str
    routing_key: str
    action: str | None = None  # a remove's DeconfigureAction

    def body(self, request_id: str) -> dict[str, Any]:
        if self.action is None:
            return modify_body(request_id)
        return remove_body(request_id, action=self.action)

    def after(self) -> dict[str, bytes]:
        """Each server's live file once the request is applied, computed by the engine alone
        (no worker, no server): what "all new" means."""
        if self.action is None:
            return {PRIMARY: PRIMARY_AFTER.encode(), SECONDARY: SECONDARY_AFTER.encode()}
        out = {}
        for name, text in sample_configs().items():
            path = "/etc/dhcp/dhcpd.conf"
            cs = ConfigSet.parse({path: text}, path)
            out[name] = remove(cs, [RELATIONSHIP], DeconfigureAction(self.action))[path].encode()
        return out


OPERATIONS = {
    "modify": Operation("modify", "request.modify"),
    "remove-Disable": Operation("remove-Disable", "request.remove", "Disable"),
    "remove-Delete": Operation("remove-Delete", "request.remove", "Delete"),
}


def full_matrix() -> bool:
    return os.environ.get("DHCP_FAILOVER_FULL_FAULTS") == "1"


def cases(
    subset: list[tuple[str, str]], known: Mapping[str, pytest.MarkDecorator] | None = None
) -> list[Any]:
    """Every (operation, step) with ``DHCP_FAILOVER_FULL_FAULTS=1``, else ``subset``;
    ``known``: a mark (a strict xfail naming a known defect) for some steps."""
    chosen = [(o, s) for o in OPERATIONS for s in STEPS] if full_matrix() else subset
    known = known or {}
    return [
        pytest.param(o, s, id=f"{o}-{s}", marks=[known[s]] if s in known else []) for o, s in chosen
    ]


@dataclass(frozen=True)
class Midway:
    """What the pair holds at a step: the live versions and restart counts (primary,
    secondary), and on at least how many servers the request's staged candidate, running
    journal, done record and backup are found."""

    versions: tuple[Version, Version]
    restarts: tuple[int, int] = (0, 0)
    staged: int = 0
    journaled: int = 0
    done: int = 0
    backups: int = 0

    @classmethod
    def seen(cls, hosts: LocalHosts, request_id: str) -> Midway:
        primary, secondary = hosts.hosts[PRIMARY], hosts.hosts[SECONDARY]
        files = [change_files(h) for h in (primary, secondary)]

        def servers(kind: str) -> int:
            return sum(any(f".{request_id}." in n for n in f[kind]) for f in files)

        return cls(
            versions=(_version(primary.config_bytes()), _version(secondary.config_bytes())),
            restarts=(len(primary.restarts()), len(secondary.restarts())),
            staged=sum(any(n.endswith(f".{request_id}.new") for n in f["temps"]) for f in files),
            journaled=servers("journals"),
            done=servers("done"),
            backups=servers("backups"),
        )

    def reached(self, expected: Midway) -> bool:
        """Same versions and restarts; at least the expected files."""
        return (self.versions, self.restarts) == (expected.versions, expected.restarts) and all(
            getattr(self, k) >= getattr(expected, k)
            for k in ("staged", "journaled", "done", "backups")
        )


def _version(live: bytes) -> Version:
    return "old" if live in {c.encode() for c in sample_configs().values()} else "new"


_OLD: tuple[Version, Version] = ("old", "old")
_HALF: tuple[Version, Version] = ("new", "old")
_NEW: tuple[Version, Version] = ("new", "new")
#: Where a worker killed at each step left the sample pair (commit order: primary first).
MIDWAY = {
    "planned": Midway(_OLD),
    "staged:1": Midway(_OLD, staged=1),
    "staged:2": Midway(_OLD, staged=2),
    "validated:1": Midway(_OLD, staged=1),
    "validated:2": Midway(_OLD, staged=2),
    "journaled:1": Midway(_OLD, journaled=1),
    "journaled:2": Midway(_OLD, journaled=2),
    "backed_up:1": Midway(_OLD, staged=2, journaled=2, backups=1),
    "renamed:1": Midway(_HALF, staged=1, journaled=2, backups=1),
    "restarted:1": Midway(_HALF, (1, 0), staged=1, journaled=2, backups=1),
    "backed_up:2": Midway(_HALF, (1, 0), staged=1, journaled=2, backups=2),
    "renamed:2": Midway(_NEW, (1, 0), journaled=2, backups=2),
    "restarted:2": Midway(_NEW, (1, 1), journaled=2, backups=2),
    "verified": Midway(_NEW, (1, 1), journaled=2, backups=2),
    "recorded": Midway(_NEW, (1, 1), done=2, backups=2),
    "published": Midway(_NEW, (1, 1), done=2, backups=2),
}


# -- worker processes -----------------------------------------------------------------------


@dataclass
class Workers:
    """Starts ``dhcp-failover-worker run`` subprocesses, each with its own fault (or none)."""

    settings: Settings
    hosts: LocalHosts
    logs: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, fault: str | None = None, pause_dir: Path | None = None) -> WorkerProcess:
        env = worker_env(self.settings)
        if fault is not None:
            env[AT_VARIABLE] = fault
        if pause_dir is not None:
            env[ACTION_VARIABLE], env[DIR_VARIABLE] = "pause", str(pause_dir)
        log = self.logs / f"worker-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*CLI, "run", "--inventory", str(self.hosts.inventory_path)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process, log)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.terminate()
                try:
                    worker.process.wait(10)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait(10)


async def killed(worker: WorkerProcess, step: str, within: float = 60.0) -> None:
    """Until the worker has died of its own SIGKILL at ``step`` (the fault's log line)."""
    status = await worker.exit_status(within)
    output = worker.output()
    assert status == -signal.SIGKILL, f"exit status {status}:\n{output[-4000:]}"
    name, _, occurrence = step.partition(":")
    line = output.strip().splitlines()[-1]
    assert '"fault.injected"' in line and f'"step": "{name}"' in line, line
    assert f'"occurrence": {occurrence or 1}' in line, line


async def stopped(worker: WorkerProcess) -> None:
    """SIGTERM, and a clean exit: nothing was left in flight."""
    worker.process.send_signal(signal.SIGTERM)
    status = await worker.exit_status(30)
    assert status == 0, worker.output()[-4000:]


# -- SSH through proxies ----------------------------------------------------------------------


async def proxied(hosts: LocalHosts) -> list[TcpProxy]:
    """Put a TCP proxy in front of every host's sshd (the inventory and known_hosts now name
    the proxies' ports); the test cuts them. Returns the proxies (closed by the caller)."""
    proxies = []
    inventory = hosts.inventory_path.read_text()
    trusted = hosts.known_hosts.read_text()
    for host in hosts.hosts.values():
        proxy = TcpProxy("127.0.0.1", host.port)
        await proxy.start()
        proxies.append(proxy)
        line = f"port = {host.port}\n"
        assert inventory.count(line) == 1
        inventory = inventory.replace(line, f"port = {proxy.port}\n")
        trusted += f"[127.0.0.1]:{proxy.port} {host.host_key_line}\n"
    hosts.inventory_path.write_text(inventory)
    hosts.known_hosts.write_text(trusted)
    return proxies


async def _until(
    worker: WorkerProcess, done: Callable[[], bool], within: float, failure: str
) -> None:
    """Poll ``done`` while the worker lives, at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while not done():
        assert worker.process.poll() is None, f"the worker exited:\n{worker.output()[-4000:]}"
        assert time.monotonic() < deadline, f"{failure}:\n{worker.output()[-4000:]}"
        await asyncio.sleep(0.01)


async def paused(directory: Path, step: str, worker: WorkerProcess, within: float = 60.0) -> None:
    """Until the worker is paused at ``step`` (its marker file exists)."""
    marker = directory / f"{step.partition(':')[0]}.paused"
    await _until(worker, marker.exists, within, f"never paused at {step}")


async def severed(worker: WorkerProcess, connections: int, within: float = 30.0) -> None:
    """Until the worker has logged the loss of ``connections`` SSH connections
    (``ssh.connection_lost``). A cut is only a cut once the worker knows of it: resumed
    sooner, a change could go through its commit and then lose connections it no longer
    needs (the outcome a cut in the commit allows, not a cut at the paused step)."""

    def seen() -> bool:
        return worker.output().count('"ssh.connection_lost"') >= connections

    await _until(worker, seen, within, "the cut went unseen")


def resume(directory: Path, step: str) -> None:
    (directory / f"{step.partition(':')[0]}.go").touch()


# -- the checks ---------------------------------------------------------------------------------


async def outcomes_of(tap: EventTap, request_id: str, within: float = 60.0) -> list[CheckedEvent]:
    """The request's terminal event and every repeat of it that follows within 0.5 s; each
    repeat must be an identical duplicate (same id, same outcome): one outcome per id."""
    deadline = time.monotonic() + within
    seen: list[CheckedEvent] = []
    while not seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no event for {request_id} within {within}s"
        checked = await tap.next_checked(within=left)
        if checked.event.data.requestId == request_id:
            seen.append(checked)
    while True:
        try:
            again = await tap.next_checked(within=0.5)
        except TimeoutError:
            return seen
        if again.event.data.requestId == request_id:
            assert again.event.id == seen[0].event.id, (again.event.id, seen[0].event.id)
            assert again.event.data.outcome == seen[0].event.data.outcome
            seen.append(again)


def version_of_pair(
    hosts: LocalHosts, before: dict[str, bytes], after: dict[str, bytes]
) -> Version:
    """Both servers hold the old files or both the new ones, and each was last restarted on
    what it holds (a server holding a new file was restarted on it)."""
    versions: dict[str, Version] = {}
    for name, host in hosts.hosts.items():
        live = host.config_bytes()
        assert live in (before[name], after[name]), f"{name} holds neither version"
        versions[name] = "old" if live == before[name] else "new"
        restarts = host.restarts()
        if versions[name] == "new":
            assert restarts, f"{name} holds the new file but was never restarted"
        if restarts:
            assert restarts[-1] == Restart("ok", sha(live)), (name, versions[name], restarts)
    assert len(set(versions.values())) == 1, f"a mixed pair: {versions}"
    return next(iter(versions.values()))


async def assert_clean(
    hosts: LocalHosts, request_id: str, version: Version, *, ended_journal: bool = False
) -> None:
    """No change holds a lock (``flock -n`` on each lock file succeeds), nothing staged, no
    running journal (contract §10 names); where the change went live, its done record.

    ``ended_journal``: a running journal *beside its own done record* is tolerated (an SSH
    cut after the record stopped the clean-up; it blocks no later change)."""
    await change_ended(*hosts.hosts.values(), within=15.0)
    for name, host in hosts.hosts.items():
        files = change_files(host)
        assert files["temps"] == [], (name, files)
        mine = [d for d in files["done"] if f".{request_id}." in d]
        if ended_journal and mine:
            assert files["journals"] in ([], [j for j in files["journals"] if request_id in j])
        else:
            assert files["journals"] == [], (name, files)
        if version == "new":
            assert len(mine) == 1, (name, files)
