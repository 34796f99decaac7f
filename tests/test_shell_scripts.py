"""shellcheck over every piece of shell in the project: the scripts of the repository, and the
ones the worker and the lab write or send to a server (the agent, the lab's restart script,
the stand-in hosts' commands). A shell mistake there shows only on a server, at run time.

scripts/setup installs shellcheck (Debian's package) where it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from worker.demo.hostfiles import write_scripts
from worker.lab import dhcpd
from worker.transport.agentscript import AGENT_SCRIPT

REPO = Path(__file__).resolve().parent.parent

#: Warnings the agent script takes on purpose (worker/transport/agentscript.py says why):
#: SC2209 ``dfw_t=jobs`` is the word, not a command; SC3045 ``read -t`` runs only in the
#: ``jobs`` mode, which only bash reaches; SC2034 ``read`` into a variable never read;
#: SC1007 ``CDPATH= cd`` empties CDPATH for that one ``cd``; SC2086 the listing's globs and
#: the noted pids are expanded unquoted so that they split.
AGENT_TAKES = "SC2209,SC3045,SC2034,SC1007,SC2086"


def shellcheck(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("shellcheck")
    if found is None:
        pytest.skip("shellcheck is not installed (scripts/setup installs it)")
    return subprocess.run(
        [found, "--format=gcc", *args], capture_output=True, text=True, check=False, timeout=60
    )


def repository_scripts() -> list[Path]:
    """Every tracked file that starts with a shell's #! line, and the sourced library."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    tracked = listed.stdout.split()
    scripts = []
    for name in tracked:
        path = REPO / name
        if path.suffix == ".py" or not path.is_file():
            continue
        with path.open("rb") as f:
            first = f.readline()
        if first.startswith(b"#!") and first.rstrip().endswith((b"sh", b"bash")):
            scripts.append(path)
    return scripts + sorted((REPO / "scripts" / "lib").glob("*.sh"))


def test_the_repositorys_scripts_pass_shellcheck() -> None:
    scripts = repository_scripts()
    assert REPO / "scripts" / "setup" in scripts and REPO / ".ci" / "run" in scripts
    result = shellcheck("-x", *(str(p.relative_to(REPO)) for p in scripts))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_agent_passes_shellcheck_as_posix_sh(tmp_path: Path) -> None:
    script = tmp_path / "agent.sh"
    script.write_text(AGENT_SCRIPT)
    result = shellcheck("--shell=sh", f"--exclude={AGENT_TAKES}", str(script))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scripts_written_for_servers_pass_shellcheck(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    try:
        write_scripts(tmp_path, tmp_path / "dhcpd.conf", hang_seconds=5)
    except RuntimeError as exc:  # no dhcpd on this machine
        pytest.skip(str(exc))
    restart = tmp_path / "lab-restart.sh"
    restart.write_text(
        dhcpd.restart_script(
            "/usr/sbin/dhcpd",
            tmp_path / "dhcpd.conf",
            tmp_path / "dhcpd.leases",
            tmp_path / "dhcpd.pid",
            tmp_path / "dhcpd.log",
        )
    )
    scripts = [*sorted((tmp_path / "bin").iterdir()), restart]
    assert len(scripts) == 4
    result = shellcheck(*(str(p) for p in scripts))
    assert result.returncode == 0, result.stdout + result.stderr
