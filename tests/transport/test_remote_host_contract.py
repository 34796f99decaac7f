"""One behaviour suite, two implementations: the in-memory FakeHost and SshHost on real sshd.

If the fake drifts from what the SSH adapter really does, these tests fail for one of them.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import pytest

import tests.fakes
import worker.change.ports
import worker.transport.files
from tests.fakes import FakeHost
from tests.fixtures.sshd import LocalHostsFactory
from tests.transport.support import fleet_for
from worker.change.ports import RemoteHost
from worker.demo import PRIMARY, sample_config
from worker.demo.localhosts import LocalHost, LocalHosts
from worker.errors import (
    Ambiguous,
    LockTimeout,
    RemoteFileError,
    RemoteFileNotFound,
    RemoteFileTooLarge,
)
from worker.transport import SshFleet, SshOptions

pytestmark = pytest.mark.timeout(60)

CONF = sample_config("primary").encode()
OPTIONS = SshOptions(connect_timeout=5, command_timeout=1.5)


class Harness(Protocol):
    """What a test needs beyond the protocol: set up failures and look behind the host's back."""

    @property
    def host(self) -> RemoteHost: ...

    def mode(self, path: str) -> int: ...
    def set_mode(self, path: str, mode: int) -> None: ...
    def fail_validate(self) -> None: ...
    def fail_restart(self) -> None: ...
    def hang_restart(self) -> None: ...
    def restarts(self) -> int: ...
    def make_dir(self, path: str) -> None: ...

    def host_in(self, directory: str) -> RemoteHost:
        """The same server with ``working_directory`` set to ``directory`` in the inventory;
        both hosts' validation then resolves a relative ``include`` like dhcpd does."""
        ...


@dataclass
class FakeHarness:
    host: FakeHost

    def mode(self, path: str) -> int:
        return self.host.modes[path]

    def set_mode(self, path: str, mode: int) -> None:
        self.host.modes[path] = mode

    def fail_validate(self) -> None:
        self.host.validator = lambda path, data: (False, f"{path} line 1: forced failure")

    def fail_restart(self) -> None:
        self.host.fail_restart = True

    def hang_restart(self) -> None:
        self.host.hang_restart = True

    def restarts(self) -> int:
        return self.host.restarts

    def make_dir(self, path: str) -> None:
        """A dict of files needs no directories."""

    def host_in(self, directory: str) -> RemoteHost:
        other = FakeHost(self.host.name, files=self.host.files, modes=self.host.modes)
        other.cwd = directory
        for host in (self.host, other):
            host.validator = _dhcpd_include_check(host)
        return other


def _dhcpd_include_check(host: FakeHost) -> Callable[[str, bytes], tuple[bool, str]]:
    """What ``dhcpd -t`` says of a relative ``include`` missing from the working directory."""

    def validator(path: str, data: bytes) -> tuple[bool, str]:
        for name in re.findall(rb'include\s+"([^"]+)"', data):
            included = posixpath.join(host.working_directory, name.decode())
            if included not in host.files:
                return False, f"Can't open {name.decode()}: No such file or directory"
        return True, ""

    return validator


