"""The policy document (version "1"): schema, validation, loading and JSON Schema export.

A policy is one JSON object, validated once into frozen pydantic models. The format is
PolicyLayer Intercept's v1 document (rendered as JSON) plus mcp-authz's sections:

    {"version": "1", "description": "...", "default": "deny", "hide": ["tool", ...],
     "all_tools": {"limits": [Limit, ...]},
     "tools": {"<tool>": {"require": [Rule, ...], "deny_if": [Rule, ...],
                          "limits": [Limit, ...], "rules": [ActionRule, ...],
                          "approve_if": [ApprovalRule, ...], "require_approval": true},
               "*": {...applies to every tool...}},
     "resources": {"<uri pattern>": {...as a tool's entry, without "rules"...}, "*": {...}},
     "prompts": {"<prompt>": {...}, "*": {...}}}

- `require`, `deny_if` and `limits` are mcp-authz's shape; `rules` (with `name`, `action`,
  `rate_limit`, `conditions`, `on_deny`, `state`) is Intercept's, accepted so that an
  Intercept v1 policy pastes in unchanged. The tool key `"*"` applies to every tool
  (Intercept's wildcard); `all_tools.limits` is the same as `tools["*"].limits`.
- Defaults follow Intercept: `default` may be omitted and then is `"allow"`; `version` is
  required and must be the string `"1"`; `tools` may be omitted. A limit's `scope` may be
  omitted and then is `"global"`: Intercept's counters are shared by every caller.
- `approve_if` (and its shorthand `require_approval`) is mcp-authz's: a call that matches
  is held until a person approves it (see `authz.approvals`).
- `resources` and `prompts` are mcp-authz's: entries of the same shape as a tool's (no
  `rules`) for the requests that read or run server content (`authz.model.CONTENT_METHODS`),
  by URI pattern (`authz.policy.uris`: an exact URI or a `{name}`/`{+name}` template, each
  key parsed at load) or prompt name, each with a `"*"` entry. `hide` may be an object,
  `{"tools": [...], "resources": [...], "prompts": [...]}`; the v1 list is its `tools`.
  Under `default: deny` without a `methods` section, content no entry matches is denied
  (`authz.engine`); whether the document has a `methods` section is `has_methods`.
- Windows are fixed and aligned to the UTC epoch: second, minute, hour, day (Intercept has
  the last three).
- `strict_types` (default true) is mcp-authz's: a condition on an argument of a JSON type
  its operator does not compare is unknown and fails closed (`authz.policy.conditions`); false
  restores Intercept's "a mismatch is false". `regex` values are RE2 patterns
  (`authz.policy.patterns`), compiled at load.

Every problem found is reported at once, each naming the JSON path of the field at fault and
what would fix it (`PolicyError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictStr,
    field_validator,
    model_validator,
)

from authz.catalog.classes import CLASS_ORDER, ToolClass
from authz.policy import conditions
from authz.policy.errors import RelProblem, invalid, show_value
from authz.policy.limits import Limit, Limits, PolicyModel, duplicate_counters
from authz.policy.rules import (
    GLOBAL_STATE_SCOPE,
    STATE_PREFIX,
    ActionRule,
    ApprovalRule,
    Condition,
    RequireApproval,
    Rule,
)
from authz.policy.uris import UriPattern, UriPatternError, parse_pattern

__all__ = [
    "WILDCARD",
    "AllTools",
    "ArgumentsMode",
    "ClassPolicy",
    "ContentPolicy",
    "EntryPolicy",
    "Hide",
    "MethodsPolicy",
    "PinningMode",
    "Policy",
    "PolicyDocument",
    "PromptPolicy",
    "ResourcePolicy",
    "ToolPolicy",
]

WILDCARD: Final = "*"

_SCOPE: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")
"""An OAuth scope token (RFC 6749 §3.3), used with fullmatch."""

ArgumentsMode = Literal["strict", "lax"]
"""How a tool call's arguments are checked against the pinned inputSchema."""
PinningMode = Literal["enforce", "report", "off"]
"""What a drift from the tool lock does."""


