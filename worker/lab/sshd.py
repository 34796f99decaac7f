"""The sshd of a lab namespace: the worker's way in, exactly as on a real DHCP host."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

from worker.demo.processes import spawn_sshd, sshd_options, wait_for_banner
from worker.lab.netns import LabError, netns_argv


def write_config(
    directory: Path,
    address: ipaddress.IPv4Address,
    host_key: Path,
    authorized_keys: Path,
    token: str,
) -> Path:
    """sshd_config for root login by key on ``address``:22, with TCP forwarding (OMAPI).

    ``SetEnv`` tags every session -- and so every dhcpd a restart starts -- with the lab's
    token, which is how teardown finds them once their parents are gone.
    """
    path = directory / "sshd_config"
    lines = [
        "Port 22",
        f"ListenAddress {address}:22",
        f"HostKey {host_key}",
        f"PidFile {directory / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "AllowTcpForwarding yes",
        *sshd_options(token),
    ]
    path.write_text("\n".join([*lines, ""]))
    return path


def start(
    sshd: str, namespace: str, config: Path, log: Path, address: str, token: str, timeout: float
) -> subprocess.Popen[bytes]:
    """Start ``sshd -D -e`` in ``namespace`` and wait for its banner from the root namespace."""
    check = subprocess.run(
        [sshd, "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise LabError(f"sshd -t rejected {config}: {check.stderr.strip()}")
    process = spawn_sshd(sshd, config, log, token, prefix=netns_argv(namespace, []))
    if wait_for_banner(22, process, timeout, host=address):
        return process
    if process.poll() is None:
        process.kill()
    process.wait()
    tail = log.read_text(errors="replace")[-2000:]
    raise LabError(f"sshd in {namespace} did not answer on {address}:22; its log ends:\n{tail}")


def copy_authorized_key(client_key: Path, authorized_keys: Path) -> None:
    shutil.copyfile(client_key.with_suffix(".pub"), authorized_keys)


def known_hosts_line(address: str, host_key: Path) -> str:
    key = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    return f"{address} {key}\n"
