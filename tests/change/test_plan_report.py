"""A server's report as the event and the journal carry it: capped, redacted, UTF-8-safe;
and plans that proceed (mclt on the secondary) or change nothing (duplicates)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.change.conftest import make_world
from tests.change.helpers import PRIMARY_CONF, SECONDARY_CONF, modify_request, remove_request
from tests.dhcpconf.pairs import MAIN, PRIMARY, SECONDARY
from tests.dhcpconf.unidiff import change_runs
from tests.fakes import FakeHost
from worker.change.coordinator import execute
from worker.change.model import ServerChange, planned_change
from worker.change.plan import ServerPlan, plan_modify, plan_remove
from worker.change.snapshot import Snapshot, decode
from worker.demo import PRIMARY as DHCP1
from worker.demo import SAMPLE_ADDRESSES
from worker.demo import SECONDARY as DHCP2
from worker.dhcpconf import ConfigSet
from worker.messages import ModifyParams, Outcome, RemoveParams

pytestmark = pytest.mark.timeout(20)

STAMP = "20260101T000000.000000Z"


def snapshot(server: str, data: bytes) -> Snapshot:
    return Snapshot(server=server, main=MAIN, raw={MAIN: data}, base="/etc/dhcp")


def parsed(data: bytes) -> ConfigSet:
    return ConfigSet.parse({MAIN: decode(data)}, MAIN)


def change_of(plan: ServerPlan, data: bytes, max_diff_bytes: int = 64 * 1024) -> ServerChange:
    return planned_change(
        FakeHost(plan.server), snapshot(plan.server, data), plan, "req-1", STAMP, max_diff_bytes
    )


def modify(**settings: int) -> ModifyParams:
    return ModifyParams.model_validate(
        {"Name": "fo", "PrimaryServer": "dhcp1", "SecondaryServer": "dhcp2", **settings}
    )


def pools(count: int) -> str:
    return "".join(
        f"subnet 10.1.{i}.0 netmask 255.255.255.0 {{\n  pool {{\n"
        f'    failover peer "fo";\n    range 10.1.{i}.10 10.1.{i}.99;\n  }}\n}}\n'
        for i in range(count)
    )


def delete_plans(primary: str, secondary: str) -> list[ServerPlan]:
    params = RemoveParams.model_validate(
        {"Server": "dhcp1", "Name": "fo", "DeconfigureAction": "Delete"}
    )
    configs = {"dhcp1": parsed(primary.encode()), "dhcp2": parsed(secondary.encode())}
    return plan_remove(params, configs, {"fo": ("dhcp1", "dhcp2")})


# -- B: the size cap -------------------------------------------------------------------------


def test_a_diff_over_the_cap_is_cut_at_a_line_and_described_whole() -> None:
    secondary_text = SECONDARY + pools(200)
    plan = delete_plans(PRIMARY + pools(200), secondary_text)[1]
    full = plan.diff()
    assert len(full.encode()) > 4096
    report = change_of(plan, secondary_text.encode(), max_diff_bytes=4096).report
    shown = report.diff
    assert report.diffTruncated and shown.endswith("\n") and full.startswith(shown)
    assert len(shown.encode()) <= 4096 < len(full[: full.index("\n", len(shown)) + 1].encode())
    runs = change_runs(full)
    assert report.diffFull is not None
    assert report.diffFull.model_dump() == {
        "sha256": hashlib.sha256(full.encode()).hexdigest(),
        "bytes": len(full.encode()),
        "lines": full.count("\n"),
        "added": sum(len(a) for _, a in runs),
        "removed": sum(len(r) for r, _ in runs),
    }
    assert report.diffFull.removed == 10 + 201 * 6  # the peer block, every subnet
    assert plan.diff() == full  # the offline plan still has all of it


def test_a_diff_of_exactly_the_cap_is_whole_and_one_byte_more_is_cut() -> None:
    plan = plan_modify(modify(Mclt=900), parsed(PRIMARY.encode()), parsed(SECONDARY.encode()))[0]
    size = len(plan.diff().encode())
    report = change_of(plan, PRIMARY.encode(), max_diff_bytes=size).report
    assert report.diff == plan.diff()
    assert not report.diffTruncated and report.diffFull is None
    report = change_of(plan, PRIMARY.encode(), max_diff_bytes=size - 1).report
    assert (
        report.diffTruncated and report.diff == plan.diff()[: plan.diff().rindex("\n", 0, -1) + 1]
    )


def test_a_cap_inside_a_multibyte_character_still_cuts_at_a_line() -> None:
    text = PRIMARY.replace("  primary;\n", "  primary; # Zürich Süd\n")
    plan = plan_modify(modify(Port=700), parsed(text.encode()), parsed(SECONDARY.encode()))[0]
    cap = plan.diff().encode().index("ü".encode()) + 1  # between the two bytes of ü
    report = change_of(plan, text.encode(), max_diff_bytes=cap).report
    assert report.diffTruncated and len(report.diff.encode()) <= cap
    assert report.diff.endswith("\n") and "Z" not in report.diff.split("@@")[-1]


# -- C: bytes that are not UTF-8 ---------------------------------------------------------------


def latin1(text: str) -> bytes:
    return text.replace("  primary;\n", "  primary; # Standort München\n").encode("latin-1")


def test_latin1_bytes_show_as_replacement_characters_and_the_files_keep_them() -> None:
    primary_bytes = latin1(PRIMARY.replace("  port 647;", "  port 647; # Ost-Süd"))
    secondary_bytes = SECONDARY.replace("  secondary;\n", "  secondary; # Zürich\n").encode()
    plans = plan_modify(modify(Port=700), parsed(primary_bytes), parsed(secondary_bytes))
    changes = [
        change_of(p, data) for p, data in zip(plans, (primary_bytes, secondary_bytes), strict=True)
    ]
    primary = changes[0].report
    assert primary.diffNonUtf8
    secondary = changes[1].report  # UTF-8 text shows as itself, unflagged
    assert "  secondary; # Zürich\n" in secondary.diff and not secondary.diffNonUtf8
    assert "\udcfc" not in primary.diff
    assert "  primary; # Standort M\ufffdnchen\n" in primary.diff
    assert "-  port 647; # Ost-S\ufffdd\n+  port 700; # Ost-S\ufffdd\n" in primary.diff
    expected = primary_bytes.replace(b"port 647;", b"port 700;").replace(b"port 847;", b"port 700;")
    [file] = changes[0].files
    assert file.after == expected and file.before == primary_bytes
    assert file.after_sha == hashlib.sha256(expected).hexdigest()
    assert primary.sha256Before == hashlib.sha256(primary_bytes).hexdigest()
    json.dumps(primary.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
    primary.model_dump_json().encode("utf-8")


# -- D: key material -----------------------------------------------------------------------------

NEXT_KEY = 'key "ddns" {\n  secret "c2VjcmV0LXZhbHVl";\n  algorithm hmac-sha256;\n}\n'


def with_key(text: str) -> str:
    return text.replace("}\nsubnet", "}\n" + NEXT_KEY + "subnet", 1)


def test_a_secret_beside_the_peer_block_is_redacted_in_the_report_only() -> None:
    primary = with_key(PRIMARY)
    plan = plan_modify(
        modify(LoadBalanceMaxSeconds=5), parsed(primary.encode()), parsed(SECONDARY.encode())
    )[0]
    report = change_of(plan, primary.encode()).report
    assert '   secret "<redacted>";\n' in report.diff and "c2VjcmV0" not in report.diff
    assert '   secret "c2VjcmV0LXZhbHVl";\n' in plan.diff()  # offline plan: the operator's own


def test_the_summary_of_a_cut_diff_is_of_the_redacted_text() -> None:
    secondary = with_key(SECONDARY + pools(50)).replace("}\nkey", "}\n\nkey")
    plan = delete_plans(PRIMARY + pools(50), secondary)[1]
    report = change_of(plan, secondary.encode(), max_diff_bytes=1024).report
    redacted = plan.diff().replace('"c2VjcmV0LXZhbHVl"', '"<redacted>"')
    assert redacted != plan.diff() and report.diffFull is not None
    assert report.diffFull.sha256 == hashlib.sha256(redacted.encode()).hexdigest()
    assert "c2VjcmV0" not in report.diff


# -- E and F through the coordinator ---------------------------------------------------------

SECONDARY_WITH_MCLT = SECONDARY_CONF.replace("  secondary;\n", "  secondary;\n  mclt 3600;\n")


async def test_a_modify_of_a_pair_with_mclt_on_the_secondary_succeeds_and_leaves_it() -> None:
    world = make_world({DHCP1: PRIMARY_CONF, DHCP2: SECONDARY_WITH_MCLT}, SAMPLE_ADDRESSES)
    result = await execute(modify_request(Mclt=1800, Port=648), "req-mclt-1", world.fleet)
    assert result.outcome is Outcome.succeeded, result.error
    assert world.secondary.config == SECONDARY_WITH_MCLT.replace("port 647;", "port 648;").encode()
    assert b"mclt 1800;" in world.primary.config


@pytest.mark.parametrize("action", ["Disable", "Delete", "None"])
async def test_a_remove_of_a_pair_with_mclt_on_the_secondary_succeeds(action: str) -> None:
    world = make_world({DHCP1: PRIMARY_CONF, DHCP2: SECONDARY_WITH_MCLT}, SAMPLE_ADDRESSES)
    result = await execute(remove_request(action=action), "req-mclt-2", world.fleet)
    assert result.outcome is Outcome.succeeded, result.error
    assert b"failover peer" not in world.secondary.config


async def test_a_modify_to_the_value_of_the_last_duplicate_touches_and_restarts_nothing() -> None:
    twice = "  max-response-delay 30;\n  max-response-delay 60;\n"
    configs = {
        DHCP1: PRIMARY_CONF.replace("  max-response-delay 60;\n", twice),
        DHCP2: SECONDARY_CONF.replace("  max-response-delay 60;\n", twice),
    }
    world = make_world(dict(configs), SAMPLE_ADDRESSES)
    result = await execute(modify_request(MaxResponseDelay=60), "req-dup-1", world.fleet)
    assert result.outcome is Outcome.succeeded, result.error
    assert [s.changed for s in result.servers] == [False, False]
    assert [h.restart_count() for h in world.hosts.values()] == [0, 0]
    assert {n: h.config for n, h in world.hosts.items()} == {
        n: c.encode() for n, c in configs.items()
    }
