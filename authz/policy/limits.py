"""Limits of a policy: counters per fixed window, who shares them, what a call costs.

Also the pieces every part of the document shares: the frozen pydantic base that refuses
unknown fields (`PolicyModel`), the windows and the deny message field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from authz.policy import conditions
from authz.policy.conditions import non_negative_int
from authz.policy.errors import RelProblem, invalid, show_value

__all__ = [
    "LIMIT_COST_KEYS",
    "WINDOW_SECONDS",
    "Limit",
    "LimitCost",
    "Limits",
    "OnDeny",
    "PolicyModel",
    "Scope",
    "Window",
    "duplicate_counters",
]

Window = Literal["second", "minute", "hour", "day"]
Scope = Literal["grant", "session", "global", "sub", "client_id"]

WINDOW_SECONDS: Final[Mapping[str, int]] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
}


class PolicyModel(BaseModel):
    """The base of every part of a policy: frozen, and no field it does not define."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OnDeny = Annotated[
    StrictStr | None,
    Field(
        title="Deny message",
        description="Message returned to the agent when this entry denies the call.",
    ),
]


_COST_SHAPE: Final = '{"from": "args.<key>", "default": 1}'


def _count_problem(value: object) -> str | None:
    """Why `value` is not a usable non-negative integer (for `cost` and `cost.default`)."""
    if non_negative_int(value) is not None:
        return None
    if isinstance(value, bool):
        got = show_value(value)
        return f"must be a non-negative integer; got {got} (a boolean is not a number)"
    if conditions.is_number(value):
        assert isinstance(value, int | float)
        if value < 0:
            return f"must be a non-negative integer; got {show_value(value)}"
        return f"must be a non-negative integer (a whole number); got {show_value(value)}"
    return f"must be a non-negative integer; got {conditions.json_type(value)}"


class LimitCost(PolicyModel):
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


class Limit(PolicyModel):
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
            "(per Mcp-Session-Id; the grant when there is no session), 'sub' or 'client_id' "
            "(per OAuth token subject or client, with its issuer; the grant when the caller "
            "has no such claim) or 'global' (every caller; the default, as in Intercept)."
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
                raise invalid(((), problem))
            return non_negative_int(value)
        problems: list[RelProblem] = [
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
            raise invalid(*problems)
        return {"from": source, "default": non_negative_int(default)}


Limits = Annotated[
    tuple[Limit, ...],
    Field(title="Limits", description="Counters this call must fit in; all are reserved at once."),
]


def duplicate_counters(limits: Sequence[Limit]) -> list[RelProblem]:
    seen: dict[str, int] = {}
    problems: list[RelProblem] = []
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
