"""Every way a request can be bad, through the real broker: a precise ``rejected`` event, and
unreadable bytes dead-lettered after it. The handler never sees any of them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.support import (
    MODIFY,
    EventTap,
    StubHandler,
    assert_depth,
    get_one,
    modify,
    publish_raw,
    publish_without_message_id,
    running_worker,
    x_death,
)
from worker.messages import MAX_REQUEST_BYTES
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


def _params(**changes: Any) -> dict[str, Any]:
    return {**MODIFY["params"], **changes}


@dataclass(frozen=True)
class Case:
    body: bytes
    code: str
    routing_key: str = "request.modify"
    event_key: str = "amqp-rej-1"  # the AMQP message_id used below, unless the body has an id
    dead_lettered: bool = False
    loc: str | None = None  # the location named in error.detail / error.message
    operation: str = "modify"


CASES = {
    "not JSON": Case(b'{"requestId": "x", ', "invalid_json", dead_lettered=True),
    "not UTF-8": Case(b'{"requestId": "\xff\xfe"}', "invalid_encoding", dead_lettered=True),
    "oversize body": Case(
        json.dumps(modify(comment="x" * MAX_REQUEST_BYTES)).encode(),
        "request_too_large",
        dead_lettered=True,
    ),
    "JSON that is not an object": Case(b"[1, 2, 3]", "invalid_request", loc=""),
    "wrong schema: params missing": Case(
        json.dumps(modify(params=None)).encode(),
        "invalid_request",
        event_key=MODIFY["requestId"],
        loc="params",
    ),
    "wrong schema: unknown field": Case(
        json.dumps(modify(params=_params(Colour="blue"))).encode(),
        "invalid_request",
        event_key=MODIFY["requestId"],
        loc="params.Colour",
    ),
    "unknown command": Case(
        json.dumps(modify(command="DropAllRelationships")).encode(),
        "invalid_request",
        routing_key="request.drop",
        event_key=MODIFY["requestId"],
        loc="command",
        operation="unknown",
    ),
    "unsafe relationship name": Case(
        json.dumps(modify(params=_params(Name='x"; include "/etc/passwd'))).encode(),
        "invalid_request",
        event_key=MODIFY["requestId"],
        loc="params.Name",
    ),
    "unsafe server name": Case(
        json.dumps(modify(params=_params(PrimaryServer="../../root"))).encode(),
        "invalid_request",
        event_key=MODIFY["requestId"],
        loc="params.PrimaryServer",
    ),
    "out-of-range value": Case(
        json.dumps(modify(params=_params(Mclt=99_999_999))).encode(),
        "invalid_request",
        event_key=MODIFY["requestId"],
        loc="params.Mclt",
    ),
    "unsafe requestId": Case(
        json.dumps(modify(requestId="../../etc/cron.d/x")).encode(),
        "invalid_request",
        loc="requestId",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_a_bad_request_gets_a_precise_rejected_event_and_never_reaches_the_handler(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    handler: StubHandler,
    case: Case,
) -> None:
    await publish_raw(amqp, broker_settings, case.body, case.routing_key, message_id="amqp-rej-1")
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()

    assert handler.calls == []
    assert checked.message.routing_key == f"event.{case.operation}.rejected"
    assert checked.raw["type"] == f"net.dhcp.failover.{case.operation}.rejected"
    assert checked.raw["id"] == f"{case.event_key}/rejected"
    data = checked.raw["data"]
    assert data["outcome"] == "rejected"
    assert data["error"]["code"] == case.code
    assert data["error"]["phase"] == "validate"
    assert data["error"]["message"]
    assert "subject" not in checked.raw or checked.raw["subject"] == "dhcp-failover"
    if case.loc is not None:
        locs = [item["loc"] for item in data["error"]["detail"]]
        assert case.loc in locs, locs
        if case.loc:
            assert case.loc in data["error"]["message"]
    await assert_depth(amqp, broker_settings.request_queue, 0)
    if case.dead_lettered:
        dead = await get_one(amqp, broker_settings.dead_letter_queue)
        assert dead.body == case.body
        assert dead.message_id == "amqp-rej-1"
    else:
        await assert_depth(amqp, broker_settings.dead_letter_queue, 0)


async def test_undecodable_bytes_are_dead_lettered_with_the_reason_after_the_rejected_event(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    body = b"\x00\x01 definitely not a request \xff"
    await publish_raw(amqp, broker_settings, body, "request.remove", message_id="bin-1")
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()
        dead = await get_one(amqp, broker_settings.dead_letter_queue)

    assert checked.message.routing_key == "event.remove.rejected"
    assert checked.raw["data"]["error"]["code"] == "invalid_encoding"
    assert checked.raw["data"]["error"]["detail"] == {"position": len(body) - 1}
    assert dead.body == body
    [death] = x_death(dead)
    assert death["reason"] == "rejected"
    assert death["queue"] == broker_settings.request_queue
    assert death["exchange"] == broker_settings.request_exchange
    assert death["routing-keys"] == ["request.remove"]


async def test_a_request_without_request_id_or_message_id_is_rejected_under_its_body_hash(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    body = json.dumps(modify(requestId=None)).encode()
    await publish_without_message_id(broker_settings, body, "request.modify")
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()

    assert handler.calls == []
    digest = hashlib.sha256(body).hexdigest()
    assert checked.raw["id"] == f"sha256:{digest}/rejected"
    assert checked.message.routing_key == "event.modify.rejected"
    data = checked.raw["data"]
    assert data["requestId"] is None
    assert data["error"]["code"] == "missing_request_id"
    assert data["command"] == "ModifyDHCPFailoverRelationship"
    assert checked.raw["subject"] == "dhcp-failover"
    assert "correlationid" not in checked.raw
    await assert_depth(amqp, broker_settings.request_queue, 0)
    await assert_depth(amqp, broker_settings.dead_letter_queue, 0)


async def test_an_unsafe_message_id_is_not_used_as_the_request_id(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    body = json.dumps(modify(requestId=None)).encode()
    await publish_raw(amqp, broker_settings, body, message_id="../../etc/passwd")
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()

    assert handler.calls == []
    assert checked.raw["data"]["error"]["code"] == "invalid_request_id"
    assert checked.raw["id"] == f"sha256:{hashlib.sha256(body).hexdigest()}/rejected"


async def test_a_rejected_request_with_reply_to_gets_its_answer_too(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    channel = await amqp.channel()
    replies = await channel.declare_queue(exclusive=True, auto_delete=True)
    await publish_raw(
        amqp, broker_settings, b"nope", reply_to=replies.name, correlation_id="corr-9"
    )
    async with running_worker(amqp, broker_settings, handler):
        published = await tap.next_checked()
        reply = await get_one(amqp, replies.name)

    assert reply.correlation_id == "corr-9"
    assert reply.body == published.message.body
    assert published.raw["data"]["error"]["code"] == "invalid_json"
    await channel.close()
