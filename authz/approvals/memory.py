"""Approvals in this process's memory: one sidecar (replicas need the Redis store)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from authz.approvals.base import (
    RETENTION_SECONDS,
    Approval,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStatus,
    canonical_json,
    new_approval_id,
)

__all__ = ["MemoryApprovalStore"]

_LIVE = (ApprovalStatus.PENDING, ApprovalStatus.APPROVED, ApprovalStatus.DENIED)


class MemoryApprovalStore:
    def __init__(self, *, retention_seconds: float = RETENTION_SECONDS) -> None:
        self._by_id: dict[str, Approval] = {}
        self._by_binding: dict[str, str] = {}
        self._retention = retention_seconds
        self._lock = asyncio.Lock()

    def _prune(self, now: float) -> None:
        for approval_id, approval in list(self._by_id.items()):
            if now >= approval.expires_at + self._retention:
                del self._by_id[approval_id]
                if self._by_binding.get(approval.binding) == approval_id:
                    del self._by_binding[approval.binding]

    def _live(self, binding: str, now: float) -> Approval | None:
        approval_id = self._by_binding.get(binding)
        if approval_id is None:
            return None
        approval = self._by_id.get(approval_id)
        if approval is None:
            return None
        seen = approval.view(now)
        if seen.status in _LIVE and now < approval.expires_at:
            return seen
        return None

    async def request(self, request: ApprovalRequest, now: float) -> tuple[Approval, bool]:
        async with self._lock:
            self._prune(now)
            binding = request.binding
            live = self._live(binding, now)
            if live is not None:
                return live, False
            approval = Approval(
                id=new_approval_id(),
                status=ApprovalStatus.PENDING,
                binding=binding,
                grant_id=request.grant_id,
                grant_label=request.grant_label,
                policy=request.policy,
                policy_hash=request.policy_hash,
                tool=request.tool,
                arguments_digest=request.arguments_digest,
                arguments_json=canonical_json(dict(request.arguments)),
                rule=request.rule,
                requested_at=now,
                expires_at=now + request.ttl_seconds,
                decision_id=request.decision_id,
            )
            self._by_id[approval.id] = approval
            self._by_binding[binding] = approval.id
            return approval, True

    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        async with self._lock:
            approval = self._by_id.get(approval_id)
            if (
                approval is None
                or approval.binding != binding
                or approval.view(now).status is not ApprovalStatus.APPROVED
            ):
                return False
            self._by_id[approval_id] = dataclasses.replace(
                approval, status=ApprovalStatus.USED, used_at=now
            )
            if self._by_binding.get(binding) == approval_id:
                del self._by_binding[binding]
            return True

    async def decide(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None, now: float
    ) -> Approval:
        async with self._lock:
            approval = self._by_id.get(approval_id)
            if approval is None:
                raise ApprovalNotFound(approval_id)
            seen = approval.view(now)
            if seen.status is not ApprovalStatus.PENDING:
                raise ApprovalConflict(seen, f"approval {approval_id} is {seen.status.value}")
            decided = dataclasses.replace(
                approval,
                status=ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED,
                decided_at=now,
                decided_by=approver,
                reason=reason,
            )
            self._by_id[approval_id] = decided
            return decided

    async def get(self, approval_id: str, now: float) -> Approval:
        approval = self._by_id.get(approval_id)
        if approval is None:
            raise ApprovalNotFound(approval_id)
        return approval.view(now)

    async def list_approvals(
        self, now: float, *, statuses: Sequence[ApprovalStatus] = ()
    ) -> list[Approval]:
        async with self._lock:
            self._prune(now)
            seen = [a.view(now) for a in self._by_id.values()]
        wanted = set(statuses)
        return sorted(
            (a for a in seen if not wanted or a.status in wanted),
            key=lambda a: (a.requested_at, a.id),
        )

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"memory ({len(self._by_id)} approvals)"
