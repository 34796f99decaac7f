"""``read_delivery`` without a broker: ids, operations, keys and the wording of rejections."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests.consumer.support import MODIFY, MODIFY_ID, REMOVE, modify, with_mclt
from worker.consumer import intake
from worker.consumer.intake import read_delivery
from worker.consumer.results import build_event
from worker.consumer.schema_errors import format_loc
from worker.messages import MAX_COMMENT_LENGTH, MAX_REQUEST_BYTES, ModifyRequest, Outcome, Phase
from worker.settings import Settings

pytestmark = pytest.mark.timeout(10)


def read(
    body: bytes | dict[str, Any],
    *,
    message_id: str | None = None,
    routing_key: str | None = "request.modify",
    correlation_id: str | None = None,
) -> Any:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return read_delivery(
        data, message_id=message_id, routing_key=routing_key, correlation_id=correlation_id
    )


def test_the_body_request_id_wins_over_the_amqp_message_id() -> None:
    delivery = read(MODIFY, message_id="amqp-1")
    assert isinstance(delivery.request, ModifyRequest)
    assert delivery.request_id == delivery.event_key == delivery.correlation_id == MODIFY_ID


def test_the_amqp_message_id_is_the_request_id_when_the_body_has_none() -> None:
    delivery = read(modify(requestId=None), message_id="amqp-1")
    assert delivery.rejection is None
    assert delivery.request_id == delivery.event_key == "amqp-1"


def test_the_pascal_case_request_id_key_is_accepted_too() -> None:
    body = modify(requestId=None)
    body["RequestId"] = "pascal-1"
    assert read(body).request_id == "pascal-1"


def test_without_any_id_the_event_key_is_the_sha256_of_the_body() -> None:
    body = json.dumps(modify(requestId=None)).encode()
    delivery = read(body, correlation_id="caller-7")
    assert delivery.rejection is not None
    assert delivery.rejection.code == "missing_request_id"
    assert delivery.event_key == "sha256:" + hashlib.sha256(body).hexdigest()
    assert delivery.request_id is None
    assert delivery.correlation_id == "caller-7"  # nothing better to correlate on


@pytest.mark.parametrize(
    ("body", "routing_key", "operation"),
    [
        (MODIFY, "request.remove", "modify"),  # the command says, whatever the key
        (REMOVE, None, "remove"),
        (b"not json", "request.remove", "remove"),  # the key says when the body cannot
        (modify(command="Frobnicate"), "request.modify", "modify"),
        (modify(command="Frobnicate"), "request.frobnicate", "unknown"),
        (b"not json", "elsewhere", "unknown"),
        (b"not json", None, "unknown"),
    ],
)
def test_the_operation_comes_from_the_command_then_the_routing_key_then_is_unknown(
    body: bytes | dict[str, Any], routing_key: str | None, operation: str
) -> None:
    assert read(body, routing_key=routing_key).operation == operation


def test_a_body_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not() -> None:
    base = json.dumps(modify(comment="")).encode()
    pad = MAX_REQUEST_BYTES - len(base)
    at_limit = json.dumps(modify(comment="x" * pad)).encode()
    assert len(at_limit) == MAX_REQUEST_BYTES
    delivery = read(at_limit)
    assert delivery.rejection is not None and delivery.rejection.code == "invalid_request"
    assert "comment" in delivery.rejection.message  # too long a comment, not too big a body
    over = read(json.dumps(modify(comment="x" * (pad + 1))).encode(), message_id="m")
    assert over.rejection is not None and over.rejection.code == "request_too_large"
    assert over.poison
    assert over.rejection.detail == {"size": MAX_REQUEST_BYTES + 1, "limit": MAX_REQUEST_BYTES}


@pytest.mark.parametrize(
    ("body", "code", "poison"),
    [
        (b"\xc3\x28", "invalid_encoding", True),
        (b'{"a": ', "invalid_json", True),
        (b"", "invalid_json", True),
        (b"null", "invalid_request", False),
        (b'"a string"', "invalid_request", False),
    ],
)
def test_only_unreadable_bytes_are_poison(body: bytes, code: str, poison: bool) -> None:
    delivery = read(body, message_id="m")
    assert delivery.rejection is not None
    assert (delivery.rejection.code, delivery.poison) == (code, poison)


def test_a_schema_error_names_every_location_and_copies_only_short_scalar_inputs() -> None:
    params = {**MODIFY["params"], "Mclt": -1, "Name": "bad name" * 100, "Port": {"x": 1}}
    delivery = read(modify(params=params))
    assert delivery.rejection is not None
    detail = {item["loc"]: item for item in delivery.rejection.detail}
    assert set(detail) == {"params.Mclt", "params.Name", "params.Port"}
    assert detail["params.Mclt"]["input"] == -1
    assert detail["params.Name"]["input"] == ("bad name" * 100)[:200]
    assert "input" not in detail["params.Port"]
    assert detail["params.Mclt"]["type"] == "greater_than_equal"
    message = delivery.rejection.message
    assert message.startswith("invalid request: params.Name: String should match pattern")
    assert "params.Mclt: Input should be greater than or equal to 0" in message


def test_the_error_message_spells_out_three_errors_and_counts_the_rest() -> None:
    params = {
        "Name": "a b",
        "PrimaryServer": "x y",
        "SecondaryServer": "z w",
        "Mclt": -1,
        "Port": 0,
    }
    delivery = read(modify(params=params))
    assert delivery.rejection is not None
    assert len(delivery.rejection.detail) == 5
    assert delivery.rejection.message.endswith("(and 2 more)")


def test_an_unknown_command_is_reported_at_command_with_the_tag() -> None:
    delivery = read(modify(command="DropAll"))
    assert delivery.rejection is not None
    [item] = delivery.rejection.detail
    assert (item["loc"], item["input"], item["type"]) == ("command", "DropAll", "union_tag_invalid")
    assert delivery.command is None  # never echo an unknown command as if it were one


def test_a_rejected_request_echoes_its_relationship_only_when_it_is_a_safe_name() -> None:
    ok = read(modify(params={**MODIFY["params"], "Mclt": -1}))
    assert ok.subject == "dhcp-failover"
    unsafe = read(modify(params={**MODIFY["params"], "Name": "a\nb"}))
    assert unsafe.subject is None
    listed = read({**REMOVE, "params": {**REMOVE["params"], "Name": ["a", "b"], "X": 1}})
    assert listed.subject == "a,b"


def test_a_valid_request_carries_subject_servers_and_dry_run() -> None:
    delivery = read(modify(dryRun=True))
    assert delivery.subject == "dhcp-failover"
    assert delivery.servers == "dhcp1.example.net,dhcp2.example.net"
    assert delivery.dry_run is True
    assert read(REMOVE).servers == "dhcp1.example.net"


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        (("ModifyDHCPFailoverRelationship", "params", "Mclt"), "params.Mclt"),
        (
            ("RemoveDHCPFailoverRelationships", "params", "Name", "list[constrained-str]", 1),
            "params.Name[1]",
        ),
        (("RemoveDHCPFailoverRelationships", "params", "Name", "constrained-str"), "params.Name"),
        ((), ""),
        (("requestId",), "requestId"),
    ],
)
def test_error_locations_read_like_paths_into_the_request(
    loc: tuple[int | str, ...], text: str
) -> None:
    assert format_loc(loc) == text


UNREADABLE = {
    "nested 30,000 deep": b"[" * 30_000,
    "nested 202 deep, closed": b"[" * 202 + b"]" * 202,
    "an integer of 5,000 digits": b'{"requestId": "big-1", "n": ' + b"7" * 5_000 + b"}",
    "a 5,000-digit Mclt": with_mclt("9" * 5_000),
    "NaN": with_mclt("NaN"),
    "Infinity": with_mclt("-Infinity"),
    "a lone surrogate escape": json.dumps(modify(comment="\ud800")).encode(),
    "a lone low surrogate escape": b'{"requestId": "\\udc00x"}',
}


@pytest.mark.parametrize("body", UNREADABLE.values(), ids=list(UNREADABLE))
def test_json_the_request_parser_cannot_read_is_invalid_json_and_poison(body: bytes) -> None:
    delivery = read(body, message_id="m-1")
    assert delivery.rejection is not None
    assert (delivery.rejection.code, delivery.poison) == ("invalid_json", True)
    assert delivery.event_key == "m-1"
    assert set(delivery.rejection.detail) == {"line", "column"}
    assert len(body) < MAX_REQUEST_BYTES


@pytest.mark.parametrize("number", ["1e999", "-1e999", str(10**30), str(-(10**300))])
def test_a_number_json_readers_cannot_hold_is_not_echoed_into_the_event(number: str) -> None:
    delivery = read(with_mclt(number), message_id="m-1")
    assert delivery.rejection is not None and delivery.rejection.code == "invalid_request"
    [item] = delivery.rejection.detail
    assert item["loc"] == "params.Mclt" and "input" not in item
    event = build_event(delivery, delivery.result(0), Settings())
    doc = json.loads(event.to_json(), parse_constant=_refuse)
    assert doc["data"]["error"]["detail"] == delivery.rejection.detail


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in an event")


def test_a_bug_while_reading_is_failed_internal_error_and_poison(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(body: bytes | str) -> None:
        raise LookupError("codec vanished")

    monkeypatch.setattr(intake, "parse_request", crash)
    delivery = read(MODIFY, message_id="amqp-7", routing_key="request.remove")
    assert delivery.request is None and delivery.rejection is not None
    assert delivery.rejection.code == "internal_error"
    assert delivery.rejection.phase is Phase.validate
    assert delivery.rejection.message == "LookupError: codec vanished"
    assert (delivery.outcome, delivery.poison) == (Outcome.failed, True)
    assert (delivery.event_key, delivery.operation) == ("amqp-7", "remove")
    assert delivery.result(5).outcome is Outcome.failed


@pytest.mark.parametrize("value", [b"request.modify", 7, 1.5, ["m"], {"k": "v"}])
def test_amqp_properties_of_another_type_count_as_absent(value: object) -> None:
    delivery = read_delivery(
        json.dumps(modify(requestId=None)).encode(),
        message_id=value,
        routing_key=value,
        correlation_id=value,
    )
    assert delivery.rejection is not None and delivery.rejection.code == "missing_request_id"
    assert (delivery.request_id, delivery.correlation_id) == (None, None)
    assert delivery.operation == "modify"  # from the command; the key said nothing


@pytest.mark.parametrize(
    ("comment", "carried"),
    [
        ("CHG-9 bad mclt", "CHG-9 bad mclt"),
        ("x" * 5000, "x" * MAX_COMMENT_LENGTH),
        (42, None),
    ],
)
def test_a_request_rejected_at_intake_carries_its_comment_when_it_is_text(
    comment: object, carried: str | None
) -> None:
    body = modify(comment=comment, params={**MODIFY["params"], "Mclt": -1})
    delivery = read(body)
    assert delivery.rejection is not None and delivery.rejection.code == "invalid_request"
    assert delivery.comment == carried
    assert delivery.result(0).comment == carried
