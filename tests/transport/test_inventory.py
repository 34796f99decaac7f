"""Inventory loading: strict validation, and errors that name the file, server and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.change.running import PeerState, VerifyPolicy
from worker.transport import InventoryError, SshFleet, load_inventory
from worker.transport.preflight import file_problems

GOOD = """
[servers."dhcp1.example.net"]
host = "192.0.2.10"
username = "dhcpadmin"
client_keys = ["keys/id_ed25519"]
known_hosts = "known_hosts"
config_path = "/etc/dhcp/dhcpd.conf"
restart_command = "sudo systemctl restart isc-dhcp-server"
verify_command = "systemctl is-active isc-dhcp-server"

[servers."dhcp2.example.net"]
host = "192.0.2.11"
port = 2222
username = "dhcpadmin"
client_keys = ["keys/id_ed25519"]
known_hosts = "known_hosts"
config_path = "/etc/dhcp/dhcpd.conf"
validate_command = "sudo dhcpd -t -cf {path}"
restart_command = "sudo systemctl restart isc-dhcp-server"
addresses = ["10.1.1.11", "2001:db8::11"]
lock_path = "/run/lock/dhcp-failover.lock"
"""


@pytest.fixture
def inventory_dir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id_ed25519").write_text("not parsed at load time\n")
    (tmp_path / "known_hosts").write_text("")
    return tmp_path


def _write(directory: Path, text: str) -> Path:
    path = directory / "inventory.toml"
    path.write_text(text)
    return path


def _error(directory: Path, text: str) -> InventoryError:
    path = _write(directory, text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_a_good_inventory_loads_with_defaults_filled_in(inventory_dir: Path) -> None:
    inventory = load_inventory(_write(inventory_dir, GOOD))
    one, two = inventory.servers["dhcp1.example.net"], inventory.servers["dhcp2.example.net"]
    assert one.port == 22
    assert one.validate_command == "dhcpd -t -cf {path}"
    assert one.effective_lock_path == "/etc/dhcp/.dhcp-failover.lock"
    assert one.verify_command == "systemctl is-active isc-dhcp-server"
    assert two.port == 2222
    assert two.verify_command is None
    assert two.effective_lock_path == "/run/lock/dhcp-failover.lock"
    assert inventory.source == inventory_dir / "inventory.toml"


def test_relative_key_and_known_hosts_paths_are_relative_to_the_inventory_file(
    inventory_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    server = load_inventory(_write(inventory_dir, GOOD)).servers["dhcp1.example.net"]
    assert server.client_keys == (inventory_dir / "keys" / "id_ed25519",)
    assert server.known_hosts == inventory_dir / "known_hosts"


def test_partner_lookup_matches_name_host_and_addresses(inventory_dir: Path) -> None:
    inventory = load_inventory(_write(inventory_dir, GOOD))
    assert inventory.server_for_address("192.0.2.10") == "dhcp1.example.net"
    assert inventory.server_for_address("10.1.1.11") == "dhcp2.example.net"
    assert inventory.server_for_address("2001:DB8:0::11") == "dhcp2.example.net"
    assert inventory.server_for_address("DHCP2.example.net.") == "dhcp2.example.net"
    assert inventory.server_for_address("192.0.2.99") is None


def test_an_unknown_field_is_rejected_naming_server_and_field(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD.replace("port = 2222", 'port = 2222\npasword = "x"'))
    assert (error.server, error.field) == ("dhcp2.example.net", "pasword")
    assert "unknown field" in str(error)


def test_an_unknown_top_level_table_is_rejected(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD + "\n[defaults]\nport = 22\n")
    assert error.server is None
    assert error.field == "defaults"


def test_a_missing_required_field_is_named(inventory_dir: Path) -> None:
    text = GOOD.replace('restart_command = "sudo systemctl restart isc-dhcp-server"\n', "", 1)
    error = _error(inventory_dir, text)
    assert (error.server, error.field) == ("dhcp1.example.net", "restart_command")
    assert "dhcp1.example.net" in str(error) and "restart_command" in str(error)


def test_a_wrongly_typed_port_is_named(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD.replace("port = 2222", 'port = "ssh"'))
    assert (error.server, error.field) == ("dhcp2.example.net", "port")


def test_a_port_out_of_range_is_rejected(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD.replace("port = 2222", "port = 70000"))
    assert error.field == "port"


def test_a_relative_config_path_is_rejected(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD.replace('"/etc/dhcp/dhcpd.conf"', '"dhcpd.conf"', 1))
    assert (error.server, error.field) == ("dhcp1.example.net", "config_path")
    assert "absolute" in str(error)


@pytest.mark.parametrize("lock_path", ["/etc/dhcp/dhcpd.conf", "/etc/dhcp/../dhcp/dhcpd.conf"])
def test_a_lock_path_that_is_the_config_path_is_rejected_naming_the_field(
    inventory_dir: Path, lock_path: str
) -> None:
    text = GOOD.replace('"/run/lock/dhcp-failover.lock"', f'"{lock_path}"')
    error = _error(inventory_dir, text)
    assert error.server == "dhcp2.example.net"
    assert "lock_path must not be config_path" in str(error)


def test_working_directory_defaults_to_the_config_directory_and_must_be_absolute(
    inventory_dir: Path,
) -> None:
    text = GOOD.replace("port = 2222", 'port = 2222\nworking_directory = "/var/lib/dhcp/"')
    servers = load_inventory(_write(inventory_dir, text)).servers
    assert servers["dhcp1.example.net"].effective_working_directory == "/etc/dhcp"
    assert servers["dhcp2.example.net"].effective_working_directory == "/var/lib/dhcp"
    error = _error(inventory_dir, text.replace('"/var/lib/dhcp/"', '"var/lib/dhcp"'))
    assert (error.server, error.field) == ("dhcp2.example.net", "working_directory")
    assert "absolute" in str(error)


def test_a_missing_client_key_file_is_named_when_files_are_checked(inventory_dir: Path) -> None:
    (inventory_dir / "keys" / "id_ed25519").unlink()
    path = _write(inventory_dir, GOOD)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path, check_files=True)
    assert (caught.value.server, caught.value.field) == ("dhcp1.example.net", "client_keys.0")
    assert str(path) in str(caught.value)
    assert "file not found" in str(caught.value)


def test_an_empty_client_key_list_is_rejected(inventory_dir: Path) -> None:
    text = GOOD.replace('client_keys = ["keys/id_ed25519"]', "client_keys = []", 1)
    error = _error(inventory_dir, text)
    assert (error.server, error.field) == ("dhcp1.example.net", "client_keys")


def test_the_ssh_fleet_refuses_an_inventory_whose_known_hosts_is_missing(
    inventory_dir: Path,
) -> None:
    (inventory_dir / "known_hosts").unlink()
    inventory = load_inventory(_write(inventory_dir, GOOD))  # fine for offline tools
    with pytest.raises(InventoryError) as caught:
        SshFleet(inventory)
    assert caught.value.field == "known_hosts"
    assert "inventory.toml" in str(caught.value)


def test_a_validate_command_without_the_path_placeholder_is_rejected(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD.replace("sudo dhcpd -t -cf {path}", "sudo dhcpd -t"))
    assert (error.server, error.field) == ("dhcp2.example.net", "validate_command")
    assert "{path}" in str(error)


def test_an_address_claimed_by_two_servers_is_rejected(inventory_dir: Path) -> None:
    text = GOOD.replace('addresses = ["10.1.1.11"', 'addresses = ["dhcp1.example.net"')
    error = _error(inventory_dir, text)
    assert "dhcp1.example.net" in str(error) and "dhcp2.example.net" in str(error)


def test_an_address_that_is_another_servers_host_is_rejected(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD.replace('"10.1.1.11"', '"192.0.2.10"'))
    assert "192.0.2.10" in str(error)


def test_another_servers_host_written_differently_is_still_its_host(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD.replace('"10.1.1.11"', '" 192.0.2.10 "'))
    assert "dhcp2.example.net" in str(error) and "'dhcp1.example.net''s host" in str(error)


def test_an_inventory_without_servers_is_rejected(inventory_dir: Path) -> None:
    error = _error(inventory_dir, "servers = {}\n")
    assert error.field == "servers"


def test_text_that_is_not_toml_names_the_file_and_line(inventory_dir: Path) -> None:
    error = _error(inventory_dir, GOOD + "\nthis is not = = toml\n")
    assert "not valid TOML" in str(error)
    assert "line" in str(error)


def test_a_missing_inventory_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path / "absent.toml")
    assert "absent.toml" in str(caught.value) and "not found" in str(caught.value)


def test_every_problem_is_listed_not_just_the_first(inventory_dir: Path) -> None:
    text = GOOD.replace("port = 2222", "port = 0").replace('username = "dhcpadmin"', "", 1)
    error = _error(inventory_dir, text)
    assert "port" in str(error) and "username" in str(error)
    assert "1 more" in str(error)


# -- the omapi table (issue 10: verify the running pair) ----------------------------------------

KEYED_OMAPI = """
[servers."dhcp2.example.net".omapi]
port = 7912
key_name = "omapi_key"
key_secret_file = "keys/omapi.secret"
allowed_states = ["normal", "partner-down"]
verify_timeout = 20
"""


def test_an_omapi_table_is_read_with_its_defaults_and_a_relative_secret_path(
    inventory_dir: Path,
) -> None:
    (inventory_dir / "keys" / "omapi.secret").write_text("d9Swjqc4XcTo+hQAS3SA/Q==\n")
    text = GOOD.replace(
        'verify_command = "systemctl is-active isc-dhcp-server"',
        'verify_command = "systemctl is-active isc-dhcp-server"\nomapi = { none = true }',
    )
    inventory = load_inventory(_write(inventory_dir, text + KEYED_OMAPI), check_files=True)
    one = inventory.servers["dhcp1.example.net"].omapi
    two = inventory.servers["dhcp2.example.net"].omapi
    assert one is not None and two is not None
    assert (one.port, one.none, one.key_name, one.key_secret_file) == (7911, True, None, None)
    assert one.policy == VerifyPolicy(frozenset({PeerState.normal}), 60.0)
    assert one.key_secret() is None
    assert two.key_secret_file == inventory_dir / "keys" / "omapi.secret"
    assert two.key_secret() == b"d9Swjqc4XcTo+hQAS3SA/Q=="
    assert two.policy == VerifyPolicy(frozenset({PeerState.normal, PeerState.partner_down}), 20)


def test_a_server_without_an_omapi_table_has_none(inventory_dir: Path) -> None:
    assert load_inventory(_write(inventory_dir, GOOD)).servers["dhcp1.example.net"].omapi is None


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ("none = true\ncolour = 1", "omapi.colour", "unknown field"),
        ("port = 7911", "omapi.key_name", "or none = true"),
        ('key_name = "omapi_key"', "omapi.key_secret_file", "required with key_name"),
        ('none = true\nkey_name = "k"', "omapi.key_name", "not allowed with none = true"),
        ('none = true\nallowed_states = ["normal", "nromal"]', "omapi.allowed_states", "'nromal'"),
        ("none = true\nallowed_states = []", "omapi.allowed_states", "at least 1"),
        ("none = true\nverify_timeout = 0", "omapi.verify_timeout", "greater than 0"),
        ("none = true\nport = 0", "omapi.port", "greater than or equal to 1"),
    ],
)
def test_a_bad_omapi_table_is_rejected_naming_the_field(
    inventory_dir: Path, table: str, field: str, words: str
) -> None:
    error = _error(inventory_dir, f'{GOOD}\n[servers."dhcp2.example.net".omapi]\n{table}\n')
    assert (error.server, error.field) == ("dhcp2.example.net", field)
    assert words in str(error)


def test_a_missing_omapi_secret_file_is_named_when_files_are_checked(inventory_dir: Path) -> None:
    path = _write(inventory_dir, GOOD + KEYED_OMAPI)
    load_inventory(path)  # loading alone does not look
    with pytest.raises(InventoryError) as caught:
        load_inventory(path, check_files=True)
    assert (caught.value.server, caught.value.field) == (
        "dhcp2.example.net",
        "omapi.key_secret_file",
    )
    assert f"file not found: {inventory_dir / 'keys' / 'omapi.secret'}" in str(caught.value)


def test_an_omapi_secret_file_without_base64_is_named_when_files_are_checked(
    inventory_dir: Path,
) -> None:
    (inventory_dir / "keys" / "omapi.secret").write_text('secret "not base64!";\n')
    with pytest.raises(InventoryError) as caught:
        load_inventory(_write(inventory_dir, GOOD + KEYED_OMAPI), check_files=True)
    assert caught.value.field == "omapi.key_secret_file"
    assert "does not hold a base64 secret" in str(caught.value)


def test_files_shared_by_servers_are_reported_for_each_of_them(inventory_dir: Path) -> None:
    """Each file is read once however many servers name it; its problem is still each one's."""
    problems = file_problems(load_inventory(_write(inventory_dir, GOOD)))

    assert [(server, field) for server, field, _ in problems] == [
        ("dhcp1.example.net", "client_keys.0"),
        ("dhcp1.example.net", "known_hosts"),
        ("dhcp2.example.net", "client_keys.0"),
        ("dhcp2.example.net", "known_hosts"),
    ]
    assert "lists no host key for [192.0.2.11]:2222" in problems[3][2]
