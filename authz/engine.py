"""The decision: one MCP request, one grant, one policy → `Decision` (pure, sync, no I/O).

`decide` never touches counters: an allowed request carries `claims`, which the caller
reserves in a `CounterStore` and passes to `settle` for the final decision.

Order for `tools/call` (as in Intercept): hide → default → for the tool's own entry, then
the "*" entry: require → deny_if → rules → then limits (own, "*", all_tools), all at once.
An allowed call that matches an `approve_if` rule (own entry first, then "*"; the first
that holds) carries an `ApprovalRequirement`: the caller looks up the approval bound to the
exact call and passes it to `judge_approval`.

Content requests (`CONTENT_METHODS`: `resources/read`, `resources/subscribe`,
`prompts/get`, `completion/complete`) go the same way through the `resources` or `prompts`
section: hide → the `methods` section when the document has one, else `default` → the
entries that apply (a prompt's own entry, then "*"; every `resources` pattern that matches
the URI, in the document's order, then "*"), each with its own condition values (`args.uri`
and the template's variables; a prompt's arguments) → require → deny_if → limits (no
`all_tools` limits) → approve_if. Under `default: deny` without a `methods` section a
request no entry matches is denied `(default deny)`; a URI the server could read otherwise
than a pattern does (`authz.policy.uris`) is denied with the pattern's pointer. A
`completion/complete` is admitted when a request for its reference would not be denied by
hide, default or an entry that always denies; it takes no quota and is never held. Every
other method follows the `methods` section (all allowed when it is absent).

Rule pointers (RFC 6901, `~` → `~0`, `/` → `~1` in tool and counter names and patterns):
`/tools/<tool>/require/<i>`, `/tools/<tool>/deny_if/<i>`, `/tools/<tool>/rules/<i>`,
`/tools/<tool>/limits/<counter>`, `/tools/<tool>/approve_if/<i>`,
`/tools/<tool>/require_approval`, `/all_tools/limits/<counter>` (and `.../cost` when a
limit's cost argument is unusable), the same under `/resources/<pattern>/...` and
`/prompts/<name>/...` (and `/resources/<pattern>` for a URI read two ways), and the fixed
`(no policy)`, `(hidden)`, `(default deny)` (`FixedRule`). Messages carry no argument
values from the request (policy values are fine), name a URI or a prompt only quoted and
cut to 200 characters (`shown`), and have no "[POLICY DENIED]" prefix: the edge adds it.

The listing rules are the same rules read the other way round (`listing_filter`): which
tools a grant's `tools/list` loses, because the policy hides them or, with `hide_denied`,
because `decide` denies every call of them whatever the arguments (`never_callable`); and
which resources, templates and prompts its listings lose: the hidden ones and those it can
never read or get (`never_allowed`). The response phase only applies them to the server's
answers.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from authz.catalog.classes import CLASS_ORDER, Classification, most_restrictive
from authz.model import (
    Approval,
    ApprovalRequirement,
    ApprovalStatus,
    ApprovalTicket,
    Claim,
    Decision,
    Definitions,
    DenyKind,
    Exhausted,
    FixedRule,
    Grant,
    Hides,
    ListingFilter,
    McpRequest,
    Outcome,
    Reservation,
)
from authz.pinning.drift import PinView
from authz.policy import Policy, conditions
from authz.policy.conditions import Truth, non_negative_int
from authz.policy.document import WILDCARD, EntryPolicy, ToolPolicy
from authz.policy.limits import WINDOW_SECONDS, Limit, LimitCost
from authz.policy.rules import GLOBAL_STATE_SCOPE, STATE_PREFIX, ActionRule, Rule
from authz.policy.uris import is_template

__all__ = [
    "SHOWN_MAX",
    "Standing",
    "decide",
    "decide_stream",
    "filters_listings",
    "judge_approval",
    "listing_filter",
    "never_allowed",
    "never_callable",
    "pointer",
    "settle",
    "shown",
    "standing",
]

SHOWN_MAX: Final = 200
"""Characters of a URI or prompt name a message shows at most (`shown`)."""

_COMPLETE: Final = "completion/complete"
_READ: Final = {"resources": "resources/read", "prompts": "prompts/get"}
"""The method whose admission a section's listings follow."""

