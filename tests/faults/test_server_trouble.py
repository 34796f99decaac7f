"""Server-side trouble (issue 11, part 6): what a DHCP server itself can do to a change.

A full disk, a directory or file the account may not write, a ``dhcpd`` that is not
installed, a port that accepts TCP and never speaks SSH. Each through the queue, on the real
``serve`` in this process, real sshd hosts and real ``dhcpd -t``; the trouble is made for real
on the server side (a small tmpfs, ``chattr +i``, a missing binary, a silent listener), never
by a mock.

Every case checks the same four things: exactly one terminal event for the request (acked,
nothing dead-lettered, nothing more published); the pair never mixed (both live files old,
or both new); nothing left beside the live files (no candidate, temp or running journal, the
change lock free); an error code and message an operator can act on (docs/contract.md §9).

A config edited by someone else between plan and commit is covered by
tests/change/test_coordinator_ssh.py (``concurrent_change``). A restart past its timeout and
the worker's clock jumping are in test_server_trouble_timeouts.py, the hung restart verified
over OMAPI in test_server_trouble_lab.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import subprocess
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.change.helpers import PRIMARY_AFTER, PRIMARY_CONF, SECONDARY_CONF, sha
from tests.consumer.support import assert_depth
from tests.e2e.conftest import ServeOn, Stack, restore_logging, serve_on
from tests.e2e.support import change_ended, change_files, modify_body, new_request_id
from tests.faults.report import record
from tests.fixtures.sshd import LocalHostsFactory
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY, sample_configs
from worker.demo.localhosts import LocalHost, LocalHosts, Restart

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(60)]
_FIXTURES = (serve_on, restore_logging)  # imported so that pytest finds them here

#: A hung restart sleeps this long (the hosts' bound too; a number no other process of the
#: machine uses, so a test can tell that the server killed it).
HANG_SECONDS = 37


# -- the checks every case makes --------------------------------------------------------------


async def one_outcome(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    """Publish ``body``; its one event's ``data``, once the request is settled (acked, not
    dead-lettered), the change locks are free and nothing else was published."""
    reply = await stack.request(body, "request.modify")
    tapped = await stack.tap.next_checked()
    assert tapped.event == reply
    assert tapped.raw["data"]["requestId"] == body["requestId"]
    await assert_depth(stack.amqp, stack.settings.request_queue, 0)
    await assert_depth(stack.amqp, stack.settings.dead_letter_queue, 0)
    # No stale lock (without a lock file, nobody holds one: it cannot be made there).
    await change_ended(*(h for h in stack.hosts.hosts.values() if h.lock_path.exists()))
    await stack.tap.assert_quiet(0.3)
    return tapped.raw["data"]  # type: ignore[no-any-return]


def assert_nothing_left(host: LocalHost) -> None:
    """No candidate, validation copy, temp file or running journal beside the live file."""
    files = change_files(host)
    assert (files["temps"], files["journals"]) == ([], []), files


def assert_untouched(stack: Stack, data: dict[str, Any]) -> None:
    """``failed``: both live files as they were, never restarted, nothing left behind."""
    assert stack.live() == {PRIMARY: PRIMARY_CONF.encode(), SECONDARY: SECONDARY_CONF.encode()}
    for host in stack.hosts.hosts.values():
        assert host.restarts() == [], f"{host.name} was restarted"
        assert change_files(host)["backups"] == []
        assert_nothing_left(host)
    assert [(s["state"], s["restarted"]) for s in data["servers"]] == [("old", False)] * len(
        data["servers"]
    )


def set_server_field(hosts: LocalHosts, name: str, key: str, value: object) -> None:
    """Replace one field of ``name``'s inventory entry (the test's own file)."""
    text = hosts.inventory_path.read_text()
    current = tomllib.loads(text)["servers"][name][key]
    line = f"{key} = {json.dumps(current)}\n"
    assert text.count(line) == 1, f"{key} of {name} not found exactly once"
    hosts.inventory_path.write_text(text.replace(line, f"{key} = {json.dumps(value)}\n"))
    assert tomllib.loads(hosts.inventory_path.read_text())["servers"][name][key] == value


# -- what the tests do to a server, undone at teardown ----------------------------------------


class ServerDamage:
    """Small tmpfs mounts and ``chattr +i`` flags on the hosts' directories; each is undone
    at teardown, last first, exactly what was made (a mount only when it is still ours)."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Path, str]] = []

    def full_disk(self, directory: Path) -> None:
        """``directory`` becomes a tmpfs of a few pages holding its files again, then filled up
        to the last byte: creating a file still works, writing one byte does not."""
        kept = {p.name: (p.read_bytes(), p.stat().st_mode) for p in directory.iterdir()}
        source = f"dfw-test-{secrets.token_hex(4)}"
        mounted = _run("mount", "-t", "tmpfs", "-o", "size=16k,nr_inodes=64", source, directory)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        self._undo.append(("umount", directory, source))
        for name, (data, mode) in kept.items():
            (directory / name).write_bytes(data)
            (directory / name).chmod(mode & 0o7777)
        with (directory / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e

    def immutable(self, path: Path) -> None:
        """``chattr +i``: not even root may create, rename or link there."""
        done = _run("chattr", "+i", path)
        if done.returncode != 0:
            pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
        self._undo.append(("chattr", path, ""))

    def undo(self) -> None:
        failures: list[str] = []
        for kind, path, source in reversed(self._undo):
            if kind == "chattr":
                done = _run("chattr", "-i", path)
            elif _mount_source(path) != source:
                failures.append(f"{path}: the mount there is no longer ours; left alone")
                continue
            else:
                done = _run("umount", path)
                if done.returncode != 0:  # busy: detach exactly this mount point
                    done = _run("umount", "--lazy", path)
            if done.returncode != 0:
                failures.append(f"{kind} {path}: {done.stderr.strip()}")
        self._undo.clear()
        assert not failures, failures


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=30
    )


