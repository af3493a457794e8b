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
  its operator does not compare is unknown and fails closed (`authz.conditions`); false
  restores Intercept's "a mismatch is false". `regex` values are RE2 patterns
  (`authz.patterns`), compiled at load.

Every problem found is reported at once, each naming the JSON path of the field at fault and
what would fix it (`PolicyError`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from authz import conditions, strictjson
from authz.conditions import non_negative_int
from authz.patterns import Pattern, PatternError, compile_pattern
from authz.strictjson import json_path

__all__ = [
    "WINDOW_SECONDS",
    "ActionRule",
    "AllTools",
    "ApprovalRule",
    "Condition",
    "CounterState",
    "Limit",
    "LimitCost",
    "MethodsPolicy",
    "Policy",
    "PolicyDocument",
    "PolicyError",
    "Problem",
    "Rule",
    "RuleLimit",
    "ToolPolicy",
    "check_policy_files",
    "load_policy",
    "policy_json_schema",
]

Window = Literal["second", "minute", "hour", "day"]
Scope = Literal["grant", "session", "global"]

WINDOW_SECONDS: Final[Mapping[str, int]] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
}

STATE_PREFIX: Final = "state."
WILDCARD: Final = "*"
GLOBAL_STATE_SCOPE: Final = "_global"
"""Intercept's name for the counter scope of `"*"` rules: `state._global.<counter>`."""

_RelProblem = tuple[tuple[str | int, ...], str]
"""A problem at a location relative to the object being validated."""

Problem = tuple[str, str]
"""(JSON path such as `$.tools['x'].limits[0].max`, message saying what would fix it)."""


# -- errors ----------------------------------------------------------------------------


class PolicyError(Exception):
    """A policy document is invalid; `problems` lists every (json_path, message) found."""

    def __init__(self, name: str, problems: Sequence[Problem]) -> None:
        self.name = name
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{path}: {message}" for path, message in self.problems)


def _problems(*items: _RelProblem) -> PydanticCustomError:
    """A validation error carrying problems at locations relative to the validated object."""
    return PydanticCustomError(
        "policy", "{summary}", {"summary": items[0][1], "problems": list(items)}
    )


