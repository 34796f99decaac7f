"""The agent shells behind SshHost's commands and locks, on a real sshd: framing, reuse,
listings, cancellation. (How long a command lives: test_command_lifetime.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from tests.fixtures.sshd import LocalHostsFactory
from tests.transport.support import AGENT_MODES, FAST, fleet_for, gone, processes
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, sample_configs
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.errors import (
    Ambiguous,
    CommandFailed,
    RemoteFileError,
    RemoteFileNotFound,
)
from worker.transport import SshFleet, load_inventory
from worker.transport.agent import Agent
from worker.transport.agentscript import AGENT_COMMAND

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def pair(local_hosts: LocalHostsFactory) -> LocalHosts:
    return local_hosts(sample_configs(), addresses=SAMPLE_ADDRESSES, hang_seconds=60)


@pytest.fixture
async def fleet(pair: LocalHosts) -> AsyncIterator[SshFleet]:
    fleet = SshFleet(load_inventory(pair.inventory_path), FAST)
    try:
        yield fleet
    finally:
        await fleet.close()


async def _raw_connection(hosts: LocalHosts, local: LocalHost) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        local.port,
        username=os.environ.get("USER") or "root",
        client_keys=[str(hosts.client_key)],
        known_hosts=str(hosts.known_hosts),
        config=None,
        agent_path=None,
    )


@contextlib.asynccontextmanager
async def _agent_in_mode(pair: LocalHosts, mode: str) -> AsyncIterator[Agent]:
    """An agent on the primary, started as :data:`AGENT_MODES` says for ``mode``."""
    async with await _raw_connection(pair, pair.hosts[PRIMARY]) as conn:
        process = await conn.create_process(AGENT_MODES[mode], encoding=None)
        agent = await Agent.start(conn, process, 5)
        try:
            yield agent
        finally:
            agent.retire()


# -- framing -------------------------------------------------------------------------------------


async def test_streams_status_and_bytes_come_back_exactly(pair: LocalHosts) -> None:
    command = (
        ": {path}; printf 'no newline at the end'; printf 'to stderr\\n' >&2; "
        "head -c 300000 /dev/zero | tr '\\0' x >&2; exit 7"
    )
    async with fleet_for(pair, validate_command=command) as fleet:
        result = await fleet.host(PRIMARY).validate("/unused")
    assert result.exit_status == 7
    assert result.stdout == "no newline at the end"
    assert result.stderr == "to stderr\n" + "x" * 300000


async def test_a_multi_line_command_runs_whole(pair: LocalHosts) -> None:
    async with fleet_for(pair, validate_command="echo one\necho two {path}") as fleet:
        result = await fleet.host(PRIMARY).validate("/a path")
    assert result.ok
    assert result.stdout == "one\ntwo /a path\n"


async def test_a_command_reading_stdin_gets_eof_and_leaves_the_agent_usable(
    pair: LocalHosts,
) -> None:
    async with fleet_for(pair, validate_command="cat; echo after cat {path}") as fleet:
        host = fleet.host(PRIMARY)
        first = await host.validate("/unused")
        second = await host.validate("/unused")
    assert first.stdout == second.stdout == "after cat /unused\n"
    assert host.execs_started == 1


async def test_concurrent_commands_on_one_host_each_get_their_own_output(
    pair: LocalHosts,
) -> None:
    async with fleet_for(pair, validate_command="sleep 0.2; echo {path}") as fleet:
        host = fleet.host(PRIMARY)
        results = await asyncio.gather(*(host.validate(f"/p{i}") for i in range(3)))
        assert [r.stdout for r in results] == ["/p0\n", "/p1\n", "/p2\n"]
        assert host.execs_started == 3
        await asyncio.gather(*(host.validate(f"/p{i}") for i in range(3)))
        assert host.execs_started == 3  # the pool serves the second round


async def test_start_up_noise_of_the_login_shell_is_skipped(pair: LocalHosts) -> None:
    local = pair.hosts[PRIMARY]
    async with await _raw_connection(pair, local) as conn:
        process = await conn.create_process(
            f"echo motd-like noise; echo more noise >&2; {AGENT_COMMAND}", encoding=None
        )
        agent = await Agent.start(conn, process, 5)
        reply = await agent.request("run", "10", "echo hi; echo err >&2", 5)
        agent.retire()
    assert (reply.status, reply.stdout, reply.stderr) == (0, b"hi\n", b"err\n")


@pytest.mark.parametrize("mode", ["jobs", "timeout", ""])
async def test_the_agent_keeps_time_with_bash_else_gnu_timeout_and_runs_bodies_alike(
    pair: LocalHosts, mode: str
) -> None:
    """bash (in POSIX mode) where the server has it, else GNU timeout, else no server-side
    limit; a body sees no arguments and leaves nothing behind in any of them."""
    async with _agent_in_mode(pair, mode) as agent:
        reply = await agent.run('printf "%s|" "$#" "${x-unset}"; x=1; exit 3', 10)
        again = await agent.run('printf "%s" "${x-unset}"; cd /; false', 10)
        where = await agent.run("pwd", 10)
    assert (agent.mode, agent.kills_on_timeout) == (mode, bool(mode))
    assert (reply.status, reply.stdout, reply.stderr) == (3, b"0|unset|", b"")
    assert (again.status, again.stdout) == (1, b"unset")
    assert where.stdout != b"/\n"


@pytest.mark.parametrize("mode", ["jobs", "timeout", ""])
async def test_a_command_not_found_is_reported_without_the_agents_script_lines(
    pair: LocalHosts, mode: str
) -> None:
    """The operator sees what is wrong with the command, not where bash was in the agent."""
    async with _agent_in_mode(pair, mode) as agent:
        missing = await agent.run("dfw-no-such-command --flag", 10)
        broken = await agent.run("echo (", 10)
    assert missing.status == 127
    assert b"dfw-no-such-command" in missing.stderr and b"not found" in missing.stderr
    assert broken.status != 0 and b"syntax error" in broken.stderr.lower()
    for reply in (missing, broken):
        assert b"dfw-agent" not in reply.stderr


async def test_a_request_cut_short_is_never_run(pair: LocalHosts, tmp_path: Path) -> None:
    local = pair.hosts[PRIMARY]
    marker = tmp_path / "ran"
    async with await _raw_connection(pair, local) as conn:
        process = await conn.create_process(AGENT_COMMAND, encoding=None)
        await Agent.start(conn, process, 5)
        process.stdin.write(f"run {'a' * 32} 10\ntouch {marker}\n".encode())  # no closing token
        process.stdin.write_eof()
        async with asyncio.timeout(5):
            await process.wait_closed()
    assert not marker.exists()


# -- reuse and replacement -------------------------------------------------------------------------


async def test_an_agent_that_died_while_idle_is_replaced_without_ambiguity(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    host = fleet.host(PRIMARY)
    assert (await host.restart()).ok
    for pid in processes(pair, "dfw-agent"):
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.3)
    assert (await host.restart()).ok
    assert host.execs_started == 2
    assert host.connections_opened == 1


async def test_closing_the_fleet_ends_every_agent(pair: LocalHosts) -> None:
    async with fleet_for(pair) as fleet:
        host = fleet.host(PRIMARY)
        async with host.lock(5):
            assert (await host.restart()).ok  # on the lock's agent
            await host.listdir(pair.hosts[PRIMARY].config_dir.as_posix())  # needs another
        assert len(processes(pair, "dfw-agent")) == 2
    assert await gone(pair, "dfw-agent", within=5)


# -- listings ------------------------------------------------------------------------------------


async def test_listdir_names_every_entry_exactly(pair: LocalHosts, fleet: SshFleet) -> None:
    directory = pair.hosts[PRIMARY].config_dir / "listing"
    directory.mkdir()
    files = ["plain", ".hidden", "..dotdot", "with space", "new\nline", "star*", "ünï", "-dash"]
    for name in files:
        (directory / name).write_text("x")
    (directory / "sub").mkdir()
    (directory / "dangling").symlink_to("/nonexistent/target")
    names = await fleet.host(PRIMARY).listdir(directory.as_posix())
    assert names == sorted([*files, "sub", "dangling"])
    assert await fleet.host(PRIMARY).listdir((directory / "sub").as_posix()) == []


async def test_the_lock_brings_the_config_directory_listing_once_and_forgets_it_on_a_change(
    pair: LocalHosts, fleet: SshFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change's first look at its directory under the lock costs no round trip of its
    own; a write (or a command) since, or a second look, lists the directory again."""
    host = fleet.host(PRIMARY)
    directory = posixpath.dirname(host.config_path)
    ops: list[str] = []
    request = Agent.request

    async def counted(agent: Agent, op: str, arg: str, body: str, limit: float) -> object:
        ops.append(op)
        return await request(agent, op, arg, body, limit)

    monkeypatch.setattr(Agent, "request", counted)
    before = sorted({*await host.listdir(directory), ".dhcp-failover.lock"})  # made by lock
    async with host.lock(5):
        assert await host.listdir(directory) == before
        assert ops == ["list", "lock"]
        await host.write(posixpath.join(directory, ".dfw-test.tmp"), b"x")
        assert ".dfw-test.tmp" in await host.listdir(directory)
        assert ops == ["list", "lock", "list"]
    async with host.lock(5):
        assert (await host.validate(host.config_path)).ok
        assert await host.listdir(directory) == sorted([*before, ".dfw-test.tmp"])
        assert await host.listdir(directory) == sorted([*before, ".dfw-test.tmp"])
    assert ops == ["list", "lock", "list", "unlock", "lock", "run", "list", "list", "unlock"]