def _mount_source(path: Path) -> str | None:
    """The source of the topmost mount on ``path`` (/proc/self/mountinfo), if any."""
    found = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        rest = fields[fields.index("-") + 1 :]
        if fields[4] == str(path):
            found = rest[1]
    return found


@pytest.fixture
def damage(local_hosts: LocalHostsFactory) -> Iterator[ServerDamage]:
    """Requested before ``serve_on``: undone after the worker stopped, before the hosts."""
    made = ServerDamage()
    try:
        yield made
    finally:
        made.undo()


@pytest.fixture
def hosts(local_hosts: LocalHostsFactory) -> LocalHosts:
    """The sample pair; sessions with an empty HOME (root's start-up files here are slow)."""
    return local_hosts(
        sample_configs(), addresses=SAMPLE_ADDRESSES, hang_seconds=HANG_SECONDS, plain_login=True
    )


# -- 1. disk full while staging ---------------------------------------------------------------


async def test_a_full_disk_while_staging_fails_and_leaves_nothing_behind(
    hosts: LocalHosts, damage: ServerDamage, serve_on: ServeOn
) -> None:
    secondary = hosts.hosts[SECONDARY]
    damage.full_disk(secondary.config_dir)
    stack = await serve_on(hosts)

    data = await one_outcome(stack, modify_body(new_request_id("full"), Mclt=1800, Port=648))

    assert data["outcome"] == "failed"
    error = data["error"]
    assert (error["code"], error["server"], error["phase"]) == (
        "remote_file_error",
        SECONDARY,
        "prepare",
    )
    assert str(secondary.config_dir) in error["message"]  # where it could not write
    assert_untouched(stack, data)
    assert os.statvfs(secondary.config_dir).f_bfree == 0  # still full: nothing was freed
    record(
        "disk full while staging",
        "16 KiB tmpfs as the config directory",
        "failed (remote_file_error)",
    )


async def test_a_full_disk_is_named_in_the_error(
    hosts: LocalHosts, damage: ServerDamage, serve_on: ServeOn
) -> None:
    damage.full_disk(hosts.hosts[SECONDARY].config_dir)
    stack = await serve_on(hosts)

    data = await one_outcome(stack, modify_body(new_request_id("full-msg"), Mclt=1800))

    message = data["error"]["message"].lower()
    assert "no space left" in message or "is full" in message, message


# -- 2. permission denied ---------------------------------------------------------------------


@pytest.mark.parametrize("lock_file", ["there", "missing"])
async def test_a_config_directory_nobody_may_write_fails_and_says_so(
    hosts: LocalHosts, damage: ServerDamage, serve_on: ServeOn, lock_file: str
) -> None:
    # chattr +i on the directory: the account (root here) cannot create a file in it. With
    # the lock file left by an earlier change the lock works and the staging is refused;
    # without it, taking the lock is.
    secondary = hosts.hosts[SECONDARY]
    if lock_file == "there":
        secondary.lock_path.touch()
    damage.immutable(secondary.config_dir)
    stack = await serve_on(hosts)

    data = await one_outcome(stack, modify_body(new_request_id("eperm"), Mclt=1800, Port=648))

    assert data["outcome"] == "failed"
    error = data["error"]
    assert (error["server"], error["phase"]) == (SECONDARY, "prepare")
    if lock_file == "there":
        assert error["code"] == "remote_file_error"
        assert "Permission denied" in error["message"]
        assert f"write {secondary.config_dir}/.dhcpd.conf." in error["message"]
    else:
        assert error["code"] == "command_failed"
        assert f"cannot take change lock {secondary.lock_path}" in error["message"]
        assert "Operation not permitted" in error["message"]
        assert "write access there" in error["message"]
    assert_untouched(stack, data)
    record(
        "permission denied",
        f"config directory immutable, lock file {lock_file}",
        f"failed ({error['code']})",
    )


