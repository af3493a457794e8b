"""The policy document (version "1"): schema, validation, loading and JSON Schema export.

A policy is one JSON object, validated once into frozen pydantic models. The format is
PolicyLayer Intercept's v1 document (rendered as JSON) plus three mcp-authz sections:

    {"version": "1", "description": "...", "default": "deny", "hide": ["tool", ...],
     "all_tools": {"limits": [Limit, ...]},
     "tools": {"<tool>": {"require": [Rule, ...], "deny_if": [Rule, ...],
                          "limits": [Limit, ...], "rules": [ActionRule, ...],
                          "approve_if": [ApprovalRule, ...], "require_approval": true},
               "*": {...applies to every tool...}}}

- `require`, `deny_if` and `limits` are mcp-authz's shape; `rules` (with `name`, `action`,
  `rate_limit`, `conditions`, `on_deny`, `state`) is Intercept's, accepted so that an
  Intercept v1 policy pastes in unchanged. The tool key `"*"` applies to every tool
  (Intercept's wildcard); `all_tools.limits` is the same as `tools["*"].limits`.
- Defaults follow Intercept: `default` may be omitted and then is `"allow"`; `version` is
  required and must be the string `"1"`; `tools` may be omitted. A limit's `scope` may be
  omitted and then is `"global"`: Intercept's counters are shared by every caller.
- `approve_if` (and its shorthand `require_approval`) is mcp-authz's: a call that matches
  is held until a person approves it (see `authz.approvals`).
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

from dataclasses import dataclass
from typing import Final, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator

from authz.policy import conditions
from authz.policy.errors import RelProblem, invalid, show_value
from authz.policy.limits import Limit, Limits, PolicyModel, duplicate_counters
from authz.policy.rules import (
    GLOBAL_STATE_SCOPE,
    STATE_PREFIX,
    ActionRule,
    ApprovalRule,
    RequireApproval,
    Rule,
)

__all__ = [
    "WILDCARD",
    "AllTools",
    "MethodsPolicy",
    "Policy",
    "PolicyDocument",
    "ToolPolicy",
]

WILDCARD: Final = "*"


class ToolPolicy(PolicyModel):
    """What applies to one tool (or, under the key "*", to every tool).

    Evaluated in order: require, deny_if, rules, then limits.
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
    rules: tuple[ActionRule, ...] = Field(
        default=(),
        title="Rules (Intercept v1)",
        description="Intercept-style rules, evaluated in order after require and deny_if.",
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

    @model_validator(mode="after")
    def _unique_counters(self) -> ToolPolicy:
        problems = duplicate_counters(self.limits)
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
        if problems:
            raise invalid(*problems)
        return self


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
    hide: tuple[StrictStr, ...] | Literal["*"] = Field(
        default=(),
        title="Hide",
        description=(
            'Tool names removed from tools/list and denied on tools/call; the entry "*" '
            '(or the string "*") hides every tool.'
        ),
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

    @field_validator("hide", mode="before")
    @classmethod
    def _hide_list(cls, value: object) -> object:
        if value == WILDCARD:
            return (WILDCARD,)
        if not isinstance(value, list | tuple):
            raise invalid(
                ((), f'must be a list of tool names or "*"; got {conditions.json_type(value)}')
            )
        problems: list[RelProblem] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, str):
                problems.append(
                    ((i,), f"must be a tool name (a string); got {conditions.json_type(item)}")
                )
            elif not item.strip():
                problems.append(((i,), "entry must not be empty; remove it or name a tool"))
            elif item in seen:
                problems.append(((i,), f"duplicate entry {item!r}; remove the duplicate"))
            else:
                seen.add(item)
        if problems:
            raise invalid(*problems)
        return value

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

    @property
    def hides_all(self) -> bool:
        return WILDCARD in self.document.hide

    def is_hidden(self, tool: str) -> bool:
        """Whether `tool` is hidden (listed in `hide`, or `hide` has "*")."""
        return self.hides_all or tool in self.document.hide

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