async def test_a_write_without_the_lock_after_it_was_asked_for_is_never_missed(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    """Another request's plan may write without a lock (it completes a third change's
    bookkeeping) while a lock request is on its way, or after it: a listing the lock brought
    from before such a write is not served."""
    host = fleet.host(PRIMARY)
    directory = posixpath.dirname(host.config_path)
    held, wrote = asyncio.Event(), asyncio.Event()

    async def under_the_lock() -> list[str]:
        async with host.lock(5):
            held.set()
            await wrote.wait()
            return await host.listdir(directory)

    task = asyncio.create_task(under_the_lock())  # another request's task
    await held.wait()
    await host.write(posixpath.join(directory, ".dfw-beside.tmp"), b"x")  # holds no lock
    wrote.set()
    assert ".dfw-beside.tmp" in await task


async def test_listdir_takes_glob_characters_in_the_path_literally(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    root = pair.hosts[PRIMARY].config_dir
    (root / "a*[b]?").mkdir()
    (root / "a*[b]?" / "inside").write_text("x")
    (root / "axbz").mkdir()
    (root / "axbz" / "decoy").write_text("x")
    assert await fleet.host(PRIMARY).listdir((root / "a*[b]?").as_posix()) == ["inside"]


async def test_listdir_of_a_missing_or_unlistable_path_raises(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    local = pair.hosts[PRIMARY]
    with pytest.raises(RemoteFileNotFound) as missing:
        await fleet.host(PRIMARY).listdir((local.config_dir / "nope").as_posix())
    assert missing.value.server == PRIMARY
    with pytest.raises(RemoteFileError) as not_dir:
        await fleet.host(PRIMARY).listdir(local.config_path.as_posix())
    assert not isinstance(not_dir.value, RemoteFileNotFound)
    assert fleet.host(PRIMARY).execs_started == 1


# -- cancellation ------------------------------------------------------------------------------


async def test_a_cancelled_command_discards_its_agent_and_the_next_one_runs_cleanly(
    pair: LocalHosts,
) -> None:
    async with fleet_for(pair, validate_command="sleep 1; echo late {path}") as fleet:
        host = fleet.host(PRIMARY)
        task = asyncio.create_task(host.validate("/first"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await host.validate("/second")  # no reply of the first can leak into it
    assert result.stdout == "late /second\n"
    assert host.execs_started == 2


async def test_a_cancelled_lock_wait_does_not_keep_the_lock(pair: LocalHosts) -> None:
    async with fleet_for(pair) as holder, fleet_for(pair) as waiter, fleet_for(pair) as third:
        async with holder.host(PRIMARY).lock(5):
            task = asyncio.create_task(_hold_briefly(waiter, 5))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        started = time.monotonic()
        async with third.host(PRIMARY).lock(5):
            assert time.monotonic() - started < 3


async def _hold_briefly(fleet: SshFleet, wait: float) -> None:
    async with fleet.host(PRIMARY).lock(wait):
        pytest.fail("the waiter got a lock that was held")


async def test_output_beyond_the_channel_window_is_ambiguous_and_says_why(
    pair: LocalHosts,
) -> None:
    command = ": {path}; head -c 5000000 /dev/zero"
    async with fleet_for(pair, validate_command=command) as fleet:
        host = fleet.host(PRIMARY)
        with pytest.raises(Ambiguous) as caught:
            await host.validate("/unused")
        assert "channel window" in caught.value.message
        assert (await host.restart()).ok  # a fresh agent takes over


async def test_a_shell_that_cannot_run_the_agent_is_a_clear_failure(
    pair: LocalHosts, fleet: SshFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.transport.commands as commands

    monkeypatch.setattr(commands, "AGENT_COMMAND", "echo 'fish: unsupported syntax' >&2; exit 127")
    with pytest.raises(CommandFailed) as caught:
        await fleet.host(PRIMARY).restart()
    assert "remote shell did not start" in caught.value.message
    assert pair.hosts[PRIMARY].restarts() == []
