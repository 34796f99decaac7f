"""A restart that hangs past ``command_timeout`` on a verified pair (issue 11, part 6, case 5).

The restart's result is unknown: dhcpd may run the new file (the restart command hung after
starting it, as ``systemctl restart`` can), the old one (it hung before), or nothing. The
worker neither takes it for a success nor assumes it failed: where the server has an
``omapi`` table, it reads dhcpd and decides (worker/change/commit.py). On the lab's real
dhcpd pair, through the queue, with the lab's own restart script wrapped so the next
primary restart hangs once. The case without an ``omapi`` table (undone like a failed
restart) is in test_server_trouble.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.e2e import conftest as e2e
from tests.e2e.support import rewrite_restart_command
from tests.faults.report import record
from tests.lab.support import (
    NORMAL_NORMAL,
    StartWorker,
    lab_inventory,
    lab_worker,
    modify_body,
    reset,
    restore_logging,
    running_values,
    snapshot,
    states_of,
    timing,
)
from worker.lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(120)]
_FIXTURES = (lab_worker, restore_logging)  # imported so that pytest finds them here

#: The hung restart sleeps this long (killed by the server's ``timeout`` long before).
HANG_SECONDS = 43
COMMAND_TIMEOUT = 3.0
#: verify_timeout: how long a dhcpd that did not restart is waited for.
SHORT = 4


def hang_next_restart(lab: Lab, server: str, *, after: bool) -> Path:
    """``server``'s next restart hangs once, ``after`` the lab's script restarted dhcpd (it
    runs the new file) or before it (dhcpd keeps running the old one); the marker."""
    marker = lab.workdir / f"hang-{server}-once"
    marker.touch()
    m = shlex.quote(str(marker))
    hang = f"if [ -e {m} ]; then rm -f {m}; sleep {HANG_SECONDS}; fi"

    def wrap(cmd: str) -> str:
        return f"{cmd} || exit 1; {hang}" if after else f"{hang}; exec {cmd}"

    rewrite_restart_command(lab, server, wrap)  # type: ignore[arg-type]  # uses inventory_path
    return marker


def hung_sleeps() -> list[int]:
    """Pids of a ``sleep 43`` still alive (the lab's processes carry no token)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", str(HANG_SECONDS).encode()]:
            found.append(int(entry.name))
    return found


@pytest.fixture
def short_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """``lab_worker`` starts ``serve`` with the e2e SSH bounds: a short command timeout."""
    monkeypatch.setitem(e2e.SSH_TIMEOUTS, "command_timeout", COMMAND_TIMEOUT)


async def test_a_restart_that_hangs_after_restarting_is_verified_and_the_change_goes_on(
    lab: Lab, lab_worker: StartWorker, short_commands: None
) -> None:
    lab_inventory(lab, omapi=True, verify_timeout=20)
    marker = hang_next_restart(lab, "primary", after=True)
    before = snapshot(lab)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(
            modify_body(lab, "hang-after", MaxUnackedUpdates=11), "request.modify"
        )
        timing("restart hung after restarting, verified", done.seconds)

        data = done.data
        assert (data["outcome"], data["error"]) == ("succeeded", None)
        assert data["verified"] is True
        (warning,) = data["warnings"]
        assert (warning["code"], warning["server"]) == ("restart_timed_out", "primary")
        message = warning["message"]
        assert message.startswith("restart on primary did not finish")
        assert f"did not finish within {COMMAND_TIMEOUT:g}s and was stopped" in message
        assert "read over OMAPI running the new config, so the change went ahead" in message
        assert not marker.exists() and hung_sleeps() == []
        after = snapshot(lab)
        for name in lab.servers:
            entry = done.server(name)
            assert (entry["restarted"], entry["state"]) == (True, "new")
            assert states_of(entry) == NORMAL_NORMAL
            assert after.files[name] != before.files[name]
            assert after.pids[name] not in (None, before.pids[name])
            assert running_values(lab, name)["maxUnackedUpdates"] == 11  # read by the lab
    finally:
        await reset(lab)
    record(
        "restart hangs past command_timeout",
        "after dhcpd restarted; OMAPI",
        "succeeded (restart_timed_out warning), verified",
    )


async def test_a_restart_that_hangs_before_restarting_is_not_confirmed_and_is_undone(
    lab: Lab, lab_worker: StartWorker, short_commands: None
) -> None:
    lab_inventory(lab, omapi=True, verify_timeout=SHORT)
    marker = hang_next_restart(lab, "primary", after=False)
    before = snapshot(lab)
    worker = await lab_worker(lab)
    try:
        done = await worker.request(
            modify_body(lab, "hang-before", MaxUnackedUpdates=11), "request.modify"
        )
        timing("restart hung before restarting, rolled back", done.seconds)

        data = done.data
        assert data["outcome"] == "rolled_back"
        error = data["error"]
        assert (error["code"], error["server"], error["phase"]) == (
            "ambiguous",
            "primary",
            "commit",
        )
        assert error["message"].startswith("restart on primary did not finish")
        assert "reading dhcpd over OMAPI to decide" in error["message"]
        assert "dhcpd was not seen running the new config either" in error["message"]
        assert error["detail"]["step"] == "restart"
        assert error["detail"]["verify"]["phase"] == "verify"  # what the reading showed
        assert not marker.exists() and hung_sleeps() == []
        # Only the primary was committed; it was restored and restarted on its old file,
        # and the old pair verified. The secondary was never touched.
        after = snapshot(lab)
        assert after.files == before.files
        assert after.pids["primary"] not in (None, before.pids["primary"])
        assert after.pids["secondary"] == before.pids["secondary"]
        primary, secondary = done.server("primary"), done.server("secondary")
        assert (primary["restarted"], primary["state"]) == (True, "old")
        assert (secondary["restarted"], secondary["state"]) == (False, "old")
        assert data["verified"] is True  # the old pair, after the rollback
        assert states_of(primary) == NORMAL_NORMAL
    finally:
        await reset(lab)
    record(
        "restart hangs past command_timeout",
        "before dhcpd restarted; OMAPI",
        "rolled_back (ambiguous), old pair verified",
    )
