"""Class rules in the engine (authz/engine.py): a policy's `classes` section judges every
tool of a class that has no entry of its own. Precedence: the tool's own entry, then "*",
then its class's entry, then `default`; a class entry admits its tools under `default: deny`
("*" alone does not); a tool of unknown class fails closed (judged as the most restrictive
class the policy names; under `default: deny` as the most restrictive class of all, so
denied unless the policy names it); every denial points at `/classes/<class>/...`. Hide and
the tool lock come first; `never_callable`, `hide_denied` listings and `standing` read the
same rules. A table of (policy, request, expected decision, expected rule); the classes are
those `ConfigSet.classes` holds for a lock of real tool definitions."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pytest

from authz.catalog.classes import Classification, Override, ToolClass
from authz.config.source import tool_classes
from authz.engine import Standing, decide, listing_filter, never_callable, settle, standing
from authz.mcp import parse_message
from authz.model import Claim, DenyKind, Exhausted, FixedRule, Grant, McpRequest
from authz.pinning import PinView
from authz.policy import PolicyError, load_policy
from tests.unit import test_engine
from tests.unit.pinning import lock_of, probe_tools

GRANT = Grant(id="g-1", label="alice", policy="p")
READ, WRITE, DELETE = "probe.read", "probe.write", "probe.delete"
WRITE2 = "probe.write2"  # a second write tool: a class's counter is shared by its tools
EXEC, PAY = "shell.exec", "payments.create"
NEW = "probe.new"  # not pinned, no override: class unknown

ELEMENTS = [
    *probe_tools(),
    {
        "name": WRITE2,
        "description": "Writes another record.",
        "annotations": {"readOnlyHint": False, "destructiveHint": False},
    },
    {
        "name": EXEC,
        "description": "Runs a command in a sandbox.",
        "inputSchema": {"type": "object", "properties": {"command": {"type": "string"}}},
        "annotations": {"readOnlyHint": False, "destructiveHint": False},
    },
]
LOCK = lock_of(ELEMENTS)
CLASSES = tool_classes(LOCK, {PAY: Override(ToolClass.FINANCIAL)})
"""What `ConfigSet.classes` holds for this lock and a tool-classes.json naming PAY."""

ALWAYS: dict[str, Any] = {"conditions": []}
"""A rule without conditions: it always holds."""


def cond(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


def limit(counter: str, max_: int = 2, **extra: Any) -> dict[str, Any]:
    return {"counter": counter, "window": "minute", "max": max_, "scope": "grant", **extra}


def policy(**top: Any) -> dict[str, Any]:
    return {"version": "1", **top}


def call(tool: str, arguments: dict[str, Any] | None = None) -> McpRequest:
    """A `tools/call` as an MCP client sends it, parsed as the sidecar parses it."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}},
    }
    return parse_message(json.dumps(body).encode(), session_id="s-1")


def test_the_classes_are_those_of_the_definitions_and_overrides() -> None:
    assert {name: c.tool_class for name, c in CLASSES.items()} == {
        READ: ToolClass.READ,
        WRITE: ToolClass.WRITE,
        WRITE2: ToolClass.WRITE,
        DELETE: ToolClass.DELETE,
        EXEC: ToolClass.EXECUTE,
        PAY: ToolClass.FINANCIAL,
    }
    assert NEW not in CLASSES


@dataclass
class Case:
    id: str
    policy: dict[str, Any]
    request: McpRequest
    allowed: bool
    rule: str | None = None
    message: str | None = None  # exact, when given
    claims: tuple[str, ...] = ()  # the claims' rules, in order, of an allowed call
    approval: str | None = None  # the rule an allowed call waits for a person by


