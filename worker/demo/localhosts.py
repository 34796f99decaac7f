"""Real OpenSSH servers on 127.0.0.1 standing in for DHCP hosts.

Each "host" is a directory with its own host key, ``sshd_config``, ``authorized_keys``, a config
dir holding ``dhcpd.conf``, and three small scripts the inventory points at:

* ``bin/validate.sh PATH`` -- ``dhcpd -t -cf PATH`` (the real binary); a ``fail-validate``
  marker file forces a dhcpd-style failure.
* ``bin/restart.sh`` -- stands in for ``systemctl restart isc-dhcp-server``: checks the live
  config with ``dhcpd -t`` like a real restart would, appends ``<status> <sha256 of live config>``
  to ``restart.log`` (status ``ok``, ``failed`` or ``hung``), fails when ``fail-restart`` exists
  and sleeps (a hung restart) when ``hang-restart`` exists.
* ``bin/verify.sh`` -- stands in for ``systemctl is-active``; fails when ``fail-verify`` exists.

``sshd -D -e`` runs in the foreground with its log in ``sshd.log``. Every process it spawns
carries a per-instance token in its environment (``SetEnv``), so :meth:`LocalHosts.stop` ends
exactly the processes this instance started -- including a hung restart script whose SSH
session is long gone -- and nothing else.

Run ``python -m worker.demo.localhosts [DIR]`` to start the sample pair for a manual demo.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from worker.demo.hostfiles import write_scripts, write_sshd_config
from worker.demo.processes import (
    LocalHostsError,
    ensure_privsep_dir,
    free_port,
    keygen,
    spawn_sshd,
    sshd_binary,
    terminate,
    wait_for_banner,
)

Marker = Literal["fail-validate", "fail-restart", "hang-restart", "fail-verify"]


@dataclass(frozen=True)
class Restart:
    """One run of ``restart.sh``: its status and the sha256 of the live config at that moment."""

    status: Literal["ok", "failed", "hung"]
    sha256: str


@dataclass
class LocalHost:
    """One stand-in DHCP server: an sshd on ``listen``:``port`` and its files under ``root``."""

    name: str
    root: Path
    port: int
    addresses: tuple[str, ...]
    host_key: Path
    config_path: Path
    restart_log: Path
    sshd_log: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    #: The loopback address its sshd listens on (one sshd may serve several: bench/rig.py).
    listen: str = "127.0.0.1"

    @property
    def config_dir(self) -> Path:
        return self.config_path.parent

    @property
    def lock_path(self) -> Path:
        """The default lock file the inventory implies: ``<config dir>/.dhcp-failover.lock``."""
        return self.config_dir / ".dhcp-failover.lock"

    @property
    def host_key_line(self) -> str:
        """``type base64`` of the host's public key, as a known_hosts entry carries it."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    def marker_path(self, marker: Marker) -> Path:
        return self.root / marker

    def set_marker(self, marker: Marker, on: bool = True) -> None:
        """Make the next validate / restart / verify fail (or hang), or stop doing so."""
        path = self.marker_path(marker)
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def restarts(self) -> list[Restart]:
        """Every restart attempt so far, oldest first."""
        if not self.restart_log.exists():
            return []
        out: list[Restart] = []
        for line in self.restart_log.read_text().splitlines():
            status, sha = line.split()
            assert status in ("ok", "failed", "hung"), line
            out.append(Restart(status, sha))  # type: ignore[arg-type]
        return out

    def accepted_connections(self) -> int:
        """How many SSH logins sshd accepted: proves a pooled connection was reused."""
        if not self.sshd_log.exists():
            return 0
        return self.sshd_log.read_text(errors="replace").count("Accepted publickey")

    def config_bytes(self) -> bytes:
        return self.config_path.read_bytes()

    def config_sha256(self) -> str:
        return hashlib.sha256(self.config_path.read_bytes()).hexdigest()


