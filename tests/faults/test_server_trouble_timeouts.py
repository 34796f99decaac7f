"""Timeouts on the servers and on the worker (issue 11, part 6, cases 5 and 7).

A restart that hangs past ``command_timeout`` on a server without an ``omapi`` table: its
result is unknown, so it is undone like a failed restart, and the event says why
(``ambiguous``; with an ``omapi`` table dhcpd decides: test_server_trouble_lab.py).

The worker's wall clock jumps mid-change: timeouts and durations must use monotonic clocks.
A wall clock jumping an hour ahead must not time a command out, one jumping back must not
hold a timeout off, and ``durationMs`` must not be off by the jump. One request makes both
jumps: +1 h while the primary's (slow) restart runs, -2 h (so -1 h in all) when the
secondary's restart starts to hang past ``command_timeout``. Expected: the primary's restart
is not timed out, the secondary's is, after its real ``command_timeout`` (``rolled_back``,
``ambiguous``), and every duration is the real one.

Twice: in this process with ``time.time`` replaced (always available), and on a real
``dhcp-failover-worker run`` process under libfaketime (Debian ``faketime``), which moves
every wall-clock read of the process (``time.time``, ``datetime.now``, C libraries) and
leaves ``CLOCK_MONOTONIC`` alone; skipped where libfaketime is not installed. The machine's
clock is never touched.

Wall-clock uses left in the worker on purpose (grep ``time.time``/``datetime.now`` in
worker/): timestamps (events, journals, backup and done-record stamps) and the verify's
freshness bound, compared with dhcpd's own wall-clock ``local-stos`` (worker/change/verify.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shlex
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.change.helpers import PRIMARY_AFTER, PRIMARY_CONF, SECONDARY_CONF, sha
from tests.consumer.support import EventTap, assert_depth, publish_raw
from tests.e2e.conftest import SSH_TIMEOUTS, ServeOn, restore_logging, serve_on
from tests.e2e.support import (
    change_ended,
    modify_body,
    new_request_id,
    rewrite_restart_command,
    slow_restart,
)
from tests.e2e.test_startup import start_worker
from tests.faults.cluster_support import WorkerProcess
from tests.faults.report import record
from tests.faults.test_server_trouble import HANG_SECONDS, assert_nothing_left, hosts, one_outcome
from worker.demo import PRIMARY, SECONDARY
from worker.demo.localhosts import LocalHosts, Restart
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]
_FIXTURES = (serve_on, restore_logging, hosts)  # imported so that pytest finds them here

HOUR = 3600.0
#: The secondary's hung restart is stopped after this many (real) seconds.
COMMAND_TIMEOUT = 4.0
#: How long the primary's restart takes (the +1 h jump happens while it runs).
SLOW_RESTART = 1.5
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


# -- 5. a restart that hangs past command_timeout (no omapi table) ----------------------------


def hang_after_restart_once(hosts: LocalHosts, name: str) -> Path:
    """``name``'s next restart restarts (on the new file), then hangs; its marker."""
    marker = hosts.hosts[name].root / "hang-once"
    marker.touch()
    m = shlex.quote(str(marker))
    rewrite_restart_command(
        hosts,
        name,
        lambda cmd: f"{cmd} || exit 1; if [ -e {m} ]; then rm -f {m}; sleep {HANG_SECONDS}; fi",
    )
    return marker


def hung_sleeps(hosts: LocalHosts) -> list[int]:
    """Pids of this test's hung restarts still alive on the servers (``sleep 37`` carrying
    the hosts' token)."""
    token = f"DHCP_FAILOVER_LOCALHOSTS={hosts.token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[:2] == [b"sleep", str(HANG_SECONDS).encode()] and token in environ:
            found.append(int(entry.name))
    return found


