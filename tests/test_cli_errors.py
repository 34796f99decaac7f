"""The command line says what is wrong, in one line, instead of a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_with_an_invalid_inventory_names_the_file_and_the_problem(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text("servers = 'not a table'\n")

    result = CliRunner().invoke(main, ["run", "--inventory", str(inventory)])

    assert result.exit_code == 1
    assert f"inventory {inventory}" in result.output
    assert "Traceback" not in result.output


def test_publish_to_an_unreachable_broker_says_which_and_hides_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{closed_port()}/"
    monkeypatch.setenv("DHCP_FAILOVER_AMQP_URL", url)

    result = CliRunner().invoke(
        main, ["publish", "remove", "--server", "dhcp1.example.net", "--name", "dhcp-failover"]
    )

    assert result.exit_code == 1
    assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:" in result.output
    assert "s3cret" not in result.output