def _show(value: object) -> str:
    """A policy value for a message: strings quoted 'like this', the rest as JSON."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


# -- the document ----------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Model):
    """One test on the call: the argument at `path` compared with `value` by `op`."""

    path: StrictStr = Field(
        title="Path",
        description=(
            "Where to read the value: 'args.<key>[.<key>...]' inside the tools/call "
            "arguments; each dot descends one object level. 'state.<tool>.<counter>' is "
            "accepted only in Intercept-style 'rules' with a 'state' block."
        ),
        json_schema_extra={"pattern": r"^(args|state)\.[^.]+(\.[^.]+)*$"},
    )
    op: StrictStr = Field(
        title="Operator",
        description="How to compare: " + ", ".join(conditions.OPERATORS) + ".",
        json_schema_extra={"enum": list(conditions.OPERATORS)},
    )
    value: Any = Field(
        default=None,
        title="Value",
        description=(
            "What to compare with: a list for in/not_in, a number for lt/lte/gt/gte, an "
            "RE2 pattern string for regex (searched, not fully matched; no backreferences "
            "or lookaround), true/false for exists."
        ),
    )
    _pattern: Pattern | None = PrivateAttr(default=None)

    @property
    def pattern(self) -> Pattern | None:
        """The compiled `regex` value, RE2 (None for other operators)."""
        return self._pattern

    @property
    def is_state(self) -> bool:
        return self.path.startswith(STATE_PREFIX)

    @field_validator("op")
    @classmethod
    def _known_op(cls, op: str) -> str:
        if op not in conditions.OPERATORS:
            raise _problems(
                ((), f"unknown operator {op!r}; use one of: {', '.join(conditions.OPERATORS)}")
            )
        return op

    @field_validator("path")
    @classmethod
    def _valid_path(cls, path: str) -> str:
        if path.startswith(STATE_PREFIX):
            if len(path) == len(STATE_PREFIX):
                raise _problems(((), "write 'state.<tool>.<counter>'"))
            return path
        problem = conditions.path_problem(path)
        if problem is not None:
            raise _problems(((), problem))
        return path

    @model_validator(mode="after")
    def _valid_value(self) -> Condition:
        problem = conditions.value_problem(self.op, self.value)
        if problem is not None:
            raise _problems((("value",), problem))
        if self.op == "regex":
            assert isinstance(self.value, str)
            try:
                self._pattern = compile_pattern(self.value)
            except PatternError as exc:
                raise _problems((("value",), f"invalid regex {self.value!r}: {exc}")) from None
        return self

    def describe(self) -> str:
        """`args.mode eq 'safe'`: for default deny messages (policy values only)."""
        return f"{self.path} {self.op} {_show(self.value)}"


Conditions = Annotated[
    tuple[Condition, ...],
    Field(
        title="Conditions",
        description="All must hold (AND). An empty list always holds.",
    ),
]
OnDeny = Annotated[
    StrictStr | None,
    Field(
        title="Deny message",
        description="Message returned to the agent when this entry denies the call.",
    ),
]


def _no_state_paths(conds: Sequence[Condition], where: str) -> list[_RelProblem]:
    return [
        (
            ("conditions", i, "path"),
            f"'state.' paths are only allowed in 'rules' entries with a 'state' block; "
            f"use 'limits' to count calls in {where}",
        )
        for i, c in enumerate(conds)
        if c.is_state
    ]


class Rule(_Model):
    """A `require` or `deny_if` entry: a list of conditions, ANDed."""

    name: StrictStr | None = Field(
        default=None, title="Name", description="Optional label, used in deny messages."
    )
    conditions: Conditions = ()
    on_deny: OnDeny = None

    @model_validator(mode="after")
    def _args_only(self) -> Rule:
        problems = _no_state_paths(self.conditions, "require/deny_if")
        if problems:
            raise _problems(*problems)
        return self


APPROVAL_TTL_DEFAULT: Final = 900
"""Seconds a held call waits for a person, and an approval waits for the retry (15 min)."""
APPROVAL_TTL_MAX: Final = 7 * 86400
_DURATION = re.compile(r"([1-9][0-9]{0,6})(s|m|h|d)\Z")
_DURATION_UNITS: Final[Mapping[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: object) -> int | None:
    """A TTL as seconds: a positive integer, or a string such as "90s", "15m", "2h", "1d"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is not None:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return None


class ApprovalRule(_Model):
    """An `approve_if` entry: when all conditions hold, a person must approve the call.

    The held call is not run. A person approves or denies it through the admin API; the
    approval covers the identical call (same grant, tool and arguments, same policy version)
    once, until `ttl` after the call was held.
    """

    name: StrictStr | None = Field(
        default=None,
        title="Name",
        description="Optional label, named in the message to the agent whose call is held.",
    )
    conditions: Conditions = ()
    on_deny: StrictStr | None = Field(
        default=None,
        title="Deny message",
        description=(
            "Message returned to the agent when a person denies the call (the approver's "
            "reason is appended)."
        ),
    )
    ttl: StrictInt | StrictStr = Field(
        default=APPROVAL_TTL_DEFAULT,
        title="Time to live",
        description=(
            "How long the request stays open and an approval stays usable, counted from "
            'the held call: seconds, or "90s", "15m", "2h", "1d" (at most 7 days; default '
            "15 minutes)."
        ),
        json_schema_extra={
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": APPROVAL_TTL_MAX},
                {"type": "string", "pattern": r"^[1-9][0-9]{0,6}(s|m|h|d)$"},
            ]
        },
    )

    @field_validator("ttl")
    @classmethod
    def _valid_ttl(cls, value: int | str) -> int | str:
        seconds = duration_seconds(value)
        if seconds is None:
            raise _problems(
                (
                    (),
                    f'{_show(value)} is not a duration; use seconds (e.g. 900) or "15m", '
                    '"2h", "1d"',
                )
            )
        if seconds > APPROVAL_TTL_MAX:
            raise _problems(((), f'{_show(value)} is longer than 7 days; use at most "7d"'))
        return value

    @model_validator(mode="after")
    def _args_only(self) -> ApprovalRule:
        problems = _no_state_paths(self.conditions, "approve_if")
        if problems:
            raise _problems(*problems)
        return self

    @property
    def ttl_seconds(self) -> int:
        seconds = duration_seconds(self.ttl)
        assert seconds is not None
        return seconds


