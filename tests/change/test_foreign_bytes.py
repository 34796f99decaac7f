"""Configs holding bytes that are not UTF-8 (a Latin-1 comment, a Latin-1 file name): every
result the coordinator hands the consumer must encode as UTF-8 JSON, and every journal must
read back exactly, whatever the change did."""

from __future__ import annotations

import json

import pytest

from tests.change.conftest import World, in_dir, make_world
from tests.change.helpers import (
    PRIMARY_CONF,
    SECONDARY_CONF,
    SimulatedCrash,
    journals,
    modify_request,
)
from worker.change.coordinator import execute
from worker.demo import PRIMARY, SAMPLE_ADDRESSES, SECONDARY
from worker.messages import Outcome, ResultData, make_event

pytestmark = pytest.mark.timeout(20)


def encodes(result: ResultData) -> dict[str, object]:
    """The event the consumer would publish, as a strict UTF-8 JSON reader sees it."""
    event = make_event(result, operation="modify", subject="s", event_key="k", correlation_id=None)
    decoded: dict[str, object] = json.loads(event.to_json().decode("utf-8", "strict"))
    return decoded


def latin1_world(**replacements: bytes) -> World:
    configs = {}
    for name, text in ((PRIMARY, PRIMARY_CONF), (SECONDARY, SECONDARY_CONF)):
        data = text.encode()
        for old, new in replacements.items():
            data = data.replace(old.encode(), new)
        configs[name] = data
    return make_world(configs, SAMPLE_ADDRESSES)  # type: ignore[arg-type]


async def test_a_rejection_quoting_a_foreign_byte_still_encodes() -> None:
    world = latin1_world(**{"  mclt 3600;": b"  mclt 3600;\n  gr\xfc\xdfe 1;"})

    result = await execute(modify_request(), "req-1", world.fleet)

    assert result.outcome is Outcome.rejected
    assert result.error is not None and result.error.code == "peer_statement_unrecognised"
    error = encodes(result)["data"]["error"]  # type: ignore[index]
    assert "unrecognised statement 'gr" in error["message"]


async def test_a_dry_run_on_latin1_configs_reports_an_encodable_diff() -> None:
    world = latin1_world(**{"  mclt 3600;": b"  mclt 3600;  # Standort M\xfcnchen"})

    result = await execute(modify_request(dry_run=True), "req-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert "M\ufffdnchen" in result.servers[0].diff and result.servers[0].diffNonUtf8
    encodes(result)


async def test_a_change_in_a_file_with_a_latin1_name_journals_it_exactly_and_resumes() -> None:
    # The peer block lives in an included file whose name has a Latin-1 byte: the journal
    # must name that file exactly (a resumed change looks it up), though UTF-8 cannot.
    peer = PRIMARY_CONF[PRIMARY_CONF.index("failover peer") : PRIMARY_CONF.index("}\n") + 2]
    include = b'include "/etc/dhcp/M\xfcnchen.conf";\n'
    world = make_world(
        {PRIMARY: PRIMARY_CONF.replace(peer, "").encode() + include, SECONDARY: SECONDARY_CONF},
        SAMPLE_ADDRESSES,
    )
    name = "/etc/dhcp/M\udcfcnchen.conf"  # as the engine decodes it (surrogateescape)
    world.primary.files[name] = peer.encode()
    world.secondary.crash_at = lambda op: op[0] == "replace" and op[2].endswith("dhcpd.conf")
    with pytest.raises(SimulatedCrash):
        await execute(modify_request(), "req-1", world.fleet)
    world.secondary.crash_at = lambda op: False
    (journal,) = journals(in_dir(world.primary))
    assert name in json.loads(world.primary.files[journal])["files"][0]["path"]
    world.primary.files[journal].decode("ascii")

    result = await execute(modify_request(), "req-1", world.fleet)

    assert result.outcome is Outcome.succeeded, result.error
    assert b"mclt 1800;" in world.primary.files[name]
    encodes(result)
