"""LocalFileHost / LocalFleet: the ``RemoteHost`` the offline ``plan`` runs the worker on.

Its file operations keep the promises of the ``RemoteHost`` protocol (the contract suite's
behaviours for files and locks, restated here: the adapter cannot restart anything, which
that suite's harness requires), plus what local files add: a FIFO or device is refused
before it can block, and dhcpd runs in the working directory within a timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

from worker.change.ports import MAX_READ_BYTES
from worker.change.snapshot import read_snapshot
from worker.demo import sample_config
from worker.demo.processes import alive
from worker.errors import (
    Ambiguous,
    CommandFailed,
    ConfigError,
    LockTimeout,
    RemoteFileError,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    UnknownServer,
)
from worker.offline import find_dhcpd
from worker.transport.localfs import LocalFileHost, LocalFleet

pytestmark = pytest.mark.timeout(60)

CONF = sample_config("primary").encode()


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "dhcpd.conf"
    path.parent.mkdir()
    path.write_bytes(CONF)
    return path


def host_of(path: Path, dhcpd: str | None = None, timeout: float = 60.0) -> LocalFileHost:
    return LocalFileHost("dhcp1", str(path), dhcpd=dhcpd, command_timeout=timeout)


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def content(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- read ----------------------------------------------------------------------------------


async def test_read_returns_the_bytes_and_none_for_a_missing_file(conf: Path) -> None:
    host = host_of(conf)
    assert await host.read(str(conf)) == CONF
    assert await host.read(str(conf.parent / "nope.conf")) is None
    assert await host.read(str(conf.parent / "no-dir" / "x.conf")) is None


@pytest.mark.parametrize("kind", ["fifo", "device", "too large"])
async def test_read_refuses_what_could_never_end_without_blocking(conf: Path, kind: str) -> None:
    target = conf.parent / kind.replace(" ", "-")
    if kind == "fifo":
        os.mkfifo(target)  # nobody writes: an ordinary open would wait forever
    elif kind == "device":
        target.symlink_to("/dev/zero")
    else:
        with target.open("wb") as f:
            f.truncate(MAX_READ_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(RemoteFileTooLarge) as caught:
        await asyncio.wait_for(host_of(conf).read(str(target)), 10)
    assert caught.value.server == "dhcp1"


async def test_read_of_a_directory_is_a_refused_file_operation(conf: Path) -> None:
    with pytest.raises(RemoteFileError) as caught:
        await host_of(conf).read(str(conf.parent))
    assert not isinstance(caught.value, RemoteFileNotFound)


async def test_an_include_naming_a_fifo_makes_the_tree_a_config_error(conf: Path) -> None:
    os.mkfifo(conf.parent / "pipe")
    append(conf, b'include "pipe";\n')
    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(read_snapshot(host_of(conf)), 10)
    assert caught.value.code == "file_too_large"


# -- write, replace, link, remove, listdir -----------------------------------------------------


async def test_write_copies_mode_and_owner_of_like_and_leaves_no_temp_file(conf: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file another owner needs root")
    os.chown(conf, 1234, 4321)
    os.chmod(conf, 0o640)
    candidate = conf.parent / ".dhcpd.conf.r1.new"
    await host_of(conf).write(str(candidate), b"x\n", like=str(conf))
    st = candidate.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 4321)
    assert names(conf.parent) == [".dhcpd.conf.r1.new", "dhcpd.conf"]


async def test_write_without_like_gets_mode_644(conf: Path) -> None:
    path = conf.parent / "plain.conf"
    await host_of(conf).write(str(path), b"x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


async def test_write_replaces_the_file_whole_so_a_link_keeps_the_old_bytes(conf: Path) -> None:
    host = host_of(conf)
    backup = conf.parent / ".dhcpd.conf.bak"
    await host.link(str(conf), str(backup))
    await host.write(str(conf), b"new\n", like=str(conf))
    assert content(backup) == CONF and content(conf) == b"new\n"


async def test_a_write_in_place_makes_a_new_file_and_never_truncates_one(conf: Path) -> None:
    host = host_of(conf)
    staged = conf.parent / ".dhcpd.conf.req-1.new"
    await host.write(str(staged), b"a longer first version\n", like=str(conf), in_place=True)
    old = conf.parent / "old-link"
    os.link(staged, old)
    await host.write(str(staged), b"second\n", like=str(conf), in_place=True)
    assert (content(staged), content(old)) == (b"second\n", b"a longer first version\n")
    assert names(conf.parent) == [staged.name, "dhcpd.conf", "old-link"]


async def test_a_failed_write_changes_nothing_and_leaves_no_temp_file(conf: Path) -> None:
    (conf.parent / "sub").mkdir()
    with pytest.raises(RemoteFileError):
        await host_of(conf).write(str(conf.parent / "sub"), b"x\n")  # rename over a directory
    assert names(conf.parent) == ["dhcpd.conf", "sub"]
    with pytest.raises(RemoteFileNotFound):
        await host_of(conf).write(str(conf.parent / "no-dir" / "x.conf"), b"x\n")


async def test_replace_link_remove_and_listdir_map_errors_like_the_ssh_adapter(
    conf: Path,
) -> None:
    host, d = host_of(conf), conf.parent
    with pytest.raises(FileNotFoundError):  # RemoteFileNotFound is one
        await host.replace(str(d / "missing.conf"), str(conf))
    await host.write(str(d / "other.conf"), b"other\n")
    with pytest.raises(RemoteFileError):
        await host.link(str(conf), str(d / "other.conf"))
    with pytest.raises(RemoteFileNotFound):
        await host.link(str(d / "nope.conf"), str(d / "x.bak"))
    await host.replace(str(d / "other.conf"), str(d / "moved.conf"))
    await host.remove(str(d / "moved.conf"))
    await host.remove(str(d / "moved.conf"))  # a missing file is not an error
    assert await host.listdir(str(d)) == ["dhcpd.conf"]
    with pytest.raises(RemoteFileNotFound):
        await host.listdir(str(d / "no-dir"))


# -- commands ------------------------------------------------------------------------------


@pytest.mark.integration
async def test_validate_runs_dhcpd_in_the_working_directory(conf: Path) -> None:
    dhcpd = find_dhcpd()
    if dhcpd is None:
        pytest.fail("dhcpd (isc-dhcp-server) is required: scripts/setup installs it")
    (conf.parent / "extra.conf").write_text('option domain-search "example.net";\n')
    good = conf.parent / ".dhcpd.conf.r1.new"
    good.write_bytes(CONF + b'include "extra.conf";\n')  # relative: found from the cwd
    host = host_of(conf, dhcpd)
    assert host.working_directory == str(conf.parent)
    result = await host.validate(str(good))
    assert result.ok, result.stderr
    bad = conf.parent / ".dhcpd.conf.r2.new"
    bad.write_bytes(CONF + b"option no-such-option 1;\n")
    refused = await host.validate(str(bad))
    assert refused.exit_status not in (0, None)
    assert f"{bad} line" in refused.stdout + refused.stderr


async def test_validate_without_dhcpd_accepts_and_says_it_did_not_run(conf: Path) -> None:
    host = host_of(conf, dhcpd=None)
    assert not host.validates
    result = await host.validate(str(conf))
    assert result.ok and "not run" in result.command


async def test_validate_past_its_timeout_is_ambiguous_and_its_processes_are_killed(
    conf: Path, tmp_path: Path
) -> None:
    """The child holds dhcpd's output pipes open and never ends on its own: only killing the
    whole process group ends the command (else waiting for it would hang)."""
    pids = tmp_path / "pids"
    slow = tmp_path / "slow-dhcpd"
    slow.write_text(f"#!/bin/sh\ntail -f /dev/null &\necho $! > {pids}\nwait\n")
    slow.chmod(0o755)
    try:
        with pytest.raises(Ambiguous) as caught:
            await host_of(conf, str(slow), timeout=0.5).validate(str(conf))
        assert caught.value.server == "dhcp1"
        child = int(content(pids))
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, "the validator's child outlived the timeout"
            await asyncio.sleep(0.05)
    finally:
        _kill_if_alive(pids)


def _kill_if_alive(pid_file: Path) -> None:
    """Whatever happened above, the test leaves no process behind."""
    if pid_file.exists() and (pid := pid_file.read_text().strip()) and alive(int(pid)):
        os.kill(int(pid), signal.SIGKILL)


async def test_restart_is_refused_with_a_clear_error(conf: Path) -> None:
    with pytest.raises(CommandFailed, match="cannot restart"):
        await host_of(conf).restart()


# -- lock and fleet ------------------------------------------------------------------------


async def test_lock_excludes_a_second_holder_within_a_bounded_wait(conf: Path) -> None:
    first, second = host_of(conf), host_of(conf)
    async with first.lock(5):
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            async with second.lock(0.3):
                pytest.fail("second holder got the lock")
        assert 0.25 <= time.monotonic() - started < 5
        assert caught.value.server == "dhcp1"
    with pytest.raises(RuntimeError):
        async with second.lock(2):
            raise RuntimeError("change failed")
    async with first.lock(1):  # released when the body raised
        pass


async def test_two_configs_in_one_directory_lock_apart_and_leave_no_file(conf: Path) -> None:
    other = conf.parent / "s.conf"
    shutil.copy(conf, other)
    before = names(conf.parent)
    async with host_of(conf).lock(1), host_of(other).lock(0):
        assert names(conf.parent) == before


def test_fleet_knows_only_its_hosts_and_answers_the_partner_for_any_address(
    conf: Path,
) -> None:
    a = LocalFileHost("dhcp1", str(conf), dhcpd=None)
    b = LocalFileHost("partner", str(conf.parent / "s.conf"), dhcpd=None)
    fleet = LocalFleet([a, b], partner="partner")
    assert fleet.host("dhcp1") is a
    with pytest.raises(UnknownServer):
        fleet.host("dhcp9")
    assert fleet.server_for_address("192.0.2.11") == "partner"
    assert LocalFleet([a]).server_for_address("192.0.2.11") is None