async def test_a_restart_past_its_timeout_without_omapi_is_undone_and_called_ambiguous(
    hosts: LocalHosts, serve_on: ServeOn
) -> None:
    marker = hang_after_restart_once(hosts, SECONDARY)
    stack = await serve_on(hosts, command_timeout=COMMAND_TIMEOUT)

    data = await one_outcome(stack, modify_body(new_request_id("hang"), Mclt=1800, Port=648))

    assert data["outcome"] == "rolled_back"
    error = data["error"]
    assert (error["code"], error["server"], error["phase"]) == ("ambiguous", SECONDARY, "commit")
    message = error["message"]
    assert message.startswith(f"restart on {SECONDARY} did not finish")
    assert "whether dhcpd runs the new config is unknown" in message
    assert "no omapi table to check it, so it is undone" in message
    assert f"did not finish within {COMMAND_TIMEOUT:g}s and was stopped on the server" in message
    assert error["detail"]["step"] == "restart"
    assert not marker.exists()  # it did hang
    assert hung_sleeps(hosts) == []  # ... and the server killed it
    # It had restarted on the new file before it hung: the rollback restarted it on the old.
    secondary = stack.secondary
    assert [r.status for r in secondary.restarts()] == ["ok", "ok"]
    assert secondary.restarts()[-1].sha256 == sha(SECONDARY_CONF)
    assert stack.primary.restarts()[-1].sha256 == sha(PRIMARY_CONF)
    assert stack.live() == {PRIMARY: PRIMARY_CONF.encode(), SECONDARY: SECONDARY_CONF.encode()}
    assert [(s["state"], s["restarted"]) for s in data["servers"]] == [("old", True)] * 2
    assert (data["verified"], data["verifySkipped"]) == (False, "no omapi in inventory")
    for host in hosts.hosts.values():
        assert_nothing_left(host)
    record("restart hangs past command_timeout", "no omapi table", "rolled_back (ambiguous)")


# -- 7. the worker's wall clock jumps -----------------------------------------------------------


def jumps(hosts: LocalHosts) -> tuple[Path, Path]:
    """Make the primary's restart slow and the secondary's hang once after restarting; the
    files that say when each begins (the first appears, the second disappears)."""
    primary_begun = slow_restart(hosts, PRIMARY, SLOW_RESTART)
    secondary_hangs = hang_after_restart_once(hosts, SECONDARY)
    return primary_begun, secondary_hangs


async def until(condition: Callable[[], bool]) -> None:
    """Poll a file the servers' scripts write (nothing to wait on); the test's timeout bounds
    it."""
    for _ in itertools.count():
        if condition():
            return
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def jumping(
    hosts: LocalHosts, set_offset: Callable[[float], None]
) -> AsyncIterator[list[float]]:
    """Jump the worker's wall clock +1 h when the primary's restart begins and to -1 h when
    the secondary's hang begins; yields the offsets set, in order."""
    primary_begun, secondary_hangs = jumps(hosts)
    done: list[float] = []

    async def watch() -> None:
        await until(primary_begun.exists)
        set_offset(HOUR)
        done.append(HOUR)
        await until(lambda: not secondary_hangs.exists())
        set_offset(-HOUR)
        done.append(-HOUR)

    watcher = asyncio.create_task(watch())
    try:
        yield done
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def assert_real_durations_and_timeouts(hosts: LocalHosts, data: dict[str, Any]) -> None:
    """The primary's restart was not timed out by the +1 h jump, the secondary's was by its
    real timeout despite the -1 h one; durations are the real ones, not off by an hour."""
    assert data["outcome"] == "rolled_back", data["error"]
    error = data["error"]
    assert (error["code"], error["server"], error["phase"]) == ("ambiguous", SECONDARY, "commit")
    assert f"did not finish within {COMMAND_TIMEOUT:g}s" in error["message"]
    primary, secondary = hosts.hosts[PRIMARY], hosts.hosts[SECONDARY]
    assert primary.restarts() == [
        Restart("ok", sha(PRIMARY_AFTER)),
        Restart("ok", sha(PRIMARY_CONF)),
    ]
    assert secondary.restarts()[-1] == Restart("ok", sha(SECONDARY_CONF))
    assert (primary.config_bytes(), secondary.config_bytes()) == (
        PRIMARY_CONF.encode(),
        SECONDARY_CONF.encode(),
    )
    assert hung_sleeps(hosts) == []
    # The whole change took at least the slow restart and the timeout, and not an hour.
    low = (SLOW_RESTART + COMMAND_TIMEOUT) * 1000
    assert low <= data["durationMs"] < HOUR * 1000 / 2, data["durationMs"]
    for server in data["servers"]:
        assert 0 <= server["durationMs"] <= data["durationMs"], server
    by_name = {s["name"]: s for s in data["servers"]}
    assert by_name[PRIMARY]["durationMs"] >= 2 * SLOW_RESTART * 1000  # restarted twice
    assert by_name[SECONDARY]["durationMs"] >= COMMAND_TIMEOUT * 1000
    for host in hosts.hosts.values():
        assert_nothing_left(host)


