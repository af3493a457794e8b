"""Domain types shared by the parser, the engine, the stores, the pipeline and the edges.

Nothing here knows about protobuf, gRPC, Redis or files.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONTENT_METHODS",
    "LISTINGS",
    "Approval",
    "ApprovalRequirement",
    "ApprovalStatus",
    "ApprovalTicket",
    "Claim",
    "Cursor",
    "Decision",
    "DenyKind",
    "Exhausted",
    "FixedRule",
    "Grant",
    "Hides",
    "JsonValue",
    "ListingFilter",
    "McpRequest",
    "Outcome",
    "RequestId",
    "Reservation",
    "bucket_part",
]

JsonValue = Any
"""A value produced by the strict JSON parser (dict, list, str, int, float, bool, None)."""

RequestId = str | int | None

CONTENT_METHODS: frozenset[str] = frozenset(
    {"resources/read", "resources/subscribe", "prompts/get", "completion/complete"}
)
"""The methods that read or run server content: a resource's data, a prompt's text, the
completions of a prompt's or a resource template's arguments. Under `default: deny` (and
without a `methods` section) a policy denies them unless its `resources` or `prompts`
section lets the request through (`authz.engine`). A later MCP revision's methods of that
kind are added here, and only here. Every other method but `tools/call` is protocol
plumbing (`initialize`, `ping`, notifications, the listings `tools/list`, `resources/list`,
`resources/templates/list`, `prompts/list`, `resources/unsubscribe`, ...), which `default`
does not govern."""


@dataclass(frozen=True, slots=True)
class McpRequest:
    """One parsed MCP JSON-RPC message (never a batch).

    `tool` is set for `tools/call` only. `resource` is the URI a `resources/read` or
    `resources/subscribe` names (`params.uri`), or a `completion/complete` whose reference is
    `ref/resource` (`params.ref.uri`: a URI or a URI template); `prompt` is the prompt a
    `prompts/get` names (`params.name`), or a `completion/complete` whose reference is
    `ref/prompt` (`params.ref.name`). `arguments` is the `params.arguments` object of a
    `tools/call` or a `prompts/get` (an empty mapping when absent).
    """

    method: str
    id: RequestId
    is_notification: bool
    params: Mapping[str, JsonValue] = field(default_factory=dict)
    tool: str | None = None
    arguments: Mapping[str, JsonValue] = field(default_factory=dict)
    session_id: str | None = None
    resource: str | None = None
    prompt: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.method == "tools/call"

    @property
    def is_content(self) -> bool:
        """Whether the request reads or runs server content (`CONTENT_METHODS`)."""
        return self.method in CONTENT_METHODS


@dataclass(frozen=True, slots=True)
class Grant:
    """A credential's entitlement: which policy applies to the caller."""

    id: str
    label: str
    policy: str
    token: Mapping[str, Any] | None = field(default=None, compare=False)
    """The caller's token claims, for this request only (a grant found by an OAuth token or
    a JWT Envoy verified; None for a static token or a peer certificate): `iss`, `sub`,
    `client_id`, `scope` (a sorted list) and `groups`, as `authz.oauth.tokens.TokenClaims`
    lists them. Conditions read them as `token.<claim>`; limits scoped `sub` or `client_id`
    count per `iss` and that claim. Never the token itself."""


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class DenyKind(enum.Enum):
    """Why a request was denied; every edge maps each kind to one HTTP shape
    (`authz.envoy.denial`)."""

    UNAUTHENTICATED = "unauthenticated"  # 401 + WWW-Authenticate
    INVALID_TOKEN = "invalid_token"  # 401: a credential that names no grant (error=invalid_token)
    NOT_FOUND = "not_found"  # 404: not the MCP endpoint
    BAD_REQUEST = "bad_request"  # malformed JSON / JSON-RPC / header mismatch
    POLICY = "policy"  # a policy rule denied the call
    RATE_LIMITED = "rate_limited"  # a limit is exhausted (Retry-After)
    UNAVAILABLE = "unavailable"  # the sidecar cannot decide (fail closed)
    METHOD_NOT_ALLOWED = "method_not_allowed"  # HTTP method not served
    TOO_LARGE = "too_large"  # body truncated by Envoy (partial)
    UNSUPPORTED_MEDIA = "unsupported_media"  # wrong Content-Type or a Content-Encoding
    APPROVAL_REQUIRED = "approval_required"  # held until a person approves (approve_if)
    INSUFFICIENT_SCOPE = "insufficient_scope"  # 403: the token lacks a scope the call needs


