"""DHCP clients on the lab's bridge: which server actually answers a DISCOVER.

A client is a third namespace whose ``eth0`` sits on the lab's bridge, with no address of
its own. ``dhclient`` runs there with ``-sf /bin/true``: it configures nothing (its default
script would rewrite this machine's /etc/resolv.conf) and only records the lease.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from worker.demo.processes import MARKER_ENV, alive
from worker.lab import netns
from worker.lab.netns import LabError


class LabClients:
    """The client half of :class:`~worker.lab.pair.Lab` (it provides these attributes)."""

    workdir: Path
    token: str
    clients: dict[str, str]

    @property
    def prefix(self) -> str:
        raise NotImplementedError

    @property
    def bridge(self) -> str:
        raise NotImplementedError

    def save_state(self) -> None:
        raise NotImplementedError

    def client_link(self, name: str) -> str:
        """The root end of the client's veth (``<prefix>c<n>``, in creation order)."""
        return f"{self.prefix}c{list(self.clients).index(name)}"

    def add_client(self, name: str = "client") -> str:
        """A namespace ``<prefix>-<name>`` on the bridge for a DHCP client; its name."""
        if name in self.clients:
            return self.clients[name]
        if not name.isalnum() or name in ("primary", "secondary", "probe"):
            raise LabError(f"client name {name!r}: letters and digits, not a server's name")
        netns.require_tools("dhclient")
        namespace = f"{self.prefix}-{name}"
        self.clients[name] = namespace  # before creating: teardown covers a partial one
        self.save_state()
        link = self.client_link(name)
        netns.run(["ip", "netns", "add", namespace])
        netns.run(
            ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace]
        )
        netns.run(["ip", "link", "set", link, "master", self.bridge, "up"])
        netns.run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        netns.run(["ip", "-n", namespace, "link", "set", "eth0", "up"])
        return namespace

    def dhcp_lease(self, client: str = "client", timeout: int = 10) -> dict[str, str]:
        """Ask for a lease from ``client`` (added if new): the lease's fields, as dhclient
        wrote them (``fixed-address``, ``dhcp-server-identifier``, ``dhcp-lease-time`` ...).

        Raises :class:`LabError` with dhclient's output when no server offers one within
        ``timeout`` seconds. The dhclient is ended afterwards (it would stay to renew).
        """
        namespace = self.add_client(client)
        directory = self.workdir / "clients" / client
        directory.mkdir(parents=True, exist_ok=True)
        leases, pid_file, conf = (directory / n for n in ("leases", "pid", "dhclient.conf"))
        leases.unlink(missing_ok=True)
        conf.write_text(f"timeout {int(timeout)};\nretry 60;\n")
        argv = ["dhclient", "-1", "-v", "-sf", "/bin/true", "-cf", str(conf)]
        argv += ["-lf", str(leases), "-pf", str(pid_file), "eth0"]
        try:
            result = subprocess.run(
                netns.netns_argv(namespace, argv),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout + 30,
                env={**os.environ, MARKER_ENV: self.token},
            )
        finally:
            _end(pid_file)
        found = parse_last_lease(leases.read_text() if leases.exists() else "")
        if result.returncode != 0 or not found:
            output = (result.stderr + result.stdout).strip()
            raise LabError(f"no DHCP lease for {client} within {timeout} s:\n{output}")
        return found


def parse_last_lease(text: str) -> dict[str, str]:
    """The fields of the last ``lease { ... }`` block of a dhclient lease file."""
    blocks = re.findall(r"lease \{(.*?)\n\}", text, flags=re.S)
    if not blocks:
        return {}
    fields: dict[str, str] = {}
    for line in blocks[-1].splitlines():
        words = line.strip().rstrip(";").split(None, 2)
        if len(words) >= 2 and words[0] == "option" and len(words) == 3:
            fields[words[1]] = words[2].strip('"')
        elif len(words) >= 2:
            fields[words[0]] = " ".join(words[1:]).strip('"')
    return fields


def _end(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