@dataclass
class LocalHosts:
    """A set of running stand-in servers plus the inventory that names them.

    Start with :meth:`start` (a context manager too); :meth:`stop` is idempotent.
    """

    base_dir: Path
    inventory_path: Path
    client_key: Path
    known_hosts: Path
    hosts: dict[str, LocalHost]
    token: str
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def empty(cls, base_dir: Path | str, key_comment: str) -> LocalHosts:
        """No server yet: the directory, the worker's client key (``key_comment``) and a
        fresh token; what :meth:`start` and the benchmarks' rig build their servers in."""
        base = Path(base_dir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        ensure_privsep_dir()
        client_key = base / "client" / "id_ed25519"
        client_key.parent.mkdir(exist_ok=True)
        keygen(client_key, key_comment)
        return cls(
            base_dir=base,
            inventory_path=base / "inventory.toml",
            client_key=client_key,
            known_hosts=base / "known_hosts",
            hosts={},
            token=uuid.uuid4().hex,
        )

    @classmethod
    def start(
        cls,
        base_dir: Path | str,
        configs: Mapping[str, str | bytes],
        *,
        addresses: Mapping[str, Sequence[str]] | None = None,
        startup_timeout: float = 10.0,
        hang_seconds: int = 300,
        plain_login: bool = False,
    ) -> LocalHosts:
        """Start one sshd per ``configs`` entry (server name -> dhcpd.conf text).

        ``addresses`` lists, per server, the extra addresses it is known by in failover
        ``peer address`` statements (written to the inventory). ``hang_seconds`` bounds a
        "hung" restart so a forgotten marker cannot leave a process behind forever.
        ``plain_login`` gives every session its own empty ``HOME``, so the login shell reads
        no start-up files of the account: a typical service account on a DHCP host, where an
        exec costs a few milliseconds (root's here runs pyenv's init, 100 ms and more).
        """
        sshd = sshd_binary()
        self = cls.empty(base_dir, "dhcp-failover-worker@localhosts")
        base = self.base_dir
        try:
            for name, conf in configs.items():
                extra = tuple(addresses.get(name, ())) if addresses else ()
                self.hosts[name] = _start_host(
                    sshd,
                    base,
                    name,
                    conf,
                    extra,
                    self.client_key,
                    self.token,
                    startup_timeout,
                    hang_seconds,
                    plain_login,
                )
            self.write_known_hosts()
            self.write_inventory()
        except BaseException:
            self.stop()
            raise
        return self

    def write_known_hosts(self) -> None:
        """(Re)write known_hosts with every host's real key, as ``[ADDRESS]:PORT type key``."""
        lines = [f"[{h.listen}]:{h.port} {h.host_key_line}\n" for h in self.hosts.values()]
        self.known_hosts.write_text("".join(lines))

    def write_inventory(self) -> None:
        """Write inventory.toml; key and known_hosts paths are relative to it on purpose."""
        user = getpass.getuser()
        parts: list[str] = ["# Written by worker.demo.localhosts: stand-in servers on 127.0.0.1\n"]
        for h in self.hosts.values():
            bin_dir = h.root / "bin"
            fields = {
                "host": h.listen,
                "port": h.port,
                "username": user,
                "client_keys": [str(self.client_key.relative_to(self.base_dir))],
                "known_hosts": str(self.known_hosts.relative_to(self.base_dir)),
                "config_path": str(h.config_path),
                "validate_command": f"{shlex.quote(str(bin_dir / 'validate.sh'))} {{path}}",
                "restart_command": shlex.quote(str(bin_dir / "restart.sh")),
                "verify_command": shlex.quote(str(bin_dir / "verify.sh")),
                "addresses": list(h.addresses),
            }
            parts.append(f"\n[servers.{json.dumps(h.name)}]\n")
            parts.extend(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
        self.inventory_path.write_text("".join(parts))

    def stop(self, timeout: float = 5.0) -> None:
        """End exactly the processes this instance started: TERM, wait, then KILL."""
        if self._stopped:
            return
        self._stopped = True
        masters = [h.process for h in self.hosts.values()]
        for p in masters:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        terminate(self.token, {p.pid for p in masters}, timeout)
        for p in masters:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)

    def __enter__(self) -> LocalHosts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- setting up one host -----------------------------------------------------------------------


def _start_host(
    sshd: str,
    base: Path,
    name: str,
    conf: str | bytes,
    addresses: tuple[str, ...],
    client_key: Path,
    token: str,
    startup_timeout: float,
    hang_seconds: int,
    plain_login: bool = False,
) -> LocalHost:
    if "/" in name or name in ("", ".", ".."):
        raise LocalHostsError(f"server name {name!r} cannot be used as a directory name")
    root = base / "hosts" / name
    (root / "bin").mkdir(parents=True, exist_ok=True)
    config_path = root / "etc" / "dhcp" / "dhcpd.conf"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_bytes(conf.encode() if isinstance(conf, str) else conf)
    config_path.chmod(0o644)
    host_key = root / "ssh_host_ed25519_key"
    keygen(host_key, f"host key of {name}")
    shutil.copyfile(client_key.with_suffix(".pub"), root / "authorized_keys")
    write_scripts(root, config_path, hang_seconds)

    sshd_log = root / "sshd.log"
    last_error = ""
    for _attempt in range(5):  # a free port can be taken between probe and bind: retry
        port = free_port()
        home = root / "home" if plain_login else None
        if home is not None:
            home.mkdir(exist_ok=True)
        sshd_config = write_sshd_config(root, port, host_key, token, home)
        check = subprocess.run(
            [sshd, "-t", "-f", str(sshd_config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise LocalHostsError(f"sshd -t rejected {sshd_config}: {check.stderr.strip()}")
        process = spawn_sshd(sshd, sshd_config, sshd_log, token)
        if wait_for_banner(port, process, startup_timeout):
            return LocalHost(
                name=name,
                root=root,
                port=port,
                addresses=addresses,
                host_key=host_key,
                config_path=config_path,
                restart_log=root / "restart.log",
                sshd_log=sshd_log,
                process=process,
            )
        if process.poll() is None:
            process.kill()
        process.wait()
        last_error = sshd_log.read_text(errors="replace")[-2000:]
        if "Address already in use" not in last_error:
            break
    raise LocalHostsError(f"sshd for {name} did not start; its log ends with:\n{last_error}")


# -- manual demo ----------------------------------------------------------------------------------


@contextlib.contextmanager
def sample_hosts(base_dir: Path | str) -> Iterator[LocalHosts]:
    """The sample primary/secondary pair on local sshds, stopped on exit."""
    from worker.demo import SAMPLE_ADDRESSES, sample_configs

    hosts = LocalHosts.start(base_dir, sample_configs(), addresses=SAMPLE_ADDRESSES)
    try:
        yield hosts
    finally:
        hosts.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Start the sample pair, print the inventory, run until interrupted."""
    args = list(sys.argv[1:] if argv is None else argv)
    base = Path(args[0]) if args else Path("demo-hosts")
    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with sample_hosts(base) as hosts:
        print(f"inventory: {hosts.inventory_path}")
        for h in hosts.hosts.values():
            print(f"  {h.name}: 127.0.0.1:{h.port}  config {h.config_path}  log {h.restart_log}")
        print("Ctrl-C to stop", flush=True)
        while not stop:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
