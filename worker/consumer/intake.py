"""From AMQP bytes to a request, or to the precise reason it is rejected (no I/O but logs).

Everything the consumer needs to answer a delivery is decided here before any handler runs:
the request id (the idempotency key), the operation and subject the event will carry, and for
a bad request the ``error`` object of its ``rejected`` event. Keeping it pure keeps every
rejection reason testable without a broker. :func:`read_delivery` never raises, whatever the
bytes and properties: a delivery it cannot answer would sit unacked, holding a prefetch slot.

Order of checks, each a distinct ``error.code``:

1. ``request_too_large`` -- more than :data:`MAX_REQUEST_BYTES`; not even decoded.
2. ``invalid_encoding`` -- not UTF-8.
3. ``invalid_json`` -- not JSON as the request parser (pydantic's, which ``parse_request``
   uses) reads it: besides syntax errors that is nesting deeper than 201 levels, an integer
   of more than 4,300 digits, ``NaN`` / ``Infinity``, a ``\\udXXX`` escape of a lone
   surrogate and a leading BOM. One parser for both readings, so the raw reading here and
   the schema check can never disagree about whether the bytes are JSON.
4. ``invalid_request`` -- JSON that fails the request schema (pydantic); ``detail`` lists every
   error with its location (``params.Mclt``), message, type and, for scalars, the input.
5. ``missing_request_id`` -- no ``requestId`` in the body and no AMQP ``message_id``.
6. ``invalid_request_id`` -- no ``requestId`` and a ``message_id`` that is not a safe id.

1-3 are *poison*: bytes nobody can read. They are answered with a ``rejected`` event and then
dead-lettered so an operator can look at them; 4-6 are answered and acked. An exception while
reading is a bug of this worker: it is logged and answered ``failed`` / ``internal_error``
(phase ``validate``), and the delivery is dead-lettered too, kept for an operator.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from worker.consumer.amqp_text import amqp_text
from worker.consumer.schema_errors import MAX_DETAIL_INPUT, schema_errors, summarise
from worker.logging import get_logger, redact_text
from worker.messages import (
    COMMAND_OPERATION,
    MAX_COMMENT_LENGTH,
    MAX_REQUEST_BYTES,
    ErrorInfo,
    ModifyRequest,
    Operation,
    Outcome,
    Phase,
    RelationshipName,
    RemoveRequest,
    RequestId,
    ResultData,
    parse_request,
    safe_text,
)

UNKNOWN_OPERATION = "unknown"

_REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)
_NAME: TypeAdapter[str] = TypeAdapter(RelationshipName)

log = get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    """What one request message amounts to, before the handler runs.

    Exactly one of ``request`` and ``rejection`` is set: ``rejection`` is the error of a
    delivery answered without the handler, with ``outcome`` ``rejected``, or ``failed`` for
    an ``internal_error``. ``event_key`` names the event (``<event_key>/<outcome>``): the
    request id, or ``sha256:<hex of body>`` without one.
    """

    request: ModifyRequest | RemoveRequest | None
    rejection: ErrorInfo | None
    request_id: str | None
    event_key: str
    operation: str
    subject: str | None
    command: str | None
    dry_run: bool
    #: The CloudEvents ``correlationid``: the request id, else the AMQP ``correlation_id``.
    correlation_id: str | None
    #: Unreadable bytes, or a bug reading them: dead-letter after answering.
    poison: bool = False
    outcome: Outcome = Outcome.rejected
    #: The request's comment, for the result (see :func:`request_comment`).
    comment: str | None = None

    @property
    def servers(self) -> str | None:
        """The servers the request names, for log lines (``a,b``)."""
        if isinstance(self.request, ModifyRequest):
            return f"{self.request.params.primary_server},{self.request.params.secondary_server}"
        if isinstance(self.request, RemoveRequest):
            return self.request.params.server
        return None

    def result(self, duration_ms: int) -> ResultData:
        """The result of a delivery the handler never sees (``rejection`` is set)."""
        return ResultData(
            requestId=self.request_id,
            command=self.command,
            outcome=self.outcome,
            dryRun=self.dry_run,
            error=self.rejection,
            comment=self.comment,
            durationMs=duration_ms,
        )


def body_key(body: bytes) -> str:
    """The event key of a request without any id: stable for the same bytes."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def request_comment(value: object) -> str | None:
    """A request's comment as a result carries it: only a string, at most the schema's
    :data:`MAX_COMMENT_LENGTH` characters, made UTF-8-safe."""
    return safe_text(value[:MAX_COMMENT_LENGTH]) if isinstance(value, str) else None


def read_delivery(
    body: bytes,
    *,
    message_id: object,
    routing_key: object,
    correlation_id: object,
) -> Delivery:
    """Decide what a delivery is: a valid request with its id, or a rejection with its reason.

    Never raises. The AMQP properties may be of any type (aio-pika hands over ``str`` or
    None; anything else counts as absent).
    """
    try:
        return _read(
            body,
            message_id=amqp_text(message_id),
            routing_key=amqp_text(routing_key),
            correlation_id=amqp_text(correlation_id),
        )
    except Exception as exc:
        log.exception("reading the request failed: answered internal_error, dead-lettered")
        return _unreadable(body, amqp_text(message_id), amqp_text(routing_key), exc)


