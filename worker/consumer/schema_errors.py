"""A request's schema errors, as a ``rejected`` event carries them: every pydantic error as
``{loc, message, type[, input]}`` in ``error.detail``, the first few in ``error.message``,
each located as the request spells it (``params.Mclt``), never as pydantic does."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from worker.messages import COMMAND_OPERATION

#: Longest scalar input copied into ``error.detail``; the request is at most 64 KiB anyway.
MAX_DETAIL_INPUT = 200
#: How many schema errors are spelled out in ``error.message`` (all are in ``detail``).
MAX_MESSAGE_ERRORS = 3
#: Union-member labels pydantic puts in error locations; they are not field names.
_TYPE_LABELS = frozenset({"str", "int", "bool", "float", "none", "dict", "list"})
#: Integers beyond this are not copied into ``error.detail``: many JSON readers cannot hold them.
_MAX_DETAIL_INT = 2**63


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
        if _json_scalar(value):
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


def _json_scalar(value: Any) -> bool:
    """A scalar every JSON reader takes back as it is: ``1e999`` is read as ``inf``, which
    JSON cannot carry, and a 4,000-digit integer is beyond most readers."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < _MAX_DETAIL_INT
    return isinstance(value, float) and math.isfinite(value)


def _is_type_label(part: str) -> bool:
    return part in _TYPE_LABELS or "[" in part or part.startswith(("constrained-", "function-"))
