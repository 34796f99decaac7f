"""The offline commands (docs/contract.md §5): ``plan`` and ``inspect`` as an operator runs them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fakes import FakeFleet, FakeHost
from worker.change.coordinator import execute
from worker.change.ports import Fleet
from worker.change.snapshot import MAX_INCLUDE_DEPTH
from worker.cli import main
from worker.demo import PRIMARY, SECONDARY, sample_config
from worker.messages import ModifyRequest, Outcome, RemoveRequest, parse_request
from worker.offline import find_dhcpd, local_pair
from worker.transport.localfs import LocalFileHost

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


def state_of(*directories: Path) -> dict[str, tuple[str, int]]:
    """Every file in the directories: its sha256 and mtime (a plan must leave them alone)."""
    return {
        str(f): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
        for d in directories
        for f in sorted(d.iterdir())
    }


PEER_BLOCK = re.compile(r'^failover peer "dhcp-failover" \{.*?^\}\n', re.S | re.M)


def write_tree(where: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (name -> text) into ``where``; the first one is the main config."""
    where.mkdir(parents=True)
    for name, text in files.items():
        (where / name).write_text(text)
    return where / next(iter(files))


def peer_two_levels_down(role: str, where: Path) -> Path:
    """dhcpd.conf includes a.conf, which includes b.conf, which holds the peer block."""
    text = sample_config(role)
    block = PEER_BLOCK.search(text)
    assert block is not None
    main_text = text.replace(block.group(0), 'include "a.conf";\n')
    return write_tree(
        where, {"dhcpd.conf": main_text, "a.conf": 'include "b.conf";\n', "b.conf": block.group(0)}
    )


def include_chain(role: str, where: Path, levels: int) -> Path:
    """dhcpd.conf includes l1.conf, which includes l2.conf, ... down to l<levels>.conf."""
    files = {"dhcpd.conf": sample_config(role) + 'include "l1.conf";\n'}
    for i in range(1, levels):
        files[f"l{i}.conf"] = f'include "l{i + 1}.conf";\n'
    files[f"l{levels}.conf"] = "# the end of the chain\n"
    return write_tree(where, files)


def pools_included(role: str, where: Path) -> Path:
    text = sample_config(role)
    head, sep, tail = text.partition("# Office LAN")
    return write_tree(
        where, {"dhcpd.conf": head + 'include "pools.conf";\n', "pools.conf": sep + tail}
    )


def plain(role: str, where: Path) -> Path:
    return write_tree(where, {"dhcpd.conf": sample_config(role)})


def missing_include(role: str, where: Path) -> Path:
    return write_tree(where, {"dhcpd.conf": sample_config(role) + 'include "missing.conf";\n'})


