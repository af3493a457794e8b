"""Strict arguments agree with jsonschema itself: on generated arguments, against the
ImageGen tools' real schemas and synthetic ones of every keyword the fast paths judge
(type lists, lengths, bounds, exclusive bounds, patterns, string enums, anyOf with null,
drafts 7 and 2020-12), the compiled schema finds a violation exactly when jsonschema,
validating the whole schema, finds the arguments invalid."""

from __future__ import annotations

from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.pinning import compile_schema
from tests.unit.pinning import imagegen_tools

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=9000),
    st.sampled_from([0, 1, 8192, 8193, -1, 0.5, 1.0, 2000, 2001]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["", "a", "png", "gif", "16:9", "1:1", "x" * 2000, "x" * 2001, "500"]),
    st.text(max_size=6),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=2),
    st.dictionaries(st.text(max_size=2), SCALARS, max_size=2),
)

SYNTHETIC: list[dict[str, Any]] = [
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "a": {"type": ["integer", "string"], "minimum": 1, "exclusiveMaximum": 8192},
            "b": {"minLength": 1, "maxLength": 3, "pattern": "^[a-z]+$"},
            "c": {"enum": ["png", "gif"]},
            "d": {"anyOf": [{"type": "number", "exclusiveMinimum": 0.5}, {"type": "null"}]},
            "e": {"type": "string", "format": "date-time", "maxLength": 4},
        },
    },
    {
        "type": "object",
        "properties": {
            "a": {"maximum": 10, "minimum": -1},
            "b": {"type": "boolean"},
            "c": {"type": "string", "enum": ["x"], "pattern": "x"},
            "d": {"anyOf": [{"type": "integer", "maximum": 3}, {"enum": ["1:1"]}]},
        },
        "required": ["b"],
        "additionalProperties": False,
    },
]


def _agrees(schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    ours = compile_schema(schema).violation(arguments) is None
    theirs = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(
        schema
    ).is_valid(arguments)
    assert ours == theirs, (schema, arguments)


SCHEMAS = [tool["inputSchema"] for tool in imagegen_tools()] + SYNTHETIC
NAMES = sorted({name for schema in SCHEMAS for name in schema.get("properties", {})} | {"zz"})


@settings(max_examples=1500, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(SCHEMAS) - 1),
    arguments=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=5),
)
def test_strict_arguments_agree_with_jsonschema(index: int, arguments: dict[str, Any]) -> None:
    _agrees(SCHEMAS[index], arguments)
