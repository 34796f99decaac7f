"""The coordinator against in-memory hosts: every end of a change, fast.

The same scenarios run against real sshd and real dhcpd in test_coordinator_ssh.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog

from tests.change.conftest import KnobHost, World, in_dir, make_world, untouched_dir
from tests.change.helpers import (
    PRIMARY_AFTER,
    PRIMARY_CONF,
    SCOPES,
    SECONDARY_AFTER,
    SECONDARY_CONF,
    SimulatedCrash,
    backups,
    done_records,
    is_temp,
    journals,
    modify_request,
    remove_request,
    sha,
    without_durations,
)
from worker.change import planning, recovery
from worker.change.coordinator import ChangeOptions, execute
from worker.change.journal import Journal
from worker.demo import PRIMARY, SECONDARY
from worker.messages import ModifyRequest, Outcome, Phase, RemoveRequest

pytestmark = pytest.mark.timeout(20)

FAST = ChangeOptions(lock_timeout=0.2)


def assert_untouched(world: World) -> None:
    """Both live files as they were, nothing left beside them, no lock held, no restart."""
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.secondary.config == SECONDARY_CONF.encode()
    for host in world.hosts.values():
        untouched_dir(host)
        assert host.restart_count() == 0
    assert world.locked() == []


async def cut_off_before_the_secondary_commit(world: World) -> None:
    """req-modify-1's worker dies just before replacing the secondary's file (the primary
    runs the new one); the hosts then behave again."""
    world.secondary.crash_at = lambda op: op[0] == "replace" and op[2].endswith("dhcpd.conf")
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-modify-1", world.fleet)
    world.secondary.crash_at = lambda op: False


def restarts_in_order(world: World) -> list[str]:
    return [name for name, *op in world.timeline if op == ["restart"]]


# -- succeeded -------------------------------------------------------------------------------


async def test_modify_changes_both_servers_and_restarts_primary_then_secondary(
    world: World,
) -> None:
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.secondary.config == SECONDARY_AFTER.encode()
    assert restarts_in_order(world) == [PRIMARY, SECONDARY]
    assert [s.name for s in result.servers] == [PRIMARY, SECONDARY]
    assert all(s.changed and s.restarted and s.state == "new" for s in result.servers)
    assert result.error is None and not result.dryRun


async def test_modify_reports_hashes_and_diff_of_each_main_config(world: World) -> None:
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    primary, secondary = result.servers
    assert primary.role == "primary" and secondary.role == "secondary"
    assert primary.sha256Before == sha(PRIMARY_CONF)
    assert primary.sha256After == sha(PRIMARY_AFTER) == sha(world.primary.config)
    assert secondary.sha256After == sha(SECONDARY_AFTER)
    assert "-  mclt 3600;\n+  mclt 1800;\n" in primary.diff
    assert primary.diff.startswith("--- a/etc/dhcp/dhcpd.conf\n+++ b/etc/dhcp/dhcpd.conf\n")
    assert "mclt" not in secondary.diff and "+  port 648;" in secondary.diff
    assert primary.files == {"/etc/dhcp/dhcpd.conf": "new"}
    assert result.durationMs >= 0 and primary.durationMs is not None


async def test_commit_keeps_a_backup_removes_every_temp_file_and_releases_locks(
    world: World,
) -> None:
    await execute(modify_request(), "req-modify-1", world.fleet)

    for host, before in ((world.primary, PRIMARY_CONF), (world.secondary, SECONDARY_CONF)):
        names = in_dir(host)
        assert not [n for n in names if is_temp(n)]
        (backup,) = backups(names)
        assert host.files[backup] == before.encode()
        assert host.modes[backup] == 0o640  # like the live file
        assert journals(names) == []  # the running journal became a done record
        assert len(done_records(names)) == 1
    assert world.locked() == []


async def test_the_backup_is_a_hard_link_taken_just_before_the_rename(world: World) -> None:
    await execute(modify_request(), "req-modify-1", world.fleet)

    for host in world.hosts.values():
        ops = [op[1:] for op in host.timeline if op[0] == host.name]
        (backup,) = backups(in_dir(host))
        assert ("write", backup) not in ops  # no copy of the bytes
        link = ops.index(("link", host.config_path, backup))
        assert ops[link + 1][0] == "replace" and ops[link + 1][2] == host.config_path


@pytest.mark.parametrize("free", [True, False], ids=["locks free", "a lock busy at first"])
async def test_a_change_lists_each_config_directory_once_under_the_lock_or_once_before_it(
    world: World, monkeypatch: pytest.MonkeyPatch, free: bool
) -> None:
    """A modify whose locks are free at once holds them from the start: one listing (over
    SSH the lock request brings it) answers the journal lookup, the plan and prepare. One
    busy at first: the journal lookup lists before the locks, and prepare once more under
    them."""
    listed: list[tuple[str, str]] = []
    for host in world.hosts.values():

        async def listdir(directory: str, host: KnobHost = host) -> list[str]:
            listed.append((host.name, directory))
            return await KnobHost.listdir(host, directory)

        monkeypatch.setattr(host, "listdir", listdir)

    if free:
        result = await execute(modify_request(), "req-modify-1", world.fleet)
    else:
        async with world.secondary.lock(1):
            running = asyncio.create_task(execute(modify_request(), "req-modify-1", world.fleet))
            await asyncio.sleep(0.05)
        result = await running

    assert result.outcome is Outcome.succeeded
    for host in world.hosts.values():
        assert listed.count((host.name, "/etc/dhcp")) == (1 if free else 2), listed


async def test_the_plan_reads_start_while_the_journal_directories_are_listed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    read_while_listing: list[str] = []
    for host in world.hosts.values():

        async def listdir(directory: str, host: KnobHost = host) -> list[str]:
            if not gate.is_set():  # the first listing waits until both configs were read
                await asyncio.wait_for(gate.wait(), 2)
            return await KnobHost.listdir(host, directory)

        async def read(path: str, host: KnobHost = host) -> bytes | None:
            if path == host.config_path and not gate.is_set():
                read_while_listing.append(host.name)
                if len(read_while_listing) == 2:
                    gate.set()
            return await KnobHost.read(host, path)

        monkeypatch.setattr(host, "listdir", listdir)
        monkeypatch.setattr(host, "read", read)

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert sorted(read_while_listing) == [PRIMARY, SECONDARY]


async def test_the_candidates_go_first_then_the_recheck_and_the_journal(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the locks each server's candidate is written first (it is on the way to the
    commit); the live file is read again and the journal written while it validates."""
    for host in world.hosts.values():

        async def read(path: str, host: KnobHost = host) -> bytes | None:
            if path == host.config_path:
                host.timeline.append((host.name, "read", path))
            return await KnobHost.read(host, path)

        monkeypatch.setattr(host, "read", read)

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    for name, host in world.hosts.items():
        ops = [
            ("journal" if "journal" in op[2] else "candidate" if op[2].endswith(".new") else "")
            if op[1] == "write"
            else op[1]
            for op in host.timeline
            if op[0] == name
        ]
        assert sorted(ops[:2]) == ["lock", "read"] and ops[2] == "candidate", ops
        recheck = ops.index("read", ops.index("read") + 1)
        assert ops.index("candidate") < min(ops.index("journal"), recheck), ops
        assert max(ops.index("journal"), recheck) < ops.index("link"), ops


