"""Which labs exist on this machine, and how one is torn down -- from any process.

Each lab registers itself in ``/run/dhcp-failover-lab/<id>.json`` (tmpfs, like the
namespaces themselves) before it creates anything, and keeps a state file in its work dir.
So ``python -m worker.lab down`` can remove a lab another process left running, and
``down --stale`` the remains of one whose process was killed outright.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.demo.processes import alive, tagged_pids, terminate
from worker.lab import netns
from worker.lab.netns import LabError

STATE_FILE = "lab.json"


@dataclass(frozen=True)
class Entry:
    """One registered lab."""

    lab_id: str
    workdir: Path
    subnet: str
    owner_pid: int
    detached: bool

    @property
    def owner_alive(self) -> bool:
        return alive(self.owner_pid)

    @property
    def stale(self) -> bool:
        """Its process is gone without leaving it running on purpose."""
        return not self.detached and not self.owner_alive


def register(
    lab_id: str, workdir: Path, subnet: ipaddress.IPv4Network, *, detached: bool = False
) -> None:
    netns.RUN_DIR.mkdir(parents=True, exist_ok=True)
    data = {
        "lab_id": lab_id,
        "workdir": str(workdir),
        "subnet": str(subnet),
        "owner_pid": os.getpid(),
        "detached": detached,
    }
    _write_json(netns.RUN_DIR / f"{lab_id}.json", data)


def unregister(lab_id: str) -> None:
    (netns.RUN_DIR / f"{lab_id}.json").unlink(missing_ok=True)


def entries() -> list[Entry]:
    out: list[Entry] = []
    for path in sorted(netns.RUN_DIR.glob("*.json")) if netns.RUN_DIR.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(path.read_text())
            out.append(
                Entry(
                    lab_id=str(data["lab_id"]),
                    workdir=Path(data["workdir"]),
                    subnet=str(data["subnet"]),
                    owner_pid=int(data["owner_pid"]),
                    detached=bool(data["detached"]),
                )
            )
    return out


def names_of(lab_id: str) -> tuple[list[str], list[str]]:
    """The namespaces and root links on this machine that carry ``lab_id``'s prefix."""
    prefix = f"{netns.NAME_PREFIX}{lab_id}"
    return (
        [n for n in netns.namespaces() if n.startswith(prefix)],
        [n for n in netns.links() if n.startswith(prefix)],
    )


def unregistered_names() -> tuple[list[str], list[str]]:
    """Lab-prefixed namespaces and links no registered lab owns (a killed lab's remains)."""
    owned = tuple(f"{netns.NAME_PREFIX}{e.lab_id}" for e in entries())

    def orphan(name: str) -> bool:
        return name.startswith(netns.NAME_PREFIX) and not name.startswith(owned)

    return (
        [n for n in netns.namespaces() if orphan(n)],
        [n for n in netns.links() if orphan(n)],
    )


def teardown(
    token: str,
    namespaces: Iterable[str],
    links: Iterable[str],
    pids: set[int],
    timeout: float = 5.0,
) -> None:
    """End the processes, then delete the namespaces and links; raise if any is left.

    The processes are ``pids``, every process tagged with ``token`` (whatever spawned it),
    and every process still inside one of ``namespaces``: nothing else.
    """
    namespaces, links = list(namespaces), list(links)
    inodes = {i for i in (netns.namespace_inode(n) for n in namespaces) if i is not None}

    def inside() -> set[int]:
        return {p for i in inodes for p in netns.pids_in_namespace(i) if alive(p)}

    targets = {p for p in pids if alive(p)} | inside()
    for pid in targets:  # each was started in a session of its own: end its group too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
    terminate(token, targets, timeout)
    deadline = time.monotonic() + timeout
    while (left := inside() | tagged_pids(token)) and (time.monotonic() < deadline):
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    problems: list[str] = []
    if left:
        problems.append(f"processes still running: {sorted(left)}")
    for name in namespaces:
        try:
            netns.delete_namespace(name)
        except LabError as e:
            problems.append(str(e))
    for name in links:
        with contextlib.suppress(LabError):  # a veth end goes with its namespace, any moment
            netns.delete_link(name)
    deadline = time.monotonic() + timeout
    while (remaining := [n for n in netns.links() if n in links]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if remaining:
        problems.append(f"links still present: {remaining}")
    if problems:
        raise LabError("lab teardown incomplete: " + "; ".join(problems))


def read_state(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab state file at {path}") from None
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read lab state {path}: {e}") from None
    return data


def write_state(path: Path, data: dict[str, Any]) -> None:
    _write_json(path, data)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.chmod(0o600)
    os.replace(tmp, path)
