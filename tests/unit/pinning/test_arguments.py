"""Strict arguments (authz/pinning/arguments.py): a call's arguments against the tool's
pinned inputSchema, typed as strict JSON, with the JSON pointer and keyword of the first
violation and never a value. Tables over the ImageGen tools' real schemas, the drift
probe's `probe.write` as the MCP SDK renders it, and a typed schema with every keyword a
policy relies on, which the member-by-member and the whole-schema paths must answer alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.pinning import SchemaProblem, Violation, compile_schema
from tests.unit.pinning import imagegen_tools, probe_tools, tools_by_name

SCHEMAS: dict[str, dict[str, Any]] = {
    name: element["inputSchema"]
    for name, element in tools_by_name([*imagegen_tools(), *probe_tools()]).items()
}
GEM, OAI, GOO, REP = (
    "image.generate.gemini",
    "image.generate.openai",
    "image.generate.google",
    "image.generate.replicate",
)
WRITE = "probe.write"

Expect = tuple[str, str] | None
"""(pointer, keyword) of the first violation; None: the arguments validate."""


def _as_str(value: Any) -> str:
    return json.dumps(value)[:40]


REAL: list[tuple[str, dict[str, Any], Expect]] = [
    # the ImageGen tools, as the SDK upstream lists them
    (GEM, {"prompt": "a red fox"}, None),
    (GEM, {"prompt": "a red fox", "model": None, "returnBase64": True}, None),
    (GEM, {"prompt": "a fox", "extra": 1}, None),  # no additionalProperties: false
    (GEM, {}, ("/prompt", "required")),
    (GEM, {"model": "m"}, ("/prompt", "required")),
    (GEM, {"prompt": ""}, ("/prompt", "minLength")),
    (GEM, {"prompt": 5}, ("/prompt", "type")),
    (GEM, {"prompt": ["a fox"]}, ("/prompt", "type")),
    (GEM, {"prompt": "x", "returnBase64": "true"}, ("/returnBase64", "type")),
    (GEM, {"prompt": "x", "returnBase64": 1}, ("/returnBase64", "type")),
    (GEM, {"prompt": "x", "returnBase64": 0}, ("/returnBase64", "type")),
    (GEM, {"prompt": "x", "returnBase64": "yes"}, ("/returnBase64", "type")),
    (GEM, {"prompt": "x", "model": 5}, ("/model", "type")),  # every anyOf branch: type
    (GEM, {"prompt": "x", "filenameHint": {"a": 1}}, ("/filenameHint", "type")),
    (OAI, {"prompt": "x", "width": 512, "height": 512, "seed": 7}, None),
    (OAI, {"prompt": "x", "width": 1.0}, None),  # JSON Schema: 1.0 is an integer
    (OAI, {"prompt": "x", "width": 8192}, None),
    (OAI, {"prompt": "x", "width": "500"}, ("/width", "type")),
    (OAI, {"prompt": "x", "width": "0x1F4"}, ("/width", "type")),
    (OAI, {"prompt": "x", "width": 512.5}, ("/width", "type")),
    (OAI, {"prompt": "x", "width": True}, ("/width", "type")),
    (OAI, {"prompt": "x", "width": 0}, ("/width", "exclusiveMinimum")),
    (OAI, {"prompt": "x", "width": -1}, ("/width", "exclusiveMinimum")),
    (OAI, {"prompt": "x", "width": 8193}, ("/width", "maximum")),
    (OAI, {"prompt": "x", "seed": "42"}, ("/seed", "type")),
    (OAI, {"prompt": "x", "format": "png"}, None),
    (OAI, {"prompt": "x", "format": "gif"}, ("/format", "enum")),
    (OAI, {"prompt": "x", "format": "PNG"}, ("/format", "enum")),
    (OAI, {"prompt": "x", "quality": "q" * 2000}, None),
    (OAI, {"prompt": "x", "quality": "q" * 2001}, ("/quality", "maxLength")),
    (GOO, {"prompt": "x", "aspectRatio": "16:9"}, None),
    (GOO, {"prompt": "x", "aspectRatio": None}, None),
    (GOO, {"prompt": "x", "aspectRatio": "169"}, ("/aspectRatio", "pattern")),
    (GOO, {"prompt": "x", "aspectRatio": "16:9:1"}, ("/aspectRatio", "pattern")),
    # `$` is the end of the text, as in ECMA-262 (Python's re also matches before a final \n)
    (GOO, {"prompt": "x", "aspectRatio": "16:9\n"}, ("/aspectRatio", "pattern")),
    # `\d` is an ASCII digit, as in ECMA-262 (Python's re also matches other digits)
    (GOO, {"prompt": "x", "aspectRatio": "\u0661\u0666:\u0669"}, ("/aspectRatio", "pattern")),
    (REP, {"prompt": "x", "aspectRatio": "1:1", "width": 64}, None),
    (REP, {"prompt": "x", "aspectRatio": 169}, ("/aspectRatio", "type")),
    # probe.write as the MCP SDK renders it (amount: int, flag: bool, tags: list[str] | None,
    # opts: dict | None): every variant the SDK would coerce is refused
    (WRITE, {"amount": 5, "flag": True, "tags": ["a"], "opts": {"k": 1}}, None),
    (WRITE, {"tags": None, "opts": None}, None),
    (WRITE, {"amount": "500"}, ("/amount", "type")),
    (WRITE, {"amount": "1e3"}, ("/amount", "type")),
    (WRITE, {"amount": True}, ("/amount", "type")),
    (WRITE, {"amount": 1.0}, None),
    (WRITE, {"flag": "true"}, ("/flag", "type")),
    (WRITE, {"flag": "True"}, ("/flag", "type")),
    (WRITE, {"flag": 1}, ("/flag", "type")),
    (WRITE, {"flag": 0}, ("/flag", "type")),
    (WRITE, {"flag": 1.0}, ("/flag", "type")),
    (WRITE, {"tags": '["a"]'}, ("/tags", "type")),
    (WRITE, {"tags": '["adm\\u0069n"]'}, ("/tags", "type")),
    (WRITE, {"tags": "admin"}, ("/tags", "type")),
    (WRITE, {"tags": ["a", 2]}, ("/tags/1", "type")),
    (WRITE, {"tags": {"0": "a"}}, ("/tags", "type")),
    (WRITE, {"opts": '{"k":1}'}, ("/opts", "type")),
    (WRITE, {"opts": ["k", 1]}, ("/opts", "type")),
]


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    REAL,
    ids=[f"{t}-{_as_str(a)}" for t, a, _ in REAL],
)
def test_real_tool_schemas(tool: str, arguments: dict[str, Any], expected: Expect) -> None:
    found = compile_schema(SCHEMAS[tool]).violation(arguments)
    assert found == (Violation(*expected) if expected is not None else None)


# -- a typed schema, in every form ------------------------------------------------------

TYPED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "amount": {"type": "integer", "minimum": 1, "maximum": 1000},
        "price": {"type": "number", "exclusiveMinimum": 0},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
        "opts": {
            "type": "object",
            "properties": {
                "k": {"type": "integer"},
                "deep": {"type": "object", "properties": {"x": {"type": "string"}}},
            },
        },
        "mode": {"enum": ["fast", "safe"]},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "user": {"type": "string", "pattern": "^(?!admin)[a-z]+$"},  # RE2 has no lookahead
    },
    "required": ["amount"],
    "additionalProperties": False,
}
DRAFT7 = "http://json-schema.org/draft-07/schema#"

FORMS: dict[str, dict[str, Any]] = {
    "plain": TYPED,
    "draft-07": {"$schema": DRAFT7, **TYPED},
    "ref-defs": {"$defs": {"args": TYPED}, "$ref": "#/$defs/args"},
    "allOf": {"allOf": [TYPED]},
    "draft-07-definitions": {
        "$schema": DRAFT7,
        "definitions": {"args": TYPED},
        "allOf": [{"$ref": "#/definitions/args"}],
    },
    "ref-in-a-property": {
        **TYPED,
        "$defs": {"opts": TYPED["properties"]["opts"]},
        "properties": {**TYPED["properties"], "opts": {"$ref": "#/$defs/opts"}},
    },
}

TYPED_CASES: list[tuple[dict[str, Any], Expect]] = [
    ({"amount": 5}, None),
    ({"amount": 5, "price": 0.5, "flag": False, "tags": [], "opts": {}, "mode": "safe"}, None),
    ({"amount": 1.0}, None),
    ({"amount": 1000.0}, None),
    ({"amount": "500"}, ("/amount", "type")),
    ({"amount": True}, ("/amount", "type")),
    ({"amount": None}, ("/amount", "type")),
    ({"amount": 5.5}, ("/amount", "type")),
    ({"amount": 0}, ("/amount", "minimum")),
    ({"amount": 1001}, ("/amount", "maximum")),
    ({"amount": 1, "price": 0}, ("/price", "exclusiveMinimum")),
    ({"amount": 1, "price": 0.01}, None),
    ({"amount": 1, "price": True}, ("/price", "type")),
    ({"amount": 1, "price": "1.5"}, ("/price", "type")),
    ({"amount": 1, "flag": True}, None),
    ({"amount": 1, "flag": "true"}, ("/flag", "type")),
    ({"amount": 1, "flag": 1}, ("/flag", "type")),
    ({"amount": 1, "flag": 0}, ("/flag", "type")),
    ({"amount": 1, "tags": ["a", "b"]}, None),
    ({"amount": 1, "tags": '["a"]'}, ("/tags", "type")),
    ({"amount": 1, "tags": ["a", "B"]}, ("/tags/1", "pattern")),
    ({"amount": 1, "tags": ["a", "b", 3]}, ("/tags/2", "type")),
    ({"amount": 1, "opts": {"k": 1, "deep": {"x": "y"}}}, None),
    ({"amount": 1, "opts": '{"k":1}'}, ("/opts", "type")),
    ({"amount": 1, "opts": {"k": "1"}}, ("/opts/k", "type")),
    ({"amount": 1, "opts": {"deep": {"x": 1}}}, ("/opts/deep/x", "type")),
    ({"amount": 1, "mode": "fast"}, None),
    ({"amount": 1, "mode": "slow"}, ("/mode", "enum")),
    ({"amount": 1, "mode": ["fast"]}, ("/mode", "enum")),
    ({"amount": 1, "note": None}, None),
    ({"amount": 1, "note": 5}, ("/note", "type")),
    ({"amount": 1, "user": "bob"}, None),
    ({"amount": 1, "user": "admin"}, ("/user", "pattern")),
    ({"amount": 1, "user": "administrator"}, ("/user", "pattern")),
    ({}, ("/amount", "required")),
    ({"flag": True}, ("/amount", "required")),
    ({"amount": 1, "extra": 1}, ("/extra", "additionalProperties")),
    ({"amount": 1, "a/b~c": 1}, ("/a~1b~0c", "additionalProperties")),
    # several violations: a missing required member first, then the first member, in the
    # order the call gives them, that breaks the schema
    ({"flag": "y", "extra": 1}, ("/amount", "required")),
    ({"amount": "x", "flag": "y"}, ("/amount", "type")),
    ({"flag": "y", "amount": "x"}, ("/flag", "type")),
    ({"amount": "x", "extra": 1}, ("/amount", "type")),
    ({"extra": 1, "amount": "x"}, ("/extra", "additionalProperties")),
    ({"amount": 1, "zz": 1, "aa": 2}, ("/zz", "additionalProperties")),
    ({"amount": 1, "opts": {"k": "1", "deep": {"x": 1}}}, ("/opts/k", "type")),
]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize(
    ("arguments", "expected"), TYPED_CASES, ids=[_as_str(a) for a, _ in TYPED_CASES]
)
def test_typed_schema_in_every_form(form: str, arguments: dict[str, Any], expected: Expect) -> None:
    found = compile_schema(FORMS[form]).violation(arguments)
    assert found == (Violation(*expected) if expected is not None else None)


def test_the_first_violation_is_the_same_on_every_call() -> None:
    arguments = {"flag": 2, "extra": 1, "amount": "x", "tags": [1], "mode": "m"}
    answers = {
        compile_schema(schema).violation(arguments) for schema in FORMS.values() for _ in range(3)
    }
    assert answers == {Violation("/flag", "type")}


def test_a_pattern_is_searched_not_matched_whole() -> None:
    schema = compile_schema({"properties": {"q": {"type": "string", "pattern": "ab"}}})
    assert schema.violation({"q": "xxabxx"}) is None
    assert schema.violation({"q": "a-b"}) == Violation("/q", "pattern")


def test_a_pattern_ignores_what_is_not_a_string() -> None:
    schema = compile_schema({"properties": {"q": {"pattern": "^a$"}}})
    assert schema.violation({"q": 5}) is None


def test_a_false_schema_names_itself() -> None:
    schema = compile_schema({"type": "object", "properties": {"never": False}})
    assert schema.violation({}) is None
    assert schema.violation({"never": 1}) == Violation("/never", "false")


def test_additional_properties_as_a_schema() -> None:
    schema = compile_schema({"properties": {"a": {}}, "additionalProperties": {"type": "integer"}})
    assert schema.violation({"a": "x", "b": 2}) is None
    assert schema.violation({"a": "x", "b": "2"}) == Violation("/b", "type")


def test_pattern_properties_are_not_extra_members() -> None:
    schema = compile_schema(
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "patternProperties": {"^x-": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    assert schema.violation({"a": "s", "x-n": 1}) is None
    assert schema.violation({"a": "s", "x-n": "1"}) == Violation("/x-n", "type")
    assert schema.violation({"x-n": 1, "y": 1}) == Violation("/y", "additionalProperties")


def test_a_fault_of_the_arguments_object_itself() -> None:
    schema = compile_schema({"type": "object", "minProperties": 2})
    assert schema.violation({"a": 1}) == Violation("", "minProperties")
    assert schema.violation({"a": 1}).describe() == "/ (minProperties)"  # type: ignore[union-attr]
    assert schema.violation({"a": 1, "b": 2}) is None


# -- what a denial shows ----------------------------------------------------------------

SECRET = "sk-live-7Qf3-DISTINCTIVE"


@pytest.mark.parametrize(
    "arguments",
    [
        {"amount": SECRET},
        {"amount": 1, "mode": SECRET},
        {"amount": 1, "tags": ["a", SECRET]},
        {"amount": 1, "user": f"admin{SECRET.lower()}"},
        {"amount": 1, "opts": {"k": SECRET}},
        {"amount": 1, "note": {"nested": SECRET}},
        {"amount": 1, "price": -7919},
    ],
    ids=["type", "enum", "item-pattern", "lookahead", "nested", "anyOf", "number"],
)
@pytest.mark.parametrize("form", ["plain", "ref-defs"])
def test_a_violation_never_shows_the_value(form: str, arguments: dict[str, Any]) -> None:
    found = compile_schema(FORMS[form]).violation(arguments)
    assert found is not None
    shown = f"{found} {found.describe()}"
    assert SECRET not in shown and SECRET.lower() not in shown and "7919" not in shown


def test_describe_shows_pointer_and_keyword() -> None:
    assert Violation("/tags/1", "type").describe() == "/tags/1 (type)"
    assert Violation("", "required").describe() == "/ (required)"


def test_a_long_key_is_cut_in_the_description() -> None:
    key = "k" * 5000
    found = compile_schema(TYPED).violation({"amount": 1, key: 1})
    assert found == Violation("/" + key, "additionalProperties")
    shown = found.describe()
    assert len(shown) < 260
    assert shown.endswith("… (additionalProperties)")


@pytest.mark.parametrize("key", ["a\nb", "a\x00b", "a\u202eb", "\x1b[31mred"])
def test_an_odd_key_is_quoted_in_the_description(key: str) -> None:
    found = compile_schema(TYPED).violation({"amount": 1, key: 1})
    assert found is not None
    shown = found.describe()
    assert shown.isprintable()
    assert shown == f"{'/' + key!r} (additionalProperties)"


def test_escaped_pointers_of_nested_odd_keys() -> None:
    schema = compile_schema(
        {"properties": {"m/x": {"type": "object", "additionalProperties": {"type": "string"}}}}
    )
    assert schema.violation({"m/x": {"~a/": 1}}) == Violation("/m~1x/~0a~1", "type")


# -- schemas that cannot be used ----------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "location", "fragment"),
    [
        ({"type": 5}, ("type",), "not a valid JSON Schema"),
        ({"properties": {"a": {"minimum": "1"}}}, ("properties", "a", "minimum"), "valid"),
        ({"properties": {"a": {"pattern": "("}}}, ("properties", "a", "pattern"), "regex"),
        ({"required": [1]}, ("required", 0), "not a valid JSON Schema"),
        (["type", "object"], (), "must be a JSON object"),
    ],
)
def test_an_unusable_schema_names_where(
    schema: Any, location: tuple[Any, ...], fragment: str
) -> None:
    with pytest.raises(SchemaProblem) as info:
        compile_schema(schema)
    assert info.value.location == location
    assert fragment in info.value.message
