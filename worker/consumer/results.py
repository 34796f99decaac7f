"""From a delivery to its result and its encoded event: the handler's side of the loop.

:func:`run_handler` turns whatever the handler does (return, raise a domain error, crash) into
a result, and :func:`encode_result` turns a result into the event bytes, falling back to the
failsafe ``internal_error`` event when that fails. Neither raises (but for cancellation), so
the loop in :mod:`~worker.consumer.app` always has an event to publish and a delivery to
settle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from worker.consumer.events import Outgoing, failsafe_outgoing, outgoing
from worker.consumer.intake import Delivery, request_comment
from worker.errors import Rejected, WorkerError
from worker.logging import get_logger, redact_text
from worker.messages import (
    ErrorInfo,
    ModifyRequest,
    Outcome,
    Phase,
    RemoveRequest,
    ResultData,
    ResultEvent,
    make_event,
)
from worker.settings import Settings

Announce = Callable[[ResultData], None]


class Handler(Protocol):
    """Runs one request to its outcome. It may call ``announce`` once with its final outcome
    before it returns (the coordinator does so while it cleans up and records it): the event
    is then published at once, and the request still acked only after the handler returned
    and the event was confirmed."""

    def __call__(
        self, request: ModifyRequest | RemoveRequest, request_id: str, announce: Announce
    ) -> Awaitable[ResultData]: ...


log = get_logger(__name__)


def outcome_for(exc: WorkerError) -> Outcome:
    """A domain error the handler raised instead of returning it as data.

    ``Rejected`` is ``rejected``; ``Failed``, ``Ambiguous`` and any other ``WorkerError`` are
    ``failed`` (the error code says which; an escaped ``Ambiguous`` is a coordinator bug).
    """
    return Outcome.rejected if isinstance(exc, Rejected) else Outcome.failed


def _unheard(data: ResultData) -> None:
    """No one listens for an early outcome: the result is published when the handler returns."""


async def run_handler(
    handler: Handler, delivery: Delivery, announce: Announce = _unheard
) -> ResultData:
    """The handler's result; never raises except on cancellation.

    The coordinator returns every outcome as data. If a handler raises anyway, a domain error
    becomes its outcome, and anything else is a bug: logged with its traceback and answered
    with ``failed`` / ``internal_error`` so the loop, and the caller waiting on reply_to, go on.
    """
    request, request_id = delivery.request, delivery.request_id
    assert request is not None and request_id is not None
    try:
        return await handler(request, request_id, announce)
    except WorkerError as exc:
        log.warning("handler raised a domain error", code=exc.code, error=exc.message)
        outcome, error = outcome_for(exc), exc.to_info()
    except Exception as exc:
        log.exception("handler crashed")
        outcome = Outcome.failed
        error = ErrorInfo(
            code="internal_error",
            message=redact_text(f"{type(exc).__name__}: {exc}"),
            phase=Phase.prepare,
        )
    return ResultData(
        requestId=request_id,
        command=request.command,
        outcome=outcome,
        dryRun=request.dry_run,
        error=error,
        comment=request_comment(request.comment),
    )


def build_event(delivery: Delivery, data: ResultData, settings: Settings) -> ResultEvent:
    """The CloudEvent for a result; ``correlationid`` is the request id (docs/contract.md §3)."""
    event = make_event(
        data,
        operation=delivery.operation,
        subject=delivery.subject,
        event_key=delivery.event_key,
        correlation_id=delivery.correlation_id,
    )
    if settings.event_source != event.source:
        event = event.model_copy(update={"source": settings.event_source})
    return event


def encode_result(
    delivery: Delivery,
    data: ResultData | None,
    settings: Settings,
    *,
    correlation_id: str | None,
    duration_ms: int = 0,
) -> Outgoing:
    """The encoded event of a result (``None``: the delivery's own answer, it was never
    handled). An event that cannot be built or encoded is a bug: logged with its traceback
    and replaced by the failsafe ``internal_error`` event of the request, which is made of
    checked values only and so does not fail in turn."""
    try:
        if data is None:
            data = delivery.result(duration_ms)
        return outgoing(build_event(delivery, data, settings), correlation_id=correlation_id)
    except Exception as exc:
        log.exception("the result event could not be built or encoded: sent internal_error")
        lost = data.outcome if data is not None else delivery.outcome
        phase = data.error.phase if data is not None and data.error is not None else None
        return failsafe_outgoing(
            event_key=delivery.event_key,
            operation=delivery.operation,
            request_id=delivery.request_id,
            command=delivery.command,
            dry_run=delivery.dry_run,
            phase=phase or (Phase.validate if delivery.request is None else Phase.prepare),
            reason=redact_text(f"{type(exc).__name__}: {exc}"),
            lost_outcome=lost,
            source=settings.event_source,
            correlationid=delivery.correlation_id,
            correlation_id=correlation_id,
        )
