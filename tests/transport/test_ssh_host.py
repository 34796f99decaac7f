"""SshHost / SshFleet behaviour only a real sshd can show: keys, reachability, pooling, locks."""

from __future__ import annotations

import asyncio
import os
import posixpath
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.fixtures.sshd import LocalHostsFactory
from tests.transport.support import wait_until_locked
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY, sample_config, sample_configs
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.demo.processes import free_port
from worker.errors import (
    HostKeyMismatch,
    LockLost,
    LockTimeout,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    UnknownServer,
    Unreachable,
)
from worker.transport import SshFleet, SshOptions, load_inventory, parse_inventory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
FAST = SshOptions(connect_timeout=3, command_timeout=5, keepalive_interval=5)


@pytest.fixture
def pair(local_hosts: LocalHostsFactory) -> LocalHosts:
    return local_hosts(sample_configs(), addresses=SAMPLE_ADDRESSES)


@pytest.fixture
async def fleet(pair: LocalHosts) -> AsyncIterator[SshFleet]:
    fleet = SshFleet(load_inventory(pair.inventory_path), FAST)
    try:
        yield fleet
    finally:
        await fleet.close()


def _entry(hosts: LocalHosts, name: str, **changes: Any) -> dict[str, Any]:
    """The inventory entry localhosts wrote for ``name``, with ``changes`` applied."""
    import tomllib

    raw = tomllib.loads(hosts.inventory_path.read_text())["servers"][name]
    raw.update(changes)
    return dict(raw)


def _fleet_for(
    hosts: LocalHosts, name: str, options: SshOptions = FAST, **changes: Any
) -> SshFleet:
    raw = {"servers": {name: _entry(hosts, name, **changes)}}
    return SshFleet(parse_inventory(raw, hosts.inventory_path), options)


def _server_side_connections(local: LocalHost) -> list[int]:
    """Per-connection sshd processes: the children of the listening sshd."""
    master = local.process.pid
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                found.append(int(entry.name))
    return found


def _drop_connections(local: LocalHost) -> None:
    """Cut every SSH connection to ``local`` from the server side, as a network failure would."""
    for pid in _server_side_connections(local):
        os.kill(pid, signal.SIGKILL)


# -- fleet -------------------------------------------------------------------------------------


async def test_fleet_refuses_a_server_not_in_the_inventory(fleet: SshFleet) -> None:
    with pytest.raises(UnknownServer) as caught:
        fleet.host("rogue.example.net")
    assert "rogue.example.net" in caught.value.message


async def test_fleet_returns_one_pooled_host_per_server(fleet: SshFleet) -> None:
    assert fleet.host(PRIMARY) is fleet.host(PRIMARY)
    assert fleet.host(PRIMARY) is not fleet.host(SECONDARY)


async def test_fleet_finds_servers_by_name_and_failover_address(fleet: SshFleet) -> None:
    assert fleet.server_for_address("192.0.2.11") == SECONDARY
    assert fleet.server_for_address(PRIMARY) == PRIMARY
    assert fleet.server_for_address("198.51.100.1") is None
    assert fleet.server_for_address("127.0.0.1") is None  # shared by both: names neither


# -- host keys, reachability -------------------------------------------------------------------


async def test_unknown_host_key_is_refused_naming_the_server(pair: LocalHosts) -> None:
    other = pair.hosts[SECONDARY]
    pair.known_hosts.write_text(f"[127.0.0.1]:{other.port} {other.host_key_line}\n")
    async with _fleet_for(pair, PRIMARY) as fleet:
        with pytest.raises(HostKeyMismatch) as caught:
            await fleet.host(PRIMARY).read(pair.hosts[PRIMARY].config_path.as_posix())
    assert caught.value.server == PRIMARY
    assert "is not in" in caught.value.message
    assert pair.hosts[PRIMARY].accepted_connections() == 0


