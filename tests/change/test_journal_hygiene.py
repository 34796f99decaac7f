"""What a change leaves in a config directory: the audit trail it must keep, nothing else,
and nothing more readable than the config itself."""

from __future__ import annotations

import json
import posixpath

import pytest

from tests.change.conftest import World, in_dir
from tests.change.helpers import done_records, journals, modify_request
from worker.change.coordinator import execute
from worker.demo import PRIMARY, SECONDARY
from worker.messages import ModifyRequest, Outcome

pytestmark = pytest.mark.timeout(20)


def with_comment(comment: str) -> ModifyRequest:
    body = modify_request().model_dump(mode="json", by_alias=True, exclude_none=True)
    body["comment"] = comment
    return ModifyRequest.model_validate(body)


async def test_the_requests_comment_is_in_the_result_and_every_journal(world: World) -> None:
    result = await execute(with_comment("CHG-1234 shorten MCLT"), "req-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert result.comment == "CHG-1234 shorten MCLT"
    for host in world.hosts.values():
        (record,) = done_records(in_dir(host))
        stored = json.loads(host.files[record])
        assert stored["comment"] == "CHG-1234 shorten MCLT"
        assert stored["outcome"]["comment"] == "CHG-1234 shorten MCLT"


async def test_a_rejected_request_keeps_its_comment_too(world: World) -> None:
    body = with_comment("CHG-9").model_dump(mode="json", by_alias=True, exclude_none=True)
    body["params"]["Name"] = "no-such-peer"
    result = await execute(ModifyRequest.model_validate(body), "req-1", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.comment == "CHG-9"


@pytest.mark.parametrize("mode", [0o640, 0o600])
async def test_journals_are_no_more_readable_than_the_config(world: World, mode: int) -> None:
    for host in world.hosts.values():
        host.modes[host.config_path] = mode
    journal_modes: list[int] = []
    write = world.secondary.write

    async def note_journal_modes(
        path: str, data: bytes, *, like: str | None = None, in_place: bool = False
    ) -> None:
        await write(path, data, like=like, in_place=in_place)
        if posixpath.basename(path).startswith(".dhcp-failover-"):
            journal_modes.append(world.secondary.modes[path])

    world.secondary.write = note_journal_modes  # type: ignore[method-assign]

    assert (await execute(modify_request(), "req-1", world.fleet)).outcome is Outcome.succeeded

    assert journal_modes and set(journal_modes) == {mode}  # the running journal and the record
    for host in world.hosts.values():
        for record in done_records(in_dir(host)):
            assert host.modes[record] == mode


async def test_temp_files_of_cut_off_writes_are_removed_under_the_lock(world: World) -> None:
    leftovers = {
        PRIMARY: "/etc/dhcp/.dhcpd.conf.0123456789ab.tmp",
        SECONDARY: "/etc/dhcp/.dhcp-failover-done.20261101T000000000000Z.x.json.abcdef012345.tmp",
    }
    for server, path in leftovers.items():
        world.hosts[server].files[path] = b"half a file"
    unrelated = "/etc/dhcp/notes.tmp"  # not one of ours: left alone
    world.primary.files[unrelated] = b"keep me"

    assert (await execute(modify_request(), "req-1", world.fleet)).outcome is Outcome.succeeded

    for server, path in leftovers.items():
        assert path not in world.hosts[server].files
    assert unrelated in world.primary.files
    for host in world.hosts.values():
        assert journals(in_dir(host)) == []
