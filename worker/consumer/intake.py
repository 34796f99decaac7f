"""From AMQP bytes to a request, or to the precise reason it is rejected (pure, no I/O).

Everything the consumer needs to answer a delivery is decided here before any handler runs:
the request id (the idempotency key), the operation and subject the event will carry, and for
a bad request the ``error`` object of its ``rejected`` event. Keeping it pure keeps every
rejection reason testable without a broker.

Order of checks, each a distinct ``error.code``:

1. ``request_too_large`` -- more than :data:`MAX_REQUEST_BYTES`; not even decoded.
2. ``invalid_encoding`` -- not UTF-8.
3. ``invalid_json`` -- not JSON.
4. ``invalid_request`` -- JSON that fails the request schema (pydantic); ``detail`` lists every
   error with its location (``params.Mclt``), message, type and, for scalars, the input.
5. ``missing_request_id`` -- no ``requestId`` in the body and no AMQP ``message_id``.
6. ``invalid_request_id`` -- no ``requestId`` and a ``message_id`` that is not a safe id.

1-3 are *poison*: bytes nobody can read. They are answered with a ``rejected`` event and then
dead-lettered so an operator can look at them; 4-6 are answered and acked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from worker.messages import (
    COMMAND_OPERATION,
    MAX_REQUEST_BYTES,
    ErrorInfo,
    ModifyRequest,
    Operation,
    Phase,
    RelationshipName,
    RemoveRequest,
    RequestId,
    parse_request,
)

UNKNOWN_OPERATION = "unknown"
#: Longest scalar input copied into ``error.detail``; the request is at most 64 KiB anyway.
MAX_DETAIL_INPUT = 200
#: How many schema errors are spelled out in ``error.message`` (all are in ``detail``).
MAX_MESSAGE_ERRORS = 3

_REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)
_NAME: TypeAdapter[str] = TypeAdapter(RelationshipName)
#: Union-member labels pydantic puts in error locations; they are not field names.
_TYPE_LABELS = frozenset({"str", "int", "bool", "float", "none", "dict", "list"})


@dataclass(frozen=True)
class Delivery:
    """What one request message amounts to, before the handler runs.

    Exactly one of ``request`` and ``rejection`` is set. ``event_key`` names the event
    (``<event_key>/<outcome>``): the request id, or ``sha256:<hex of body>`` without one.
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
    #: Unreadable bytes: dead-letter after answering.
    poison: bool = False

    @property
    def servers(self) -> str | None:
        """The servers the request names, for log lines (``a,b``)."""
        if isinstance(self.request, ModifyRequest):
            return f"{self.request.params.primary_server},{self.request.params.secondary_server}"
        if isinstance(self.request, RemoveRequest):
            return self.request.params.server
        return None


def body_key(body: bytes) -> str:
    """The event key of a request without any id: stable for the same bytes."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def read_delivery(
    body: bytes,
    *,
    message_id: str | None,
    routing_key: str | None,
    correlation_id: str | None,
) -> Delivery:
    """Decide what a delivery is: a valid request with its id, or a rejection with its reason."""
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
        )

    if len(body) > MAX_REQUEST_BYTES:
        return reject(
            "request_too_large",
            f"request body is {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}",
            detail={"size": len(body), "limit": MAX_REQUEST_BYTES},
            poison=True,
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject(
            "invalid_encoding",
            f"request body is not UTF-8 text: {exc}",
            detail={"position": exc.start},
            poison=True,
        )
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        return reject(
            "invalid_json",
            f"request body is not JSON: {exc}",
            detail={"line": exc.lineno, "column": exc.colno},
            poison=True,
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
    )


def schema_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Every pydantic error as ``{loc, message, type[, input]}`` for ``error.detail``."""
    out: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False):
        item: dict[str, Any] = {
            "loc": format_loc(err["loc"]),
            "message": err["msg"],
            "type": err["type"],
        }
        value = err.get("input")
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # The discriminator failed: the error is about ``command``, not the whole body.
            item["loc"] = "command"
            value = err.get("ctx", {}).get("tag")
        if isinstance(value, bool | int | float) or value is None:
            item["input"] = value
        elif isinstance(value, str):
            item["input"] = value[:MAX_DETAIL_INPUT]
        out.append(item)
    return out


def summarise(errors: list[dict[str, Any]]) -> str:
    """The first few errors as ``loc: message`` for ``error.message``."""
    parts = [f"{e['loc']}: {e['message']}" if e["loc"] else e["message"] for e in errors]
    text = "; ".join(parts[:MAX_MESSAGE_ERRORS])
    if len(parts) > MAX_MESSAGE_ERRORS:
        text += f" (and {len(parts) - MAX_MESSAGE_ERRORS} more)"
    return text


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``('ModifyDHCPFailoverRelationship', 'params', 'Mclt')`` -> ``params.Mclt``.

    The union tag and pydantic's union-member labels (``list[constrained-str]``) are dropped:
    they name pydantic's internals, not a place in the request.
    """
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if (i == 0 and part in COMMAND_OPERATION) or _is_type_label(part):
            continue
        out += f".{part}" if out else part
    return out


def _is_type_label(part: str) -> bool:
    return part in _TYPE_LABELS or "[" in part or part.startswith(("constrained-", "function-"))


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
