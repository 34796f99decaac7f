"""Requests through the real broker to a stub handler, and the events that come back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from tests.consumer.support import (
    MODIFY,
    MODIFY_ID,
    REMOVE,
    REMOVE_ID,
    EventTap,
    StubHandler,
    assert_depth,
    get_one,
    modify,
    publish_raw,
    running_worker,
)
from worker.consumer import app, settlement
from worker.errors import LockTimeout, UnknownServer
from worker.messages import ModifyRequest, Outcome, RemoveRequest, ResultData
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


async def test_modify_through_the_queue_publishes_a_succeeded_event_checked_field_by_field(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    await publish_raw(amqp, broker_settings, MODIFY, "request.modify", message_id="amqp-id-1")
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()

    event, raw, message = checked.event, checked.raw, checked.message
    assert message.routing_key == "event.modify.succeeded"
    assert message.correlation_id == MODIFY_ID
    assert set(raw) == {
        "specversion", "id", "source", "type", "subject", "time", "datacontenttype",
        "correlationid", "data",
    }  # fmt: skip
    assert raw["specversion"] == "1.0"
    assert raw["id"] == f"{MODIFY_ID}/succeeded"
    assert raw["source"] == "urn:dhcp-failover-worker"
    assert raw["type"] == "net.dhcp.failover.modify.succeeded"
    assert raw["subject"] == "dhcp-failover"
    assert raw["datacontenttype"] == "application/json"
    assert raw["correlationid"] == MODIFY_ID
    assert raw["time"].endswith("Z") and len(raw["time"]) == len("2026-11-25T14:03:11.482Z")
    assert before <= event.time <= datetime.now(UTC)
    data = raw["data"]
    assert data["requestId"] == MODIFY_ID
    assert data["command"] == "ModifyDHCPFailoverRelationship"
    assert data["outcome"] == "succeeded"
    assert data["dryRun"] is False
    assert data["error"] is None
    assert data["durationMs"] == 412
    assert [(s["name"], s["role"], s["changed"]) for s in data["servers"]] == [
        ("dhcp1.example.net", "primary", True),
        ("dhcp2.example.net", "secondary", True),
    ]
    assert data["servers"][0]["diff"].startswith("--- a/etc/dhcp/dhcpd.conf\n")

    [(request, request_id)] = handler.calls
    assert isinstance(request, ModifyRequest)
    assert request_id == MODIFY_ID  # the body's requestId wins over the AMQP message_id
    assert request.params.mclt == 1800 and request.params.port == 647
    await assert_depth(amqp, broker_settings.request_queue, 0)
    await assert_depth(amqp, broker_settings.dead_letter_queue, 0)


async def test_remove_through_the_queue_publishes_a_succeeded_event_checked_field_by_field(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    await publish_raw(amqp, broker_settings, REMOVE, "request.remove", message_id=REMOVE_ID)
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()

    raw = checked.raw
    assert checked.message.routing_key == "event.remove.succeeded"
    assert raw["id"] == f"{REMOVE_ID}/succeeded"
    assert raw["type"] == "net.dhcp.failover.remove.succeeded"
    assert raw["subject"] == "dhcp-failover"
    assert raw["correlationid"] == REMOVE_ID
    assert raw["data"]["requestId"] == REMOVE_ID
    assert raw["data"]["command"] == "RemoveDHCPFailoverRelationships"
    assert raw["data"]["outcome"] == "succeeded"
    [(request, _)] = handler.calls
    assert isinstance(request, RemoveRequest)
    assert request.params.names == ("dhcp-failover",)
    assert request.params.deconfigure_action == "Disable"
    await assert_depth(amqp, broker_settings.request_queue, 0)


async def test_amqp_message_id_is_the_request_id_when_the_body_has_none(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    await publish_raw(amqp, broker_settings, modify(requestId=None), message_id="from-amqp-42")
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()

    assert [rid for _, rid in handler.calls] == ["from-amqp-42"]
    assert checked.event.id == "from-amqp-42/succeeded"
    assert checked.event.correlationid == "from-amqp-42"


async def test_every_outcome_the_handler_returns_is_published_under_its_own_routing_key(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    outcomes = [Outcome.failed, Outcome.rolled_back, Outcome.rollback_failed]

    async def answer(request: ModifyRequest | RemoveRequest, request_id: str) -> ResultData:
        return ResultData(requestId=request_id, command=request.command, outcome=outcomes.pop(0))

    for n in range(3):
        await publish_raw(amqp, broker_settings, modify(requestId=f"r-{n}"))
    async with running_worker(amqp, broker_settings, StubHandler(behaviour=answer)):
        keys = sorted([str((await tap.next_checked()).message.routing_key) for _ in range(3)])

    assert keys == sorted(
        ["event.modify.failed", "event.modify.rolled_back", "event.modify.rollback_failed"]
    )
    await assert_depth(amqp, broker_settings.request_queue, 0)


async def test_a_crashing_handler_is_answered_with_failed_internal_error_and_the_worker_goes_on(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    async def crash(request: ModifyRequest | RemoveRequest, request_id: str) -> ResultData:
        if request_id == "boom":
            raise ZeroDivisionError("division by zero at amqp://user:hunter2@host/")
        return ResultData(requestId=request_id, command=request.command, outcome=Outcome.succeeded)

    await publish_raw(amqp, broker_settings, modify(requestId="boom"))
    async with running_worker(amqp, broker_settings, StubHandler(behaviour=crash)):
        first = await tap.next_checked()
        await publish_raw(amqp, broker_settings, modify(requestId="after"))
        second = await tap.next_checked()

    assert first.message.routing_key == "event.modify.failed"
    error = first.raw["data"]["error"]
    assert error["code"] == "internal_error"
    assert error["message"].startswith("ZeroDivisionError: division by zero")
    assert "hunter2" not in error["message"]
    assert first.raw["data"]["requestId"] == "boom"
    assert second.event.id == "after/succeeded"
    await assert_depth(amqp, broker_settings.request_queue, 0)


@pytest.mark.parametrize(
    ("error", "routing_key", "code"),
    [
        (
            UnknownServer("no server dhcp9 in the inventory"),
            "event.modify.rejected",
            "unknown_server",
        ),
        (LockTimeout("lock on dhcp1 not obtained in 30 s"), "event.modify.failed", "lock_timeout"),
    ],
)
async def test_a_domain_error_raised_by_the_handler_becomes_its_outcome(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    error: Exception,
    routing_key: str,
    code: str,
) -> None:
    async def raise_it(request: ModifyRequest | RemoveRequest, request_id: str) -> ResultData:
        raise error

    await publish_raw(amqp, broker_settings, MODIFY)
    async with running_worker(amqp, broker_settings, StubHandler(behaviour=raise_it)):
        checked = await tap.next_checked()

    assert checked.message.routing_key == routing_key
    assert checked.raw["data"]["error"]["code"] == code
    assert checked.raw["data"]["error"]["message"] == str(error)


async def test_event_source_comes_from_the_settings(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    settings = broker_settings.model_copy(update={"event_source": "urn:test:site-b"})
    await publish_raw(amqp, settings, MODIFY)
    async with running_worker(amqp, settings, handler):
        checked = await tap.next_checked()
    assert checked.raw["source"] == "urn:test:site-b"


async def test_at_most_concurrency_handlers_run_at_once(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap
) -> None:
    settings = broker_settings.model_copy(update={"concurrency": 2, "prefetch": 6})
    handler = StubHandler(delay=0.3)
    for n in range(6):
        await publish_raw(amqp, settings, modify(requestId=f"c-{n}"))
    async with running_worker(amqp, settings, handler):
        ids = {(await tap.next_checked()).event.data.requestId for _ in range(6)}

    assert ids == {f"c-{n}" for n in range(6)}
    assert handler.peak == 2


async def test_reply_to_is_answered_with_the_requests_correlation_id(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    channel = await amqp.channel()
    replies = await channel.declare_queue(exclusive=True, auto_delete=True)
    await publish_raw(
        amqp, broker_settings, MODIFY, reply_to=replies.name, correlation_id="caller-corr-7"
    )
    async with running_worker(amqp, broker_settings, handler):
        published = await tap.next_checked()
        reply = await get_one(amqp, replies.name)

    assert reply.correlation_id == "caller-corr-7"
    assert published.message.correlation_id == "caller-corr-7"
    assert reply.body == published.message.body  # the same event, byte for byte
    assert reply.message_id == f"{MODIFY_ID}/succeeded"
    assert reply.content_type == "application/cloudevents+json"
    # The CloudEvents correlationid stays the request id, as in docs/contract.md §3.
    assert published.event.correlationid == MODIFY_ID
    await channel.close()


async def test_an_announced_outcome_is_published_at_once_and_acked_after_the_handler_ends(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The coordinator announces the outcome once the servers are final, then cleans up and
    # records it: the event must not wait for that, the ack must.
    order: list[str] = []
    real_settle = settlement.settle

    async def settle(message: AbstractIncomingMessage, how: settlement.Settlement) -> bool:
        order.append(f"settle {how.value}")
        return await real_settle(message, how)

    monkeypatch.setattr(app, "settle", settle)  # the name the loop calls
    gate = asyncio.Event()
    handler = StubHandler(finish_gate=gate)
    await publish_raw(amqp, broker_settings, MODIFY, "request.modify")
    async with running_worker(amqp, broker_settings, handler):
        checked = await tap.next_checked()  # while the handler is still finishing
        order.append("event")
        assert handler.finished == [] and checked.event.data.outcome is Outcome.succeeded
        await asyncio.sleep(0.2)
        assert order == ["event"]  # not acked yet
        gate.set()
        await assert_depth(amqp, broker_settings.request_queue, 0)
        await tap.assert_quiet(0.3)  # one event, not a second one on return

    assert order == ["event", "settle ack"]
    assert handler.finished == [MODIFY_ID]
