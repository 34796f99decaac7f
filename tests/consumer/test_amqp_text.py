"""pamqp's decoders made tolerant of bytes that are not UTF-8 (worker/consumer/amqp_text.py):
the frame a publisher sent with such a property reads, instead of dropping the connection."""

from __future__ import annotations

import pytest
from pamqp import commands, frame
from pamqp.header import ContentHeader

from worker.consumer import amqp_text as module
from worker.consumer.amqp_text import amqp_text, tolerate_non_utf8


def header_frame(message_id: bytes, header_name: bytes) -> bytes:
    """A content header frame whose ``message_id`` and one header name are the bytes given."""
    properties = commands.Basic.Properties(
        message_id="X" * len(message_id), headers={"H" * len(header_name): 1}
    )
    raw = frame.marshal(ContentHeader(0, 2, properties), 1)
    raw = raw.replace(b"X" * len(message_id), message_id).replace(
        b"H" * len(header_name), header_name
    )
    return raw


def test_a_header_frame_with_bytes_that_are_not_utf8_reads_and_they_count_as_absent() -> None:
    tolerate_non_utf8()
    raw = header_frame(b"id-\xff\xfe", b"x-\xc3")

    consumed, _, header = frame.unmarshal(raw)

    assert consumed == len(raw)
    assert isinstance(header, ContentHeader)
    message_id = header.properties.message_id
    assert message_id == "id-\udcff\udcfe"
    assert amqp_text(message_id) is None  # intake and replies treat it as absent
    assert header.properties.headers == {"x-\udcc3": 1}


def test_utf8_properties_read_as_before() -> None:
    tolerate_non_utf8()
    raw = header_frame("id-é".encode(), "x-ü".encode())

    _, _, header = frame.unmarshal(raw)

    assert isinstance(header, ContentHeader)
    assert header.properties.message_id == "id-é"
    assert amqp_text(header.properties.message_id) == "id-é"
    assert header.properties.headers == {"x-ü": 1}
    assert amqp_text(None) is None and amqp_text(b"id") is None


def test_pamqp_by_itself_refuses_them() -> None:
    """Why the shim exists: pamqp's own decoders raise (aiormq then drops the connection)."""
    with pytest.raises(UnicodeDecodeError):
        module._STRICT_SHORT_STR(b"\x03\xff\xfe\xfd")
