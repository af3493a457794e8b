"""Human approval of held tool calls: the store interface and what every store shares.

The approval itself (`Approval`, `ApprovalStatus`) is a domain type of `authz.model`: the
engine judges it without knowing any store.

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
- `resolve` changes pending → approved/denied only before expiry.
- `consume` changes approved → used only before expiry and only for the same binding.

Bounds (`ApprovalLimits`, the same in every store; a refusal is `ApprovalRefused`):

- a grant has at most `max_pending_per_grant` pending approvals: past that, a call that
  would create a new one is refused (its retries, and other grants, are unaffected);
- the canonical JSON of a held call's arguments is at most `max_argument_bytes`: a larger
  call is refused, never stored;
- argument values are kept only while the approval is live (pending, approved, or denied
  and bound), until it is used or expires; its record without them stays for
  `RETENTION_SECONDS` after expiry, and a store keeps at most `max_records` records beyond
  the live ones (the first to expire are dropped first).

What leaves a store (the admin API, the webhook, audit events) carries `arguments_hmac`:
HMAC-SHA256 of the canonical arguments under the store's digest key, so small values
cannot be recovered by hashing guesses. The binding's own sha256 never leaves the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from authz.model import Approval, ApprovalStatus, Cursor, FixedRule

__all__ = [
    "CAP_RULE",
    "RETENTION_SECONDS",
    "SIZE_RULE",
    "ApprovalConflict",
    "ApprovalLimits",
    "ApprovalNotFound",
    "ApprovalRefused",
    "ApprovalRequest",
    "ApprovalStore",
    "ApprovalStoreUnavailable",
    "arguments_digest",
    "arguments_hmac",
    "canonical_json",
    "format_cursor",
    "new_approval_id",
    "new_digest_key",
    "parse_cursor",
]


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a value: sorted keys, no whitespace, UTF-8 (not escaped).

    Numbers keep their parsed type: `1` and `1.0` are different texts, so an approval for
    one does not cover the other.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a call's arguments: part of the binding, which
    never leaves the store (small values could be recovered from it by hashing guesses)."""
    return hashlib.sha256(canonical_json(dict(arguments)).encode("utf-8")).hexdigest()


def arguments_hmac(key: bytes, arguments_json: str) -> str:
    """HMAC-SHA256 (hex) of a call's canonical arguments JSON under a server secret: the
    digest shown to approvers, sent with the webhook and logged."""
    return hmac.new(key, arguments_json.encode("utf-8"), hashlib.sha256).hexdigest()


def new_digest_key() -> bytes:
    """A random digest key (per process, when none is configured)."""
    return secrets.token_bytes(32)


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
    arguments_json: str = field(init=False, repr=False, compare=False)
    """The canonical JSON of `arguments` (computed once)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments_json", canonical_json(dict(self.arguments)))

    @property
    def arguments_size(self) -> int:
        """Bytes of the canonical arguments JSON (UTF-8): what the size bound counts."""
        return len(self.arguments_json.encode("utf-8"))

    @property
    def argument_keys(self) -> list[str]:
        return sorted(self.arguments)

    @property
    def arguments_digest(self) -> str:
        return hashlib.sha256(self.arguments_json.encode("utf-8")).hexdigest()

    @property
    def binding(self) -> str:
        """sha256 (hex) that names the exact call: grant, tool, arguments, policy hash."""
        parts = (self.grant_id, self.tool, self.arguments_digest, self.policy_hash)
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


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


CAP_RULE: Final = FixedRule.APPROVAL_CAP
"""Rule of a call refused because its grant has as many pending approvals as it may."""
SIZE_RULE: Final = FixedRule.APPROVAL_SIZE
"""Rule of a call refused because its arguments are too large to hold for approval."""


class ApprovalRefused(Exception):
    """A held call the store will not hold: a bound of `ApprovalLimits` is reached.

    `message` names the bound and never the arguments' values; `rule` is `CAP_RULE` or
    `SIZE_RULE`.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class ApprovalLimits:
    """What a store holds at most (the same bounds in memory and in Redis)."""

    max_pending_per_grant: int = 100
    """Pending approvals one grant may have at once."""
    max_argument_bytes: int = 64 * 1024
    """Bytes of canonical arguments JSON (UTF-8) a held call may carry."""
    max_records: int = 10_000
    """Records kept beyond the live ones (used, denied or expired approvals, for `show` and
    audits); the first to expire are dropped first."""

    def __post_init__(self) -> None:
        for name in ("max_pending_per_grant", "max_argument_bytes", "max_records"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def check_size(self, request: ApprovalRequest) -> None:
        """Raise `ApprovalRefused` when the call's arguments are over the size bound."""
        size = request.arguments_size
        if size > self.max_argument_bytes:
            raise ApprovalRefused(
                SIZE_RULE,
                f"arguments: {size} bytes of JSON, more than the {self.max_argument_bytes} "
                "bytes a call held for approval may carry; the call was not held or run",
            )

    def cap_reached(self) -> ApprovalRefused:
        return ApprovalRefused(
            CAP_RULE,
            f"this grant already has {self.max_pending_per_grant} pending approvals, the "
            "most it may have; the call was not held or run: retry once an approver has "
            "decided one or one has expired",
        )


_CURSOR = re.compile(r"([0-9]{1,12}\.[0-9]{6})_(apr_[0-9a-f]{24})")


def format_cursor(cursor: Cursor) -> str:
    """The text form of a cursor (the admin API's `next` and `after`)."""
    return f"{cursor[0]:.6f}_{cursor[1]}"


def parse_cursor(text: str) -> Cursor | None:
    """A cursor from its text form, or None when it is not one."""
    match = _CURSOR.fullmatch(text)
    if match is None:
        return None
    return float(match.group(1)), match.group(2)


@runtime_checkable
class ApprovalStore(Protocol):
    """Where approvals live; memory (one process) or Redis (shared by replicas)."""

    async def request(self, request: ApprovalRequest, now: float) -> tuple[Approval, bool]:
        """The live approval bound to this call, or a new pending one: (approval, created).

        The returned approval is already `view(now)`-ed and is never used or expired.
        Raises `ApprovalRefused` when a new one would pass a bound of the store's limits.
        """
        ...

    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        """approved → used, atomically; False if it is not approved, expired, already used
        or bound to another call."""
        ...

    async def resolve(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None, now: float
    ) -> Approval:
        """A person's decision: pending → approved/denied; raises ApprovalNotFound or
        ApprovalConflict."""
        ...

    async def get(self, approval_id: str, now: float) -> Approval:
        """One approval as seen at `now`; raises ApprovalNotFound."""
        ...

    async def list_approvals(
        self,
        now: float,
        *,
        statuses: Sequence[ApprovalStatus] = (),
        after: Cursor | None = None,
        limit: int | None = None,
    ) -> list[Approval]:
        """Known approvals as seen at `now`, oldest first; only `statuses` when given, only
        those after the cursor `after`, at most `limit`."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """One line for readiness and logs."""
        ...


RETENTION_SECONDS = 86400
"""How long a store keeps an approval's record after its expiry (for `show` and audits)."""
