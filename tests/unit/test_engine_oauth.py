"""The caller's token in the policy (table-driven): `token.*` conditions, the `scopes`
shorthand (INSUFFICIENT_SCOPE), limits per token subject and per OAuth client."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from authz.engine import decide
from authz.model import DenyKind, Grant, McpRequest
from authz.policy import PolicyError, load_policy

ISS = "http://127.0.0.1:9400"
GRANT = Grant(id="g-oauth", label="oauth", policy="p")


def caller(scope: tuple[str, ...] = ("mcp:tools",), **claims: Any) -> Grant:
    view: dict[str, Any] = {
        "iss": ISS,
        "sub": "alice",
        "client_id": "client-a",
        "scope": sorted(scope),
        "groups": ["artists"],
    }
    view.update(claims)
    return dataclasses.replace(GRANT, token={k: v for k, v in view.items() if v is not None})


def call(tool: str = "t", args: dict[str, Any] | None = None) -> McpRequest:
    return McpRequest(
        method="tools/call",
        id=1,
        is_notification=False,
        params={"name": tool, "arguments": args or {}},
        tool=tool,
        arguments=args or {},
    )


def policy(tools: dict[str, Any], **extra: Any) -> Any:
    return load_policy(json.dumps({"version": "1", "tools": tools, **extra}).encode(), name="p")


def cond(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


@pytest.mark.parametrize(
    ("entry", "grant", "allowed", "rule"),
    [
        # token.scope is a set: contains tests membership
        (
            {"require": [{"conditions": [cond("token.scope", "contains", "images:generate")]}]},
            caller(("mcp:tools", "images:generate")),
            True,
            None,
        ),
        (
            {"require": [{"conditions": [cond("token.scope", "contains", "images:generate")]}]},
            caller(),
            False,
            "/tools/t/require/0",
        ),
        (
            {"deny_if": [{"conditions": [cond("token.sub", "eq", "mallory")]}]},
            caller(sub="mallory"),
            False,
            "/tools/t/deny_if/0",
        ),
        (
            {"deny_if": [{"conditions": [cond("token.sub", "eq", "mallory")]}]},
            caller(),
            True,
            None,
        ),
        (
            {"require": [{"conditions": [cond("token.client_id", "in", ["client-a"])]}]},
            caller(),
            True,
            None,
        ),
        (
            {"require": [{"conditions": [cond("token.groups", "contains", "admins")]}]},
            caller(),
            False,
            "/tools/t/require/0",
        ),
        (
            {"require": [{"conditions": [cond("token.iss", "eq", ISS)]}]},
            caller(),
            True,
            None,
        ),
        # a caller without token claims has none: false, exists false true
        (
            {"require": [{"conditions": [cond("token.sub", "exists", True)]}]},
            GRANT,
            False,
            "/tools/t/require/0",
        ),
        (
            {"deny_if": [{"conditions": [cond("token.sub", "exists", False)]}]},
            GRANT,
            False,
            "/tools/t/deny_if/0",
        ),
        # token and argument conditions in one rule
        (
            {
                "require": [
                    {
                        "conditions": [
                            cond("token.scope", "contains", "mcp:tools"),
                            cond("args.n", "lte", 2),
                        ]
                    }
                ]
            },
            caller(),
            True,
            None,
        ),
    ],
)
def test_token_conditions(entry: dict[str, Any], grant: Grant, allowed: bool, rule: str) -> None:
    decision = decide(policy({"t": entry}), grant, call(args={"n": 1}))
    assert decision.allowed is allowed
    assert decision.rule == rule
    if not allowed:
        assert decision.kind is DenyKind.POLICY


def test_token_conditions_hold_calls_for_approval() -> None:
    entry = {"approve_if": [{"conditions": [cond("token.groups", "contains", "interns")]}]}
    found = decide(policy({"t": entry}), caller(groups=["interns"]), call())
    assert found.approval is not None
    assert decide(policy({"t": entry}), caller(), call()).approval is None


def test_token_conditions_judge_prompts_too() -> None:
    document = {
        "version": "1",
        "prompts": {"draft": {"require": [{"conditions": [cond("token.sub", "eq", "alice")]}]}},
    }
    loaded = load_policy(json.dumps(document).encode(), name="p")
    request = McpRequest(
        method="prompts/get", id=1, is_notification=False, params={"name": "draft"}, prompt="draft"
    )
    assert decide(loaded, caller(), request).allowed
    assert not decide(loaded, caller(sub="bob"), request).allowed


@pytest.mark.parametrize(
    ("tools", "grant", "allowed", "rule", "scopes"),
    [
        ({"t": {"scopes": ["mcp:tools"]}}, caller(), True, None, ()),
        (
            {"t": {"scopes": ["mcp:tools", "images:generate"]}},
            caller(),
            False,
            "/tools/t/scopes",
            ("mcp:tools", "images:generate"),
        ),
        (
            {"t": {"scopes": ["images:generate"]}, "*": {"scopes": ["mcp:tools"]}},
            caller(("images:generate",)),
            False,
            "/tools/*/scopes",
            ("images:generate", "mcp:tools"),
        ),
        (
            {"t": {"scopes": ["images:generate"]}, "*": {"scopes": ["mcp:tools"]}},
            caller(("images:generate", "mcp:tools")),
            True,
            None,
            (),
        ),
        # a static token carries no scope
        ({"t": {"scopes": ["mcp:tools"]}}, GRANT, False, "/tools/t/scopes", ("mcp:tools",)),
        # another tool's scopes do not apply
        ({"u": {"scopes": ["admin"]}}, caller(), True, None, ()),
    ],
)
def test_scopes_shorthand(
    tools: dict[str, Any], grant: Grant, allowed: bool, rule: str | None, scopes: tuple[str, ...]
) -> None:
    decision = decide(policy(tools), grant, call())
    assert decision.allowed is allowed
    assert decision.rule == rule
    assert decision.scopes == scopes
    if not allowed:
        assert decision.kind is DenyKind.INSUFFICIENT_SCOPE
        assert "images" in decision.message or "mcp:tools" in decision.message


def test_hidden_and_unlisted_tools_are_denied_before_scopes_are_named() -> None:
    loaded = policy({"t": {"scopes": ["secret:scope"]}}, hide=["t"])
    assert decide(loaded, GRANT, call()).kind is DenyKind.POLICY


def _claims(scope: str, grant: Grant) -> tuple[str, ...]:
    limits = {"limits": [{"counter": "c", "window": "minute", "max": 5, "scope": scope}]}
    decision = decide(policy({"t": limits}), grant, call())
    (claim,) = decision.claims
    assert claim.scope == scope
    return claim.scope_key


def test_limits_per_subject_and_per_client() -> None:
    alice_a = caller()
    alice_b = caller(client_id="client-b")
    bob_a = caller(sub="bob")
    assert _claims("sub", alice_a) == _claims("sub", alice_b) != _claims("sub", bob_a)
    assert _claims("client_id", alice_a) == _claims("client_id", bob_a)
    assert _claims("client_id", alice_a) != _claims("client_id", alice_b)
    # another issuer's subject of the same name is another bucket
    assert _claims("sub", alice_a) != _claims("sub", caller(iss="http://other"))
    # without the claim: the grant's bucket
    assert _claims("sub", GRANT) == ("g-oauth",)
    assert _claims("client_id", caller(client_id=None)) == ("g-oauth",)


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        ({"require": [{"conditions": [cond("token.email", "eq", "x")]}]}, "unknown token path"),
        ({"require": [{"conditions": [cond("tokens.sub", "eq", "x")]}]}, "token claim"),
        ({"scopes": ["a b"]}, "is not a scope"),
        ({"scopes": ["a", "a"]}, "duplicate scope"),
        ({"limits": [{"counter": "c", "window": "minute", "max": 1, "scope": "user"}]}, "sub"),
    ],
)
def test_bad_token_paths_scopes_and_limit_scopes_are_refused(
    entry: dict[str, Any], text: str
) -> None:
    with pytest.raises(PolicyError, match=text):
        policy({"t": entry})


def test_limit_cost_cannot_read_the_token() -> None:
    limits = {
        "limits": [{"counter": "c", "window": "minute", "max": 5, "cost": {"from": "token.sub"}}]
    }
    with pytest.raises(PolicyError, match="args"):
        policy({"t": limits})