DENY_DELETE = {"delete": {"deny_if": [ALWAYS]}}
WRITE_LIMIT = {"write": {"limits": [limit("writes")]}}
THREE = {"read": {}, **WRITE_LIMIT, **DENY_DELETE}
"""Read named with nothing special, write limited, delete denied."""
TARGET_X = {"deny_if": [{"conditions": [cond("args.target", "eq", "x")]}]}
SANDBOXED = {"require": [{"conditions": [cond("args.sandbox", "eq", True)]}]}


def unknown(tool: str, judged_as: str) -> str:
    return f"tool {tool!r} (class unknown, judged as {judged_as})"


CASES: list[Case] = [
    # the class entry judges the tools of its class, and only those
    Case(
        "class-deny",
        policy(classes=DENY_DELETE),
        call(DELETE, {"target": "a"}),
        False,
        "/classes/delete/deny_if/0",
        f"tool {DELETE!r} is denied by policy",
    ),
    Case("other-class-untouched", policy(classes=DENY_DELETE), call(WRITE), True),
    Case("read-untouched", policy(classes=DENY_DELETE), call(READ), True),
    Case(
        "class-on-deny",
        policy(classes={"delete": {"deny_if": [{**ALWAYS, "on_deny": "agents never delete"}]}}),
        call(DELETE),
        False,
        "/classes/delete/deny_if/0",
        "agents never delete",
    ),
    Case(
        "class-deny-if-condition",
        policy(classes={"delete": TARGET_X}),
        call(DELETE, {"target": "x"}),
        False,
        "/classes/delete/deny_if/0",
        f"tool {DELETE!r} is denied when args.target eq 'x'",
    ),
    Case("class-deny-if-not-met", policy(classes={"delete": TARGET_X}), call(DELETE), True),
    Case(
        "class-require",
        policy(classes={"execute": SANDBOXED}),
        call(EXEC, {"command": "ls"}),
        False,
        "/classes/execute/require/0",
        f"tool {EXEC!r} requires args.sandbox eq true",
    ),
    Case(
        "class-require-met",
        policy(classes={"execute": SANDBOXED}),
        call(EXEC, {"command": "ls", "sandbox": True}),
        True,
    ),
    Case(
        "class-by-override",
        policy(classes={"financial": {"deny_if": [ALWAYS]}}),
        call(PAY),
        False,
        "/classes/financial/deny_if/0",
        f"tool {PAY!r} is denied by policy",
    ),
    Case(
        "class-limit-claims",
        policy(classes=WRITE_LIMIT),
        call(WRITE),
        True,
        claims=("/classes/write/limits/writes",),
    ),
    Case(
        "class-limit-cost-unusable",
        policy(classes={"write": {"limits": [limit("units", 9, cost={"from": "args.amount"})]}}),
        call(WRITE, {"amount": "5"}),
        False,
        "/classes/write/limits/units/cost",
        f"tool {WRITE!r}: limit 'units' counts args.amount, which must be a non-negative integer",
    ),
    Case(
        "class-approve-if",
        policy(classes={"delete": {"approve_if": [ALWAYS]}}),
        call(DELETE),
        True,
        approval="/classes/delete/approve_if/0",
    ),
    Case(
        "class-require-approval",
        policy(classes={"delete": {"require_approval": True}}),
        call(DELETE),
        True,
        approval="/classes/delete/require_approval",
    ),
    # precedence: the own entry wins, and its tool skips the class entry
    Case(
        "own-entry-wins",
        policy(classes=DENY_DELETE, tools={DELETE: {}}),
        call(DELETE),
        True,
    ),
    Case(
        "own-entry-rules-not-the-class-rules",
        policy(classes=DENY_DELETE, tools={DELETE: TARGET_X}),
        call(DELETE, {"target": "x"}),
        False,
        f"/tools/{DELETE}/deny_if/0",
    ),
    Case(
        "own-entry-limits-not-the-class-limits",
        policy(classes=WRITE_LIMIT, tools={WRITE: {"limits": [limit("mine")]}}),
        call(WRITE),
        True,
        claims=(f"/tools/{WRITE}/limits/mine",),
    ),
    Case(
        "own-entry-approval-not-the-class-approval",
        policy(classes={"delete": {"require_approval": True}}, tools={DELETE: {}}),
        call(DELETE),
        True,
    ),
    # "*" applies with the class entry, before it
    Case(
        "star-before-class",
        policy(classes={"delete": SANDBOXED}, tools={"*": TARGET_X}),
        call(DELETE, {"target": "x"}),
        False,
        "/tools/*/deny_if/0",
    ),
    Case(
        "class-after-star",
        policy(classes={"delete": SANDBOXED}, tools={"*": TARGET_X}),
        call(DELETE, {"target": "y"}),
        False,
        "/classes/delete/require/0",
    ),
    Case(
        "star-and-class-limits",
        policy(classes=WRITE_LIMIT, tools={"*": {"limits": [limit("all", 9)]}}),
        call(WRITE),
        True,
        claims=("/tools/*/limits/all", "/classes/write/limits/writes"),
    ),
    Case(
        "own-star-all-tools-no-class",
        policy(
            classes=WRITE_LIMIT,
            tools={WRITE: {"limits": [limit("mine")]}, "*": {"limits": [limit("all", 9)]}},
            all_tools={"limits": [limit("every", 99)]},
        ),
        call(WRITE),
        True,
        claims=(f"/tools/{WRITE}/limits/mine", "/tools/*/limits/all", "/all_tools/limits/every"),
    ),
    Case(
        "class-and-all-tools-limits",
        policy(classes=WRITE_LIMIT, all_tools={"limits": [limit("every", 99)]}),
        call(WRITE),
        True,
        claims=("/classes/write/limits/writes", "/all_tools/limits/every"),
    ),
    Case(
        "star-approval-before-class-approval",
        policy(
            classes={"delete": {"approve_if": [ALWAYS]}},
            tools={"*": {"require_approval": True}},
        ),
        call(DELETE),
        True,
        approval="/tools/*/require_approval",
    ),
    Case(
        "class-denies-before-star-approval",
        policy(classes=DENY_DELETE, tools={"*": {"require_approval": True}}),
        call(DELETE),
        False,
        "/classes/delete/deny_if/0",
    ),
    # the class entry before default: it admits its tools under default deny; "*" does not
    Case(
        "class-before-default-allow",
        policy(classes={"write": {"deny_if": [ALWAYS]}}),
        call(WRITE),
        False,
        "/classes/write/deny_if/0",
    ),
    Case(
        "class-admits-under-default-deny",
        policy(default="deny", classes={"read": {}}),
        call(READ),
        True,
    ),
    Case(
        "unnamed-class-under-default-deny",
        policy(default="deny", classes={"read": {}}),
        call(WRITE),
        False,
        "(default deny)",
        f"tool {WRITE!r} is not permitted by policy",
    ),
    Case(
        "star-alone-does-not-admit",
        policy(default="deny", tools={"*": {}}, classes={"read": {}}),
        call(WRITE),
        False,
        "(default deny)",
    ),
    Case(
        "star-with-class-admits",
        policy(default="deny", tools={"*": {"limits": [limit("all", 9)]}}, classes=WRITE_LIMIT),
        call(WRITE),
        True,
        claims=("/tools/*/limits/all", "/classes/write/limits/writes"),
    ),
    Case(
        "own-entry-admits-under-default-deny",
        policy(default="deny", classes=DENY_DELETE, tools={DELETE: {}}),
        call(DELETE),
        True,
    ),
    Case(
        "class-admits-then-judges",
        policy(default="deny", classes={"execute": SANDBOXED}),
        call(EXEC),
        False,
        "/classes/execute/require/0",
    ),
    # a tool of unknown class: the most restrictive class the policy names
    Case(
        "unknown-judged-as-delete",
        policy(classes=THREE),
        call(NEW, {"query": "q"}),
        False,
        "/classes/delete/deny_if/0",
        f"{unknown(NEW, 'delete')} is denied by policy",
    ),
    Case(
        "unknown-judged-as-execute",
        policy(classes={"read": {}, "execute": SANDBOXED, "write": {"deny_if": [ALWAYS]}}),
        call(NEW),
        False,
        "/classes/execute/require/0",
        f"{unknown(NEW, 'execute')} requires args.sandbox eq true",
    ),
    Case(
        "unknown-judged-as-execute-passes",
        policy(classes={"read": {}, "execute": SANDBOXED, "write": {"deny_if": [ALWAYS]}}),
        call(NEW, {"sandbox": True}),
        True,
    ),
    Case(
        "unknown-judged-as-write-limited",
        policy(classes={"read": {"deny_if": [ALWAYS]}, **WRITE_LIMIT}),
        call(NEW),
        True,
        claims=("/classes/write/limits/writes",),
    ),
    Case(
        "unknown-judged-as-financial",
        policy(classes={**THREE, "financial": {"approve_if": [ALWAYS]}}),
        call(NEW),
        True,
        approval="/classes/financial/approve_if/0",
    ),
    Case(
        "unknown-limit-message",
        policy(classes={"write": {"limits": [limit("units", 9, cost={"from": "args.n"})]}}),
        call(NEW, {"n": -1}),
        False,
        "/classes/write/limits/units/cost",
        f"{unknown(NEW, 'write')}: limit 'units' counts args.n, which must be a non-negative "
        "integer",
    ),
    Case(
        "unknown-with-own-entry",
        policy(classes=THREE, tools={NEW: {}}),
        call(NEW),
        True,
    ),
    Case(
        "unknown-with-star",
        policy(
            classes=THREE, tools={"*": {"deny_if": [{"conditions": [cond("args.q", "eq", 1)]}]}}
        ),
        call(NEW, {"q": 1}),
        False,
        "/tools/*/deny_if/0",
        f"{unknown(NEW, 'delete')} is denied when args.q eq 1",
    ),
    Case("unknown-without-classes", policy(), call(NEW), True),
    Case(
        "unknown-without-classes-default-deny",
        policy(default="deny"),
        call(NEW),
        False,
        "(default deny)",
        f"tool {NEW!r} is not permitted by policy",
    ),
    # under default deny a class the policy does not name is denied: an unknown tool is
    # judged as the most restrictive class of all, and admitted only when it is named
    Case(
        "unknown-under-default-deny-read-named",
        policy(default="deny", classes={"read": {}}),
        call(NEW),
        False,
        "(default deny)",
        f"{unknown(NEW, 'financial')} is not permitted by policy",
    ),
    Case(
        "unknown-under-default-deny-all-but-financial-named",
        policy(
            default="deny",
            classes={"read": {}, "write": {}, "execute": {}, "delete": {"require_approval": True}},
        ),
        call(NEW),
        False,
        "(default deny)",
    ),
    Case(
        "unknown-under-default-deny-financial-named",
        policy(default="deny", classes={"read": {}, "financial": {"require_approval": True}}),
        call(NEW),
        True,
        approval="/classes/financial/require_approval",
    ),
    Case(
        "known-under-default-deny-financial-named",
        policy(default="deny", classes={"read": {}, "financial": {"require_approval": True}}),
        call(READ),
        True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_class_decision_table(case: Case) -> None:
    decision = decide(load_policy(case.policy, name="p"), GRANT, case.request, None, CLASSES)
    assert decision.allowed is case.allowed, decision
    assert decision.rule == case.rule, decision
    if case.message is not None:
        assert decision.message == case.message
    if not case.allowed:
        assert decision.kind is DenyKind.POLICY and not decision.claims
        assert decision.approval is None
        return
    assert tuple(c.rule for c in decision.claims) == case.claims, decision.claims
    assert (decision.approval.rule if decision.approval else None) == case.approval


def test_a_class_limit_is_one_bucket_for_every_tool_of_the_class() -> None:
    document = policy(
        classes={"write": {"limits": [limit("writes", on_deny="two writes a minute")]}},
        tools={"own": {}},
    )
    loaded = load_policy(document, name="p")
    other = dataclasses.replace(GRANT, id="g-2")
    claims: dict[tuple[str, str], Claim] = {}
    for grant in (GRANT, other):
        for tool in (WRITE, WRITE2):
            (claim,) = decide(loaded, grant, call(tool), None, CLASSES).claims
            claims[grant.id, tool] = claim
    first = claims[GRANT.id, WRITE]
    assert (first.counter, first.scope, first.scope_key, first.max) == (
        "writes",
        "grant",
        ("g-1",),
        2,
    )
    assert first.rule == "/classes/write/limits/writes" and first.policy == "p"
    assert claims[GRANT.id, WRITE2].bucket == first.bucket  # shared across the class
    assert claims["g-2", WRITE].bucket == claims["g-2", WRITE2].bucket != first.bucket
    assert decide(loaded, GRANT, call("own"), None, CLASSES).claims == ()  # own entry: no claim
    assert decide(loaded, GRANT, call(READ), None, CLASSES).claims == ()  # another class
    exhausted = settle(
        decide(loaded, GRANT, call(WRITE2), None, CLASSES), Exhausted(first, retry_after=7)
    )
    assert exhausted.kind is DenyKind.RATE_LIMITED and exhausted.retry_after == 7
    assert exhausted.rule == "/classes/write/limits/writes"
    assert exhausted.message == "two writes a minute"


# -- hide and the tool lock come first ----------------------------------------------------

DRIFTED = PinView(LOCK, MappingProxyType({WRITE: "f00d" * 16}))


@pytest.mark.parametrize(
    ("document", "request_", "pins", "rule"),
    [
        (policy(hide=[DELETE], classes=DENY_DELETE), call(DELETE), None, "(hidden)"),
        (
            policy(hide=[DELETE], default="deny", classes={"delete": {}}),
            call(DELETE),
            None,
            "(hidden)",
        ),
        (policy(hide=[NEW], classes=THREE), call(NEW), None, "(hidden)"),
        (policy(classes={"write": {"deny_if": [ALWAYS]}}), call(WRITE), DRIFTED, "(pin)"),
        (policy(classes=THREE), call(NEW), PinView(LOCK), "(pin)"),  # not pinned: (pin)
        (policy(default="deny", classes={"read": {}}), call(NEW), PinView(LOCK), "(default deny)"),
        # pinning off: the class rules judge the tool the lock lacks
        (
            policy(pinning="off", classes=THREE),
            call(NEW),
            PinView(LOCK),
            "/classes/delete/deny_if/0",
        ),
        (policy(pinning="report", classes=THREE), call(WRITE), DRIFTED, None),
    ],
    ids=[
        "hidden-before-class",
        "hidden-before-class-admits",
        "hidden-before-unknown",
        "pin-drift-before-class",
        "pin-unpinned-before-unknown",
        "default-deny-before-pin",
        "pinning-off-unknown",
        "pinning-report-drifted",
    ],
)
def test_hide_and_the_lock_come_first(
    document: dict[str, Any], request_: McpRequest, pins: PinView | None, rule: str | None
) -> None:
    decision = decide(load_policy(document, name="p"), GRANT, request_, pins, CLASSES)
    assert decision.rule == rule, decision
    assert decision.allowed is (rule is None)


# -- without a classes section nothing changes ---------------------------------------------

V1_CLASSES = {
    "t": Classification("t", ToolClass.DELETE, None, "", "definition"),
    "u": Classification("u", ToolClass.FINANCIAL, None, "", "override"),
    "image.generate.gemini": Classification(
        "image.generate.gemini", ToolClass.WRITE, None, "", "definition"
    ),
}


@pytest.mark.parametrize("case", test_engine.CASES, ids=[c.id for c in test_engine.CASES])
def test_a_policy_without_classes_decides_as_before(case: test_engine.Case) -> None:
    loaded = load_policy(case.policy or test_engine.SEED, name="p")
    assert not loaded.document.classes
    without = decide(loaded, GRANT, case.request)
    for classes in (V1_CLASSES, CLASSES, {}):
        assert decide(loaded, GRANT, case.request, None, classes) == without
    assert without.allowed is case.allowed and without.rule == case.rule


def test_unknown_class_keys_are_refused_naming_the_key() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(policy(classes={"admin": {}, "Write": {}, "read": {}}), name="p")
    text = str(info.value)
    assert "$.classes.admin" in text and "unknown tool class 'admin'" in text, text
    assert "$.classes.Write" in text, text
    assert "read, write, execute, delete, financial" in text
    assert "$.classes.read" not in text
    with pytest.raises(PolicyError) as info:
        load_policy(
            policy(classes={"write": {"rules": [{"name": "x", "action": "deny"}]}}), name="p"
        )
    assert "$.classes.write.rules" in str(info.value)


# -- never_callable and hide_denied listings -----------------------------------------------

TOOLS = (READ, WRITE, WRITE2, DELETE, EXEC, PAY, NEW)


def listed(document: dict[str, Any], classes: Any = CLASSES) -> list[str]:
    """The tools a grant's tools/list keeps."""
    found = listing_filter(load_policy(document, name="p"), None, classes)
    hides = found.arrays["tools"] if found is not None else None
    return [t for t in TOOLS if hides is None or not hides(t)]


@pytest.mark.parametrize(
    ("document", "kept"),
    [
        (policy(hide_denied=True, classes=THREE), [READ, WRITE, WRITE2, EXEC, PAY]),
        (
            policy(hide_denied=True, classes=THREE, tools={DELETE: {}, NEW: {}}),
            [READ, WRITE, WRITE2, DELETE, EXEC, PAY, NEW],
        ),
        (policy(hide_denied=True, default="deny", classes={"read": {}}), [READ]),
        (
            policy(hide_denied=True, default="deny", classes={"read": {}, "write": {}}),
            [READ, WRITE, WRITE2],
        ),
        (
            policy(
                hide_denied=True,
                default="deny",
                classes={"write": {"deny_if": [ALWAYS]}, "execute": {}, "financial": {}},
                tools={WRITE2: {}},
            ),
            [WRITE2, EXEC, PAY, NEW],
        ),
        (policy(hide_denied=True, classes={"delete": TARGET_X}), list(TOOLS)),  # sometimes
        (policy(classes=THREE), list(TOOLS)),  # without hide_denied nothing is hidden
    ],
    ids=[
        "delete-denied",
        "own-entries-kept",
        "default-deny-read",
        "default-deny-read-write",
        "unknown-as-financial",
        "conditional-kept",
        "no-hide-denied",
    ],
)
def test_hide_denied_listings_follow_the_class_rules(
    document: dict[str, Any], kept: list[str]
) -> None:
    assert listed(document) == kept
    loaded = load_policy(document, name="p")
    for tool in TOOLS:  # never_callable is what decide does to a call without arguments
        never = never_callable(loaded, tool, CLASSES)
        assert never is (not decide(loaded, GRANT, call(tool), None, CLASSES).allowed), tool
        if document.get("hide_denied"):
            assert never is (tool not in kept), tool


def test_without_classes_every_tool_is_of_unknown_class() -> None:
    """A caller that passes no classes (none known) judges every tool as unknown."""
    document = policy(hide_denied=True, classes=THREE)
    assert listed(document, None) == []
    assert listed(document, {}) == []
    loaded = load_policy(document, name="p")
    assert decide(loaded, GRANT, call(READ)).rule == "/classes/delete/deny_if/0"


# -- standing: what the catalog shows -------------------------------------------------------

STANDING: list[tuple[str, dict[str, Any], str, Standing]] = [
    ("no-policy-rules", policy(), WRITE, Standing(True, "(default allow)", (), None, True)),
    (
        "class-denies",
        policy(classes=THREE),
        DELETE,
        Standing(False, "/classes/delete/deny_if/0", ("/classes/delete",), "delete", False),
    ),
    (
        "class-admits",
        policy(classes=THREE),
        WRITE,
        Standing(True, "/classes/write", ("/classes/write",), "write", False),
    ),
    (
        "unnamed-class-blind-spot",
        policy(classes=THREE),
        EXEC,
        Standing(True, "(default allow)", (), None, True),
    ),
    (
        "unknown-as-most-restrictive",
        policy(classes=THREE),
        NEW,
        Standing(False, "/classes/delete/deny_if/0", ("/classes/delete",), "delete", False),
    ),
    (
        "own-entry",
        policy(classes=THREE, tools={DELETE: {}}),
        DELETE,
        Standing(True, f"/tools/{DELETE}", (f"/tools/{DELETE}",), None, False),
    ),
    (
        "own-entry-and-star",
        policy(classes=THREE, tools={DELETE: {}, "*": {}}),
        DELETE,
        Standing(True, f"/tools/{DELETE}", (f"/tools/{DELETE}", "/tools/*"), None, False),
    ),
    (
        "star-and-class",
        policy(classes=THREE, tools={"*": {}}),
        WRITE,
        Standing(True, "/classes/write", ("/tools/*", "/classes/write"), "write", False),
    ),
    (
        "star-only-blind-spot",
        policy(classes=THREE, tools={"*": {}}),
        EXEC,
        Standing(True, "/tools/*", ("/tools/*",), None, True),
    ),
    (
        "star-denies",
        policy(classes=THREE, tools={"*": {"deny_if": [ALWAYS]}}),
        READ,
        Standing(False, "/tools/*/deny_if/0", ("/tools/*", "/classes/read"), "read", False),
    ),
    (
        "own-rule-denies",
        policy(tools={DELETE: {"rules": [{"name": "off", "action": "deny"}]}}),
        DELETE,
        Standing(False, f"/tools/{DELETE}/rules/0", (f"/tools/{DELETE}",), None, False),
    ),
    (
        "hidden",
        policy(hide=[READ], classes=THREE),
        READ,
        Standing(False, "(hidden)", ("/classes/read",), "read", False),
    ),
    (
        "default-deny-admitted-by-class",
        policy(default="deny", classes={"read": {}}),
        READ,
        Standing(True, "/classes/read", ("/classes/read",), "read", False),
    ),
    (
        "default-deny-blind-spot",
        policy(default="deny", classes={"read": {}}),
        WRITE,
        Standing(False, "(default deny)", (), None, True),
    ),
    (
        "default-deny-unknown",
        policy(default="deny", classes={"read": {}}),
        NEW,
        Standing(False, "(default deny)", (), None, True),
    ),
    (
        "conditional-class-rule-callable",
        policy(classes={"delete": TARGET_X}),
        DELETE,
        Standing(True, "/classes/delete", ("/classes/delete",), "delete", False),
    ),
]


@pytest.mark.parametrize(
    ("document", "tool", "expected"),
    [(d, t, e) for _, d, t, e in STANDING],
    ids=[i for i, _, _, _ in STANDING],
)
def test_standing(document: dict[str, Any], tool: str, expected: Standing) -> None:
    loaded = load_policy(document, name="p")
    found = standing(loaded, tool, CLASSES)
    assert found == expected
    decision = decide(loaded, GRANT, call(tool), None, CLASSES)
    if not found.callable:  # decide agrees: every call denied, by that rule
        assert not decision.allowed and decision.rule == found.rule, decision
    if found.rule != FixedRule.HIDDEN:  # the listing hides hidden tools by name
        assert found.callable is not never_callable(loaded, tool, CLASSES)
