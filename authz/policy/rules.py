"""The rules of a tool's entry: conditions, `require` and `deny_if`, `approve_if`, and
Intercept's `rules` with their `state` counters."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import Field, PrivateAttr, StrictInt, StrictStr, field_validator, model_validator

from authz.policy import conditions
from authz.policy.errors import RelProblem, invalid, show_value
from authz.policy.limits import WINDOW_SECONDS, OnDeny, PolicyModel, Window
from authz.policy.patterns import Pattern, PatternError, compile_pattern

__all__ = [
    "APPROVAL_TTL_DEFAULT",
    "APPROVAL_TTL_MAX",
    "GLOBAL_STATE_SCOPE",
    "STATE_PREFIX",
    "ActionRule",
    "ApprovalRule",
    "Condition",
    "Conditions",
    "CounterState",
    "RequireApproval",
    "Rule",
    "RuleLimit",
    "duration_seconds",
]

STATE_PREFIX: Final = "state."
GLOBAL_STATE_SCOPE: Final = "_global"
"""Intercept's name for the counter scope of `"*"` rules: `state._global.<counter>`."""


class Condition(PolicyModel):
    """One test on the call: the argument at `path` compared with `value` by `op`."""

    path: StrictStr = Field(
        title="Path",
        description=(
            "Where to read the value: 'args.<key>[.<key>...]' inside the tools/call "
            "arguments; each dot descends one object level. 'token.iss', 'token.sub', "
            "'token.client_id', 'token.scope' and 'token.groups' read the caller's verified "
            "token (scope and groups are arrays: use contains). 'state.<tool>.<counter>' is "
            "accepted only in Intercept-style 'rules' with a 'state' block."
        ),
        json_schema_extra={
            "pattern": (
                r"^((args|state)\.[^.]+(\.[^.]+)*|token\.(iss|sub|client_id|scope|groups))$"
            )
        },
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
            raise invalid(
                ((), f"unknown operator {op!r}; use one of: {', '.join(conditions.OPERATORS)}")
            )
        return op

    @field_validator("path")
    @classmethod
    def _valid_path(cls, path: str) -> str:
        if path.startswith(STATE_PREFIX):
            if len(path) == len(STATE_PREFIX):
                raise invalid(((), "write 'state.<tool>.<counter>'"))
            return path
        problem = conditions.condition_path_problem(path)
        if problem is not None:
            raise invalid(((), problem))
        return path

    @property
    def is_token(self) -> bool:
        """Whether the condition reads the caller's token, not the request."""
        return self.path.startswith(conditions.TOKEN_PREFIX)

    @model_validator(mode="after")
    def _valid_value(self) -> Condition:
        problem = conditions.value_problem(self.op, self.value)
        if problem is not None:
            raise invalid((("value",), problem))
        if self.op == "regex":
            assert isinstance(self.value, str)
            try:
                self._pattern = compile_pattern(self.value)
            except PatternError as exc:
                raise invalid((("value",), f"invalid regex {self.value!r}: {exc}")) from None
        return self

    def describe(self) -> str:
        """`args.mode eq 'safe'`: for default deny messages (policy values only)."""
        return f"{self.path} {self.op} {show_value(self.value)}"


Conditions = Annotated[
    tuple[Condition, ...],
    Field(
        title="Conditions",
        description="All must hold (AND). An empty list always holds.",
    ),
]


def _no_state_paths(conds: Sequence[Condition], where: str) -> list[RelProblem]:
    return [
        (
            ("conditions", i, "path"),
            f"'state.' paths are only allowed in 'rules' entries with a 'state' block; "
            f"use 'limits' to count calls in {where}",
        )
        for i, c in enumerate(conds)
        if c.is_state
    ]


class Rule(PolicyModel):
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
            raise invalid(*problems)
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


class ApprovalRule(PolicyModel):
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
            raise invalid(
                (
                    (),
                    f'{show_value(value)} is not a duration; use seconds (e.g. 900) or "15m", '
                    '"2h", "1d"',
                )
            )
        if seconds > APPROVAL_TTL_MAX:
            raise invalid(((), f'{show_value(value)} is longer than 7 days; use at most "7d"'))
        return value

    @model_validator(mode="after")
    def _args_only(self) -> ApprovalRule:
        problems = _no_state_paths(self.conditions, "approve_if")
        if problems:
            raise invalid(*problems)
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


class CounterState(PolicyModel):
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
            raise invalid(((), "counter must not be empty; name the counter"))
        return counter

    @field_validator("increment_from")
    @classmethod
    def _args_path(cls, path: str | None) -> str | None:
        if path is not None:
            problem = conditions.path_problem(path)
            if problem is not None:
                raise invalid(((), problem))
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


class ActionRule(PolicyModel):
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
        problems: list[RelProblem] = []
        if self.rate_limit is not None:
            problems += _rate_limitinvalid(self.rate_limit)
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
            raise invalid(*problems)
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


def _rate_limitinvalid(text: str) -> list[RelProblem]:
    m = _RATE_LIMIT.match(text)
    if m is None:
        return [(("rate_limit",), f"rate_limit must be 'N/window' (e.g. '5/hour'); got {text!r}")]
    problems: list[RelProblem] = []
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