class FixedRule(enum.StrEnum):
    """The rule of a denial that no element of a policy caused (a policy's own rules are
    JSON pointers, `/tools/<tool>/...`). Each renders as its value, e.g. `(auth)`, exactly as
    the README's table of denials, the audit events and the metrics show it."""

    AUTH = "(auth)"
    """No credential, or one that names no grant."""
    PATH = "(path)"
    """Not the MCP endpoint."""
    HTTP = "(http)"
    """An HTTP method the endpoint does not serve, a method override, a token in the URL."""
    HEADERS = "(headers)"
    """`Mcp-*` headers that disagree with the body, a malformed `Mcp-Session-Id`."""
    BODY = "(body)"
    """A truncated, compressed or non-JSON body, or a body on GET or DELETE."""
    PARSE = "(parse)"
    """Not one valid MCP JSON-RPC message."""
    ID_IN_USE = "(id in use)"
    """The request's id is in flight in its session already."""
    NO_POLICY = "(no policy)"
    """The grant's policy is not loaded."""
    HIDDEN = "(hidden)"
    """A call of a tool, or a request for a resource or a prompt, the policy hides."""
    PIN = "(pin)"
    """A tool whose definition differs from the tool lock, or that the lock lacks
    (`pinning: enforce`)."""
    DEFAULT_DENY = "(default deny)"
    """Under `default: deny`, a call of a tool the policy does not list, or a request for a
    resource or a prompt no entry of the policy matches."""
    COUNTERS = "(counters)"
    """The counter store could not answer (fail closed)."""
    COUNTERS_FAIL_OPEN = "(counters fail-open)"
    """Allowed without quota: the counter store could not answer (fail open)."""
    INFLIGHT = "(inflight)"
    """The in-flight registry could not answer (fail closed)."""
    APPROVALS = "(approvals)"
    """The approval store could not answer (fail closed)."""
    APPROVAL_CAP = "(approval cap)"
    """The grant has as many pending approvals as it may."""
    APPROVAL_SIZE = "(approval size)"
    """The arguments are too large to hold for approval."""
    ERROR = "(error)"
    """The sidecar failed while deciding (fail closed)."""


Hides = Callable[[str | None], bool]
"""Whether an element is cut from one listing array of a grant's answers, by its key (a
tool's or a prompt's `name`, a resource's `uri`, a template's `uriTemplate`; None for an
element without a string key). Decided by the engine (`authz.engine.listing_filter`),
applied to the server's answers by the response phase."""

Definitions = Callable[[Mapping[str, Any]], bool]
"""Whether a `tools/list` element is cut for its definition (the whole element, parsed);
it sees every element of every `tools` array once."""

LISTINGS: tuple[tuple[str, str, str], ...] = (
    ("tools", "name", "tools/list"),
    ("resources", "uri", "resources/list"),
    ("resourceTemplates", "uriTemplate", "resources/templates/list"),
    ("prompts", "name", "prompts/list"),
)
"""(array of `result`, key of its elements, the method that lists it) of every listing a
policy can filter."""


@dataclass(frozen=True, slots=True)
class ListingFilter:
    """What a grant must not see, per listing array: `arrays` maps an array of `result`
    (`tools`, `resources`, `resourceTemplates`, `prompts`) to the `Hides` of its elements;
    an array not in it is passed as sent."""

    arrays: Mapping[str, Hides]
    definitions: Definitions | None = None
    """Also cut a `tools` element when this says so, given the whole element (the tool
    lock's check, `authz.pinning`); `arrays` then has `tools`."""

    @staticmethod
    def tools(hides: Hides) -> ListingFilter:
        """A filter of `tools` arrays only."""
        return ListingFilter({"tools": hides})

    @staticmethod
    def everything() -> ListingFilter:
        """Every element of every listing is cut (a grant whose policy is gone)."""
        return ListingFilter({array: _hide_all for array, _, _ in LISTINGS})

    def lists(self, method: str | None) -> bool:
        """Whether `method` lists an array this filter cuts."""
        return any(m == method and array in self.arrays for array, _, m in LISTINGS)