async def test_wall_clock_jumps_in_process_leave_timeouts_and_durations_alone(
    hosts: LocalHosts, serve_on: ServeOn, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])

    def set_offset(seconds: float) -> None:
        offset[0] = seconds

    async with jumping(hosts, set_offset) as done:
        stack = await serve_on(hosts, command_timeout=COMMAND_TIMEOUT)
        data = await one_outcome(stack, modify_body(new_request_id("clock"), Mclt=1800))

    assert done == [HOUR, -HOUR]  # both jumps happened mid-change
    assert_real_durations_and_timeouts(hosts, data)
    record(
        "worker wall clock jumps +1 h, -1 h",
        "in process (time.time)",
        "rolled_back (the planned hang), real durations",
    )


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason=f"libfaketime not installed ({LIBFAKETIME})")
async def test_wall_clock_jumps_under_libfaketime_leave_timeouts_and_durations_alone(
    hosts: LocalHosts,
    broker_settings: Settings,
    amqp: Any,
    tap: EventTap,
    tmp_path: Path,
) -> None:
    offset_file = tmp_path / "faketime"
    offset_file.write_text("+0\n")
    settings = broker_settings.model_copy(
        update={**SSH_TIMEOUTS, "command_timeout": COMMAND_TIMEOUT}
    )

    def set_offset(seconds: float) -> None:
        offset_file.write_text(f"{seconds:+.0f}\n")

    request_id = new_request_id("faketime")
    async with jumping(hosts, set_offset) as done:
        worker = WorkerProcess(
            start_worker(
                settings,
                hosts.inventory_path,
                tmp_path / "worker.log",
                LD_PRELOAD=str(LIBFAKETIME),
                FAKETIME_TIMESTAMP_FILE=str(offset_file),
                FAKETIME_NO_CACHE="1",  # read the offset at every clock read
                FAKETIME_DONT_FAKE_MONOTONIC="1",  # the wall clock only
            ),
            tmp_path / "worker.log",
        )
        try:
            await publish_raw(amqp, broker_settings, modify_body(request_id, Mclt=1800))
            checked = await tap.next_checked(within=40)
            await assert_depth(amqp, broker_settings.request_queue, 0, within=20)
            await change_ended(*hosts.hosts.values())
            await tap.assert_quiet(0.3)
        finally:
            status = await asyncio.to_thread(worker.stop)

    assert done == [HOUR, -HOUR]
    assert checked.event.id == f"{request_id}/rolled_back"
    # The worker did see the jumps: its event's time is an hour behind the real clock.
    behind = datetime.now(UTC) - checked.event.time
    assert HOUR - 300 < behind.total_seconds() < HOUR + 300, behind
    assert_real_durations_and_timeouts(hosts, checked.raw["data"])
    assert status == 0, worker.log.read_text()[-3000:]
    record(
        "worker wall clock jumps +1 h, -1 h",
        "libfaketime on a run process",
        "rolled_back (the planned hang), real durations",
    )
