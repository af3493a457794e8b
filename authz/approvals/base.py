"""Human approval of held tool calls: the domain types and the store interface.

A tool call that matches a policy's `approve_if` rule is *held*: it is not forwarded, and a
pending `Approval` records what was asked (grant, tool, a digest of the canonical JSON of
the arguments, policy hash, request time, expiry). A person approves or denies it through
the admin API. An approved call is *bound*: only the identical call (same grant, same tool,
same argument digest, same policy hash) before expiry may use it, once.

Lifecycle (every implementation keeps it; transitions are atomic, also across replicas):

    pending --approve--> approved --consume--> used
       |                    |
       +--deny--> denied    +-- expiry: unusable (reported as expired)
       +-- expiry: unusable

- `request` returns the *live* approval bound to a call (pending, approved or denied, not
  expired), or creates a new pending one. A used or expired approval is never returned:
  the next identical call creates a new pending approval (so a second retry is held again).
- A denied approval stays bound until it expires: identical retries get the denial again.
- `decide` changes pending → approved/denied only before expiry.
- `consume` changes approved → used only before expiry and only for the same binding.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "RETENTION_SECONDS",
    "Approval",
    "ApprovalConflict",
    "ApprovalNotFound",
    "ApprovalRequest",
    "ApprovalStatus",
    "ApprovalStore",
    "ApprovalStoreUnavailable",
    "arguments_digest",
    "canonical_json",
    "new_approval_id",
]


class ApprovalStatus(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"
    EXPIRED = "expired"
    """Reported for a pending or approved approval whose expiry has passed."""


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a value: sorted keys, no whitespace, UTF-8 (not escaped).

    Numbers keep their parsed type: `1` and `1.0` are different texts, so an approval for
    one does not cover the other.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a call's arguments."""
    return hashlib.sha256(canonical_json(dict(arguments)).encode("utf-8")).hexdigest()


def new_approval_id() -> str:
    return "apr_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What a held call asks a person to approve."""

    grant_id: str
    grant_label: str
    policy: str
    """The policy's name."""
    policy_hash: str
    tool: str
    arguments: Mapping[str, Any]
    """Shown to approvers through the admin API only; never logged."""
    rule: str
    """JSON pointer of the `approve_if` rule that held the call."""
    ttl_seconds: int
    decision_id: str = ""
    """The decision that held the call (joins the audit events)."""

    @property
    def arguments_digest(self) -> str:
        return arguments_digest(self.arguments)

    @property
    def binding(self) -> str:
        """sha256 (hex) that names the exact call: grant, tool, arguments, policy hash."""
        parts = (self.grant_id, self.tool, self.arguments_digest, self.policy_hash)
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval as a store holds it."""

    id: str
    status: ApprovalStatus
    binding: str
    grant_id: str
    grant_label: str
    policy: str
    policy_hash: str
    tool: str
    arguments_digest: str
    arguments_json: str
    """Canonical JSON of the arguments (for approvers only)."""
    rule: str
    requested_at: float
    expires_at: float
    decision_id: str = ""
    decided_at: float | None = None
    decided_by: str | None = None
    """The approver's id (from their admin credential), never a client-supplied name."""
    reason: str | None = None
    used_at: float | None = None

    @property
    def arguments(self) -> dict[str, Any]:
        value = json.loads(self.arguments_json)
        return value if isinstance(value, dict) else {}

    @property
    def argument_keys(self) -> list[str]:
        return sorted(self.arguments)

    def view(self, now: float) -> Approval:
        """This approval as seen at `now`: pending/approved past expiry read as expired."""
        if self.status in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED) and (
            now >= self.expires_at
        ):
            return dataclasses.replace(self, status=ApprovalStatus.EXPIRED)
        return self

    def public(self, *, with_arguments: bool) -> dict[str, Any]:
        """JSON for the admin API and the webhook (argument values only when asked)."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "grant_id": self.grant_id,
            "grant_label": self.grant_label,
            "policy": self.policy,
            "policy_hash": self.policy_hash,
            "tool": self.tool,
            "arguments_sha256": self.arguments_digest,
            "argument_keys": self.argument_keys,
            "rule": self.rule,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "decision_id": self.decision_id,
            "decided_at": self.decided_at,
            "decided_by": self.decided_by,
            "reason": self.reason,
            "used_at": self.used_at,
        }
        if with_arguments:
            out["arguments"] = self.arguments
        return out


class ApprovalNotFound(LookupError):
    """No approval with that id (never existed, or its record has been dropped)."""


class ApprovalConflict(Exception):
    """The approval cannot make that transition (not pending, already used, expired)."""

    def __init__(self, approval: Approval, message: str) -> None:
        super().__init__(message)
        self.approval = approval
        self.message = message


class ApprovalStoreUnavailable(Exception):
    """The store could not answer; held calls fail closed."""


@runtime_checkable
class ApprovalStore(Protocol):
    """Where approvals live; memory (one process) or Redis (shared by replicas)."""

    async def request(self, request: ApprovalRequest, now: float) -> tuple[Approval, bool]:
        """The live approval bound to this call, or a new pending one: (approval, created).

        The returned approval is already `view(now)`-ed and is never used or expired.
        """
        ...

    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        """approved → used, atomically; False if it is not approved, expired, already used
        or bound to another call."""
        ...

    async def decide(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None, now: float
    ) -> Approval:
        """pending → approved/denied; raises ApprovalNotFound or ApprovalConflict."""
        ...

    async def get(self, approval_id: str, now: float) -> Approval:
        """One approval as seen at `now`; raises ApprovalNotFound."""
        ...

    async def list_approvals(
        self, now: float, *, statuses: Sequence[ApprovalStatus] = ()
    ) -> list[Approval]:
        """Known approvals as seen at `now`, oldest first; only `statuses` when given."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """One line for readiness and logs."""
        ...


RETENTION_SECONDS = 86400
"""How long a store keeps an approval's record after its expiry (for `show` and audits)."""
