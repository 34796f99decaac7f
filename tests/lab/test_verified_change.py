"""Verified changes on a real dhcpd failover pair, through the queue (issue 10, §3.8).

Everything is real: requests are published on RabbitMQ, the worker (``serve``) changes the
lab's two dhcpd.conf files over the lab's sshds and restarts the dhcpds with the lab's restart
script, then reads both dhcpds over OMAPI through its SSH connections. The checks read the
pair without the worker: the lab's own OMAPI reads, the files' sha256, the dhcpd pids, a log
the restart commands write, and a DHCP client on the lab's bridge.

The broken-pair tests use a short ``verify_timeout`` (:data:`SHORT`): each of them waits for
it once or twice. Timings are printed (``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pypureomapi  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.fixtures.lab import NORMAL_TIMEOUT, start_lab
from tests.lab.support import (
    NORMAL_NORMAL,
    StartWorker,
    assert_old_pair_back,
    expected_running,
    in_turn,
    kill_after_restart,
    lab_inventory,
    lab_worker,
    modify_body,
    pause_next_restart,
    read_at,
    record_restarts,
    remove_body,
    reset,
    restore_logging,
    running_values,
    set_omapi_fields,
    snapshot,
    states_of,
    timing,
    values_of,
)
from worker.lab import Lab, LabError, LabOmapiKey

pytestmark = pytest.mark.timeout(150)
_FIXTURES = (lab_worker, restore_logging)  # imported so that pytest finds them here

#: verify_timeout of the tests that break the pair (the lab notices a dead link in ~5 s).
SHORT = 6
#: verify_timeout where the pair re-forms (~0.2 s after a restart): generous, never waited.
LONG = 20


# -- a change that re-forms --------------------------------------------------------------------


async def test_modify_on_the_live_pair_restarts_both_in_turn_and_verifies_the_new_values(
    lab: Lab, lab_worker: StartWorker
) -> None:
    lab_inventory(lab, omapi=True, verify_timeout=LONG)
    timeline = record_restarts(lab)
    before = snapshot(lab)
    worker = await lab_worker(lab)
    values = {"mclt": 40, "port": 8647, "partner_port": 8648}
    values |= {"max_response_delay": 6, "max_unacked": 12}
    body = modify_body(lab, "modify", Mclt=40, Port=8647, PartnerPort=8648)
    body["params"] |= {"MaxResponseDelay": 6, "MaxUnackedUpdates": 12}
    try:
        done = await worker.request(body, "request.modify")
        timing("modify, 4 values, verified", done.seconds, verifyMs=done.data["verifyMs"])

        data = done.data
        assert (data["outcome"], data["error"]) == ("succeeded", None)
        assert (data["verified"], data["verifySkipped"]) == (True, None)
        assert isinstance(data["verifyMs"], int)
        # Restarted one after the other, the primary first: two new dhcpds.
        _, last_restart = in_turn(timeline, "primary", "secondary")
        after = snapshot(lab)
        for name in lab.servers:
            assert after.pids[name] not in (None, before.pids[name])
        # What the pair runs, read by the lab itself: normal, with the requested values.
        await asyncio.to_thread(lab.wait_normal, 5.0)
        expected = expected_running(**values)
        assert {n: running_values(lab, n) for n in lab.servers} == expected
        # ... and what the event says each one ran, read after the last restart.
        for name in lab.servers:
            entry = done.server(name)
            assert (entry["restarted"], entry["state"]) == (True, "new")
            assert entry["sha256After"] == after.files[name]
            running = entry["running"]
            assert running["relationship"] == lab.relationship
            assert states_of(entry) == NORMAL_NORMAL
            assert values_of(running) == expected[name]
            assert read_at(running) >= last_restart - 0.01
    finally:
        await reset(lab)


async def test_without_an_omapi_table_the_change_succeeds_unverified_and_says_why(
    lab: Lab, lab_worker: StartWorker
) -> None:
    lab_inventory(lab, omapi=False)
    before = snapshot(lab)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(
            modify_body(lab, "no-omapi", MaxUnackedUpdates=11), "request.modify"
        )
        timing("modify without omapi", done.seconds)

        data = done.data
        assert (data["outcome"], data["error"]) == ("succeeded", None)
        assert data["verified"] is False
        assert data["verifySkipped"] == "no omapi in inventory"
        assert data["verifyMs"] is None
        after = snapshot(lab)
        for name in lab.servers:
            entry = done.server(name)
            assert (entry["restarted"], entry["running"]) == (True, None)
            assert after.files[name] != before.files[name]
            assert after.pids[name] not in (None, before.pids[name])
    finally:
        await reset(lab)


# -- changes that do not re-form: rolled back ---------------------------------------------------


async def test_ports_a_firewall_drops_pass_dhcpd_t_but_are_rolled_back(
    lab: Lab, lab_worker: StartWorker
) -> None:
    port = 8647
    lab_inventory(lab, omapi=True, verify_timeout=SHORT)
    timeline = record_restarts(lab)
    before = snapshot(lab)
    lab.block_port("secondary", port)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(
            modify_body(lab, "firewalled", Port=port, PartnerPort=port), "request.modify"
        )
        timing("firewalled ports, rolled back", done.seconds, verifyMs=done.data["verifyMs"])

        data = done.data
        assert data["outcome"] == "rolled_back"
        error = data["error"]
        assert (error["code"], error["phase"]) == ("pair_not_normal", "verify")
        # Both were committed and restarted (so dhcpd -t passed both), then restored in
        # reverse order.
        in_turn(timeline, "primary", "secondary", "secondary", "primary")
        # What each server ran when the verify gave up: the new ports, not normal/normal.
        seen = {s["server"]: s for s in error["detail"]["servers"]}
        assert set(seen) == set(lab.servers)
        for name, entry in seen.items():
            assert entry["relationship"] == lab.relationship
            assert entry["problem"], entry
            running = entry["running"]
            assert (running["localPort"], running["partnerPort"]) == (port, port), entry
            assert (running["state"], running["partnerState"]) != NORMAL_NORMAL, entry
            assert name in error["message"]
        assert data["verified"] is True  # the old pair, after the rollback (§3.2)
        await assert_old_pair_back(lab, before, done)
    finally:
        await reset(lab)
    assert lab.blocked_ports("secondary") == set()


async def test_a_restarted_peer_that_dies_is_rolled_back_and_comes_back_on_its_old_file(
    lab: Lab, lab_worker: StartWorker
) -> None:
    lab_inventory(lab, omapi=True, verify_timeout=SHORT)
    kill_after_restart(lab, "secondary", once=True)
    timeline = record_restarts(lab)
    before = snapshot(lab)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(
            modify_body(lab, "dies", MaxUnackedUpdates=11), "request.modify"
        )
        timing("restarted peer dies, rolled back", done.seconds, verifyMs=done.data["verifyMs"])

        data = done.data
        assert data["outcome"] == "rolled_back"
        error = data["error"]
        assert (error["code"], error["phase"], error["server"]) == (
            "omapi_unreachable",
            "verify",
            "secondary",
        )
        (seen,) = error["detail"]["servers"]  # the wait after the secondary's restart
        assert (seen["server"], seen["running"]) == ("secondary", None)
        assert "Connection refused" in seen["problem"]
        in_turn(timeline, "primary", "secondary", "secondary", "primary")
        assert data["verified"] is True
        await assert_old_pair_back(lab, before, done)
    finally:
        await reset(lab)


async def test_a_peer_killed_while_its_partner_restarts_is_rolled_back_with_both_states(
    lab: Lab, lab_worker: StartWorker
) -> None:
    lab_inventory(lab, omapi=True, verify_timeout=SHORT)
    begun = pause_next_restart(lab, "secondary")
    timeline = record_restarts(lab)
    before = snapshot(lab)
    worker = await lab_worker(lab)

    async def kill_the_primary_when_the_secondary_restarts() -> int | None:
        for _ in range(3000):  # the request's wait bounds this anyway
            if begun.exists():
                break
            await asyncio.sleep(0.02)
        try:
            return await asyncio.to_thread(lab.kill_dhcpd, "primary")
        finally:
            begun.unlink()

    killer = asyncio.create_task(kill_the_primary_when_the_secondary_restarts())
    try:
        done = await worker.request(
            modify_body(lab, "partner-killed", MaxUnackedUpdates=11), "request.modify"
        )
        timing("partner killed, rolled back", done.seconds, verifyMs=done.data["verifyMs"])
        killed = await killer

        data = done.data
        assert killed is not None
        assert data["outcome"] == "rolled_back"
        error = data["error"]
        assert (error["code"], error["phase"]) == ("pair_not_normal", "verify")
        seen = {s["server"]: s for s in error["detail"]["servers"]}
        assert seen["primary"]["running"] is None  # killed: no OMAPI answer
        assert "Connection refused" in seen["primary"]["problem"]
        secondary = seen["secondary"]["running"]
        assert secondary["maxUnackedUpdates"] == 11  # its new dhcpd, alone
        assert (secondary["state"], secondary["partnerState"]) != NORMAL_NORMAL
        assert seen["secondary"]["problem"]
        in_turn(timeline, "primary", "secondary", "secondary", "primary")
        await assert_old_pair_back(lab, before, done)
        assert snapshot(lab).pids["primary"] != killed
    finally:
        killer.cancel()
        await reset(lab)


async def test_a_peer_that_never_comes_back_fails_the_rollback_too(
    lab: Lab, lab_worker: StartWorker
) -> None:
    lab_inventory(lab, omapi=True, verify_timeout=SHORT)
    kill_after_restart(lab, "secondary", once=False)
    timeline = record_restarts(lab)
    before = snapshot(lab)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(
            modify_body(lab, "never-back", MaxUnackedUpdates=11), "request.modify"
        )
        timing("peer never back, rollback_failed", done.seconds, verifyMs=done.data["verifyMs"])

        data = done.data
        assert (data["outcome"], data["verified"]) == ("rollback_failed", False)
        error = data["error"]
        assert (error["code"], error["phase"]) == ("rollback_failed", "rollback")
        detail = error["detail"]
        assert (detail["cause"]["code"], detail["cause"]["server"]) == (
            "omapi_unreachable",
            "secondary",
        )
        verify = detail["verify"]
        assert (verify["code"], verify["phase"]) == ("pair_not_normal", "verify")
        seen = {s["server"]: s for s in verify["detail"]["servers"]}
        assert seen["secondary"]["running"] is None
        assert states_of(seen["primary"]) != NORMAL_NORMAL
        for entry in detail["servers"]:
            assert (entry["state"], entry["restarted"], entry["needsOperator"]) == (
                "old",
                True,
                True,
            )
            assert any("the old pair did not re-form" in p for p in entry["problems"])
        # The files are the old ones again; the secondary's dhcpd is dead, as its restart
        # command leaves it.
        in_turn(timeline, "primary", "secondary", "secondary", "primary")
        after = snapshot(lab)
        assert after.files == before.files
        assert after.pids["secondary"] is None
        # The event's last reading of each server: the secondary never answered after its
        # restarts, so no reading of it may say that it runs normal/normal.
        assert done.server("secondary")["running"] is None
        assert done.data["error"]["server"] == "secondary"  # the dead one, not its partner
    finally:
        await reset(lab)


# -- remove --------------------------------------------------------------------------------------


async def test_remove_with_disable_leaves_the_primary_serving_alone(
    lab: Lab, lab_worker: StartWorker
) -> None:
    lab_inventory(lab, omapi=True, verify_timeout=LONG)
    timeline = record_restarts(lab)
    before = snapshot(lab)
    primary = lab.servers["primary"].address
    worker = await lab_worker(lab)
    try:
        done = await worker.request(remove_body(lab, "remove"), "request.remove")
        timing("remove (Disable), verified", done.seconds, verifyMs=done.data["verifyMs"])

        data = done.data
        assert (data["outcome"], data["error"]) == ("succeeded", None)
        assert (data["verified"], data["verifySkipped"]) == (True, None)
        _, last_restart = in_turn(timeline, "primary", "secondary")
        after = snapshot(lab)
        for name in lab.servers:
            assert after.pids[name] not in (None, before.pids[name])
            # dhcpd answers OMAPI, and has no such failover-state any more.
            with pytest.raises(pypureomapi.OmapiErrorNotFound):
                lab.failover_state(name)
            running = done.server(name)["running"]
            assert (running["relationship"], running["state"]) == (lab.relationship, None)
            assert read_at(running) >= last_restart - 0.01
        assert "deny all clients;" in lab.servers["secondary"].config_path.read_text()

        # A client on the bridge: every lease comes from the primary, alone (a lease under
        # failover would be at most the MCLT long; this is dhcpd's default-lease-time).
        for attempt in range(3):
            started = time.monotonic()
            lease = await asyncio.to_thread(lab.dhcp_lease, "client", 10)
            timing(f"lease {attempt + 1}", time.monotonic() - started)
            assert lease["dhcp-server-identifier"] == primary, lease
            assert int(lease["dhcp-lease-time"]) > lab.peer.mclt
        # With the primary gone, the secondary -- running, answering OMAPI -- offers nothing.
        await asyncio.to_thread(lab.kill_dhcpd, "primary")
        started = time.monotonic()
        with pytest.raises(LabError, match="No DHCPOFFERS received"):
            await asyncio.to_thread(lab.dhcp_lease, "client", 5)
        timing("no lease from the secondary alone", time.monotonic() - started)
        assert lab.servers["secondary"].dhcpd_pid == after.pids["secondary"]
        with pytest.raises(pypureomapi.OmapiErrorNotFound):
            lab.failover_state("secondary")
    finally:
        await reset(lab)


# -- OMAPI keys --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A second lab whose dhcpds have an ``omapi-key``; the inventory names it."""
    with start_lab(tmp_path_factory.mktemp("keyed"), omapi_key=True) as started:
        started.wait_normal(NORMAL_TIMEOUT)
        yield started


