"""Loading a policy (authz/policy/load.py): the strict JSON reader first, the content hash of
the bytes as loaded, every problem at once, policy files checked, the JSON Schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from authz.policy import PolicyError, check_policy_files, load_policy, policy_json_schema
from tests.unit.policy.test_document import T, base, problems_of

SEED = (
    b'{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":[{"counter":'
    b'"image.generate.gemini_rate","window":"minute","max":30,"scope":"grant"}]}}}'
)


def test_seed_loads_verbatim() -> None:
    policy = load_policy(SEED, name="imagegen")
    assert policy.name == "imagegen"
    assert policy.content_hash == hashlib.sha256(SEED).hexdigest()
    assert policy.default == "deny"
    tool = policy.tool("image.generate.gemini")
    assert tool is not None
    (limit,) = tool.limits
    assert (limit.counter, limit.window, limit.max, limit.scope) == (
        "image.generate.gemini_rate",
        "minute",
        30,
        "grant",
    )


def test_seed_validates_against_committed_schema() -> None:
    jsonschema.validate(json.loads(SEED), policy_json_schema())


def test_duplicate_keys_rejected_with_path() -> None:
    raw = (
        b'{"version":"1","tools":{"a.b":{"limits":[{"counter":"c","window":"day",'
        b'"max":1,"max":2}]}},"default":"deny","default":"allow"}'
    )
    assert problems_of(raw) == [
        ("$.default", "duplicate key 'default'; each key may appear once"),
        ("$.tools['a.b'].limits[0].max", "duplicate key 'max'; each key may appear once"),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"version": "1",\n  "tools": {,}}', "invalid JSON at line 2, column 13"),
        (b"", "invalid JSON at line 1, column 1"),
        (b'{"version":"1","x":NaN}', "NaN is not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[]", "a policy must be a JSON object; got array"),
    ],
)
def test_unparseable_documents(raw: bytes, message: str) -> None:
    ((path, found),) = problems_of(raw)
    assert path == "$" and found.startswith(message)


@pytest.mark.parametrize("value", [{1, 2}, float("nan")])
def test_mapping_input_must_be_json(value: Any) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy({"version": "1", "description": value}, name="m")
    ((path, message),) = info.value.problems
    assert path == "$" and message.startswith("not a JSON document")


def test_error_string_lists_each_problem() -> None:
    doc = base()
    doc["tools"]["image.generate.gemini"]["deny_if"][0]["conditions"].append(
        {"path": "args.x", "op": "in", "value": "a"}
    )
    with pytest.raises(PolicyError) as info:
        load_policy(json.dumps(doc), name="t")
    assert str(info.value) == (
        f"{T}.deny_if[0].conditions[1].value: 'in' needs a list value, e.g. "
        '["a", "b"]; got string'
    )
    assert info.value.name == "t"


def test_check_policy_files(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_bytes(SEED)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version":"1","default":"nope"}')
    assert check_policy_files([good]) == []
    found = check_policy_files([good, bad, tmp_path / "missing.json"])
    assert found[0] == f"{bad}: $.default: must be 'allow' or 'deny'; got 'nope'"
    assert found[1].startswith(f"{tmp_path / 'missing.json'}: cannot read:")
    assert len(found) == 2


def test_committed_schema_matches_generated() -> None:
    committed = Path(__file__).resolve().parents[3] / "authz" / "schema" / "policy.schema.json"
    expected = json.dumps(policy_json_schema(), indent=2, sort_keys=True, ensure_ascii=False)
    assert committed.read_text(encoding="utf-8") == expected + "\n", (
        "run: python scripts/export_schema.py"
    )


def test_schema_describes_every_field() -> None:
    schema = policy_json_schema()
    models = [schema, *schema["$defs"].values()]
    for model in models:
        assert model.get("description"), model.get("title")
        for name, prop in model.get("properties", {}).items():
            assert prop.get("title") and prop.get("description"), name
        assert model.get("additionalProperties") is False
