"""The processes of the local stand-in hosts and of the lab: sshd started, tagged and ended.

Every process started here carries a token in its environment (``MARKER_ENV``), so that
stopping ends exactly what one instance started, its children included, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

MARKER_ENV = "DHCP_FAILOVER_LOCALHOSTS"
"""Environment variable carrying the instance token into every process sshd spawns."""


class LocalHostsError(RuntimeError):
    """sshd (or ssh-keygen) could not be set up or started; the message carries its output."""


def sshd_options(token: str, home: Path | None = None) -> list[str]:
    """The ``sshd_config`` lines the stand-in hosts and the lab share: key login only, no
    DNS, the SFTP server, keepalives a real server should have too (so that a vanished
    worker's lock is released), and every session tagged with ``token`` (and ``HOME``)."""
    sftp = "/usr/lib/openssh/sftp-server"
    return [
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel INFO",
        "ClientAliveInterval 5",
        "ClientAliveCountMax 3",
        f"SetEnv {MARKER_ENV}={token}" + (f" HOME={home}" if home else ""),
        f"Subsystem sftp {sftp if os.path.exists(sftp) else 'internal-sftp'}",
    ]


def spawn_sshd(
    sshd: str, config: Path, log: Path, token: str, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """``sshd -D -e -f CONFIG`` in a session of its own, its output appended to ``log``, tagged
    with ``token`` in its environment so that exactly what was started here is stopped.
    ``prefix`` runs it through another command (``ip netns exec NS``), which execs it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefix, sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**os.environ, MARKER_ENV: token},
            start_new_session=True,
        )


def sshd_binary() -> str:
    """sshd refuses to re-exec from a relative path, so resolve it absolutely."""
    found = shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        raise LocalHostsError("sshd not found (install openssh-server)")
    return str(Path(found).resolve())


def ensure_privsep_dir() -> None:
    """sshd insists on its privilege-separation directory even in the foreground."""
    with contextlib.suppress(PermissionError):
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def keygen(path: Path, comment: str) -> None:
    """An ed25519 key without a passphrase at ``path``, unless one is there already."""
    if path.exists():
        return
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        raise LocalHostsError(f"ssh-keygen failed for {path}: {result.stderr.strip()}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (it may be taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_banner(
    port: int, process: subprocess.Popen[bytes], timeout: float, host: str = "127.0.0.1"
) -> bool:
    """True once sshd answers with its SSH banner; False if it exited or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def tagged_pids(token: str) -> set[int]:
    """Every live process whose environment carries this instance's token."""
    needle = f"{MARKER_ENV}={token}".encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except OSError:
            continue
    found.discard(os.getpid())
    return found


def alive(pid: int) -> bool:
    """Running and not a zombie (a container's PID 1 may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def signal_all(pids: set[int], sig: signal.Signals) -> None:
    """Signal each pid; one that is gone or not ours is skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate(token: str, masters: set[int], timeout: float) -> None:
    """TERM the processes tagged with ``token`` and ``masters``; KILL the rest at ``timeout``."""
    targets = tagged_pids(token) | {p for p in masters if alive(p)}
    signal_all(targets, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        targets = {p for p in targets | tagged_pids(token) if alive(p)}
        if not targets:
            return
        time.sleep(0.05)
    signal_all(targets | tagged_pids(token), signal.SIGKILL)