_Entry = tuple[str, EntryPolicy, Mapping[str, Any]]
"""(key, entry, the values its conditions read) of an entry that applies to a request."""
_Placed = tuple[tuple[str, str], EntryPolicy, Mapping[str, Any]]
"""(pointer prefix, entry, the values its conditions read): `("tools", key)`,
`("classes", class)`, `("resources", pattern)`, `("prompts", name)`."""
ToolClasses = Mapping[str, Classification]
"""The class of each known tool (`authz.config.source.ConfigSet.classes`)."""


@functools.lru_cache(maxsize=4096, typed=True)
def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) to a policy element: `pointer('tools', 'a/b')` → `/tools/a~1b`.

    Remembered: every allowed call names the same few rules (its limits), and escaping each
    part costs more than the lookup."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _without_query(text: str) -> str:
    """`text` up to its first `?` or `#`: a URI's query or fragment may carry a credential,
    so it is never shown or logged (as `path` in the audit event)."""
    cut = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut] + text[cut] + "…"


def shown(text: str) -> str:
    """A URI or a prompt name for a message: without a query or fragment, quoted as Python
    does (control and other unprintable characters escaped), at most `SHOWN_MAX` characters
    of it."""
    text = _without_query(text)
    if len(text) <= SHOWN_MAX:
        return repr(text)
    return f"{text[:SHOWN_MAX]!r}… ({len(text)} characters)"


def _plain(text: str) -> bool:
    """Whether `text` can be shown as it is: short, every character printable, and no
    query or fragment."""
    return len(text) <= SHOWN_MAX and text.isprintable() and _without_query(text) == text


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


