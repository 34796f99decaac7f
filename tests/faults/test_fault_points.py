"""The step points of worker/change/faults.py, in-process: which call acts, and how a pause
hands control to the test. (The kill itself is proven by the crash matrix, on real workers.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import REPO
from worker.change import faults
from worker.change.faults import Fault, step


@pytest.fixture(autouse=True)
def no_fault() -> Iterator[None]:
    yield
    faults.configure(None)


@pytest.mark.parametrize(
    ("at", "action", "directory", "message"),
    [
        ("renamd", "kill", None, "unknown step"),
        ("renamed:0", "kill", None, "counts from 1"),
        ("renamed", "stop", None, "kill or pause"),
        ("renamed", "pause", None, "needs DHCP_FAILOVER_FAULT_DIR"),
    ],
)
def test_a_mistyped_fault_is_refused_with_the_variable_it_came_from(
    at: str, action: str, directory: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Fault.parse(at, action, directory)


async def test_a_pause_acts_at_the_named_occurrence_only_and_waits_for_the_go_file(
    tmp_path: Path,
) -> None:
    faults.configure(Fault.parse("renamed:2", "pause", str(tmp_path)))
    await step("restarted")  # another step: nothing
    await step("renamed")  # the first occurrence: nothing
    assert not (tmp_path / "renamed.paused").exists()

    second = asyncio.create_task(step("renamed"))
    for _ in range(200):
        if (tmp_path / "renamed.paused").exists():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert (tmp_path / "renamed.paused").exists()
    assert not second.done()  # held at the step until the test lets it go
    (tmp_path / "renamed.go").touch()
    await asyncio.wait_for(second, 2)

    (tmp_path / "renamed.paused").unlink()
    await asyncio.wait_for(step("renamed"), 2)  # a third: nothing any more
    assert not (tmp_path / "renamed.paused").exists()


def test_a_process_started_with_the_variable_kills_itself_at_the_step() -> None:
    script = (
        "import asyncio\n"
        "from worker.change.faults import step\n"
        "asyncio.run(step('planned'))\n"
        "print('passed the step', flush=True)\n"
        "asyncio.run(step('planned'))\n"
        "print('still alive', flush=True)\n"
    )
    env = {**os.environ, "DHCP_FAILOVER_FAULT_AT": "planned:2"}
    env.pop("DHCP_FAILOVER_FAULT_ACTION", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, timeout=30
    )
    assert done.returncode == -9, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "passed the step" and "still alive" not in lines, lines
    assert "fault.injected" in lines[-1] and "step=planned" in lines[-1], lines
