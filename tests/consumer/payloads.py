"""Hypothesis strategies for request deliveries: bodies and AMQP property values of any kind.

One copy for the in-process intake fuzz (tests/consumer/test_intake_fuzz.py) and the live
worker fuzz on the real broker (tests/faults/test_live_fuzz.py). :data:`PAYLOADS` are request
bodies (bytes): random bytes, JSON of any shape in four encodings, the contract's examples
intact or mangled, nesting and numbers past the parser's limits, bodies at the size limit,
truncated JSON. :data:`PROPERTIES` are values for ``message_id``, ``routing_key``,
``correlation_id`` and ``reply_to`` as a client library may hand them over, or not.
"""

from __future__ import annotations

import json
from copy import deepcopy
from typing import Any

from hypothesis import strategies as st

from tests.consumer.support import MODIFY, REMOVE, with_mclt
from worker.messages import MAX_REQUEST_BYTES

LONE_SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
#: Any code point, lone surrogates included (hypothesis leaves them out unless asked).
TEXT = st.text(st.characters(exclude_categories=()), max_size=40) | st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=8), LONE_SURROGATES, st.text(max_size=8)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def _ascii(value: Any) -> bytes:
    """``NaN``/``Infinity`` as Python writes them, lone surrogates as ``\\udXXX`` escapes."""
    return json.dumps(value, ensure_ascii=True).encode()


def _raw(value: Any) -> bytes:
    """Characters as UTF-8, a lone surrogate as the 3 bytes UTF-8 forbids (CESU style)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _bom(value: Any) -> bytes:
    return b"\xef\xbb\xbf" + _raw(value)


def _duplicated(value: Any) -> bytes:
    """An object whose keys repeat (the first and last copies differ)."""
    if not isinstance(value, dict) or not value:
        return _raw(value)
    pairs = [*value.items(), *((k, "dup") for k in value), *value.items()]
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode(
        "utf-8", "surrogatepass"
    )


ENCODERS = st.sampled_from([_ascii, _raw, _bom, _duplicated])


@st.composite
def request_like(draw: st.DrawFn) -> Any:
    """The contract's examples, often intact (with or without ``requestId``, a comment of any
    kind), else with fields replaced, removed or added at both levels."""
    body: dict[str, Any] = deepcopy(draw(st.sampled_from([MODIFY, REMOVE])))
    if draw(st.booleans()):
        del body["requestId"]
    if draw(st.booleans()):
        body["comment"] = draw(TEXT | st.text(min_size=1000, max_size=1100) | VALUES)
    if draw(st.integers(0, 2)) == 0:
        return body
    for target in (body, body["params"]):
        for key in draw(st.lists(st.sampled_from(sorted(target)), max_size=2, unique=True)):
            if draw(st.booleans()):
                target[key] = draw(VALUES)
            else:
                del target[key]
        for key, value in draw(st.dictionaries(TEXT, VALUES, max_size=2)).items():
            target[key] = value
    return body


def _deep(n: int, closed: bool, inside: bool) -> bytes:
    nested = b"[" * n + (b"]" * n if closed else b"")
    return b'{"requestId":"deep-1","params":' + nested + b"}" if inside else nested


def _number(digits: int, kind: str) -> bytes:
    return with_mclt(
        {
            "int": "9" * digits,
            "negative": "-" + "9" * digits,
            "exponent": "1e" + "9" * min(digits, 400),
            "fraction": "0." + "0" * digits + "1",
        }[kind]
    )


PAYLOADS = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda enc, v: enc(v), ENCODERS, VALUES),
    st.builds(lambda enc, v: enc(v), ENCODERS, request_like()),
    st.builds(
        _deep,
        st.integers(1, 400) | st.integers(1, MAX_REQUEST_BYTES // 2),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        _number,
        st.integers(1, 20_000),
        st.sampled_from(["int", "negative", "exponent", "fraction"]),
    ),
    st.builds(
        lambda pad: json.dumps({**MODIFY, "comment": "x" * pad}).encode(),
        st.sampled_from([MAX_REQUEST_BYTES - 400, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1]),
    ),
    st.builds(lambda b, cut: b[:cut], st.builds(_raw, request_like()), st.integers(0, 400)),
)
#: AMQP short strings as aio-pika hands them over, and values of other types besides.
WIRE_TEXT = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255)
PROPERTIES = (
    st.none()
    | WIRE_TEXT
    | st.sampled_from(["request.modify", "request.remove", "request.", "amq.gen-x", "m-1", ""])
    | TEXT
    | st.binary(max_size=20)
    | st.integers()
)