class EntryPolicy(PolicyModel):
    """What an entry of `tools`, `resources` or `prompts` applies: rules, limits, approvals.

    Evaluated in order: require, deny_if, then limits; an allowed request that matches an
    approval rule waits for a person.
    """

    require: tuple[Rule, ...] = Field(
        default=(),
        title="Require",
        description="Every rule must hold, else the call is denied (first failing rule).",
    )
    deny_if: tuple[Rule, ...] = Field(
        default=(),
        title="Deny if",
        description="The first rule that holds denies the call; empty conditions always deny.",
    )
    limits: Limits = ()
    approve_if: tuple[ApprovalRule, ...] = Field(
        default=(),
        title="Approve if",
        description=(
            "The first rule that holds makes the call wait for a person's approval; empty "
            "conditions hold for every call. Checked after require, deny_if and rules."
        ),
    )
    require_approval: RequireApproval = None

    @field_validator("require_approval", mode="before")
    @classmethod
    def _approval_shape(cls, value: object) -> object:
        if value is True:
            return {}  # every call: an approve_if entry without conditions
        if value is None or value is False or isinstance(value, dict):
            return None if value is False else value
        raise invalid(
            ((), f"must be true, false or an approve_if entry object; got {show_value(value)}")
        )

    @property
    def approval_rules(self) -> tuple[tuple[tuple[str | int, ...], ApprovalRule], ...]:
        """(location inside this entry, rule) of every approval rule, in evaluation order."""
        found: list[tuple[tuple[str | int, ...], ApprovalRule]] = [
            (("approve_if", i), rule) for i, rule in enumerate(self.approve_if)
        ]
        if self.require_approval is not None:
            found.append((("require_approval",), self.require_approval))
        return tuple(found)

    @property
    def all_conditions(self) -> tuple[tuple[tuple[str | int, ...], Condition], ...]:
        """(location inside this entry, condition) of every condition of its rules."""
        found: list[tuple[tuple[str | int, ...], Condition]] = []
        groups: tuple[tuple[str, tuple[Rule | ApprovalRule, ...]], ...] = (
            ("require", self.require),
            ("deny_if", self.deny_if),
            ("approve_if", self.approve_if),
        )
        for name, rules in groups:
            for i, rule in enumerate(rules):
                found += [((name, i, "conditions", j), c) for j, c in enumerate(rule.conditions)]
        if self.require_approval is not None:
            found += [
                (("require_approval", "conditions", j), c)
                for j, c in enumerate(self.require_approval.conditions)
            ]
        return tuple(found)

    def counter_problems(self) -> list[RelProblem]:
        """Counters this entry names twice."""
        return duplicate_counters(self.limits)

    @model_validator(mode="after")
    def _unique_counters(self) -> EntryPolicy:
        problems = self.counter_problems()
        if problems:
            raise invalid(*problems)
        return self


