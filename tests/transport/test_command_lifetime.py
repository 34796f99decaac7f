"""How long a remote command lives, on a real sshd: never past the change lock of the worker
that started it (the worker killed, or the agent discarded), and stopped on the server when
it runs past ``command_timeout`` while the lock stays held."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

import worker.transport.commands as commands
from tests.fixtures.sshd import LocalHostsFactory
from tests.transport.support import (
    AGENT_MODES,
    fleet_for,
    gone,
    inventory_file,
    processes,
    wait_until_locked,
)
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, sample_configs
from worker.demo.localhosts import LocalHosts
from worker.errors import Ambiguous, LockLost, LockTimeout
from worker.transport import SshOptions
from worker.transport.agentscript import GONE_WAIT, KILL_GRACE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]

#: A worker in a process of its own: takes the lock, then runs a restart that never ends
#: (its agent started with the command in argv[3]).
WORKER = """
import asyncio, sys
import worker.transport.commands as commands
from worker.transport import SshFleet, SshOptions, load_inventory

commands.AGENT_COMMAND = sys.argv[3]

async def main() -> None:
    options = SshOptions(connect_timeout=5, command_timeout=50)
    host = SshFleet(load_inventory(sys.argv[1]), options).host(sys.argv[2])
    async with host.lock(5):
        print("locked", flush=True)
        await host.restart()
        print("restart returned", flush=True)

asyncio.run(main())
"""


SFTP_SERVER = "/sftp-server "
"""In the SFTP server's command line (the agent's script names it too, never so)."""

#: A worker in a process of its own: takes the lock, then, when told on stdin, writes a file.
WRITER = """
import asyncio, sys
from worker.transport import SshFleet, SshOptions, load_inventory

