"""A real ISC dhcpd failover pair on this machine: :class:`Lab`.

Two network namespaces (primary, secondary), each with an ``eth0`` on a bridge in the root
namespace, one foreground dhcpd and one sshd in each. The inventory it writes points the
worker at those sshds, at the dhcpd.conf each dhcpd runs, and at a restart script that
restarts exactly that dhcpd. Teardown ends every process it started (and anything left in
its namespaces), then deletes its namespaces, links and bridge -- also when the body raised,
on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.demo.processes import MARKER_ENV, alive, ensure_privsep_dir, keygen
from worker.lab import dhcpd, layout, netns, registry, sshd
from worker.lab.client import LabClients
from worker.lab.dhcpd import LabOmapiKey, PairSettings
from worker.lab.layout import LabServer
from worker.lab.netns import LabError, LabUnavailable
from worker.lab.observe import PairObserver

ROLES = ("primary", "secondary")


@dataclass
class Lab(PairObserver, LabClients):
    """A running pair; build it with :meth:`start`, end it with :meth:`stop` (or ``with``)."""

    lab_id: str
    workdir: Path
    subnet: ipaddress.IPv4Network
    relationship: str
    peer: PairSettings
    token: str
    servers: dict[str, LabServer]
    omapi_key: LabOmapiKey | None = None
    omapi_inventory: bool = False
    clients: dict[str, str] = field(default_factory=dict)
    """DHCP client namespaces by name (:meth:`add_client`)."""
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # -- names and files -------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"{netns.NAME_PREFIX}{self.lab_id}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def bridge_address(self) -> str:
        return str(self.subnet[254])

    @property
    def namespaces(self) -> list[str]:
        return [s.namespace for s in self.servers.values()] + list(self.clients.values())

    @property
    def links(self) -> list[str]:
        """Root-namespace links this lab owns: the bridge and each veth's root end."""
        servers = [s.root_link for s in self.servers.values()]
        return [self.bridge, *servers, *(self.client_link(c) for c in self.clients)]

    @property
    def inventory_path(self) -> Path:
        return self.workdir / "inventory.toml"

    @property
    def client_key(self) -> Path:
        return self.workdir / "client" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def omapi_secret_file(self) -> Path | None:
        """The file holding the OMAPI key's base64 secret (one line), if dhcpd has a key."""
        return self.workdir / "omapi.secret" if self.omapi_key else None

    @property
    def state_file(self) -> Path:
        return self.workdir / registry.STATE_FILE

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path | str,
        *,
        subnet: str | ipaddress.IPv4Network | None = None,
        relationship: str = "dhcp-failover",
        peer: PairSettings | None = None,
        omapi_key: bool = False,
        omapi_inventory: bool = False,
        startup_timeout: float = 10.0,
    ) -> Lab:
        """Build the namespaces, start sshd and dhcpd in each, write the inventory.

        Returns once both dhcpds run (not yet normal: see :meth:`wait_normal`). ``subnet``
        None picks the first free /24 of 10.199.0-9.0. Raises :class:`LabUnavailable` where
        namespaces cannot be made, :class:`LabError` for any other failure, after undoing
        whatever it had built.
        """
        tools = netns.require_tools("ip", "dhcpd", "sshd", "ssh-keygen")
        lab_id = netns.new_lab_id()
        netns.probe(lab_id)
        base = Path(workdir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        with netns.subnet_lock():
            if subnet is None:
                network = netns.pick_subnet()
            else:
                network = ipaddress.IPv4Network(subnet)
                netns.check_subnet(network)
            prefix = f"{netns.NAME_PREFIX}{lab_id}"
            servers = {
                role: LabServer(
                    name=role,
                    namespace=f"{prefix}-{role}",
                    address=str(network[i + 1]),
                    root_link=f"{prefix}{role[0]}",
                    directory=base / role,
                )
                for i, role in enumerate(ROLES)
            }
            self = cls(
                lab_id=lab_id,
                workdir=base,
                subnet=network,
                relationship=relationship,
                peer=peer or PairSettings(),
                token=uuid.uuid4().hex,
                servers=servers,
                omapi_key=LabOmapiKey.generate() if omapi_key else None,
                omapi_inventory=omapi_inventory,
            )
            registry.register(self.lab_id, base, network)
            layout.guard_sigterm(self.lab_id)
            try:
                netns.add_bridge(self.bridge, ipaddress.IPv4Interface(f"{self.bridge_address}/24"))
            except BaseException:
                self.stop()
                raise
        try:
            self._build(tools, startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self, tools: Mapping[str, str], startup_timeout: float) -> None:
        ensure_privsep_dir()
        self.client_key.parent.mkdir(exist_ok=True)
        keygen(self.client_key, f"worker@lab-{self.lab_id}")
        if self.omapi_key is not None and self.omapi_secret_file is not None:
            self.omapi_secret_file.write_text(self.omapi_key.secret + "\n")
            self.omapi_secret_file.chmod(0o600)
        for server in self.servers.values():
            netns.add_namespace(
                server.namespace,
                server.root_link,
                self.bridge,
                ipaddress.IPv4Interface(f"{server.address}/24"),
            )
            self._write_files(server, tools["dhcpd"])
        for server in self.servers.values():
            config = sshd.write_config(
                server.directory,
                ipaddress.IPv4Address(server.address),
                server.host_key,
                server.directory / "authorized_keys",
                self.token,
            )
            self._processes.append(
                sshd.start(
                    tools["sshd"],
                    server.namespace,
                    config,
                    server.sshd_log,
                    server.address,
                    self.token,
                    startup_timeout,
                )
            )
        self.known_hosts.write_text(
            "".join(sshd.known_hosts_line(s.address, s.host_key) for s in self.servers.values())
        )
        self.write_inventory()
        for name in self.servers:
            self.restart_dhcpd(name)
        self.save_state()

    def save_state(self) -> None:
        """(Re)write the state file ``down`` and :meth:`attach` read."""
        registry.write_state(self.state_file, self.to_state())

    def _write_files(self, server: LabServer, dhcpd_binary: str) -> None:
        server.directory.mkdir(parents=True, exist_ok=True)
        server.config_path.write_text(self.render_config(server.name))
        server.leases_path.touch()
        server.restart_script.write_text(
            dhcpd.restart_script(
                dhcpd_binary,
                server.config_path,
                server.leases_path,
                server.pid_path,
                server.log_path,
            )
        )
        server.restart_script.chmod(0o755)
        keygen(server.host_key, f"host key of lab {server.name}")
        sshd.copy_authorized_key(self.client_key, server.directory / "authorized_keys")

    def render_config(self, name: str, peer: PairSettings | None = None) -> str:
        """The dhcpd.conf the lab starts ``name`` with (or with other ``peer`` settings)."""
        server = self.servers[name]
        other = next(s for s in self.servers.values() if s.name != name)
        return dhcpd.render_config(
            name,
            self.subnet,
            ipaddress.IPv4Address(server.address),
            ipaddress.IPv4Address(other.address),
            self.relationship,
            peer or self.peer,
            self.omapi_key,
        )

    def write_inventory(self, *, omapi: bool | None = None) -> Path:
        """(Re)write inventory.toml; ``omapi`` True/False adds/drops the omapi tables."""
        if omapi is not None:
            self.omapi_inventory = omapi
        self.inventory_path.write_text(
            layout.inventory_text(
                self.lab_id,
                self.subnet,
                self.servers,
                self.client_key,
                self.known_hosts,
                omapi=self.omapi_inventory,
                omapi_key=self.omapi_key,
                omapi_secret_file=self.omapi_secret_file,
            )
        )
        return self.inventory_path

    # -- processes in the namespaces -----------------------------------------------------------

    def namespace_exec(
        self,
        server: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``server``'s namespace (tagged, so teardown finds leftovers)."""
        result = subprocess.run(
            netns.netns_argv(self.servers[server].namespace, argv),
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env={**os.environ, MARKER_ENV: self.token},
        )
        if check and result.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} in {server} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def restart_dhcpd(self, server: str) -> int:
        """Run the inventory's restart script in ``server``'s namespace; the new dhcpd's pid."""
        script = self.servers[server].restart_script
        result = self.namespace_exec(server, ["/bin/sh", str(script)], check=False)
        pid = self.servers[server].dhcpd_pid
        if result.returncode != 0 or pid is None:
            output = (result.stderr + result.stdout).strip()
            raise LabError(f"restarting dhcpd in {server} failed ({result.returncode}): {output}")
        return pid

    def kill_dhcpd(
        self, server: str, sig: int = signal.SIGKILL, timeout: float = 5.0
    ) -> int | None:
        """Signal ``server``'s dhcpd and wait until it is gone; its pid (None: none ran)."""
        pid = self.servers[server].dhcpd_pid
        if pid is None:
            return None
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while alive(pid):
            if time.monotonic() > deadline:
                raise LabError(f"dhcpd {pid} in {server} still runs {timeout} s after {sig}")
            time.sleep(0.02)
        return pid

    def reset(self, timeout: float = 30.0) -> None:
        """Back to the start between tests: the lab's own configs, no firewall rules, both
        dhcpds running (restarted where the config changed or none ran), normal/normal."""
        for name, server in self.servers.items():
            with contextlib.suppress(LabUnavailable):  # without nft no rule can exist
                self.unblock(name)
            original = self.render_config(name)
            changed = server.config_path.read_text() != original
            if changed:
                server.config_path.write_text(original)
            if changed or server.dhcpd_pid is None:
                self.restart_dhcpd(name)
        self.wait_normal(timeout)

    # -- firewall ----------------------------------------------------------------------------

    def block_port(self, server: str, port: int) -> None:
        """Drop all TCP to and from ``port`` in ``server``'s namespace (nftables)."""
        netns.block_port(self.servers[server].namespace, port)

    def unblock(self, server: str, port: int | None = None) -> None:
        """Undo :meth:`block_port` for ``port``, or for every port when None."""
        netns.unblock_port(self.servers[server].namespace, port)

    def blocked_ports(self, server: str) -> set[int]:
        return netns.blocked_ports(self.servers[server].namespace)

    # -- teardown ------------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """End every process of this lab, delete its namespaces, links and bridge. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            registry.teardown(
                self.token,
                self.namespaces,
                self.links,
                {p.pid for p in self._processes}
                | {pid for s in self.servers.values() for pid in (s.dhcpd_pid, s.sshd_pid) if pid},
                timeout,
            )
            for process in self._processes:
                process.wait(timeout)
            registry.unregister(self.lab_id)
            self.state_file.unlink(missing_ok=True)
        finally:
            layout.release_sigterm(self.lab_id)

    def detach(self) -> None:
        """Leave the lab running past this process (``python -m worker.lab up``)."""
        registry.register(self.lab_id, self.workdir, self.subnet, detached=True)
        layout.release_sigterm(self.lab_id)
        self._stopped = True

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state file ----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return layout.state_of(self)

    @classmethod
    def attach(cls, workdir: Path | str) -> Lab:
        """The lab whose state file is in ``workdir`` (left running by ``up``)."""
        base = Path(workdir).resolve()
        return cls(
            **layout.fields_from_state(registry.read_state(base / registry.STATE_FILE), base)
        )