def decide(
    policy: Policy | None,
    grant: Grant,
    request: McpRequest,
    pins: PinView | None = None,
    classes: ToolClasses | None = None,
) -> Decision:
    """Evaluate one request against the grant's policy (None: the policy is not loaded).

    `pins` is the tool lock and the drift seen so far (None: no lock): see `_pin_denial`.
    `classes` is the class of each known tool (`ConfigSet.classes`): a tool without an
    entry of its own is judged by its class's entry (`_tool_entries`).

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
    if request.is_content:
        return _decide_content(policy, grant, request)
    if not request.is_tool_call:
        return _method_decision(policy, request.method)
    tool = request.tool
    if not tool:
        return Decision.deny(DenyKind.BAD_REQUEST, "tools/call without a tool name")
    if policy.is_hidden(tool):
        return Decision.deny(
            DenyKind.POLICY, f"tool {tool!r} is hidden by policy", rule=FixedRule.HIDDEN
        )
    judged = _tool_entries(policy, tool, classes)
    if not judged.admitted:
        return Decision.deny(
            DenyKind.POLICY,
            f"{judged.subject} is not permitted by policy",
            rule=FixedRule.DEFAULT_DENY,
        )
    scoped = _scope_denial(policy, tool, grant)
    if scoped is not None:
        return scoped
    pinned = _pin_denial(policy, tool, request.arguments, pins)
    if pinned is not None:
        return pinned

    args = request.arguments
    entries: list[_Placed] = [(where, entry, args) for where, entry in judged.entries]
    strict = policy.strict_types
    subject = judged.subject
    for where, entry, _ in entries:
        denial = _check_entry(subject, where, entry, args, strict, grant.token)
        if denial is not None:
            return denial

    claims: list[Claim] = []
    for where, entry, _ in entries:
        for limit in entry.limits:
            claim = _limit_claim(subject, limit, (*where, "limits"), grant, request, args)
            if isinstance(claim, Decision):
                return claim
            claims.append(claim)
        if not isinstance(entry, ToolPolicy):
            continue  # a class entry: no Intercept rules
        for i, rule in enumerate(entry.rules):
            claim_or_denial = _rule_claim(tool, where[1], i, rule, args, grant.policy)
            if isinstance(claim_or_denial, Decision):
                return claim_or_denial
            if claim_or_denial is not None:
                claims.append(claim_or_denial)
    for limit in policy.all_tools_limits:
        claim = _limit_claim(subject, limit, ("all_tools", "limits"), grant, request, args)
        if isinstance(claim, Decision):
            return claim
        claims.append(claim)
    return Decision(
        Outcome.ALLOW,
        claims=tuple(claims),
        approval=_approval_requirement(entries, strict, grant.token),
    )


def _scope_denial(policy: Policy, tool: str, grant: Grant) -> Decision | None:
    """The `scopes` of the tool's own entry and of the "*" entry: the caller's token must
    carry every one (a caller without token claims carries none), else INSUFFICIENT_SCOPE
    (answered 403 with a challenge naming every scope the call needs), at the pointer of
    the first entry whose scopes are missing."""
    carried = grant.token.get("scope", ()) if grant.token is not None else ()
    needed: list[str] = []
    where: str | None = None
    for key in (tool, WILDCARD) if tool != WILDCARD else (tool,):
        entry = policy.document.tools.get(key)
        if entry is None or not entry.scopes:
            continue
        needed += [scope for scope in entry.scopes if scope not in needed]
        if where is None and any(scope not in carried for scope in entry.scopes):
            where = pointer("tools", key, "scopes")
    if where is None:
        return None
    missing = " ".join(scope for scope in needed if scope not in carried)
    return dataclasses.replace(
        Decision.deny(
            DenyKind.INSUFFICIENT_SCOPE,
            f"tool {tool!r} needs the OAuth scope {' '.join(needed)!r}; the caller's token "
            f"lacks {missing!r}: obtain a token with these scopes and retry",
            rule=where,
        ),
        scopes=tuple(needed),
    )


def _pin_denial(
    policy: Policy, tool: str, arguments: Mapping[str, Any], pins: PinView | None
) -> Decision | None:
    """The tool lock's say on a call, after hide and default (None: it does not deny).

    `pinning: enforce` with a lock: a tool the lock lacks, or whose listed definition was
    seen to differ from the lock, is denied `(pin)`. Strict arguments (`arguments:
    strict`, the tool's entry, "*" or the policy): arguments that do not validate against
    the pinned `inputSchema` are denied at the setting's pointer, naming the first
    violation's pointer and keyword (no value); without a lock, or a pinned schema, every
    call is (fail closed)."""
    lock = pins.lock if pins is not None else None
    if lock is not None and pins is not None and policy.pinning == "enforce":
        pinned = lock.get(tool)
        if pinned is None:
            return Decision.deny(
                DenyKind.POLICY,
                f"tool {tool!r} is not in the tool lock; an operator must review it and pin "
                "it (mcp-authz pin) before it can be called",
                rule=FixedRule.PIN,
            )
        listed = pins.drifted.get(tool)
        if listed is not None:
            return Decision.deny(
                DenyKind.POLICY,
                f"tool {tool!r} changed its definition since it was pinned (sha256 "
                f"{pinned.short} pinned, {listed[:12]} listed); an operator must review the "
                "change and pin it again (mcp-authz pin)",
                rule=FixedRule.PIN,
            )
    mode, setting = policy.arguments(tool)
    if mode != "strict":
        return None
    pinned = lock.get(tool) if lock is not None else None
    if pinned is None or pinned.arguments is None:
        return Decision.deny(
            DenyKind.POLICY,
            f"tool {tool!r} has no pinned inputSchema, and strict arguments deny a call "
            "they cannot check; pin the tool (mcp-authz pin)",
            rule=setting,
        )
    violation = pinned.arguments.violation(arguments)
    if violation is None:
        return None
    return Decision.deny(
        DenyKind.POLICY,
        f"arguments of tool {tool!r} do not match its pinned inputSchema at {violation.describe()}",
        rule=setting,
    )


def _method_decision(policy: Policy, method: str) -> Decision:
    """A method the `methods` section decides (all allowed when the policy has none)."""
    allowed, method_rule = policy.document.methods.permits(method)
    if allowed:
        return Decision.allow()
    return Decision.deny(
        DenyKind.POLICY,
        f"method {method!r} is not permitted by policy",
        rule=method_rule,
    )


# -- resources and prompts -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Content:
    """What a content request reads or runs: a resource (by URI) or a prompt (by name)."""

    section: str
    """`resources` or `prompts`: the section of the policy that judges it."""
    name: str
    """The URI (or, for a completion, the URI template) or the prompt's name."""
    template: bool = False
    """A completion's URI template: matched as text (`_template_entries`)."""

    @property
    def label(self) -> str:
        """How messages name it: `resource 'file:///a'`, `prompt 'draft'`."""
        noun = "resource" if self.section == "resources" else "prompt"
        return f"{noun} {shown(self.name)}"


def _content(request: McpRequest) -> _Content | None:
    if request.resource is not None:
        template = request.method == _COMPLETE and is_template(request.resource)
        return _Content("resources", request.resource, template)
    if request.prompt is not None:
        return _Content("prompts", request.prompt)
    return None


def _decide_content(policy: Policy, grant: Grant, request: McpRequest) -> Decision:
    """A request that reads or runs server content (see the module docstring)."""
    content = _content(request)
    if content is None:
        return Decision.deny(
            DenyKind.BAD_REQUEST, f"{request.method} without a resource or a prompt"
        )
    if _content_hidden(policy, content):
        return Decision.deny(
            DenyKind.POLICY, f"{content.label} is hidden by policy", rule=FixedRule.HIDDEN
        )
    if policy.has_methods:
        admitted = _method_decision(policy, request.method)
        if not admitted.allowed:
            return admitted
    found = _content_entries(policy, content, request.arguments)
    if isinstance(found, Decision):
        return found
    if not found and _content_default_denies(policy):
        return Decision.deny(
            DenyKind.POLICY,
            f"{content.label} is not permitted by policy",
            rule=FixedRule.DEFAULT_DENY,
        )
    if request.method == _COMPLETE:
        return _always_denial(content, found) or Decision.allow()

    strict = policy.strict_types
    for key, entry, args in found:
        denial = _check_entry(
            content.label, (content.section, key), entry, args, strict, grant.token
        )
        if denial is not None:
            return denial
    claims: list[Claim] = []
    for key, entry, args in found:
        for limit in entry.limits:
            where = (content.section, key, "limits")
            claim = _limit_claim(content.label, limit, where, grant, request, args)
            if isinstance(claim, Decision):
                return claim
            claims.append(claim)
    placed: list[_Placed] = [((content.section, key), entry, args) for key, entry, args in found]
    approval = _approval_requirement(placed, strict, grant.token)
    if approval is not None:
        name = content.name if _plain(content.name) else shown(content.name)
        approval = dataclasses.replace(
            approval, target=f"{request.method} {name}", subject=content.label
        )
    return Decision(Outcome.ALLOW, claims=tuple(claims), approval=approval)


def _content_default_denies(policy: Policy) -> bool:
    """Whether content no entry matches is denied: `default: deny` without a `methods`
    section (with one, the `methods` section admits the method, as before)."""
    return policy.default == "deny" and not policy.has_methods


def _content_hidden(policy: Policy, content: _Content) -> bool:
    if content.section == "prompts":
        return policy.prompt_hidden(content.name)
    return policy.resource_hidden(content.name)


def _content_entries(
    policy: Policy, content: _Content, arguments: Mapping[str, Any]
) -> list[_Entry] | Decision:
    """The entries that judge `content`, in order, each with the values its conditions
    read (a prompt's `arguments`); or the denial of a URI the server could read otherwise
    than a pattern does."""
    if content.section == "prompts":
        return _prompt_entries(policy, content.name, arguments)
    if content.template:
        named = _template_entries(policy, content.name, exact=True)
        assert named is not None  # only a pattern's match can be ambiguous
        return named
    entries: list[_Entry] = []
    uri = content.name
    for key, pattern in policy.resource_patterns:
        found = pattern.match(uri)
        if found.ambiguous:
            return Decision.deny(
                DenyKind.POLICY,
                f"{content.label} is denied: the MCP server could read it otherwise than "
                f"the pattern {key!r} does (an empty value, or a character the server ends "
                "a value at); ask for the URI the server lists",
                rule=pointer("resources", key),
            )
        if found.variables is not None:
            entries.append((key, policy.resource(key), {"uri": uri, **found.variables}))
    wildcard = policy.resource_wildcard
    if wildcard is not None:
        entries.append((WILDCARD, wildcard, {"uri": uri}))
    return entries


def _prompt_entries(policy: Policy, name: str, arguments: Mapping[str, Any]) -> list[_Entry]:
    """The prompt's own entry, then "*" (which judges every prompt but one named "*")."""
    entries: list[_Entry] = []
    own = policy.prompt(name)
    if own is not None:
        entries.append((name, own, arguments))
    wildcard = policy.prompt_wildcard
    if wildcard is not None and name != WILDCARD:
        entries.append((WILDCARD, wildcard, arguments))
    return entries


def _template_entries(policy: Policy, text: str, *, exact: bool) -> list[_Entry] | None:
    """The entries that apply to a URI template, read as text: the keys equal to it (and,
    unless `exact`, the patterns that match it), then "*"; None when a pattern could read
    it two ways (never listed)."""
    entries: list[_Entry] = []
    for key, pattern in policy.resource_patterns:
        if key == text:
            entries.append((key, policy.resource(key), {"uri": text}))
        elif not exact:
            found = pattern.match(text)
            if found.ambiguous:
                return None
            if found.matched:
                entries.append((key, policy.resource(key), {"uri": text}))
    wildcard = policy.resource_wildcard
    if wildcard is not None:
        entries.append((WILDCARD, wildcard, {"uri": text}))
    return entries


def _always_denial(content: _Content, entries: list[_Entry]) -> Decision | None:
    """The denial of the first entry that denies every request (a `deny_if` rule without
    conditions), or None."""
    for key, entry, _ in entries:
        for i, rule in enumerate(entry.deny_if):
            if not rule.conditions:
                message = rule.on_deny or f"{content.label} is denied by policy"
                return _policy_deny(message, pointer(content.section, key, "deny_if", i))
    return None


@dataclass(frozen=True, slots=True)
class _Judged:
    """The entries that judge a call of a tool, each with the pointer prefix of where it
    sits; whether the policy admits the tool at all (`default: deny` admits a tool with an
    entry of its own or of its class); and how messages name the tool."""

    entries: tuple[tuple[tuple[str, str], EntryPolicy], ...]
    admitted: bool
    subject: str


def _tool_entries(policy: Policy, tool: str, classes: ToolClasses | None) -> _Judged:
    """The tool's own entry; then "*" (which judges every tool but a tool named "*");
    then, for a tool without an entry of its own, its class's entry (`classes`), or for a
    tool of unknown class the entry of the most restrictive class the policy names. Under
    `default: deny` a class the policy does not name is denied, so a tool of unknown class
    is judged as the most restrictive class of all (financial): it is admitted only when
    the policy names that class (fail closed)."""
    entries: list[tuple[tuple[str, str], EntryPolicy]] = []
    subject = f"tool {tool!r}"
    own = policy.tool(tool)
    if own is not None:
        entries.append((("tools", tool), own))
    wildcard = policy.wildcard
    if wildcard is not None and tool != WILDCARD:
        entries.append((("tools", WILDCARD), wildcard))
    by_class = False
    if own is None and policy.document.classes:
        known = classes.get(tool) if classes is not None else None
        tool_class = known.tool_class if known is not None else None
        if tool_class is None:
            named = policy.class_names
            tool_class = CLASS_ORDER[-1] if policy.default == "deny" else most_restrictive(named)
            subject = f"tool {tool!r} (class unknown, judged as {tool_class})"
        entry = policy.class_entry(tool_class)
        if entry is not None and tool_class is not None:
            entries.append((("classes", tool_class.value), entry))
            by_class = True
    admitted = policy.default != "deny" or own is not None or by_class
    return _Judged(tuple(entries), admitted, subject)


# -- standing: the same rules, read for the catalog --------------------------------------


@dataclass(frozen=True, slots=True)
class Standing:
    """What a policy says about calling a tool, whatever the arguments (`standing`).

    `callable`: some call of it can be allowed. `rule`: what decides that: `(hidden)`,
    `(default deny)`, the pointer of a rule that always denies, or the entry that admits
    it (`/tools/<tool>`, `/classes/<class>`), else `(default allow)`. `entries`: the
    pointers of every entry that judges its calls, in order. `judged_as`: the class whose
    entry judges it (None: no class entry does). `default_only`: no entry of its own and
    no class entry: only `default` (and the "*" entry every tool gets) decides; a blind
    spot.
    """

    callable: bool
    rule: str
    entries: tuple[str, ...] = ()
    judged_as: str | None = None
    default_only: bool = False


def standing(policy: Policy, tool: str, classes: ToolClasses | None = None) -> Standing:
    """How `policy` treats calls of `tool` (see `Standing`); `decide` agrees: a tool that
    is not `callable` is denied on every call, with `rule`."""
    judged = _tool_entries(policy, tool, classes)
    pointers = tuple(pointer(*where) for where, _ in judged.entries)
    by_class = next((where[1] for where, _ in judged.entries if where[0] == "classes"), None)
    blind = all(where == ("tools", WILDCARD) for where, _ in judged.entries)
    if policy.is_hidden(tool):
        return Standing(False, FixedRule.HIDDEN, pointers, by_class, blind)
    if not judged.admitted:
        return Standing(False, FixedRule.DEFAULT_DENY, pointers, by_class, blind)
    for where, entry in judged.entries:
        for i, rule in enumerate(entry.deny_if):
            if not rule.conditions:
                return Standing(False, pointer(*where, "deny_if", i), pointers, by_class, blind)
        if isinstance(entry, ToolPolicy):
            for i, action in enumerate(entry.rules):
                if action.action == "deny":
                    return Standing(False, pointer(*where, "rules", i), pointers, by_class, blind)
    admitting = next(
        (pointer(*where) for where, _ in judged.entries if where[1] != WILDCARD),
        pointers[0] if pointers else "(default allow)",
    )
    return Standing(True, admitting, pointers, by_class, blind)


# -- listings: the same rules, read for the listings ------------------------------------


def never_callable(policy: Policy, tool: str, classes: ToolClasses | None = None) -> bool:
    """Whether `decide` denies every `tools/call` of `tool`, whatever its arguments.

    True for a tool that is not admitted under `default: deny` (no entry of its own or of
    its class), or whose own entry, the `"*"` entry or its class's entry has a rule that
    always denies (`_always_denies`).
    """
    judged = _tool_entries(policy, tool, classes)
    if not judged.admitted:
        return True
    return any(_always_denies(entry) for _, entry in judged.entries)


def never_allowed(policy: Policy, section: str, name: str, *, template: bool = False) -> bool:
    """Whether `decide` denies every request for this resource (`section` `resources`, by
    URI; a URI template with `template`, read as text) or prompt (`prompts`, by name),
    whatever its arguments: hidden; its method (`resources/read`, `prompts/get`) denied by
    the `methods` section; a URI the server could read otherwise than a pattern does; under
    `default: deny` without a `methods` section, no entry applies (a template: no key equal
    to it or matching it as text, and no "*"); or an entry that applies always denies."""
    content = _Content(section, name, template)
    if _content_hidden(policy, content):
        return True
    if policy.has_methods and not policy.document.methods.permits(_READ[section])[0]:
        return True
    found: list[_Entry] | Decision | None
    if template:
        found = _template_entries(policy, name, exact=False)
    else:
        found = _content_entries(policy, content, {})
    if found is None or isinstance(found, Decision):
        return True
    if not found and _content_default_denies(policy):
        return True
    return any(_always_denies(entry) for _, entry, _ in found)


def _tools_hidden(policy: Policy) -> bool:
    """Whether a grant's `tools/list` loses tools: `hide` names some, or `hide_denied`."""
    return policy.hides_all or bool(policy.document.hide.tools) or policy.document.hide_denied


def _restricts(policy: Policy, section: str) -> bool:
    """Whether the listings of `section` (`resources`, `prompts`) may lose elements: the
    policy hides some, denies content by default or in its `methods` section, or has an
    entry that always denies."""
    document = policy.document
    hidden = document.hide.resources if section == "resources" else document.hide.prompts
    if hidden or _content_default_denies(policy):
        return True
    if policy.has_methods and not document.methods.permits(_READ[section])[0]:
        return True
    entries = document.resources if section == "resources" else document.prompts
    return any(_always_denies(entry) for entry in entries.values())


def filters_listings(policy: Policy | None, *, pinned: bool = False) -> bool:
    """Whether a grant with `policy` must not see some of a listing: then every answer it
    gets is filtered (`listing_filter`), and its response phase fails closed. With a tool
    lock (`pinned`) that is every grant whose policy does not turn `pinning` off: its
    `tools/list` answers are compared with the lock."""
    if policy is None:
        return False
    if pinned and policy.pinning != "off":
        return True
    return _tools_hidden(policy) or _restricts(policy, "resources") or _restricts(policy, "prompts")


def listing_filter(
    policy: Policy, definitions: Definitions | None = None, classes: ToolClasses | None = None
) -> ListingFilter | None:
    """What a grant with `policy` must not see in its listings; None when that is nothing.

    `tools`: the hidden tools and, with `hide_denied`, the tools it can never call.
    `resources` (by `uri`), `resourceTemplates` (by `uriTemplate`) and `prompts` (by
    `name`): the hidden ones and those it can never read or get (`never_allowed`; no flag
    needed), when the policy restricts that section at all; an element without a string
    key goes too. `definitions` (the tool lock's check, made by the caller when the
    policy's `pinning` is not off) sees every `tools` element as well.
    """
    arrays: dict[str, Hides] = {}
    tools = _tool_hides(policy, classes)
    if tools is not None:
        arrays["tools"] = tools
    elif definitions is not None:
        arrays["tools"] = _hide_none
    if _restricts(policy, "resources"):

        def resource(uri: str | None) -> bool:
            return uri is None or never_allowed(policy, "resources", uri)

        def template(text: str | None) -> bool:
            return text is None or never_allowed(policy, "resources", text, template=True)

        arrays["resources"] = resource
        arrays["resourceTemplates"] = template
    if _restricts(policy, "prompts"):

        def prompt(name: str | None) -> bool:
            return name is None or never_allowed(policy, "prompts", name)

        arrays["prompts"] = prompt
    return ListingFilter(arrays, definitions) if arrays else None


def _hide_none(_name: str | None) -> bool:
    return False


def _tool_hides(policy: Policy, classes: ToolClasses | None = None) -> Hides | None:
    """What `tools/list` loses: the hidden tools and, with `hide_denied`, the tools the
    grant can never call; None when that is nothing."""
    if policy.hides_all:
        return lambda _name: True
    if not _tools_hidden(policy):
        return None
    hidden = frozenset(policy.document.hide.tools)
    hide_denied = policy.document.hide_denied

    def hides(name: str | None) -> bool:
        if name is None:
            return False
        return name in hidden or (hide_denied and never_callable(policy, name, classes))

    return hides


# -- approvals -------------------------------------------------------------------------


def _approval_requirement(
    entries: list[_Placed], strict: bool, token: Mapping[str, Any] | None = None
) -> ApprovalRequirement | None:
    """The first approval rule that holds, true or unknown (in the entries' order: own
    entry, then "*", then the class's), or None."""
    for placed, entry, args in entries:
        for where, rule in entry.approval_rules:
            found = conditions.check_all(rule.conditions, args, strict=strict, token=token)
            if found.truth is not Truth.FALSE:
                return ApprovalRequirement(
                    rule=pointer(*placed, *where),
                    ttl_seconds=rule.ttl_seconds,
                    on_deny=rule.on_deny,
                    name=rule.name,
                )
    return None


def judge_approval(decision: Decision, tool: str, approval: Approval) -> Decision:
    """The decision for a request that needs approval, given the live approval bound to it.

    Pending: the request is held (APPROVAL_REQUIRED, with the approval's id and expiry).
    Denied: it is denied (POLICY) with the rule's `on_deny` and the approver's reason.
    Approved: it stays allowed (with its claims); the caller reserves quota, then consumes
    the approval. A decision that is not an allow needing approval is returned unchanged.
    `tool` names the tool of a `tools/call`; a resource or prompt request is named by its
    requirement's `subject`.
    """
    requirement = decision.approval
    if not decision.allowed or requirement is None:
        return decision
    ticket = ApprovalTicket(approval.id, approval.status.value, approval.expires_at)
    if approval.status is ApprovalStatus.APPROVED:
        return dataclasses.replace(decision, ticket=ticket)
    subject = requirement.subject
    if approval.status is ApprovalStatus.DENIED:
        reason = approval.reason or "no reason given"
        if subject is None:
            lead = requirement.on_deny or f"a person denied this call of {tool!r}"
        else:
            lead = requirement.on_deny or f"a person denied this request for {subject}"
        return dataclasses.replace(
            Decision.deny(
                DenyKind.POLICY,
                f"{lead} (approval {approval.id}); reason: {reason}",
                rule=requirement.rule,
            ),
            ticket=ticket,
        )
    named = f" ({requirement.name})" if requirement.name else ""
    expiry = f"Approval id: {approval.id} (expires {_utc(approval.expires_at)})."
    if subject is None:
        message = (
            f"calling {tool!r} needs a person's approval{named}; the call was not run. "
            f"{expiry} Once a person approves it, retry the identical call (same tool, same "
            "arguments) before it expires; it runs once. A changed call needs a new approval"
        )
    else:
        message = (
            f"{subject} needs a person's approval{named}; the request was not run. {expiry} "
            "Once a person approves it, send the identical request again (same method, "
            "same URI or prompt and arguments) before it expires; it runs once. A changed "
            "request needs a new approval"
        )
    return dataclasses.replace(
        Decision.deny(DenyKind.APPROVAL_REQUIRED, message, rule=requirement.rule),
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
    subject: str,
    where: tuple[str, str],
    entry: EntryPolicy,
    args: Mapping[str, Any],
    strict: bool,
    token: Mapping[str, Any] | None = None,
) -> Decision | None:
    """The first denial of the entry's rules, or None. `subject` names what is judged in
    messages (`tool 'x'`, `resource '…'`); `where` is the entry's (section, key).

    `require` and `evaluate` rules pass only when true; `deny_if` denies when true or
    unknown. A denial for an unknown condition says which argument has which wrong type.
    """
    for i, rule in enumerate(entry.require):
        found = conditions.check_all(rule.conditions, args, strict=strict, token=token)
        if found.truth is not Truth.TRUE:
            default = f"{subject} requires {_describe(rule)}"
            message = _noted(rule.on_deny or default, found)
            return _policy_deny(message, pointer(*where, "require", i))
    for i, rule in enumerate(entry.deny_if):
        found = conditions.check_all(rule.conditions, args, strict=strict, token=token)
        if found.truth is not Truth.FALSE:
            if rule.conditions:
                default = f"{subject} is denied when {_describe(rule)}"
            else:
                default = f"{subject} is denied by policy"
            message = _noted(rule.on_deny or default, found)
            return _policy_deny(message, pointer(*where, "deny_if", i))
    if not isinstance(entry, ToolPolicy):
        return None
    for i, action_rule in enumerate(entry.rules):
        found = (
            conditions.FALSE
            if action_rule.action == "deny"
            else conditions.check_all(action_rule.arg_conditions, args, strict=strict, token=token)
        )
        if found.truth is not Truth.TRUE:
            default = f"{subject} denied by rule {action_rule.label!r}"
            message = _noted(action_rule.on_deny or default, found)
            return _policy_deny(message, pointer(*where, "rules", i))
    return None


def _always_denies(entry: EntryPolicy) -> bool:
    """Whether `_check_entry` denies every request for this entry: it has a `deny_if` rule
    without conditions (always true) or an Intercept `action: deny` rule."""
    if any(not rule.conditions for rule in entry.deny_if):
        return True
    return isinstance(entry, ToolPolicy) and any(rule.action == "deny" for rule in entry.rules)


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
    if scope in ("sub", "client_id"):
        # the claim under its issuer (two issuers' subjects never share a bucket); a caller
        # without the claim counts in its grant's bucket of this scope
        token = grant.token or {}
        issuer, value = token.get("iss"), token.get(scope)
        if isinstance(issuer, str) and isinstance(value, str):
            return (issuer, scope, value)
        return (grant.id,)
    return ()


def _limit_claim(
    subject: str,
    limit: Limit,
    where: tuple[str, ...],
    grant: Grant,
    request: McpRequest,
    args: Mapping[str, Any],
) -> Claim | Decision:
    """The claim of a limit at `where + (counter,)`, or a denial for an unusable cost.

    A cost above `max` is not checked here: it can never fit, so the store reports the
    limit as exhausted.
    """
    cost = _limit_cost(limit.cost, args)
    if cost is None:
        assert isinstance(limit.cost, LimitCost)
        return _policy_deny(
            f"{subject}: limit {limit.counter!r} counts {limit.cost.from_}, which must "
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
    return {
        "grant": "per grant",
        "session": "per session",
        "sub": "per token subject",
        "client_id": "per OAuth client",
    }.get(scope, "across all callers")
