"""The policy document's content sections (authz/policy/document.py): `resources` (by URI
pattern), `prompts` (by name) and the object form of `hide`; every problem named by its JSON
path; a v1 document unchanged; the JSON Schema covers both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from authz.policy import check_policy_files, load_policy, policy_json_schema
from tests.unit.policy.test_document import problems_of

SEED = (
    '{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":[{"counter":'
    '"image.generate.gemini_rate","window":"minute","max":30,"scope":"grant"}]}}}'
)


def cond(path: str, op: str = "eq", value: Any = "x") -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


CONTENT: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "hide": {"tools": ["t.secret"], "resources": ["file:///etc/{+rest}"], "prompts": ["draft"]},
    "resources": {
        "docs://{name}": {
            "deny_if": [{"conditions": [cond("args.name", "regex", "^internal")]}],
            "limits": [{"counter": "reads", "window": "minute", "max": 10, "scope": "grant"}],
        },
        "file:///srv/{+path}": {"require": [{"conditions": [cond("args.uri", "regex", "\\.md$")]}]},
        "db://orders": {"require_approval": True},
        "*": {"limits": [{"counter": "any", "window": "hour", "max": 100}]},
    },
    "prompts": {
        "summarize": {"require": [{"conditions": [cond("args.style", "in", ["short", "long"])]}]},
        "*": {"approve_if": [{"name": "every prompt", "conditions": []}]},
    },
}


def test_a_v1_document_reads_as_before() -> None:
    policy = load_policy(SEED, name="seed")
    document = policy.document
    assert document.hide.tools == () and document.resources == {} and document.prompts == {}
    assert not policy.has_methods and policy.resource_patterns == ()
    listed = load_policy({"version": "1", "hide": ["a", "b"]}, name="h")
    assert listed.document.hide.tools == ("a", "b") and listed.is_hidden("a")
    assert not listed.hides_all and not listed.is_hidden("c")
    star = load_policy({"version": "1", "hide": "*"}, name="s")
    assert star.hides_all and star.document.hide.tools == ("*",)
    assert star.document.hide.resources == () and not star.resource_hidden("docs://a")
    assert load_policy({"version": "1", "hide": ["*"]}, name="s2").hides_all


def test_content_sections_load() -> None:
    policy = load_policy(CONTENT, name="c")
    assert [key for key, _ in policy.resource_patterns] == [
        "docs://{name}",
        "file:///srv/{+path}",
        "db://orders",
    ]
    assert policy.resource_wildcard is not None and policy.prompt_wildcard is not None
    assert policy.prompt("summarize") is not None and policy.prompt("other") is None
    assert policy.resource("db://orders").require_approval is not None
    assert policy.is_hidden("t.secret") and policy.prompt_hidden("draft")
    assert not policy.prompt_hidden("summarize")
    assert policy.resource_hidden("file:///etc/passwd")
    assert policy.resource_hidden("file:///etc/")  # the server reads rest="" there: hidden
    assert not policy.resource_hidden("file:///srv/a.md")


def test_the_object_form_hides_every_kind_with_a_star() -> None:
    policy = load_policy({"version": "1", "hide": {"resources": "*", "prompts": ["*"]}}, name="all")
    assert policy.resource_hidden("anything:at-all") and policy.prompt_hidden("p")
    assert not policy.hides_all and not policy.is_hidden("tool")


def test_has_methods_is_whether_the_section_was_written() -> None:
    assert not load_policy({"version": "1"}, name="a").has_methods
    assert load_policy({"version": "1", "methods": {}}, name="b").has_methods
    assert load_policy({"version": "1", "methods": {"default": "allow"}}, name="c").has_methods


R = "$.resources"


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        ({"resources": {"": {}}}, f"{R}['']", "a resource pattern must not be empty"),
        ({"resources": {"docs://{uri}": {}}}, f"{R}['docs://{{uri}}']", "shadow args.uri"),
        ({"resources": {"x://{a}{b}": {}}}, f"{R}['x://{{a}}{{b}}']", "no literal text"),
        ({"resources": {"docs://{#x}": {}}}, f"{R}['docs://{{#x}}']", "operator '#'"),
        ({"resources": {"docs://{?q}": {}}}, f"{R}['docs://{{?q}}']", "operator '?'"),
        ({"resources": {"docs://{x": {}}}, f"{R}['docs://{{x']", "never closed"),
        ({"resources": {"docs://x}": {}}}, f"{R}['docs://x}}']", "closes no '{'"),
        (
            {"resources": {"docs://{name}": {"deny_if": [{"conditions": [cond("args.id")]}]}}},
            f"{R}['docs://{{name}}'].deny_if[0].conditions[0].path",
            "args.id is not a value of this pattern; use args.uri, args.name",
        ),
        (
            {"resources": {"*": {"require": [{"conditions": [cond("args.name")]}]}}},
            f"{R}['*'].require[0].conditions[0].path",
            "use args.uri",
        ),
        (
            {"resources": {"db://x": {"approve_if": [{"conditions": [cond("args.uri.a")]}]}}},
            f"{R}['db://x'].approve_if[0].conditions[0].path",
            "reaches into a string",
        ),
        (
            {"resources": {"db://x": {"rules": [{"name": "r", "action": "deny"}]}}},
            f"{R}['db://x'].rules",
            "unknown field 'rules'; allowed here: require, deny_if, limits, approve_if",
        ),
        (
            {
                "resources": {
                    "db://x": {
                        "limits": [
                            {"counter": "c", "window": "day", "max": 1, "cost": {"from": "args.n"}}
                        ]
                    }
                }
            },
            f"{R}['db://x'].limits[0].cost",
            "give the cost as a number",
        ),
        ({"prompts": {"": {}}}, "$.prompts['']", "a prompt name must not be empty"),
        (
            {"prompts": {"p": {"require_approval": {"conditions": [cond("args.a.b")]}}}},
            "$.prompts.p.require_approval.conditions[0].path",
            "reaches into a string",
        ),
        (
            {"prompts": {"p": {"limits": [{"counter": "c", "window": "day", "max": 1}] * 2}}},
            "$.prompts.p.limits[1].counter",
            "duplicate counter 'c'",
        ),
        ({"prompts": []}, "$.prompts", "must be an object"),
        ({"hide": "all"}, "$.hide", 'must be a list of tool names or "*"; got string'),
        ({"hide": 3}, "$.hide", '(or the object form {"tools": [...]'),
        ({"hide": {"tool": []}}, "$.hide.tool", "allowed here: tools, resources, prompts"),
        ({"hide": {"tools": "some"}}, "$.hide.tools", 'must be a list of tool names or "*"'),
        ({"hide": {"prompts": [1]}}, "$.hide.prompts[0]", "must be a prompt name (a string)"),
        ({"hide": {"prompts": ["a", "a"]}}, "$.hide.prompts[1]", "duplicate entry 'a'"),
        ({"hide": {"resources": [""]}}, "$.hide.resources[0]", "must not be empty"),
        ({"hide": {"resources": ["d://{uri}"]}}, "$.hide.resources[0]", "shadow args.uri"),
        ({"hide": ["a", 1]}, "$.hide[1]", "must be a tool name (a string); got number"),
    ],
)
def test_problems_name_their_json_path(document: dict[str, Any], path: str, fragment: str) -> None:
    found = problems_of({"version": "1", **document})
    assert any(p == path and fragment in m for p, m in found), found


def test_check_policy_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    bad = {
        "version": "1",
        "hide": {"resources": ["x://{a}{b}"]},
        "resources": {
            "docs://{name": {},
            "docs://{name}": {"deny_if": [{"conditions": [cond("args.nope")]}]},
        },
        "prompts": {"": {}},
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    lines = check_policy_files([path])
    assert [line.split(": ", 2)[1] for line in lines] == [
        "$.hide.resources[0]",
        "$.resources['docs://{name']",
        "$.resources['docs://{name}'].deny_if[0].conditions[0].path",
        "$.prompts['']",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_the_json_schema_accepts_the_content_sections_and_a_v1_document() -> None:
    validator = jsonschema.Draft202012Validator(policy_json_schema())
    for document in (json.loads(SEED), CONTENT, {"version": "1", "hide": "*"}):
        assert not list(validator.iter_errors(document)), document
    for wrong in (
        {"version": "1", "hide": {"tools": [], "toolz": []}},
        {"version": "1", "hide": 5},
        {"version": "1", "resources": {"docs://{name}": {"rules": []}}},
        {"version": "1", "prompts": {"p": {"require_approval": "yes"}}},
        {"version": "1", "resources": []},
    ):
        assert list(validator.iter_errors(wrong)), wrong
    schema = policy_json_schema()
    assert {"resources", "prompts", "hide"} <= set(schema["properties"])
    assert {"Hide", "ResourcePolicy", "PromptPolicy"} <= set(schema["$defs"])
