"""Fixtures for the config engine's tests: the real ``dhcpd -t`` and the corpus cases."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dhcpconf.corpus import CASES, CorpusCase
from worker.dhcpconf import rewrite_includes


@dataclass
class Dhcpd:
    """Runs ``dhcpd -t -cf`` on copies of a file set staged in a temporary directory.

    Each file goes to its own name in ``workdir`` and every include is rewritten to the
    staged copy, so stubs stand in for the live /etc files; ``-t`` only parses, it touches no
    lease or pid file.
    """

    binary: str
    workdir: Path

    def check(self, files: Mapping[str, str], main: str) -> tuple[int, str]:
        """Exit status and combined output of dhcpd on the staged ``main``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        staged = {
            path: str(self.workdir / f"{i}-{Path(path).name}") for i, path in enumerate(files)
        }
        for path, text in files.items():
            Path(staged[path]).write_text(
                rewrite_includes(text, staged), encoding="utf-8", errors="surrogateescape"
            )
        result = subprocess.run(
            [self.binary, "-t", "-cf", staged[main]],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            timeout=60,
        )
        return result.returncode, result.stdout + result.stderr

    def staged_names(self, files: Mapping[str, str]) -> dict[str, str]:
        """Staged path -> original path, for parse_dhcpd_output's path_map."""
        return {str(self.workdir / f"{i}-{Path(p).name}"): p for i, p in enumerate(files)}


def _binary() -> str | None:
    return shutil.which("dhcpd") or next(
        (p for p in ("/usr/sbin/dhcpd", "/sbin/dhcpd") if os.access(p, os.X_OK)), None
    )


@pytest.fixture(scope="session")
def dhcpd_binary() -> str:
    """The dhcpd binary; under CI=true its absence fails the test instead of skipping it."""
    binary = _binary()
    if binary is None:
        message = "dhcpd (isc-dhcp-server) is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return binary


@pytest.fixture
def dhcpd(dhcpd_binary: str, tmp_path: Path) -> Dhcpd:
    return Dhcpd(dhcpd_binary, tmp_path / "dhcpd")


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> CorpusCase:
    """Each corpus config that has a failover peer and that dhcpd accepts (with stubs)."""
    case: CorpusCase = request.param
    return case
