"""scripts/broker on a machine without RabbitMQ: it installs the Debian package with services
held back, starts the broker with ``rabbitmq-server -detached``, and fails with a clear message
after a bounded wait when the broker never answers.

Run in a network namespace of its own (its 127.0.0.1 has no broker) with stand-ins for
``apt-get`` and ``rabbitmq-server`` first on PATH, and /usr/sbin left off it, so the machine's
real broker is neither seen nor touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

APT_GET = """#!/bin/sh
echo "apt-get $*" >> "$STUB_LOG"
case "$*" in
  *install*rabbitmq-server*)
    policy=$(tail -n 1 /usr/sbin/policy-rc.d 2>/dev/null || echo missing)
    echo "policy-rc.d: $policy" >> "$STUB_LOG"
    printf '#!/bin/sh\\necho "rabbitmq-server $*" >> "$STUB_LOG"\\n' > "$STUB_DIR/rabbitmq-server"
    chmod +x "$STUB_DIR/rabbitmq-server" ;;
esac
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with only a loopback interface, removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns)")
    name = f"dfw-setup-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def policy_rc_d() -> Iterator[Path]:
    """The machine's /usr/sbin/policy-rc.d, put back as it was after the test."""
    path = Path("/usr/sbin/policy-rc.d")
    before = path.read_bytes() if path.exists() else None
    try:
        yield path
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
            path.chmod(0o755)


#: A policy-rc.d of the machine's own, as container images often ship one.
OWN_POLICY = b"#!/bin/sh\n# the image's own\nexit 101\n"


@pytest.mark.parametrize("own_policy", [False, True], ids=["no-policy-rc.d", "own-policy-rc.d"])
def test_a_machine_without_rabbitmq_gets_it_installed_started_and_waited_for(
    namespace: str, tmp_path: Path, policy_rc_d: Path, own_policy: bool
) -> None:
    if own_policy:
        policy_rc_d.write_bytes(OWN_POLICY)
    else:
        policy_rc_d.unlink(missing_ok=True)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "apt-get").write_text(APT_GET)
    (stubs / "apt-get").chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{stubs}:/usr/local/bin:/usr/bin:/bin",  # no /usr/sbin: no rabbitmq-server
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_DIR": str(stubs),
        "DHCP_FAILOVER_BROKER_WAIT": "3",
    }
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, str(REPO / "scripts" / "broker")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )

    calls = log.read_text().splitlines()
    assert done.returncode == 1, done.stderr
    assert "setup: installing rabbitmq-server" in done.stderr
    assert "setup: starting RabbitMQ (rabbitmq-server -detached)" in done.stderr
    assert "did not accept an AMQP connection on 127.0.0.1:5672 (guest/guest) within 3s" in (
        done.stderr.replace("\n", " ")
    )
    assert calls[0] == "apt-get update -qq"
    assert calls[1] == "apt-get install -y -qq rabbitmq-server"
    assert calls[2] == "policy-rc.d: exit 101"  # the package's own service start is refused
    assert calls[3] == "rabbitmq-server -detached"
    # and the guard is gone again: the machine's own put back, or none
    assert (policy_rc_d.read_bytes() == OWN_POLICY) if own_policy else not policy_rc_d.exists()


def test_a_running_broker_is_neither_installed_nor_started_again(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "apt-get").write_text(APT_GET)
    (stubs / "apt-get").chmod(0o755)
    env = {**os.environ, "STUB_LOG": str(log), "STUB_DIR": str(stubs)}
    env["PATH"] = f"{stubs}:{env['PATH']}"
    done = subprocess.run(
        [str(REPO / "scripts" / "broker")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert done.returncode == 0, done.stderr
    assert not log.exists()