def _hide_all(_key: str | None) -> bool:
    return True


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
    """`grant`, `session`, `sub`, `client_id` or `global`."""
    scope_key: tuple[str, ...]
    """Who shares the bucket within its scope: `(grant id,)` for `grant`; `(grant id,
    session id)` for `session`, or `(grant id,)` when the request has no session; `(issuer,
    "sub", subject)` for `sub` and `(issuer, "client_id", client id)` for `client_id`, or
    `(grant id,)` when the caller's token has no such claim; `()` for `global`."""
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
    target: str | None = None
    """For a resource or prompt request, what the approval names as its `tool`:
    `prompts/get <name>`, `resources/read <uri>` (`resources/subscribe <uri>`); None for a
    `tools/call` (the tool's name)."""
    subject: str | None = None
    """For a resource or prompt request, how messages name it (`prompt 'x'`)."""


@dataclass(frozen=True, slots=True)
class ApprovalTicket:
    """What the agent is told about the approval its call waits for (or used)."""

    id: str
    status: str
    expires_at: float


class ApprovalStatus(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"
    EXPIRED = "expired"
    """Reported for a pending or approved approval whose expiry has passed."""


Cursor = tuple[float, str]
"""A position in a listing of approvals: (requested_at, id) of the last approval seen."""


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval of a held tool call, as a store holds it (`authz.approvals`)."""

    id: str
    status: ApprovalStatus
    binding: str
    grant_id: str
    grant_label: str
    policy: str
    policy_hash: str
    tool: str
    arguments_hmac: str
    """HMAC-SHA256 of the canonical arguments under the store's digest key."""
    argument_keys: tuple[str, ...]
    """The arguments' top-level keys, sorted (chosen by the agent)."""
    arguments_json: str | None
    """Canonical JSON of the arguments, for approvers only; None once the approval is used
    or has expired (values are kept only while it is live)."""
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
    def arguments(self) -> dict[str, Any] | None:
        """The argument values while they are kept, else None."""
        if self.arguments_json is None:
            return None
        value = json.loads(self.arguments_json)
        return value if isinstance(value, dict) else {}

    @property
    def cursor(self) -> Cursor:
        """Where this approval is in a listing (oldest first)."""
        return (self.requested_at, self.id)

    def view(self, now: float) -> Approval:
        """This approval as seen at `now`: pending/approved past expiry read as expired."""
        if self.status in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED) and (
            now >= self.expires_at
        ):
            return dataclasses.replace(self, status=ApprovalStatus.EXPIRED)
        return self

    def public(self, *, with_arguments: bool) -> dict[str, Any]:
        """JSON for the admin API (argument values only when asked; None once dropped)."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "grant_id": self.grant_id,
            "grant_label": self.grant_label,
            "policy": self.policy,
            "policy_hash": self.policy_hash,
            "tool": self.tool,
            "arguments_hmac": self.arguments_hmac,
            "argument_keys": list(self.argument_keys),
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


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request: allowed, or denied with a kind, a rule and a message.

    Made by the engine (`authz.engine`: `decide`, then `judge_approval` and `settle`) for
    what a policy judges, and by the pipeline (`authz.pipeline`) for what it refuses itself
    (HTTP shape, credential, parsing, unavailable stores). An allowed tool call carries the
    `claims` it needs from the counter store and, once reserved, the `reservation`; a call
    that needs a person's approval carries `approval`, and then a `ticket`. A denial carries
    its `kind` (the HTTP shape every edge gives it), the `rule` that denied it (a JSON
    pointer into the policy, or a `FixedRule`) and a `message` without argument values.
    """

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
    scopes: tuple[str, ...] = ()
    """For INSUFFICIENT_SCOPE: every scope the call needs (named in the challenge)."""

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
