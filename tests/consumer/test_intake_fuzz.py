"""Fuzz of the real intake path: whatever the bytes and AMQP properties, one terminal event.

Each example goes the way a delivery goes through the consumer: ``read_delivery``, the result
the consumer builds (the delivery's own answer, or ``run_handler`` around a handler that
crashes), ``encode_result``, and the settlement ``decide`` picks. The bytes that would be
published must be UTF-8 JSON (no ``NaN``, no lone surrogate), a valid ``ResultEvent`` and valid
against the checked-in schema, with AMQP properties that encode; the failsafe event is checked
the same way with hostile text.

:data:`EXAMPLES` (10,000: about 40 s on the 2-core development machine) runs in CI too;
``DHCP_FAILOVER_FUZZ_EXAMPLES`` sets another count, e.g. for a longer run:
``DHCP_FAILOVER_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/consumer/test_intake_fuzz.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from pamqp.header import ContentHeader

from tests.consumer.payloads import PAYLOADS, PROPERTIES, TEXT
from worker.consumer.events import failsafe_outgoing, reply_allowed
from worker.consumer.intake import Delivery, read_delivery
from worker.consumer.results import encode_result, run_handler
from worker.consumer.settlement import Settlement, decide
from worker.messages import (
    MAX_COMMENT_LENGTH,
    ModifyRequest,
    Outcome,
    Phase,
    RemoveRequest,
    ResultData,
    ResultEvent,
    safe_text,
)
from worker.settings import Settings

EXAMPLES = int(os.environ.get("DHCP_FAILOVER_FUZZ_EXAMPLES", "10000"))
pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 40))

SCHEMA = jsonschema.Draft202012Validator(
    json.loads(
        (Path(__file__).resolve().parents[2] / "schemas" / "result-event.schema.json").read_text()
    )
)
SETTINGS = Settings(event_source="urn:fuzz")
POISON_CODES = {"request_too_large", "invalid_encoding", "invalid_json", "internal_error"}

# -- the path ---------------------------------------------------------------------------------


async def _crash(
    request: ModifyRequest | RemoveRequest, request_id: str, announce: object
) -> ResultData:
    raise RuntimeError(f"bug \udcff near {request.comment!r:.80}")


def _result(delivery: Delivery) -> ResultData:
    """What the consumer would publish: the delivery's own answer, or the handler's."""
    if delivery.request is None:
        return delivery.result(0)
    return asyncio.run(run_handler(_crash, delivery))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _published(body: bytes, message: Any) -> dict[str, Any]:
    """The checks a strict outside reader makes of published bytes; the parsed JSON."""
    raw: dict[str, Any] = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    SCHEMA.validate(raw)
    ResultEvent.model_validate_json(body)
    ContentHeader(0, len(body), message.properties).marshal()  # the properties encode
    return raw


def _wire(value: object) -> str | None:
    """The value if an AMQP short string off the wire could be it (UTF-8, 255 bytes), else
    None: what the consumer passes on as the event's AMQP ``correlation_id``."""
    if isinstance(value, str) and safe_text(value) == value and len(value.encode()) <= 255:
        return value
    return None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    body=PAYLOADS,
    message_id=PROPERTIES,
    routing_key=PROPERTIES,
    correlation_id=PROPERTIES,
    reply_to=PROPERTIES,
    reason=TEXT,
)
def test_any_delivery_ends_in_one_terminal_event_that_reads_back(
    body: bytes,
    message_id: object,
    routing_key: object,
    correlation_id: object,
    reply_to: object,
    reason: str,
) -> None:
    delivery = read_delivery(
        body, message_id=message_id, routing_key=routing_key, correlation_id=correlation_id
    )
    assert (delivery.request is None) != (delivery.rejection is None)
    event(delivery.rejection.code if delivery.rejection else "valid request")
    data = _result(delivery)
    amqp_correlation = _wire(correlation_id) or delivery.request_id
    out = encode_result(delivery, data, SETTINGS, correlation_id=amqp_correlation)

    assert not out.failsafe, "the normal encoding failed: a bug, not a fuzz finding"
    raw = _published(out.message.body, out.message)
    assert raw["id"] == out.event_id == out.message.message_id
    assert raw["id"] == f"{delivery.event_key}/{data.outcome.value}"
    assert raw["data"]["outcome"] == data.outcome.value
    if delivery.request is None:
        assert delivery.rejection is not None
        assert data.outcome is (
            Outcome.failed if delivery.rejection.code == "internal_error" else Outcome.rejected
        )
        assert data.error == delivery.rejection
        assert delivery.poison == (delivery.rejection.code in POISON_CODES)
        if delivery.rejection.code == "invalid_request":
            # One parser reads the raw body and validates it: pydantic never finds bad JSON
            # in bytes intake took for JSON.
            assert all(item["type"] != "json_invalid" for item in delivery.rejection.detail)
    else:
        assert data.outcome is Outcome.failed and data.error is not None
        assert data.error.code == "internal_error"
        assert data.comment == delivery.request.comment
    comment = raw["data"]["comment"]
    assert comment is None or len(comment) <= MAX_COMMENT_LENGTH

    settlement = decide(published=True, poison=delivery.poison or out.failsafe)
    assert settlement is (Settlement.dead_letter if delivery.poison else Settlement.ack)
    assert isinstance(reply_allowed(reply_to, SETTINGS.reply_prefixes), bool)

    failsafe = failsafe_outgoing(
        event_key=delivery.event_key,
        operation=delivery.operation,
        request_id=delivery.request_id,
        command=delivery.command,
        dry_run=delivery.dry_run,
        phase=Phase.validate,
        reason=reason,
        lost_outcome=data.outcome,
        source=SETTINGS.event_source,
        correlationid=delivery.correlation_id,
        correlation_id=_wire(reply_to) or reason,
    )
    assert _published(failsafe.message.body, failsafe.message)["id"] == (
        f"{delivery.event_key}/failed"
    )
