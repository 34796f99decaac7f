"""``check --inventory FILE --connect`` on real sshd hosts: a table of how far each got."""

from __future__ import annotations

import asyncssh
import pytest
from click.testing import CliRunner

from tests.transport.support import inventory_file
from worker.cli import main
from worker.demo import PRIMARY
from worker.demo.localhosts import LocalHosts
from worker.failures import EXIT_UNAVAILABLE

pytestmark = pytest.mark.timeout(60)


def run_check(path: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", "--inventory", path, "--connect"])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def row(output: str, server: str) -> list[str]:
    """The table row of ``server`` as its cells (rich draws ``│`` between them)."""
    line = next(line for line in output.splitlines() if server in line)
    return [cell.strip() for cell in line.strip("│ ").split("│")]


def test_a_reachable_pair_is_all_ok(sample_hosts: LocalHosts) -> None:
    status, out = run_check(str(sample_hosts.inventory_path))

    assert status == 0, out
    for server in sample_hosts.hosts:
        assert row(out, server)[1:] == ["ok", "ok", "ok", "-"], out


def test_a_wrong_host_key_is_rejected_and_named(sample_hosts: LocalHosts) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    port = sample_hosts.hosts[PRIMARY].port
    known = sample_hosts.base_dir / "other_known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {other}\n")

    status, out = run_check(
        str(inventory_file(sample_hosts, "bad-key.toml", known_hosts=str(known)))
    )

    assert status == EXIT_UNAVAILABLE, out
    assert row(out, PRIMARY)[2] == "rejected"
    assert "problem:" in out


def test_a_missing_validate_command_is_found_before_a_change(sample_hosts: LocalHosts) -> None:
    path = inventory_file(sample_hosts, "no-dhcpd.toml", validate_command="no-such-dhcpd -t {path}")

    status, out = run_check(str(path))

    assert status == EXIT_UNAVAILABLE, out
    assert row(out, PRIMARY)[1:4] == ["ok", "ok", "not found"]
    assert "validate command not found" in out


def test_an_unreachable_server_is_reported_not_raised(sample_hosts: LocalHosts) -> None:
    port = sample_hosts.hosts[PRIMARY].port
    known = sample_hosts.base_dir / "port1_known_hosts"
    known.write_text(sample_hosts.known_hosts.read_text().replace(f"]:{port} ", "]:1 "))
    path = inventory_file(sample_hosts, "closed.toml", port=1, known_hosts=str(known))

    status, out = run_check(str(path))

    assert status == EXIT_UNAVAILABLE, out
    assert row(out, PRIMARY)[1] == "no"