async def test_a_recorded_outcome_drops_the_reads_started_ahead_of_the_plan(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await execute(modify_request(), "req-modify-1", world.fleet)
    host = world.primary

    async def read(path: str) -> bytes | None:
        if path == host.config_path:
            await asyncio.sleep(0.05)
            raise OSError("the plan's read, not needed: never reported")
        return await KnobHost.read(host, path)

    monkeypatch.setattr(host, "read", read)
    again = await execute(modify_request(), "req-modify-1", world.fleet)

    assert without_durations(again) == without_durations(first)


async def test_locks_are_taken_in_name_order_whatever_the_commit_order(world: World) -> None:
    # Remove anchored on the secondary commits dhcp2 first, but locks dhcp1 first.
    result = await execute(remove_request(server=SECONDARY), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.succeeded
    locks = [name for name, *op in world.timeline if op == ["lock"]]
    assert locks == [PRIMARY, SECONDARY]
    assert restarts_in_order(world) == [SECONDARY, PRIMARY]


async def test_a_primary_only_setting_restarts_only_the_primary(world: World) -> None:
    result = await execute(modify_request(Mclt=1200), "req-mclt", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert [(s.changed, s.state, s.restarted) for s in result.servers] == [
        (True, "new", True),
        (False, "new", False),
    ]
    assert world.secondary.config == SECONDARY_CONF.encode()
    assert restarts_in_order(world) == [PRIMARY]
    # The secondary is still locked and checked: the primary's candidate was planned with it.
    assert [n for n, *op in world.timeline if op == ["lock"]] == [PRIMARY, SECONDARY]
    assert in_dir(world.secondary) == [world.secondary.config_path]


async def test_a_change_already_in_place_succeeds_without_write_or_restart(world: World) -> None:
    request = modify_request(Mclt=3600, Port=647)

    result = await execute(request, "req-noop", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert [s.changed for s in result.servers] == [False, False]
    assert [s.state for s in result.servers] == ["new", "new"]
    # No write, no restart; the locks a modify tries before it plans are released.
    assert {op for _, op, *_ in world.timeline} <= {"lock", "unlock"}
    for name in (PRIMARY, SECONDARY):
        ops = [op for n, op, *_ in world.timeline if n == name]
        assert ops.count("lock") == ops.count("unlock"), ops
    assert_untouched(world)


# -- remove ----------------------------------------------------------------------------------


async def test_remove_disable_denies_clients_in_the_secondarys_pools(world: World) -> None:
    result = await execute(remove_request(action="Disable"), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    primary, secondary = world.primary.config.decode(), world.secondary.config.decode()
    for text in (primary, secondary):
        assert 'failover peer "' not in text
    assert secondary.count("deny all clients;") == 2
    assert "deny all clients;" not in primary
    assert "range 10.20.0.100 10.20.0.199;" in primary
    assert result.warnings == []


async def test_remove_delete_drops_the_secondarys_scopes(world: World) -> None:
    result = await execute(remove_request(action="Delete"), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    secondary = world.secondary.config.decode()
    for scope in SCOPES:
        assert scope not in secondary
        assert scope in world.primary.config.decode()
    assert "subnet 192.0.2.0 netmask 255.255.255.0" in secondary


async def test_remove_none_warns_that_both_servers_lease_the_same_scopes(world: World) -> None:
    result = await execute(remove_request(action="None"), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert "range 10.20.0.100 10.20.0.199;" in world.secondary.config.decode()
    assert "deny all clients;" not in world.secondary.config.decode()
    (warning,) = result.warnings
    assert warning.code == "same_ranges"
    assert PRIMARY in warning.message and SECONDARY in warning.message
    assert all(scope in warning.message for scope in SCOPES)


async def test_remove_finds_the_partner_from_the_peer_address(world: World) -> None:
    result = await execute(remove_request(server=SECONDARY), "req-remove-1", world.fleet)

    assert [(s.name, s.role) for s in result.servers] == [
        (SECONDARY, "secondary"),
        (PRIMARY, "primary"),
    ]
    assert 'failover peer "' not in world.primary.config.decode()


async def test_remove_of_two_relationships_changes_three_servers_as_one() -> None:
    # dhcp-b is secondary of "ab" (with dhcp-a) and primary of "bc" (with dhcp-c).
    def peer(name: str, role: str, me: str, other: str) -> str:
        mclt = "  mclt 1800;\n  split 128;\n" if role == "primary" else ""
        return (
            f'failover peer "{name}" {{\n  {role};\n  address {me};\n  port 647;\n'
            f"  peer address {other};\n  peer port 647;\n  max-response-delay 60;\n"
            f"  max-unacked-updates 10;\n{mclt}  load balance max seconds 3;\n}}\n"
        )

    def subnet(net: str, name: str) -> str:
        return (
            f"subnet {net}.0 netmask 255.255.255.0 {{\n  pool {{\n"
            f'    failover peer "{name}";\n    range {net}.10 {net}.20;\n  }}\n}}\n'
        )

    a, b, c = "dhcp-a", "dhcp-b", "dhcp-c"
    world = make_world(
        {
            a: peer("ab", "primary", "192.0.2.1", "192.0.2.2") + subnet("10.1.1", "ab"),
            b: peer("ab", "secondary", "192.0.2.2", "192.0.2.1")
            + subnet("10.1.1", "ab")
            + peer("bc", "primary", "192.0.2.2", "192.0.2.3")
            + subnet("10.2.2", "bc"),
            c: peer("bc", "secondary", "192.0.2.3", "192.0.2.2") + subnet("10.2.2", "bc"),
        },
        {a: ("192.0.2.1",), b: ("192.0.2.2",), c: ("192.0.2.3",)},
    )

    result = await execute(remove_request(server=b, name=["ab", "bc"]), "req-3", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert [s.name for s in result.servers] == [b, a, c]
    for host in world.hosts.values():
        assert b"failover peer" not in host.config
        assert host.restart_count() == 1
    assert [n for n, *op in world.timeline if op == ["lock"]] == [a, b, c]


# -- rejected --------------------------------------------------------------------------------


async def test_unknown_server_is_rejected_without_contacting_any_server(world: World) -> None:
    request = modify_request().model_copy(deep=True)
    params = request.params.model_copy(update={"secondary_server": "dhcp9.example.net"})
    request = request.model_copy(update={"params": params})

    result = await execute(request, "req-unknown", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.error is not None and result.error.code == "unknown_server"
    assert "dhcp9.example.net" in result.error.message
    assert world.timeline == []
    assert_untouched(world)


async def test_remove_whose_peer_address_is_not_in_the_inventory_is_rejected(
    world: World,
) -> None:
    world.secondary.addresses = ()  # 192.0.2.11 no longer names an inventory server

    result = await execute(remove_request(), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.error is not None and "192.0.2.11" in result.error.message
    assert "not a server in the inventory" in result.error.message
    assert_untouched(world)


async def test_a_relationship_that_does_not_exist_is_rejected(world: World) -> None:
    result = await execute(remove_request(name="no-such-peer"), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.error is not None and result.error.code == "peer_not_found"
    assert_untouched(world)


async def test_a_missing_include_is_rejected_naming_the_file(world: World) -> None:
    world.primary.files[world.primary.config_path] += b'include "pools.d/office.conf";\n'

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.error is not None and result.error.code == "config_error"
    assert "/etc/dhcp/pools.d/office.conf" in result.error.message
    assert result.error.server == PRIMARY


async def test_an_unsafe_request_id_is_rejected(world: World) -> None:
    result = await execute(modify_request(), "../../etc/passwd", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.error is not None and result.error.code == "invalid_request_id"
    assert world.timeline == []


# -- failed ----------------------------------------------------------------------------------


def refuse_with_dhcpd_error(path: str, data: bytes) -> tuple[bool, str]:
    return False, (
        f"Internet Systems Consortium DHCP Server 4.4.3-P1\n"
        f"{path} line 17: semicolon expected.\n  port 648\n   ^\n"
        "Configuration file errors encountered -- exiting\n"
    )


async def test_validation_failure_on_one_server_fails_with_nothing_changed(
    world: World,
) -> None:
    world.secondary.validator = refuse_with_dhcpd_error

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.failed
    error = result.error
    assert error is not None and error.code == "validation_failed"
    assert error.server == SECONDARY and error.phase is Phase.validate
    assert error.detail["file"] == "/etc/dhcp/dhcpd.conf"  # the real name, not the temp one
    assert error.detail["line"] == 17
    assert "semicolon expected" in error.message
    assert ".new" not in error.detail["output"]
    assert [s.state for s in result.servers] == ["old", "old"]
    assert_untouched(world)


async def test_a_modify_whose_lock_is_busy_plans_first_and_a_rejection_waits_for_no_lock(
    world: World,
) -> None:
    """A modify tries its locks without waiting; with one busy it plans first, and a plan
    that ends the request (here: no such relationship) waits for no lock and leaves none."""
    request = modify_request()
    params = request.params.model_copy(update={"name": "no-such-relationship"})
    request = request.model_copy(update={"params": params})
    async with world.secondary.lock(1):
        result = await execute(request, "req-modify-1", world.fleet, ChangeOptions(60))
        assert world.locked() == [SECONDARY]  # only ours, from this block

    assert result.outcome is Outcome.rejected, result.error
    assert world.locked() == []
    assert_untouched(world)


async def test_lock_held_by_another_change_fails_after_a_bounded_wait(world: World) -> None:
    async with world.secondary.lock(1):
        result = await execute(modify_request(), "req-modify-1", world.fleet, FAST)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "lock_timeout"
    assert result.error.server == SECONDARY
    assert_untouched(world)


async def test_config_changed_between_plan_and_commit_is_planned_again_not_overwritten(
    world: World,
) -> None:
    edited = SECONDARY_CONF.encode() + b"# edited by hand\n"

    def edit_by_hand(host: KnobHost) -> None:
        host.files[host.config_path] = edited
        host.on_lock = None  # once

    world.secondary.on_lock = edit_by_hand

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    # Planned again under the locks, on the edited file: the edit is kept.
    assert result.outcome is Outcome.succeeded, result.error
    assert world.secondary.config == SECONDARY_AFTER.encode() + b"# edited by hand\n"
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert not [n for h in world.hosts.values() for n in in_dir(h) if is_temp(n)]
    assert world.locked() == []


async def test_a_config_edited_again_while_planned_again_is_not_overwritten(
    world: World,
) -> None:
    edits = iter(range(100))
    read = world.secondary.read

    async def read_then_edit(path: str) -> bytes | None:
        data = await read(path)  # someone edits right after every read of the file
        if path == world.secondary.config_path:
            edit = SECONDARY_CONF.encode() + f"# edit {next(edits)}\n".encode()
            world.secondary.files[path] = edit
        return data

    world.secondary.read = read_then_edit  # type: ignore[method-assign]

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "concurrent_change"
    assert result.error.server == SECONDARY
    assert world.secondary.config.startswith(SECONDARY_CONF.encode() + b"# edit ")
    assert world.primary.config == PRIMARY_CONF.encode()
    assert not [n for h in world.hosts.values() for n in in_dir(h) if is_temp(n)]
    assert world.locked() == []


async def test_two_changes_to_one_pair_at_once_apply_one_after_the_other(world: World) -> None:
    first, second = await asyncio.gather(
        execute(modify_request("req-a", Mclt=1800), "req-a", world.fleet),
        execute(remove_request("req-b"), "req-b", world.fleet),
    )

    # Both planned on the same files; whichever locked second finds them changed and plans
    # again under the locks: the modify after the remove finds no relationship.
    locks = [(n, op[0]) for n, *op in world.timeline if op in (["lock"], ["unlock"])]
    held_one_at_a_time = [
        (PRIMARY, "lock"),
        (SECONDARY, "lock"),
        (SECONDARY, "unlock"),
        (PRIMARY, "unlock"),
    ]
    assert locks == held_one_at_a_time * 2
    assert second.outcome is Outcome.succeeded  # the remove, first or second
    assert b'failover peer "dhcp-failover"' not in world.primary.config
    if first.outcome is Outcome.succeeded:  # the modify went first
        assert b"mclt 1800;" in second.servers[0].diff.encode()
    else:
        assert first.outcome is Outcome.rejected
        assert first.error is not None and first.error.code == "peer_not_found"


async def test_a_lock_taken_out_of_order_is_released_while_waiting(world: World) -> None:
    # The locks are tried at once; a change that finds the first one (in name order) busy
    # must not keep the second while it waits: a holder of the first that then wants the
    # second would deadlock with it.
    async with world.primary.lock(1):
        change = asyncio.ensure_future(
            execute(remove_request(server=SECONDARY), "req-remove-1", world.fleet)
        )
        for _ in range(50):
            await asyncio.sleep(0.005)
        assert world.locked() == [PRIMARY]  # only ours: the change let the secondary go
        async with world.secondary.lock(0.5):
            pass
    result = await change

    assert result.outcome is Outcome.succeeded
    assert world.locked() == []


async def test_changes_on_one_pair_in_opposite_roles_at_once_all_finish(world: World) -> None:
    # Locks tried at once, the ordered wait only when one is busy: never a deadlock, whoever
    # anchors the change on which server (commit orders differ), however many run at once.
    options = ChangeOptions(lock_timeout=5)
    requests: list[tuple[ModifyRequest | RemoveRequest, str]] = [
        (modify_request("req-a", Mclt=1800), "req-a"),
        (remove_request("req-b", server=SECONDARY), "req-b"),
        (remove_request("req-c", server=PRIMARY), "req-c"),
        (modify_request("req-d", Mclt=1200), "req-d"),
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*(execute(r, rid, world.fleet, options) for r, rid in requests)), 10
    )

    for result in results:  # a remove or modify after a remove: not found
        assert result.outcome in (Outcome.succeeded, Outcome.rejected), result
        if result.outcome is Outcome.rejected:
            assert result.error is not None and result.error.code == "peer_not_found"
    assert any(r.outcome is Outcome.succeeded for r in results)
    assert world.locked() == []


async def test_unreachable_server_fails_in_plan(world: World) -> None:
    world.secondary.unreachable = True

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "unreachable"
    assert result.error.phase is Phase.plan
    assert world.primary.config == PRIMARY_CONF.encode()


async def test_an_unexpected_error_is_an_outcome_not_an_exception(world: World) -> None:
    async def broken_read(path: str) -> bytes | None:
        raise RuntimeError("sftp went sideways")

    world.secondary.read = broken_read  # type: ignore[method-assign]

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "internal_error"
    assert "RuntimeError: sftp went sideways" in result.error.message


# -- rolled_back / rollback_failed -----------------------------------------------------------


async def test_restart_failure_on_secondary_restores_and_restarts_both(world: World) -> None:
    world.secondary.restart_failures = 1

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    error = result.error
    assert error is not None and error.code == "command_failed"
    assert error.server == SECONDARY and error.phase is Phase.commit
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.secondary.config == SECONDARY_CONF.encode()
    assert world.primary.restart_count() == 2  # on the new file, then on the old one again
    assert restarts_in_order(world) == [PRIMARY, SECONDARY, SECONDARY, PRIMARY]
    assert [s.state for s in result.servers] == ["old", "old"]
    assert all(s.restarted for s in result.servers)
    for host in world.hosts.values():
        assert not [n for n in in_dir(host) if is_temp(n)]
    assert world.locked() == []


async def test_a_restart_that_hangs_is_never_taken_for_success(world: World) -> None:
    world.secondary.hang_restart = True

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rollback_failed  # it hangs on the old file too
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.secondary.config == SECONDARY_CONF.encode()
    assert result.error is not None and "timed out" in result.error.detail["cause"]["message"]


async def test_restart_failing_on_the_old_file_too_is_rollback_failed(world: World) -> None:
    world.secondary.fail_restart = True

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rollback_failed
    error = result.error
    assert error is not None and error.code == "rollback_failed"
    assert error.phase is Phase.rollback and error.server == SECONDARY
    assert f"{SECONDARY} holds the old file but was not restarted on it" in error.message
    servers = {s["server"]: s for s in error.detail["servers"]}
    assert servers[PRIMARY]["state"] == "old" and not servers[PRIMARY]["needsOperator"]
    assert servers[SECONDARY]["needsOperator"]
    assert error.detail["cause"]["code"] == "command_failed"
    assert world.primary.config == PRIMARY_CONF.encode()


async def test_a_restore_that_fails_reports_the_new_file_on_that_server(world: World) -> None:
    world.secondary.fail_restart = True
    world.primary.refuse_write = lambda path: path.endswith(".restore")

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rollback_failed
    primary = result.servers[0]
    assert primary.state == "new" and primary.files == {"/etc/dhcp/dhcpd.conf": "new"}
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert result.error is not None and f"{PRIMARY} holds the new file" in result.error.message
    assert world.primary.restart_count() == 1  # not restarted onto a file it could not restore


async def test_a_failure_before_the_rename_leaves_that_server_alone(world: World) -> None:
    world.secondary.refuse_write = lambda path: path.endswith(".bak")

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "remote_file_error"
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.primary.restart_count() == 2
    assert world.secondary.config == SECONDARY_CONF.encode()
    assert world.secondary.restart_count() == 0  # it never ran the new file
    assert not result.servers[1].restarted


async def test_an_unexpected_error_mid_commit_is_rolled_back(world: World) -> None:
    original = world.secondary.replace

    async def replace(src: str, dst: str) -> None:
        if dst.endswith("dhcpd.conf"):
            raise OSError("disk full")
        await original(src, dst)

    world.secondary.replace = replace  # type: ignore[method-assign]

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "internal_error"
    assert result.error.server == SECONDARY and result.error.phase is Phase.commit
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.secondary.config == SECONDARY_CONF.encode()


async def test_a_journal_that_cannot_be_written_fails_before_anything_goes_live(
    world: World,
) -> None:
    world.secondary.refuse_write = lambda path: "dhcp-failover-journal" in path

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.phase is Phase.prepare
    assert_untouched(world)


async def test_a_rollback_cut_off_is_finished_as_a_rollback_by_the_next_run(
    world: World,
) -> None:
    world.secondary.restart_failures = 1
    world.primary.crash_at = lambda op: op[0] == "write" and op[1].endswith(".restore")
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-modify-1", world.fleet)
    assert world.primary.config == PRIMARY_AFTER.encode()  # still the new file
    assert world.secondary.config == SECONDARY_CONF.encode()  # already restored
    world.primary.crash_at = lambda op: False

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "command_failed"
    assert result.error.server == SECONDARY  # the original cause, not the crash
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.primary.restart_count() == 2
    assert world.secondary.restart_count() == 2  # failed once, then on the old file; no more


# -- dry run ---------------------------------------------------------------------------------


async def test_dry_run_validates_and_reports_diffs_but_changes_nothing(world: World) -> None:
    result = await execute(modify_request(dry_run=True), "req-dry", world.fleet)

    assert result.outcome is Outcome.succeeded and result.dryRun
    assert "+  mclt 1800;" in result.servers[0].diff
    assert [s.state for s in result.servers] == ["old", "old"]
    assert [op[1] for op in world.timeline if op[1] == "validate"] == ["validate"] * 2
    assert_untouched(world)


async def test_dry_run_reports_a_candidate_dhcpd_refuses_as_failed(world: World) -> None:
    world.primary.validator = refuse_with_dhcpd_error

    result = await execute(modify_request(dry_run=True), "req-dry", world.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "validation_failed"
    assert_untouched(world)


# -- idempotency and recovery ----------------------------------------------------------------


async def test_the_same_request_twice_applies_once_and_returns_the_same_result(
    world: World,
) -> None:
    first = await execute(modify_request(), "req-modify-1", world.fleet)
    mutations = list(world.timeline)

    second = await execute(modify_request(), "req-modify-1", world.fleet)

    assert without_durations(second) == without_durations(first)
    # Nothing written: at most the locks a modify takes before its journal lookup.
    assert world.timeline[: len(mutations)] == mutations
    again = [op for _, op, *_ in world.timeline[len(mutations) :]]
    assert set(again) <= {"lock", "unlock"} and again.count("lock") == again.count("unlock")
    assert world.primary.restart_count() == world.secondary.restart_count() == 1


async def test_two_runs_of_one_request_at_once_apply_it_once_and_return_the_same_result(
    world: World,
) -> None:
    # Two deliveries of one request id (a publisher's retry, two workers): both plan before
    # either commits; the one that waited for the locks must return the recorded outcome,
    # not fail on the files the other just changed.
    first, second = await asyncio.gather(
        execute(modify_request(), "req-modify-1", world.fleet),
        execute(modify_request(), "req-modify-1", world.fleet),
    )

    assert first.outcome is Outcome.succeeded, first.error
    assert without_durations(second) == without_durations(first)
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.primary.restart_count() == world.secondary.restart_count() == 1


async def test_a_run_that_plans_after_its_twin_committed_returns_the_recorded_result(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This run looked for its journal just before its twin wrote one, and read the live files
    # just after the twin committed: it sees nothing to change, and must still answer with
    # the twin's outcome rather than a "succeeded, changed: false" of its own.
    first = await execute(modify_request(), "req-modify-1", world.fleet)
    real_find_previous = recovery.find_previous
    lookups = 0

    async def too_early_once(*args: Any, **kwargs: Any) -> dict[str, Journal]:
        nonlocal lookups
        lookups += 1
        return {} if lookups == 1 else await real_find_previous(*args, **kwargs)

    monkeypatch.setattr(recovery, "find_previous", too_early_once)
    async with world.secondary.lock(1):  # busy at the first try: the lookup is made unlocked
        second = await execute(modify_request(), "req-modify-1", world.fleet)

    assert lookups >= 2
    assert without_durations(second) == without_durations(first)
    assert world.primary.restart_count() == world.secondary.restart_count() == 1


def stale_secondary_reads(world: World, times: int) -> list[str]:
    """The secondary's first ``times`` reads of its config answer with the file as it was
    before req-a: served just before req-a committed there. Returns the paths read."""
    stale = SECONDARY_CONF.encode()
    read = world.secondary.read
    seen: list[str] = []

    async def read_before_the_commit(path: str) -> bytes | None:
        seen.append(path)
        data = await read(path)
        if path == world.secondary.config_path and seen.count(path) <= times:
            return stale
        return data

    world.secondary.read = read_before_the_commit  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("free", [True, False], ids=["locks free", "a lock busy at first"])
async def test_reads_that_straddle_another_changes_commits_are_taken_again(
    world: World, free: bool
) -> None:
    """The reads ahead of the locks can catch another change between its two commits (the
    primary already new, the secondary still old) while the journal listing comes after its
    done records: no unfinished change in sight, and the pair seems to disagree. That is not
    the request's fault: it waits for the locks once and reads again."""
    first = await execute(modify_request("req-a"), "req-a", world.fleet)
    assert first.outcome is Outcome.succeeded, first.error
    seen = stale_secondary_reads(world, times=1)

    if free:
        result = await execute(modify_request("req-b", Port=649), "req-b", world.fleet)
    else:
        async with world.primary.lock(1):
            running = asyncio.create_task(
                execute(modify_request("req-b", Port=649), "req-b", world.fleet)
            )
            await asyncio.sleep(0.05)
        result = await running

    assert result.outcome is Outcome.succeeded, result.error
    assert seen.count(world.secondary.config_path) >= 2
    assert b"port 649;" in world.primary.config and b"port 649;" in world.secondary.config
    assert b"port 648;" not in world.secondary.config
    assert world.locked() == []


async def test_a_pair_that_still_disagrees_when_read_again_is_rejected(world: World) -> None:
    await execute(modify_request("req-a"), "req-a", world.fleet)
    seen = stale_secondary_reads(world, times=100)

    result = await execute(modify_request("req-b", Port=649), "req-b", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.error is not None and result.error.code == "port_mismatch"
    assert seen.count(world.secondary.config_path) == 2  # read ahead, then once again
    assert world.locked() == []


async def test_a_rolled_back_request_run_again_returns_the_same_outcome(world: World) -> None:
    world.secondary.restart_failures = 1
    first = await execute(modify_request(), "req-modify-1", world.fleet)

    second = await execute(modify_request(), "req-modify-1", world.fleet)

    assert first.outcome is Outcome.rolled_back
    assert without_durations(second) == without_durations(first)
    assert world.secondary.config == SECONDARY_CONF.encode()


async def test_a_change_cut_off_after_the_first_commit_is_finished_by_the_next_run(
    world: World,
) -> None:
    await cut_off_before_the_secondary_commit(world)
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.secondary.config == SECONDARY_CONF.encode()
    assert world.locked() == []  # a dead worker's locks go with its connections

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.secondary.config == SECONDARY_AFTER.encode()
    # No journal write records a restart: a server holding the new file is restarted again
    # (it cannot be known whether its restart succeeded; restarting twice is harmless).
    assert world.primary.restart_count() == 2
    assert world.secondary.restart_count() == 1
    assert [s.sha256After for s in result.servers] == [sha(PRIMARY_AFTER), sha(SECONDARY_AFTER)]
    assert "+  mclt 1800;" in result.servers[0].diff
    for host in world.hosts.values():
        assert not [n for n in in_dir(host) if is_temp(n)]

    again = await execute(modify_request(), "req-modify-1", world.fleet)
    assert without_durations(again) == without_durations(result)


async def test_a_change_cut_off_before_its_restart_restarts_on_the_next_run(
    world: World,
) -> None:
    world.primary.crash_at = lambda op: op[0] == "restart"
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-modify-1", world.fleet)
    assert world.primary.config == PRIMARY_AFTER.encode()

    world.primary.crash_at = lambda op: False
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert restarts_in_order(world) == [PRIMARY, SECONDARY]
    assert world.secondary.config == SECONDARY_AFTER.encode()


async def test_a_cut_off_change_whose_candidate_is_gone_is_undone(world: World) -> None:
    await cut_off_before_the_secondary_commit(world)
    world.secondary.files.pop("/etc/dhcp/.dhcpd.conf.req-modify-1.new")

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "change_interrupted"
    assert "candidate is gone" in result.error.message
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.primary.restart_count() == 2
    assert world.secondary.config == SECONDARY_CONF.encode()
    assert world.secondary.restart_count() == 0


async def test_a_cut_off_change_is_undone_when_the_candidate_no_longer_validates(
    world: World,
) -> None:
    await cut_off_before_the_secondary_commit(world)
    world.secondary.validator = refuse_with_dhcpd_error

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and "revalidation failed" in result.error.message
    assert world.primary.config == PRIMARY_CONF.encode()


async def test_a_cut_off_change_edited_by_hand_meanwhile_is_left_for_an_operator(
    world: World,
) -> None:
    await cut_off_before_the_secondary_commit(world)
    hand_edit = PRIMARY_AFTER.encode() + b"# fixed by hand\n"
    world.primary.files[world.primary.config_path] = hand_edit
    before = list(world.timeline)

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rollback_failed
    assert result.error is not None and result.error.server == PRIMARY
    assert "someone else" in result.error.message
    assert result.servers[0].state == "unknown"
    assert world.primary.config == hand_edit
    assert world.secondary.config == SECONDARY_CONF.encode()
    after = world.timeline[len(before) :]
    assert not [op for op in after if op[1] == "restart" or op[-1].endswith("dhcpd.conf")]


async def test_a_change_cut_off_before_any_commit_is_planned_afresh(world: World) -> None:
    # Dies after the journals were written, before the first backup.
    world.primary.crash_at = lambda op: op[0] == "link" and op[2].endswith(".bak")
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-modify-1", world.fleet)
    world.primary.crash_at = lambda op: False

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.secondary.config == SECONDARY_AFTER.encode()
    for host in world.hosts.values():
        assert journals(in_dir(host)) == []
        assert len(done_records(in_dir(host))) == 1
        assert not [n for n in in_dir(host) if is_temp(n)]


async def test_another_request_waits_for_a_cut_off_change_to_be_finished(world: World) -> None:
    await cut_off_before_the_secondary_commit(world)

    other = await execute(modify_request("req-other", Mclt=900), "req-other", world.fleet)

    assert other.outcome is Outcome.failed
    assert other.error is not None and other.error.code == "unfinished_change"
    assert "req-modify-1" in other.error.message
    assert world.primary.config == PRIMARY_AFTER.encode()  # left for req-modify-1 to finish
    finished = await execute(modify_request(), "req-modify-1", world.fleet)
    assert finished.outcome is Outcome.succeeded
    again = await execute(modify_request("req-other", Mclt=900), "req-other", world.fleet)
    assert again == other.model_copy(update={"durationMs": again.durationMs})  # recorded
    retried = await execute(modify_request("req-other-2", Mclt=900), "req-other-2", world.fleet)
    assert retried.outcome is Outcome.succeeded
    assert b"mclt 900;" in world.primary.config


async def test_a_journal_that_cannot_be_read_fails_instead_of_guessing(world: World) -> None:
    await execute(modify_request(), "req-modify-1", world.fleet)
    (record,) = done_records(in_dir(world.primary))
    world.primary.files[record] = b"{ not json"

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "journal_corrupt"
    assert world.primary.restart_count() == 1


async def test_the_journal_records_plan_hashes_and_the_outcome(world: World) -> None:
    await execute(modify_request(), "req-modify-1", world.fleet)

    (path,) = done_records(in_dir(world.primary))
    record = json.loads(world.primary.files[path])
    assert record["requestId"] == "req-modify-1" and record["step"] == "done"
    assert record["servers"] == [PRIMARY, SECONDARY]
    (f,) = record["files"]
    assert (f["before"], f["after"]) == (sha(PRIMARY_CONF), sha(PRIMARY_AFTER))
    assert record["outcome"]["outcome"] == "succeeded"


async def test_the_commit_itself_writes_no_journal(world: World) -> None:
    """Per server one journal write before the commit and the done record after it: how far
    the commit got is read from the live files, and a write is atomic without a temp file."""
    await execute(modify_request(), "req-modify-1", world.fleet)

    for host in world.hosts.values():
        ops = [op[1:] for op in host.timeline if op[0] == host.name]
        record_ops = [op for op in ops if ".dhcp-failover-" in op[-1]]
        assert [op[0] for op in record_ops] == ["write", "write"], record_ops
        assert journals([record_ops[0][1]]) and done_records([record_ops[1][1]]), record_ops
        restart = ops.index(("restart",))
        assert ops.index(record_ops[0]) < restart < ops.index(record_ops[1])


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelling_during_the_commit_finishes_the_commit_first(world: World) -> None:
    gate = asyncio.Event()
    world.primary.restart_gate = gate
    task = asyncio.create_task(execute(modify_request(), "req-modify-1", world.fleet))
    await asyncio.wait_for(world.primary.restart_entered.wait(), 5)

    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the commit is still running
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.secondary.config == SECONDARY_AFTER.encode()
    assert world.locked() == []
    replay = await execute(modify_request(), "req-modify-1", world.fleet)
    assert replay.outcome is Outcome.succeeded
    assert world.secondary.restart_count() == 1


async def test_cancelling_before_the_commit_leaves_nothing_behind(world: World) -> None:
    started = asyncio.Event()

    def slow_validator(path: str, data: bytes) -> tuple[bool, str]:
        started.set()
        return True, ""

    world.secondary.validator = slow_validator
    gate = asyncio.Event()
    original_validate = world.secondary.validate

    async def validate(path: str):  # type: ignore[no-untyped-def]
        result = await original_validate(path)
        await gate.wait()
        return result

    world.secondary.validate = validate  # type: ignore[method-assign]
    task = asyncio.create_task(execute(modify_request(), "req-modify-1", world.fleet))
    await asyncio.wait_for(started.wait(), 5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert_untouched(world)


# -- includes and retention ------------------------------------------------------------------


async def test_a_changed_include_is_validated_through_a_copy_and_committed_in_place() -> None:
    main = PRIMARY_CONF.split("# Office LAN")[0] + 'include "pools.conf";\n'
    pools = "# Office LAN" + PRIMARY_CONF.split("# Office LAN")[1]
    sec_main = SECONDARY_CONF.split("# Office LAN")[0] + 'include "pools.conf";\n'
    sec_pools = "# Office LAN" + SECONDARY_CONF.split("# Office LAN")[1]
    world = make_world(
        {PRIMARY: main, SECONDARY: sec_main},
        {PRIMARY: ("192.0.2.10",), SECONDARY: ("192.0.2.11",)},
    )
    world.primary.files["/etc/dhcp/pools.conf"] = pools.encode()
    world.secondary.files["/etc/dhcp/pools.conf"] = sec_pools.encode()
    seen: dict[str, bytes] = {}

    def record(path: str, data: bytes) -> tuple[bool, str]:
        seen[path] = data
        return True, ""

    world.primary.validator = record

    result = await execute(remove_request(), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    ((validated, text),) = seen.items()
    assert validated == "/etc/dhcp/.dhcpd.conf.req-remove-1.check"
    assert b'include "/etc/dhcp/.pools.conf.req-remove-1.new";' in text
    assert b'include "pools.conf";' in world.primary.config  # committed with its own include
    assert b"failover peer" not in world.primary.files["/etc/dhcp/pools.conf"]
    assert "a/etc/dhcp/pools.conf" in result.servers[0].diff
    assert set(result.servers[0].files) == {"/etc/dhcp/pools.conf", "/etc/dhcp/dhcpd.conf"}
    assert not [n for n in world.primary.files if is_temp(n)]


async def test_old_backups_beyond_the_retention_count_are_pruned(world: World) -> None:
    options = ChangeOptions(backup_retention=2)
    for i, mclt in enumerate((1800, 1700, 1600, 1500)):
        result = await execute(modify_request(Mclt=mclt), f"req-{i}", world.fleet, options)
        assert result.outcome is Outcome.succeeded

    names = backups(in_dir(world.primary))
    assert len(names) == 2
    assert [n.rsplit(".", 2)[-2] for n in names] == ["req-2", "req-3"]
    assert len(done_records(in_dir(world.primary))) == 4


async def test_finished_journals_beyond_their_retention_count_are_pruned(world: World) -> None:
    options = ChangeOptions(journal_retention=2)
    for i, mclt in enumerate((1800, 1700, 1600)):
        await execute(modify_request(Mclt=mclt), f"req-{i}", world.fleet, options)

    names = done_records(in_dir(world.primary))
    assert [n.rsplit(".", 2)[-2] for n in names] == ["req-1", "req-2"]


async def test_an_operator_can_follow_a_change_in_the_logs(world: World) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await execute(modify_request(), "req-modify-1", world.fleet)

    assert {e.get("requestId") for e in logs} == {"req-modify-1"}
    steps = [(e["event"], e.get("server")) for e in logs]
    validated = [s for s in steps if s[0] == "prepare.validated"]  # both servers at once
    assert sorted(validated) == [("prepare.validated", PRIMARY), ("prepare.validated", SECONDARY)]
    for step in ("commit.replaced", "commit.restarted"):  # one server after the other
        assert [s for s in steps if s[0] == step] == [(step, PRIMARY), (step, SECONDARY)]
    assert steps[0] == ("change.start", None)
    end = logs[-1]
    assert end["event"] == "change.end" and end["outcome"] == "succeeded"


# -- announce: the outcome recorded, then told, then the clean-up ---------------------------------


class Announcements:
    """An ``announce`` callback that notes each outcome and what had happened by then."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.results: list[Any] = []
        self.seen: list[list[tuple[str, ...]]] = []

    def __call__(self, result: Any) -> None:
        self.results.append(result)
        self.seen.append(list(self.world.timeline))


def done_writes(ops: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [op for op in ops if op[1] == "write" and "/.dhcp-failover-done." in op[2]]


@pytest.mark.parametrize("restart_failures", [0, 1], ids=["succeeded", "rolled_back"])
async def test_the_outcome_is_recorded_on_both_servers_then_announced_once_then_cleaned_up(
    world: World, restart_failures: int
) -> None:
    world.secondary.restart_failures = restart_failures
    announced = Announcements(world)

    result = await execute(modify_request(), "req-modify-1", world.fleet, announce=announced)

    (told,) = announced.results
    assert without_durations(told) == without_durations(result)
    assert told.outcome in (Outcome.succeeded, Outcome.rolled_back)
    (before,) = announced.seen
    restarts = [(n, *op) for n, *op in world.timeline if op == ["restart"]]
    assert [(n, *op) for n, *op in before if op == ["restart"]] == restarts  # final state,
    assert len(done_writes(before)) == 2  # recorded on both before anything is told,
    assert ("unlock",) not in [tuple(o) for _, *o in before]
    assert not [op for op in before if op[1] == "remove"]  # the clean-up only afterwards
    assert world.locked() == []
    again = await execute(modify_request(), "req-modify-1", world.fleet, announce=announced)
    assert len(announced.results) == 1  # a replay is returned, not announced
    assert without_durations(again) == without_durations(told)


async def test_nothing_is_announced_for_outcomes_reached_before_the_commit(
    world: World,
) -> None:
    announced = Announcements(world)
    world.secondary.validator = refuse_with_dhcpd_error
    refused = await execute(modify_request(), "req-1", world.fleet, announce=announced)
    world.secondary.validator = world.primary.validator

    dry = await execute(modify_request(dry_run=True), "req-2", world.fleet, announce=announced)
    rejected = await execute(
        modify_request(Name="no-such-peer", Mclt=1800), "req-3", world.fleet, announce=announced
    )

    assert [r.outcome for r in (refused, dry, rejected)] == [
        Outcome.failed,
        Outcome.succeeded,
        Outcome.rejected,
    ]
    assert announced.results == []


async def test_a_failing_announce_callback_does_not_change_the_change(world: World) -> None:
    def broken(result: Any) -> None:
        raise RuntimeError("publisher bug")

    result = await execute(modify_request(), "req-modify-1", world.fleet, announce=broken)

    assert result.outcome is Outcome.succeeded
    assert world.secondary.config == SECONDARY_AFTER.encode()
    assert len(done_writes(world.timeline)) == 2


async def test_a_request_arriving_while_the_last_change_finishes_waits_for_it(
    world: World,
) -> None:
    # The publisher got the first change's event (announced) and sends the next request at
    # once, while the first still holds the locks to clean up: the next one must wait for
    # them, not take the first's running journal for a cut-off change.
    recording = asyncio.Event()
    remove = world.secondary.remove

    async def slow_cleanup(path: str) -> None:
        if "-journal." in path:
            await recording.wait()
        await remove(path)

    world.secondary.remove = slow_cleanup  # type: ignore[method-assign]
    nexts: list[asyncio.Task[Any]] = []

    def publish_and_get_the_next_request(result: Any) -> None:
        request = modify_request("req-next", Mclt=900)
        nexts.append(asyncio.ensure_future(execute(request, "req-next", world.fleet)))

    announce = publish_and_get_the_next_request
    first = asyncio.ensure_future(
        execute(modify_request(), "req-first", world.fleet, announce=announce)
    )
    for _ in range(200):
        await asyncio.sleep(0.001)
    assert len(nexts) == 1 and not nexts[0].done()  # waiting for the first one's locks
    recording.set()
    results = await asyncio.gather(first, *nexts)

    assert [r.outcome for r in results] == [Outcome.succeeded, Outcome.succeeded]
    assert b"mclt 900;" in world.primary.config
    assert world.locked() == []


async def test_a_request_needing_nothing_while_a_cut_off_change_is_unfinished_fails(
    world: World,
) -> None:
    # The same settings as the cut-off change: nothing to write, but the pair is half
    # changed and that change's redelivery may still undo it, so it is not "succeeded".
    await cut_off_before_the_secondary_commit(world)
    world.secondary.files[world.secondary.config_path] = SECONDARY_AFTER.encode()

    other = await execute(modify_request("req-other"), "req-other", world.fleet)

    assert other.outcome is Outcome.failed
    assert other.error is not None and other.error.code == "unfinished_change"


async def test_a_change_parses_each_live_file_and_each_candidate_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading the includes, planning, checking the candidates and setting up their
    # validation all start from the same texts: a 5,000-subnet file costs ~10 ms a parse.
    from worker.dhcpconf import tree

    tree.clear_parse_cache()
    parsed: list[str] = []
    real_parse = tree._parse

    def counting(text: str, filename: str) -> Any:
        parsed.append(text)
        return real_parse(text, filename)

    monkeypatch.setattr(tree, "_parse", counting)

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert sorted(parsed) == sorted([PRIMARY_CONF, SECONDARY_CONF, PRIMARY_AFTER, SECONDARY_AFTER])


async def test_a_modify_is_planned_while_its_locks_are_being_taken(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's CPU (parse, edit, diff) runs as soon as the reads ahead are in, beside the
    lock requests: here the primary's lock answers only once a plan has been computed."""
    computed: list[str] = []
    planned = asyncio.Event()
    loop = asyncio.get_running_loop()
    compute = planning._modify_changes

    def counted(*args: Any) -> Any:  # in the worker thread
        result = compute(*args)
        computed.append("plan")
        loop.call_soon_threadsafe(planned.set)
        return result

    monkeypatch.setattr(planning, "_modify_changes", counted)
    waited_in_vain: list[bool] = []
    take = world.primary.lock

    class AfterThePlan:
        def __init__(self, timeout: float) -> None:
            self.inner = take(timeout)

        async def __aenter__(self) -> None:
            try:
                async with asyncio.timeout(5):
                    await planned.wait()
            except TimeoutError:
                waited_in_vain.append(True)
            await self.inner.__aenter__()

        async def __aexit__(self, *exc: object) -> None:
            await self.inner.__aexit__(*exc)

    monkeypatch.setattr(world.primary, "lock", AfterThePlan)

    result = await execute(modify_request(), "req-ahead", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert (computed, waited_in_vain) == (["plan"], [])  # computed once, ahead, and used
