"""The stand-in servers themselves: they answer SSH, run the real dhcpd, and stop cleanly."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.sshd import LocalHostsFactory
from worker.demo import PRIMARY, SECONDARY, sample_config
from worker.demo.localhosts import LocalHosts
from worker.demo.processes import tagged_pids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _ssh(hosts: LocalHosts, name: str, command: str) -> subprocess.CompletedProcess[str]:
    h = hosts.hosts[name]
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(hosts.client_key),
            "-o", f"UserKnownHostsFile={hosts.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-p", str(h.port), "127.0.0.1", command,
        ],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_sample_configs_pass_dhcpd_t(role: str, tmp_path: Path) -> None:
    conf = tmp_path / f"{role}.conf"
    conf.write_text(sample_config(role))
    result = subprocess.run(
        ["dhcpd", "-t", "-q", "-cf", str(conf)], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr


def test_each_host_answers_ssh_with_its_own_key_and_config(sample_hosts: LocalHosts) -> None:
    for name in (PRIMARY, SECONDARY):
        h = sample_hosts.hosts[name]
        result = _ssh(sample_hosts, name, f"cat {h.config_path}")
        assert result.returncode == 0, result.stderr
        assert result.stdout == h.config_path.read_text()
    keys = {h.host_key_line for h in sample_hosts.hosts.values()}
    assert len(keys) == 2
    assert sample_hosts.inventory_path.is_file()


def test_scripts_validate_restart_and_obey_markers(sample_hosts: LocalHosts) -> None:
    h = sample_hosts.hosts[PRIMARY]
    bin_dir = h.root / "bin"
    assert _ssh(sample_hosts, PRIMARY, f"{bin_dir}/validate.sh {h.config_path}").returncode == 0
    h.set_marker("fail-validate")
    failed = _ssh(sample_hosts, PRIMARY, f"{bin_dir}/validate.sh {h.config_path}")
    assert failed.returncode == 1
    assert "Configuration file errors encountered" in failed.stderr
    assert _ssh(sample_hosts, PRIMARY, f"{bin_dir}/restart.sh").returncode == 0
    h.set_marker("fail-restart")
    assert _ssh(sample_hosts, PRIMARY, f"{bin_dir}/restart.sh").returncode == 1
    assert [r.status for r in h.restarts()] == ["ok", "failed"]
    assert {r.sha256 for r in h.restarts()} == {h.config_sha256()}


@pytest.mark.parametrize("plain_login", [False, True], ids=["account-home", "plain-login"])
def test_plain_login_gives_sessions_an_empty_home_of_the_hosts_own(
    local_hosts: LocalHostsFactory, plain_login: bool
) -> None:
    hosts = local_hosts({PRIMARY: sample_config("primary")}, plain_login=plain_login)
    h = hosts.hosts[PRIMARY]
    result = _ssh(hosts, PRIMARY, "echo $HOME; ls -A $HOME | wc -l")
    assert result.returncode == 0, result.stderr
    home, entries = result.stdout.split()
    if plain_login:
        assert (home, entries) == (str(h.root / "home"), "0")
    else:
        assert home == os.path.expanduser("~")


def test_stop_ends_every_process_including_a_hung_restart(
    local_hosts: LocalHostsFactory,
) -> None:
    hosts = local_hosts({PRIMARY: sample_config("primary")})
    h = hosts.hosts[PRIMARY]
    h.set_marker("hang-restart")
    client = subprocess.Popen(
        [
            "ssh", "-F", "/dev/null", "-i", str(hosts.client_key),
            "-o", f"UserKnownHostsFile={hosts.known_hosts}", "-o", "BatchMode=yes",
            "-p", str(h.port), "127.0.0.1", f"{h.root}/bin/restart.sh",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if h.restarts():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert [r.status for r in h.restarts()] == ["hung"]
        client.kill()  # the client goes away; the remote sleep does not
        client.wait(10)
        assert tagged_pids(hosts.token)
        hosts.stop(timeout=5.0)
        assert tagged_pids(hosts.token) == set()
        assert h.process.poll() is not None
        with pytest.raises(OSError):
            os.kill(h.process.pid, 0)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
