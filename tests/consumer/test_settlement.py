"""The decisions of the consumer without a broker: settlement, handler errors, event shape."""

from __future__ import annotations

import asyncio
import json

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_structured_event

from tests.consumer.support import MODIFY, MODIFY_ID, modify
from worker.consumer.app import Settlement, build_event, decide, run_handler
from worker.consumer.events import (
    EVENT_CONTENT_TYPE,
    EventPublisher,
    decode_event,
    encode_event,
    event_message,
    event_routing_key,
)
from worker.consumer.intake import read_delivery
from worker.errors import Ambiguous, PeerNotFound, Unreachable
from worker.messages import ModifyRequest, Outcome, RemoveRequest, ResultData, ResultEvent
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
    # The same event back (time is carried to the millisecond, as in CONTRACT §3).
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
