"""The offline commands (CONTRACT §5): ``plan`` and ``inspect`` as an operator runs them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.demo import sample_config

pytestmark = pytest.mark.integration  # plan validates with the real dhcpd


@pytest.fixture(autouse=True)
def _dhcpd_present() -> None:
    if shutil.which("dhcpd") is None and not Path("/usr/sbin/dhcpd").exists():
        pytest.fail("dhcpd (isc-dhcp-server) is required: scripts/setup installs it")


def modify(**params: Any) -> dict[str, Any]:
    return {
        "requestId": "offline-1",
        "command": "ModifyDHCPFailoverRelationship",
        "params": {
            "Name": "dhcp-failover",
            "PrimaryServer": "dhcp1.example.net",
            "SecondaryServer": "dhcp2.example.net",
            **params,
        },
    }


def remove(action: str, server: str = "dhcp1.example.net") -> dict[str, Any]:
    return {
        "requestId": "offline-2",
        "command": "RemoveDHCPFailoverRelationships",
        "params": {"Server": server, "Name": "dhcp-failover", "DeconfigureAction": action},
    }


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    p, s = tmp_path / "in" / "p.conf", tmp_path / "in" / "s.conf"
    p.parent.mkdir()
    p.write_text(sample_config("primary"))
    s.write_text(sample_config("secondary"))
    return p, s


def run_plan(tmp_path: Path, body: dict[str, Any], p: Path, s: Path, *extra: str) -> Any:
    req = tmp_path / "request.json"
    req.write_text(json.dumps(body))
    args = ["plan", str(req), "--primary-config", str(p), "--secondary-config", str(s), *extra]
    return CliRunner().invoke(main, args)


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_plan_prints_diffs_writes_candidates_and_never_touches_the_inputs(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    p, s = pair
    before = digest(p, s)
    out = tmp_path / "out" / "nested"
    result = run_plan(tmp_path, modify(Mclt=1800, Port=650), p, s, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "-  mclt 3600;" in result.stdout and "+  mclt 1800;" in result.stdout
    assert "+  peer port 650;" in result.stdout
    assert sorted(x.name for x in out.iterdir()) == ["primary.conf", "secondary.conf"]
    assert "mclt 1800;" in (out / "primary.conf").read_text()
    assert "  mclt" not in (out / "secondary.conf").read_text()
    assert "port 650;" in (out / "secondary.conf").read_text()
    assert digest(p, s) == before


@pytest.mark.parametrize("action", ["Disable", "Delete", "None"])
def test_plan_remove_applies_each_deconfigure_action_to_the_secondary(
    tmp_path: Path, pair: tuple[Path, Path], action: str
) -> None:
    p, s = pair
    out = tmp_path / "out"
    result = run_plan(tmp_path, remove(action, server="dhcp2.example.net"), p, s, "--out", str(out))
    assert result.exit_code == 0, result.output
    primary, secondary = (out / "primary.conf").read_text(), (out / "secondary.conf").read_text()
    assert 'failover peer "dhcp-failover"' not in primary + secondary
    assert "subnet 10.20.0.0" in primary  # the primary's scopes keep serving
    if action == "Disable":
        assert secondary.count("deny all clients;") == 2
    elif action == "Delete":
        assert "subnet 10.20.0.0" not in secondary and "subnet 192.0.2.0" in secondary
    else:
        assert "deny all clients" not in secondary and "subnet 10.20.0.0" in secondary


def test_plan_rejection_exits_2_with_the_error_as_json_on_stderr(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    p, s = pair
    result = run_plan(tmp_path, modify(Mclt=1800), s, p)  # roles swapped
    assert result.exit_code == 2
    error = json.loads(result.stderr)
    assert error["code"] == "roles_swapped" and error["phase"] == "plan"
    assert result.stdout == ""


def test_plan_of_a_request_that_breaks_the_schema_exits_2_naming_the_field(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    result = run_plan(tmp_path, modify(Port=70000), *pair)
    assert result.exit_code == 2
    error = json.loads(result.stderr)
    assert error["code"] == "invalid_request"
    assert any("Port" in ".".join(map(str, e["loc"])) for e in error["detail"])


def test_plan_reports_dhcpds_first_error_with_the_real_file_name_and_line(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    p, s = pair
    text = p.read_text().replace(
        "default-lease-time 3600;", "default-lease-time 3600;\noption no-such-option 1;"
    )
    p.write_text(text)
    result = run_plan(tmp_path, modify(Mclt=1800), p, s)
    assert result.exit_code == 2, result.output
    error = json.loads(result.stderr)
    assert error["code"] == "validation_failed" and error["phase"] == "validate"
    detail = error["detail"]
    assert detail["file"] == str(p)  # mapped back from the temporary candidate
    assert detail["line"] == text.splitlines().index("option no-such-option 1;") + 1
    assert "no-such-option" in detail["message"] + detail.get("source_line", "")


def test_plan_writes_a_changed_included_file_under_its_own_name(tmp_path: Path) -> None:
    def split_pools(role: str, where: Path) -> Path:
        text = sample_config(role)
        head, sep, tail = text.partition("# Office LAN")
        where.mkdir(parents=True)
        (where / "pools.conf").write_text(sep + tail)
        main_file = where / "dhcpd.conf"
        main_file.write_text(head + 'include "pools.conf";\n')
        return main_file

    p = split_pools("primary", tmp_path / "p")
    s = split_pools("secondary", tmp_path / "s")
    out = tmp_path / "out"
    result = run_plan(tmp_path, remove("Disable"), p, s, "--out", str(out))
    assert result.exit_code == 0, result.output
    names = sorted(x.name for x in out.iterdir())
    assert names == ["pools.conf", "primary.conf", "secondary.conf", "secondary.pools.conf"]
    assert 'include "pools.conf";' in (out / "primary.conf").read_text()
    assert "failover peer" not in (out / "pools.conf").read_text()
    assert "deny all clients;" in (out / "secondary.pools.conf").read_text()


def test_plan_validates_with_unchanged_relative_includes_found_beside_the_main_file(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    p, s = pair
    (p.parent / "extra.conf").write_text('option domain-search "example.net";\n')
    p.write_text(p.read_text() + 'include "extra.conf";\n')
    result = run_plan(tmp_path, modify(Mclt=1800), p, s)
    assert result.exit_code == 0, result.output


def test_inspect_lists_each_peer_with_its_parameters_and_scopes(corpus_dir: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(corpus_dir / "isc-dhcp__dhcp-1.conf")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (peer,) = doc["peers"]
    assert peer["name"] == "foo" and peer["role"] == "primary"
    assert peer["parameters"]["mclt"] == "100" and peer["parameters"]["peer port"] == "51001"
    assert len(peer["scopes"]) == 5
    assert peer["scopes"][0]["label"].startswith("shared-network LOCAL > subnet 10.0.2.0")


def test_schemas_command_writes_the_checked_in_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schemas", str(tmp_path)])
    assert result.exit_code == 0
    repo_schemas = Path(__file__).resolve().parent.parent / "schemas"
    for f in repo_schemas.glob("*.json"):
        assert (tmp_path / f.name).read_text() == f.read_text()
