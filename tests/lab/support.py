"""Helpers of the verified-change lab tests: the real ``serve`` on a lab's inventory, request
bodies with the lab's names, inventory tweaks, and what the pair runs, read independently.

The worker is the real one (inventory -> SshFleet -> coordinator -> consumer) on the real
broker; the lab's sshds and dhcpds are real too. Nothing here reads the worker's state: the
checks use the lab's own OMAPI reads (``Lab.failover_state``), its files and its pids.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractConnection

from tests.change.helpers import sha
from tests.consumer.support import CheckedEvent, EventTap, wait_for_consumer
from tests.e2e import conftest as e2e
from tests.e2e.support import rewrite_restart_command, stop_serving
from tests.fixtures.lab import NORMAL_TIMEOUT
from worker.consumer.client import publish_request
from worker.lab import Lab, as_int
from worker.messages import MODIFY_COMMAND, REMOVE_COMMAND
from worker.service import serve
from worker.settings import Settings

#: The e2e fixture that puts process-wide logging back after ``serve`` configured it (the
#: test module imports it from here, so that pytest finds it there).
restore_logging = e2e.restore_logging
#: How long a publisher waits for its result event (a verify may take its whole timeout,
#: twice: the change and the rollback).
WAIT = 60.0


def request_id(label: str) -> str:
    return f"lab-{label}-{uuid.uuid4().hex[:12]}"


def modify_body(lab: Lab, label: str, **params: Any) -> dict[str, Any]:
    """A modify of the lab's relationship, as a publisher sends it (docs/contract.md §2.2)."""
    return {
        "requestId": request_id(label),
        "command": MODIFY_COMMAND,
        "params": {
            "Name": lab.relationship,
            "PrimaryServer": "primary",
            "SecondaryServer": "secondary",
            **params,
        },
    }


def remove_body(lab: Lab, label: str, action: str = "Disable") -> dict[str, Any]:
    """A remove of the lab's relationship (docs/contract.md §2.3)."""
    return {
        "requestId": request_id(label),
        "command": REMOVE_COMMAND,
        "params": {"Server": "primary", "Name": lab.relationship, "DeconfigureAction": action},
    }


# -- the inventory ----------------------------------------------------------------------------


def set_omapi_fields(lab: Lab, server: str, *, drop: Sequence[str] = (), **fields: Any) -> None:
    """Add (or override) fields of ``server``'s ``omapi`` table in the lab's inventory, and
    remove those named in ``drop``.

    The lab writes the table itself (``write_inventory(omapi=True)``); this puts the test's
    fields right under its header (TOML: a later duplicate key would be an error, so a field
    the lab wrote is replaced in place).
    """
    path = lab.inventory_path
    header = f"[servers.{json.dumps(server)}.omapi]"
    lines = path.read_text().splitlines()
    assert lines.count(header) == 1, f"no omapi table for {server} in {path}"
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    values = {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
    gone = {*values, *drop}
    kept = [ln for ln in lines[start:end] if ln.split("=")[0].strip() not in gone]
    added = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join([*lines[:start], *added, *kept, *lines[end:]]) + "\n")
    table = tomllib.loads(path.read_text())["servers"][server]["omapi"]
    assert all(table[k] == v for k, v in values.items())
    assert not set(drop) & set(table)


def lab_inventory(lab: Lab, *, omapi: bool, verify_timeout: float | None = None) -> Path:
    """Rewrite the lab's inventory (its restart commands as the lab writes them), with or
    without ``omapi`` tables, and a ``verify_timeout`` on each."""
    lab.write_inventory(omapi=omapi)
    if omapi and verify_timeout is not None:
        for name in lab.servers:
            set_omapi_fields(lab, name, verify_timeout=verify_timeout)
    return lab.inventory_path


def record_restarts(lab: Lab) -> Path:
    """Wrap every server's restart command so it logs ``begin``/``end`` lines with the time
    (``<server> begin|end <epoch seconds>``) to one shared file; its path."""
    timeline = lab.workdir / "restarts.log"
    timeline.unlink(missing_ok=True)
    q = shlex.quote
    for name in lab.servers:
        stamp = f"echo {q(name)} %s $(date +%%s.%%N) >> {q(str(timeline))}"

        def wrap(cmd: str, stamp: str = stamp) -> str:
            return f"{stamp % 'begin'}; {cmd}; rc=$?; {stamp % 'end'}; exit $rc"

        rewrite_restart_command(lab, name, wrap)  # type: ignore[arg-type]  # uses inventory_path
    return timeline


