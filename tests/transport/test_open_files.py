"""A fleet raises the soft limit on open files to one per server (and a margin) by itself."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.transport.test_inventory import GOOD
from worker.transport import SshFleet, load_inventory
from worker.transport.ssh import FD_MARGIN


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    """The soft limit at 64 while the test runs (the hard one unchanged), then as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_fleet_raises_the_soft_limit_to_a_socket_per_server(
    tmp_path: Path, low_soft_limit: int
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id_ed25519").write_text("")
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "inventory.toml").write_text(GOOD)

    SshFleet(load_inventory(tmp_path / "inventory.toml"))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert (soft, hard) == (min(2 + FD_MARGIN, low_soft_limit), low_soft_limit)


def test_a_hard_limit_too_low_for_the_fleet_is_raised_to_and_logged_as_an_error() -> None:
    """In a process of its own: the hard limit, once lowered, stays lowered."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 300))

    script = (
        "import resource\n"
        "from worker.logging import configure_logging\n"
        "from worker.transport.ssh import make_room_for\n"
        "configure_logging(log_format='json', level='error')\n"
        "make_room_for(1000)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=limits,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.strip() == "(300, 300)"
    assert '"open_files.limit_too_low"' in done.stderr and '"needed": 1256' in done.stderr