async def test_a_keyed_omapi_is_verified_with_the_right_key(
    keyed_lab: Lab, lab_worker: StartWorker
) -> None:
    lab = keyed_lab
    lab_inventory(lab, omapi=True, verify_timeout=LONG)
    assert lab.omapi_key is not None
    assert 'key_name = "omapi_key"' in lab.inventory_path.read_text()
    with pytest.raises(pypureomapi.OmapiErrorNotFound):  # dhcpd insists on the key
        lab.failover_state("primary", authenticated=False)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(modify_body(lab, "keyed", MaxResponseDelay=6), "request.modify")
        timing("modify, keyed OMAPI, verified", done.seconds, verifyMs=done.data["verifyMs"])

        data = done.data
        assert (data["outcome"], data["verified"]) == ("succeeded", True)
        for name in lab.servers:
            running = done.server(name)["running"]
            assert states_of(done.server(name)) == NORMAL_NORMAL
            assert running["maxResponseDelay"] == 6
            assert running_values(lab, name)["maxResponseDelay"] == 6
    finally:
        await reset(lab)


#: What each kind of wrong key is told (dhcpd's answer, mapped by worker.transport.omapi).
WRONG_KEYS = {
    "secret": "wrong key secret",
    "key name": "dhcpd refused OMAPI key 'not_dhcpds_key'",
    "no key": "dhcpd requires an OMAPI key",
}


