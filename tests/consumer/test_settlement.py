"""The decisions of the consumer without a broker: settlement, handler errors, event shape."""

from __future__ import annotations

import asyncio
import json

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_structured_event

from tests.consumer.support import MODIFY, MODIFY_ID, modify
from worker.consumer.events import (
    EVENT_CONTENT_TYPE,
    EventPublisher,
    decode_event,
    encode_event,
    event_message,
    event_routing_key,
    reply_allowed,
)
from worker.consumer.intake import Delivery, read_delivery
from worker.consumer.results import build_event, encode_result, run_handler
from worker.consumer.settlement import Settlement, decide
from worker.errors import Ambiguous, PeerNotFound, Unreachable
from worker.messages import (
    ErrorInfo,
    ModifyRequest,
    Outcome,
    Phase,
    RemoveRequest,
    ResultData,
    ResultEvent,
)
from worker.settings import Settings

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("published", "poison", "settlement"),
    [
        (True, False, Settlement.ack),
        (True, True, Settlement.dead_letter),
        (False, False, Settlement.requeue),
        (False, True, Settlement.requeue),  # not answered yet: answer first, dead-letter after
        (None, False, Settlement.release),
    ],
)
def test_decide_acks_only_what_was_answered_and_confirmed(
    published: bool | None, poison: bool, settlement: Settlement
) -> None:
    assert decide(published=published, poison=poison) is settlement


@pytest.mark.parametrize(
    ("error", "outcome", "code"),
    [
        (PeerNotFound("no peer x on dhcp1"), Outcome.rejected, "peer_not_found"),
        (Unreachable("dhcp1: connection refused"), Outcome.failed, "unreachable"),
        (Ambiguous("restart timed out"), Outcome.failed, "ambiguous"),
        (KeyError("servers"), Outcome.failed, "internal_error"),
    ],
)
async def test_an_exception_from_the_handler_becomes_a_result_and_never_escapes(
    error: Exception, outcome: Outcome, code: str
) -> None:
    async def handler(
        request: ModifyRequest | RemoveRequest, request_id: str, announce: object
    ) -> ResultData:
        raise error

    delivery = read_delivery(
        json.dumps(modify(dryRun=True)).encode(),
        message_id=None,
        routing_key=None,
        correlation_id=None,
    )
    data = await run_handler(handler, delivery)
    assert data.outcome is outcome
    assert data.error is not None and data.error.code == code
    assert (data.requestId, data.command, data.dryRun) == (
        MODIFY_ID,
        "ModifyDHCPFailoverRelationship",
        True,
    )


async def test_a_cancelled_handler_is_not_turned_into_a_result() -> None:
    async def handler(
        request: ModifyRequest | RemoveRequest, request_id: str, announce: object
    ) -> ResultData:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    delivery = read_delivery(
        json.dumps(MODIFY).encode(), message_id=None, routing_key=None, correlation_id=None
    )
    task = asyncio.create_task(run_handler(handler, delivery))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_event_wire_format_is_structured_cloudevents_without_null_attributes() -> None:
    delivery = read_delivery(
        json.dumps(modify(requestId=None)).encode(),
        message_id=None,
        routing_key=None,
        correlation_id=None,
    )
    data = ResultData(requestId=None, command=None, outcome=Outcome.rejected, error=None)
    event = build_event(delivery, data, Settings(event_source="urn:x"))
    body = encode_event(event)
    raw = json.loads(body)
    assert "correlationid" not in raw  # no id and no AMQP correlation_id: left out, not null
    assert raw["subject"] == "dhcp-failover"
    assert raw["source"] == "urn:x"
    assert raw["data"]["error"] is None  # nulls inside data stay
    ce = from_structured_event(
        RabbitMQMessage(headers={}, content_type=EVENT_CONTENT_TYPE, body=body)
    )
    assert ce.get_id() == event.id
    # The same event back (time is carried to the millisecond, as in docs/contract.md §3).
    assert decode_event(body).model_dump(mode="json") == event.model_dump(mode="json")
    assert event_routing_key(event) == "event.modify.rejected"
    message = event_message(event, correlation_id="c")
    assert (message.message_id, message.correlation_id, message.content_type) == (
        event.id,
        "c",
        EVENT_CONTENT_TYPE,
    )
    assert message.type == "net.dhcp.failover.modify.rejected"


class _GatedExchange:
    """Stands in for an aio-pika exchange: ``publish`` returns (is confirmed) once ``gate`` is
    set; records each publication as it is sent."""

    def __init__(self, name: str, sent: list[str], gate: asyncio.Event) -> None:
        self.name, self.sent, self.gate = name, sent, gate

    async def publish(self, message: object, routing_key: str, *, mandatory: bool) -> None:
        self.sent.append(routing_key)
        await self.gate.wait()


def _an_event() -> ResultEvent:
    delivery = read_delivery(
        json.dumps(modify()).encode(), message_id=None, routing_key=None, correlation_id=None
    )
    data = ResultData(requestId=MODIFY_ID, command=None, outcome=Outcome.succeeded, error=None)
    return build_event(delivery, data, Settings(event_source="urn:x"))


