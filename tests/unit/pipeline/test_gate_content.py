"""Resources and prompts through the request pipeline (authz/pipeline/gate.py), inside one
process: the engine, the memory stores, and the denial every edge renders
(authz/envoy/denial.py). A held `prompts/get` or `resources/read` is bound to the exact
request and runs once; a content limit takes quota like a tool's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz.approvals.memory import MemoryApprovalStore
from authz.config.grants import hash_token
from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.envoy.denial import APPROVAL_HEADER, APPROVAL_META_KEY, denial
from authz.model import DenyKind
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest
from tests.unit.pipeline.test_gate_approvals import Clock
from tests.unit.policy.test_document_content import SEED

CONTENT: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "resources": {
        "docs://{name}": {
            "limits": [{"counter": "reads", "window": "minute", "max": 2, "scope": "grant"}]
        },
        "db://orders": {"require_approval": {"name": "order book", "ttl": "5m"}},
    },
    "prompts": {"brief": {"require_approval": True}},
}


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def store() -> MemoryApprovalStore:
    return MemoryApprovalStore()


@pytest.fixture
def authorizer(tmp_path: Path, clock: Clock, store: MemoryApprovalStore) -> Authorizer:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "content.json").write_text(json.dumps(CONTENT))
    (tmp_path / "policies" / "seed.json").write_text(SEED)
    grants = {
        "version": "1",
        "grants": [
            {"id": "g1", "label": "G1", "token_sha256": hash_token("tok1"), "policy": "content"},
            {"id": "s1", "label": "S1", "token_sha256": hash_token("seed"), "policy": "seed"},
        ],
    }
    (tmp_path / "grants.json").write_text(json.dumps(grants))
    return Authorizer(
        ConfigSource.open(tmp_path), MemoryCounterStore(), clock=clock, approvals=store
    )


def body(method: str, rid: int = 1, **params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode()


async def check(authorizer: Authorizer, raw: bytes, token: str = "tok1") -> Verdict:
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    return await authorizer.check(HttpRequest("POST", "/mcp", headers, raw))


async def test_a_held_prompt_is_a_jsonrpc_error_with_its_approval(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    ask = body("prompts/get", name="brief", arguments={"topic": "q3"})
    held = await check(authorizer, ask)
    assert held.decision.kind is DenyKind.APPROVAL_REQUIRED
    ticket = held.decision.ticket
    assert ticket is not None
    shown = denial(held)
    assert shown.status == 403 and (APPROVAL_HEADER, ticket.id) in shown.headers
    error = json.loads(shown.body)["error"]
    assert error["code"] == -32003
    assert error["message"].startswith(
        "[APPROVAL REQUIRED] prompt 'brief' needs a person's approval; the request was not run."
    )
    assert (
        ticket.id in error["message"]
        and "(rule: /prompts/brief/require_approval)" in error["message"]
    )
    assert error["data"] == {
        APPROVAL_META_KEY: {"id": ticket.id, "status": "pending", "expires_at": ticket.expires_at}
    }
    record = await store.get(ticket.id, clock.now)
    assert record.tool == "prompts/get brief" and record.arguments == {"topic": "q3"}
    assert record.rule == "/prompts/brief/require_approval"

    await store.resolve(ticket.id, approve=True, approver="alice", reason=None, now=clock.now)
    changed = await check(
        authorizer, body("prompts/get", 2, name="brief", arguments={"topic": "q4"})
    )
    assert changed.decision.kind is DenyKind.APPROVAL_REQUIRED  # another request, new approval
    assert changed.decision.ticket is not None and changed.decision.ticket.id != ticket.id
    ran = await check(authorizer, body("prompts/get", 3, name="brief", arguments={"topic": "q3"}))
    assert ran.decision.allowed and ran.decision.ticket is not None
    assert ran.decision.ticket.id == ticket.id
    again = await check(authorizer, body("prompts/get", 4, name="brief", arguments={"topic": "q3"}))
    assert again.decision.kind is DenyKind.APPROVAL_REQUIRED  # once
    assert again.decision.ticket is not None and again.decision.ticket.id != ticket.id


async def test_a_held_resource_binds_its_whole_uri(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    held = await check(authorizer, body("resources/read", uri="db://orders"))
    ticket = held.decision.ticket
    assert held.decision.kind is DenyKind.APPROVAL_REQUIRED and ticket is not None
    assert held.decision.message.startswith(
        "resource 'db://orders' needs a person's approval (order book)"
    )
    record = await store.get(ticket.id, clock.now)
    assert record.tool == "resources/read db://orders"
    assert record.arguments == {"uri": "db://orders"} and record.expires_at == clock.now + 300
    await store.resolve(ticket.id, approve=True, approver="alice", reason=None, now=clock.now)
    # the approval is for reading: subscribing to the same URI is another request
    subscribe = await check(authorizer, body("resources/subscribe", 2, uri="db://orders"))
    assert subscribe.decision.kind is DenyKind.APPROVAL_REQUIRED
    assert subscribe.decision.ticket is not None and subscribe.decision.ticket.id != ticket.id
    read = await check(authorizer, body("resources/read", 3, uri="db://orders"))
    assert read.decision.allowed


async def test_a_resource_limit_takes_quota_per_grant(authorizer: Authorizer) -> None:
    first = await check(authorizer, body("resources/read", 1, uri="docs://a"))
    second = await check(authorizer, body("resources/read", 2, uri="docs://b"))
    assert first.decision.allowed and second.decision.allowed
    assert first.decision.reservation is not None and first.decision.reservation.entries
    third = await check(authorizer, body("resources/read", 3, uri="docs://c"))
    assert third.decision.kind is DenyKind.RATE_LIMITED
    assert third.decision.rule == "/resources/docs:~1~1{name}/limits/reads"
    shown = denial(third)
    assert shown.status == 429 and ("retry-after", str(third.decision.retry_after)) in shown.headers


async def test_the_seed_denies_content_and_filters_every_answer(authorizer: Authorizer) -> None:
    read = await check(authorizer, body("resources/read", uri="file:///etc/passwd"), "seed")
    shown = denial(read)
    assert shown.status == 403
    assert json.loads(shown.body)["error"] == {
        "code": -32003,
        "message": "[POLICY DENIED] resource 'file:///etc/passwd' is not permitted by policy "
        "(rule: (default deny))",
    }
    listed = await check(authorizer, body("resources/list"), "seed")
    assert listed.decision.allowed and listed.hides
    plain = await check(authorizer, body("tools/list"), "tok1")
    assert plain.decision.allowed and plain.hides  # default deny without methods: filtered
