"""The listing rules of the engine (authz/engine.py): which tools a grant's tools/list loses,
and which resources, templates and prompts its other listings lose, read from the same rules
`decide` applies to every request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.engine import decide, filters_listings, listing_filter, never_allowed, never_callable
from authz.model import Grant, Hides, McpRequest
from authz.policy import Policy, load_policy

HIDDEN = "image.generate.replicate"


def tools_filter(policy: Policy) -> Hides | None:
    """The `tools` part of the policy's listing filter."""
    found = listing_filter(policy)
    return None if found is None else found.arrays.get("tools")


def test_listing_filter_follows_hide_and_hide_denied() -> None:
    plain = load_policy({"version": "1"}, name="p")
    assert listing_filter(plain) is None and not filters_listings(plain)
    assert not filters_listings(None)
    hiding_policy = load_policy({"version": "1", "hide": [HIDDEN]}, name="p")
    hiding = listing_filter(hiding_policy)
    assert filters_listings(hiding_policy)
    assert hiding is not None and list(hiding.arrays) == ["tools"]
    tools = hiding.arrays["tools"]
    assert tools(HIDDEN) and not tools("x") and not tools(None)
    everything = tools_filter(load_policy({"version": "1", "hide": "*"}, name="p"))
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
    hides = tools_filter(policy)
    assert hides is not None and filters_listings(policy)
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
    hides = tools_filter(policy)
    assert hides is not None and hides("a") is never


# -- resources, templates and prompts -------------------------------------------------------

SEED = (
    '{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":[{"counter":'
    '"image.generate.gemini_rate","window":"minute","max":30,"scope":"grant"}]}}}'
)
CONTENT: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "hide": {"resources": ["file:///etc/{+rest}"], "prompts": ["draft"]},
    "resources": {
        "docs://{name}": {
            "deny_if": [{"conditions": [{"path": "args.name", "op": "eq", "value": "x"}]}]
        },
        "secret://{key}": {"deny_if": [{"conditions": []}]},
    },
    "prompts": {"summarize": {}, "off": {"deny_if": [{"conditions": []}]}},
}


def content_filters(policy: Policy) -> tuple[Hides, Hides, Hides]:
    found = listing_filter(policy)
    assert found is not None
    arrays = found.arrays
    return arrays["resources"], arrays["resourceTemplates"], arrays["prompts"]


def test_the_seed_lists_no_content_and_its_tools_as_sent() -> None:
    policy = load_policy(SEED, name="seed")
    assert filters_listings(policy)
    found = listing_filter(policy)
    assert found is not None and "tools" not in found.arrays  # tools/list passes as sent
    resources, templates, prompts = content_filters(policy)
    assert resources("file:///etc/passwd") and templates("db://{table}") and prompts("p")
    assert resources(None) and templates(None) and prompts(None)


@pytest.mark.parametrize(
    "policy",
    [
        {"version": "1"},
        {"version": "1", "default": "deny", "methods": {"default": "allow"}},
        {"version": "1", "resources": {"docs://{name}": {"require_approval": True}}},
        {
            "version": "1",
            "prompts": {
                "p": {"deny_if": [{"conditions": [{"path": "args.a", "op": "eq", "value": "x"}]}]}
            },
        },
    ],
)
def test_a_policy_that_admits_all_content_filters_no_listing(policy: dict[str, Any]) -> None:
    loaded = load_policy(policy, name="p")
    assert listing_filter(loaded) is None and not filters_listings(loaded)


def test_content_listings_follow_the_content_rules() -> None:
    policy = load_policy(CONTENT, name="c")
    resources, templates, prompts = content_filters(policy)
    assert not resources("docs://readme") and not resources("docs://x")  # conditional
    assert resources("docs://a,b")  # read two ways: denied, so not listed
    assert resources("file:///etc/passwd")  # hidden
    assert resources("secret://k")  # always denied
    assert resources("other://x")  # no entry under default deny
    assert not templates("docs://{name}") and not templates("docs://{other}")  # matched as text
    assert templates("file:///etc/{name}") and templates("secret://{key}")
    assert templates("other://{x}")
    assert not prompts("summarize") and prompts("draft") and prompts("off") and prompts("x")
    star = load_policy({**CONTENT, "resources": {"*": {}}, "prompts": {"*": {}}}, name="s")
    resources, templates, prompts = content_filters(star)
    assert not resources("other://x") and not templates("other://{x}") and not prompts("x")
    assert resources("file:///etc/hosts") and prompts("draft")  # hidden all the same


def test_a_methods_section_that_denies_reading_hides_the_section() -> None:
    policy = load_policy(
        {"version": "1", "methods": {"deny": ["resources/read"]}, "resources": {"*": {}}},
        name="m",
    )
    found = listing_filter(policy)
    assert found is not None and set(found.arrays) == {"resources", "resourceTemplates"}
    assert found.arrays["resources"]("docs://a") and found.arrays["resourceTemplates"]("d://{x}")


@pytest.mark.parametrize("policy", [SEED, CONTENT])
def test_never_allowed_content_is_what_decide_denies(policy: Any) -> None:
    """The listing rules are the engine's own: a resource or prompt `never_allowed` names is
    denied whatever the request; `decide` allows the others here (no conditions hold)."""
    loaded = load_policy(policy if isinstance(policy, str) else json.dumps(policy), name="p")
    grant = Grant("g", "g", "p")
    for uri in (
        "docs://readme",
        "docs://a,b",
        "docs://",
        "file:///etc/passwd",
        "secret://k",
        "o://x",
    ):
        request = McpRequest("resources/read", 1, False, {"uri": uri}, resource=uri)
        allowed = decide(loaded, grant, request).allowed
        assert allowed is not never_allowed(loaded, "resources", uri), uri
    for name in ("summarize", "draft", "off", "x"):
        request = McpRequest("prompts/get", 1, False, {"name": name}, prompt=name)
        assert decide(loaded, grant, request).allowed is not never_allowed(loaded, "prompts", name)