async def test_the_event_and_the_reply_are_published_at_once_and_both_confirmed() -> None:
    sent: list[str] = []
    events_confirmed, reply_confirmed = asyncio.Event(), asyncio.Event()
    events = _GatedExchange("events", sent, events_confirmed)
    default = _GatedExchange("", sent, reply_confirmed)
    publisher = EventPublisher(events, default, timeout=5)  # type: ignore[arg-type]
    task = asyncio.create_task(publisher.publish(_an_event(), reply_to="reply-q"))

    await asyncio.sleep(0.05)
    assert sent == ["event.modify.succeeded", "reply-q"]  # the reply did not wait
    reply_confirmed.set()
    await asyncio.sleep(0.05)
    assert not task.done()  # returns only once both are confirmed
    events_confirmed.set()
    await asyncio.wait_for(task, 5)


def _modify_delivery() -> Delivery:
    return read_delivery(
        json.dumps(MODIFY).encode(), message_id=None, routing_key=None, correlation_id="corr-1"
    )


@pytest.mark.parametrize("detail", [b"\xff\xfe", object()], ids=["non-UTF-8 bytes", "object"])
def test_a_result_whose_event_cannot_be_encoded_is_sent_as_failed_internal_error(
    detail: object,
) -> None:
    delivery = _modify_delivery()
    error = ErrorInfo(code="command_failed", message="m", phase=Phase.commit, detail=detail)
    data = ResultData(
        requestId=MODIFY_ID, command=delivery.command, outcome=Outcome.rolled_back, error=error
    )
    out = encode_result(delivery, data, Settings(event_source="urn:x"), correlation_id="corr-1")

    assert out.failsafe and (out.outcome, out.code) == (Outcome.failed, "internal_error")
    assert out.routing_key == "event.modify.failed"
    assert out.message.message_id == out.event_id == f"{MODIFY_ID}/failed"
    assert out.message.correlation_id == "corr-1"
    event = decode_event(out.message.body)
    assert event.id == f"{MODIFY_ID}/failed" and event.source == "urn:x"
    assert event.data.requestId == MODIFY_ID and event.data.command == delivery.command
    assert event.data.error is not None and event.data.error.code == "internal_error"
    assert event.data.error.phase is Phase.commit
    assert event.data.error.detail == {"outcome": "rolled_back"}
    assert decide(published=True, poison=delivery.poison or out.failsafe) is (
        Settlement.dead_letter
    )


def test_the_failsafe_event_does_not_depend_on_the_event_encoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: ResultEvent) -> bytes:
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(ResultEvent, "to_json", broken)
    delivery = read_delivery(b"[" * 30, message_id="m-9", routing_key=None, correlation_id=None)
    out = encode_result(delivery, None, Settings(), correlation_id=None)

    assert out.failsafe and out.event_id == "m-9/failed"
    raw = json.loads(out.message.body)
    assert raw["data"]["error"]["phase"] == "validate"  # the delivery never got past intake
    assert raw["data"]["error"]["detail"] == {"outcome": "rejected"}
    assert "UnicodeEncodeError" in raw["data"]["error"]["message"]
    ce = from_structured_event(
        RabbitMQMessage(headers={}, content_type=EVENT_CONTENT_TYPE, body=out.message.body)
    )
    assert ce.get_id() == "m-9/failed"


async def test_a_crashing_handler_s_internal_error_carries_the_request_s_comment() -> None:
    async def handler(
        request: ModifyRequest | RemoveRequest, request_id: str, announce: object
    ) -> ResultData:
        raise KeyError("servers")

    data = await run_handler(handler, _modify_delivery())
    assert data.error is not None and data.error.code == "internal_error"
    assert data.comment == MODIFY["comment"]


@pytest.mark.parametrize(
    ("reply_to", "allowed"),
    [
        ("amq.rabbitmq.reply-to", True),
        ("amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0.RILX5tQT85h/pjgcDS43mg==", True),
        ("amq.gen-JzTY20BRgKO-HjmUJj0wLg", True),
        ("replies.billing", True),  # a prefix of the setting
        ("dhcp.failover.requests", False),  # the request queue itself
        ("billing.inbox", False),  # some other application's queue
        ("amq.rabbitmq.reply-to.", False),
        ("amq.rabbitmq.reply-toX", False),
        ("amq.genX", False),
        ("", False),
        (None, False),
        (b"amq.gen-x", False),
    ],
)
def test_reply_to_is_answered_only_on_direct_reply_to_and_the_configured_prefixes(
    reply_to: object, allowed: bool
) -> None:
    assert reply_allowed(reply_to, ("amq.gen-", "replies.")) is allowed


@pytest.mark.parametrize(
    ("env", "prefixes"),
    [
        (None, ("amq.gen-",)),
        ("amq.gen-, replies. ,,ops-", ("amq.gen-", "replies.", "ops-")),
        ("", ()),
    ],
)
def test_reply_to_prefixes_are_read_from_the_environment_as_comma_separated_text(
    monkeypatch: pytest.MonkeyPatch, env: str | None, prefixes: tuple[str, ...]
) -> None:
    if env is None:
        monkeypatch.delenv("DHCP_FAILOVER_REPLY_TO_PREFIXES", raising=False)
    else:
        monkeypatch.setenv("DHCP_FAILOVER_REPLY_TO_PREFIXES", env)
    assert Settings().reply_prefixes == prefixes