class ToolPolicy(EntryPolicy):
    """What applies to one tool (or, under the key "*", to every tool).

    Evaluated in order: require, deny_if, rules, then limits.
    """

    rules: tuple[ActionRule, ...] = Field(
        default=(),
        title="Rules (Intercept v1)",
        description="Intercept-style rules, evaluated in order after require and deny_if.",
    )
    scopes: tuple[StrictStr, ...] = Field(
        default=(),
        title="Scopes",
        description=(
            "mcp-authz extension: OAuth scopes the caller's token must carry, every one, to "
            "call this tool (the '*' entry's: every tool); else the call is refused 403 "
            "with an insufficient_scope challenge naming them, so the client can ask for "
            "them (rule /tools/<tool>/scopes). A caller without a token carries no scope."
        ),
        json_schema_extra={"items": {"type": "string", "pattern": r"^[\x21\x23-\x5b\x5d-\x7e]+$"}},
    )
    arguments: ArgumentsMode | None = Field(
        default=None,
        title="Arguments",
        description=(
            "mcp-authz extension: 'strict' denies a call of this tool whose arguments do not "
            "validate against the tool's pinned inputSchema (tools.lock.json); 'lax' does "
            "not check them. Unset: the '*' entry's setting, else the policy's."
        ),
    )

    @field_validator("scopes", mode="after")
    @classmethod
    def _scope_tokens(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[RelProblem] = []
        for i, scope in enumerate(value):
            if _SCOPE.fullmatch(scope) is None:
                problems.append(
                    ((i,), f'{show_value(scope)} is not a scope (visible ASCII, no space, " or \\)')
                )
            elif scope in value[:i]:
                problems.append(((i,), f"duplicate scope {scope!r}; remove the duplicate"))
        if problems:
            raise invalid(*problems)
        return value

    def counter_problems(self) -> list[RelProblem]:
        problems = super().counter_problems()
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.state is not None:
                name = rule.state.counter
            elif (limit := rule.counter_limit()) is not None:
                name = limit.counter
            else:
                continue
            if name in seen:
                problems.append(
                    (
                        ("rules", i),
                        f"duplicate state counter {name!r} (also used by rules[{seen[name]}]); "
                        "use different counter names or windows",
                    )
                )
            else:
                seen[name] = i
        return problems


class ContentPolicy(EntryPolicy):
    """An entry of `resources` or `prompts`: the fields of a tool entry but Intercept's
    `rules`. Conditions read one level (`args.<name>`, every value a string), so a limit's
    cost is a number, never read from the request."""

    @model_validator(mode="after")
    def _string_values(self) -> ContentPolicy:
        problems: list[RelProblem] = [
            (
                (*where, "path"),
                f"{cond.path} reaches into a string: the values of a {self._noun} request "
                "are strings, so write one segment, args.<name>",
            )
            for where, cond in self.all_conditions
            if not cond.is_token and "." in cond.path[len(conditions.ARGS_PREFIX) :]
        ]
        problems += [
            (
                ("limits", i, "cost"),
                f"a {self._noun} request has no numeric arguments to count; give the cost as "
                "a number",
            )
            for i, limit in enumerate(self.limits)
            if not isinstance(limit.cost, int)
        ]
        if problems:
            raise invalid(*problems)
        return self

    _noun: ClassVar[str] = "content"


class ResourcePolicy(ContentPolicy):
    """What applies to the resources whose URI a pattern matches (or, under "*", to every
    resource): `resources/read` and `resources/subscribe`. Conditions read `args.uri`, the
    URI as sent, and `args.<variable>` for each variable of the template, decoded as the
    MCP server decodes it."""

    _noun: ClassVar[str] = "resource"


class PromptPolicy(ContentPolicy):
    """What applies to one prompt (or, under "*", to every prompt) on `prompts/get`.
    Conditions read the prompt's arguments, `args.<argument>` (strings)."""

    _noun: ClassVar[str] = "prompt"


class ClassPolicy(EntryPolicy):
    """What applies to every tool of one class (`authz.catalog.classes`: read, write,
    delete, execute, financial) that has no entry of its own: require, deny_if, limits and
    approvals, as a tool's entry (without Intercept's `rules`)."""


class AllTools(PolicyModel):
    """Limits every tool call must also fit in (including tools not listed)."""

    limits: Limits = ()


class MethodsPolicy(PolicyModel):
    """mcp-authz extension: what happens to JSON-RPC methods other than `tools/call`.

    `deny` wins over `allow`; a method in neither list gets `default`. Names are compared
    exactly (case-sensitive, as MCP methods are). A client's JSON-RPC *response* to a
    server request (sampling, elicitation) is matched as the method `(response)`.
    `tools/call` is governed by `default`/`tools` and cannot be listed here.
    """

    default: Literal["allow", "deny"] = Field(
        default="allow",
        title="Default",
        description="Posture for methods in neither list: 'allow' (the default) or 'deny'.",
    )
    allow: tuple[StrictStr, ...] = Field(
        default=(), title="Allow", description="Methods allowed even when default is 'deny'."
    )
    deny: tuple[StrictStr, ...] = Field(
        default=(), title="Deny", description="Methods always denied."
    )

    @field_validator("allow", "deny", mode="after")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[RelProblem] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not item or item != item.strip():
                problems.append(((i,), "must be a method name without surrounding spaces"))
            elif item == "tools/call":
                problems.append(
                    (
                        (i,),
                        "tools/call is governed by 'default' and 'tools', not 'methods'; "
                        "remove it here",
                    )
                )
            elif item in seen:
                problems.append(((i,), f"duplicate entry {item!r}; remove the duplicate"))
            seen.add(item)
        if problems:
            raise invalid(*problems)
        return value

    def permits(self, method: str) -> tuple[bool, str]:
        """(allowed, rule pointer) for a non-tool method."""
        if method in self.deny:
            return False, f"/methods/deny/{self.deny.index(method)}"
        if method in self.allow:
            return True, f"/methods/allow/{self.allow.index(method)}"
        return self.default == "allow", "/methods/default"


HIDE_OBJECT: Final = '{"tools": [...], "resources": [...], "prompts": [...]} (each a list or "*")'


def _names(value: object, what: str, *, patterns: bool = False) -> tuple[str, ...]:
    """A `hide` list (or "*"): every entry a non-empty string, named once; with `patterns`,
    a resource pattern (`authz.policy.uris`). Raises with the entries at fault."""
    if value == WILDCARD:
        return (WILDCARD,)
    if not isinstance(value, list | tuple):
        raise invalid(((), f'must be a list of {what}s or "*"; got {conditions.json_type(value)}'))
    problems: list[RelProblem] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(
                ((i,), f"must be a {what} (a string); got {conditions.json_type(item)}")
            )
        elif not item.strip():
            problems.append(((i,), f"entry must not be empty; remove it or name a {what}"))
        elif item in seen:
            problems.append(((i,), f"duplicate entry {item!r}; remove the duplicate"))
        else:
            seen.add(item)
            if patterns and item != WILDCARD:
                try:
                    parse_pattern(item)
                except UriPatternError as exc:
                    problems.append(((i,), str(exc)))
    if problems:
        raise invalid(*problems)
    return tuple(value)


class Hide(PolicyModel):
    """What a grant must not see or use: tools, resources (by URI pattern) and prompts.

    A hidden tool, resource or prompt is denied (rule `(hidden)`) and left out of the
    listings. Each list may be "*" (or hold "*"): everything of its kind.
    """

    tools: tuple[StrictStr, ...] = Field(
        default=(),
        title="Hidden tools",
        description='Tool names removed from tools/list and denied on tools/call, or "*".',
        json_schema_extra=lambda schema: _list_or_star(schema),
    )
    resources: tuple[StrictStr, ...] = Field(
        default=(),
        title="Hidden resources",
        description=(
            "Resource URI patterns (an exact URI or a {name}/{+name} template, as the keys "
            "of 'resources'), or \"*\": removed from resources/list and "
            "resources/templates/list, denied on resources/read, resources/subscribe and "
            "completion/complete."
        ),
        json_schema_extra=lambda schema: _list_or_star(schema),
    )
    prompts: tuple[StrictStr, ...] = Field(
        default=(),
        title="Hidden prompts",
        description=(
            'Prompt names, or "*": removed from prompts/list, denied on prompts/get and '
            "completion/complete."
        ),
        json_schema_extra=lambda schema: _list_or_star(schema),
    )
    _patterns: tuple[UriPattern, ...] = PrivateAttr(default=())

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_names(cls, value: object) -> object:
        return _names(value, "tool name")

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_names(cls, value: object) -> object:
        return _names(value, "prompt name")

    @field_validator("resources", mode="before")
    @classmethod
    def _resource_patterns(cls, value: object) -> object:
        return _names(value, "resource pattern", patterns=True)

    @model_validator(mode="after")
    def _compile(self) -> Hide:
        self._patterns = tuple(parse_pattern(p) for p in self.resources if p != WILDCARD)
        return self

    @property
    def resource_patterns(self) -> tuple[UriPattern, ...]:
        """The hidden resource patterns, parsed ("*" apart)."""
        return self._patterns


def _list_or_star(schema: dict[str, Any]) -> None:
    """A hide list's schema: a list of strings, or the string "*"."""
    items = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}
    schema.pop("type", None)
    schema.pop("items", None)
    schema.pop("default", None)
    schema["anyOf"] = [items, {"const": WILDCARD}]


