"""One outcome per request id, over real sshd and real dhcpd: the failure paths of
test_one_outcome.py with real SFTP refusals instead of in-memory ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.change.helpers import (
    SECONDARY_AFTER,
    SimulatedCrash,
    journals,
    modify_request,
    without_durations,
)
from tests.change.ssh_world import Env, Probe
from worker.change.coordinator import execute
from worker.change.ports import CommandResult
from worker.demo import SECONDARY
from worker.messages import Outcome, ResultData

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def chattr(flag: str, directory: Path) -> None:
    """``chattr +i``: even root cannot create, rename or remove in the directory, as a full
    or failing disk would refuse the done record's write."""
    process = await asyncio.create_subprocess_exec("chattr", flag, str(directory))
    assert await process.wait() == 0


async def test_a_done_record_the_server_refused_does_not_lock_it_out(env: Env) -> None:
    directory = env.secondary.config_dir
    probe: Probe = env.probe(SECONDARY)
    inner_restart = probe.inner.restart
    frozen: list[bool] = []

    async def restart_then_freeze() -> CommandResult:
        result = await inner_restart()
        await chattr("+i", directory)  # after the restart, before the done record
        frozen.append(True)
        return result

    probe.inner.restart = restart_then_freeze  # type: ignore[method-assign]
    try:
        first = await execute(modify_request(), "req-1", env.fleet)
    finally:
        if frozen:
            await chattr("-i", directory)
        probe.inner.restart = inner_restart  # type: ignore[method-assign]
    assert first.outcome is Outcome.succeeded, first.error
    assert [n for n in journals(sorted(p.name for p in directory.iterdir())) if ".req-1." in n]

    later = await execute(modify_request("req-2", Port=649), "req-2", env.fleet)

    assert later.outcome is Outcome.succeeded, later.error
    assert b"port 649;" in env.secondary.config_bytes()
    assert journals(sorted(p.name for p in directory.iterdir())) == []


async def test_a_worker_killed_right_after_the_event_gets_the_same_event_and_no_restart(
    env: Env,
) -> None:
    announced: list[ResultData] = []

    def publish_then_die(result: ResultData) -> None:
        announced.append(result)
        raise SimulatedCrash("killed right after publishing")

    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-1", env.fleet, announce=publish_then_die)
    restarts = len(env.primary.restarts()), len(env.secondary.restarts())
    env.secondary.set_marker("fail-restart")  # a restart now would fail and roll back
    try:
        again = await execute(modify_request(), "req-1", env.fleet)
    finally:
        env.secondary.set_marker("fail-restart", on=False)

    (published,) = announced
    assert published.outcome is Outcome.succeeded
    assert without_durations(again) == without_durations(published)
    assert (len(env.primary.restarts()), len(env.secondary.restarts())) == restarts
    assert env.secondary.config_bytes() == SECONDARY_AFTER.encode()
