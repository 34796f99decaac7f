"""Rollout request ids: the contract's shape, always a valid request id, never a dry run's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from worker.messages import RelationshipName, RequestId, ServerName
from worker.rollout.ids import (
    check_rollout_id,
    new_rollout_id,
    preflight_id,
    request_id,
)

REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)

rollout_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,39}\Z")
relationships = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
servers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")


def test_the_contract_shape() -> None:
    rid = request_id("chg42", "dhcp-failover", "dhcp1.example.net")
    assert rid == "chg42.dhcp-failover.dhcp1.example.net"
    assert preflight_id(rid) == "chg42.dhcp-failover.dhcp1.example.net:preflight"


@given(rollout_ids, relationships, servers)
def test_every_id_is_a_request_id_and_dry_runs_never_collide(
    rollout: str, relationship: str, primary: str
) -> None:
    TypeAdapter(RelationshipName).validate_python(relationship)
    TypeAdapter(ServerName).validate_python(primary)
    rid = request_id(rollout, relationship, primary)
    dry = preflight_id(rid)
    assert REQUEST_ID.validate_python(rid) == rid
    assert REQUEST_ID.validate_python(dry) == dry
    assert ":" not in rid and dry.endswith(":preflight")  # no real id has a colon
    assert rid.startswith(rollout + ".")
    assert request_id(rollout, relationship, primary) == rid  # a rerun gets the same id
    if len(rid) < len(rollout) + len(relationship) + len(primary) + 2:  # too long: digested
        assert rid.count(".") == 1


def test_distinct_pairs_get_distinct_digested_ids() -> None:
    long = "dhcp." + "x" * 240
    a = request_id("r1", "alpha", long)
    b = request_id("r1", "beta", long)
    assert a != b and len(a) <= 128 and a.count(".") == 1


def test_rollout_ids() -> None:
    made = new_rollout_id()
    assert check_rollout_id(made) == made and made != new_rollout_id()
    for bad in ("", "a.b", "a:b", "-a", "x" * 41, "a b"):
        with pytest.raises(ValueError, match="not a rollout id"):
            check_rollout_id(bad)