def test_plan_prints_diffs_writes_candidates_and_never_touches_the_inputs(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    p, s = pair
    before = state_of(p.parent)
    out = tmp_path / "out" / "nested"
    result = run_plan(tmp_path, modify(Mclt=1800, Port=650), p, s, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "-  mclt 3600;" in result.stdout and "+  mclt 1800;" in result.stdout
    assert "+  peer port 650;" in result.stdout
    assert sorted(x.name for x in out.iterdir()) == ["primary.conf", "secondary.conf"]
    assert "mclt 1800;" in (out / "primary.conf").read_text()
    assert "  mclt" not in (out / "secondary.conf").read_text()
    assert "port 650;" in (out / "secondary.conf").read_text()
    assert state_of(p.parent) == before  # same bytes, same mtimes, no file left beside them


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
    p = pools_included("primary", tmp_path / "p")
    s = pools_included("secondary", tmp_path / "s")
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


def test_inspect_lists_each_peer_with_its_parameters_and_scopes(configs_dir: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(configs_dir / "campus-primary.conf")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (peer,) = doc["peers"]
    assert peer["name"] == "campus" and peer["role"] == "primary"
    assert peer["parameters"]["mclt"] == "1800" and peer["parameters"]["peer port"] == "51001"
    assert len(peer["scopes"]) == 5
    assert peer["scopes"][0]["label"].startswith("shared-network NORTH-HALL > subnet 10.10.2.0")


def test_schemas_command_writes_the_checked_in_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schemas", str(tmp_path)])
    assert result.exit_code == 0
    repo_schemas = Path(__file__).resolve().parent.parent / "schemas"
    for f in repo_schemas.glob("*.json"):
        assert (tmp_path / f.name).read_text() == f.read_text()


def test_plan_refuses_an_out_directory_where_a_candidate_would_overwrite_an_input(
    tmp_path: Path,
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    p, s = inputs / "primary.conf", inputs / "secondary.conf"
    p.write_text(sample_config("primary"))
    s.write_text(sample_config("secondary"))
    before = state_of(inputs)
    result = run_plan(tmp_path, modify(Mclt=1800), p, s, "--out", str(inputs))
    assert result.exit_code == 2, result.output
    error = json.loads(result.stderr)
    assert error["code"] == "invalid_request" and str(p) in error["message"]
    assert state_of(inputs) == before


# -- the worker's judgement, offline --------------------------------------------------------


def test_plan_rejects_a_missing_include_as_the_worker_does(tmp_path: Path) -> None:
    p = plain("primary", tmp_path / "p")
    s = missing_include("secondary", tmp_path / "s")  # the secondary is not even changed
    result = run_plan(tmp_path, modify(Mclt=1800), p, s)
    assert result.exit_code == 2, result.output
    error = json.loads(result.stderr)
    assert error["code"] == "config_error" and error["phase"] == "plan"
    assert f"included file {s.parent / 'missing.conf'} does not exist" in error["message"]
    assert error["detail"]["file"] == str(s)
    assert result.stdout == ""


def test_inspect_of_a_config_with_a_missing_include_exits_2_with_config_error(
    tmp_path: Path,
) -> None:
    conf = missing_include("primary", tmp_path / "p")
    result = CliRunner().invoke(main, ["inspect", str(conf)])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stderr)
    assert error["code"] == "config_error" and "missing.conf" in error["message"]


@pytest.mark.parametrize("levels", [MAX_INCLUDE_DEPTH, MAX_INCLUDE_DEPTH + 1])
def test_plan_refuses_includes_nested_deeper_than_the_worker_reads(
    tmp_path: Path, levels: int
) -> None:
    p = include_chain("primary", tmp_path / "p", levels)
    s = plain("secondary", tmp_path / "s")
    result = run_plan(tmp_path, modify(Mclt=1800), p, s)
    if levels <= MAX_INCLUDE_DEPTH:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output  # not cut off silently
    error = json.loads(result.stderr)
    assert error["code"] == "config_error"
    assert f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels" in error["message"]


def test_plan_validates_a_change_two_includes_down_with_both_levels_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dhcpd refuses ``mclt 0`` on a primary, the pair checks do not: only a validation of
    the candidate b.conf (through copies of dhcpd.conf and a.conf that include it) can catch
    it. The worker's own staging does it, beside the inputs, and removes what it wrote."""
    p = peer_two_levels_down("primary", tmp_path / "p")
    s = plain("secondary", tmp_path / "s")
    before = state_of(p.parent, s.parent)
    written: list[str] = []
    write = LocalFileHost.write

    async def spy(
        self: LocalFileHost,
        path: str,
        data: bytes,
        *,
        like: str | None = None,
        in_place: bool = False,
    ) -> None:
        written.append(path)
        await write(self, path, data, like=like, in_place=in_place)

    monkeypatch.setattr(LocalFileHost, "write", spy)
    result = run_plan(tmp_path, modify(Mclt=0), p, s, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    error = json.loads(result.stderr)
    assert error["code"] == "validation_failed" and error["phase"] == "validate"
    assert error["detail"]["file"] == str(p.parent / "b.conf")  # the live name, not the copy
    assert "must have mclt" in error["detail"]["message"]
    assert sorted(written) == sorted(
        str(p.parent / name)
        for name in (
            ".b.conf.offline-1.new",
            ".a.conf.offline-1.check",
            ".dhcpd.conf.offline-1.check",
        )
    )
    assert state_of(p.parent, s.parent) == before  # all of them removed, inputs untouched
    assert not (tmp_path / "out").exists()


# -- parity: plan says what the worker's dry run says ----------------------------------------

PairMaker = Callable[[Path], tuple[Path, Path]]
PAIRS: dict[str, PairMaker] = {
    "plain": lambda d: (plain("primary", d / "p"), plain("secondary", d / "s")),
    "pools included": lambda d: (
        pools_included("primary", d / "p"),
        pools_included("secondary", d / "s"),
    ),
    "peer two levels down": lambda d: (
        peer_two_levels_down("primary", d / "p"),
        peer_two_levels_down("secondary", d / "s"),
    ),
    "missing include": lambda d: (plain("primary", d / "p"), missing_include("secondary", d / "s")),
    "includes too deep": lambda d: (
        include_chain("primary", d / "p", MAX_INCLUDE_DEPTH + 1),
        plain("secondary", d / "s"),
    ),
    "files swapped": lambda d: (plain("secondary", d / "s"), plain("primary", d / "p")),
}
REQUESTS: dict[str, dict[str, Any]] = {
    "mclt": modify(Mclt=1800),
    "ports and delay": modify(Port=650, MaxResponseDelay=30),
    "unknown relationship": modify(Name="no-such-peer", Mclt=1800),
    "remove disable": remove("Disable"),
    "remove delete": remove("Delete"),
    "mclt 0 (only dhcpd refuses it)": modify(Mclt=0),
}
#: What FakeHost cannot judge: its validator accepts every candidate.
DHCPD_ONLY = {"mclt 0 (only dhcpd refuses it)"}


def fake_fleet(
    request: ModifyRequest | RemoveRequest, p: Path, s: Path
) -> tuple[Fleet, dict[str, str]]:
    """The two files' directories as FakeHosts with the inventory's addresses: a modify's
    servers by name, a remove's partner found by the address in its config."""
    names = (
        (request.params.primary_server, request.params.secondary_server)
        if isinstance(request, ModifyRequest)
        else (request.params.server, SECONDARY if request.params.server == PRIMARY else PRIMARY)
    )
    hosts = {}
    for name, main_file in zip(names, (p, s), strict=True):
        files = {str(f): f.read_bytes() for f in main_file.parent.iterdir()}
        texts = b"".join(files.values()).decode()
        addresses = tuple(re.findall(r"^\s*address ([0-9.]+);", texts, re.M))
        hosts[name] = FakeHost(name, str(main_file), files=files, addresses=addresses)
    return FakeFleet(hosts), dict(zip(names, ("primary", "secondary"), strict=True))


@pytest.mark.parametrize("backend", ["fake hosts", "local files"])
@pytest.mark.parametrize("pair_name", list(PAIRS))
@pytest.mark.parametrize("request_name", list(REQUESTS))
def test_plan_judges_a_request_as_the_workers_dry_run_does(
    tmp_path: Path, backend: str, pair_name: str, request_name: str
) -> None:
    if backend == "fake hosts" and request_name in DHCPD_ONLY:
        return  # the "local files" case compares it
    p, s = PAIRS[pair_name](tmp_path)
    body = REQUESTS[request_name]
    request = parse_request(json.dumps({**body, "dryRun": True}))
    if backend == "fake hosts":
        fleet, labels = fake_fleet(request, p, s)
    else:
        fleet, labels = local_pair(request, p, s, find_dhcpd())
    worker = asyncio.run(execute(request, "parity-1", fleet))
    out = tmp_path / "out"
    result = run_plan(tmp_path, body, p, s, "--out", str(out))
    assert result.exit_code == (0 if worker.outcome is Outcome.succeeded else 2), result.output
    if worker.error is not None:
        assert json.loads(result.stderr)["code"] == worker.error.code
        return
    candidates = {label: out / f"{label}.conf" for label in ("primary", "secondary")}
    planned = {
        label: digest_of(candidates[label]) if candidates[label].exists() else digest_of(main)
        for label, main in (("primary", p), ("secondary", s))
    }
    assert planned == {labels[srv.name]: srv.sha256After for srv in worker.servers}


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