async def test_a_live_file_nobody_may_replace_is_found_at_the_commit_and_rolled_back(
    hosts: LocalHosts, damage: ServerDamage, serve_on: ServeOn
) -> None:
    # chattr +i on the secondary's dhcpd.conf only: staging and dhcpd -t work beside it, the
    # backup (a hard link) is refused. The primary was committed by then: it is restored.
    secondary = hosts.hosts[SECONDARY]
    damage.immutable(secondary.config_path)
    stack = await serve_on(hosts)

    data = await one_outcome(stack, modify_body(new_request_id("immutable"), Mclt=1800))

    assert data["outcome"] == "rolled_back"
    error = data["error"]
    assert (error["code"], error["server"], error["phase"]) == (
        "remote_file_error",
        SECONDARY,
        "commit",
    )
    assert "Permission denied" in error["message"]
    assert str(secondary.config_path) in error["message"]
    assert stack.live() == {PRIMARY: PRIMARY_CONF.encode(), SECONDARY: SECONDARY_CONF.encode()}
    assert stack.primary.restarts() == [
        Restart("ok", sha(PRIMARY_AFTER)),  # committed first, restarted on the new file
        Restart("ok", sha(PRIMARY_CONF)),  # restored and restarted on the old one
    ]
    assert secondary.restarts() == []
    assert [s["state"] for s in data["servers"]] == ["old", "old"]
    for host in hosts.hosts.values():
        assert_nothing_left(host)
    record(
        "permission denied",
        "live file immutable (found at the backup)",
        "rolled_back (remote_file_error)",
    )


# -- 4. dhcpd missing on one server -----------------------------------------------------------


MISSING_DHCPD = "/usr/sbin/dhcpd-not-installed"


async def test_a_missing_dhcpd_fails_saying_so_and_changes_nothing(
    hosts: LocalHosts, serve_on: ServeOn
) -> None:
    set_server_field(hosts, SECONDARY, "validate_command", f"{MISSING_DHCPD} -t -cf {{path}}")
    stack = await serve_on(hosts)

    data = await one_outcome(stack, modify_body(new_request_id("no-dhcpd"), Mclt=1800))

    assert data["outcome"] == "failed"
    error = data["error"]
    assert (error["code"], error["server"], error["phase"]) == (
        "command_failed",
        SECONDARY,
        "validate",
    )
    assert error["detail"]["exitStatus"] == 127  # the shell's "command not found"
    said = error["message"]  # dash: "...: not found"; bash: "...: No such file or directory"
    assert f"{MISSING_DHCPD}: not found" in said or f"{MISSING_DHCPD}: No such file" in said
    assert "could not run" in error["message"]
    assert_untouched(stack, data)
    record("dhcpd missing on one server", "validate_command not found", "failed (command_failed)")


# -- 6. a port that accepts TCP and never speaks SSH ------------------------------------------


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never sends a byte; its number. Every
    accepted connection is closed when it ends."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in accepted:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_a_port_that_never_speaks_ssh_fails_unreachable_and_leaves_the_partner_alone(
    hosts: LocalHosts, serve_on: ServeOn
) -> None:
    async with silent_listener() as port:
        set_server_field(hosts, SECONDARY, "port", port)
        with hosts.known_hosts.open("a") as known:  # its key is known: it is never shown
            known.write(f"[127.0.0.1]:{port} {hosts.hosts[SECONDARY].host_key_line}\n")
        stack = await serve_on(hosts, connect_timeout=2.0)

        data = await one_outcome(stack, modify_body(new_request_id("silent"), Mclt=1800))

    assert data["outcome"] == "failed"
    error = data["error"]
    assert (error["code"], error["server"]) == ("unreachable", SECONDARY)
    assert f"@127.0.0.1:{port} within 2s" in error["message"]
    assert error["message"].startswith(f"{SECONDARY}: no SSH answer from ")
    primary = stack.primary
    assert primary.config_bytes() == PRIMARY_CONF.encode()
    assert primary.restarts() == []
    assert_nothing_left(primary)
    assert change_files(primary)["backups"] == []
    record("TCP accepted, SSH never spoken", "connect_timeout 2 s", "failed (unreachable)")
