"""Protobuf's wire format by hand (authz/envoy/wire.py) against the generated classes."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.envoy import wire


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63])
def test_varint(n: int) -> None:
    encoded = wire.varint(n)
    decoded, shift = 0, 0
    for i, byte in enumerate(encoded):
        decoded |= (byte & 0x7F) << shift
        shift += 7
        assert (byte & 0x80 == 0) == (i == len(encoded) - 1)
    assert decoded == n


keys = st.text(max_size=12)
values = st.one_of(
    st.text(max_size=200).map(lambda t: ("s", t)),
    st.floats(allow_nan=False).map(lambda x: ("n", x)),
    st.booleans().map(lambda b: ("b", b)),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(keys, values, max_size=12))
def test_a_struct_is_what_deterministic_serialization_writes(
    fields: dict[str, tuple[str, object]],
) -> None:
    expected = struct_pb2.Struct()
    encoded = []
    for key, (kind, value) in fields.items():
        if kind == "s":
            assert isinstance(value, str)
            expected.fields[key].string_value = value
            encoded.append((key, wire.string_value(value)))
        elif kind == "n":
            assert isinstance(value, float)
            expected.fields[key].number_value = value
            encoded.append((key, wire.number_value(value)))
        else:
            assert isinstance(value, bool)
            expected.fields[key].bool_value = value
            encoded.append((key, wire.bool_value(value)))
    assert wire.struct_fields(encoded) == expected.SerializeToString(deterministic=True)


def test_map_order_puts_a_key_before_its_prefixes() -> None:
    ordered = sorted(["decision", "decision_id", "a", "ab", "b", "é"], key=wire.map_order)
    assert ordered == ["ab", "a", "b", "decision_id", "decision", "é"]


def test_values_and_lists() -> None:
    expected = struct_pb2.Value()
    expected.list_value.values.add().string_value = "a"
    expected.list_value.values.add().number_value = 2
    expected.list_value.values.add().struct_value.fields["k"].bool_value = False
    inner = wire.struct_value(wire.entry("k", wire.bool_value(False)))
    encoded = wire.list_value([wire.string_value("a"), wire.number_value(2), inner])
    assert encoded == expected.SerializeToString(deterministic=True)
