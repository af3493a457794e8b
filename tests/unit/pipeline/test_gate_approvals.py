"""Held calls through the request pipeline (authz/pipeline/gate.py, the approval gate), inside
one process: the engine, the store, the counters, and the ext_authz rendering.

The approval store is the real memory store; the clock is controlled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from authz.approvals.base import (
    CAP_RULE,
    SIZE_RULE,
    ApprovalLimits,
    arguments_digest,
)
from authz.approvals.memory import MemoryApprovalStore
from authz.config.grants import hash_token
from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.envoy.denial import APPROVAL_HEADER, APPROVAL_META_KEY
from authz.envoy.grpc_authz import check_response
from authz.model import ApprovalStatus, DenyKind
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest
from tests.unit.test_engine_approvals import POLICY, TOOL


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def store() -> MemoryApprovalStore:
    return MemoryApprovalStore()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.json").write_text(json.dumps(POLICY))
    grants = {
        "version": "1",
        "grants": [
            {"id": "g1", "label": "G1", "token_sha256": hash_token("tok1"), "policy": "p"},
            {"id": "g2", "label": "G2", "token_sha256": hash_token("tok2"), "policy": "p"},
        ],
    }
    (tmp_path / "grants.json").write_text(json.dumps(grants))
    return tmp_path


@pytest.fixture
def authorizer(config_dir: Path, clock: Clock, store: MemoryApprovalStore) -> Authorizer:
    notified.clear()
    return Authorizer(
        ConfigSource.open(config_dir),
        MemoryCounterStore(),
        clock=clock,
        approvals=store,
        notify=notified.append,
    )


notified: list[Any] = []


def _body(rid: int = 1, tool: str = TOOL, **arguments: Any) -> bytes:
    params = {"name": tool, "arguments": arguments}
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    ).encode()


async def _check(authorizer: Authorizer, body: bytes, token: str = "tok1") -> Verdict:
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    return await authorizer.check(HttpRequest("POST", "/mcp", headers, body))


async def test_held_then_approved_runs_once(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    held = await _check(authorizer, _body(prompt="x", width=2048))
    assert held.decision.kind is DenyKind.APPROVAL_REQUIRED
    assert "needs a person's approval (big images);" in held.decision.message
    ticket = held.decision.ticket
    assert ticket is not None and ticket.status == "pending"
    assert len(notified) == 1 and notified[0].id == ticket.id

    # asking again before anyone decided: the same approval, no second notification
    again = await _check(authorizer, _body(rid=2, prompt="x", width=2048))
    assert again.decision.ticket is not None and again.decision.ticket.id == ticket.id
    assert len(notified) == 1

    record = await store.get(ticket.id, clock.now)
    assert record.grant_id == "g1" and record.tool == TOOL
    assert record.arguments == {"prompt": "x", "width": 2048}
    assert record.expires_at == clock.now + 120

    await store.resolve(ticket.id, approve=True, approver="alice", reason=None, now=clock.now)
    clock.now += 5
    # a changed argument is not covered by the approval (and key order does not matter)
    changed = await _check(authorizer, _body(rid=3, prompt="y", width=2048))
    assert changed.decision.kind is DenyKind.APPROVAL_REQUIRED
    assert changed.decision.ticket is not None and changed.decision.ticket.id != ticket.id
    # another grant is not covered
    other = await _check(authorizer, _body(rid=4, prompt="x", width=2048), token="tok2")
    assert other.decision.kind is DenyKind.APPROVAL_REQUIRED
    assert other.decision.ticket is not None and other.decision.ticket.id != ticket.id

    ran = await _check(
        authorizer,
        b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":'
        b'{"name":"image.generate.openai","arguments":{"width":2048,"prompt":"x"}}}',
    )
    assert ran.decision.allowed
    assert ran.decision.ticket is not None and ran.decision.ticket.id == ticket.id
    assert ran.decision.reservation is not None  # limits still counted
    assert (await store.get(ticket.id, clock.now)).status is ApprovalStatus.USED

    second = await _check(authorizer, _body(rid=6, prompt="x", width=2048))
    assert second.decision.kind is DenyKind.APPROVAL_REQUIRED
    assert second.decision.ticket is not None and second.decision.ticket.id != ticket.id


async def test_approval_expires(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    held = await _check(authorizer, _body(prompt="x", width=2048))
    assert held.decision.ticket is not None
    await store.resolve(
        held.decision.ticket.id, approve=True, approver="a", reason=None, now=clock.now
    )
    clock.now += 121
    late = await _check(authorizer, _body(prompt="x", width=2048))
    assert late.decision.kind is DenyKind.APPROVAL_REQUIRED
    assert late.decision.ticket is not None and late.decision.ticket.id != held.decision.ticket.id


async def test_denied_with_reason_reaches_the_agent(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    held = await _check(authorizer, _body(prompt="x", width=2048))
    assert held.decision.ticket is not None
    await store.resolve(
        held.decision.ticket.id, approve=False, approver="alice", reason="too costly", now=clock.now
    )
    retry = await _check(authorizer, _body(rid=7, prompt="x", width=2048))
    assert retry.decision.kind is DenyKind.POLICY
    response = check_response(retry)
    body = json.loads(response.denied_response.body)
    text = body["result"]["content"][0]["text"]
    assert text.startswith("[POLICY DENIED] ")
    assert "too costly" in text and f"/tools/{TOOL}/approve_if/0" in text


async def test_rate_limited_approved_call_keeps_its_approval(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    for rid in (1, 2):  # use up the limit of 2 an hour with small calls
        assert (await _check(authorizer, _body(rid=rid, prompt="x", width=10))).decision.allowed
    held = await _check(authorizer, _body(prompt="x", width=2048))
    assert held.decision.ticket is not None
    approval_id = held.decision.ticket.id
    await store.resolve(approval_id, approve=True, approver="a", reason=None, now=clock.now)
    limited = await _check(authorizer, _body(prompt="x", width=2048))
    assert limited.decision.kind is DenyKind.RATE_LIMITED
    assert (await store.get(approval_id, clock.now)).status is ApprovalStatus.APPROVED


async def test_policy_change_voids_the_approval(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock, config_dir: Path
) -> None:
    held = await _check(authorizer, _body(prompt="x", width=2048))
    assert held.decision.ticket is not None
    await store.resolve(
        held.decision.ticket.id, approve=True, approver="a", reason=None, now=clock.now
    )
    changed = json.loads(json.dumps(POLICY))
    changed["tools"][TOOL]["limits"][0]["max"] = 3
    (config_dir / "policies" / "p.json").write_text(json.dumps(changed))
    assert authorizer._config.poll()
    retry = await _check(authorizer, _body(prompt="x", width=2048))
    assert retry.decision.kind is DenyKind.APPROVAL_REQUIRED
    assert retry.decision.ticket is not None and retry.decision.ticket.id != held.decision.ticket.id


class BrokenStore(MemoryApprovalStore):
    async def request(self, request: Any, now: float) -> Any:
        raise ConnectionError("down")


async def test_store_failure_fails_closed(config_dir: Path, clock: Clock) -> None:
    authorizer = Authorizer(
        ConfigSource.open(config_dir), MemoryCounterStore(), clock=clock, approvals=BrokenStore()
    )
    verdict = await _check(authorizer, _body(prompt="x", width=2048))
    assert verdict.decision.kind is DenyKind.UNAVAILABLE
    assert verdict.decision.rule == "(approvals)"


class RacedStore(MemoryApprovalStore):
    """An identical call uses the approval between this call's reservation and its consume
    (what the losing replica sees when two approved retries race)."""

    raced = 0

    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        if self.raced == 0:
            self.raced += 1
            assert await super().consume(approval_id, binding, now)  # the other call wins
        return await super().consume(approval_id, binding, now)


class ConsumeFails(MemoryApprovalStore):
    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        raise ConnectionError("down")


async def _approved_big_call(authorizer: Authorizer, store: MemoryApprovalStore) -> str:
    held = await _check(authorizer, _body(prompt="x", width=2048))
    assert held.decision.ticket is not None
    approval_id = held.decision.ticket.id
    await store.resolve(approval_id, approve=True, approver="a", reason=None, now=1_000_000.0)
    return approval_id


async def _remaining_quota(authorizer: Authorizer) -> int:
    """Small calls (no approval needed) allowed until the limit of 2 an hour denies one."""
    for allowed, rid in enumerate(range(100, 105)):
        verdict = await _check(authorizer, _body(rid=rid, prompt="x", width=10))
        if not verdict.decision.allowed:
            assert verdict.decision.kind is DenyKind.RATE_LIMITED, verdict.decision
            return allowed
    raise AssertionError("the limit never denied")


async def test_an_approved_call_that_loses_the_race_gives_its_quota_back(
    config_dir: Path, clock: Clock
) -> None:
    store = RacedStore()
    counters = MemoryCounterStore()
    authorizer = Authorizer(ConfigSource.open(config_dir), counters, clock=clock, approvals=store)
    approval_id = await _approved_big_call(authorizer, store)
    lost = await _check(authorizer, _body(prompt="x", width=2048))
    # held again under a new approval, and the quota it had reserved is back
    assert lost.decision.kind is DenyKind.APPROVAL_REQUIRED, lost.decision
    assert lost.decision.ticket is not None and lost.decision.ticket.id != approval_id
    assert lost.decision.reservation is None
    assert (await store.get(approval_id, clock.now)).status is ApprovalStatus.USED
    assert await _remaining_quota(authorizer) == 2


async def test_a_store_error_at_consume_gives_the_quota_back(
    config_dir: Path, clock: Clock
) -> None:
    store = ConsumeFails()
    authorizer = Authorizer(
        ConfigSource.open(config_dir), MemoryCounterStore(), clock=clock, approvals=store
    )
    approval_id = await _approved_big_call(authorizer, store)
    failed = await _check(authorizer, _body(prompt="x", width=2048))
    assert failed.decision.kind is DenyKind.UNAVAILABLE and failed.decision.rule == "(approvals)"
    assert failed.decision.reservation is None
    assert (await store.get(approval_id, clock.now)).status is ApprovalStatus.APPROVED
    assert await _remaining_quota(authorizer) == 2


async def test_an_approved_call_that_runs_keeps_its_quota(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    approval_id = await _approved_big_call(authorizer, store)
    ran = await _check(authorizer, _body(prompt="x", width=2048))
    assert ran.decision.allowed and ran.decision.reservation is not None
    assert (await store.get(approval_id, clock.now)).status is ApprovalStatus.USED
    assert await _remaining_quota(authorizer) == 1  # the approved call took one of the two


async def test_past_the_grants_cap_a_new_held_call_is_a_policy_denial(
    config_dir: Path, clock: Clock
) -> None:
    store = MemoryApprovalStore(limits=ApprovalLimits(max_pending_per_grant=2))
    authorizer = Authorizer(
        ConfigSource.open(config_dir), MemoryCounterStore(), clock=clock, approvals=store
    )
    first = await _check(authorizer, _body(prompt="a", width=2048))
    second = await _check(authorizer, _body(prompt="b", width=2048))
    assert {first.decision.kind, second.decision.kind} == {DenyKind.APPROVAL_REQUIRED}
    third = await _check(authorizer, _body(prompt="c-secret", width=2048))
    assert third.decision.kind is DenyKind.POLICY and third.decision.rule == CAP_RULE
    assert "2 pending approvals" in third.decision.message
    assert "c-secret" not in third.decision.message
    text = json.loads(check_response(third).denied_response.body)["result"]["content"][0]["text"]
    assert text.startswith("[POLICY DENIED] ") and "(approval cap)" in text
    # the held calls are still held; another grant is not capped
    again = await _check(authorizer, _body(prompt="a", width=2048))
    assert again.decision.ticket is not None and first.decision.ticket is not None
    assert again.decision.ticket.id == first.decision.ticket.id
    other = await _check(authorizer, _body(prompt="c", width=2048), token="tok2")
    assert other.decision.kind is DenyKind.APPROVAL_REQUIRED


async def test_arguments_too_large_to_hold_are_a_policy_denial(
    authorizer: Authorizer, store: MemoryApprovalStore
) -> None:
    bound = store.limits.max_argument_bytes
    verdict = await _check(authorizer, _body(prompt="s" * bound, width=2048))
    assert verdict.decision.kind is DenyKind.POLICY and verdict.decision.rule == SIZE_RULE
    assert f"the {bound} bytes" in verdict.decision.message
    assert "sss" not in verdict.decision.message
    assert await store.list_approvals(0) == [] and notified == []


# -- rendering --------------------------------------------------------------------------------


async def test_held_call_renders_as_approval_required_tool_result(authorizer: Authorizer) -> None:
    verdict = await _check(authorizer, _body(rid=42, prompt="x", width=2048))
    response = check_response(verdict)
    assert response.denied_response.status.code == 200
    body = json.loads(response.denied_response.body)
    assert body["id"] == 42
    result = body["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert text.startswith("[APPROVAL REQUIRED] ")
    assert verdict.decision.ticket is not None and verdict.decision.ticket.id in text
    assert "retry the identical call" in text
    assert result["_meta"][APPROVAL_META_KEY]["id"] == verdict.decision.ticket.id
    assert result["_meta"][APPROVAL_META_KEY]["status"] == "pending"
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers[APPROVAL_HEADER] == verdict.decision.ticket.id
    assert response.dynamic_metadata["approval_id"] == verdict.decision.ticket.id
    # the argument values are nowhere in what Envoy is told besides the agent's own reply
    assert "2048" not in response.status.message


async def test_audit_records_every_step_with_keys_only(
    authorizer: Authorizer, store: MemoryApprovalStore, clock: Clock
) -> None:
    with structlog.testing.capture_logs() as logs:
        held = await _check(authorizer, _body(prompt="secret-prompt", width=2048))
        assert held.decision.ticket is not None
        await store.resolve(
            held.decision.ticket.id, approve=True, approver="alice", reason=None, now=clock.now
        )
        ran = await _check(authorizer, _body(prompt="secret-prompt", width=2048))
    assert ran.decision.allowed
    approvals = [e for e in logs if e["event"] == "approval"]
    assert [e["action"] for e in approvals] == ["requested", "used"]
    assert all(e["arg_keys"] == ["prompt", "width"] for e in approvals)
    # the digest that is logged is keyed: hashing guesses of the values cannot find it
    plain = arguments_digest({"prompt": "secret-prompt", "width": 2048})
    assert all(len(e["arguments_hmac"]) == 64 and e["arguments_hmac"] != plain for e in approvals)
    assert plain not in repr(logs) and "arguments_sha256" not in repr(logs)
    assert approvals[1]["approver"] == "alice"
    decisions = [e for e in logs if e["event"] == "decision"]
    assert [d["decision"] for d in decisions] == ["deny", "allow"]
    assert decisions[0]["kind"] == "approval_required"
    assert all(d["approval_id"] == held.decision.ticket.id for d in decisions)
    assert "secret-prompt" not in repr(logs)
