"""The tool lock in the engine (authz/engine.py): `pinning` denies calls of unpinned and
drifted tools with `(pin)`; strict arguments deny calls whose arguments do not validate
against the pinned inputSchema, at the pointer of the setting that asked for them, and fail
closed without a lock or a schema. A table of (policy, request, pins, expected decision,
expected rule); requests are parsed from the JSON an MCP client sends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pytest

from authz.engine import decide
from authz.mcp import parse_message
from authz.model import DenyKind, Grant, McpRequest
from authz.pinning import PinView
from authz.policy import load_policy
from tests.unit.pinning import lock_of, probe_tools

GRANT = Grant(id="g-1", label="alice", policy="p")
READ, WRITE, DELETE = "probe.read", "probe.write", "probe.delete"
BARE = "probe.bare"  # pinned without an inputSchema
NEW = "probe.new"  # offered by the upstream, not in the lock
SECRET = "sk-live-DISTINCTIVE-91c2"

LOCK = lock_of(
    [
        *probe_tools(),
        {"name": BARE, "description": "No schema."},
    ]
)
DRIFTED_HASH = "f00d" * 16
PINS: dict[str, PinView | None] = {
    "no-lock": None,
    "lock": PinView(LOCK),
    "drifted": PinView(LOCK, MappingProxyType({WRITE: DRIFTED_HASH})),
}


def call(tool: str, arguments: dict[str, Any] | None = None) -> McpRequest:
    params: dict[str, Any] = {"name": tool}
    if arguments is not None:
        params["arguments"] = arguments
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    return parse_message(json.dumps(body).encode(), session_id="s-1")


def message(method: str, params: dict[str, Any] | None = None) -> McpRequest:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return parse_message(json.dumps(body).encode(), session_id="s-1")


def policy(**top: Any) -> dict[str, Any]:
    return {"version": "1", **top}


def strict_tool(tool: str, mode: str = "strict", **top: Any) -> dict[str, Any]:
    return policy(tools={tool: {"arguments": mode}}, **top)


@dataclass
class Case:
    id: str
    policy: dict[str, Any]
    request: McpRequest
    pins: str
    allowed: bool
    rule: str | None = None
    message: str | None = None  # exact, when given
    fragment: str | None = None  # part of the message, when given


GOOD = {"amount": 5, "flag": True, "tags": ["a"], "opts": {"k": 1}}
COERCIBLE: list[tuple[str, dict[str, Any], str]] = [
    ("int-as-string", {"amount": "500"}, "/amount (type)"),
    ("bool-as-string", {"flag": "true"}, "/flag (type)"),
    ("bool-as-1", {"flag": 1}, "/flag (type)"),
    ("list-as-json-string", {"tags": '["a"]'}, "/tags (type)"),
    ("escaped-list-as-json-string", {"tags": '["adm\\u0069n"]'}, "/tags (type)"),
    ("object-as-json-string", {"opts": '{"k":1}'}, "/opts (type)"),
    ("nested-element", {"tags": ["a", 2]}, "/tags/1 (type)"),
]


SECRET_ARGUMENTS: list[dict[str, Any]] = [
    {"amount": SECRET},
    {"tags": ["a", {"k": SECRET}]},
    {"opts": SECRET},
    {"flag": SECRET, "amount": SECRET},
]


def mismatch(tool: str, where: str) -> str:
    return f"arguments of tool {tool!r} do not match its pinned inputSchema at {where}"


CASES: list[Case] = [
    # pinning: enforce (the default) with a lock
    Case("pinned-tool-allowed", policy(), call(WRITE, GOOD), "lock", True),
    Case(
        "pinned-tool-with-coercible-args-lax", policy(), call(WRITE, {"amount": "5"}), "lock", True
    ),
    Case(
        "unpinned-tool-denied",
        policy(),
        call(NEW),
        "lock",
        False,
        "(pin)",
        "tool 'probe.new' is not in the tool lock; an operator must review it and pin it "
        "(mcp-authz pin) before it can be called",
    ),
    Case(
        "drifted-tool-denied",
        policy(),
        call(WRITE, GOOD),
        "drifted",
        False,
        "(pin)",
        f"tool 'probe.write' changed its definition since it was pinned (sha256 "
        f"{LOCK.tools[WRITE].sha256[:12]} pinned, {DRIFTED_HASH[:12]} listed); an operator "
        "must review the change and pin it again (mcp-authz pin)",
    ),
    Case("other-tools-of-a-drifted-lock-allowed", policy(), call(READ), "drifted", True),
    Case("explicit-enforce", policy(pinning="enforce"), call(NEW), "lock", False, "(pin)"),
    Case(
        "listed-by-policy-still-pinned",
        policy(default="deny", tools={NEW: {}, WRITE: {}}),
        call(NEW),
        "lock",
        False,
        "(pin)",
    ),
    Case(
        "drifted-before-the-tools-rules",
        policy(tools={WRITE: {"deny_if": [{"conditions": []}]}}),
        call(WRITE, GOOD),
        "drifted",
        False,
        "(pin)",
    ),
    # report and off let drift through
    Case("report-unpinned-allowed", policy(pinning="report"), call(NEW), "lock", True),
    Case("report-drifted-allowed", policy(pinning="report"), call(WRITE, GOOD), "drifted", True),
    Case("off-unpinned-allowed", policy(pinning="off"), call(NEW), "lock", True),
    Case("off-drifted-allowed", policy(pinning="off"), call(WRITE, GOOD), "drifted", True),
    Case(
        "report-keeps-the-tools-rules",
        policy(pinning="report", tools={NEW: {"deny_if": [{"conditions": []}]}}),
        call(NEW),
        "lock",
        False,
        "/tools/probe.new/deny_if/0",
    ),
    # no lock: pinning does not matter
    Case("no-lock-unpinned-allowed", policy(pinning="enforce"), call(NEW), "no-lock", True),
    # hide and default deny come first
    Case(
        "hidden-before-pin",
        policy(hide=[NEW]),
        call(NEW),
        "lock",
        False,
        "(hidden)",
        "tool 'probe.new' is hidden by policy",
    ),
    Case("hidden-drifted", policy(hide=[WRITE]), call(WRITE, GOOD), "drifted", False, "(hidden)"),
    Case(
        "default-deny-before-pin",
        policy(default="deny"),
        call(NEW),
        "lock",
        False,
        "(default deny)",
    ),
    Case(
        "default-deny-drifted",
        policy(default="deny", tools={READ: {}}),
        call(WRITE, GOOD),
        "drifted",
        False,
        "(default deny)",
    ),
    Case(
        "hidden-before-strict",
        policy(hide=[WRITE], arguments="strict"),
        call(WRITE, {"amount": "1"}),
        "lock",
        False,
        "(hidden)",
    ),
    # strict arguments, policy-wide
    Case("strict-good-args", policy(arguments="strict"), call(WRITE, GOOD), "lock", True),
    Case("strict-no-args", policy(arguments="strict"), call(WRITE), "lock", True),
    *[
        Case(
            f"strict-{name}",
            policy(arguments="strict"),
            call(WRITE, {**GOOD, **args}),
            "lock",
            False,
            "/arguments",
            mismatch(WRITE, where),
        )
        for name, args, where in COERCIBLE
    ],
    Case(
        "strict-required",
        policy(arguments="strict"),
        call(DELETE, {}),
        "lock",
        False,
        "/arguments",
        mismatch(DELETE, "/target (required)"),
    ),
    Case(
        "strict-before-the-tools-rules",
        policy(arguments="strict", tools={WRITE: {"deny_if": [{"conditions": []}]}}),
        call(WRITE, {"amount": "5"}),
        "lock",
        False,
        "/arguments",
    ),
    Case(
        "strict-then-the-tools-rules",
        policy(arguments="strict", tools={WRITE: {"deny_if": [{"conditions": []}]}}),
        call(WRITE, GOOD),
        "lock",
        False,
        "/tools/probe.write/deny_if/0",
    ),
    # per tool, through "*", and the order own entry → "*" → policy
    Case(
        "strict-own-entry",
        strict_tool(WRITE),
        call(WRITE, {"tags": '["a"]'}),
        "lock",
        False,
        "/tools/probe.write/arguments",
        mismatch(WRITE, "/tags (type)"),
    ),
    Case(
        "strict-own-entry-other-tool-lax",
        strict_tool(DELETE),
        call(WRITE, {"tags": '["a"]'}),
        "lock",
        True,
    ),
    Case(
        "strict-wildcard",
        strict_tool("*"),
        call(WRITE, {"flag": "yes"}),
        "lock",
        False,
        "/tools/*/arguments",
        mismatch(WRITE, "/flag (type)"),
    ),
    Case(
        "lax-own-entry-under-strict-policy",
        strict_tool(WRITE, "lax", arguments="strict"),
        call(WRITE, {"tags": '["a"]'}),
        "lock",
        True,
    ),
    Case(
        "lax-wildcard-under-strict-policy",
        strict_tool("*", "lax", arguments="strict"),
        call(WRITE, {"tags": '["a"]'}),
        "lock",
        True,
    ),
    Case(
        "own-strict-over-wildcard-lax",
        policy(tools={WRITE: {"arguments": "strict"}, "*": {"arguments": "lax"}}),
        call(WRITE, {"amount": True}),
        "lock",
        False,
        "/tools/probe.write/arguments",
    ),
    Case(
        "own-lax-over-wildcard-strict",
        policy(tools={WRITE: {"arguments": "lax"}, "*": {"arguments": "strict"}}),
        call(WRITE, {"amount": True}),
        "lock",
        True,
    ),
    Case(
        "entry-without-arguments-falls-to-wildcard",
        policy(tools={WRITE: {}, "*": {"arguments": "strict"}}),
        call(WRITE, {"amount": True}),
        "lock",
        False,
        "/tools/*/arguments",
    ),
    # strict arguments fail closed
    Case(
        "strict-without-a-lock",
        policy(arguments="strict"),
        call(WRITE, GOOD),
        "no-lock",
        False,
        "/arguments",
        "tool 'probe.write' has no pinned inputSchema, and strict arguments deny a call they "
        "cannot check; pin the tool (mcp-authz pin)",
    ),
    Case(
        "strict-tool-without-a-schema",
        strict_tool(BARE),
        call(BARE, {}),
        "lock",
        False,
        "/tools/probe.bare/arguments",
        fragment="has no pinned inputSchema",
    ),
    Case(
        "strict-unpinned-under-report",
        policy(arguments="strict", pinning="report"),
        call(NEW),
        "lock",
        False,
        "/arguments",
        fragment="has no pinned inputSchema",
    ),
    Case(
        "strict-under-pinning-off-still-checks",
        policy(arguments="strict", pinning="off"),
        call(WRITE, {"amount": "5"}),
        "lock",
        False,
        "/arguments",
    ),
    Case(
        "strict-drifted-under-report-checks-the-pinned-schema",
        policy(arguments="strict", pinning="report"),
        call(WRITE, {"amount": "5"}),
        "drifted",
        False,
        "/arguments",
    ),
    Case(
        "strict-drifted-under-report-good-args",
        policy(arguments="strict", pinning="report"),
        call(WRITE, GOOD),
        "drifted",
        True,
    ),
    Case(
        "drifted-under-enforce-is-pin-before-strict",
        policy(arguments="strict"),
        call(WRITE, {"amount": "5"}),
        "drifted",
        False,
        "(pin)",
    ),
    # the message never shows a value
    *[
        Case(
            f"no-value-in-message-{i}",
            policy(arguments="strict"),
            call(WRITE, args),
            "lock",
            False,
            "/arguments",
        )
        for i, args in enumerate(SECRET_ARGUMENTS)
    ],
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pinning_table(case: Case) -> None:
    decision = decide(load_policy(case.policy, name="p"), GRANT, case.request, PINS[case.pins])
    assert decision.allowed is case.allowed, decision
    assert decision.rule == case.rule
    if not case.allowed:
        assert decision.kind is DenyKind.POLICY
    if case.message is not None:
        assert decision.message == case.message
    if case.fragment is not None:
        assert case.fragment in decision.message
    assert SECRET not in decision.message


def test_an_allowed_call_keeps_its_claims_under_pins() -> None:
    limits = {"limits": [{"counter": "w", "window": "minute", "max": 5}]}
    doc = policy(arguments="strict", tools={WRITE: limits})
    decision = decide(load_policy(doc, name="p"), GRANT, call(WRITE, GOOD), PINS["lock"])
    assert decision.allowed and [c.counter for c in decision.claims] == ["w"]


CONTENT_AND_METHODS = [
    message("tools/list"),
    message("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}}),
    message("ping"),
    message("resources/read", {"uri": "file:///notes.txt"}),
    message("prompts/get", {"name": "summary", "arguments": {"tags": '["a"]'}}),
    message("resources/list"),
]


@pytest.mark.parametrize("request_", CONTENT_AND_METHODS, ids=lambda r: r.method)
@pytest.mark.parametrize(
    "doc",
    [
        policy(arguments="strict"),
        policy(default="deny", arguments="strict", resources={"file:///*": {}}),
        policy(methods={"allow": ["tools/list", "ping"]}, arguments="strict"),
    ],
    ids=["open", "content-rules", "methods"],
)
def test_other_methods_and_content_are_not_judged_by_pins(
    doc: dict[str, Any], request_: McpRequest
) -> None:
    loaded = load_policy(doc, name="p")
    without = decide(loaded, GRANT, request_)
    for pins in PINS.values():
        assert decide(loaded, GRANT, request_, pins) == without