def _read(
    body: bytes,
    *,
    message_id: str | None,
    routing_key: str | None,
    correlation_id: str | None,
) -> Delivery:
    amqp_id = _safe_request_id(message_id)
    route_op = _operation_from_routing_key(routing_key)

    def reject(
        code: str,
        message: str,
        *,
        detail: Any = None,
        request_id: str | None = amqp_id,
        operation: str | None = route_op,
        raw: dict[str, Any] | None = None,
        poison: bool = False,
    ) -> Delivery:
        raw = raw or {}
        command = raw.get("command")
        dry_run = raw.get("dryRun", raw.get("DryRun"))
        return Delivery(
            request=None,
            rejection=ErrorInfo(code=code, message=message, phase=Phase.validate, detail=detail),
            request_id=request_id,
            event_key=request_id or body_key(body),
            operation=operation or UNKNOWN_OPERATION,
            subject=_safe_subject(raw),
            command=command if _known_command(command) else None,
            dry_run=dry_run if isinstance(dry_run, bool) else False,
            correlation_id=request_id or correlation_id,
            poison=poison,
            comment=request_comment(raw.get("comment", raw.get("Comment"))),
        )

    if len(body) > MAX_REQUEST_BYTES:
        return reject(
            "request_too_large",
            f"request body is {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}",
            detail={"size": len(body), "limit": MAX_REQUEST_BYTES},
            poison=True,
        )
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject(
            "invalid_encoding",
            f"request body is not UTF-8 text: {exc}",
            detail={"position": exc.start},
            poison=True,
        )
    try:
        decoded = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        return reject(
            "invalid_json", f"request body is not JSON: {exc}", detail=_position(exc), poison=True
        )

    raw: dict[str, Any] = decoded if isinstance(decoded, dict) else {}
    body_id = _safe_request_id(raw.get("requestId", raw.get("RequestId")))
    request_id = body_id or amqp_id
    command = raw.get("command")
    known = COMMAND_OPERATION.get(command) if isinstance(command, str) else None
    op = known.value if known is not None else route_op
    try:
        request = parse_request(body)
    except ValidationError as exc:
        errors = schema_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            # Cannot happen while both readings use one parser; if they ever part, the bytes
            # are still unreadable to the schema, so they are treated as such.
            return reject(
                "invalid_json",
                f"request body is not JSON: {errors[0]['message']}",
                request_id=request_id,
                operation=op,
                raw=raw,
                poison=True,
            )
        return reject(
            "invalid_request",
            "invalid request: " + summarise(errors),
            detail=errors,
            request_id=request_id,
            operation=op,
            raw=raw,
        )

    if request.request_id is None and amqp_id is None:
        if message_id is None:
            return reject(
                "missing_request_id",
                "the request has no requestId and the AMQP message has no message_id",
                request_id=None,
                operation=op,
                raw=raw,
            )
        return reject(
            "invalid_request_id",
            f"the request has no requestId and the AMQP message_id {message_id[:64]!r} is not a "
            "valid request id (letters, digits and ._:- only, at most 128 characters)",
            request_id=None,
            operation=op,
            raw=raw,
        )
    rid = request.request_id or amqp_id
    assert rid is not None  # narrowed by the two checks above
    return Delivery(
        request=request,
        rejection=None,
        request_id=rid,
        event_key=rid,
        operation=request.operation.value,
        subject=request.subject,
        command=request.command,
        dry_run=request.dry_run,
        correlation_id=rid,
        comment=request_comment(request.comment),
    )


def _unreadable(
    body: bytes, message_id: str | None, routing_key: str | None, exc: Exception
) -> Delivery:
    """The ``failed`` / ``internal_error`` answer to a delivery reading crashed on; only the
    AMQP properties are trusted, and only once checked."""
    request_id = _safe_request_id(message_id)
    return Delivery(
        request=None,
        rejection=ErrorInfo(
            code="internal_error",
            message=safe_text(redact_text(f"{type(exc).__name__}: {exc}"))[:MAX_DETAIL_INPUT],
            phase=Phase.validate,
        ),
        request_id=request_id,
        event_key=request_id or body_key(body if isinstance(body, bytes) else b""),
        operation=_operation_from_routing_key(routing_key) or UNKNOWN_OPERATION,
        subject=None,
        command=None,
        dry_run=False,
        correlation_id=request_id,
        poison=True,
        outcome=Outcome.failed,
    )


_AT = re.compile(r"at line (\d+) column (\d+)$")


def _position(exc: ValueError) -> dict[str, int] | None:
    """``{line, column}`` from the parser's message (``... at line 1 column 7``)."""
    match = _AT.search(str(exc))
    return {"line": int(match[1]), "column": int(match[2])} if match else None


def _known_command(value: Any) -> bool:
    return isinstance(value, str) and value in COMMAND_OPERATION


def _safe_request_id(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return _REQUEST_ID.validate_python(value)
    except ValidationError:
        return None


def _safe_subject(raw: dict[str, Any]) -> str | None:
    """The relationship name(s) of a rejected request, only when safe to echo."""
    params = raw.get("params")
    if not isinstance(params, dict):
        return None
    name = params.get("Name", params.get("name"))
    names = name if isinstance(name, list) else [name]
    try:
        return ",".join(_NAME.validate_python(n) for n in names) or None
    except ValidationError:
        return None


def _operation_from_routing_key(key: str | None) -> str | None:
    """``request.modify`` -> ``modify``; anything else says nothing."""
    if not key:
        return None
    prefix, _, op = key.partition(".")
    if prefix == "request" and op in {o.value for o in Operation}:
        return op
    return None
