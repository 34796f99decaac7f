"""Result events out (docs/contract.md §3): one CloudEvent per request, for audit consumers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from worker.messages.values import Outcome, Phase

_EVENT_CONFIG = ConfigDict(extra="forbid")


class ErrorInfo(BaseModel):
    """The ``error`` object of a result event."""

    model_config = _EVENT_CONFIG

    code: str
    message: str
    server: str | None = None
    phase: Phase
    detail: Any = None


class DiffSummary(BaseModel):
    """The full diff of a server whose ``diff`` was cut at the size cap."""

    model_config = _EVENT_CONFIG

    sha256: str = Field(description="sha256 (hex) of the full diff, UTF-8 encoded.")
    bytes: int = Field(description="Size of the full diff in bytes.")
    lines: int = Field(description="Lines in the full diff.")
    added: int = Field(description="Lines the full diff adds (`+`).")
    removed: int = Field(description="Lines the full diff removes (`-`).")


#: dhcpd's failover state names, as its logs write them (``includes/failover.h``);
#: ``unknown`` stands for a number this worker does not know.
PeerStateLabel = Literal[
    "unknown",
    "startup",
    "normal",
    "communications-interrupted",
    "partner-down",
    "potential-conflict",
    "recover",
    "paused",
    "shutdown",
    "recover-done",
    "resolution-interrupted",
    "conflict-done",
    "recover-wait",
]


class RunningInfo(BaseModel):
    """One server's running dhcpd as OMAPI shows it (its failover-state object): the values
    it runs with, not what its file says. dhcpd exports only its own side of a pair."""

    model_config = _EVENT_CONFIG

    relationship: str = Field(description="The failover relationship read.")
    state: PeerStateLabel | None = Field(
        default=None,
        description="This server's failover state; null when dhcpd answered that it runs no "
        "relationship of that name (after a remove).",
    )
    partnerState: PeerStateLabel | None = Field(
        default=None, description="The partner's state as this server last learnt it."
    )
    mclt: int | None = Field(
        default=None, description="On a secondary, the primary's (adopted when they connect)."
    )
    localPort: int | None = None
    partnerPort: int | None = None
    maxResponseDelay: int | None = None
    maxUnackedUpdates: int | None = Field(
        default=None,
        description="dhcpd's `max-outstanding-updates`: the local max-unacked-updates.",
    )
    loadBalanceMaxSeconds: int | None = None
    readAt: datetime = Field(description="When the worker read it (UTC).")

    @field_serializer("readAt")
    def _read_at(self, t: datetime) -> str:
        return utc_millis(t)


class ServerResult(BaseModel):
    """What happened on one server. ``state`` says which config it runs now."""

    model_config = _EVENT_CONFIG

    name: str
    role: Literal["primary", "secondary"]
    changed: bool
    sha256Before: str | None = None
    sha256After: str | None = None
    diff: str = Field(
        default="",
        description="Unified diff of every file the change writes on this server; secret "
        "values redacted, non-UTF-8 bytes shown as U+FFFD, cut at the size cap.",
    )
    diffTruncated: bool = Field(
        default=False, description="The diff was over the size cap; `diffFull` describes it."
    )
    diffFull: DiffSummary | None = None
    diffNonUtf8: bool = Field(
        default=False,
        description="The diff shows bytes of the files that are not UTF-8, each as U+FFFD "
        "(the files keep them): the diff is not byte-exact there.",
    )
    restarted: bool = False
    state: Literal["old", "new", "unknown"] = "old"
    files: dict[str, Literal["old", "new", "unknown"]] = Field(
        default_factory=dict,
        description="Each file this change wrote on the server and which version it holds now.",
    )
    durationMs: int | None = None
    running: RunningInfo | None = Field(
        default=None,
        description="The last OMAPI reading of the relationship on this server during the "
        "request: after its last restart, or at prepare when it was not restarted; null when "
        "the server has no `omapi` in the inventory or was not read.",
    )


class WarningInfo(BaseModel):
    """One entry of a result's ``warnings``: something the change did that a reader should
    know, though it did not stop it (``mclt_on_secondary``, ``same_ranges`` ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    message: str
    server: str | None = None


def _warning_from_text(value: Any) -> Any:
    """Journals of earlier versions hold warnings as plain text."""
    if isinstance(value, str):
        return {"code": "warning", "message": value}
    return value


class ResultData(BaseModel):
    """The ``data`` of a result event: what audit consumers store."""

    model_config = _EVENT_CONFIG

    requestId: str | None
    command: str | None
    outcome: Outcome
    dryRun: bool = False
    servers: list[ServerResult] = Field(default_factory=list)
    error: ErrorInfo | None = None
    warnings: list[WarningInfo] = Field(default_factory=list)
    comment: str | None = Field(
        default=None, description="The request's comment (a change ticket, say), for the audit."
    )
    durationMs: int = 0
    verified: bool = Field(
        default=False,
        description="The running pair was read over OMAPI after the change's last restart and "
        "matched the files the servers now hold (the new ones, or the old ones after a "
        "rollback) on every server of the change.",
    )
    verifyMs: int | None = Field(
        default=None, description="Time spent verifying (null when no verify ran)."
    )
    verifySkipped: str | None = Field(
        default=None,
        description="Why servers that were restarted were not (all) verified, e.g. "
        '"no omapi in inventory"; null otherwise.',
    )

    @field_validator("warnings", mode="before")
    @classmethod
    def _old_warnings(cls, value: Any) -> Any:
        return [_warning_from_text(v) for v in value] if isinstance(value, list) else value


EVENT_SOURCE = "urn:dhcp-failover-worker"
EVENT_TYPE_PREFIX = "net.dhcp.failover"


class ResultEvent(BaseModel):
    """A CloudEvents 1.0 envelope in structured JSON mode."""

    model_config = _EVENT_CONFIG

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = EVENT_SOURCE
    type: str
    subject: str | None = None
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    correlationid: str | None = None
    data: ResultData

    @field_serializer("time")
    def _time(self, t: datetime) -> str:
        return utc_millis(t)

    def to_json(self) -> bytes:
        """Structured-mode body. Absent optional attributes are omitted (CloudEvents has no
        null attributes); inside ``data`` nulls stay, e.g. ``"error": null``. Every string is
        made :func:`json_safe` first: UTF-8 cannot carry a lone surrogate."""
        doc = {k: v for k, v in self.model_dump(mode="json").items() if v is not None}
        return json.dumps(json_safe(doc), ensure_ascii=False, separators=(",", ":")).encode()


def utc_millis(t: datetime) -> str:
    """``2026-11-25T14:03:11.482Z``: how every time in an event is written."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so it encodes as UTF-8.

    Surrogates come from config bytes that are not UTF-8, kept by the ``surrogateescape``
    decoding the engine works on (a quoted config line in an error message, a file name).
    UTF-8 cannot carry them; they are shown as U+FFFD (docs/contract.md §3.3). Request JSON
    holding a lone surrogate escape is refused at intake as ``invalid_json``."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def json_safe(value: Any) -> Any:
    """A JSON-able value with :func:`safe_text` applied to every string (keys too)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def event_id(request_id: str, outcome: Outcome) -> str:
    """Deterministic: the same request id and outcome always give the same event id."""
    return f"{request_id}/{outcome.value}"


def event_type(operation: str, outcome: Outcome) -> str:
    return f"{EVENT_TYPE_PREFIX}.{operation}.{outcome.value}"


def routing_key(operation: str, outcome: Outcome) -> str:
    return f"event.{operation}.{outcome.value}"


def make_event(
    data: ResultData,
    *,
    operation: str,
    subject: str | None,
    event_key: str,
    correlation_id: str | None,
    time: datetime | None = None,
) -> ResultEvent:
    """Wrap a result in its CloudEvent; ``event_key`` is the request id (or a body hash)."""
    return ResultEvent(
        id=event_id(event_key, data.outcome),
        type=event_type(operation, data.outcome),
        subject=subject,
        time=time or datetime.now(UTC),
        correlationid=correlation_id,
        data=data,
    )
