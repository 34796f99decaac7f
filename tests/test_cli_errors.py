"""The command line says what is wrong, in one line, instead of a traceback (issue 13).

Each error path: the message (what, which file / server / URL, what to do), the documented exit
status, and no traceback unless debug mode asks for one. The broker paths that need a real
RabbitMQ are in tests/e2e/test_startup.py.
"""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest
from click.testing import CliRunner, Result

from worker.cli import main
from worker.demo.processes import free_port
from worker.failures import EXIT_CONFIG, EXIT_IOERR, EXIT_SOFTWARE, EXIT_UNAVAILABLE


def write_inventory(
    directory: Path, *, extra: str = "", key: bool = True, known_hosts: bool = True
) -> Path:
    """A valid one-server inventory; its key and known_hosts made (or not) beside it."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    if key:
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(directory / "id")
    if known_hosts:
        line = host_key.export_public_key().decode().strip()
        (directory / "known_hosts").write_text(f"[127.0.0.1]:2222 {line}\n")
    inventory = directory / "inventory.toml"
    inventory.write_text(
        '[servers."dhcp1"]\n'
        'host = "127.0.0.1"\nport = 2222\nusername = "root"\n'
        'client_keys = ["id"]\nknown_hosts = "known_hosts"\n'
        'config_path = "/etc/dhcp/dhcpd.conf"\nrestart_command = "true"\n' + extra
    )
    return inventory


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def assert_one_clean_error(result: Result, status: int) -> str:
    """The exit status, an ``Error:`` line, and no traceback; returns the output."""
    assert result.exit_code == status, result.output
    assert "Error: " in result.output
    assert "Traceback" not in result.output
    return result.output


def test_run_with_an_invalid_inventory_names_the_file_and_the_problem(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text("servers = 'not a table'\n")

    out = assert_one_clean_error(invoke("run", "--inventory", str(inventory)), EXIT_CONFIG)

    assert f"inventory {inventory}" in out
    assert "check --inventory" in out


def test_run_with_an_unknown_field_names_server_and_field(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, extra='restart_comand = "x"\n')

    out = assert_one_clean_error(invoke("run", "--inventory", str(inventory)), EXIT_CONFIG)

    assert "server 'dhcp1': field 'restart_comand': unknown field (not allowed)" in out


def test_run_with_a_missing_key_file_says_which_key(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, key=False)

    out = assert_one_clean_error(invoke("run", "--inventory", str(inventory)), EXIT_CONFIG)

    assert "server 'dhcp1': field 'client_keys.0': file not found" in out
    assert str(tmp_path / "id") in out


def test_run_with_known_hosts_missing_says_so(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, known_hosts=False)

    out = assert_one_clean_error(invoke("run", "--inventory", str(inventory)), EXIT_CONFIG)

    assert "field 'known_hosts': file not found" in out


def test_every_file_problem_is_reported_at_once(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, key=False, known_hosts=False)

    out = invoke("check", "--inventory", str(inventory)).output

    assert "client_keys.0" in out
    assert "known_hosts" in out
    assert "and 1 more" in out


def test_known_hosts_without_the_servers_key_says_how_to_add_it(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path)
    (tmp_path / "known_hosts").write_text("# nothing for 127.0.0.1:2222\n")

    out = assert_one_clean_error(invoke("check", "--inventory", str(inventory)), EXIT_CONFIG)

    assert "lists no host key for [127.0.0.1]:2222" in out
    assert "ssh-keyscan -p 2222 127.0.0.1" in out


def test_a_key_file_that_is_not_a_key_is_reported(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path)
    (tmp_path / "id").write_text("not a key\n")

    out = assert_one_clean_error(invoke("check", "--inventory", str(inventory)), EXIT_CONFIG)

    assert "not a private key the worker can use" in out


def test_check_passes_a_good_inventory(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path)

    result = invoke("check", "--inventory", str(inventory))

    assert result.exit_code == 0, result.output
    assert "1 server(s), files ok" in result.output


def test_an_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path)

    result = invoke("run", "--inventory", str(inventory), env={"DHCP_FAILOVER_PREFETCH": "many"})

    out = assert_one_clean_error(result, EXIT_CONFIG)
    assert "DHCP_FAILOVER_PREFETCH" in out


def test_publish_to_an_unreachable_broker_says_which_and_hides_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"
    monkeypatch.setenv("DHCP_FAILOVER_AMQP_URL", url)

    result = invoke("publish", "remove", "--server", "dhcp1.example.net", "--name", "fo", "--wait")

    out = assert_one_clean_error(result, EXIT_UNAVAILABLE)
    assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:" in out
    assert "s3cret" not in out


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_mode_adds_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("DHCP_FAILOVER_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    args = ["publish", "remove", "--server", "s", "--name", "fo"]
    if how == "flag":
        args.insert(0, "--debug")
    else:
        monkeypatch.setenv("DHCP_FAILOVER_LOG_LEVEL", "debug")

    result = CliRunner().invoke(main, args)

    assert result.exit_code == EXIT_UNAVAILABLE
    assert "Traceback" in result.output
    assert "cannot reach RabbitMQ" in result.output


def test_a_bug_is_called_a_bug_with_the_way_to_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr("worker.consumer.client.publish_request", broken)

    result = invoke("publish", "remove", "--server", "s", "--name", "fo")

    out = assert_one_clean_error(result, EXIT_SOFTWARE)
    assert "internal error (KeyError: 'surprise')" in out
    assert "--debug" in out


def test_an_omapi_secret_that_is_not_base64_is_reported(tmp_path: Path) -> None:
    (tmp_path / "omapi.secret").write_text("not base64!\n")
    omapi = '[servers."dhcp1".omapi]\nkey_name = "omapi_key"\nkey_secret_file = "omapi.secret"\n'
    inventory = write_inventory(tmp_path, extra=omapi)

    out = assert_one_clean_error(invoke("check", "--inventory", str(inventory)), EXIT_CONFIG)

    assert "field 'omapi.key_secret_file'" in out
    assert "does not hold a base64 secret" in out


def test_a_file_the_command_cannot_write_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be\n")

    out = assert_one_clean_error(invoke("schemas", str(blocker / "schemas")), EXIT_IOERR)

    assert f"cannot use {blocker}" in out
