"""The policy's pinning fields (authz/policy/document.py): `pinning` and `arguments` at the
top, `arguments` in a tool's entry; their defaults leave a PolicyLayer v1 document as it
was; a bad value names its field; a tool's setting comes from its own entry, then "*", then
the policy, with the pointer of the setting that decided."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from authz.policy import PolicyError, load_policy, policy_json_schema
from tests.unit.policy.test_document import INTERCEPT_GITHUB, INTERCEPT_STRIPE


def load(doc: dict[str, Any]) -> Any:
    return load_policy(json.dumps(doc), name="p")


@pytest.mark.parametrize("doc", [INTERCEPT_GITHUB, INTERCEPT_STRIPE], ids=["github", "stripe"])
def test_a_policylayer_v1_document_gets_the_defaults(doc: dict[str, Any]) -> None:
    policy = load(doc)
    assert policy.pinning == "enforce"
    assert policy.document.arguments == "lax"
    for name in doc["tools"]:
        assert policy.arguments(name) == ("lax", "/arguments")
        entry = policy.document.tools[name]
        assert entry.arguments is None


def test_the_fields_load() -> None:
    policy = load(
        {
            "version": "1",
            "pinning": "report",
            "arguments": "strict",
            "tools": {"t": {"arguments": "lax"}},
        }
    )
    assert policy.pinning == "report"
    assert policy.document.arguments == "strict"
    assert policy.arguments("t") == ("lax", "/tools/t/arguments")


@pytest.mark.parametrize("mode", ["enforce", "report", "off"])
def test_every_pinning_mode_loads(mode: str) -> None:
    assert load({"version": "1", "pinning": mode}).pinning == mode


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"pinning": "strict"}, "$.pinning", "must be 'enforce', 'report' or 'off'; got 'strict'"),
    ({"pinning": "Enforce"}, "$.pinning", "got 'Enforce'"),
    ({"pinning": True}, "$.pinning", "must be 'enforce', 'report' or 'off'"),
    ({"pinning": None}, "$.pinning", "must be 'enforce', 'report' or 'off'"),
    ({"arguments": "loose"}, "$.arguments", "must be 'strict' or 'lax'; got 'loose'"),
    ({"arguments": ["strict"]}, "$.arguments", "must be 'strict' or 'lax'"),
    ({"tools": {"t": {"arguments": "on"}}}, "$.tools.t.arguments", "got 'on'"),
    ({"tools": {"a.b": {"arguments": 1}}}, "$.tools['a.b'].arguments", "must be 'strict' or 'lax'"),
    ({"tools": {"*": {"arguments": "enforce"}}}, "$.tools['*'].arguments", "got 'enforce'"),
    ({"tools": {"t": {"pinning": "off"}}}, "$.tools.t.pinning", "unknown field 'pinning'"),
]


@pytest.mark.parametrize(
    ("fields", "path", "fragment"), BAD, ids=[json.dumps(f)[:40] for f, _, _ in BAD]
)
def test_a_bad_value_names_its_field(fields: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        load({"version": "1", **fields})
    assert any(where == path and fragment in message for where, message in info.value.problems), (
        info.value.problems
    )


@pytest.mark.parametrize(("fields", "path", "fragment"), BAD[:-1])
def test_the_published_schema_refuses_the_same_values(
    fields: dict[str, Any], path: str, fragment: str
) -> None:
    schema = policy_json_schema()
    jsonschema.validate({"version": "1", "pinning": "off", "arguments": "strict"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": "1", **fields}, schema)


RESOLUTION: list[tuple[dict[str, Any], str, tuple[str, str]]] = [
    ({}, "t", ("lax", "/arguments")),
    ({"arguments": "strict"}, "t", ("strict", "/arguments")),
    ({"arguments": "strict", "tools": {"t": {}}}, "t", ("strict", "/arguments")),
    ({"tools": {"t": {"arguments": "strict"}}}, "t", ("strict", "/tools/t/arguments")),
    ({"tools": {"t": {"arguments": "strict"}}}, "u", ("lax", "/arguments")),
    ({"tools": {"*": {"arguments": "strict"}}}, "u", ("strict", "/tools/*/arguments")),
    (
        {"arguments": "strict", "tools": {"*": {"arguments": "lax"}}},
        "u",
        ("lax", "/tools/*/arguments"),
    ),
    (
        {"tools": {"t": {"arguments": "lax"}, "*": {"arguments": "strict"}}},
        "t",
        ("lax", "/tools/t/arguments"),
    ),
    (
        {"tools": {"t": {}, "*": {"arguments": "strict"}}},
        "t",
        ("strict", "/tools/*/arguments"),
    ),
    (
        {"tools": {"t": {"rules": [{"name": "r", "action": "deny"}]}, "*": {"arguments": "lax"}}},
        "t",
        ("lax", "/tools/*/arguments"),
    ),
    (
        {"tools": {"ns/odd~tool": {"arguments": "strict"}}},
        "ns/odd~tool",
        ("strict", "/tools/ns~1odd~0tool/arguments"),
    ),
]


@pytest.mark.parametrize(
    ("fields", "tool", "expected"),
    RESOLUTION,
    ids=[f"{json.dumps(f)[:50]}-{t}" for f, t, _ in RESOLUTION],
)
def test_a_tools_setting_and_its_pointer(
    fields: dict[str, Any], tool: str, expected: tuple[str, str]
) -> None:
    assert load({"version": "1", **fields}).arguments(tool) == expected