def kill_after_restart(lab: Lab, server: str, *, once: bool) -> None:
    """Wrap ``server``'s restart command: after the lab's script started the new dhcpd, it
    is SIGKILLed and the command still exits 0 -- a dhcpd that dies right after its restart,
    with a restart command that cannot tell. ``once``: only the next restart does it (a
    marker file the first one removes), so a rollback's restart brings dhcpd back."""
    q = shlex.quote
    pid_file = q(str(lab.servers[server].pid_path))
    kill = f"kill -KILL $(cat {pid_file})"
    if once:
        marker = lab.workdir / f"kill-{server}-once"
        marker.touch()
        m = q(str(marker))
        kill = f"if [ -e {m} ]; then rm -f {m}; {kill}; fi"

    def wrap(cmd: str) -> str:
        return f"{cmd}; rc=$?; {kill}; exit $rc"

    rewrite_restart_command(lab, server, wrap)  # type: ignore[arg-type]  # uses inventory_path


def pause_next_restart(lab: Lab, server: str) -> Path:
    """Make ``server``'s next restart create a file and wait (up to 10 s) until the test
    deletes it; its path. Lets a test act at the moment that restart begins."""
    q = shlex.quote
    marker, begun = lab.workdir / f"pause-{server}-once", lab.workdir / f"{server}-restart-begun"
    marker.touch()
    begun.unlink(missing_ok=True)
    m, b = q(str(marker)), q(str(begun))
    wait = f"i=0; while [ -e {b} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done"

    def wrap(cmd: str) -> str:
        return f"if [ -e {m} ]; then rm -f {m}; touch {b}; {wait}; fi; {cmd}"

    rewrite_restart_command(lab, server, wrap)  # type: ignore[arg-type]  # uses inventory_path
    return begun


def restarts(timeline: Path) -> list[tuple[str, str, float]]:
    """The ``(server, begin|end, time)`` lines :func:`record_restarts` logged, in order."""
    if not timeline.exists():
        return []
    rows = [line.split() for line in timeline.read_text().splitlines()]
    return [(name, what, float(at)) for name, what, at in rows]


# -- what is on the servers, read without the worker -----------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Each server's live config (sha256) and dhcpd pid at one moment."""

    files: dict[str, str]
    pids: dict[str, int | None]


def snapshot(lab: Lab) -> Snapshot:
    return Snapshot(
        files={n: sha(s.config_path.read_bytes()) for n, s in lab.servers.items()},
        pids={n: s.dhcpd_pid for n, s in lab.servers.items()},
    )


#: ``failover-state`` attribute -> the event's ``running`` field (docs/contract.md §3.3).
RUNNING_FIELDS = {
    "mclt": "mclt",
    "local-port": "localPort",
    "partner-port": "partnerPort",
    "max-response-delay": "maxResponseDelay",
    "max-outstanding-updates": "maxUnackedUpdates",
}


def running_values(lab: Lab, server: str) -> dict[str, int]:
    """What ``server``'s dhcpd runs now (the lab's own OMAPI read), by the event's names."""
    raw = lab.failover_state(server)
    return {field: as_int(raw[attr]) for attr, field in RUNNING_FIELDS.items()}


def expected_running(
    *, mclt: int, port: int, partner_port: int, max_response_delay: int, max_unacked: int
) -> dict[str, dict[str, int]]:
    """Each peer's running values for a modify's parameters (docs/contract.md §2.2): the
    primary listens on ``Port`` and dials ``PartnerPort``, the secondary the reverse; the
    secondary runs the primary's MCLT."""
    common = {
        "mclt": mclt,
        "maxResponseDelay": max_response_delay,
        "maxUnackedUpdates": max_unacked,
    }
    return {
        "primary": {**common, "localPort": port, "partnerPort": partner_port},
        "secondary": {**common, "localPort": partner_port, "partnerPort": port},
    }


# -- the worker -------------------------------------------------------------------------------


@dataclass
class LabWorker:
    """The real ``serve`` on a lab's inventory, and what a test talks to it with."""

    lab: Lab
    settings: Settings
    tap: EventTap

    async def request(self, body: dict[str, Any], routing_key: str) -> Timed:
        """Publish like ``dhcp-failover-worker publish --wait``; the event as the audit tap
        got it (schema-checked), the reply to ``reply_to`` equal to it, and the wall time."""
        started = time.monotonic()
        reply = await publish_request(self.settings, body, routing_key, wait=WAIT)
        seconds = time.monotonic() - started
        assert reply is not None, f"no result event for {body['requestId']} within {WAIT}s"
        checked = await self.tap.next_checked()
        assert checked.event == reply
        assert checked.raw["data"]["requestId"] == body["requestId"]
        return Timed(checked, seconds)


