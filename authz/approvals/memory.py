"""Approvals in this process's memory: one sidecar (replicas need the Redis store).

Bounded as `ApprovalLimits` says (see `authz.approvals.base`): at most
`max_pending_per_grant` pending approvals per grant, arguments of at most
`max_argument_bytes`, argument values only while an approval is live, and at most
`max_records` records of finished approvals (used, denied, expired), the first to expire
dropped first. Expiry is processed in order from a heap, so each operation does work in
proportion to what has expired since the last one, never a scan of every record.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
from collections.abc import Sequence

from authz.approvals.base import (
    RETENTION_SECONDS,
    ApprovalConflict,
    ApprovalLimits,
    ApprovalNotFound,
    ApprovalRequest,
    arguments_hmac,
    new_approval_id,
    new_digest_key,
)
from authz.model import Approval, ApprovalStatus, Cursor

__all__ = ["MemoryApprovalStore"]

_LIVE = (ApprovalStatus.PENDING, ApprovalStatus.APPROVED, ApprovalStatus.DENIED)


class MemoryApprovalStore:
    def __init__(
        self,
        *,
        retention_seconds: float = RETENTION_SECONDS,
        limits: ApprovalLimits | None = None,
        digest_key: bytes | None = None,
    ) -> None:
        self._by_id: dict[str, Approval] = {}
        self._by_binding: dict[str, str] = {}
        self._pending: dict[str, set[str]] = {}
        """Grant id → ids of its pending approvals (not decided, not yet seen expired)."""
        self._expiries: list[tuple[float, str]] = []
        """Heap of (expires_at, id) of approvals whose expiry has not been processed."""
        self._finished: collections.deque[str] = collections.deque()
        """Ids of finished approvals (used, or past expiry), in the order they finished."""
        self._retention = retention_seconds
        self._limits = limits if limits is not None else ApprovalLimits()
        self._key = digest_key if digest_key is not None else new_digest_key()
        self._lock = asyncio.Lock()

    @property
    def limits(self) -> ApprovalLimits:
        return self._limits

    # -- bookkeeping --------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        """Process every expiry up to `now`, then drop finished records past retention or
        over the bound."""
        while self._expiries and self._expiries[0][0] <= now:
            _expires, approval_id = heapq.heappop(self._expiries)
            approval = self._by_id.get(approval_id)
            if approval is None:
                continue
            self._unpend(approval)
            if self._by_binding.get(approval.binding) == approval_id:
                del self._by_binding[approval.binding]
            if approval.status is not ApprovalStatus.USED:  # a used one finished already
                self._by_id[approval_id] = dataclasses.replace(approval, arguments_json=None)
                self._finished.append(approval_id)
        while self._finished:
            oldest = self._by_id.get(self._finished[0])
            if (
                oldest is not None
                and len(self._finished) <= self._limits.max_records
                and now < oldest.expires_at + self._retention
            ):
                break
            self._finished.popleft()
            if oldest is not None:
                del self._by_id[oldest.id]

    def _unpend(self, approval: Approval) -> None:
        ids = self._pending.get(approval.grant_id)
        if ids is not None:
            ids.discard(approval.id)
            if not ids:
                del self._pending[approval.grant_id]

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

    # -- the store --------------------------------------------------------------------------

    async def request(self, request: ApprovalRequest, now: float) -> tuple[Approval, bool]:
        self._limits.check_size(request)
        async with self._lock:
            self._prune(now)
            binding = request.binding
            live = self._live(binding, now)
            if live is not None:
                return live, False
            pending = self._pending.setdefault(request.grant_id, set())
            if len(pending) >= self._limits.max_pending_per_grant:
                raise self._limits.cap_reached()
            requested_at = round(now, 6)  # as listed and as a cursor names it
            approval = Approval(
                id=new_approval_id(),
                status=ApprovalStatus.PENDING,
                binding=binding,
                grant_id=request.grant_id,
                grant_label=request.grant_label,
                policy=request.policy,
                policy_hash=request.policy_hash,
                tool=request.tool,
                arguments_hmac=arguments_hmac(self._key, request.arguments_json),
                argument_keys=tuple(request.argument_keys),
                arguments_json=request.arguments_json,
                rule=request.rule,
                requested_at=requested_at,
                expires_at=requested_at + request.ttl_seconds,
                decision_id=request.decision_id,
            )
            self._by_id[approval.id] = approval
            self._by_binding[binding] = approval.id
            pending.add(approval.id)
            heapq.heappush(self._expiries, (approval.expires_at, approval.id))
            return approval, True

    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        async with self._lock:
            self._prune(now)
            approval = self._by_id.get(approval_id)
            if (
                approval is None
                or approval.binding != binding
                or approval.view(now).status is not ApprovalStatus.APPROVED
            ):
                return False
            self._by_id[approval_id] = dataclasses.replace(
                approval, status=ApprovalStatus.USED, used_at=now, arguments_json=None
            )
            if self._by_binding.get(binding) == approval_id:
                del self._by_binding[binding]
            self._finished.append(approval_id)
            return True

    async def resolve(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None, now: float
    ) -> Approval:
        async with self._lock:
            self._prune(now)
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
            self._unpend(decided)  # decided: no longer counts against the grant's cap
            return decided

    async def get(self, approval_id: str, now: float) -> Approval:
        self._prune(now)
        approval = self._by_id.get(approval_id)
        if approval is None:
            raise ApprovalNotFound(approval_id)
        return approval.view(now)

    async def list_approvals(
        self,
        now: float,
        *,
        statuses: Sequence[ApprovalStatus] = (),
        after: Cursor | None = None,
        limit: int | None = None,
    ) -> list[Approval]:
        async with self._lock:
            self._prune(now)
            seen = [a.view(now) for a in self._by_id.values()]
        wanted = set(statuses)
        found = sorted(
            (
                a
                for a in seen
                if (not wanted or a.status in wanted) and (after is None or a.cursor > after)
            ),
            key=lambda a: a.cursor,
        )
        return found if limit is None else found[:limit]

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"memory ({len(self._by_id)} approvals)"
