"""AMQP strings that are not UTF-8: read, never trusted, never a reason to drop a connection.

pamqp (under aiormq and aio-pika) decodes short strings (the properties ``message_id``,
``correlation_id``, ``reply_to``, ``content_type``, ...) and field-table keys (header names)
as strict UTF-8. One publisher's invalid byte raises in aiormq's frame reader, which closes
the worker's whole connection: every delivery not yet settled on it goes back to the queue,
each return counts toward ``x-delivery-limit``, and after a few reconnects the valid requests
that were prefetched beside the bad one are dead-lettered unanswered (found by
tests/faults/test_live_fuzz.py). Decoded with ``surrogateescape`` instead, the delivery
reaches intake, which treats such a property as absent (:func:`amqp_text`) and answers the
request like any other.

:func:`tolerate_non_utf8` swaps pamqp's two decoders for tolerant ones (the same code but the error
handler). It is idempotent and runs when the consumer is imported.
"""

from __future__ import annotations

import struct

from pamqp import common, decode

_STRICT_SHORT_STR = decode.short_str
_STRICT_FIELD_TABLE = decode.field_table


def amqp_text(value: object) -> str | None:
    """A property as text the worker may use and echo: None unless a ``str`` that is valid
    UTF-8 (one decoded with ``surrogateescape`` counts as absent)."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def short_str(value: bytes) -> tuple[int, str]:
    """pamqp's ``short_str``; bytes that are not UTF-8 decoded with ``surrogateescape``."""
    try:
        return _STRICT_SHORT_STR(value)
    except UnicodeDecodeError:
        length = value[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's ``field_table``; keys that are not UTF-8 decoded with ``surrogateescape``."""
    try:
        return _STRICT_FIELD_TABLE(value)
    except UnicodeDecodeError:
        pass
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset, end = 4, 4 + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        data: common.FieldTable = {}
        while offset < end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
            offset += key_length
            consumed, result = decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def tolerate_non_utf8() -> None:
    """Make pamqp use the tolerant decoders (for properties, headers and nested tables)."""
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["table"] = field_table
    decode.TABLE_MAPPING[b"F"] = field_table
