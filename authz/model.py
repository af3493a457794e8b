"""Domain types shared by the parser, the engine, the counter stores and the Envoy edge.

Nothing here knows about protobuf, gRPC, Redis or files.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JsonValue = Any
"""A value produced by the strict JSON parser (dict, list, str, int, float, bool, None)."""

RequestId = str | int | None


@dataclass(frozen=True, slots=True)
class McpRequest:
    """One parsed MCP JSON-RPC message (never a batch).

    `tool` is set for `tools/call` only; `arguments` is the `params.arguments` object of a
    `tools/call` (an empty mapping when absent).
    """

    method: str
    id: RequestId
    is_notification: bool
    params: Mapping[str, JsonValue] = field(default_factory=dict)
    tool: str | None = None
    arguments: Mapping[str, JsonValue] = field(default_factory=dict)
    session_id: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.method == "tools/call"


@dataclass(frozen=True, slots=True)
class Grant:
    """A credential's entitlement: which policy applies to the caller."""

    id: str
    label: str
    policy: str


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class DenyKind(enum.Enum):
    """Why a request was denied; the Envoy edge maps each kind to an HTTP shape."""

    UNAUTHENTICATED = "unauthenticated"  # 401 + WWW-Authenticate
    BAD_REQUEST = "bad_request"  # malformed JSON / JSON-RPC / header mismatch
    POLICY = "policy"  # a policy rule denied the call
    RATE_LIMITED = "rate_limited"  # a limit is exhausted (Retry-After)
    UNAVAILABLE = "unavailable"  # the sidecar cannot decide (fail closed)
    METHOD_NOT_ALLOWED = "method_not_allowed"  # HTTP method not served
    TOO_LARGE = "too_large"  # body truncated by Envoy (partial)
    UNSUPPORTED_MEDIA = "unsupported_media"  # wrong Content-Type or a Content-Encoding
    APPROVAL_REQUIRED = "approval_required"  # held until a person approves (approve_if)


def bucket_part(*parts: str) -> str:
    """Several names as one key part that no other sequence of names gives: a compact JSON
    array (`("team", "ci")` → `["team","ci"]`, `("team/ci",)` → `["team/ci"]`)."""
    return json.dumps(parts, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Claim:
    """One unit of quota a call wants from one bucket.

    Limits that share a policy, a counter name, a scope, who shares it and a window share a
    bucket (across tools); see `bucket`.
    """

    counter: str
    """The counter as the policy names it: a limit's `counter`, or `state.<tool>.<counter>`
    for an Intercept `state` rule (the path its conditions read). For messages."""
    scope: str
    """`grant`, `session` or `global`."""
    scope_key: tuple[str, ...]
    """Who shares the bucket within its scope: `(grant id,)` for `grant`; `(grant id,
    session id)` for `session`, or `(grant id,)` when the request has no session; `()` for
    `global`."""
    window_seconds: int
    max: int
    cost: int
    rule: str
    on_deny: str | None = None
    policy: str = ""
    """The policy whose limit this is: a bucket belongs to one policy (by name)."""
    state: tuple[str, str] | None = None
    """For an Intercept `state` counter: (tool key, counter name) as the policy writes them
    (`_global` for the `"*"` entry), which `counter` joins with dots."""

    @property
    def bucket(self) -> tuple[str, str, str, int]:
        """(counter, scope, sharers, window seconds), each name part encoded by
        `bucket_part`, so that different tuples of policy, counter (and tool, for a `state`
        counter), scope, grant and session never give the same bucket, in memory or in
        Redis: `team` in session `ci` and `team/ci` without one are two buckets."""
        counter = (*self.state,) if self.state is not None else (self.counter,)
        return (
            bucket_part(self.policy, *counter),
            self.scope,
            bucket_part(*self.scope_key),
            self.window_seconds,
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """Quota taken for one allowed call: which buckets, in which windows, how much."""

    entries: tuple[tuple[tuple[str, str, str, int], int, int], ...] = ()
    """(bucket, window_start_epoch_seconds, cost) per bucket."""
    token: str = ""
    """Identifies this reservation to the store that issued it, so that `release` is
    idempotent across processes (e.g. a Redis-backed store); empty when nothing was taken."""


@dataclass(frozen=True, slots=True)
class Exhausted:
    """A reservation failed: this claim has no room left in its current window."""

    claim: Claim
    retry_after: int


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    """The call may run only with a person's approval (a matching `approve_if` rule)."""

    rule: str
    """JSON pointer of the rule, e.g. `/tools/<tool>/approve_if/0`."""
    ttl_seconds: int
    on_deny: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalTicket:
    """What the agent is told about the approval its call waits for (or used)."""

    id: str
    status: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    rule: str | None = None
    message: str = ""
    kind: DenyKind | None = None
    retry_after: int | None = None
    claims: tuple[Claim, ...] = ()
    reservation: Reservation | None = None
    rpc_code: int | None = None
    """JSON-RPC error code for denials rendered as JSON-RPC errors (parse errors etc.)."""
    approval: ApprovalRequirement | None = None
    """Set on an allowed tool call that may run only once a person has approved it."""
    ticket: ApprovalTicket | None = None
    """The approval the call is held for (APPROVAL_REQUIRED), was denied by, or used."""

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW

    @staticmethod
    def allow(rule: str | None = None, claims: tuple[Claim, ...] = ()) -> Decision:
        return Decision(Outcome.ALLOW, rule=rule, claims=claims)

    @staticmethod
    def deny(
        kind: DenyKind,
        message: str,
        rule: str | None = None,
        retry_after: int | None = None,
        rpc_code: int | None = None,
    ) -> Decision:
        return Decision(
            Outcome.DENY,
            rule=rule,
            message=message,
            kind=kind,
            retry_after=retry_after,
            rpc_code=rpc_code,
        )
