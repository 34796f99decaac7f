"""Fixtures for the config engine's tests: the real ``dhcpd -t`` and the fixture cases."""

from __future__ import annotations

import os
import posixpath
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
    staged copy, so the fixtures stand in for the live /etc files (an include written
    relative to the main file's directory, dhcpd's working directory, is rewritten too);
    ``-t`` only parses, it touches no lease or pid file.
    """

    binary: str
    workdir: Path

    def check(self, files: Mapping[str, str], main: str, *, v6: bool = False) -> tuple[int, str]:
        """Exit status and combined output of dhcpd (``-6`` when ``v6``) on the staged ``main``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        staged = {
            path: str(self.workdir / f"{i}-{Path(path).name}") for i, path in enumerate(files)
        }
        base = posixpath.dirname(main)
        relative = {
            posixpath.relpath(path, base): target
            for path, target in staged.items()
            if base and path.startswith(base + "/")
        }
        for path, text in files.items():
            Path(staged[path]).write_text(
                rewrite_includes(text, relative | staged),
                encoding="utf-8",
                errors="surrogateescape",
            )
        result = subprocess.run(
            [self.binary, "-t", *(["-6"] if v6 else []), "-cf", staged[main]],
            capture_output=True,
            encoding="utf-8",
            errors="replace",  # dhcpd echoes source lines, and may cut one inside a character
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
    """Each fixture config that has a failover peer and that dhcpd accepts (with its includes)."""
    case: CorpusCase = request.param
    return case