async def test_changed_host_key_is_refused_naming_the_server(pair: LocalHosts) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    port = pair.hosts[PRIMARY].port
    pair.known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(impostor.split()[:2])}\n")
    async with _fleet_for(pair, PRIMARY) as fleet:
        with pytest.raises(HostKeyMismatch) as caught:
            await fleet.host(PRIMARY).restart()
    assert caught.value.server == PRIMARY
    assert "does not match" in caught.value.message
    assert pair.hosts[PRIMARY].restarts() == []


@pytest.fixture
def closed_port() -> int:
    return free_port()


async def test_refused_connection_is_unreachable_naming_the_server(
    pair: LocalHosts, closed_port: int
) -> None:
    async with _fleet_for(pair, PRIMARY, port=closed_port) as fleet:
        with pytest.raises(Unreachable) as caught:
            await fleet.host(PRIMARY).read("/etc/hostname")
    assert caught.value.server == PRIMARY
    assert f"127.0.0.1:{closed_port}" in caught.value.message


async def test_unresolvable_host_is_unreachable(pair: LocalHosts) -> None:
    async with _fleet_for(pair, PRIMARY, host="no-such-host.invalid") as fleet:
        with pytest.raises(Unreachable) as caught:
            await fleet.host(PRIMARY).listdir("/")
    assert "no-such-host.invalid" in caught.value.message


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP but never speaks SSH."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


async def test_a_server_that_never_answers_is_unreachable_after_the_connect_timeout(
    pair: LocalHosts, silent_port: int
) -> None:
    options = SshOptions(connect_timeout=0.5, command_timeout=5)
    async with _fleet_for(pair, PRIMARY, options, port=silent_port) as fleet:
        started = time.monotonic()
        with pytest.raises(Unreachable) as caught:
            await fleet.host(PRIMARY).read("/etc/hostname")
    assert time.monotonic() - started < 3
    assert "within 0.5s" in caught.value.message


