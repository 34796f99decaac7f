"""Rollout ids and the request ids of their pairs (docs/contract.md §5, ``rollout``).

A pair's request id is ``<rollout-id>.<relationship>.<primary>``: the same rollout id gives the
same ids, so a rerun is answered by the workers' journals (one outcome per request id,
§7.3) instead of changing a pair twice. The preflight dry run of a pair uses that id with
``:preflight`` appended: a rollout id holds no ``:``, nor do relationship and server names, so
a dry-run id can never be a real one, and dry runs (which record nothing) can be repeated.

Request ids are at most 128 characters. When ``<rollout-id>.<relationship>.<primary>`` plus
the suffix would not fit (a long FQDN), the pair's id is ``<rollout-id>.<24 hex>``, the hex
being the start of sha256(``relationship NUL primary``): still one fixed id per pair, and
told apart from the readable form by having a single dot.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

#: No ``.`` (it separates the id's parts) and no ``:`` (it marks a dry run).
ROLLOUT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
PREFLIGHT_SUFFIX = ":preflight"
#: docs/contract.md §2.1: request ids are 1-128 characters.
MAX_REQUEST_ID = 128
_DIGEST_CHARS = 24


def new_rollout_id(now: datetime | None = None) -> str:
    """``r20261125T140311Z-1a2b3c``: sortable by start time, unique enough per operator."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"r{stamp}-{secrets.token_hex(3)}"


def check_rollout_id(value: str) -> str:
    """``value`` if it is a usable rollout id; ValueError saying what is allowed otherwise."""
    if ROLLOUT_ID_RE.fullmatch(value) is None:
        raise ValueError(
            f"{value!r} is not a rollout id: 1-40 of letters, digits, '_' and '-', starting "
            "with a letter or digit"
        )
    return value


def request_id(rollout_id: str, relationship: str, primary: str) -> str:
    """The pair's request id in this rollout (the module docstring says why this shape)."""
    readable = f"{rollout_id}.{relationship}.{primary}"
    if len(readable) + len(PREFLIGHT_SUFFIX) <= MAX_REQUEST_ID:
        return readable
    digest = hashlib.sha256(f"{relationship}\0{primary}".encode()).hexdigest()
    return f"{rollout_id}.{digest[:_DIGEST_CHARS]}"


def preflight_id(pair_request_id: str) -> str:
    """The request id of the pair's preflight dry run."""
    return pair_request_id + PREFLIGHT_SUFFIX
