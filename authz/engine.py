"""The decision: one MCP request, one grant, one policy → `Decision` (pure, sync, no I/O).

`decide` never touches counters: an allowed tool call carries `claims`, which the caller
reserves in a `CounterStore` and passes to `settle` for the final decision.

Order for `tools/call` (as in Intercept): hide → default → for the tool's own entry, then
the "*" entry: require → deny_if → rules → then limits (own, "*", all_tools), all at once.
An allowed call that matches an `approve_if` rule (own entry first, then "*"; the first
that holds) carries an `ApprovalRequirement`: the caller looks up the approval bound to the
exact call and passes it to `judge_approval`.

Rule pointers (RFC 6901, `~` → `~0`, `/` → `~1` in tool and counter names):
`/tools/<tool>/require/<i>`, `/tools/<tool>/deny_if/<i>`, `/tools/<tool>/rules/<i>`,
`/tools/<tool>/limits/<counter>`, `/tools/<tool>/approve_if/<i>`,
`/tools/<tool>/require_approval`, `/all_tools/limits/<counter>` (and `.../cost` when a
limit's cost argument is unusable), and the fixed `(no policy)`, `(hidden)`,
`(default deny)` (`FixedRule`). Messages carry no argument values from the
request (policy values are fine) and no "[POLICY DENIED]" prefix: the edge adds it.

The listing rules are the same rules read the other way round (`listing_filter`): which
tools a grant's `tools/list` loses, because the policy hides them or, with `hide_denied`,
because `decide` denies every call of them whatever the arguments (`never_callable`). The
response phase only applies them to the server's answers.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Mapping
from typing import Any

from authz.model import (
    Approval,
    ApprovalRequirement,
    ApprovalStatus,
    ApprovalTicket,
    Claim,
    Decision,
    DenyKind,
    Exhausted,
    FixedRule,
    Grant,
    Hides,
    McpRequest,
    Outcome,
    Reservation,
)
from authz.policy import Policy, conditions
from authz.policy.conditions import Truth, non_negative_int
from authz.policy.document import WILDCARD, ToolPolicy
from authz.policy.limits import WINDOW_SECONDS, Limit, LimitCost
from authz.policy.rules import GLOBAL_STATE_SCOPE, STATE_PREFIX, ActionRule, Rule

__all__ = [
    "decide",
    "decide_stream",
    "hides_tools",
    "judge_approval",
    "listing_filter",
    "never_callable",
    "pointer",
    "settle",
]


@functools.lru_cache(maxsize=4096, typed=True)
def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) to a policy element: `pointer('tools', 'a/b')` → `/tools/a~1b`.

    Remembered: every allowed call names the same few rules (its limits), and escaping each
    part costs more than the lookup."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _no_policy(grant: Grant) -> Decision:
    return Decision.deny(
        DenyKind.POLICY,
        f"grant {grant.label or grant.id!r} uses policy {grant.policy!r}, which is not "
        "loaded; every call is denied until it is",
        rule=FixedRule.NO_POLICY,
    )


def decide_stream(policy: Policy | None, grant: Grant) -> Decision:
    """A GET (the server's SSE stream) or DELETE (end of session): no JSON-RPC message to
    judge, so it is allowed exactly when the grant's policy is loaded."""
    return Decision.allow() if policy is not None else _no_policy(grant)


def decide(policy: Policy | None, grant: Grant, request: McpRequest) -> Decision:
    """Evaluate one request against the grant's policy (None: the policy is not loaded).

    Non-`tools/call` methods follow the policy's `methods` section (all allowed when it is
    absent). An allowed tool call carries one `Claim` per
    applicable limit (the limit's `cost`, 1 by default, or the `increment` of an Intercept
    `state` rule); the caller reserves them and calls `settle`. A limit whose cost is read
    from an argument that is present but not a non-negative integer denies the call
    (POLICY, rule `.../limits/<counter>/cost`). Who shares a bucket (`Claim.scope_key`):
    grant → the grant; session → the grant and `request.session_id`, or the grant alone
    when the request has no session (so a session limit without sessions behaves per
    grant); global → everyone. Buckets are per policy (`Claim.policy`).
    """
    if policy is None:
        return _no_policy(grant)
    if not request.is_tool_call:
        allowed, method_rule = policy.document.methods.permits(request.method)
        if allowed:
            return Decision.allow()
        return Decision.deny(
            DenyKind.POLICY,
            f"method {request.method!r} is not permitted by policy",
            rule=method_rule,
        )
    tool = request.tool
    if not tool:
        return Decision.deny(DenyKind.BAD_REQUEST, "tools/call without a tool name")
    if policy.is_hidden(tool):
        return Decision.deny(
            DenyKind.POLICY, f"tool {tool!r} is hidden by policy", rule=FixedRule.HIDDEN
        )
    if _unlisted_denied(policy, tool):
        return Decision.deny(
            DenyKind.POLICY,
            f"tool {tool!r} is not permitted by policy",
            rule=FixedRule.DEFAULT_DENY,
        )

    entries = _entries(policy, tool)
    args = request.arguments
    strict = policy.strict_types
    for key, entry in entries:
        denial = _check_entry(tool, key, entry, args, strict)
        if denial is not None:
            return denial

    claims: list[Claim] = []
    for key, entry in entries:
        for limit in entry.limits:
            claim = _limit_claim(tool, limit, ("tools", key, "limits"), grant, request)
            if isinstance(claim, Decision):
                return claim
            claims.append(claim)
        for i, rule in enumerate(entry.rules):
            claim_or_denial = _rule_claim(tool, key, i, rule, args, grant.policy)
            if isinstance(claim_or_denial, Decision):
                return claim_or_denial
            if claim_or_denial is not None:
                claims.append(claim_or_denial)
    for limit in policy.all_tools_limits:
        claim = _limit_claim(tool, limit, ("all_tools", "limits"), grant, request)
        if isinstance(claim, Decision):
            return claim
        claims.append(claim)
    return Decision(
        Outcome.ALLOW,
        claims=tuple(claims),
        approval=_approval_requirement(entries, args, strict),
    )


def _unlisted_denied(policy: Policy, tool: str) -> bool:
    """Whether `tool` is denied for not being listed (`default: deny`)."""
    return policy.default == "deny" and policy.tool(tool) is None


def _entries(policy: Policy, tool: str) -> list[tuple[str, ToolPolicy]]:
    """(key, entry) of the entries that judge a call of `tool`, in order: its own entry,
    then the "*" entry (which judges every tool but a tool named "*")."""
    entries: list[tuple[str, ToolPolicy]] = []
    own = policy.tool(tool)
    if own is not None:
        entries.append((tool, own))
    wildcard = policy.wildcard
    if wildcard is not None and tool != WILDCARD:
        entries.append((WILDCARD, wildcard))
    return entries


# -- listings: the same rules, read for tools/list ---------------------------------------


def never_callable(policy: Policy, tool: str) -> bool:
    """Whether `decide` denies every `tools/call` of `tool`, whatever its arguments.

    True for a tool that is not listed under `default: deny`, or whose own entry or the
    `"*"` entry has a rule that always denies (`_always_denies`).
    """
    if _unlisted_denied(policy, tool):
        return True
    return any(_always_denies(entry) for _, entry in _entries(policy, tool))


def hides_tools(policy: Policy | None) -> bool:
    """Whether a grant with `policy` must not see some tools (its answers are all filtered)."""
    if policy is None:
        return False
    return policy.hides_all or bool(policy.document.hide) or policy.document.hide_denied


def listing_filter(policy: Policy) -> Hides | None:
    """What a grant with `policy` must not see in `tools/list`: the hidden tools and, with
    `hide_denied`, the tools it can never call; None when that is nothing."""
    if policy.hides_all:
        return lambda _name: True
    if not hides_tools(policy):
        return None
    hidden = frozenset(policy.document.hide)
    hide_denied = policy.document.hide_denied

    def hides(name: str | None) -> bool:
        if name is None:
            return False
        return name in hidden or (hide_denied and never_callable(policy, name))

    return hides


# -- approvals -------------------------------------------------------------------------


def _approval_requirement(
    entries: list[tuple[str, ToolPolicy]], args: Mapping[str, Any], strict: bool
) -> ApprovalRequirement | None:
    """The first approval rule that holds, true or unknown (own entry, then "*"), or None."""
    for key, entry in entries:
        for where, rule in entry.approval_rules:
            found = conditions.check_all(rule.conditions, args, strict=strict)
            if found.truth is not Truth.FALSE:
                return ApprovalRequirement(
                    rule=pointer("tools", key, *where),
                    ttl_seconds=rule.ttl_seconds,
                    on_deny=rule.on_deny,
                    name=rule.name,
                )
    return None


def judge_approval(decision: Decision, tool: str, approval: Approval) -> Decision:
    """The decision for a call that needs approval, given the live approval bound to it.

    Pending: the call is held (APPROVAL_REQUIRED, with the approval's id and expiry).
    Denied: the call is denied (POLICY) with the rule's `on_deny` and the approver's reason.
    Approved: the call stays allowed (with its claims); the caller reserves quota, then
    consumes the approval. A decision that is not an allow needing approval is returned
    unchanged.
    """
    requirement = decision.approval
    if not decision.allowed or requirement is None:
        return decision
    ticket = ApprovalTicket(approval.id, approval.status.value, approval.expires_at)
    if approval.status is ApprovalStatus.APPROVED:
        return dataclasses.replace(decision, ticket=ticket)
    if approval.status is ApprovalStatus.DENIED:
        reason = approval.reason or "no reason given"
        lead = requirement.on_deny or f"a person denied this call of {tool!r}"
        return dataclasses.replace(
            Decision.deny(
                DenyKind.POLICY,
                f"{lead} (approval {approval.id}); reason: {reason}",
                rule=requirement.rule,
            ),
            ticket=ticket,
        )
    named = f" ({requirement.name})" if requirement.name else ""
    return dataclasses.replace(
        Decision.deny(
            DenyKind.APPROVAL_REQUIRED,
            f"calling {tool!r} needs a person's approval{named}; the call was not run. "
            f"Approval id: {approval.id} (expires {_utc(approval.expires_at)}). Once a "
            "person approves it, retry the identical call (same tool, same arguments) "
            "before it expires; it runs once. A changed call needs a new approval",
            rule=requirement.rule,
        ),
        ticket=ticket,
    )


def settle(decision: Decision, result: Reservation | Exhausted) -> Decision:
    """The final decision once the counter store has answered for `decision.claims`.

    A `Reservation` keeps the call allowed and records what was taken (to release on
    upstream failure); `Exhausted` denies it as RATE_LIMITED with the claim's rule, its
    `on_deny` (or a message naming the limit) and the seconds until the window ends.
    A decision that is already a deny is returned unchanged.
    """
    if not decision.allowed:
        return decision
    if isinstance(result, Reservation):
        return dataclasses.replace(decision, reservation=result)
    claim = result.claim
    message = claim.on_deny or (
        f"rate limit {claim.counter!r} exceeded: {claim.max} per "
        f"{_window_name(claim.window_seconds)} {_scope_phrase(claim.scope)}; "
        f"retry after {result.retry_after}s"
    )
    return Decision.deny(
        DenyKind.RATE_LIMITED, message, rule=claim.rule, retry_after=result.retry_after
    )


# -- rules -----------------------------------------------------------------------------


def _check_entry(
    tool: str, key: str, entry: ToolPolicy, args: Mapping[str, Any], strict: bool
) -> Decision | None:
    """The first denial of the entry's rules, or None.

    `require` and `evaluate` rules pass only when true; `deny_if` denies when true or
    unknown. A denial for an unknown condition says which argument has which wrong type.
    """
    for i, rule in enumerate(entry.require):
        found = conditions.check_all(rule.conditions, args, strict=strict)
        if found.truth is not Truth.TRUE:
            default = f"tool {tool!r} requires {_describe(rule)}"
            message = _noted(rule.on_deny or default, found)
            return _policy_deny(message, pointer("tools", key, "require", i))
    for i, rule in enumerate(entry.deny_if):
        found = conditions.check_all(rule.conditions, args, strict=strict)
        if found.truth is not Truth.FALSE:
            if rule.conditions:
                default = f"tool {tool!r} is denied when {_describe(rule)}"
            else:
                default = f"tool {tool!r} is denied by policy"
            message = _noted(rule.on_deny or default, found)
            return _policy_deny(message, pointer("tools", key, "deny_if", i))
    for i, action_rule in enumerate(entry.rules):
        found = (
            conditions.FALSE
            if action_rule.action == "deny"
            else conditions.check_all(action_rule.arg_conditions, args, strict=strict)
        )
        if found.truth is not Truth.TRUE:
            default = f"tool {tool!r} denied by rule {action_rule.label!r}"
            message = _noted(action_rule.on_deny or default, found)
            return _policy_deny(message, pointer("tools", key, "rules", i))
    return None


def _always_denies(entry: ToolPolicy) -> bool:
    """Whether `_check_entry` denies every call for this entry: it has a `deny_if` rule
    without conditions (always true) or an Intercept `action: deny` rule."""
    if any(not rule.conditions for rule in entry.deny_if):
        return True
    return any(rule.action == "deny" for rule in entry.rules)


def _noted(message: str, found: conditions.Evaluation) -> str:
    """The deny message, plus which argument has a type the rule cannot compare."""
    if found.mismatch is None:
        return message
    return f"{message} ({found.mismatch.describe()})"


def _describe(rule: Rule) -> str:
    text = " and ".join(c.describe() for c in rule.conditions)
    return f"{text} (rule {rule.name!r})" if rule.name else text


def _policy_deny(message: str, rule: str) -> Decision:
    return Decision.deny(DenyKind.POLICY, message, rule=rule)


# -- limits → claims -------------------------------------------------------------------


def _scope_key(scope: str, grant: Grant, request: McpRequest) -> tuple[str, ...]:
    """Who shares a bucket of `scope`, as separate parts (`Claim.bucket` encodes them
    so that no grant id or session id can pass for another pair)."""
    if scope == "grant":
        return (grant.id,)
    if scope == "session":
        # under the grant: a caller cannot spend another grant's session bucket
        return (grant.id, request.session_id) if request.session_id else (grant.id,)
    return ()


def _limit_claim(
    tool: str, limit: Limit, where: tuple[str, ...], grant: Grant, request: McpRequest
) -> Claim | Decision:
    """The claim of a limit at `where + (counter,)`, or a denial for an unusable cost.

    A cost above `max` is not checked here: it can never fit, so the store reports the
    limit as exhausted.
    """
    cost = _limit_cost(limit.cost, request.arguments)
    if cost is None:
        assert isinstance(limit.cost, LimitCost)
        return _policy_deny(
            f"tool {tool!r}: limit {limit.counter!r} counts {limit.cost.from_}, which must "
            "be a non-negative integer",
            pointer(*where, limit.counter, "cost"),
        )
    return Claim(
        counter=limit.counter,
        scope=limit.scope,
        scope_key=_scope_key(limit.scope, grant, request),
        window_seconds=WINDOW_SECONDS[limit.window],
        max=limit.max,
        cost=cost,
        rule=pointer(*where, limit.counter),
        on_deny=limit.on_deny,
        policy=grant.policy,
    )


def _limit_cost(cost: int | LimitCost, args: Mapping[str, Any]) -> int | None:
    """The units one call takes; None when the cost argument is present but unusable.

    A missing argument costs `default`; a present one must be a non-negative integer (an
    integral float such as 3.0 counts as 3; null, strings, booleans, fractions and negative
    numbers do not). A path through a non-object (`args.opts.n` with `opts` sent as a
    string, which a coercing server may decode into an object) is unusable, not missing.
    """
    if isinstance(cost, int):
        return cost
    value = conditions.locate(args, cost.from_)
    if isinstance(value, conditions.Blocked):
        return None
    if value is conditions.MISSING:
        return cost.default
    return non_negative_int(value)


def _rule_claim(
    tool: str, key: str, index: int, rule: ActionRule, args: Mapping[str, Any], policy: str
) -> Claim | Decision | None:
    """The claim of an Intercept `state`/`rate_limit` rule of `policy`: a global counter
    per tool key."""
    limit = rule.counter_limit()
    if limit is None:
        return None
    where = pointer("tools", key, "rules", index)
    cost = limit.increment
    if limit.increment_from is not None:
        amount = conditions.resolve(args, limit.increment_from)
        if not conditions.is_number(amount) or amount < 0:
            return _policy_deny(
                f"tool {tool!r}: rule {rule.label!r} counts {limit.increment_from}, which "
                "must be a non-negative number",
                where,
            )
        cost = int(amount)
    scope = GLOBAL_STATE_SCOPE if key == WILDCARD else key
    return Claim(
        counter=f"{STATE_PREFIX}{scope}.{limit.counter}",
        scope="global",
        scope_key=(),
        window_seconds=WINDOW_SECONDS[limit.window],
        max=limit.max,
        cost=cost,
        rule=where,
        on_deny=rule.on_deny,
        policy=policy,
        state=(scope, limit.counter),
    )


def _utc(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window_name(seconds: int) -> str:
    for name, length in WINDOW_SECONDS.items():
        if length == seconds:
            return name
    return f"{seconds}s"


def _scope_phrase(scope: str) -> str:
    return {"grant": "per grant", "session": "per session"}.get(scope, "across all callers")