def _hide_schema(schema: dict[str, Any]) -> None:
    """`hide`'s schema: the v1 list of tool names, "*", or the object form."""
    ref = schema.pop("$ref", None)
    options: list[Any] = [
        {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
        {"const": WILDCARD},
    ]
    if ref is not None:
        options.append({"$ref": ref})
    schema["anyOf"] = options


class PolicyDocument(PolicyModel):
    """A version "1" policy document."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="mcp-authz policy (version 1)",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal["1"] = Field(title="Version", description='Must be the string "1".')
    description: StrictStr | None = Field(
        default=None, title="Description", description="Human-readable description."
    )
    default: Literal["allow", "deny"] = Field(
        default="allow",
        title="Default",
        description=(
            "Posture for tools not listed under 'tools': 'allow' (the default) or 'deny'. "
            "With 'deny', '*' rules and all_tools limits do not rescue unlisted tools."
        ),
    )
    hide: Hide = Field(
        default_factory=Hide,
        title="Hide",
        description=(
            'Tool names removed from tools/list and denied on tools/call; the entry "*" '
            '(or the string "*") hides every tool. The object form {"tools", "resources", '
            '"prompts"} hides resources (by URI pattern) and prompts as well.'
        ),
        json_schema_extra=_hide_schema,
    )
    strict_types: StrictBool = Field(
        default=True,
        title="Strict types",
        description=(
            "mcp-authz extension: true (the default) makes a condition whose argument has a "
            "JSON type its operator does not compare unknown, and unknown fails closed "
            "(require fails, deny_if denies, approve_if holds). false gives the PolicyLayer "
            "semantics (a mismatch is false), which is unsafe in front of an MCP server that "
            'converts argument types, e.g. "500" to 500 or "yes" to true.'
        ),
    )
    pinning: PinningMode = Field(
        default="enforce",
        title="Pinning",
        description=(
            "mcp-authz extension, in force when the configuration has a tool lock "
            "(tools.lock.json, written by `mcp-authz pin`): 'enforce' (the default) removes "
            "from tools/list every tool whose definition differs from the lock or that the "
            "lock lacks, and denies its calls (rule '(pin)'); 'report' only audits and "
            "counts such drift; 'off' ignores the lock's definitions."
        ),
    )
    arguments: ArgumentsMode = Field(
        default="lax",
        title="Arguments",
        description=(
            "mcp-authz extension: 'strict' denies a tools/call whose arguments do not "
            'validate against the tool\'s pinned inputSchema (strict JSON typing: "500" is '
            "not an integer), and every call of a tool without a pinned schema; 'lax' (the "
            "default) does not check them. A tool's entry may set its own."
        ),
    )
    hide_denied: StrictBool = Field(
        default=False,
        title="Hide denied tools",
        description=(
            "mcp-authz extension: also remove from tools/list the tools this policy never "
            "allows: unlisted tools under default 'deny', and tools whose own or '*' entry "
            "has a deny_if rule without conditions (or an Intercept 'deny' rule)."
        ),
    )
    all_tools: AllTools = Field(
        default_factory=AllTools,
        title="All tools",
        description="Limits applied to every tool call.",
    )
    methods: MethodsPolicy = Field(
        default_factory=MethodsPolicy,
        title="Methods",
        description=(
            "mcp-authz extension: allow or deny JSON-RPC methods other than tools/call "
            "(default: all allowed)."
        ),
    )
    tools: dict[str, ToolPolicy] = Field(
        default_factory=dict,
        title="Tools",
        description=(
            'Per-tool policy by exact tool name; the key "*" applies to every tool after '
            "the tool's own entry."
        ),
    )

    classes: dict[str, ClassPolicy] = Field(
        default_factory=dict,
        title="Classes",
        description=(
            "mcp-authz extension: policy by tool class (read, write, delete, execute, "
            "financial; see `mcp-authz catalog`), for every tool of that class without an "
            "entry of its own under 'tools'. Precedence: the tool's own entry, then '*', then "
            "its class, then 'default'; a class entry admits its tools under default 'deny'. "
            "A tool whose class is unknown (not pinned, not in tool-classes.json) is judged "
            "by the most restrictive class named here; under default 'deny', as financial "
            "(denied unless 'financial' is named here)."
        ),
    )
    resources: dict[str, ResourcePolicy] = Field(
        default_factory=dict,
        title="Resources",
        description=(
            "mcp-authz extension: per-resource policy by URI pattern, an exact URI or an "
            "RFC 6570 template ({name}: one or more characters other than / ? #; {+name}: "
            'one or more of any); every pattern that matches applies, then "*" (every '
            "resource). Governs resources/read and resources/subscribe; under default "
            "'deny' (without a methods section) a resource no entry matches is denied."
        ),
    )
    prompts: dict[str, PromptPolicy] = Field(
        default_factory=dict,
        title="Prompts",
        description=(
            'mcp-authz extension: per-prompt policy by exact name; "*" applies to every '
            "prompt after its own entry. Governs prompts/get; under default 'deny' "
            "(without a methods section) a prompt without an entry is denied."
        ),
    )
    _resource_patterns: tuple[tuple[str, UriPattern], ...] = PrivateAttr(default=())

    @field_validator("hide", mode="before")
    @classmethod
    def _hide_forms(cls, value: object) -> object:
        if isinstance(value, dict):
            return value
        if value != WILDCARD and not isinstance(value, list | tuple):
            raise invalid(
                (
                    (),
                    f'must be a list of tool names or "*"; got {conditions.json_type(value)} '
                    f"(or the object form {HIDE_OBJECT})",
                )
            )
        return {"tools": _names(value, "tool name")}

    @field_validator("classes", mode="after")
    @classmethod
    def _class_keys(cls, value: dict[str, ClassPolicy]) -> dict[str, ClassPolicy]:
        known = ", ".join(c.value for c in CLASS_ORDER)
        problems: list[RelProblem] = [
            ((name,), f"unknown tool class {name!r}; use one of {known}")
            for name in value
            if name not in {c.value for c in CLASS_ORDER}
        ]
        if problems:
            raise invalid(*problems)
        return value

    @field_validator("prompts", mode="after")
    @classmethod
    def _prompt_keys(cls, value: dict[str, PromptPolicy]) -> dict[str, PromptPolicy]:
        problems: list[RelProblem] = [
            ((name,), 'a prompt name must not be empty; name the prompt or use "*"')
            for name in value
            if not name
        ]
        if problems:
            raise invalid(*problems)
        return value

    @field_validator("resources", mode="after")
    @classmethod
    def _resource_keys(cls, value: dict[str, ResourcePolicy]) -> dict[str, ResourcePolicy]:
        """Every key parses as a pattern, and its conditions read `args.uri` or one of its
        variables."""
        problems: list[RelProblem] = []
        for key, entry in value.items():
            names: tuple[str, ...] = ()
            if key != WILDCARD:
                try:
                    names = parse_pattern(key).variables
                except UriPatternError as exc:
                    problems.append(((key,), str(exc)))
                    continue
            readable = ("uri", *names)
            for where, cond in entry.all_conditions:
                if cond.is_token:
                    continue
                name = cond.path[len(conditions.ARGS_PREFIX) :]
                if "." not in name and name not in readable:
                    shown = ", ".join(f"args.{n}" for n in readable)
                    problems.append(
                        (
                            (key, *where, "path"),
                            f"{cond.path} is not a value of this pattern; use {shown}",
                        )
                    )
        if problems:
            raise invalid(*problems)
        return value

    @model_validator(mode="after")
    def _compile_patterns(self) -> PolicyDocument:
        self._resource_patterns = tuple(
            (key, parse_pattern(key)) for key in self.resources if key != WILDCARD
        )
        return self

    @property
    def resource_patterns(self) -> tuple[tuple[str, UriPattern], ...]:
        """(key, pattern) of every `resources` key but "*", in the document's order."""
        return self._resource_patterns

    @property
    def has_methods(self) -> bool:
        """Whether the document has a `methods` section (then it decides which methods are
        admitted, content methods included)."""
        return "methods" in self.model_fields_set

    @model_validator(mode="after")
    def _state_paths(self) -> PolicyDocument:
        problems: list[RelProblem] = []
        for key, tool in self.tools.items():
            scope = GLOBAL_STATE_SCOPE if key == WILDCARD else key
            counters = {r.state.counter for r in tool.rules if r.state is not None}
            for i, rule in enumerate(tool.rules):
                for j, cond in enumerate(rule.conditions):
                    if not cond.is_state:
                        continue
                    where = ("tools", key, "rules", i, "conditions", j)
                    own = rule.state is not None and cond.path == (
                        f"{STATE_PREFIX}{scope}.{rule.state.counter}"
                    )
                    if own and cond.op not in ("lt", "lte"):
                        problems.append(
                            (
                                (*where, "op"),
                                f"a counter can only be limited with 'lt' or 'lte'; got "
                                f"{cond.op!r}",
                            )
                        )
                    elif not own and any(
                        cond.path == f"{STATE_PREFIX}{scope}.{c}" for c in counters
                    ):
                        problems.append(
                            (
                                (*where, "path"),
                                f"{cond.path} belongs to another rule's state block; "
                                "mcp-authz only supports 'lt'/'lte' on a rule's own counter, "
                                "so move this condition into that rule",
                            )
                        )
                    elif not own:
                        problems.append(
                            (
                                (*where, "path"),
                                f"condition references {cond.path} but no matching state "
                                f"block found; add a 'state' block to this rule with that "
                                f"counter (paths are state.{scope}.<counter>)",
                            )
                        )
        if problems:
            raise invalid(*problems)
        return self


# -- the loaded policy -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy: its name, the sha256 (`content_hash`) of its bytes, the document."""

    name: str
    content_hash: str
    """sha256 hex digest of the document bytes as loaded."""
    document: PolicyDocument

    @property
    def default(self) -> Literal["allow", "deny"]:
        return self.document.default

    @property
    def strict_types(self) -> bool:
        """Whether an argument of a type a condition does not compare fails closed."""
        return self.document.strict_types

    def class_entry(self, tool_class: ToolClass | None) -> ClassPolicy | None:
        """The `classes` entry of a tool class (None: no entry, or no class)."""
        if tool_class is None:
            return None
        return self.document.classes.get(tool_class.value)

    @property
    def class_names(self) -> frozenset[ToolClass]:
        """The classes the policy has an entry for."""
        return frozenset(ToolClass(name) for name in self.document.classes)

    @property
    def pinning(self) -> PinningMode:
        """What a drift from the tool lock does (when there is a lock)."""
        return self.document.pinning

    def arguments(self, tool: str) -> tuple[ArgumentsMode, str]:
        """How `tool`'s arguments are checked, and the pointer of the setting that says so:
        its own entry's, else the "*" entry's, else the policy's."""
        for key in (tool, WILDCARD):
            entry = self.document.tools.get(key)
            if entry is not None and entry.arguments is not None:
                escaped = key.replace("~", "~0").replace("/", "~1")
                return entry.arguments, f"/tools/{escaped}/arguments"
        return self.document.arguments, "/arguments"

    @property
    def hides_all(self) -> bool:
        """Whether `hide` hides every tool."""
        return WILDCARD in self.document.hide.tools

    def is_hidden(self, tool: str) -> bool:
        """Whether `tool` is hidden (listed in `hide`, or `hide` has "*")."""
        return self.hides_all or tool in self.document.hide.tools

    def tool(self, name: str) -> ToolPolicy | None:
        """The tool's own entry (not the "*" entry), if listed."""
        return self.document.tools.get(name)

    @property
    def wildcard(self) -> ToolPolicy | None:
        """The "*" entry, applied to every tool after its own entry."""
        return self.document.tools.get(WILDCARD)

    @property
    def all_tools_limits(self) -> tuple[Limit, ...]:
        return self.document.all_tools.limits

    @property
    def has_methods(self) -> bool:
        """Whether the document has a `methods` section."""
        return self.document.has_methods

    def prompt(self, name: str) -> PromptPolicy | None:
        """The prompt's own entry (not the "*" entry), if listed."""
        return self.document.prompts.get(name)

    @property
    def prompt_wildcard(self) -> PromptPolicy | None:
        """The "*" entry of `prompts`, applied to every prompt after its own entry."""
        return self.document.prompts.get(WILDCARD)

    @property
    def resource_patterns(self) -> tuple[tuple[str, UriPattern], ...]:
        """(key, parsed pattern) of every `resources` key but "*", in the document's order."""
        return self.document.resource_patterns

    def resource(self, key: str) -> ResourcePolicy:
        """The `resources` entry under `key` (a key of `resource_patterns`, or "*")."""
        return self.document.resources[key]

    @property
    def resource_wildcard(self) -> ResourcePolicy | None:
        """The "*" entry of `resources`, applied to every resource after the matching ones."""
        return self.document.resources.get(WILDCARD)

    def prompt_hidden(self, name: str) -> bool:
        """Whether the prompt `name` is hidden."""
        hidden = self.document.hide.prompts
        return WILDCARD in hidden or name in hidden

    def resource_hidden(self, uri: str) -> bool:
        """Whether a hidden pattern matches `uri`, or could be read to (fail closed)."""
        hide = self.document.hide
        if WILDCARD in hide.resources:
            return True
        for pattern in hide.resource_patterns:
            found = pattern.match(uri)
            if found.matched or found.ambiguous:
                return True
        return False
