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


ARGS = {"mode": "safe", "n": 5, "tags": ["a", "b"], "meta": {"owner": "ann"}, "flag": True}
R0 = "/tools/t/require/0"
D0 = "/tools/t/deny_if/0"

OPERATOR_CASES = [
    # (op, path, value, holds for ARGS)
    ("eq", "args.mode", "safe", True),
    ("eq", "args.mode", "unsafe", False),
    ("eq", "args.flag", 1, False),
    ("neq", "args.mode", "unsafe", True),
    ("neq", "args.mode", "safe", False),
    ("in", "args.mode", ["safe", "fast"], True),
    ("in", "args.mode", ["fast"], False),
    ("not_in", "args.mode", ["fast"], True),
    ("not_in", "args.mode", ["safe"], False),
    ("lt", "args.n", 6, True),
    ("lt", "args.n", 5, False),
    ("lte", "args.n", 5, True),
    ("lte", "args.n", 4.5, False),
    ("gt", "args.n", 4, True),
    ("gt", "args.n", 5, False),
    ("gte", "args.n", 5.0, True),
    ("gte", "args.n", 6, False),
    ("lt", "args.mode", 6, False),  # type mismatch
    ("regex", "args.mode", "^sa", True),
    ("regex", "args.mode", "af", True),  # search
    ("regex", "args.mode", "^fe", False),
    ("contains", "args.mode", "af", True),
    ("contains", "args.mode", "x", False),
    ("contains", "args.tags", "b", True),
    ("contains", "args.tags", "c", False),
    ("exists", "args.mode", True, True),
    ("exists", "args.mode", False, False),
    ("exists", "args.nope", False, True),
    ("exists", "args.nope", True, False),
    ("eq", "args.meta.owner", "ann", True),  # nested
    ("eq", "args.meta.owner", "bob", False),
    ("eq", "args.meta.owner.deeper", "ann", False),
    ("eq", "args.missing", "x", False),  # missing: false
    ("neq", "args.missing", "x", False),
    ("not_in", "args.missing", ["x"], False),
]

CASES: list[Case] = []
for op, path, value, holds in OPERATOR_CASES:
    name = f"{op}-{path}-{value}"
    # as a requirement: allowed iff the condition holds
    CASES.append(
        Case(
            f"require:{name}",
            require(cond(path, op, value)),
            call("t", ARGS),
            holds,
            None if holds else R0,
        )
    )
    # as a deny_if: denied iff the condition holds
    CASES.append(
        Case(
            f"deny_if:{name}",
            deny_if([cond(path, op, value)]),
            call("t", ARGS),
            not holds,
            D0 if holds else None,
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
        scope_key="g-1",
        window_seconds=60,
        max=30,
        cost=1,
        rule="/tools/image.generate.gemini/limits/image.generate.gemini_rate",
        on_deny=None,
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
        ("session", "g-1/s-9", 1, 2),
        ("grant", "g-1", 3600, 50),
        ("global", "*", 86400, 1000),
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
    assert (claim.scope, claim.scope_key) == ("session", "g-1")


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
        scope_key="*",
        window_seconds=86400,
        max=999,
        cost=250,
        rule="/tools/create_charge/rules/0",
        on_deny=None,
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
    ("from-through-non-object-is-missing", {"from": "args.opts.count"}, {"opts": "x"}, 1),
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
    assert (claim.counter, claim.max, claim.scope_key) == ("images", 5, "g-1")


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
    scope_key="g-1",
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


def test_methods_absent_allows_every_non_tool_method() -> None:
    policy = load_policy(SEED, name="seed")
    for method in ("initialize", "resources/read", "whatever/else", "(response)"):
        assert decide(policy, GRANT, _method(method)).allowed


def test_methods_do_not_govern_tool_calls() -> None:
    policy = load_policy(
        {"version": "1", "default": "allow", "methods": {"default": "deny"}}, name="p"
    )
    assert decide(policy, GRANT, call("anything")).allowed
