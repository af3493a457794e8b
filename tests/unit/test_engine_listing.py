"""The listing rules of the engine (authz/engine.py): which tools a grant's tools/list loses,
read from the same rules `decide` applies to every call."""

from __future__ import annotations

from typing import Any

import pytest

from authz.engine import decide, hides_tools, listing_filter, never_callable
from authz.model import Grant, McpRequest
from authz.policy import load_policy

HIDDEN = "image.generate.replicate"


def test_listing_filter_follows_hide_and_hide_denied() -> None:
    plain = load_policy({"version": "1"}, name="p")
    assert listing_filter(plain) is None and not hides_tools(plain) and not hides_tools(None)
    hiding_policy = load_policy({"version": "1", "hide": [HIDDEN]}, name="p")
    hiding = listing_filter(hiding_policy)
    assert hides_tools(hiding_policy)
    assert hiding is not None and hiding(HIDDEN) and not hiding("x") and not hiding(None)
    everything = listing_filter(load_policy({"version": "1", "hide": "*"}, name="p"))
    assert everything is not None and everything("x") and everything(None)


DENYING = {
    "version": "1",
    "default": "deny",
    "hide_denied": True,
    "tools": {
        "gemini": {},
        "openai": {"deny_if": [{"conditions": []}]},
        "google": {"deny_if": [{"conditions": [{"path": "args.x", "op": "eq", "value": 1}]}]},
        "flux": {"rules": [{"name": "off", "action": "deny"}]},
        "rate": {"rules": [{"rate_limit": "5/minute"}]},
    },
}


def test_hide_denied_removes_tools_the_grant_can_never_call() -> None:
    policy = load_policy(DENYING, name="d")
    hides = listing_filter(policy)
    assert hides is not None and hides_tools(policy)
    assert [n for n in ("gemini", "openai", "google", "flux", "rate", "unlisted") if hides(n)] == [
        "openai",
        "flux",
        "unlisted",
    ]


@pytest.mark.parametrize(
    "policy",
    [
        DENYING,
        {"version": "1", "tools": {"a": {}, "*": {"deny_if": [{"conditions": []}]}}},
        {"version": "1", "tools": {"a": {}, "*": {"rules": [{"name": "x", "action": "deny"}]}}},
        {
            "version": "1",
            "default": "deny",
            "tools": {
                "*": {"require": [{"conditions": [{"path": "args.x", "op": "gte", "value": 1}]}]},
                "a": {"deny_if": [{"conditions": [{"path": "args.x", "op": "eq", "value": 1}]}]},
            },
        },
    ],
)
def test_never_callable_is_what_decide_does_to_every_call(policy: dict[str, Any]) -> None:
    """The listing rules are the engine's own: a tool `never_callable` names is denied
    whatever its arguments, and every other tool of these policies has a call that runs."""
    loaded = load_policy(policy, name="p")
    grant = Grant("g", "g", "p")
    samples: list[dict[str, Any]] = [{}, {"x": 1}, {"x": 2}, {"x": "1"}]
    for tool in ("gemini", "openai", "google", "flux", "rate", "a", "*", "unlisted"):
        calls = [McpRequest("tools/call", 1, False, tool=tool, arguments=a) for a in samples]
        allowed = [decide(loaded, grant, call).allowed for call in calls]
        assert not any(allowed) if never_callable(loaded, tool) else any(allowed), tool


def test_never_callable_under_default_allow_and_the_star_entry() -> None:
    allow = load_policy({"version": "1", "tools": {"a": {}}}, name="a")
    assert not never_callable(allow, "unlisted") and not never_callable(allow, "a")
    star = load_policy(
        {"version": "1", "tools": {"*": {"deny_if": [{"conditions": []}]}}}, name="s"
    )
    assert never_callable(star, "anything")


@pytest.mark.parametrize(
    ("star", "never"),
    [
        ({"deny_if": [{"conditions": []}]}, True),
        ({"rules": [{"name": "off", "action": "deny"}]}, True),
        ({"deny_if": [{"conditions": [{"path": "args.x", "op": "eq", "value": 1}]}]}, False),
        ({"rules": [{"rate_limit": "5/minute"}]}, False),
        ({}, False),
    ],
)
def test_the_star_entry_counts_beside_a_tools_own_entry(star: dict[str, Any], never: bool) -> None:
    policy = load_policy(
        {"version": "1", "hide_denied": True, "tools": {"a": {}, "*": star}}, name="s"
    )
    assert never_callable(policy, "a") is never
    assert never_callable(policy, "unlisted") is never
    hides = listing_filter(policy)
    assert hides is not None and hides("a") is never