async def main() -> None:
    host = SshFleet(load_inventory(sys.argv[1]), SshOptions(connect_timeout=5)).host(sys.argv[2])
    async with host.lock(5):
        print("locked", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await host.write(sys.argv[3], b"late", in_place=True)
        print("written", flush=True)

asyncio.run(main())
"""


@pytest.fixture
def pair(local_hosts: LocalHostsFactory) -> LocalHosts:
    return local_hosts(sample_configs(), addresses=SAMPLE_ADDRESSES, hang_seconds=60)


@pytest.fixture(params=["jobs", "timeout"])
def agent_command(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the agent keeps a time limit: bash's job control (where the server has bash)
    and GNU timeout (where it has not)."""
    command = AGENT_MODES[request.param]
    monkeypatch.setattr(commands, "AGENT_COMMAND", command)
    return command


def _ticker(directory: Path, ticks: Path, token: str) -> str:
    """A restart command that appends the time to ``ticks`` every 50 ms for about 25 s
    (bounded, so nothing outlives a failed test for long); ``token`` names it in ``ps``."""
    script = directory / "ticking-restart.sh"
    script.write_text(
        "#!/bin/sh\n"
        "n=0\n"
        'while [ "$n" -lt 400 ]; do\n'
        f"  date +%s.%N >> '{ticks}'\n"
        "  sleep 0.05\n"
        "  n=$((n + 1))\n"
        "done\n"
    )
    script.chmod(0o755)
    return f"{script} {token}"


def _ticks(ticks: Path) -> list[float]:
    return [float(t) for t in ticks.read_text().split()] if ticks.exists() else []


async def _ticking(ticks: Path) -> None:
    """Return once the restart has ticked a few times (within 15 s)."""
    for _ in range(300):
        if len(_ticks(ticks)) >= 3:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the restart never ticked")


def _last_tick(ticks: Path) -> float:
    return max(_ticks(ticks))


async def test_the_command_of_a_killed_worker_ends_before_its_lock_is_free(
    pair: LocalHosts, tmp_path: Path, agent_command: str
) -> None:
    ticks, token = tmp_path / "ticks", uuid.uuid4().hex
    restart = _ticker(tmp_path, ticks, token)
    inventory = inventory_file(pair, "ticking.toml", restart_command=restart, verify_command=None)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, str(inventory), PRIMARY, agent_command,
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until_locked(worker)
        await _ticking(ticks)
        async with fleet_for(pair) as fleet:
            host = fleet.host(PRIMARY)
            with pytest.raises(LockTimeout):
                async with host.lock(0.2):
                    pytest.fail("the lock is not held by the other worker")
            worker.kill()  # no cleanup code runs: only the closed TCP connection tells sshd
            await worker.wait()
            async with host.lock(15):
                locked_at = time.time()
            await asyncio.sleep(1.0)  # a restart still running would tick 20 times meanwhile
        assert _last_tick(ticks) < locked_at, "the restart ran on after the lock was free"
        assert not processes(pair, token)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def test_a_command_given_up_on_under_the_lock_ends_before_the_lock_is_free(
    pair: LocalHosts, tmp_path: Path, agent_command: str
) -> None:
    ticks, token = tmp_path / "ticks", uuid.uuid4().hex
    restart = _ticker(tmp_path, ticks, token)
    async with (
        fleet_for(pair, restart_command=restart, verify_command=None) as mine,
        fleet_for(pair) as theirs,
    ):
        host = mine.host(PRIMARY)

        async def change() -> None:
            async with host.lock(5):
                await host.restart()

        task = asyncio.create_task(change())
        await _ticking(ticks)
        task.cancel()  # the request cannot complete: its agent, and the lock, are dropped
        with pytest.raises(asyncio.CancelledError):
            await task
        async with theirs.host(PRIMARY).lock(15):
            locked_at = time.time()
        await asyncio.sleep(1.0)
    assert _last_tick(ticks) < locked_at, "the restart ran on after the lock was free"
    assert not processes(pair, token)


async def test_a_command_timed_out_on_the_server_is_ambiguous_and_leaves_the_lock_held(
    pair: LocalHosts, agent_command: str
) -> None:
    local = pair.hosts[PRIMARY]
    options = SshOptions(connect_timeout=5, command_timeout=1)
    async with fleet_for(pair, options) as fleet, fleet_for(pair) as other:
        host = fleet.host(PRIMARY)
        async with host.lock(5):
            local.set_marker("hang-restart")
            with pytest.raises(Ambiguous) as caught:
                await host.restart()
            assert "stopped on the server" in caught.value.message
            assert not processes(pair, "sleep 60"), "the reply came before the command ended"
            local.set_marker("hang-restart", on=False)
            with pytest.raises(LockTimeout):
                async with other.host(PRIMARY).lock(0.2):
                    pytest.fail("the lock was lost with the timed-out command")
            assert (await host.restart()).ok  # the rollback can restart, under the same lock
            assert (await host.validate(host.config_path)).ok
        assert host.execs_started == 1  # the lock's agent ran every command, and was kept
    assert [r.status for r in local.restarts()] == ["hung", "ok"]


async def test_without_gnu_timeout_the_worker_gives_up_and_the_agent_ends_the_command(
    pair: LocalHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "AGENT_COMMAND", AGENT_MODES[""])
    local = pair.hosts[PRIMARY]
    options = SshOptions(connect_timeout=5, command_timeout=1)
    async with fleet_for(pair, options) as fleet:
        host = fleet.host(PRIMARY)
        async with host.lock(5):
            local.set_marker("hang-restart")
            with pytest.raises(Ambiguous) as caught:
                await host.restart()
            assert "past its 1s timeout" in caught.value.message
            with pytest.raises(LockLost) as refused:  # its agent held the lock: both gone
                await host.validate(host.config_path)
            assert "lock was lost" in refused.value.message
        assert await gone(pair, "sleep 60", within=GONE_WAIT + KILL_GRACE + 3)
        local.set_marker("hang-restart", on=False)
        assert (await host.restart()).ok
    assert [r.status for r in local.restarts()] == ["hung", "ok"]


async def test_a_command_that_ignores_term_is_killed_after_the_grace(
    pair: LocalHosts, agent_command: str
) -> None:
    """As GNU timeout does: TERM at the limit, KILL ``KILL_GRACE`` later, for the whole group."""
    restart = "trap '' TERM; sleep 30 & sleep 31"
    options = SshOptions(connect_timeout=5, command_timeout=1)
    async with fleet_for(pair, options, restart_command=restart, verify_command=None) as fleet:
        host = fleet.host(PRIMARY)
        async with host.lock(5):
            started = time.monotonic()
            with pytest.raises(Ambiguous) as caught:
                await host.restart()
            took = time.monotonic() - started
            assert "stopped on the server" in caught.value.message
            assert (await host.validate(host.config_path)).ok  # the agent and its lock stay
    assert 1 + KILL_GRACE <= took < 1 + KILL_GRACE + 3
    assert not processes(pair, "sleep 30") and not processes(pair, "sleep 31")


async def test_a_write_of_a_killed_worker_lands_before_its_lock_is_free(
    pair: LocalHosts, tmp_path: Path, agent_command: str
) -> None:
    """The connection's SFTP server may still be working through requests the worker sent
    before it died; the agent lets go of the lock only once that server has ended. Here the
    SFTP server is stopped, so the write (its exclusive open) is still to come."""
    target = pair.hosts[PRIMARY].config_dir / "late-write"
    others = set(processes(pair, SFTP_SERVER))
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(pair.inventory_path), PRIMARY, str(target),
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stopped: list[int] = []
    try:
        await wait_until_locked(worker)
        stopped = [p for p in processes(pair, SFTP_SERVER) if p not in others]
        assert len(stopped) == 1, stopped  # the worker's
        os.kill(stopped[0], signal.SIGSTOP)
        async with fleet_for(pair) as fleet:
            host = fleet.host(PRIMARY)
            await host.read(host.config_path)  # connected before the kill
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
            await asyncio.sleep(0.3)  # the write's first request is on its way
            worker.kill()
            await worker.wait()
            with pytest.raises(LockTimeout):
                async with host.lock(0.5):
                    pytest.fail("the lock was free while the dead worker's write was pending")
            assert not target.exists()
            os.kill(stopped[0], signal.SIGCONT)
            async with host.lock(15):
                landed = target.exists()
        assert landed, "the lock was free before the dead worker's write landed"
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
