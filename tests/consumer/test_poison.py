"""Hostile deliveries through the real broker: each gets its one event and is settled.

A delivery the worker fails to answer stays unacked and holds one of its ``prefetch`` slots;
with the slots gone the worker receives nothing more. So every test here ends with a valid
request that must still be answered, and with nothing left in the request queue once the
worker has stopped (an unacked delivery would be back there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from aio_pika.abc import AbstractConnection

from tests.consumer.support import (
    MODIFY,
    MODIFY_ID,
    EventTap,
    StubHandler,
    assert_depth,
    get_one,
    modify,
    publish_raw,
    running_worker,
    with_mclt,
)
from worker import messages
from worker.consumer import intake
from worker.messages import ResultEvent
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Hostile:
    body: bytes
    code: str
    dead: bool = True
    #: The event id's key when the body has a request id (else the message id is the key).
    key: str | None = None
    reply_to_request_queue: bool = False
    correlation_id: str | None = None
    headers: dict[str, object] | None = None


BURST = {
    "deep-nesting": Hostile(b"[" * 30_000, "invalid_json"),
    "huge-integer": Hostile(b'{"requestId": "big", "n": ' + b"7" * 5_000 + b"}", "invalid_json"),
    "bad-json": Hostile(b'{"requestId": "x", ', "invalid_json"),
    "lone-surrogate": Hostile(json.dumps(modify(comment="\udc80 CHG-1")).encode(), "invalid_json"),
    "random-bytes": Hostile(bytes(range(256)) * 3, "invalid_encoding"),
    "nan": Hostile(with_mclt("NaN"), "invalid_json", correlation_id="c-nan"),
    "bom": Hostile(b"\xef\xbb\xbf" + json.dumps(MODIFY).encode(), "invalid_json"),
    "infinite-mclt": Hostile(
        with_mclt("1e999"),
        "invalid_request",
        dead=False,
        key=MODIFY_ID,
        headers={"x-odd": [1, {"a": None}, 2.5, True], "x-delivery-count": "lots"},
    ),
    "reply-to-the-request-queue": Hostile(
        json.dumps(modify(requestId=None, comment=7)).encode(),
        "invalid_request",
        dead=False,
        reply_to_request_queue=True,
    ),
}


async def test_a_burst_of_unreadable_requests_is_answered_and_settled_one_by_one(
    amqp: AbstractConnection, broker_settings: Settings, tap: EventTap, handler: StubHandler
) -> None:
    # With prefetch 2, two deliveries left unacked would starve the worker of everything after.
    settings = broker_settings.model_copy(update={"prefetch": 2, "concurrency": 1})
    for name, case in BURST.items():
        await publish_raw(
            amqp,
            settings,
            case.body,
            message_id=name,
            reply_to=settings.request_queue if case.reply_to_request_queue else None,
            correlation_id=case.correlation_id,
            headers=case.headers,
        )
    await publish_raw(amqp, settings, MODIFY, message_id="valid")
    async with running_worker(amqp, settings, handler):
        events = [(await tap.next_checked()).event for _ in range(len(BURST) + 1)]
        await tap.assert_quiet(0.3)
        dead = [await get_one(amqp, settings.dead_letter_queue) for c in BURST.values() if c.dead]
        await assert_depth(amqp, settings.request_queue, 0)
    await assert_depth(amqp, settings.request_queue, 0)  # none was left unacked
    await assert_depth(amqp, settings.dead_letter_queue, 0)

    by_id = {event.id: event for event in events}
    assert len(by_id) == len(events)
    for name, case in BURST.items():
        event = by_id.get(f"{case.key or name}/rejected")
        assert event is not None, (name, sorted(by_id))
        assert event.data.error is not None and event.data.error.code == case.code, name
    assert by_id[f"{MODIFY_ID}/succeeded"].data.outcome == "succeeded"
    assert sorted(str(message.message_id) for message in dead) == sorted(
        name for name, case in BURST.items() if case.dead
    )
    assert [rid for _, rid in handler.calls] == [MODIFY_ID]


async def test_an_event_that_cannot_be_encoded_is_replaced_by_internal_error_and_dead_lettered(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    handler: StubHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ResultEvent.to_json

    def to_json(self: ResultEvent) -> bytes:
        if self.id == f"{MODIFY_ID}/succeeded":
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(self)

    monkeypatch.setattr(ResultEvent, "to_json", to_json)
    settings = broker_settings.model_copy(update={"prefetch": 1})
    await publish_raw(amqp, settings, MODIFY, message_id="amqp-enc-1")
    await publish_raw(amqp, settings, modify(requestId="after-1"))
    async with running_worker(amqp, settings, handler):
        first = await tap.next_checked()
        second = await tap.next_checked()
        dead = await get_one(amqp, settings.dead_letter_queue)

    assert first.event.id == f"{MODIFY_ID}/failed"
    assert first.message.routing_key == "event.modify.failed"
    error = first.event.data.error
    assert error is not None and error.code == "internal_error"
    assert "UnicodeEncodeError" in error.message
    assert error.detail == {"outcome": "succeeded"}
    assert second.event.id == "after-1/succeeded"  # the worker went on (prefetch 1)
    assert dead.message_id == "amqp-enc-1"
    await assert_depth(amqp, settings.request_queue, 0)
    await assert_depth(amqp, settings.dead_letter_queue, 0)


async def test_a_bug_while_reading_a_request_is_answered_internal_error_and_dead_lettered(
    amqp: AbstractConnection,
    broker_settings: Settings,
    tap: EventTap,
    handler: StubHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = messages.parse_request  # what intake calls, until replaced below

    def parse_request(body: bytes | str) -> object:
        if b"CHG-crash" in (body if isinstance(body, bytes) else body.encode()):
            raise RuntimeError("validator state lost")
        return real(body)

    monkeypatch.setattr(intake, "parse_request", parse_request)
    settings = broker_settings.model_copy(update={"prefetch": 1})
    await publish_raw(
        amqp, settings, modify(comment="CHG-crash"), "request.modify", message_id="amqp-bug-1"
    )
    await publish_raw(amqp, settings, modify(requestId="after-2"))
    async with running_worker(amqp, settings, handler):
        first = await tap.next_checked()
        second = await tap.next_checked()
        dead = await get_one(amqp, settings.dead_letter_queue)

    assert first.event.id == "amqp-bug-1/failed"
    assert first.message.routing_key == "event.modify.failed"
    error = first.event.data.error
    assert error is not None
    assert (error.code, error.phase, error.message) == (
        "internal_error",
        "validate",
        "RuntimeError: validator state lost",
    )
    assert second.event.id == "after-2/succeeded"
    assert dead.message_id == "amqp-bug-1"
    assert handler.calls[0][1] == "after-2"
    await assert_depth(amqp, settings.request_queue, 0)
