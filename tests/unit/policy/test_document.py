"""The policy document (authz/policy/document.py and its parts): validation names the JSON
path and the fix of every problem; defaults follow Intercept; the schema describes it."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pydantic
import pytest

from authz.policy import PolicyError, load_policy, policy_json_schema
from authz.policy.limits import LimitCost
from authz.policy.patterns import Pattern

T = "$.tools['image.generate.gemini']"
GEM = "image.generate.gemini"

# POLICY.md's GitHub and Stripe examples from PolicyLayer Intercept, rendered as JSON.
INTERCEPT_GITHUB: dict[str, Any] = {
    "version": "1",
    "description": "GitHub MCP server policies",
    "hide": ["transfer_repository", "list_webhooks"],
    "tools": {
        "create_issue": {
            "rules": [
                {
                    "name": "hourly issue limit",
                    "rate_limit": "5/hour",
                    "on_deny": "Hourly limit of 5 new issues reached",
                }
            ]
        },
        "delete_repository": {
            "rules": [
                {
                    "name": "block repo deletion",
                    "action": "deny",
                    "on_deny": "Repository deletion is not permitted via AI agents",
                }
            ]
        },
        "*": {"rules": [{"name": "global rate limit", "rate_limit": "60/minute"}]},
    },
}
INTERCEPT_STRIPE: dict[str, Any] = {
    "version": "1",
    "description": "Stripe MCP server policies",
    "tools": {
        "create_charge": {
            "rules": [
                {
                    "name": "max single charge",
                    "conditions": [{"path": "args.amount", "op": "lte", "value": 50000}],
                    "on_deny": "Single charge cannot exceed $500.00",
                },
                {
                    "name": "daily spend cap",
                    "conditions": [
                        {"path": "state.create_charge.daily_spend", "op": "lte", "value": 1000000}
                    ],
                    "state": {
                        "counter": "daily_spend",
                        "window": "day",
                        "increment_from": "args.amount",
                    },
                },
                {
                    "name": "allowed currencies",
                    "conditions": [{"path": "args.currency", "op": "in", "value": ["usd", "eur"]}],
                },
            ]
        },
        "delete_customer": {"rules": [{"name": "block", "action": "deny"}]},
        "*": {
            "rules": [
                {
                    "name": "global rate limit",
                    "conditions": [
                        {"path": "state._global.calls_per_minute", "op": "lte", "value": 60}
                    ],
                    "state": {"counter": "calls_per_minute", "window": "minute"},
                }
            ]
        },
    },
}


def base() -> dict[str, Any]:
    return {
        "version": "1",
        "tools": {
            "image.generate.gemini": {
                "require": [{"conditions": [{"path": "args.mode", "op": "eq", "value": "safe"}]}],
                "deny_if": [{"conditions": [{"path": "args.n", "op": "gt", "value": 4}]}],
                "limits": [{"counter": "c", "window": "minute", "max": 3}],
            }
        },
    }


def problems_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        load_policy(data if isinstance(data, bytes) else json.dumps(data), name="t")
    return info.value.problems


def test_defaults_follow_intercept() -> None:
    policy = load_policy(
        {"version": "1", "all_tools": {"limits": [{"counter": "c", "window": "day", "max": 1}]}},
        name="d",
    )
    assert policy.default == "allow"
    assert policy.document.tools == {}
    assert policy.all_tools_limits[0].scope == "global"


@pytest.mark.parametrize("doc", [INTERCEPT_GITHUB, INTERCEPT_STRIPE], ids=["github", "stripe"])
def test_intercept_v1_documents_load_unchanged(doc: dict[str, Any]) -> None:
    policy = load_policy(json.dumps(doc), name="intercept")
    assert policy.document.description == doc["description"]


def test_intercept_rule_limits() -> None:
    policy = load_policy(INTERCEPT_STRIPE, name="s")
    create = policy.tool("create_charge")
    assert create is not None
    limit = create.rules[1].counter_limit()
    assert limit is not None
    assert (limit.counter, limit.max, limit.increment_from) == (
        "daily_spend",
        1000000,
        "args.amount",
    )
    assert create.rules[0].counter_limit() is None
    github = load_policy(INTERCEPT_GITHUB, name="g").tool("create_issue")
    assert github is not None
    rate = github.rules[0].counter_limit()
    assert rate is not None
    assert (rate.counter, rate.window, rate.max, rate.increment) == ("_rate_hour", "hour", 5, 1)


def test_lt_on_state_counter_allows_one_less() -> None:
    rule = {
        "name": "r",
        "conditions": [{"path": "state.t.n", "op": "lt", "value": 5}],
        "state": {"counter": "n", "window": "hour"},
    }
    tool = load_policy({"version": "1", "tools": {"t": {"rules": [rule]}}}, name="x").tool("t")
    assert tool is not None
    limit = tool.rules[0].counter_limit()
    assert limit is not None and limit.max == 4


@pytest.mark.parametrize("hide", ["*", ["*"], ["a", "*"]])
def test_hide_star_as_string_or_element(hide: Any) -> None:
    policy = load_policy({"version": "1", "hide": hide}, name="h")
    assert policy.hides_all and policy.is_hidden("anything")


def test_regex_compiled_at_load_and_models_frozen() -> None:
    doc = base()
    doc["tools"]["image.generate.gemini"]["require"][0]["conditions"][0] = {
        "path": "args.p",
        "op": "regex",
        "value": "^feat/",
    }
    policy = load_policy(doc, name="r")
    tool = policy.tool("image.generate.gemini")
    assert tool is not None
    cond = tool.require[0].conditions[0]
    assert isinstance(cond.pattern, Pattern) and cond.pattern.source == "^feat/"
    assert cond.pattern.search("feat/x") and not cond.pattern.search("fix/x")
    with pytest.raises(pydantic.ValidationError):
        setattr(cond, "op", "eq")  # noqa: B010


def mutate(path: str, value: Any) -> dict[str, Any]:
    """base() with the dotted/indexed `path` set to `value` (`...` deletes the key)."""
    doc = copy.deepcopy(base())
    parts: list[Any] = [int(p) if p.isdigit() else p for p in path.split("/")]
    target: Any = doc
    for part in parts[:-1]:
        target = target[part]
    if value is ...:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return doc


G = "tools/image.generate.gemini"
C0 = f"{G}/require/0/conditions/0"

# (mutation path, new value, expected JSON path, expected fragment of the message)
ERRORS: list[tuple[str, Any, str, str]] = [
    ("version", "2", "$.version", "must be '1'"),
    ("version", 1, "$.version", "must be '1'"),
    ("version", ..., "$.version", "required field 'version' is missing"),
    ("default", "maybe", "$.default", "must be 'allow' or 'deny'"),
    ("hide", "all", "$.hide", 'must be a list of tool names or "*"; got string'),
    ("hide", ["a", 1], "$.hide[1]", "must be a tool name (a string); got number"),
    ("hide", ["a", "a"], "$.hide[1]", "duplicate entry 'a'"),
    ("hide", [""], "$.hide[0]", "must not be empty"),
    ("tools", [], "$.tools", "must be an object"),
    ("bogus", 1, "$.bogus", "unknown field 'bogus'; allowed here: version, description"),
    ("all_tools", {"x": 1}, "$.all_tools.x", "unknown field 'x'; allowed here: limits"),
    (f"{G}/allow", [], f"{T}.allow", "allowed here: require, deny_if, limits, approve_if"),
    (f"{G}/require/0/when", 1, f"{T}.require[0].when", "allowed here: name, conditions"),
    (f"{C0}/values", 1, f"{T}.require[0].conditions[0].values", "allowed here: path, op, value"),
    (f"{G}/limits/0/per", 1, f"{T}.limits[0].per", "allowed here: counter, window, max"),
    (f"{C0}/op", "equals", f"{T}.require[0].conditions[0].op", "use one of: eq, neq, in"),
    (f"{C0}/op", 3, f"{T}.require[0].conditions[0].op", "must be a string"),
    (f"{C0}/path", "mode", f"{T}.require[0].conditions[0].path", "must start with 'args.'"),
    (f"{C0}/path", "args.a..b", f"{T}.require[0].conditions[0].path", "empty segment"),
    (f"{C0}/path", "state.x.y", f"{T}.require[0].conditions[0].path", "use 'limits'"),
    (
        f"{G}/deny_if/0/conditions/0/op",
        "in",
        f"{T}.deny_if[0].conditions[0].value",
        "'in' needs a list",
    ),
    (f"{C0}/op", "not_in", f"{T}.require[0].conditions[0].value", "'not_in' needs a list"),
    (f"{C0}/op", "lt", f"{T}.require[0].conditions[0].value", "'lt' needs a number"),
    (f"{C0}/op", "exists", f"{T}.require[0].conditions[0].value", "'exists' needs true or false"),
    (
        f"{G}/limits/0/window",
        "week",
        f"{T}.limits[0].window",
        "'second', 'minute', 'hour' or 'day'",
    ),
    (f"{G}/limits/0/max", -1, f"{T}.limits[0].max", "must be >= 0"),
    (f"{G}/limits/0/max", 2.5, f"{T}.limits[0].max", "must be an integer"),
    (f"{G}/limits/0/max", "3", f"{T}.limits[0].max", "must be an integer"),
    (f"{G}/limits/0/max", True, f"{T}.limits[0].max", "must be an integer"),
    (
        f"{G}/limits/0/scope",
        "user",
        f"{T}.limits[0].scope",
        "'grant', 'session', 'global', 'sub' or 'client_id'",
    ),
    (f"{G}/limits/0/counter", "", f"{T}.limits[0].counter", "must not be empty"),
    (f"{G}/limits/0/counter", ..., f"{T}.limits[0].counter", "required field 'counter'"),
    (
        f"{G}/limits/1",
        {"counter": "c", "window": "hour", "max": 1},
        f"{T}.limits[1].counter",
        "duplicate counter 'c' (also limits[0])",
    ),
    # limit cost (mcp-authz extension)
    (f"{G}/limits/0/cost", -1, f"{T}.limits[0].cost", "must be a non-negative integer; got -1"),
    (f"{G}/limits/0/cost", 2.5, f"{T}.limits[0].cost", "(a whole number); got 2.5"),
    (f"{G}/limits/0/cost", True, f"{T}.limits[0].cost", "got true (a boolean is not a number)"),
    (f"{G}/limits/0/cost", "3", f"{T}.limits[0].cost", 'or an object {"from": "args.<key>"'),
    (f"{G}/limits/0/cost", None, f"{T}.limits[0].cost", "got null"),
    (f"{G}/limits/0/cost", [2], f"{T}.limits[0].cost", "got array"),
    (f"{G}/limits/0/cost", {}, f"{T}.limits[0].cost.from", "required field 'from' is missing"),
    (f"{G}/limits/0/cost", {"from": "n"}, f"{T}.limits[0].cost.from", "must start with 'args.'"),
    (f"{G}/limits/0/cost", {"from": "args.a..b"}, f"{T}.limits[0].cost.from", "empty segment"),
    (
        f"{G}/limits/0/cost",
        {"from": "state.t.n"},
        f"{T}.limits[0].cost.from",
        "must start with 'args.'",
    ),
    (f"{G}/limits/0/cost", {"from": 3}, f"{T}.limits[0].cost.from", "got number"),
    (
        f"{G}/limits/0/cost",
        {"from": "args.n", "max": 9},
        f"{T}.limits[0].cost.max",
        "unknown field 'max'; allowed here: from, default",
    ),
    (
        f"{G}/limits/0/cost",
        {"from": "args.n", "default": -1},
        f"{T}.limits[0].cost.default",
        "must be a non-negative integer; got -1",
    ),
    (
        f"{G}/limits/0/cost",
        {"from": "args.n", "default": 0.5},
        f"{T}.limits[0].cost.default",
        "(a whole number); got 0.5",
    ),
    (
        f"{G}/limits/0/cost",
        {"from": "args.n", "default": False},
        f"{T}.limits[0].cost.default",
        "got false (a boolean is not a number)",
    ),
    (
        f"{G}/limits/0/cost",
        {"from": "args.n", "default": "1"},
        f"{T}.limits[0].cost.default",
        "must be a non-negative integer; got string",
    ),
    (
        f"{G}/limits/0/cost",
        {"from": "args.n", "default": None},
        f"{T}.limits[0].cost.default",
        "got null",
    ),
]


@pytest.mark.parametrize(("where", "value", "path", "fragment"), ERRORS)
def test_validation_error_names_path(where: str, value: Any, path: str, fragment: str) -> None:
    doc = mutate(where, value) if not where.endswith("/1") else _append_limit(value)
    found = problems_of(doc)
    assert any(p == path and fragment in m for p, m in found), found


def test_all_tools_cost_problems_name_their_path() -> None:
    doc = {
        "version": "1",
        "all_tools": {
            "limits": [
                {"counter": "a", "window": "day", "max": 9, "cost": -3},
                {"counter": "b", "window": "day", "max": 9, "cost": {"from": "n", "x": 1}},
            ]
        },
    }
    assert problems_of(doc) == [
        ("$.all_tools.limits[0].cost", "must be a non-negative integer; got -3"),
        ("$.all_tools.limits[1].cost.x", "unknown field 'x'; allowed here: from, default"),
        (
            "$.all_tools.limits[1].cost.from",
            "path must start with 'args.' (e.g. 'args.mode'); got 'n'",
        ),
    ]


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        (..., 1),  # omitted: a v1 limit costs 1
        (0, 0),
        (4, 4),
        (3.0, 3),  # JSON has one number type: an integral float is an integer
        ({"from": "args.n"}, LimitCost.model_validate({"from": "args.n", "default": 1})),
        (
            {"from": "args.opts.count", "default": 2.0},
            LimitCost.model_validate({"from": "args.opts.count", "default": 2}),
        ),
        (
            {"default": 0, "from": "args.n"},
            LimitCost.model_validate({"from": "args.n", "default": 0}),
        ),
    ],
)
def test_limit_cost_loads(cost: Any, expected: Any) -> None:
    tool_doc = base() if cost is ... else mutate(f"{G}/limits/0/cost", cost)
    for doc in (tool_doc, _all_tools_limit(cost)):
        policy = load_policy(json.dumps(doc), name="c")
        limits = policy.all_tools_limits or policy.document.tools[GEM].limits
        assert limits[0].cost == expected
        assert type(limits[0].cost) is type(expected)


def test_limit_cost_above_max_loads() -> None:
    # a cost above max can never fit: the counter reports it exhausted, it is not invalid
    load_policy(mutate(f"{G}/limits/0/cost", 99), name="big")


def test_invalid_regex_named() -> None:
    doc = mutate(f"{C0}/op", "regex")
    load_policy(doc, name="ok")  # 'safe' is a valid pattern
    doc = mutate(f"{C0}/value", "(unclosed")
    doc["tools"]["image.generate.gemini"]["require"][0]["conditions"][0]["op"] = "regex"
    assert problems_of(doc) == [
        (
            f"{T}.require[0].conditions[0].value",
            "invalid regex '(unclosed': RE2 cannot compile it: missing ): (unclosed",
        )
    ]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (
            r"(a)\1",
            "RE2 cannot compile it: invalid escape sequence: \\1; RE2 has no backreferences",
        ),
        ("(?P<n>a)(?P=n)", "RE2 has no backreferences"),
        ("foo(?=bar)", "RE2 cannot compile it: invalid perl operator: (?=; RE2 has no lookahead"),
        ("(?<!x)y", "RE2 has no lookahead or lookbehind"),
        (r"end\Z", "RE2 has no \\Z; use \\z for the end of the text"),
        ("(?x) a b", "RE2's inline flags are i, m, s and U"),
        ("a*+", "RE2 has no possessive quantifiers"),
        (r"caf\u00e9", "write a code point as \\x{263a}"),
        ("a{1001}", "RE2 repeats at most 1000 times"),
        ("x{,3}", "'{,3}' at position 1 means a repetition in Python but literal text in RE2"),
    ],
)
def test_patterns_re2_cannot_compile_are_named(pattern: str, message: str) -> None:
    doc = mutate(f"{C0}/value", pattern)
    doc["tools"]["image.generate.gemini"]["require"][0]["conditions"][0]["op"] = "regex"
    ((where, text),) = problems_of(doc)
    assert where == f"{T}.require[0].conditions[0].value"
    assert text.startswith(f"invalid regex {pattern!r}: ") and message in text, text


@pytest.mark.parametrize("pattern", [r"^(a+)+$", r"\pL+\z", "[[:alpha:]]", "(?P<n>a)", "x{0,3}"])
def test_re2_patterns_load(pattern: str) -> None:
    doc = mutate(f"{C0}/value", pattern)
    doc["tools"]["image.generate.gemini"]["require"][0]["conditions"][0]["op"] = "regex"
    load_policy(doc, name="ok")


def test_strict_types_defaults_to_true() -> None:
    assert load_policy(base(), name="p").strict_types is True
    assert load_policy({**base(), "strict_types": False}, name="p").strict_types is False
    assert problems_of({**base(), "strict_types": "no"}) == [
        ("$.strict_types", "must be true or false; got string")
    ]
    assert problems_of({**base(), "strict_types": 0}) == [
        ("$.strict_types", "must be true or false; got number")
    ]


@pytest.mark.parametrize("value", [True, None, [1, "a"], {"k": 1}, 1.5])
def test_eq_takes_any_json_value(value: Any) -> None:
    load_policy(mutate(f"{C0}/value", value), name="ok")


def _all_tools_limit(cost: Any) -> dict[str, Any]:
    limit: dict[str, Any] = {"counter": "all", "window": "day", "max": 5}
    if cost is not ...:
        limit["cost"] = cost
    return {"version": "1", "all_tools": {"limits": [limit]}}


def _append_limit(limit: dict[str, Any]) -> dict[str, Any]:
    doc = base()
    doc["tools"]["image.generate.gemini"]["limits"].append(limit)
    return doc


def intercept_rule(rule: dict[str, Any], tool: str = "t") -> dict[str, Any]:
    return {"version": "1", "tools": {tool: {"rules": [rule]}}}


R = "$.tools.t.rules[0]"
STATE_RULE = {"counter": "n", "window": "hour"}
# (Intercept rule, expected path, fragment): Intercept's validate.go errors, path-qualified.
INTERCEPT_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"action": "deny"}, f"{R}.name", "rule must have a name"),
    ({"name": "x", "action": "block"}, f"{R}.action", "must be 'evaluate' or 'deny'"),
    (
        {
            "name": "x",
            "action": "deny",
            "conditions": [{"path": "args.a", "op": "exists", "value": True}],
        },
        f"{R}.conditions",
        "deny rules must not have conditions",
    ),
    ({"name": "x"}, f"{R}.conditions", "evaluate rules need at least one condition"),
    ({"name": "x", "rate_limit": "5 per hour"}, f"{R}.rate_limit", "must be 'N/window'"),
    ({"name": "x", "rate_limit": "0/hour"}, f"{R}.rate_limit", "positive integer"),
    ({"name": "x", "rate_limit": "5/week"}, f"{R}.rate_limit", "window must be one of"),
    (
        {"name": "x", "rate_limit": "5/hour", "action": "deny"},
        f"{R}.rate_limit",
        "cannot be used with action 'deny'",
    ),
    (
        {"name": "x", "rate_limit": "5/hour", "state": STATE_RULE},
        f"{R}.rate_limit",
        "cannot be combined with conditions or state",
    ),
    (
        {"name": "x", "conditions": [{"path": "state.t.n", "op": "lte", "value": 1}]},
        f"{R}.conditions[0].path",
        "no matching state block found",
    ),
    (
        {
            "name": "x",
            "conditions": [{"path": "state.t.n", "op": "gt", "value": 1}],
            "state": STATE_RULE,
        },
        f"{R}.conditions[0].op",
        "only be limited with 'lt' or 'lte'",
    ),
    (
        {
            "name": "x",
            "conditions": [{"path": "state.t.n", "op": "lte", "value": "1"}],
            "state": STATE_RULE,
        },
        f"{R}.conditions[0].value",
        "'lte' needs a number",
    ),
    (
        {
            "name": "x",
            "conditions": [{"path": "args.a", "op": "exists", "value": True}],
            "state": {"counter": "", "window": "hour"},
        },
        f"{R}.state.counter",
        "counter must not be empty",
    ),
    (
        {
            "name": "x",
            "conditions": [{"path": "args.a", "op": "exists", "value": True}],
            "state": {"counter": "n", "window": "month"},
        },
        f"{R}.state.window",
        "must be 'second', 'minute', 'hour' or 'day'",
    ),
    (
        {
            "name": "x",
            "conditions": [{"path": "args.a", "op": "exists", "value": True}],
            "state": {"counter": "n", "window": "hour", "increment_from": "amount"},
        },
        f"{R}.state.increment_from",
        "must start with 'args.'",
    ),
    (
        {
            "name": "x",
            "conditions": [{"path": "args.a", "op": "exists", "value": True}],
            "state": {"counter": "n", "window": "hour", "reset": 1},
        },
        f"{R}.state.reset",
        "allowed here: counter, window, increment, increment_from",
    ),
    (
        {"name": "x", "rate_limit": "5/hour", "priority": 1},
        f"{R}.priority",
        "allowed here: name, action",
    ),
]


@pytest.mark.parametrize(("rule", "path", "fragment"), INTERCEPT_ERRORS)
def test_intercept_rule_errors(rule: dict[str, Any], path: str, fragment: str) -> None:
    found = problems_of(intercept_rule(rule))
    assert any(p == path and fragment in m for p, m in found), found


def test_duplicate_state_counters_in_one_tool() -> None:
    doc = {
        "version": "1",
        "tools": {"t": {"rules": [{"rate_limit": "5/hour"}, {"rate_limit": "9/hour"}]}},
    }
    assert problems_of(doc) == [
        (
            "$.tools.t.rules[1]",
            "duplicate state counter '_rate_hour' (also used by rules[0]); use different "
            "counter names or windows",
        )
    ]


def test_state_condition_on_another_rules_counter_is_unsupported() -> None:
    doc = {
        "version": "1",
        "tools": {
            "t": {
                "rules": [
                    {
                        "name": "counts",
                        "conditions": [{"path": "state.t.n", "op": "lte", "value": 5}],
                        "state": STATE_RULE,
                    },
                    {
                        "name": "reads",
                        "conditions": [{"path": "state.t.n", "op": "lte", "value": 3}],
                    },
                ]
            }
        },
    }
    ((path, message),) = problems_of(doc)
    assert path == "$.tools.t.rules[1].conditions[0].path"
    assert "move this condition into that rule" in message


def test_wildcard_state_scope_is_global() -> None:
    bad = {
        "version": "1",
        "tools": {
            "*": {
                "rules": [
                    {
                        "name": "g",
                        "conditions": [{"path": "state.*.n", "op": "lte", "value": 5}],
                        "state": STATE_RULE,
                    }
                ]
            }
        },
    }
    ((path, message),) = problems_of(bad)
    assert path == "$.tools['*'].rules[0].conditions[0].path"
    assert "state._global.<counter>" in message


def test_all_problems_reported_at_once() -> None:
    doc = base()
    doc["version"] = "2"
    doc["extra"] = True
    doc["tools"]["image.generate.gemini"]["limits"][0]["max"] = -5
    paths = [p for p, _ in problems_of(doc)]
    assert paths == ["$.version", f"{T}.limits[0].max", "$.extra"]


@pytest.mark.parametrize(
    ("methods", "path", "fragment"),
    [
        ({"default": "block"}, "$.methods.default", "deny"),
        ({"allow": ["tools/call"]}, "$.methods.allow[0]", "tools/call is governed"),
        ({"deny": ["ping", "ping"]}, "$.methods.deny[1]", "duplicate"),
        ({"deny": [" ping"]}, "$.methods.deny[0]", "surrounding spaces"),
        ({"allow": "ping"}, "$.methods.allow", ""),
        ({"other": 1}, "$.methods.other", "unknown field"),
    ],
)
def test_methods_validation(methods: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy({"version": "1", "methods": methods}, name="p")
    text = str(info.value)
    assert path in text
    assert fragment in text


@pytest.mark.parametrize(
    ("cost", "valid"),
    [
        (2, True),
        (3.0, True),
        ({"from": "args.n"}, True),
        ({"from": "args.n.m", "default": 0}, True),
        (-1, False),
        (2.5, False),
        ("3", False),
        ({"from": "n"}, False),
        ({"default": 1}, False),
        ({"from": "args.n", "default": -1}, False),
        ({"from": "args.n", "extra": 1}, False),
    ],
)
def test_schema_describes_limit_cost(cost: Any, valid: bool) -> None:
    doc = mutate(f"{G}/limits/0/cost", cost)
    errors = list(jsonschema.Draft202012Validator(policy_json_schema()).iter_errors(doc))
    assert (not errors) is valid, errors
    if valid:
        load_policy(json.dumps(doc), name="s")
    else:
        problems_of(doc)
