"""Where a lab keeps things: each server's files, the inventory, SIGTERM while it runs."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.demo.processes import alive
from worker.lab.dhcpd import OMAPI_PORT, LabOmapiKey, PairSettings

if TYPE_CHECKING:
    from worker.lab.pair import Lab


@dataclass
class LabServer:
    """One peer: its namespace, address and the files of its dhcpd and sshd."""

    name: str
    namespace: str
    address: str
    root_link: str
    directory: Path

    @property
    def config_path(self) -> Path:
        return self.directory / "dhcpd.conf"

    @property
    def leases_path(self) -> Path:
        return self.directory / "dhcpd.leases"

    @property
    def pid_path(self) -> Path:
        return self.directory / "dhcpd.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / "dhcpd.log"

    @property
    def restart_script(self) -> Path:
        return self.directory / "restart.sh"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def sshd_log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def sshd_pid(self) -> int | None:
        """The running sshd's pid (from its pid file), or None when none runs."""
        return self._own_pid(self.directory / "sshd.pid", "sshd")

    @property
    def dhcpd_pid(self) -> int | None:
        """The running dhcpd's pid (from its pid file), or None when none runs."""
        return self._own_pid(self.pid_path, "dhcpd")

    def _own_pid(self, path: Path, comm: str) -> int | None:
        """The pid in ``path`` if it is a live ``comm`` inside this server's namespace: a pid
        file outlives its process, and its number may since belong to anything."""
        try:
            pid = int(path.read_text().strip())
            inode = os.stat(f"/run/netns/{self.namespace}").st_ino
            if (
                Path(f"/proc/{pid}/comm").read_text().strip() == comm
                and os.stat(f"/proc/{pid}/ns/net").st_ino == inode
                and alive(pid)
            ):
                return pid
        except (OSError, ValueError):
            pass
        return None


def inventory_text(
    lab_id: str,
    subnet: ipaddress.IPv4Network,
    servers: Mapping[str, LabServer],
    client_key: Path,
    known_hosts: Path,
    *,
    omapi: bool,
    omapi_key: LabOmapiKey | None,
    omapi_secret_file: Path | None,
) -> str:
    """inventory.toml (docs/contract.md §4) for the lab's servers.

    ``omapi`` adds ``[servers.X.omapi]``: ``port`` plus ``key_name``/``key_secret_file``
    when dhcpd has a key, else ``none = true``.
    """
    parts = [f"# Written by worker.lab for lab {lab_id} ({subnet})\n"]
    for s in servers.values():
        fields: dict[str, Any] = {
            "host": s.address,
            "port": 22,
            "username": "root",
            "client_keys": [str(client_key)],
            "known_hosts": str(known_hosts),
            "config_path": str(s.config_path),
            "validate_command": "/usr/sbin/dhcpd -t -cf {path}",
            "restart_command": shlex.quote(str(s.restart_script)),
        }
        parts.append(f"\n[servers.{json.dumps(s.name)}]\n")
        parts.extend(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
        if omapi:
            omapi_fields: dict[str, Any] = {"port": OMAPI_PORT}
            if omapi_key is not None and omapi_secret_file is not None:
                omapi_fields["key_name"] = omapi_key.name
                omapi_fields["key_secret_file"] = str(omapi_secret_file)
            else:
                omapi_fields["none"] = True
            parts.append(f"\n[servers.{json.dumps(s.name)}.omapi]\n")
            parts.extend(f"{k} = {json.dumps(v)}\n" for k, v in omapi_fields.items())
    return "".join(parts)


# -- the state file (``python -m worker.lab down`` from another process) ----------------------


def state_of(lab: Lab) -> dict[str, Any]:
    """What another process needs to find, watch and tear down ``lab``."""
    return {
        "lab_id": lab.lab_id,
        "subnet": str(lab.subnet),
        "relationship": lab.relationship,
        "token": lab.token,
        "omapi_key": [lab.omapi_key.name, lab.omapi_key.secret] if lab.omapi_key else None,
        "omapi_inventory": lab.omapi_inventory,
        "peer": asdict(lab.peer),
        "servers": {
            n: {"namespace": s.namespace, "address": s.address, "root_link": s.root_link}
            for n, s in lab.servers.items()
        },
        "clients": lab.clients,
    }


def fields_from_state(data: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """``Lab(**fields)`` arguments back from :func:`state_of`'s data."""
    key = data["omapi_key"]
    return {
        "lab_id": data["lab_id"],
        "workdir": workdir,
        "subnet": ipaddress.IPv4Network(data["subnet"]),
        "relationship": data["relationship"],
        "peer": PairSettings(**data["peer"]),
        "token": data["token"],
        "servers": {
            n: LabServer(name=n, directory=workdir / n, **s) for n, s in data["servers"].items()
        },
        "omapi_key": LabOmapiKey(*key) if key else None,
        "omapi_inventory": data["omapi_inventory"],
        "clients": dict(data.get("clients", {})),
    }


# -- SIGTERM ends the lab like Ctrl-C does -------------------------------------------------------

_guarded: set[str] = set()
_previous: Any = None


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def guard_sigterm(lab_id: str) -> None:
    """Turn SIGTERM into KeyboardInterrupt while a lab runs, so ``with``/finally tear it down.

    Only when SIGTERM still has its default action, and only in the main thread: a handler
    someone else installed is theirs.
    """
    global _previous
    if threading.current_thread() is not threading.main_thread():
        return
    if not _guarded and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        _previous = signal.signal(signal.SIGTERM, _on_sigterm)
    if _previous is not None:
        _guarded.add(lab_id)


def release_sigterm(lab_id: str) -> None:
    global _previous
    if lab_id not in _guarded or threading.current_thread() is not threading.main_thread():
        return
    _guarded.discard(lab_id)
    if not _guarded and _previous is not None:
        signal.signal(signal.SIGTERM, _previous)
        _previous = None