RequireApproval = Annotated[
    ApprovalRule | None,
    Field(
        title="Require approval",
        description=(
            "Shorthand: true means every call of the tool needs a person's approval (the "
            "same as an approve_if entry without conditions); an object is one approve_if "
            "entry. Checked after approve_if."
        ),
        json_schema_extra=lambda schema: schema["anyOf"].insert(0, {"type": "boolean"}),
    ),
]


_COST_SHAPE: Final = '{"from": "args.<key>", "default": 1}'


def _count_problem(value: object) -> str | None:
    """Why `value` is not a usable non-negative integer (for `cost` and `cost.default`)."""
    if non_negative_int(value) is not None:
        return None
    if isinstance(value, bool):
        return f"must be a non-negative integer; got {_show(value)} (a boolean is not a number)"
    if conditions.is_number(value):
        assert isinstance(value, int | float)
        if value < 0:
            return f"must be a non-negative integer; got {_show(value)}"
        return f"must be a non-negative integer (a whole number); got {_show(value)}"
    return f"must be a non-negative integer; got {conditions.json_type(value)}"


class LimitCost(_Model):
    """mcp-authz extension: a limit cost read from the call's arguments.

    The argument at `from` must be a non-negative integer (3.0 counts as 3); when it is
    missing the call costs `default`. Any other value (a fraction, a string, a boolean,
    null, a negative number) denies the call with the rule `.../limits/<counter>/cost`.
    """

    from_: StrictStr = Field(
        alias="from",
        title="From",
        description=(
            "An args.<key>[.<key>...] path inside the tools/call arguments whose value is "
            "the cost, e.g. args.count."
        ),
        json_schema_extra={"pattern": r"^args\.[^.]+(\.[^.]+)*$"},
    )
    default: StrictInt = Field(
        default=1,
        ge=0,
        title="Default",
        description="The cost when the argument is missing (default 1).",
    )


LIMIT_COST_KEYS: Final = ("from", "default")


class Limit(_Model):
    """A counter per fixed window; a call takes `cost` units (default 1), denied past `max`."""

    counter: StrictStr = Field(
        min_length=1,
        title="Counter",
        description=(
            "Counter name. Limits with the same counter name, scope and window share one "
            "bucket, across tools."
        ),
    )
    window: Window = Field(
        title="Window",
        description="Fixed window aligned to the UTC epoch: second, minute, hour or day.",
    )
    max: StrictInt = Field(
        ge=0,
        title="Maximum",
        description="Units (calls, at cost 1) allowed per window (0 denies every call).",
    )
    scope: Scope = Field(
        default="global",
        title="Scope",
        description=(
            "Who shares the counter: 'grant' (one bucket per credential grant), 'session' "
            "(per Mcp-Session-Id; the grant when there is no session) or 'global' (every "
            "caller; the default, as in Intercept)."
        ),
    )
    cost: Annotated[StrictInt, Field(ge=0)] | LimitCost = Field(
        default=1,
        title="Cost",
        description=(
            "mcp-authz extension: units of the bucket one call takes (default 1). A "
            'non-negative integer, or {"from": "args.<key>", "default": N} to read it '
            "from the call's arguments (N when the argument is missing). A call whose "
            "argument is not a non-negative integer is denied."
        ),
    )
    on_deny: OnDeny = None

    @field_validator("cost", mode="before")
    @classmethod
    def _valid_cost(cls, value: object) -> object:
        if isinstance(value, LimitCost):
            return value
        if not isinstance(value, Mapping):
            problem = _count_problem(value)
            if problem is not None:
                if not conditions.is_number(value) and not isinstance(value, bool):
                    problem = (
                        f"must be a non-negative integer or an object {_COST_SHAPE}; "
                        f"got {conditions.json_type(value)}"
                    )
                raise _problems(((), problem))
            return non_negative_int(value)
        problems: list[_RelProblem] = [
            ((str(key),), f"unknown field {key!r}; allowed here: {', '.join(LIMIT_COST_KEYS)}")
            for key in value
            if key not in LIMIT_COST_KEYS
        ]
        source = value.get("from")
        if "from" not in value:
            problems.append(
                (("from",), "required field 'from' is missing; add an args path, e.g. 'args.n'")
            )
        elif not isinstance(source, str):
            problems.append(
                (
                    ("from",),
                    f"must be an args path string such as 'args.n'; got "
                    f"{conditions.json_type(source)}",
                )
            )
        elif (path_problem := conditions.path_problem(source)) is not None:
            problems.append((("from",), path_problem))
        default = value.get("default", 1)
        if (default_problem := _count_problem(default)) is not None:
            problems.append((("default",), default_problem))
        if problems:
            raise _problems(*problems)
        return {"from": source, "default": non_negative_int(default)}