@pytest.mark.parametrize("wrong", list(WRONG_KEYS))
async def test_a_key_dhcpd_refuses_fails_in_prepare_and_changes_nothing(
    keyed_lab: Lab, lab_worker: StartWorker, wrong: str
) -> None:
    lab = keyed_lab
    lab_inventory(lab, omapi=True, verify_timeout=LONG)
    for name in lab.servers:
        if wrong == "secret":
            other = lab.workdir / "other.secret"
            other.write_text(LabOmapiKey.generate().secret + "\n")
            set_omapi_fields(lab, name, key_secret_file=other)
        elif wrong == "key name":
            set_omapi_fields(lab, name, key_name="not_dhcpds_key")
        else:
            set_omapi_fields(lab, name, none=True, drop=("key_name", "key_secret_file"))
    before = snapshot(lab)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(
            modify_body(lab, "wrong-key", MaxResponseDelay=6), "request.modify"
        )
        timing(f"wrong OMAPI key ({wrong}), failed", done.seconds)

        data = done.data
        assert (data["outcome"], data["verified"]) == ("failed", False)
        error = data["error"]
        assert (error["code"], error["phase"]) == ("omapi_auth_failed", "prepare")
        assert error["server"] in lab.servers
        assert WRONG_KEYS[wrong] in error["message"]
        assert snapshot(lab) == before  # byte-identical files, the same dhcpd processes
        await asyncio.to_thread(lab.wait_normal, 5.0)
    finally:
        await reset(lab)
