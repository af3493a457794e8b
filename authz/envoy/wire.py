"""Protobuf's wire format, by hand, for the few messages the sidecar sends on every check.

Building a `CheckResponse` with the generated classes costs tens of microseconds per
decision (a message object per header and per Struct value); most of its bytes are the
same on every answer. `grpc_authz.py` therefore writes the answer as bytes, from pieces
encoded once (`field`, `entry`, ...) and the few values that change per decision. What it
writes is what `SerializeToString(deterministic=True)` writes for the same message (fields
in number order, map entries in `map_order`, oneof members and set message fields always
present); the tests compare the two byte for byte.

Only what those messages need is here: varints, length-delimited fields, and
`google.protobuf.Struct` / `Value` / `ListValue`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

__all__ = [
    "bool_value",
    "entry",
    "field",
    "list_value",
    "map_order",
    "number_value",
    "string_value",
    "struct_fields",
    "struct_value",
    "varint",
    "varint_field",
]

_SMALL: Final = tuple(bytes((n,)) for n in range(128))


def varint(n: int) -> bytes:
    """An unsigned varint (n >= 0)."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_TAGS: Final = tuple(varint(n << 3 | 2) for n in range(16))


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or an embedded message."""
    size = len(payload)
    tag = _TAGS[number] if number < 16 else varint(number << 3 | 2)
    return tag + (_SMALL[size] if size < 128 else varint(size)) + payload


def varint_field(number: int, value: int) -> bytes:
    """A varint field (wire type 0): an int32, enum or bool (value >= 0)."""
    return varint(number << 3) + varint(value)


# google.protobuf.Value: null 1, number 2 (double), string 3, bool 4, struct 5, list 6
_NUMBER_TAG: Final = varint(2 << 3 | 1)
_DOUBLE: Final = struct.Struct("<d")


def string_value(text: str) -> bytes:
    """A `Value` holding `text`."""
    return field(3, text.encode())


def number_value(number: float) -> bytes:
    """A `Value` holding `number` (a double)."""
    return _NUMBER_TAG + _DOUBLE.pack(number)


def bool_value(flag: bool) -> bytes:
    """A `Value` holding `flag`."""
    return varint_field(4, int(flag))


def entry(key: str, value: bytes) -> bytes:
    """One `Struct.fields` map entry: `key` → the encoded `Value`. A Struct is the
    concatenation of its entries, in key order for the deterministic form
    (`struct_fields`)."""
    return field(1, field(1, key.encode()) + field(2, value))


def map_order(key: str) -> bytes:
    """The sort key of a map entry in deterministic serialization (upb's): bytewise, except
    that a key comes before its own prefixes (`decision_id` before `decision`). UTF-8 has no
    0xFF byte, so one at the end sorts a key after every key it is a prefix of."""
    return key.encode() + b"\xff"


def struct_fields(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """A `Struct` from (key, encoded `Value`) pairs (keys distinct), in `map_order`."""
    return b"".join(
        entry(key, value) for key, value in sorted(entries, key=lambda kv: map_order(kv[0]))
    )


def struct_value(fields: bytes) -> bytes:
    """A `Value` holding a `Struct` (its encoded fields)."""
    return field(5, fields)


def list_value(values: Iterable[bytes]) -> bytes:
    """A `Value` holding a `ListValue` of encoded `Value`s."""
    return field(6, b"".join(field(1, value) for value in values))
