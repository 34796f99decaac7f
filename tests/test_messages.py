"""The request/event contract (docs/contract.md §2-§3) as the models enforce it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from tests.examples import MODIFY, REMOVE
from worker.messages import (
    DeconfigureAction,
    ModifyRequest,
    Outcome,
    RemoveRequest,
    ResultData,
    ServerResult,
    make_event,
    parse_request,
    routing_key,
)


def with_params(base: dict[str, Any], **params: Any) -> bytes:
    body = json.loads(json.dumps(base))
    body["params"].update(params)
    body["params"] = {k: v for k, v in body["params"].items() if v is not None}
    return json.dumps(body).encode()


def test_the_contract_modify_example_parses_with_every_setting() -> None:
    req = parse_request(json.dumps(MODIFY))
    assert isinstance(req, ModifyRequest)
    assert req.params.mclt == 1800 and req.params.port == 647
    assert req.params.max_unacked_updates == 10 and req.comment == "CHG-1234 shorten MCLT"


def test_micetro_camel_case_spelling_is_accepted() -> None:
    body = {
        "requestId": "r1",
        "command": "ModifyDHCPFailoverRelationship",
        "params": {
            "name": "dhcp-failover",
            "primaryServer": "a.example",
            "secondaryServer": "b.example",
            "loadBalanceMaxSeconds": 5,
        },
    }
    req = parse_request(json.dumps(body))
    assert isinstance(req, ModifyRequest)
    assert req.params.load_balance_max_seconds == 5


def test_remove_defaults_to_disable_and_accepts_a_list_of_names() -> None:
    req = parse_request(json.dumps(REMOVE))
    assert isinstance(req, RemoveRequest)
    assert req.params.deconfigure_action is DeconfigureAction.disable
    body = json.loads(json.dumps(REMOVE))
    del body["params"]["DeconfigureAction"]
    body["params"]["Name"] = ["a", "b"]
    req2 = parse_request(json.dumps(body))
    assert isinstance(req2, RemoveRequest)
    assert req2.params.names == ("a", "b")
    assert req2.params.deconfigure_action is DeconfigureAction.disable


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (with_params(MODIFY, Name='x" { deny all; }'), "Name"),
        (with_params(MODIFY, Name="two words"), "Name"),
        (with_params(MODIFY, Name="a\nb"), "Name"),
        (with_params(MODIFY, PrimaryServer="../etc/passwd"), "PrimaryServer"),
        (with_params(MODIFY, SecondaryServer="dhcp1.example.net"), "different"),
        (with_params(MODIFY, Port=70000), "Port"),
        (with_params(MODIFY, Port=0), "Port"),
        (with_params(MODIFY, Mclt=-1), "Mclt"),
        (with_params(MODIFY, Mclt="1800"), "Mclt"),
        (with_params(MODIFY, Mclt=True), "Mclt"),
        (with_params(MODIFY, MaxResponseDelay=0), "MaxResponseDelay"),
        (with_params(MODIFY, Unknown=1), "Unknown"),
        (
            with_params(
                MODIFY,
                Mclt=None,
                Port=None,
                LoadBalanceMaxSeconds=None,
                MaxResponseDelay=None,
                MaxUnackedUpdates=None,
            ),
            "at least one setting",
        ),
        (with_params(REMOVE, DeconfigureAction="disable"), "DeconfigureAction"),
        (with_params(REMOVE, Name=[]), "empty"),
        (with_params(REMOVE, Name=["a", "a"]), "twice"),
        (json.dumps({**MODIFY, "command": "DeleteEverything"}).encode(), "command"),
        (json.dumps({**MODIFY, "requestId": "a b"}).encode(), "requestId"),
        (json.dumps({**MODIFY, "comment": "x" * 2000}).encode(), "comment"),
    ],
)
def test_unsafe_or_out_of_range_input_is_rejected_with_a_precise_reason(
    body: bytes, needle: str
) -> None:
    with pytest.raises(ValidationError) as info:
        parse_request(body)
    assert needle in str(info.value)


def test_event_matches_the_contract_envelope() -> None:
    data = ResultData(
        requestId="r1",
        command="ModifyDHCPFailoverRelationship",
        outcome=Outcome.succeeded,
        servers=[ServerResult(name="dhcp1", role="primary", changed=True, state="new")],
        durationMs=412,
    )
    event = make_event(
        data,
        operation="modify",
        subject="dhcp-failover",
        event_key="r1",
        correlation_id="r1",
        time=datetime(2026, 11, 25, 14, 3, 11, 482000, tzinfo=UTC),
    )
    doc = json.loads(event.to_json())
    assert doc["specversion"] == "1.0"
    assert doc["id"] == "r1/succeeded"
    assert doc["type"] == "net.dhcp.failover.modify.succeeded"
    assert doc["time"] == "2026-11-25T14:03:11.482Z"
    assert doc["datacontenttype"] == "application/json"
    assert doc["correlationid"] == "r1"
    assert doc["data"]["outcome"] == "succeeded" and doc["data"]["error"] is None
    assert routing_key("modify", Outcome.succeeded) == "event.modify.succeeded"


def test_event_is_accepted_by_the_official_cloudevents_sdk() -> None:
    from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_rabbitmq
    from cloudevents.core.formats.json import JSONFormat

    data = ResultData(requestId="r2", command=None, outcome=Outcome.rejected)
    event = make_event(data, operation="remove", subject=None, event_key="r2", correlation_id=None)
    message = RabbitMQMessage(
        headers={}, content_type="application/cloudevents+json", body=event.to_json()
    )
    ce = from_rabbitmq(message, JSONFormat())
    assert ce.get_id() == "r2/rejected"
    assert ce.get_type() == "net.dhcp.failover.remove.rejected"
    assert ce.get_source() == "urn:dhcp-failover-worker"
    assert ce.get_subject() is None
    data_out = ce.get_data()
    assert isinstance(data_out, dict) and data_out["outcome"] == "rejected"