async def test_a_key_the_server_does_not_accept_is_unreachable_and_says_so(
    pair: LocalHosts, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(stranger)
    async with _fleet_for(pair, PRIMARY, client_keys=[str(stranger)]) as fleet:
        with pytest.raises(Unreachable) as caught:
            await fleet.host(PRIMARY).read("/etc/hostname")
    assert "authorized_keys" in caught.value.message


# -- pooling -----------------------------------------------------------------------------------


async def test_one_connection_serves_many_operations(pair: LocalHosts, fleet: SshFleet) -> None:
    host = fleet.host(PRIMARY)
    local = pair.hosts[PRIMARY]
    candidate = posixpath.join(posixpath.dirname(host.config_path), "candidate.conf")

    async def change() -> None:
        async with host.lock(5):
            await host.read(host.config_path)
            await host.write(candidate, local.config_bytes(), like=host.config_path)
            assert (await host.validate(candidate)).ok
            await host.replace(candidate, host.config_path)
            assert (await host.restart()).ok
        await host.listdir(posixpath.dirname(host.config_path))

    await change()
    assert host.execs_started == 1  # one agent shell holds the lock and runs the commands
    for _ in range(3):
        await change()
    assert host.execs_started == 1  # a warm change starts no new exec; files go over SFTP
    assert host.connections_opened == 1
    assert local.accepted_connections() == 1
    assert [r.status for r in local.restarts()] == ["ok"] * 4


async def test_a_dropped_connection_is_replaced_transparently_for_reads(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    host = fleet.host(PRIMARY)
    local = pair.hosts[PRIMARY]
    assert await host.read(host.config_path) == local.config_bytes()
    _drop_connections(local)
    await asyncio.sleep(0.2)
    assert await host.read(host.config_path) == local.config_bytes()
    assert (await host.restart()).ok
    assert host.connections_opened == 2
    assert local.accepted_connections() == 2


# -- locks -------------------------------------------------------------------------------------


async def test_lock_excludes_another_worker_with_its_own_connection(pair: LocalHosts) -> None:
    async with _fleet_for(pair, PRIMARY) as mine, _fleet_for(pair, PRIMARY) as theirs:
        async with mine.host(PRIMARY).lock(5):
            with pytest.raises(LockTimeout):
                async with theirs.host(PRIMARY).lock(0.3):
                    pytest.fail("two workers held the lock at once")
        async with theirs.host(PRIMARY).lock(2):
            pass


HOLDER = """
import asyncio, sys
from worker.transport import SshFleet, load_inventory

async def main() -> None:
    fleet = SshFleet(load_inventory(sys.argv[1]))
    async with fleet.host(sys.argv[2]).lock(5):
        print("locked", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_lock_of_a_worker_that_dies_is_released(pair: LocalHosts) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(pair.inventory_path), PRIMARY,
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until_locked(holder)
        async with _fleet_for(pair, PRIMARY) as fleet:
            with pytest.raises(LockTimeout):
                async with fleet.host(PRIMARY).lock(0.3):
                    pytest.fail("lock not held by the other worker")
            holder.kill()  # no cleanup code runs: only the closed TCP connection tells sshd
            await holder.wait()
            started = time.monotonic()
            async with fleet.host(PRIMARY).lock(10):
                assert time.monotonic() - started < 5
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_operations_refuse_to_continue_once_the_lock_connection_is_lost(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    host = fleet.host(PRIMARY)
    local = pair.hosts[PRIMARY]
    async with host.lock(5):
        _drop_connections(local)
        await asyncio.sleep(0.3)
        assert host.lock_lost()
        with pytest.raises(LockLost) as caught:
            await host.write(local.config_dir.joinpath("candidate.conf").as_posix(), b"x\n")
        assert "lock was lost" in caught.value.message
        with pytest.raises(LockLost):
            await host.restart()
    assert not local.config_dir.joinpath("candidate.conf").exists()
    assert local.restarts() == []
    async with host.lock(2):  # a later change reconnects and locks normally
        assert await host.read(host.config_path) == local.config_bytes()


async def test_a_lock_file_that_cannot_be_created_is_a_clear_failure(pair: LocalHosts) -> None:
    from worker.errors import CommandFailed

    async with _fleet_for(pair, PRIMARY, lock_path="/nonexistent/dir/.lock") as fleet:
        with pytest.raises(CommandFailed) as caught:
            async with fleet.host(PRIMARY).lock(1):
                pytest.fail("lock taken in a directory that does not exist")
    assert "/nonexistent/dir/.lock" in caught.value.message


# -- files and commands --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o4750], ids=["plain", "set-uid"])
async def test_write_leaves_no_temp_file_and_keeps_owner_and_mode(
    pair: LocalHosts, fleet: SshFleet, mode: int
) -> None:
    # Owner and mode normally go in one request along with the data; with set-id bits the
    # owner goes first and then the mode, as a chown may clear them.
    host = fleet.host(PRIMARY)
    local = pair.hosts[PRIMARY]
    os.chown(local.config_path, 65534, 65534)
    os.chmod(local.config_path, mode)
    candidate = local.config_dir / "candidate.conf"
    await host.write(candidate.as_posix(), b"data\n", like=host.config_path)
    st = candidate.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, mode)
    assert candidate.read_bytes() == b"data\n"
    assert sorted(p.name for p in local.config_dir.iterdir()) == ["candidate.conf", "dhcpd.conf"]


async def test_a_write_in_place_makes_a_new_file_and_never_truncates_one(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    """In place: a new file written straight (one round trip less). One already there is
    replaced the atomic way, never truncated, so a hard link to it (or a dead worker's
    late write into it) changes nothing of the new file."""
    host = fleet.host(PRIMARY)
    staged = pair.hosts[PRIMARY].config_dir / ".dhcpd.conf.req-1.new"
    await host.write(staged.as_posix(), b"first\n", in_place=True)
    old = staged.parent / "old-link"
    os.link(staged, old)
    await host.write(staged.as_posix(), b"second\n", in_place=True)
    assert (staged.read_bytes(), old.read_bytes()) == (b"second\n", b"first\n")
    assert sorted(p.name for p in staged.parent.iterdir() if p.name.endswith(".tmp")) == []


async def test_reading_a_device_that_never_ends_stops_at_the_read_limit(fleet: SshFleet) -> None:
    with pytest.raises(RemoteFileTooLarge) as caught:  # (32 MiB: about 0.1 s here)
        await fleet.host(PRIMARY).read("/dev/zero")
    assert caught.value.server == PRIMARY
    assert "/dev/zero" in caught.value.message


async def test_write_into_a_missing_directory_is_file_not_found(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    with pytest.raises(RemoteFileNotFound) as caught:
        await fleet.host(PRIMARY).write("/nonexistent/dir/dhcpd.conf", b"x\n")
    assert caught.value.server == PRIMARY


async def test_validate_passes_dhcpds_own_diagnosis_through(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    host = fleet.host(PRIMARY)
    broken = sample_config("primary").replace(
        'failover peer "dhcp-failover";', 'failover peer "x";'
    )
    candidate = posixpath.join(posixpath.dirname(host.config_path), "candidate.conf")
    await host.write(candidate, broken.encode())
    result = await host.validate(candidate)
    assert result.exit_status == 1
    assert "failover peer x: not found" in result.stderr
    assert "candidate.conf line" in result.stderr


async def test_paths_with_spaces_quotes_and_dollars_are_quoted_not_interpreted(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    host = fleet.host(PRIMARY)
    local = pair.hosts[PRIMARY]
    name = """it's a "quoted" $(touch PWNED) `touch PWNED2`; file.conf"""
    candidate = (local.config_dir / name).as_posix()
    await host.write(candidate, local.config_bytes())
    result = await host.validate(candidate)
    assert result.ok, result.stderr
    assert name in result.stderr  # dhcpd saw the path exactly: "Config file: ..."
    everywhere = [Path.home(), local.root, local.config_dir, Path.cwd()]
    assert not [d for d in everywhere for p in ("PWNED", "PWNED2") if (d / p).exists()]


async def test_restart_runs_the_verify_command_in_the_same_request(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    host = fleet.host(PRIMARY)
    local = pair.hosts[PRIMARY]
    ok = await host.restart()
    assert ok.ok
    assert ok.stdout.strip() == "active"
    assert " && " in ok.command
    local.set_marker("fail-verify")
    failed = await host.restart()
    assert failed.exit_status == 3
    assert [r.status for r in local.restarts()] == ["ok", "ok"]


async def test_a_restart_that_fails_to_start_dhcpd_reports_its_output(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    local = pair.hosts[PRIMARY]
    local.config_path.write_text("this is not a dhcpd.conf\n")
    result = await fleet.host(PRIMARY).restart()
    assert not result.ok
    assert "isc-dhcp-server" in result.stderr
    assert [r.status for r in local.restarts()] == ["failed"]


async def test_only_the_path_placeholder_is_substituted_in_commands(pair: LocalHosts) -> None:
    local = pair.hosts[PRIMARY]
    validate = f'test -n "${{HOME}}" && {local.root}/bin/validate.sh {{path}}'
    async with _fleet_for(pair, PRIMARY, validate_command=validate) as fleet:
        result = await fleet.host(PRIMARY).validate(local.config_path.as_posix())
    assert result.ok, result.stderr
    assert result.command.startswith('test -n "${HOME}" && ')


def _latin1_file(directory: Path, data: bytes | None = None) -> tuple[Path, bytes]:
    """``M\xfcnchen.conf`` in ``directory`` (its name not UTF-8): written if ``data``, and
    its bytes now."""
    path = Path(os.fsdecode(os.fsencode(directory) + b"/M\xfcnchen.conf"))
    if data is not None:
        path.write_bytes(data)
    return path, path.read_bytes()


async def test_a_file_name_holding_a_latin1_byte_is_read_and_written_as_those_bytes(
    pair: LocalHosts, fleet: SshFleet
) -> None:
    # The engine decodes config text with surrogateescape, so an include of "M\xfcnchen.conf"
    # names the path "M\udcfcnchen.conf": over SFTP it must be the file of those bytes.
    local = pair.hosts[PRIMARY]
    path, _ = _latin1_file(local.config_dir, b"# included\n")
    host = fleet.host(PRIMARY)

    assert await host.read(str(path)) == b"# included\n"
    await host.write(str(path), b"# rewritten\n", like=str(path))
    assert _latin1_file(local.config_dir)[1] == b"# rewritten\n"