class CounterState(_Model):
    """Intercept's `state` block: the counter a rule increments on every allowed call."""

    counter: StrictStr = Field(
        title="Counter",
        description="Counter name; read in conditions as state.<tool>.<counter>.",
    )
    window: Window = Field(title="Window", description="second, minute, hour or day.")
    increment: StrictInt = Field(
        default=1,
        ge=0,
        title="Increment",
        description="Amount added per allowed call (0 means the default, 1).",
    )
    increment_from: StrictStr | None = Field(
        default=None,
        title="Increment from",
        description="An args.<key> path whose numeric value is added instead of increment.",
    )

    @field_validator("counter")
    @classmethod
    def _counter_named(cls, counter: str) -> str:
        if not counter:
            raise _problems(((), "counter must not be empty; name the counter"))
        return counter

    @field_validator("increment_from")
    @classmethod
    def _args_path(cls, path: str | None) -> str | None:
        if path is not None:
            problem = conditions.path_problem(path)
            if problem is not None:
                raise _problems(((), problem))
        return path


_RATE_LIMIT = re.compile(r"(?P<count>[+-]?[0-9]+)/(?P<window>.*)\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class RuleLimit:
    """The counter an Intercept-style rule reserves: `state.<tool>.<counter>` ≤ `max`."""

    counter: str
    window: str
    max: int
    increment: int
    increment_from: str | None


class ActionRule(_Model):
    """An Intercept v1 rule: `evaluate` (conditions must hold) or `deny` (always denies).

    `rate_limit: "N/window"` is shorthand for a `state` counter `_rate_<window>` ≤ N. A
    `state` block reserves its counter when the rule has an `lt`/`lte` condition on
    `state.<tool>.<counter>` (`lt N` allows N-1); the counter is shared by every caller.
    """

    name: StrictStr | None = Field(
        default=None, title="Name", description="Rule name (required unless rate_limit)."
    )
    action: Literal["evaluate", "deny"] = Field(
        default="evaluate",
        title="Action",
        description="'evaluate' (default): conditions must hold; 'deny': always denies.",
    )
    rate_limit: StrictStr | None = Field(
        default=None,
        title="Rate limit",
        description="Shorthand 'N/window', e.g. '5/hour'; not combinable with conditions/state.",
    )
    conditions: Conditions = ()
    on_deny: OnDeny = None
    state: CounterState | None = Field(
        default=None, title="State", description="Counter incremented per allowed call."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ActionRule:
        problems: list[_RelProblem] = []
        if self.rate_limit is not None:
            problems += _rate_limit_problems(self.rate_limit)
            if self.conditions or self.state is not None:
                problems.append(
                    (
                        ("rate_limit",),
                        "rate_limit cannot be combined with conditions or state; use "
                        "separate rules or the full syntax",
                    )
                )
            if self.action == "deny":
                problems.append((("rate_limit",), "rate_limit cannot be used with action 'deny'"))
        else:
            if not self.name:
                problems.append((("name",), 'rule must have a name; add "name": "..."'))
            if self.action == "deny" and self.conditions:
                problems.append(
                    (("conditions",), "deny rules must not have conditions; remove them")
                )
            if self.action == "evaluate" and not self.conditions:
                problems.append(
                    (("conditions",), "evaluate rules need at least one condition; add one")
                )
        if problems:
            raise _problems(*problems)
        return self

    @property
    def arg_conditions(self) -> tuple[Condition, ...]:
        """The conditions checked before counting (`state.` ones become the limit)."""
        return tuple(c for c in self.conditions if not c.is_state)

    @property
    def label(self) -> str:
        return self.name or f"rate_limit {self.rate_limit}"

    def counter_limit(self) -> RuleLimit | None:
        """The counter this rule reserves, or None (no `state`, no `lt`/`lte` on it)."""
        if self.rate_limit is not None:
            m = _RATE_LIMIT.match(self.rate_limit)
            assert m is not None
            window = m["window"]
            return RuleLimit(f"_rate_{window}", window, int(m["count"]), 1, None)
        if self.state is None:
            return None
        for cond in self.conditions:
            if cond.is_state and cond.op in ("lt", "lte"):
                bound = int(cond.value)  # truncates toward zero, as Intercept does
                return RuleLimit(
                    self.state.counter,
                    self.state.window,
                    bound - 1 if cond.op == "lt" else bound,
                    self.state.increment or 1,
                    self.state.increment_from,
                )
        return None


def _rate_limit_problems(text: str) -> list[_RelProblem]:
    m = _RATE_LIMIT.match(text)
    if m is None:
        return [(("rate_limit",), f"rate_limit must be 'N/window' (e.g. '5/hour'); got {text!r}")]
    problems: list[_RelProblem] = []
    if int(m["count"]) <= 0:
        problems.append(
            (("rate_limit",), f"rate_limit count must be a positive integer; got {m['count']!r}")
        )
    if m["window"] not in WINDOW_SECONDS:
        problems.append(
            (
                ("rate_limit",),
                f"rate_limit window must be one of {', '.join(WINDOW_SECONDS)}; "
                f"got {m['window']!r}",
            )
        )
    return problems


Limits = Annotated[
    tuple[Limit, ...],
    Field(title="Limits", description="Counters this call must fit in; all are reserved at once."),
]


def _duplicate_counters(limits: Sequence[Limit]) -> list[_RelProblem]:
    seen: dict[str, int] = {}
    problems: list[_RelProblem] = []
    for i, limit in enumerate(limits):
        if limit.counter in seen:
            problems.append(
                (
                    ("limits", i, "counter"),
                    f"duplicate counter {limit.counter!r} (also limits[{seen[limit.counter]}]); "
                    "rename one or merge them",
                )
            )
        else:
            seen[limit.counter] = i
    return problems


class ToolPolicy(_Model):
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
        raise _problems(
            ((), f"must be true, false or an approve_if entry object; got {_show(value)}")
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
        problems = _duplicate_counters(self.limits)
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
            raise _problems(*problems)
        return self


class AllTools(_Model):
    """Limits every tool call must also fit in (including tools not listed)."""

    limits: Limits = ()


class MethodsPolicy(_Model):
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
        problems: list[_RelProblem] = []
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
            raise _problems(*problems)
        return value

    def permits(self, method: str) -> tuple[bool, str]:
        """(allowed, rule pointer) for a non-tool method."""
        if method in self.deny:
            return False, f"/methods/deny/{self.deny.index(method)}"
        if method in self.allow:
            return True, f"/methods/allow/{self.allow.index(method)}"
        return self.default == "allow", "/methods/default"


class PolicyDocument(_Model):
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
            raise _problems(
                ((), f'must be a list of tool names or "*"; got {conditions.json_type(value)}')
            )
        problems: list[_RelProblem] = []
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
            raise _problems(*problems)
        return value

    @model_validator(mode="after")
    def _state_paths(self) -> PolicyDocument:
        problems: list[_RelProblem] = []
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
            raise _problems(*problems)
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


MAX_DOCUMENT_DEPTH: Final = strictjson.MAX_DEPTH
"""Deepest nesting accepted in a policy document (guards the recursive validators)."""


def _parse(raw: bytes) -> tuple[Any, list[Problem]]:
    """The document read by the one strict JSON reader (`authz.strictjson`), or its
    problems (every duplicate key, else the first problem found)."""
    try:
        return strictjson.loads(raw), []
    except strictjson.StrictJsonError as exc:
        return None, [(json_path(loc), message) for loc, message in exc.problems]


def load_policy(data: bytes | str | Mapping[str, Any], *, name: str) -> Policy:
    """Parse and validate a policy document; raise `PolicyError` listing every problem.

    `data` is the document's raw bytes (preferred: the hash is of exactly these bytes), a
    str (hashed as UTF-8), or an already-parsed mapping (hashed as its canonical JSON:
    sorted keys, no spaces). Duplicate keys are only detectable in bytes/str input.
    """
    if isinstance(data, Mapping):
        try:
            ascii_text = json.dumps(
                data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise PolicyError(name, [("$", f"not a JSON document: {exc}")]) from None
        except RecursionError:
            raise PolicyError(
                name, [("$", f"nesting deeper than {MAX_DOCUMENT_DEPTH} levels")]
            ) from None
        # the same reader and rules as for bytes (depth, lone surrogates, big numbers)
        _, problems = _parse(ascii_text.encode())
        if problems:
            raise PolicyError(name, problems)
        parsed: Any = data
        raw_bytes = json.dumps(
            data, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    else:
        raw_bytes = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        parsed, problems = _parse(raw_bytes)
        if problems:
            raise PolicyError(name, problems)
    if not isinstance(parsed, Mapping):
        problems.append(
            ("$", f"a policy must be a JSON object; got {conditions.json_type(parsed)}")
        )
        raise PolicyError(name, problems)
    try:
        document = PolicyDocument.model_validate(parsed)
    except ValidationError as exc:
        problems.extend(_from_validation_error(exc))
    if problems:
        raise PolicyError(name, problems)
    return Policy(name=name, content_hash=hashlib.sha256(raw_bytes).hexdigest(), document=document)


def check_policy_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Validate policy files; one `"FILE: $.path: message"` line per problem (empty: all ok).

    Each policy is named after its file name without the extension.
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            out.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        try:
            load_policy(raw, name=path.stem)
        except PolicyError as err:
            out.extend(f"{path}: {where}: {message}" for where, message in err.problems)
    return out


# -- pydantic errors → problems --------------------------------------------------------

_EXPECTED: Final[Mapping[str, str]] = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "tuple_type": "a list",
    "list_type": "a list",
}


def _from_validation_error(exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        given = err.get("input")
        if kind == "policy":
            for sub, message in ctx["problems"]:
                problems.append((json_path((*loc, *sub)), message))
            continue
        if kind == "extra_forbidden":
            allowed = ", ".join(_fields_at(loc[:-1]))
            message = f"unknown field {loc[-1]!r}; allowed here: {allowed}"
        elif kind == "missing":
            message = f"required field {loc[-1]!r} is missing; add it"
        elif kind == "literal_error":
            message = f"must be {ctx.get('expected')}; got {_show(given)}"
        elif kind in _EXPECTED:
            message = f"must be {_EXPECTED[kind]}; got {conditions.json_type(given)}"
        elif kind == "greater_than_equal":
            message = f"must be >= {ctx.get('ge')}; got {_show(given)}"
        elif kind == "string_too_short":
            message = "must not be empty"
        else:
            message = str(err["msg"])
        problems.append((json_path(loc), message))
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _fields_at(loc: Sequence[str | int]) -> list[str]:
    """The field names of the model found at `loc` (for 'unknown field' messages)."""
    tp: Any = PolicyDocument
    for part in loc:
        tp = _container(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (tuple, list):
            tp = typing.get_args(tp)[0]
        else:
            return []
    tp = _container(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _container(tp: Any) -> Any:
    """Unwrap Optional/Union/Annotated to the model or container type inside."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            picked = [
                a
                for a in options
                if (isinstance(a, type) and issubclass(a, BaseModel))
                or typing.get_origin(a) in (dict, tuple, list)
            ]
            if not picked:
                return tp
            tp = picked[0]
        else:
            return tp


# -- JSON Schema -----------------------------------------------------------------------


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy document (what `scripts/export_schema.py` writes)."""
    return PolicyDocument.model_json_schema()
