"""docker-compose.yml cannot run here (no Docker engine), so its wiring is checked statically:
every service, volume, file and setting it names must be one the worker really reads."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.demo.processes import free_port
from worker.health import Readiness, serving
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_has_the_broker_the_worker_and_two_dhcp_hosts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"rabbitmq", "worker", "dhcp1", "dhcp2"} <= set(services)
    assert "management" in services["rabbitmq"]["image"]
    for host in ("dhcp1", "dhcp2"):
        dockerfile = REPO / services[host]["build"]["dockerfile"]
        text = dockerfile.read_text()
        assert "isc-dhcp-server" in text and "openssh-server" in text
    assert (REPO / "Dockerfile").is_file()


def test_worker_environment_names_only_settings_the_worker_reads(
    compose: dict[str, Any],
) -> None:
    env = compose["services"]["worker"]["environment"]
    prefix = "DHCP_FAILOVER_"
    known = {prefix + name.upper() for name in Settings.model_fields}
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    settings = Settings(**{k[len(prefix) :].lower(): v for k, v in env.items()})
    assert settings.amqp_url.startswith("amqp://") and "@rabbitmq:" in settings.amqp_url


def test_compose_inventory_names_the_compose_hosts_and_mounted_keys(
    compose: dict[str, Any],
) -> None:
    from worker.transport.inventory import load_inventory

    worker = compose["services"]["worker"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    inventory_in_container = worker["environment"]["DHCP_FAILOVER_INVENTORY"]
    inventory_file = REPO / mounts[inventory_in_container]
    inventory = load_inventory(inventory_file)
    hostnames = {compose["services"][s].get("hostname") for s in ("dhcp1", "dhcp2")}
    assert {server.host for server in inventory.servers.values()} == hostnames
    for server in inventory.servers.values():
        for key in [*server.client_keys, server.known_hosts]:
            assert str(key).startswith("/keys/"), key
    assert "keys" in mounts.values() and "keys" in compose["volumes"]


def test_dhcp_hosts_are_seeded_with_the_demo_sample_configs(compose: dict[str, Any]) -> None:
    for host in ("dhcp1", "dhcp2"):
        sources = [v.split(":")[0] for v in compose["services"][host]["volumes"]]
        samples = [s for s in sources if s.endswith(".conf")]
        assert samples and all((REPO / s).is_file() for s in samples)


@pytest.mark.skipif(os.geteuid() != 0, reason="keys-init chowns the key, as it does as root")
def test_keys_init_gives_the_client_key_to_the_workers_user_only(tmp_path: Path) -> None:
    # The worker image runs as nobody (65534 in Debian's python image); the keys volume is
    # shared with the hosts, so the private key must be the worker's alone, not world-readable.
    assert "USER nobody" in (REPO / "Dockerfile").read_text().splitlines()
    script = (REPO / "deploy/compose/keys-init.sh").read_text()
    assert "cd /keys\n" in script
    runnable = tmp_path / "keys-init.sh"
    runnable.write_text(script.replace("cd /keys\n", f"cd {tmp_path / 'keys'}\n"))
    (tmp_path / "keys").mkdir()

    subprocess.run(["sh", str(runnable)], check=True, capture_output=True, timeout=30)

    key = (tmp_path / "keys" / "id_ed25519").stat()
    assert (key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)) == (65534, 65534, 0o600)
    known_hosts = (tmp_path / "keys" / "known_hosts").read_text().splitlines()
    assert [line.split()[0] for line in known_hosts] == [
        "dhcp1.example.net,dhcp1",
        "dhcp2.example.net,dhcp2",
    ]


def test_the_worker_healthcheck_asks_readyz_where_the_worker_serves_it(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    prefix = "DHCP_FAILOVER_"
    env = worker["environment"]
    settings = Settings(**{k[len(prefix) :].lower(): v for k, v in env.items()})
    assert settings.http_port == 8080 and settings.http_host == "0.0.0.0"  # scrapeable
    assert str(settings.http_port) in worker["expose"] and "ports" not in worker
    test = worker["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]  # the image has python, not curl
    assert f"http://127.0.0.1:{settings.http_port}/readyz" in test[3]


async def test_the_healthcheck_command_passes_only_while_the_worker_is_ready(
    compose: dict[str, Any],
) -> None:
    code = compose["services"]["worker"]["healthcheck"]["test"][3]
    port = free_port()
    readiness = Readiness()

    async def healthcheck() -> int:
        run = [sys.executable, "-c", code.replace(":8080/", f":{port}/")]
        done = await asyncio.to_thread(subprocess.run, run, capture_output=True, timeout=30)
        return done.returncode

    async with serving(Settings(http_port=port), readiness):
        assert await healthcheck() != 0
        readiness.inventory, readiness.broker = True, None
        assert await healthcheck() == 0