@dataclass
class Timed:
    checked: CheckedEvent
    seconds: float

    @property
    def data(self) -> dict[str, Any]:
        return self.checked.raw["data"]  # type: ignore[no-any-return]

    def server(self, name: str) -> dict[str, Any]:
        (entry,) = [s for s in self.data["servers"] if s["name"] == name]
        return entry  # type: ignore[no-any-return]


StartWorker = Callable[[Lab], Awaitable[LabWorker]]


@pytest.fixture
async def lab_worker(
    broker_settings: Settings, amqp: AbstractConnection, tap: EventTap, restore_logging: None
) -> AsyncIterator[StartWorker]:
    """``await lab_worker(lab)``: the real ``serve`` on the lab's inventory as it is now,
    consuming; stopped at teardown as SIGTERM stops it (cancelled only past 30 s)."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(lab: Lab) -> LabWorker:
        assert not tasks, "one worker per test"
        settings = broker_settings.model_copy(
            update={"inventory": lab.inventory_path, "log_format": "json", **e2e.SSH_TIMEOUTS}
        )
        task = asyncio.create_task(serve(settings, stop), name="serve")
        tasks.append(task)
        await wait_for_consumer(amqp, settings, task)
        return LabWorker(lab, settings, tap)

    try:
        yield start
    finally:
        await stop_serving(stop, tasks)


NORMAL_NORMAL = ("normal", "normal")


# -- what the tests check ---------------------------------------------------------------------


def old_running(lab: Lab) -> dict[str, dict[str, int]]:
    """What the lab's own configs run (lab.peer), per server, by the event's names."""
    p = lab.peer
    return expected_running(
        mclt=p.mclt,
        port=p.port,
        partner_port=p.peer_port,
        max_response_delay=p.max_response_delay,
        max_unacked=p.max_unacked_updates,
    )


def values_of(running: dict[str, Any]) -> dict[str, int]:
    keys = ("mclt", "localPort", "partnerPort", "maxResponseDelay", "maxUnackedUpdates")
    return {k: running[k] for k in keys}


def read_at(running: dict[str, Any]) -> float:
    return datetime.fromisoformat(running["readAt"]).timestamp()


def states_of(entry: dict[str, Any]) -> tuple[str, str] | None:
    running = entry["running"]
    return None if running is None else (running["state"], running["partnerState"])


def in_turn(timeline: Path, *order: str) -> list[float]:
    """The restarts logged are exactly ``order``'s, each ended before the next began; the
    times of their ends."""
    rows = restarts(timeline)
    assert [(n, w) for n, w, _ in rows] == [(n, w) for n in order for w in ("begin", "end")]
    times = [t for _, _, t in rows]
    assert times == sorted(times), rows
    return times[1::2]


async def reset(lab: Lab) -> None:
    """Back to the lab's own configs, both dhcpds running, normal/normal (off the loop)."""
    started = time.monotonic()
    await asyncio.to_thread(lab.reset, NORMAL_TIMEOUT)
    timing("lab.reset", time.monotonic() - started)


async def assert_old_pair_back(lab: Lab, before: Snapshot, done: Timed) -> None:
    """After a rollback: both files byte-identical, both dhcpds restarted on them, the old
    pair normal running the old values -- read by the lab, and as the event says."""
    after = snapshot(lab)
    assert after.files == before.files
    for name in lab.servers:
        assert after.pids[name] not in (None, before.pids[name]), f"{name} not restarted"
        entry = done.server(name)
        assert (entry["changed"], entry["restarted"], entry["state"]) == (True, True, "old")
        assert entry["sha256Before"] == before.files[name]
        assert states_of(entry) == NORMAL_NORMAL
        assert values_of(entry["running"]) == old_running(lab)[name]
    await asyncio.to_thread(lab.wait_normal, 5.0)
    assert {n: running_values(lab, n) for n in lab.servers} == old_running(lab)


def timing(label: str, seconds: float, **more: Any) -> None:
    """Print a measurement (shown with ``-s``, and in the report of a failing test)."""
    extra = "".join(f", {k} {v}" for k, v in more.items())
    print(f"[timing] {label}: {seconds:.2f} s{extra}", flush=True)
