"""Held calls in the engine (authz/engine.py): an allowed call that matches approve_if needs
an approval, and judge_approval turns the approval a store holds into the decision."""

from __future__ import annotations

import json
from typing import Any

from authz.approvals.base import (
    ApprovalRequest,
)
from authz.approvals.memory import MemoryApprovalStore
from authz.engine import decide, judge_approval
from authz.model import DenyKind, Grant, McpRequest
from authz.policy import load_policy

TOOL = "image.generate.openai"
POLICY: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "tools": {
        TOOL: {
            "deny_if": [
                {"conditions": [{"path": "args.prompt", "op": "eq", "value": "forbidden"}]}
            ],
            "approve_if": [
                {
                    "name": "big images",
                    "conditions": [{"path": "args.width", "op": "gt", "value": 1024}],
                    "ttl": "2m",
                    "on_deny": "the approver said no to a large image",
                }
            ],
            "limits": [{"counter": "openai", "window": "hour", "max": 2, "scope": "grant"}],
        },
        "image.generate.google": {"require_approval": True},
    },
}
GRANT = Grant("g1", "G1", "p")


def _request(tool: str = TOOL, **arguments: Any) -> McpRequest:
    return McpRequest("tools/call", 1, False, {"name": tool}, tool, arguments)


def test_engine_requires_approval_only_when_conditions_hold() -> None:
    policy = load_policy(json.dumps(POLICY), name="p")
    small = decide(policy, GRANT, _request(prompt="x", width=512))
    assert small.allowed and small.approval is None
    big = decide(policy, GRANT, _request(prompt="x", width=2048))
    assert big.allowed and big.approval is not None
    assert big.approval.rule == f"/tools/{TOOL}/approve_if/0"
    assert big.approval.ttl_seconds == 120
    assert len(big.claims) == 1  # limits still apply to the approved call
    # deny_if wins over approve_if: no person is asked about a call that is denied anyway
    denied = decide(policy, GRANT, _request(prompt="forbidden", width=2048))
    assert not denied.allowed and denied.approval is None
    shorthand = decide(policy, GRANT, _request("image.generate.google", prompt="x"))
    assert shorthand.approval is not None
    assert shorthand.approval.rule == "/tools/image.generate.google/require_approval"


def test_wildcard_entry_can_require_approval() -> None:
    doc = {"version": "1", "tools": {"*": {"approve_if": [{"conditions": []}]}}}
    decision = decide(load_policy(json.dumps(doc), name="p"), GRANT, _request("any.tool"))
    assert decision.approval is not None and decision.approval.rule == "/tools/*/approve_if/0"


async def test_judge_approval_states() -> None:
    policy = load_policy(json.dumps(POLICY), name="p")
    decision = decide(policy, GRANT, _request(prompt="x", width=2048))
    store = MemoryApprovalStore()
    ask = ApprovalRequest("g1", "G1", "p", policy.content_hash, TOOL, {"width": 2048}, "r", 60)
    pending, _ = await store.request(ask, 100.0)
    held = judge_approval(decision, TOOL, pending)
    assert held.kind is DenyKind.APPROVAL_REQUIRED and held.ticket is not None
    assert pending.id in held.message and "retry the identical call" in held.message
    denied = await store.resolve(pending.id, approve=False, approver="alice", reason="no", now=101)
    out = judge_approval(decision, TOOL, denied)
    assert out.kind is DenyKind.POLICY
    assert "the approver said no to a large image" in out.message and "reason: no" in out.message
