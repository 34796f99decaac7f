"""schemas/ is generated from the models; external validators must agree with the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.examples import MODIFY, REMOVE
from worker.schemas import DRAFT, generate, render

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_checked_in_schemas_match_the_models() -> None:
    expected = generate()
    on_disk = {p.name for p in SCHEMAS.glob("*.json")}
    assert on_disk == set(expected), "run: dhcp-failover-worker schemas"
    for name, schema in expected.items():
        assert (SCHEMAS / name).read_text() == render(schema), (
            f"{name} drifted from the models; run: dhcp-failover-worker schemas"
        )


@pytest.mark.parametrize("name", sorted(generate()))
def test_every_schema_declares_draft_2020_12_and_is_valid(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text())
    assert schema["$schema"] == DRAFT
    Draft202012Validator.check_schema(schema)


def test_contract_examples_validate_against_the_request_schema() -> None:
    validator = Draft202012Validator(json.loads((SCHEMAS / "request.schema.json").read_text()))
    validator.validate(MODIFY)
    validator.validate(REMOVE)


def test_schema_rejects_a_modify_without_any_setting() -> None:
    validator = Draft202012Validator(
        json.loads((SCHEMAS / "modify-request.schema.json").read_text())
    )
    body = json.loads(json.dumps(MODIFY))
    for key in ("Mclt", "Port", "LoadBalanceMaxSeconds", "MaxResponseDelay", "MaxUnackedUpdates"):
        del body["params"][key]
    assert not validator.is_valid(body)
