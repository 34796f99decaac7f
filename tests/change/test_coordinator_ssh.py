"""The coordinator's scenarios again, on real sshd hosts with real ``dhcpd -t`` (no SSH mocks).

The hosts are worker.demo.localhosts stand-ins: each validates with the real dhcpd, and its
restart script checks the live config with dhcpd, logs ``<status> <sha256>`` per attempt and
fails or hangs on a marker file. A thin :class:`Probe` around the real ``SshHost`` records
the order of restarts across hosts and can pause or "kill" the worker at a chosen step; every
byte still goes over SSH.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.change.helpers import (
    PRIMARY_AFTER,
    PRIMARY_CONF,
    SCOPES,
    SECONDARY_AFTER,
    SECONDARY_CONF,
    SimulatedCrash,
    backups,
    modify_request,
    remove_request,
    sha,
    without_durations,
)
from tests.change.ssh_world import Env, EnvFactory, other_worker, wait_for
from worker.change.coordinator import ChangeOptions, execute
from worker.demo import PRIMARY, SECONDARY
from worker.messages import Outcome, Phase

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]


# -- succeeded -------------------------------------------------------------------------------


async def test_modify_over_ssh_changes_both_files_and_restarts_in_order(env: Env) -> None:
    result = await execute(modify_request(), "req-modify-1", env.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert env.primary.config_bytes() == PRIMARY_AFTER.encode()
    assert env.secondary.config_bytes() == SECONDARY_AFTER.encode()
    assert env.restarts() == [PRIMARY, SECONDARY]
    assert [(r.status, r.sha256) for r in env.primary.restarts()] == [("ok", sha(PRIMARY_AFTER))]
    assert [(r.status, r.sha256) for r in env.secondary.restarts()] == [
        ("ok", sha(SECONDARY_AFTER))
    ]
    primary, secondary = result.servers
    assert (primary.sha256Before, primary.sha256After) == (sha(PRIMARY_CONF), sha(PRIMARY_AFTER))
    assert secondary.sha256After == env.secondary.config_sha256()
    assert "-  mclt 3600;\n+  mclt 1800;\n" in primary.diff
    assert primary.diff.startswith(f"--- a{env.primary.config_path}\n")
    assert env.leftovers() == []
    (backup,) = backups(os.listdir(env.primary.config_dir))
    assert (env.primary.config_dir / backup).read_bytes() == PRIMARY_CONF.encode()
    assert (env.primary.config_dir / backup).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("action", ["Disable", "Delete", "None"])
async def test_remove_over_ssh_with_each_deconfigure_action(env: Env, action: str) -> None:
    result = await execute(remove_request(action=action), "req-remove-1", env.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    primary, secondary = env.primary.config_bytes().decode(), env.secondary.config_bytes().decode()
    assert 'failover peer "' not in primary and 'failover peer "' not in secondary
    assert all(scope in primary for scope in SCOPES)
    if action == "Disable":
        assert secondary.count("deny all clients;") == 2
    elif action == "Delete":
        assert not any(scope in secondary for scope in SCOPES)
    else:
        assert "deny all clients;" not in secondary and all(s in secondary for s in SCOPES)
        assert len(result.warnings) == 1 and SCOPES[0] in result.warnings[0].message
    # The restart script runs the real dhcpd on the live file: both came up on the new one.
    assert [r.status for r in env.primary.restarts()] == ["ok"]
    assert [r.status for r in env.secondary.restarts()] == ["ok"]
    assert env.secondary.restarts()[0].sha256 == env.secondary.config_sha256()


async def test_remove_with_pools_in_an_included_file_validates_the_whole_tree(env: Env) -> None:
    for local, conf in ((env.primary, PRIMARY_CONF), (env.secondary, SECONDARY_CONF)):
        head, tail = conf.split("# Office LAN")
        pools = local.config_dir / "pools.conf"
        pools.write_text("# Office LAN" + tail)
        local.config_path.write_text(head + f'include "{pools}";\n')
    mains = {h.name: h.config_bytes() for h in (env.primary, env.secondary)}

    result = await execute(remove_request(), "req-remove-1", env.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    for local in (env.primary, env.secondary):
        main = local.config_bytes().decode()
        assert f'include "{local.config_dir / "pools.conf"}";' in main
        assert 'failover peer "' not in main and mains[local.name] != main.encode()
        assert 'failover peer "' not in (local.config_dir / "pools.conf").read_text()
        assert [r.status for r in local.restarts()] == ["ok"]  # dhcpd read the whole tree
    assert (env.secondary.config_dir / "pools.conf").read_text().count("deny all clients;") == 2
    assert set(result.servers[1].files) == {
        str(env.secondary.config_dir / "pools.conf"),
        str(env.secondary.config_path),
    }
    assert env.leftovers() == []


# -- failed ----------------------------------------------------------------------------------


async def test_candidate_refused_by_real_dhcpd_fails_with_its_message_and_line(
    make_env: EnvFactory,
) -> None:
    broken = SECONDARY_CONF.replace("log-facility local7;", "option no-such-option 1;")
    env = await make_env({PRIMARY: PRIMARY_CONF, SECONDARY: broken})

    result = await execute(modify_request(), "req-modify-1", env.fleet)

    assert result.outcome is Outcome.failed
    error = result.error
    assert error is not None and error.code == "validation_failed"
    assert error.server == SECONDARY and error.phase is Phase.validate
    assert error.detail["file"] == str(env.secondary.config_path)  # not the staged name
    assert error.detail["line"] == broken.splitlines().index("option no-such-option 1;") + 1
    assert "unknown option" in error.message
    assert env.primary.config_bytes() == PRIMARY_CONF.encode()
    assert env.secondary.config_bytes() == broken.encode()
    assert env.leftovers() == []
    assert env.primary.restarts() == env.secondary.restarts() == []
    other = await other_worker(env)
    try:  # both locks were released
        for name in (PRIMARY, SECONDARY):
            async with other.host(name).lock(1):
                pass
    finally:
        await other.close()


async def test_validate_marker_on_one_server_fails_and_changes_nothing(env: Env) -> None:
    env.primary.set_marker("fail-validate")

    result = await execute(modify_request(), "req-modify-1", env.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.server == PRIMARY
    assert result.error.detail["file"] == str(env.primary.config_path)
    env.assert_untouched()


async def test_unknown_host_key_fails_clearly(env: Env) -> None:
    primary_only = f"[127.0.0.1]:{env.primary.port} {env.primary.host_key_line}\n"
    env.hosts.known_hosts.write_text(primary_only)

    result = await execute(modify_request(), "req-modify-1", env.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "host_key_rejected"
    assert result.error.server == SECONDARY
    env.assert_untouched()


async def test_unreachable_server_fails_with_nothing_changed(env: Env) -> None:
    env.secondary.process.terminate()
    env.secondary.process.wait(5)

    result = await execute(modify_request(), "req-modify-1", env.fleet)

    assert result.outcome is Outcome.failed
    assert result.error is not None and result.error.code == "unreachable"
    assert result.error.server == SECONDARY
    assert env.primary.config_bytes() == PRIMARY_CONF.encode()
    assert env.primary.restarts() == []


async def test_lock_held_by_another_change_fails_after_a_bounded_wait(env: Env) -> None:
    other = await other_worker(env)
    try:
        async with other.host(SECONDARY).lock(5):
            started = time.monotonic()
            result = await execute(
                modify_request(), "req-modify-1", env.fleet, ChangeOptions(lock_timeout=1)
            )
            waited = time.monotonic() - started
        assert result.outcome is Outcome.failed
        assert result.error is not None and result.error.code == "lock_timeout"
        assert result.error.server == SECONDARY
        assert 1 <= waited < 10
        env.assert_untouched()
        async with other.host(PRIMARY).lock(1):  # ours was released
            pass
    finally:
        await other.close()


async def test_two_workers_changing_the_pair_in_opposite_roles_at_once_both_finish(
    env: Env,
) -> None:
    # Each worker tries both locks at once; whichever finds one busy waits in name order
    # (never holding a later lock while it waits for an earlier one): no deadlock.
    other = await other_worker(env)
    options = ChangeOptions(lock_timeout=10)
    outcomes: list[list[tuple[Outcome, str | None]]] = []
    try:
        for round_ in range(3):
            results = await asyncio.wait_for(
                asyncio.gather(
                    execute(
                        modify_request(f"m-{round_}", Mclt=1800 + round_),
                        f"m-{round_}",
                        env.fleet,
                        options,
                    ),
                    execute(
                        remove_request(f"r-{round_}", server=SECONDARY),
                        f"r-{round_}",
                        other,
                        options,
                    ),
                ),
                30,
            )
            outcomes.append([(r.outcome, r.error.code if r.error else None) for r in results])
            for result in results:  # the loser planned on files the winner changed
                assert result.outcome is not Outcome.failed or (
                    result.error is not None and result.error.code == "concurrent_change"
                ), result.error
                assert result.outcome in (Outcome.succeeded, Outcome.failed, Outcome.rejected)
        assert Outcome.succeeded in [o for round_ in outcomes for o, _ in round_], outcomes
        async with other.host(PRIMARY).lock(1), other.host(SECONDARY).lock(1):
            pass  # every lock was released
    finally:
        await other.close()


async def test_config_changed_between_plan_and_commit_is_planned_again_not_overwritten(
    env: Env,
) -> None:
    edited = SECONDARY_CONF.encode() + b"# edited by hand\n"

    def edit() -> None:
        env.secondary.config_path.write_bytes(edited)

    env.probe(SECONDARY).on_lock = edit

    result = await execute(modify_request(), "req-modify-1", env.fleet)

    # Planned again under the locks, on the edited file: the edit is kept.
    assert result.outcome is Outcome.succeeded, result.error
    assert env.secondary.config_bytes() == SECONDARY_AFTER.encode() + b"# edited by hand\n"
    assert env.primary.config_bytes() == PRIMARY_AFTER.encode()
    assert env.leftovers() == []


# -- rolled_back / rollback_failed -----------------------------------------------------------


async def test_restart_failure_on_secondary_restores_both_and_restarts_them(
    make_env: EnvFactory,
) -> None:
    # The secondary's restart "hangs" for 2 s and then fails; by then the marker is gone,
    # so the restart on the restored file works: a restart that failed once.
    env = await make_env(hang_seconds=2)
    env.secondary.set_marker("hang-restart")
    task = asyncio.create_task(execute(modify_request(), "req-modify-1", env.fleet))
    await wait_for(lambda: bool(env.secondary.restarts()))
    env.secondary.set_marker("hang-restart", on=False)
    result = await task

    assert result.outcome is Outcome.rolled_back, result.error
    assert result.error is not None and result.error.server == SECONDARY
    assert result.error.code == "command_failed" and result.error.phase is Phase.commit
    assert env.primary.config_bytes() == PRIMARY_CONF.encode()
    assert env.secondary.config_bytes() == SECONDARY_CONF.encode()
    assert [(r.status, r.sha256) for r in env.primary.restarts()] == [
        ("ok", sha(PRIMARY_AFTER)),
        ("ok", sha(PRIMARY_CONF)),
    ]
    assert [r.status for r in env.secondary.restarts()] == ["hung", "ok"]
    assert env.restarts() == [PRIMARY, SECONDARY, SECONDARY, PRIMARY]
    assert [s.state for s in result.servers] == ["old", "old"]
    assert env.leftovers() == []


async def test_restart_failing_on_the_restored_file_too_is_rollback_failed(env: Env) -> None:
    env.secondary.set_marker("fail-restart")

    result = await execute(modify_request(), "req-modify-1", env.fleet)

    assert result.outcome is Outcome.rollback_failed
    error = result.error
    assert error is not None and error.phase is Phase.rollback and error.server == SECONDARY
    servers = {s["server"]: s for s in error.detail["servers"]}
    assert servers[PRIMARY]["state"] == "old" and servers[PRIMARY]["restarted"]
    assert servers[SECONDARY]["state"] == "old" and servers[SECONDARY]["needsOperator"]
    assert f"{SECONDARY} holds the old file" in error.message
    assert env.primary.config_bytes() == PRIMARY_CONF.encode()
    assert env.secondary.config_bytes() == SECONDARY_CONF.encode()
    assert [r.status for r in env.primary.restarts()] == ["ok", "ok"]
    assert [r.status for r in env.secondary.restarts()] == ["failed", "failed"]


# -- dry run, idempotency, recovery ----------------------------------------------------------


async def test_dry_run_over_ssh_validates_and_changes_nothing(env: Env) -> None:
    result = await execute(modify_request(dry_run=True), "req-dry", env.fleet)

    assert result.outcome is Outcome.succeeded and result.dryRun
    assert "+  mclt 1800;" in result.servers[0].diff
    env.assert_untouched()
    assert not [n for n in os.listdir(env.primary.config_dir) if n.endswith((".bak", ".json"))]


async def test_the_same_request_twice_over_ssh_applies_once(env: Env) -> None:
    first = await execute(modify_request(), "req-modify-1", env.fleet)
    second = await execute(modify_request(), "req-modify-1", env.fleet)

    assert first.outcome is Outcome.succeeded
    assert without_durations(second) == without_durations(first)
    assert len(env.primary.restarts()) == len(env.secondary.restarts()) == 1
    assert env.secondary.config_bytes() == SECONDARY_AFTER.encode()


async def test_a_change_cut_off_after_the_first_commit_is_finished_by_the_next_run(
    env: Env,
) -> None:
    probe = env.probe(SECONDARY)
    probe.crash_at = lambda op: op[0] == "replace" and op[2].endswith("/dhcpd.conf")
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-modify-1", env.fleet)
    assert env.primary.config_bytes() == PRIMARY_AFTER.encode()
    assert env.secondary.config_bytes() == SECONDARY_CONF.encode()

    probe.crash_at = lambda op: False
    result = await execute(modify_request(), "req-modify-1", env.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert env.secondary.config_bytes() == SECONDARY_AFTER.encode()
    # restarted again: no journal write records that its restart succeeded (harmless)
    assert [r.status for r in env.primary.restarts()] == ["ok", "ok"]
    assert [r.status for r in env.secondary.restarts()] == ["ok"]
    assert env.leftovers() == []


async def test_a_worker_killed_mid_commit_is_finished_by_the_next_run(
    make_env: EnvFactory,
) -> None:
    env = await make_env(hang_seconds=45)
    env.secondary.set_marker("hang-restart")
    script = (
        "import asyncio, sys\n"
        "from tests.change.helpers import modify_request\n"
        "from worker.change.coordinator import execute\n"
        "from worker.transport import SshFleet, SshOptions, load_inventory\n"
        "fleet = SshFleet(load_inventory(sys.argv[1]), SshOptions(command_timeout=60))\n"
        "asyncio.run(execute(modify_request(), 'req-modify-1', fleet))\n"
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(env.hosts.inventory_path),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: bool(env.secondary.restarts()), within=30)
        worker.send_signal(signal.SIGKILL)  # dies while the secondary's restart hangs
    finally:
        if worker.returncode is None:
            worker.kill()
        await asyncio.wait_for(worker.wait(), 10)
    env.secondary.set_marker("hang-restart", on=False)
    assert env.secondary.config_bytes() == SECONDARY_AFTER.encode()

    again = ChangeOptions(lock_timeout=10)  # the dead worker's locks go with its connections
    result = await execute(modify_request(), "req-modify-1", env.fleet, again)

    assert result.outcome is Outcome.succeeded, result.error
    # both hold the new file, so both are restarted again (harmless for the primary)
    assert [r.status for r in env.primary.restarts()] == ["ok", "ok"]
    assert [r.status for r in env.secondary.restarts()] == ["hung", "ok"]
    assert env.secondary.restarts()[-1].sha256 == sha(SECONDARY_AFTER)
    assert env.leftovers() == []


async def test_cancelling_during_the_commit_over_ssh_finishes_it_first(env: Env) -> None:
    gate = asyncio.Event()
    env.probe(PRIMARY).restart_gate = gate
    task = asyncio.create_task(execute(modify_request(), "req-modify-1", env.fleet))
    await asyncio.wait_for(env.probe(PRIMARY).restart_entered.wait(), 20)

    task.cancel()
    await asyncio.sleep(0.1)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert env.primary.config_bytes() == PRIMARY_AFTER.encode()
    assert env.secondary.config_bytes() == SECONDARY_AFTER.encode()
    assert [r.status for r in env.secondary.restarts()] == ["ok"]
    replay = await execute(modify_request(), "req-modify-1", env.fleet)
    assert replay.outcome is Outcome.succeeded
    assert len(env.secondary.restarts()) == 1
