"""The decision table: (policy, request, expected outcome, expected rule)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from authz.engine import decide, pointer, settle
from authz.model import (
    Claim,
    Decision,
    DenyKind,
    Exhausted,
    Grant,
    McpRequest,
    Outcome,
    Reservation,
)
from authz.policy import load_policy
from authz.policy.conditions import Truth

GRANT = Grant(id="g-1", label="alice", policy="imagegen")
SEED = (
    b'{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":[{"counter":'
    b'"image.generate.gemini_rate","window":"minute","max":30,"scope":"grant"}]}}}'
)
GEM = "image.generate.gemini"


def call(tool: str, args: dict[str, Any] | None = None, session: str | None = None) -> McpRequest:
    return McpRequest(
        method="tools/call",
        id=1,
        is_notification=False,
        params={"name": tool, "arguments": args or {}},
        tool=tool,
        arguments=args or {},
        session_id=session,
    )


def cond(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


def require(*conds: dict[str, Any], default: str = "allow", **extra: Any) -> dict[str, Any]:
    return {
        "version": "1",
        "default": default,
        "tools": {"t": {"require": [{"conditions": list(conds), **extra}]}},
    }


def deny_if(*rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "version": "1",
        "tools": {"t": {"deny_if": [{"conditions": c, **extra} for c in rules]}},
    }


@dataclass
class Case:
    id: str
    policy: dict[str, Any]
    request: McpRequest
    allowed: bool
    rule: str | None = None
    message: str | None = None  # exact expected message, when given
    extra: dict[str, Any] = field(default_factory=dict)


ARGS = {
    "mode": "safe",
    "n": 5,
    "tags": ["a", "b"],
    "meta": {"owner": "ann"},
    "flag": True,
    "none": None,
    # what an agent sends and a lax MCP server converts: "500" → 500, "yes" → True, ...
    "count": "500",
    "yes": "yes",
    "jtags": '["admin"]',
    "etags": '["adm\\u0069n"]',
    "opts": '{"mode": "danger"}',
}
R0 = "/tools/t/require/0"
D0 = "/tools/t/deny_if/0"
T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN

OPERATOR_CASES: list[tuple[str, str, Any, Truth, bool | None]] = [
    # (op, path, value, truth for ARGS, holds with strict_types false when unknown)
    ("eq", "args.mode", "safe", T, None),
    ("eq", "args.mode", "unsafe", F, None),
    ("eq", "args.flag", 1, U, False),  # booleans are not numbers
    ("eq", "args.flag", "true", U, False),
    ("eq", "args.yes", True, U, False),  # "yes" is true to a lax server
    ("neq", "args.yes", True, U, True),
    ("neq", "args.mode", "unsafe", T, None),
    ("neq", "args.mode", "safe", F, None),
    ("in", "args.mode", ["safe", "fast"], T, None),
    ("in", "args.mode", ["fast"], F, None),
    ("in", "args.mode", ["x", 5], F, None),  # a mixed list compares both types
    ("in", "args.n", ["x", 5], T, None),
    ("in", "args.n", ["5", "6"], U, False),
    ("not_in", "args.mode", ["fast"], T, None),
    ("not_in", "args.mode", ["safe"], F, None),
    ("not_in", "args.n", ["5"], U, True),
    ("lt", "args.n", 6, T, None),
    ("lt", "args.n", 5, F, None),
    ("lte", "args.n", 5, T, None),
    ("lte", "args.n", 4.5, F, None),
    ("gt", "args.n", 4, T, None),
    ("gt", "args.n", 5, F, None),
    ("gte", "args.n", 5.0, T, None),
    ("gte", "args.n", 6, F, None),
    ("lt", "args.mode", 6, U, False),
    ("gt", "args.count", 100, U, False),  # "500"
    ("gt", "args.flag", 0, U, False),
    ("regex", "args.mode", "^sa", T, None),
    ("regex", "args.mode", "af", T, None),  # search
    ("regex", "args.mode", "^fe", F, None),
    ("regex", "args.n", "5", U, False),
    ("contains", "args.mode", "af", T, None),
    ("contains", "args.mode", "x", F, None),
    ("contains", "args.tags", "b", T, None),
    ("contains", "args.tags", "c", F, None),
    ("contains", "args.tags", 5, U, False),  # elements are strings
    ("contains", "args.n", 5, U, False),
    ("contains", "args.jtags", "admin", T, None),  # as text and as the array it spells
    ("contains", "args.etags", "admin", U, False),  # only the array it spells has it
    ("exists", "args.mode", True, T, None),
    ("exists", "args.mode", False, F, None),
    ("exists", "args.nope", False, T, None),
    ("exists", "args.nope", True, F, None),
    ("exists", "args.opts.mode", True, U, False),  # opts is a string: may be an object
    ("exists", "args.opts.mode", False, U, True),
    ("eq", "args.meta.owner", "ann", T, None),  # nested
    ("eq", "args.meta.owner", "bob", F, None),
    ("eq", "args.meta.owner.deeper", "ann", U, False),
    ("eq", "args.opts.mode", "danger", U, False),
    ("eq", "args.meta", {"owner": "ann"}, T, None),  # structural
    ("eq", "args.meta", {"owner": 1}, F, None),
    ("eq", "args.tags", ["a"], F, None),
    ("eq", "args.tags", "a", U, False),
    ("eq", "args.none", None, T, None),  # null is compared as null, never unknown
    ("gt", "args.none", 1, F, None),
    ("neq", "args.none", 1, T, None),
    ("eq", "args.mode", None, F, None),
    ("eq", "args.missing", "x", F, None),  # missing: false
    ("neq", "args.missing", "x", F, None),
    ("not_in", "args.missing", ["x"], F, None),
    ("gt", "args.missing.deeper", 1, F, None),
]


def lax(policy: dict[str, Any]) -> dict[str, Any]:
    return {**policy, "strict_types": False}


CASES: list[Case] = []
for op, path, value, truth, lax_holds in OPERATOR_CASES:
    name = f"{op}-{path}-{value}"
    # as a requirement: allowed only when the condition is true
    CASES.append(
        Case(
            f"require:{name}",
            require(cond(path, op, value)),
            call("t", ARGS),
            truth is T,
            None if truth is T else R0,
        )
    )
    # as a deny_if: denied when the condition is true or unknown
    CASES.append(
        Case(
            f"deny_if:{name}",
            deny_if([cond(path, op, value)]),
            call("t", ARGS),
            truth is F,
            None if truth is F else D0,
        )
    )
    if truth is U:
        # strict_types false: a mismatch is plain false (neq/not_in: true)
        assert lax_holds is not None
        CASES.append(
            Case(
                f"lax-require:{name}",
                lax(require(cond(path, op, value))),
                call("t", ARGS),
                lax_holds,
                None if lax_holds else R0,
            )
        )
        CASES.append(
            Case(
                f"lax-deny_if:{name}",
                lax(deny_if([cond(path, op, value)])),
                call("t", ARGS),
                not lax_holds,
                D0 if lax_holds else None,
            )
        )

CASES += [
    Case(
        "require-default-message",
        require(cond("args.mode", "eq", "safe"), cond("args.n", "lte", 3)),
        call("t", ARGS),
        False,
        R0,
        "tool 't' requires args.mode eq 'safe' and args.n lte 3",
    ),
    Case(
        "require-named-message",
        require(cond("args.mode", "eq", "fast"), name="fast only"),
        call("t", ARGS),
        False,
        R0,
        "tool 't' requires args.mode eq 'fast' (rule 'fast only')",
    ),
    Case(
        "require-on-deny",
        require(cond("args.mode", "eq", "fast"), on_deny="use fast mode"),
        call("t", ARGS),
        False,
        R0,
        "use fast mode",
    ),
    Case("require-empty-conditions-allow", require(), call("t", {}), True),
    Case(
        "require-message-has-no-request-values",
        require(cond("args.secret", "eq", "expected")),
        call("t", {"secret": "hunter2"}),
        False,
        R0,
        "tool 't' requires args.secret eq 'expected'",
    ),
    Case(
        "deny_if-empty-conditions-always-denies",
        deny_if([]),
        call("t", {}),
        False,
        D0,
        "tool 't' is denied by policy",
    ),
    Case(
        "deny_if-default-message",
        deny_if([cond("args.n", "gt", 1)]),
        call("t", ARGS),
        False,
        D0,
        "tool 't' is denied when args.n gt 1",
    ),
    Case(
        "deny_if-on-deny",
        deny_if([cond("args.n", "gt", 1)], on_deny="too many"),
        call("t", ARGS),
        False,
        D0,
        "too many",
    ),
    Case(
        "deny_if-second-rule",
        deny_if([cond("args.n", "gt", 10)], [cond("args.mode", "eq", "safe")]),
        call("t", ARGS),
        False,
        "/tools/t/deny_if/1",
    ),
    Case(
        "deny_if-conditions-anded",
        deny_if([cond("args.n", "gt", 1), cond("args.mode", "eq", "fast")]),
        call("t", ARGS),
        True,
    ),
    Case(
        "require-before-deny_if",
        {
            "version": "1",
            "tools": {
                "t": {
                    "deny_if": [{"conditions": []}],
                    "require": [{"conditions": [cond("args.mode", "eq", "x")]}],
                }
            },
        },
        call("t", ARGS),
        False,
        R0,
    ),
    Case(
        "first-failing-require",
        {
            "version": "1",
            "tools": {
                "t": {
                    "require": [
                        {"conditions": [cond("args.mode", "eq", "safe")]},
                        {"conditions": [cond("args.n", "lt", 0)]},
                        {"conditions": [cond("args.n", "gt", 100)]},
                    ]
                }
            },
        },
        call("t", ARGS),
        False,
        "/tools/t/require/1",
    ),
    # hide and default
    Case(
        "hide-listed",
        {"version": "1", "hide": ["t"]},
        call("t"),
        False,
        "(hidden)",
        "tool 't' is hidden by policy",
    ),
    Case("hide-other", {"version": "1", "hide": ["u"]}, call("t"), True),
    Case("hide-star-string", {"version": "1", "hide": "*"}, call("t"), False, "(hidden)"),
    Case("hide-star-element", {"version": "1", "hide": ["*"]}, call("t"), False, "(hidden)"),
    Case(
        "hide-before-default-and-rules",
        {"version": "1", "default": "deny", "hide": ["t"], "tools": {"t": {}}},
        call("t"),
        False,
        "(hidden)",
    ),
    Case(
        "default-deny-unlisted",
        {"version": "1", "default": "deny"},
        call("t"),
        False,
        "(default deny)",
        "tool 't' is not permitted by policy",
    ),
    Case(
        "default-deny-listed",
        {"version": "1", "default": "deny", "tools": {"t": {}}},
        call("t"),
        True,
    ),
    Case("default-allow-unlisted", {"version": "1", "default": "allow"}, call("t"), True),
    Case("default-omitted-is-allow", {"version": "1"}, call("t"), True),
    Case(
        "default-deny-wildcard-does-not-rescue",
        {"version": "1", "default": "deny", "tools": {"*": {}}},
        call("t"),
        False,
        "(default deny)",
    ),
    # "*" entry applies after the tool's own entry
    Case(
        "wildcard-require",
        {
            "version": "1",
            "tools": {"*": {"require": [{"conditions": [cond("args.ok", "eq", True)]}]}},
        },
        call("t", {"ok": False}),
        False,
        "/tools/*/require/0",
    ),
    Case(
        "own-entry-before-wildcard",
        {
            "version": "1",
            "tools": {
                "t": {"deny_if": [{"conditions": []}]},
                "*": {"deny_if": [{"conditions": []}]},
            },
        },
        call("t"),
        False,
        D0,
    ),
    # the "*" entry's require/deny_if/rules still apply when the tool's own entry allows
    *[
        Case(
            f"wildcard-{section}-beside-an-allowing-own-entry-{'holds' if ok else 'denies'}",
            {"version": "1", "default": "deny", "tools": {"t": {}, "*": star}},
            call("t", {"ok": ok}),
            ok,
            None if ok else f"/tools/*/{section}/0",
        )
        for section, star in [
            ("require", {"require": [{"conditions": [cond("args.ok", "eq", True)]}]}),
            ("deny_if", {"deny_if": [{"conditions": [cond("args.ok", "eq", False)]}]}),
            ("rules", {"rules": [{"name": "ok", "conditions": [cond("args.ok", "eq", True)]}]}),
        ]
        for ok in (True, False)
    ],
    Case(
        "wildcard-deny-action-beside-an-own-entry",
        {
            "version": "1",
            "tools": {
                "t": {"limits": [{"counter": "c", "window": "minute", "max": 5}]},
                "*": {"rules": [{"name": "off", "action": "deny"}]},
            },
        },
        call("t"),
        False,
        "/tools/*/rules/0",
        "tool 't' denied by rule 'off'",
    ),
    Case(
        "own-entry-passes-then-wildcard-denies",
        {
            "version": "1",
            "tools": {
                "t": {"require": [{"conditions": [cond("args.ok", "eq", True)]}]},
                "*": {"deny_if": [{"conditions": [], "on_deny": "closed for maintenance"}]},
            },
        },
        call("t", {"ok": True}),
        False,
        "/tools/*/deny_if/0",
        "closed for maintenance",
    ),
    # seed
    Case("seed-allows-gemini", {}, call(GEM, {"prompt": "cat"}), True),
    Case("seed-denies-others", {}, call("image.generate.other"), False, "(default deny)"),
    # Intercept v1 rules
    Case(
        "intercept-deny-action",
        {"version": "1", "tools": {"t": {"rules": [{"name": "block", "action": "deny"}]}}},
        call("t"),
        False,
        "/tools/t/rules/0",
        "tool 't' denied by rule 'block'",
    ),
    Case(
        "intercept-evaluate-fails",
        {
            "version": "1",
            "tools": {
                "t": {
                    "rules": [
                        {
                            "name": "cap",
                            "conditions": [cond("args.n", "lte", 3)],
                            "on_deny": "at most 3",
                        }
                    ]
                }
            },
        },
        call("t", ARGS),
        False,
        "/tools/t/rules/0",
        "at most 3",
    ),
    Case(
        "intercept-evaluate-passes",
        {
            "version": "1",
            "tools": {"t": {"rules": [{"name": "cap", "conditions": [cond("args.n", "lte", 9)]}]}},
        },
        call("t", ARGS),
        True,
    ),
    Case(
        "intercept-wildcard-deny",
        {"version": "1", "tools": {"*": {"rules": [{"name": "nothing", "action": "deny"}]}}},
        call("t"),
        False,
        "/tools/*/rules/0",
    ),
]

# unknown conditions: Kleene AND, and messages that name the argument and the type
WIDE = {"w": "4096", "n": 5, "secret": "hunter2", "opts": '{"mode": "x"}'}
CASES += [
    Case(
        "unknown-deny_if-default-message",
        deny_if([cond("args.w", "gt", 1024)]),
        call("t", WIDE),
        False,
        D0,
        "tool 't' is denied when args.w gt 1024 (args.w must be a number, not a string)",
    ),
    Case(
        "unknown-deny_if-on-deny",
        deny_if([cond("args.w", "gt", 1024)], on_deny="too wide"),
        call("t", WIDE),
        False,
        D0,
        "too wide (args.w must be a number, not a string)",
    ),
    Case(
        "unknown-require-message",
        require(cond("args.w", "lte", 1024)),
        call("t", WIDE),
        False,
        R0,
        "tool 't' requires args.w lte 1024 (args.w must be a number, not a string)",
    ),
    Case(
        "unknown-path-message",
        deny_if([cond("args.opts.mode", "eq", "danger")]),
        call("t", WIDE),
        False,
        D0,
        "tool 't' is denied when args.opts.mode eq 'danger' (args.opts must be an object, "
        "not a string)",
    ),
    Case(
        "unknown-message-has-no-argument-value",
        deny_if([cond("args.secret", "gt", 1)]),
        call("t", WIDE),
        False,
        D0,
        "tool 't' is denied when args.secret gt 1 (args.secret must be a number, not a string)",
    ),
    Case(
        "kleene-true-and-unknown-denies",
        deny_if([cond("args.n", "gt", 1), cond("args.w", "gt", 1024)]),
        call("t", WIDE),
        False,
        D0,
    ),
    Case(
        "kleene-false-and-unknown-allows",
        deny_if([cond("args.n", "gt", 10), cond("args.w", "gt", 1024)]),
        call("t", WIDE),
        True,
    ),
    Case(
        "kleene-unknown-and-false-allows",
        deny_if([cond("args.w", "gt", 1024), cond("args.n", "gt", 10)]),
        call("t", WIDE),
        True,
    ),
    Case(
        "kleene-require-true-and-unknown-denies",
        require(cond("args.n", "gt", 1), cond("args.w", "lt", 9999)),
        call("t", WIDE),
        False,
        R0,
    ),
    Case(
        "kleene-first-unknown-is-named",
        deny_if([cond("args.opts.mode", "eq", "x"), cond("args.w", "gt", 1024)]),
        call("t", WIDE),
        False,
        D0,
        "tool 't' is denied when args.opts.mode eq 'x' and args.w gt 1024 (args.opts must be "
        "an object, not a string)",
    ),
    Case(
        "unknown-intercept-evaluate-denies",
        {
            "version": "1",
            "tools": {
                "t": {
                    "rules": [
                        {
                            "name": "cap",
                            "conditions": [cond("args.w", "lte", 9999)],
                            "on_deny": "at most 9999",
                        }
                    ]
                }
            },
        },
        call("t", WIDE),
        False,
        "/tools/t/rules/0",
        "at most 9999 (args.w must be a number, not a string)",
    ),
    Case(
        "lax-intercept-evaluate-denies-as-before",
        lax(
            {
                "version": "1",
                "tools": {
                    "t": {"rules": [{"name": "cap", "conditions": [cond("args.w", "lte", 9)]}]}
                },
            }
        ),
        call("t", WIDE),
        False,
        "/tools/t/rules/0",
        "tool 't' denied by rule 'cap'",
    ),
    Case(
        "lax-deny_if-mismatch-allows",
        lax(deny_if([cond("args.w", "gt", 1024)])),
        call("t", WIDE),
        True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_table(case: Case) -> None:
    policy = load_policy(case.policy or SEED, name="p")
    decision = decide(policy, GRANT, case.request)
    assert decision.allowed is case.allowed, decision
    assert decision.rule == case.rule
    if not case.allowed:
        assert decision.kind is DenyKind.POLICY
        assert not decision.message.startswith("[")
    if case.message is not None:
        assert decision.message == case.message
    assert "hunter2" not in decision.message


def test_no_policy_denies_everything() -> None:
    for request in (call("t"), McpRequest(method="tools/list", id=1, is_notification=False)):
        decision = decide(None, GRANT, request)
        assert decision.outcome is Outcome.DENY
        assert decision.kind is DenyKind.POLICY
        assert decision.rule == "(no policy)"
        assert "'imagegen'" in decision.message


@pytest.mark.parametrize(
    "method", ["initialize", "tools/list", "notifications/initialized", "ping"]
)
def test_non_tool_methods_allowed(method: str) -> None:
    policy = load_policy({"version": "1", "default": "deny", "hide": "*"}, name="p")
    decision = decide(policy, GRANT, McpRequest(method=method, id=None, is_notification=True))
    assert decision == Decision.allow()


def test_tool_call_without_name_is_bad_request() -> None:
    policy = load_policy({"version": "1"}, name="p")
    request = McpRequest(method="tools/call", id=1, is_notification=False)
    decision = decide(policy, GRANT, request)
    assert decision.kind is DenyKind.BAD_REQUEST


# -- limits → claims -------------------------------------------------------------------


def claims_for(
    policy: dict[str, Any] | bytes, request: McpRequest, grant: Grant = GRANT
) -> tuple[Claim, ...]:
    decision = decide(load_policy(policy, name="p"), grant, request)
    assert decision.allowed, decision
    assert decision.rule is None
    return decision.claims


def test_seed_claim() -> None:
    (claim,) = claims_for(SEED, call(GEM))
    assert claim == Claim(
        counter="image.generate.gemini_rate",
        scope="grant",
        scope_key=("g-1",),
        window_seconds=60,
        max=30,
        cost=1,
        rule="/tools/image.generate.gemini/limits/image.generate.gemini_rate",
        on_deny=None,
        policy="imagegen",
    )


def test_no_limits_no_claims() -> None:
    assert claims_for({"version": "1"}, call("t")) == ()


def limit(counter: str, window: str = "minute", max_: int = 5, **extra: Any) -> dict[str, Any]:
    return {"counter": counter, "window": window, "max": max_, **extra}


def test_claims_order_pointers_and_escaping() -> None:
    policy = {
        "version": "1",
        "all_tools": {"limits": [limit("all/calls", "day", 1000)]},
        "tools": {
            "a/b~c": {"limits": [limit("x~y/z", "second", 2, scope="session", on_deny="slow")]},
            "*": {"limits": [limit("star", "hour", 50, scope="grant")]},
        },
    }
    claims = claims_for(policy, call("a/b~c", session="s-9"))
    assert [c.rule for c in claims] == [
        "/tools/a~1b~0c/limits/x~0y~1z",
        "/tools/*/limits/star",
        "/all_tools/limits/all~1calls",
    ]
    assert [(c.scope, c.scope_key, c.window_seconds, c.max) for c in claims] == [
        ("session", ("g-1", "s-9"), 1, 2),
        ("grant", ("g-1",), 3600, 50),
        ("global", (), 86400, 1000),
    ]
    assert claims[0].on_deny == "slow"
    assert all(c.cost == 1 for c in claims)


def test_default_allow_unlisted_tool_gets_only_all_tools_limits() -> None:
    policy = {
        "version": "1",
        "all_tools": {"limits": [limit("calls")]},
        "tools": {"other": {"limits": [limit("other")]}},
    }
    (claim,) = claims_for(policy, call("unlisted"))
    assert claim.rule == "/all_tools/limits/calls"


def test_session_scope_falls_back_to_grant() -> None:
    policy = {"version": "1", "all_tools": {"limits": [limit("c", scope="session")]}}
    (claim,) = claims_for(policy, call("t"))
    assert (claim.scope, claim.scope_key) == ("session", ("g-1",))


def test_denied_calls_carry_no_claims() -> None:
    policy = {
        "version": "1",
        "tools": {"t": {"deny_if": [{"conditions": []}], "limits": [limit("c")]}},
    }
    decision = decide(load_policy(policy, name="p"), GRANT, call("t"))
    assert not decision.allowed and decision.claims == ()


def test_intercept_rule_claims() -> None:
    policy = {
        "version": "1",
        "tools": {
            "create_charge": {
                "rules": [
                    {
                        "name": "daily spend cap",
                        "conditions": [
                            {"path": "state.create_charge.daily_spend", "op": "lt", "value": 1000}
                        ],
                        "state": {
                            "counter": "daily_spend",
                            "window": "day",
                            "increment_from": "args.amount",
                        },
                    }
                ]
            },
            "*": {"rules": [{"name": "global", "rate_limit": "60/minute", "on_deny": "slow down"}]},
        },
    }
    spend, rate = claims_for(policy, call("create_charge", {"amount": 250.7}))
    assert spend == Claim(
        counter="state.create_charge.daily_spend",
        scope="global",
        scope_key=(),
        window_seconds=86400,
        max=999,
        cost=250,
        rule="/tools/create_charge/rules/0",
        on_deny=None,
        policy="imagegen",
        state=("create_charge", "daily_spend"),
    )
    assert (rate.counter, rate.max, rate.cost, rate.rule, rate.on_deny) == (
        "state._global._rate_minute",
        60,
        1,
        "/tools/*/rules/0",
        "slow down",
    )
    for bad in ({}, {"amount": "250"}, {"amount": -1}, {"amount": True}):
        decision = decide(load_policy(policy, name="p"), GRANT, call("create_charge", bad))
        assert not decision.allowed and decision.rule == "/tools/create_charge/rules/0"
        assert decision.message == (
            "tool 'create_charge': rule 'daily spend cap' counts args.amount, which must be a "
            "non-negative number"
        )


# -- limit cost (mcp-authz extension) --------------------------------------------------

N = {"from": "args.n"}
# (id, the limit's cost (... omits it), call arguments, expected claim cost; None: denied)
COST_CASES: list[tuple[str, Any, dict[str, Any], int | None]] = [
    ("omitted-costs-one", ..., {"n": 4}, 1),
    ("number", 3, {}, 3),
    ("number-zero", 0, {}, 0),
    ("number-above-max", 9, {}, 9),  # never fits: the store reports it exhausted
    ("from-present", N, {"n": 4}, 4),
    ("from-zero", N, {"n": 0}, 0),
    ("from-integral-float", N, {"n": 3.0}, 3),
    ("from-nested", {"from": "args.opts.count"}, {"opts": {"count": 2}}, 2),
    ("from-above-max", N, {"n": 50}, 50),
    ("from-missing-default-omitted", N, {}, 1),
    ("from-missing-default", {"from": "args.n", "default": 4}, {"m": 2}, 4),
    ("from-missing-default-zero", {"from": "args.n", "default": 0}, {}, 0),
    ("from-missing-default-ignored-when-present", {"from": "args.n", "default": 4}, {"n": 2}, 2),
    # a string the server may decode into {"count": 50}: unusable, never the default
    ("from-through-non-object-is-unusable", {"from": "args.opts.count"}, {"opts": "x"}, None),
    ("from-through-null-is-missing", {"from": "args.opts.count"}, {"opts": None}, 1),
    ("from-float", N, {"n": 2.5}, None),
    ("from-string", N, {"n": "3"}, None),
    ("from-true", N, {"n": True}, None),
    ("from-false", N, {"n": False}, None),
    ("from-negative", N, {"n": -1}, None),
    ("from-negative-float", N, {"n": -2.0}, None),
    ("from-null", N, {"n": None}, None),  # present: null is not missing
    ("from-list", N, {"n": [3]}, None),
    ("from-object", N, {"n": {"v": 3}}, None),
    ("from-invalid-default-unused", {"from": "args.n", "default": 7}, {"n": "7"}, None),
]


def _cost_policy(where: str, cost: Any) -> dict[str, Any]:
    lim = limit("images", max_=5, scope="grant")
    if cost is not ...:
        lim["cost"] = cost
    if where == "all_tools":
        return {"version": "1", "all_tools": {"limits": [lim]}}
    return {"version": "1", "tools": {"t": {"limits": [lim]}}}


@pytest.mark.parametrize("where", ["tools", "all_tools"])
@pytest.mark.parametrize(
    ("cost", "args", "expected"),
    [case[1:] for case in COST_CASES],
    ids=[case[0] for case in COST_CASES],
)
def test_limit_cost(where: str, cost: Any, args: dict[str, Any], expected: int | None) -> None:
    policy = load_policy(_cost_policy(where, cost), name="p")
    decision = decide(policy, GRANT, call("t", args))
    base = "/tools/t/limits/images" if where == "tools" else "/all_tools/limits/images"
    if expected is None:
        assert decision.outcome is Outcome.DENY
        assert decision.kind is DenyKind.POLICY
        assert decision.rule == base + "/cost"
        assert decision.claims == ()
        path = cost["from"]
        assert decision.message == (
            f"tool 't': limit 'images' counts {path}, which must be a non-negative integer"
        )
        assert not any(ch.isdigit() for ch in decision.message)  # no argument values
        return
    assert decision.allowed, decision
    (claim,) = decision.claims
    assert claim.rule == base
    assert claim.cost == expected and type(claim.cost) is int
    assert (claim.counter, claim.max, claim.scope_key) == ("images", 5, ("g-1",))


def test_cost_denial_pointers_are_escaped() -> None:
    bad = {"from": "args.n"}
    policy = {
        "version": "1",
        "all_tools": {"limits": [limit("all/n~", cost=bad)]},
        "tools": {
            "a/b~c": {"limits": [limit("x~y/z", cost=bad)]},
            "*": {"limits": [limit("st/ar", cost={"from": "args.m"})]},
        },
    }
    loaded = load_policy(policy, name="p")

    def rule(args: dict[str, Any]) -> str | None:
        decision = decide(loaded, GRANT, call("a/b~c", args))
        assert decision.kind is DenyKind.POLICY, decision
        return decision.rule

    # the first unusable cost in claim order denies: own entry, then "*", then all_tools
    assert rule({"n": "x"}) == "/tools/a~1b~0c/limits/x~0y~1z/cost"
    assert rule({"m": 1.5}) == "/tools/*/limits/st~1ar/cost"
    other = decide(loaded, GRANT, call("other", {"n": -1}))
    assert other.rule == "/all_tools/limits/all~1n~0/cost"
    assert other.message == (
        "tool 'other': limit 'all/n~' counts args.n, which must be a non-negative integer"
    )


def test_cost_checked_after_policy_rules() -> None:
    policy = {
        "version": "1",
        "tools": {
            "t": {
                "deny_if": [{"conditions": [cond("args.mode", "eq", "x")]}],
                "limits": [limit("c", cost={"from": "args.n"})],
            }
        },
    }
    decision = decide(load_policy(policy, name="p"), GRANT, call("t", {"mode": "x", "n": "1"}))
    assert decision.rule == D0


def test_claims_carry_each_limits_cost() -> None:
    policy = {
        "version": "1",
        "all_tools": {"limits": [limit("calls", max_=100)]},
        "tools": {
            "t": {
                "limits": [
                    limit("images", max_=10, cost={"from": "args.count", "default": 1}),
                    limit("credits", max_=1000, cost=25),
                ]
            }
        },
    }
    claims = claims_for(policy, call("t", {"count": 4}))
    assert [(c.counter, c.cost) for c in claims] == [("images", 4), ("credits", 25), ("calls", 1)]


async def test_weighted_limit_with_memory_store() -> None:
    from authz.counters import MemoryCounterStore

    policy = load_policy(
        {
            "version": "1",
            "tools": {"t": {"limits": [limit("images", max_=5, cost={"from": "args.count"})]}},
        },
        name="p",
    )
    store = MemoryCounterStore()
    now = 1_800_000_000.0

    async def run(args: dict[str, Any]) -> Decision:
        decision = decide(policy, GRANT, call("t", args))
        return settle(decision, await store.reserve(decision.claims, now))

    assert (await run({"count": 3})).allowed
    denied = await run({"count": 3})  # 3 + 3 > 5
    assert denied.kind is DenyKind.RATE_LIMITED and denied.rule == "/tools/t/limits/images"
    assert (await run({"count": 2})).allowed  # exactly full
    assert (await run({"count": 0})).allowed  # free calls still fit
    assert (await run({})).kind is DenyKind.RATE_LIMITED  # missing: default 1
    assert (await run({"count": 9})).kind is DenyKind.RATE_LIMITED


async def test_same_bucket_claims_take_the_largest_cost() -> None:
    from authz.counters import MemoryCounterStore

    shared = limit("shared", max_=10, scope="grant")
    policy = load_policy(
        {
            "version": "1",
            "all_tools": {"limits": [shared]},
            "tools": {"t": {"limits": [{**shared, "cost": {"from": "args.n"}}]}},
        },
        name="p",
    )
    decision = decide(policy, GRANT, call("t", {"n": 4}))
    assert [c.cost for c in decision.claims] == [4, 1]
    assert decision.claims[0].bucket == decision.claims[1].bucket
    reservation = await MemoryCounterStore().reserve(decision.claims, 1_800_000_000.0)
    assert isinstance(reservation, Reservation)
    assert [cost for _, _, cost in reservation.entries] == [4]


# -- settle ----------------------------------------------------------------------------

SEED_CLAIM = Claim(
    counter="image.generate.gemini_rate",
    scope="grant",
    scope_key=("g-1",),
    window_seconds=60,
    max=30,
    cost=1,
    rule="/tools/image.generate.gemini/limits/image.generate.gemini_rate",
)


def test_settle_reservation_keeps_allow() -> None:
    decision = Decision.allow(claims=(SEED_CLAIM,))
    reservation = Reservation(entries=((SEED_CLAIM.bucket, 60, 1),))
    settled = settle(decision, reservation)
    assert settled.allowed and settled.reservation is reservation
    assert settled.claims == (SEED_CLAIM,)


def test_settle_exhausted_denies_with_retry() -> None:
    settled = settle(Decision.allow(claims=(SEED_CLAIM,)), Exhausted(SEED_CLAIM, 12))
    assert settled.outcome is Outcome.DENY
    assert settled.kind is DenyKind.RATE_LIMITED
    assert settled.rule == SEED_CLAIM.rule
    assert settled.retry_after == 12
    assert settled.message == (
        "rate limit 'image.generate.gemini_rate' exceeded: 30 per minute per grant; retry after 12s"
    )


@pytest.mark.parametrize(
    ("scope", "window", "on_deny", "message"),
    [
        (
            "global",
            86400,
            None,
            "rate limit 'c' exceeded: 30 per day across all callers; retry after 5s",
        ),
        ("session", 1, None, "rate limit 'c' exceeded: 30 per second per session; retry after 5s"),
        ("grant", 3600, "quota used up", "quota used up"),
    ],
)
def test_settle_messages(scope: str, window: int, on_deny: str | None, message: str) -> None:
    claim = Claim("c", scope, "k", window, 30, 1, "/all_tools/limits/c", on_deny)
    assert settle(Decision.allow(claims=(claim,)), Exhausted(claim, 5)).message == message


def test_settle_leaves_denials_alone() -> None:
    denied = Decision.deny(DenyKind.POLICY, "no", rule="(hidden)")
    assert settle(denied, Exhausted(SEED_CLAIM, 3)) is denied


def test_pointer_escaping() -> None:
    assert pointer("tools", "a/b", "limits", "~x") == "/tools/a~1b/limits/~0x"
    assert pointer("tools", "t", "require", 0) == "/tools/t/require/0"


async def test_seed_end_to_end_with_memory_store() -> None:
    from authz.counters import MemoryCounterStore

    policy = load_policy(SEED, name="imagegen")
    store = MemoryCounterStore()
    now = 1_800_000_000.0 + 48  # 12 s before the minute ends
    for _ in range(30):
        decision = decide(policy, GRANT, call(GEM))
        final = settle(decision, await store.reserve(decision.claims, now))
        assert final.allowed and final.reservation is not None
    decision = decide(policy, GRANT, call(GEM))
    final = settle(decision, await store.reserve(decision.claims, now))
    assert final.kind is DenyKind.RATE_LIMITED and final.retry_after == 12
    assert final.message == (
        "rate limit 'image.generate.gemini_rate' exceeded: 30 per minute per grant; retry after 12s"
    )
    other = Grant(id="g-2", label="bob", policy="imagegen")
    decision = decide(policy, other, call(GEM))
    assert settle(decision, await store.reserve(decision.claims, now)).allowed


def _method(name: str, notification: bool = False) -> McpRequest:
    return McpRequest(method=name, id=None if notification else 1, is_notification=notification)


STRICT_METHODS = {
    "version": "1",
    "default": "deny",
    "methods": {
        "default": "deny",
        "allow": ["initialize", "notifications/initialized", "tools/list", "ping"],
        "deny": ["ping"],
    },
}


@pytest.mark.parametrize(
    ("method", "allowed", "rule"),
    [
        ("initialize", True, None),
        ("tools/list", True, None),
        ("notifications/initialized", True, None),
        ("ping", False, "/methods/deny/0"),  # deny wins over allow
        ("resources/list", False, "/methods/default"),
        ("Tools/List", False, "/methods/default"),  # exact, case-sensitive
        ("(response)", False, "/methods/default"),
    ],
)
def test_methods_extension(method: str, allowed: bool, rule: str | None) -> None:
    policy = load_policy(STRICT_METHODS, name="strict")
    decision = decide(policy, GRANT, _method(method))
    assert decision.allowed is allowed
    assert decision.rule == rule
    if not allowed:
        assert decision.kind is DenyKind.POLICY
        assert method in decision.message


def test_methods_absent_allows_every_method_that_is_not_content() -> None:
    policy = load_policy(SEED, name="seed")
    for method in ("initialize", "resources/list", "whatever/else", "(response)"):
        assert decide(policy, GRANT, _method(method)).allowed


def test_methods_do_not_govern_tool_calls() -> None:
    policy = load_policy(
        {"version": "1", "default": "allow", "methods": {"default": "deny"}}, name="p"
    )
    assert decide(policy, GRANT, call("anything")).allowed


# -- approval rules hold on true or unknown -----------------------------------------------


@pytest.mark.parametrize(
    ("args", "strict", "held"),
    [
        ({"amount": 500}, True, True),
        ({"amount": 50}, True, False),
        ({"amount": "500"}, True, True),  # unknown holds the call
        ({"amount": "500"}, False, False),  # a mismatch is false without strict types
        ({}, True, False),  # missing: false
    ],
)
def test_approve_if_holds_on_true_or_unknown(
    args: dict[str, Any], strict: bool, held: bool
) -> None:
    policy = {
        "version": "1",
        "strict_types": strict,
        "tools": {
            "t": {"approve_if": [{"name": "big", "conditions": [cond("args.amount", "gt", 100)]}]}
        },
    }
    decision = decide(load_policy(policy, name="p"), GRANT, call("t", args))
    assert decision.allowed
    assert (decision.approval is not None) is held
    if held:
        assert decision.approval is not None
        assert decision.approval.rule == "/tools/t/approve_if/0"


# -- approval rules: the tool's own entry, then "*" ---------------------------------------------

HOLDS = [cond("args.amount", "gt", 100)]


@pytest.mark.parametrize(
    ("own", "star", "amount", "rule"),
    [
        # "*" asks for approval although the tool has an entry of its own
        ({}, {"approve_if": [{"conditions": HOLDS}]}, 500, "/tools/*/approve_if/0"),
        ({}, {"require_approval": True}, 5, "/tools/*/require_approval"),
        (
            {"limits": [limit("c")], "deny_if": [{"conditions": [cond("args.x", "eq", 1)]}]},
            {"approve_if": [{"conditions": HOLDS}]},
            500,
            "/tools/*/approve_if/0",
        ),
        # the own entry's rule does not hold: "*" still does
        (
            {"approve_if": [{"conditions": [cond("args.amount", "gt", 1000)]}]},
            {"approve_if": [{"conditions": HOLDS}]},
            500,
            "/tools/*/approve_if/0",
        ),
        (
            {"approve_if": [{"conditions": HOLDS}]},
            {"require_approval": True},
            5,
            "/tools/*/require_approval",
        ),
        # both hold: the own entry's rule is the one that asks
        (
            {"approve_if": [{"conditions": HOLDS}]},
            {"require_approval": True},
            500,
            "/tools/t/approve_if/0",
        ),
        (
            {"require_approval": True},
            {"approve_if": [{"conditions": HOLDS}]},
            500,
            "/tools/t/require_approval",
        ),
        # neither holds
        ({}, {"approve_if": [{"conditions": HOLDS}]}, 5, None),
    ],
)
def test_approval_rules_of_the_own_entry_then_the_star_entry(
    own: dict[str, Any], star: dict[str, Any], amount: int, rule: str | None
) -> None:
    policy = {"version": "1", "default": "deny", "tools": {"t": own, "*": star}}
    decision = decide(load_policy(policy, name="p"), GRANT, call("t", {"amount": amount}))
    assert decision.allowed, decision
    assert (decision.approval.rule if decision.approval is not None else None) == rule


def test_a_call_the_star_entry_denies_is_never_put_to_a_person() -> None:
    policy = {
        "version": "1",
        "tools": {
            "t": {"require_approval": True},
            "*": {"deny_if": [{"conditions": [cond("args.amount", "gt", 100)]}]},
        },
    }
    decision = decide(load_policy(policy, name="p"), GRANT, call("t", {"amount": 500}))
    assert not decision.allowed and decision.approval is None
    assert decision.rule == "/tools/*/deny_if/0"


def test_a_tool_named_star_is_judged_by_the_star_entry_once() -> None:
    policy = {
        "version": "1",
        "tools": {"*": {"limits": [limit("c")], "rules": [{"rate_limit": "9/minute"}]}},
    }
    claims = claims_for(policy, call("*"))
    assert [c.rule for c in claims] == ["/tools/*/limits/c", "/tools/*/rules/0"]
