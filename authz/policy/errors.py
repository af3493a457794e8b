"""Problems in a policy document: every one names the JSON path of the field at fault and
says what would fix it (`PolicyError`), including those pydantic finds."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from authz.policy import conditions
from authz.strictjson import json_path

__all__ = [
    "PolicyError",
    "Problem",
    "RelProblem",
    "from_validation_error",
    "invalid",
    "show_value",
]

RelProblem = tuple[tuple[str | int, ...], str]
"""A problem at a location relative to the object being validated."""

Problem = tuple[str, str]
"""(JSON path such as `$.tools['x'].limits[0].max`, message saying what would fix it)."""


class PolicyError(Exception):
    """A policy document is invalid; `problems` lists every (json_path, message) found."""

    def __init__(self, name: str, problems: Sequence[Problem]) -> None:
        self.name = name
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{path}: {message}" for path, message in self.problems)


def invalid(*items: RelProblem) -> PydanticCustomError:
    """A validation error carrying problems at locations relative to the validated object."""
    return PydanticCustomError(
        "policy", "{summary}", {"summary": items[0][1], "problems": list(items)}
    )


def show_value(value: object) -> str:
    """A policy value for a message: strings quoted 'like this', the rest as JSON."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


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


def from_validation_error(exc: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """The problems pydantic found validating the model `root`, as (JSON path, message),
    each message saying what would fix it."""
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
            allowed = ", ".join(_fields_at(root, loc[:-1]))
            message = f"unknown field {loc[-1]!r}; allowed here: {allowed}"
        elif kind == "missing":
            message = f"required field {loc[-1]!r} is missing; add it"
        elif kind == "literal_error":
            message = f"must be {ctx.get('expected')}; got {show_value(given)}"
        elif kind in _EXPECTED:
            message = f"must be {_EXPECTED[kind]}; got {conditions.json_type(given)}"
        elif kind == "greater_than_equal":
            message = f"must be >= {ctx.get('ge')}; got {show_value(given)}"
        elif kind == "string_too_short":
            message = "must not be empty"
        else:
            message = str(err["msg"])
        problems.append((json_path(loc), message))
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _fields_at(root: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The field names of the model found at `loc` under `root` (for 'unknown field'
    messages)."""
    tp: Any = root
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
