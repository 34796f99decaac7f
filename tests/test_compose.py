"""docker-compose.yml cannot run here (no Docker engine), so its wiring is checked statically:
every service, volume, file and setting it names must be one the worker really reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

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
