"""The verify phase against the fakes' pretend dhcpd (tests/fakes.py): every end it decides.

The same phase runs against real dhcpd pairs in the lab tests (tests/lab/).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import get_args

import pytest

from tests.change.conftest import World, untouched_dir
from tests.change.helpers import (
    PRIMARY_AFTER,
    PRIMARY_CONF,
    SECONDARY_AFTER,
    SECONDARY_CONF,
    SimulatedCrash,
    modify_request,
    remove_request,
    without_durations,
)
from tests.fakes import FakeHost
from worker.change.coordinator import execute
from worker.change.running import PeerState, RunningState, VerifyPolicy
from worker.change.verify import NO_OMAPI, POLL_INTERVAL
from worker.demo import PRIMARY, RELATIONSHIP, SECONDARY
from worker.errors import OmapiAuthFailed, OmapiUnreachable
from worker.messages import ModifyRequest, Outcome, PeerStateLabel, Phase, RemoveRequest

pytestmark = pytest.mark.timeout(20)

#: Long enough that a test that waited for it would hit the test timeout.
PATIENT = VerifyPolicy(timeout=60.0)
QUICK = VerifyPolicy(timeout=0.3)


def with_omapi(world: World, policy: VerifyPolicy = PATIENT) -> World:
    for host in world.hosts.values():
        host.omapi = policy
    return world


def runs_new(host: FakeHost) -> bool:
    """The pretend dhcpd runs the config of the modify every test applies (port 648)."""
    decl = host.declaration(RELATIONSHIP)
    port = decl.get("port") if decl is not None else None
    return port is not None and port.value == "648"


def after_restart(host: FakeHost) -> list[RunningState | None]:
    """The readings taken since the pretend dhcpd was last restarted on the new config."""
    return [r for _, r in host.omapi_reads if isinstance(r, RunningState) and r.local_port == 648]


def assert_old_files(world: World) -> None:
    assert world.primary.config == PRIMARY_CONF.encode()
    assert world.secondary.config == SECONDARY_CONF.encode()


# -- succeeded ------------------------------------------------------------------------------


async def test_a_verified_modify_reports_the_running_values_it_requested(world: World) -> None:
    with_omapi(world)
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert result.verified is True and result.verifySkipped is None
    assert result.verifyMs is not None and result.verifyMs >= 0
    primary, secondary = (s.running for s in result.servers)
    assert primary is not None and secondary is not None
    for running in (primary, secondary):
        assert (running.state, running.partnerState) == ("normal", "normal")
        assert running.relationship == RELATIONSHIP
        assert (running.localPort, running.partnerPort) == (648, 648)  # Port 648 requested
        assert running.mclt == 1800  # the secondary reports the primary's
        assert (running.maxResponseDelay, running.maxUnackedUpdates) == (60, 10)
    assert primary.loadBalanceMaxSeconds == 3
    assert world.primary.config == PRIMARY_AFTER.encode()
    assert world.secondary.config == SECONDARY_AFTER.encode()


async def test_each_server_is_verified_after_its_restart_before_the_next_restarts(
    world: World,
) -> None:
    with_omapi(world)
    world.secondary.restart_gate = asyncio.Event()
    request = modify_request(Mclt=1800, MaxResponseDelay=30)  # the ports still meet
    run = asyncio.ensure_future(execute(request, "req-modify-1", world.fleet))
    await asyncio.wait_for(world.secondary.restart_entered.wait(), 5)

    readings = [r for _, r in world.primary.omapi_reads if isinstance(r, RunningState)]
    (fresh,) = [r for r in readings if r.max_response_delay == 30]  # one was enough
    assert fresh.mclt == 1800
    assert fresh.local_state is PeerState.normal  # the old secondary dials it
    assert fresh.local_stos is not None and fresh.partner_stos is not None
    # Like dhcpd, it restored the old time of the state it got back to; its partner's is new.
    assert fresh.local_stos < int(world.primary.started) - 1 <= fresh.partner_stos
    world.secondary.restart_gate.set()
    assert (await run).outcome is Outcome.succeeded


async def test_a_server_the_change_does_not_touch_is_read_but_not_restarted(
    world: World,
) -> None:
    """Mclt lives on the primary only: the secondary keeps its file and its process, and
    adopts the new MCLT once the restarted primary connects again."""
    with_omapi(world)
    result = await execute(modify_request(Mclt=1800), "req-mclt", world.fleet)

    assert result.outcome is Outcome.succeeded and result.verified
    primary, secondary = result.servers
    assert primary.restarted and not secondary.changed and not secondary.restarted
    assert secondary.running is not None and secondary.running.mclt == 1800
    assert world.secondary.restart_count() == 0


async def test_a_dhcpd_running_the_other_role_is_a_values_difference(world: World) -> None:
    with_omapi(world)

    def swapped(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        return replace(got, hierarchy=1) if got is not None and host.restarts == 1 else got

    world.primary.omapi_filter = swapped
    request = modify_request(MaxResponseDelay=30)  # the ports still meet: fresh at once
    result = await execute(request, "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and "hierarchy 1 (its file: 0)" in result.error.message
    assert world.secondary.restart_count() == 0


async def test_other_values_on_a_dhcpd_that_cannot_reach_its_partner_yet_are_waited_for(
    world: World,
) -> None:
    """The primary on the new port cannot reach the secondary still on the old one: like
    dhcpd, it then reports the old time of the state it saved, as the replaced dhcpd would.
    Its other values may be the replaced one's, so they fail only at the deadline."""
    with_omapi(world, QUICK)

    def other_file(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        return replace(got, max_response_delay=30) if got is not None and runs_new(host) else got

    world.primary.omapi_filter = other_file
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    error = result.error
    assert error is not None and error.code == "running_values_differ"
    assert "within 0.3s after the restart of" in error.message
    assert len(after_restart(world.primary)) > 1


async def test_a_stale_reading_is_not_taken_for_the_new_dhcpd(world: World) -> None:
    """A dhcpd still answering from before its restart (its state older than the restart,
    the old values) is read again until the new one answers: not a values mismatch."""
    with_omapi(world)
    stale = 3

    def old_process(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        nonlocal stale
        if got is None or host.restarts == 0 or stale == 0:
            return got
        stale -= 1
        old = int(host.started) - 100
        return replace(got, local_stos=old, partner_stos=old, mclt=3600, local_port=647)

    world.primary.omapi_filter = old_process
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert stale == 0
    assert result.servers[0].running is not None and result.servers[0].running.mclt == 1800


async def test_a_server_without_omapi_is_not_verified_and_the_event_says_so(
    world: World,
) -> None:
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert result.verified is False and result.verifySkipped == NO_OMAPI
    assert result.verifyMs is None
    assert [s.running for s in result.servers] == [None, None]


async def test_one_server_without_omapi_leaves_the_change_unverified(world: World) -> None:
    world.primary.omapi = PATIENT
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded
    assert result.verified is False
    assert result.verifySkipped == f"{NO_OMAPI} for {SECONDARY}"
    assert result.servers[0].running is not None and result.servers[1].running is None
    assert world.secondary.omapi_reads == []


async def test_a_dry_run_reads_the_running_pair_but_restarts_and_verifies_nothing(
    world: World,
) -> None:
    with_omapi(world)
    result = await execute(modify_request(dry_run=True), "req-dry-1", world.fleet)

    assert result.outcome is Outcome.succeeded and result.dryRun
    assert result.verified is False and result.verifyMs is None and result.verifySkipped is None
    running = result.servers[0].running
    assert running is not None and (running.mclt, running.localPort) == (3600, 647)  # as is
    assert [h.restart_count() for h in world.hosts.values()] == [0, 0]


async def test_allowed_states_are_accepted_as_re_formed(world: World) -> None:
    with_omapi(world, VerifyPolicy(timeout=60.0, allowed_states=frozenset(PeerState)))
    world.secondary.blocked_ports = {648}
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded and result.verified
    assert result.servers[1].running is not None
    assert result.servers[1].running.state == "communications-interrupted"


# -- rolled back ----------------------------------------------------------------------------


async def test_a_pair_that_does_not_re_form_in_time_is_rolled_back_and_the_old_pair_verified(
    world: World,
) -> None:
    with_omapi(world, QUICK)
    world.secondary.blocked_ports = {648}  # a firewall drops the new port
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    error = result.error
    assert error is not None and (error.code, error.phase) == ("pair_not_normal", Phase.verify)
    assert "within 0.3s after the last restart" in error.message
    seen = {s["server"]: s["running"]["state"] for s in error.detail["servers"]}
    assert seen == {PRIMARY: "communications-interrupted", SECONDARY: "communications-interrupted"}
    assert_old_files(world)
    assert [h.restart_count() for h in world.hosts.values()] == [2, 2]
    assert result.verified is True  # the old pair, which the servers run now
    for server in result.servers:
        assert server.running is not None and server.running.state == "normal"
        assert server.running.localPort == 647 and server.running.mclt == 3600


async def test_a_rollback_after_a_failed_restart_verifies_the_old_pair_too(world: World) -> None:
    with_omapi(world)
    world.secondary.restart_failures = 1
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "command_failed"
    assert result.verified is True
    assert all(s.running is not None and s.running.localPort == 647 for s in result.servers)
    assert_old_files(world)


async def test_a_fatal_state_fails_at_once_without_waiting_for_the_timeout(
    world: World,
) -> None:
    with_omapi(world)

    def conflict(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        if got is not None and runs_new(host):
            return replace(got, local_state=PeerState.potential_conflict)
        return got

    world.primary.omapi_filter = conflict
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "pair_not_normal"
    assert "potential-conflict" in result.error.message
    assert len(after_restart(world.primary)) == 1  # one reading, no second poll
    assert world.secondary.restart_count() == 0  # the secondary was never committed
    assert_old_files(world)


async def test_running_values_that_differ_from_the_file_are_rolled_back(world: World) -> None:
    with_omapi(world)

    def other_file(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        if got is not None and runs_new(host):
            return replace(got, max_response_delay=30)  # dhcpd runs some other file
        return got

    world.secondary.omapi_filter = other_file
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    error = result.error
    assert error is not None and (error.code, error.server) == ("running_values_differ", SECONDARY)
    assert "max-response-delay 30 (its file: 60)" in error.message
    assert len(after_restart(world.secondary)) == 1
    assert_old_files(world)
    assert result.verified is True


async def test_a_secondary_mclt_that_is_not_the_primarys_fails_the_cross_check(
    world: World,
) -> None:
    with_omapi(world)

    def own_mclt(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        return replace(got, mclt=600) if got is not None and runs_new(host) else got

    world.secondary.omapi_filter = own_mclt
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "running_values_differ"
    assert "mclt 1800 but the secondary's mclt 600" in result.error.message


async def test_an_old_pair_that_does_not_re_form_either_is_rollback_failed(
    world: World,
) -> None:
    with_omapi(world, QUICK)

    def broken(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        if got is not None and host.restarts > 0:  # fine until it was restarted
            return replace(got, local_state=PeerState.recover, partner_state=PeerState.unknown)
        return got

    world.secondary.omapi_filter = broken
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rollback_failed
    error = result.error
    assert error is not None and (error.code, error.phase) == ("rollback_failed", Phase.rollback)
    assert error.detail["cause"]["code"] == "pair_not_normal"
    assert error.detail["verify"]["code"] == "pair_not_normal"
    (secondary,) = [s for s in error.detail["servers"] if s["server"] == SECONDARY]
    assert secondary["needsOperator"] and secondary["state"] == "old"
    assert "the old pair did not re-form" in secondary["problems"][0]
    assert_old_files(world)
    assert result.verified is False


async def test_a_dhcpd_dead_after_its_restart_shows_no_running_values_and_is_named(
    world: World,
) -> None:
    """The event must not show the prepare-time reading of a process that was replaced:
    ``running`` is null until the new dhcpd answers, and the error names the dead one, not
    the partner left waiting for it (seen on the lab pair)."""
    with_omapi(world, QUICK)

    def dead(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        if host.restarts > 0:
            raise OmapiUnreachable(f"{host.name}: connection refused", server=host.name)
        return got

    world.secondary.omapi_filter = dead
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rollback_failed
    assert result.error is not None and result.error.server == SECONDARY
    assert result.servers[1].running is None
    assert_old_files(world)


async def test_a_pair_broken_before_the_change_is_not_required_to_re_form_after_a_rollback(
    world: World,
) -> None:
    """The baseline showed the pair down: the rollback restores that, it cannot mend it."""
    with_omapi(world, QUICK)
    world.secondary.blocked_ports = {647, 648}
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "pair_not_normal"
    assert result.verified is True
    assert_old_files(world)


async def test_a_broken_pair_whose_partner_was_not_restarted_is_only_asked_to_answer(
    world: World,
) -> None:
    with_omapi(world, QUICK)
    world.secondary.blocked_ports = {647, 648}
    world.primary.restart_failures = 1  # the commit stops at the primary
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back, result.error
    assert result.error is not None and result.error.code == "command_failed"
    assert result.verified is True and world.secondary.restart_count() == 0


# -- prepare: nothing goes live on a server the worker cannot verify ----------------------------


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (OmapiAuthFailed("dhcp2: wrong authenticator"), "omapi_auth_failed"),
        (OmapiUnreachable("dhcp2: connection refused"), "omapi_unreachable"),
        (None, "running_values_differ"),  # dhcpd runs no such relationship: another file
    ],
)
async def test_omapi_refused_during_prepare_fails_and_touches_nothing(
    world: World, refusal: Exception | None, code: str
) -> None:
    with_omapi(world)
    world.secondary.omapi_script = [refusal]
    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and (result.error.code, result.error.phase) == (
        code,
        Phase.prepare,
    )
    assert_old_files(world)
    for host in world.hosts.values():
        untouched_dir(host)
        assert host.restart_count() == 0
    assert world.locked() == []


# -- remove ---------------------------------------------------------------------------------


async def test_a_verified_remove_leaves_no_failover_state_on_either_server(
    world: World,
) -> None:
    with_omapi(world)
    result = await execute(remove_request(), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert result.verified is True
    for server, host in zip(result.servers, world.hosts.values(), strict=True):
        assert server.running is not None and server.running.state is None
        assert host.omapi_reads[-1] == (RELATIONSHIP, None)


async def test_a_remove_whose_relationship_still_runs_is_rolled_back(world: World) -> None:
    with_omapi(world)
    ghost = None

    def still_there(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        nonlocal ghost
        if got is not None:
            ghost = got
            return got
        assert ghost is not None
        return replace(ghost, local_stos=int(host.started))  # fresh, yet still there

    world.primary.omapi_filter = still_there
    result = await execute(remove_request(), "req-remove-1", world.fleet)

    assert result.outcome is Outcome.rolled_back
    assert result.error is not None and result.error.code == "running_values_differ"
    assert f"still runs failover-state {RELATIONSHIP!r}" in result.error.message
    assert_old_files(world)
    assert result.verified is True


@pytest.mark.parametrize("request_of", [modify_request, remove_request])
async def test_a_redelivery_answers_with_the_recorded_verified_outcome(
    world: World, request_of: Callable[[], ModifyRequest | RemoveRequest]
) -> None:
    with_omapi(world)
    first = await execute(request_of(), "req-1", world.fleet)
    reads = [len(h.omapi_reads) for h in world.hosts.values()]

    again = await execute(request_of(), "req-1", world.fleet)

    assert first.verified and without_durations(again) == without_durations(first)
    assert again.verifyMs == first.verifyMs
    assert [len(h.omapi_reads) for h in world.hosts.values()] == reads  # from the journal


# -- a worker that dies while verifying ----------------------------------------------------------


async def test_a_change_cut_off_while_verifying_is_restarted_and_verified_by_its_redelivery(
    world: World,
) -> None:
    with_omapi(world)
    dies = [True]

    def crash(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        if host.restarts > 0 and dies:
            dies.clear()
            raise SimulatedCrash("the worker died while verifying")
        return got

    world.secondary.omapi_filter = crash
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-modify-1", world.fleet)
    assert world.secondary.config == SECONDARY_AFTER.encode()

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert result.verified is True
    assert [h.restart_count() for h in world.hosts.values()] == [2, 2]  # restarted again
    assert world.primary.config == PRIMARY_AFTER.encode()


async def test_polls_wait_the_interval_between_readings(world: World) -> None:
    """Transient states are read again every POLL_INTERVAL until the deadline, not busily."""
    with_omapi(world, VerifyPolicy(timeout=10 * POLL_INTERVAL))
    world.secondary.blocked_ports = {648}
    await execute(modify_request(), "req-modify-1", world.fleet)

    reads = len(after_restart(world.secondary))
    assert 3 <= reads <= 12


def test_the_event_names_exactly_dhcpds_states() -> None:
    assert set(get_args(PeerStateLabel)) == {s.label for s in PeerState}


async def test_a_change_cut_off_while_verifying_the_old_pair_is_verified_by_its_redelivery(
    world: World,
) -> None:
    with_omapi(world, QUICK)
    world.secondary.blocked_ports = {648}
    dies = [True]

    def crash(host: FakeHost, name: str, got: RunningState | None) -> RunningState | None:
        if host.restarts == 2 and dies:  # restarted on the new file, then on the old one
            dies.clear()
            raise SimulatedCrash("the worker died while verifying the old pair")
        return got

    world.primary.omapi_filter = crash
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-modify-1", world.fleet)
    assert_old_files(world)

    result = await execute(modify_request(), "req-modify-1", world.fleet)

    assert result.outcome is Outcome.rolled_back, result.error
    assert result.error is not None and result.error.code == "pair_not_normal"  # as recorded
    assert result.verified is True
    assert [h.restart_count() for h in world.hosts.values()] == [2, 2]  # none again