@dataclass
class SshHarness:
    host: RemoteHost
    hosts: LocalHosts
    fleets: list[SshFleet] = field(default_factory=list)

    @property
    def local(self) -> LocalHost:
        return self.hosts.hosts[PRIMARY]

    def mode(self, path: str) -> int:
        return os.stat(path).st_mode & 0o7777

    def set_mode(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def fail_validate(self) -> None:
        self.local.set_marker("fail-validate")

    def fail_restart(self) -> None:
        self.local.set_marker("fail-restart")

    def hang_restart(self) -> None:
        self.local.set_marker("hang-restart")

    def restarts(self) -> int:
        return len(self.local.restarts())

    def make_dir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def host_in(self, directory: str) -> RemoteHost:
        fleet = fleet_for(self.hosts, OPTIONS, working_directory=directory)
        self.fleets.append(fleet)
        return fleet.host(PRIMARY)


@pytest.fixture(params=["fake", pytest.param("ssh", marks=pytest.mark.integration)])
async def harness(
    request: pytest.FixtureRequest, local_hosts: LocalHostsFactory
) -> AsyncIterator[Harness]:
    if request.param == "fake":
        fake = FakeHost(PRIMARY)
        fake.files[fake.config_path] = CONF
        fake.modes[fake.config_path] = 0o644
        yield FakeHarness(fake)
        return
    hosts = local_hosts({PRIMARY: CONF})
    fleet = fleet_for(hosts, OPTIONS)
    harness = SshHarness(fleet.host(PRIMARY), hosts, [fleet])
    try:
        yield harness
    finally:
        await asyncio.gather(*(f.close() for f in harness.fleets))


def _dir(h: Harness) -> str:
    return posixpath.dirname(h.host.config_path)


def _beside(h: Harness, name: str) -> str:
    return posixpath.join(_dir(h), name)


async def test_read_returns_the_live_bytes(harness: Harness) -> None:
    assert await harness.host.read(harness.host.config_path) == CONF


async def test_read_returns_empty_and_multi_block_files_whole(harness: Harness) -> None:
    """A read asks for one block and takes a shorter answer as the end: an empty file, one
    of exactly a block and one of several blocks all come back whole."""
    empty, big = _beside(harness, "empty.conf"), _beside(harness, "big.conf")
    await harness.host.write(empty, b"")
    assert await harness.host.read(empty) == b""
    for size in (256 * 1024, 1024 * 1024 + 17):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        await harness.host.write(big, data)
        assert await harness.host.read(big) == data


@pytest.fixture
def read_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """``MAX_READ_BYTES`` made small (more than one SFTP read block) wherever it is used."""
    limit = 300_000
    for module in (worker.change.ports, worker.transport.files, tests.fakes):
        monkeypatch.setattr(module, "MAX_READ_BYTES", limit)
    return limit


async def test_read_of_a_file_larger_than_the_limit_is_refused(
    harness: Harness, read_limit: int
) -> None:
    path = _beside(harness, "huge.conf")
    await harness.host.write(path, b"#" * read_limit)
    assert await harness.host.read(path) == b"#" * read_limit  # the limit itself is fine
    await harness.host.write(path, b"#" * (read_limit + 1))
    with pytest.raises(RemoteFileTooLarge) as caught:
        await harness.host.read(path)
    assert caught.value.server == PRIMARY
    assert str(read_limit) in caught.value.message


async def test_read_of_a_missing_file_returns_none(harness: Harness) -> None:
    assert await harness.host.read(_beside(harness, "nope.conf")) is None


IN_PLACE = pytest.mark.parametrize("in_place", [False, True], ids=["atomic", "in-place"])


@IN_PLACE
async def test_write_creates_then_truncates_a_file(harness: Harness, in_place: bool) -> None:
    path = _beside(harness, "candidate.conf")
    before = await harness.host.listdir(_dir(harness))
    await harness.host.write(path, b"first version, rather long\n", in_place=in_place)
    await harness.host.write(path, b"short\n", in_place=in_place)
    assert await harness.host.read(path) == b"short\n"
    assert await harness.host.listdir(_dir(harness)) == sorted([*before, "candidate.conf"])


@IN_PLACE
@pytest.mark.parametrize("mode", [0o640, 0o600], ids=oct)
async def test_write_copies_the_mode_of_like(harness: Harness, mode: int, in_place: bool) -> None:
    other = _beside(harness, "journal.json")
    await harness.host.write(other, b"{}\n")
    harness.set_mode(other, mode)
    path = _beside(harness, "done.json")
    await harness.host.write(path, b"x\n", like=other, in_place=in_place)
    assert harness.mode(path) == mode
    await harness.host.write(path, b"y\n", like=harness.host.config_path, in_place=in_place)
    assert harness.mode(path) == harness.mode(harness.host.config_path) == 0o644


async def test_write_without_like_gets_mode_644(harness: Harness) -> None:
    path = _beside(harness, "plain.conf")
    await harness.host.write(path, b"x\n")
    assert harness.mode(path) == 0o644


@IN_PLACE
async def test_write_round_trips_arbitrary_bytes(harness: Harness, in_place: bool) -> None:
    data = bytes(range(256)) * 300
    path = _beside(harness, "binary.bin")
    await harness.host.write(path, data, in_place=in_place)
    assert await harness.host.read(path) == data


async def test_replace_moves_the_candidate_over_the_live_file(harness: Harness) -> None:
    live = harness.host.config_path
    candidate = _beside(harness, "candidate.conf")
    await harness.host.write(candidate, CONF + b"# changed\n", like=live)
    await harness.host.replace(candidate, live)
    assert await harness.host.read(live) == CONF + b"# changed\n"
    assert await harness.host.read(candidate) is None
    assert "candidate.conf" not in await harness.host.listdir(_dir(harness))


async def test_replace_of_a_missing_source_raises_file_not_found(harness: Harness) -> None:
    with pytest.raises(FileNotFoundError):
        await harness.host.replace(_beside(harness, "missing.conf"), harness.host.config_path)
    assert await harness.host.read(harness.host.config_path) == CONF


async def test_link_keeps_the_old_bytes_once_the_live_file_is_replaced(harness: Harness) -> None:
    live, backup = harness.host.config_path, _beside(harness, ".dhcpd.conf.bak")
    harness.set_mode(live, 0o640)
    await harness.host.link(live, backup)
    assert await harness.host.read(backup) == CONF
    assert harness.mode(backup) == 0o640  # one file, two names
    await harness.host.write(live, b"new\n", like=live)
    assert await harness.host.read(backup) == CONF
    candidate = _beside(harness, "candidate.conf")
    await harness.host.write(candidate, b"newer\n")
    await harness.host.replace(candidate, live)
    assert await harness.host.read(backup) == CONF
    assert await harness.host.read(live) == b"newer\n"


async def test_link_onto_an_existing_name_fails_and_changes_nothing(harness: Harness) -> None:
    other = _beside(harness, "other.conf")
    await harness.host.write(other, b"other\n")
    with pytest.raises(RemoteFileError):
        await harness.host.link(harness.host.config_path, other)
    assert await harness.host.read(other) == b"other\n"


async def test_link_of_a_missing_source_raises_file_not_found(harness: Harness) -> None:
    with pytest.raises(RemoteFileNotFound):
        await harness.host.link(_beside(harness, "nope.conf"), _beside(harness, "x.bak"))
    assert await harness.host.read(_beside(harness, "x.bak")) is None


async def test_remove_deletes_and_tolerates_a_missing_file(harness: Harness) -> None:
    path = _beside(harness, "old.bak")
    await harness.host.write(path, b"old\n")
    await harness.host.remove(path)
    assert await harness.host.read(path) is None
    await harness.host.remove(path)


async def test_listdir_names_the_entries_of_the_config_dir(harness: Harness) -> None:
    await harness.host.write(_beside(harness, "a.conf"), b"a\n")
    names = await harness.host.listdir(_dir(harness))
    assert {"a.conf", posixpath.basename(harness.host.config_path)} <= set(names)
    assert names == sorted(names)
    assert not any("/" in n for n in names)
    assert not [n for n in names if n.endswith(".tmp")]


async def test_working_directory_defaults_to_the_config_directory(harness: Harness) -> None:
    assert harness.host.working_directory == _dir(harness)


async def test_validate_runs_in_the_working_directory_the_inventory_names(
    harness: Harness,
) -> None:
    directory = _beside(harness, "state")
    moved = harness.host_in(directory)
    assert moved.working_directory == directory
    harness.make_dir(posixpath.join(directory, "sub"))
    await moved.write(posixpath.join(directory, "sub", "extra.conf"), b'option domain-name "x";\n')
    candidate = _beside(harness, "candidate.conf")
    await moved.write(candidate, CONF + b'include "sub/extra.conf";\n')
    result = await moved.validate(candidate)
    assert result.ok, result.stderr
    unmoved = await harness.host.validate(candidate)  # from the config directory: not found
    assert not unmoved.ok
    assert "Can't open sub/extra.conf" in unmoved.stdout + unmoved.stderr


async def test_validate_accepts_a_good_candidate(harness: Harness) -> None:
    candidate = _beside(harness, "candidate.conf")
    await harness.host.write(candidate, CONF)
    result = await harness.host.validate(candidate)
    assert result.ok, result.stderr
    assert result.exit_status == 0


async def test_validate_reports_a_refused_candidate_as_a_result_not_an_exception(
    harness: Harness,
) -> None:
    harness.fail_validate()
    candidate = _beside(harness, "candidate.conf")
    await harness.host.write(candidate, CONF)
    result = await harness.host.validate(candidate)
    assert not result.ok
    assert result.exit_status not in (0, None)
    assert "candidate.conf line 1" in result.stdout + result.stderr


async def test_restart_succeeds_and_is_recorded(harness: Harness) -> None:
    result = await harness.host.restart()
    assert result.ok, result.stderr
    assert harness.restarts() == 1


async def test_restart_failure_is_a_result_with_its_output(harness: Harness) -> None:
    harness.fail_restart()
    result = await harness.host.restart()
    assert not result.ok
    assert "failed" in result.stderr


async def test_hanging_restart_is_ambiguous_not_success(harness: Harness) -> None:
    harness.hang_restart()
    started = time.monotonic()
    with pytest.raises(Ambiguous) as caught:
        await harness.host.restart()
    assert caught.value.server == PRIMARY
    assert time.monotonic() - started < 10


async def test_lock_excludes_a_second_holder_and_the_wait_is_bounded(harness: Harness) -> None:
    async with harness.host.lock(5):
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            async with harness.host.lock(0.3):
                pytest.fail("second holder got the lock")
        waited = time.monotonic() - started
        assert caught.value.server == PRIMARY
        assert 0.25 <= waited < 5
    async with harness.host.lock(2):
        pass


async def test_lock_is_released_when_the_body_raises(harness: Harness) -> None:
    with pytest.raises(RuntimeError):
        async with harness.host.lock(2):
            raise RuntimeError("change failed")
    async with harness.host.lock(1):
        pass


async def test_lock_waiter_gets_the_lock_once_the_holder_releases(harness: Harness) -> None:
    order: list[str] = []
    holding = asyncio.Event()

    async def holder() -> None:
        async with harness.host.lock(5):
            holding.set()
            await asyncio.sleep(0.3)
            order.append("holder done")

    async def waiter() -> None:
        await holding.wait()
        async with harness.host.lock(5):
            order.append("waiter in")

    await asyncio.gather(holder(), waiter())
    assert order == ["holder done", "waiter in"]
