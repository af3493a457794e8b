"""Condition operators and `args.x.y` path resolution (pure, no I/O).

A condition is `{"path": "args.<key>[.<key>...]", "op": OP, "value": V}`. The path is
resolved inside the `tools/call` arguments object; each dot descends one level into an
object (there are no list indices, as in Intercept). A path that runs into a missing key or
a non-object is *missing*. A present `null` counts as missing for `exists` only.

Operators (the README quotes this table):

| op         | value        | holds when the argument at `path` ...                         |
|------------|--------------|---------------------------------------------------------------|
| `eq`       | any JSON     | equals the value (JSON: 1 == 1.0, true != 1, "1" != 1)        |
| `neq`      | any JSON     | is present and does not equal the value                       |
| `in`       | list         | equals an element of the list                                 |
| `not_in`   | list         | is present and equals no element of the list                  |
| `lt`       | number       | is a number less than the value                               |
| `lte`      | number       | is a number less than or equal to the value                   |
| `gt`       | number       | is a number greater than the value                            |
| `gte`      | number       | is a number greater than or equal to the value                |
| `regex`    | string       | is a string the pattern matches anywhere (search, unanchored) |
| `contains` | any JSON     | is a string with the (string) value as a substring, or a list |
|            |              | with an element equal to the value                            |
| `exists`   | true / false | true: is present and not null; false: is missing or null      |

Rules that hold for every operator:
- A missing path makes the condition false, except for `exists` (`exists: false` is true).
- A type mismatch (e.g. `lt` on a string, `regex` on a number) makes it false, never an error.
- Booleans are not numbers: `true` is neither `eq 1` nor `gt 0`.
- The conditions of one rule are ANDed; a rule with no conditions matches every call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

ARGS_PREFIX: Final = "args."

OPERATORS: Final[tuple[str, ...]] = (
    "eq",
    "neq",
    "in",
    "not_in",
    "lt",
    "lte",
    "gt",
    "gte",
    "regex",
    "contains",
    "exists",
)
"""Every valid operator, in the order of the table above."""

LIST_OPS: Final = frozenset({"in", "not_in"})
NUMERIC_OPS: Final = frozenset({"lt", "lte", "gt", "gte"})


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Returned by `resolve` when the path leads nowhere."""


class ConditionLike(Protocol):
    """What the evaluator needs of a validated condition (see `authz.policy.Condition`)."""

    @property
    def path(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def value(self) -> Any: ...
    @property
    def pattern(self) -> re.Pattern[str] | None: ...


# -- values ----------------------------------------------------------------------------


def is_number(value: object) -> bool:
    """True for JSON numbers: int or float, never bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(a: object, b: object) -> bool:
    """Equality with JSON semantics: numbers by value, no bool/number or string/number mixing."""
    if is_number(a) and is_number(b):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def value_problem(op: str, value: object) -> str | None:
    """Why `value` is unusable with `op` (a message saying what would fix it), or None."""
    if op in LIST_OPS and not isinstance(value, list | tuple):
        return f'\'{op}\' needs a list value, e.g. ["a", "b"]; got {json_type(value)}'
    if op in NUMERIC_OPS and not is_number(value):
        return f"'{op}' needs a number value, e.g. 100; got {json_type(value)}"
    if op == "exists" and not isinstance(value, bool):
        return f"'exists' needs true or false; got {json_type(value)}"
    if op == "regex" and not isinstance(value, str):
        return f"'regex' needs a string pattern; got {json_type(value)}"
    return None


def json_type(value: object) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


# -- paths -----------------------------------------------------------------------------


def path_problem(path: str) -> str | None:
    """Why `path` is not a valid argument path, or None."""
    if not path.startswith(ARGS_PREFIX):
        return f"path must start with 'args.' (e.g. 'args.mode'); got {path!r}"
    if any(part == "" for part in path[len(ARGS_PREFIX) :].split(".")):
        return f"path has an empty segment; write 'args.a.b'; got {path!r}"
    return None


def resolve(arguments: Mapping[str, Any], path: str) -> Any:
    """The value at `args.a.b` inside `arguments`, or `MISSING`."""
    if not path.startswith(ARGS_PREFIX):
        return MISSING
    current: Any = arguments
    for part in path[len(ARGS_PREFIX) :].split("."):
        if not isinstance(current, Mapping) or part not in current:
            return MISSING
        current = current[part]
    return current


# -- operators -------------------------------------------------------------------------


def _in(actual: Any, expected: Any) -> bool:
    return isinstance(expected, list | tuple) and any(json_equal(actual, x) for x in expected)


def _numeric(cmp: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def check(actual: Any, expected: Any) -> bool:
        return is_number(actual) and is_number(expected) and cmp(actual, expected)

    return check


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, list | tuple):
        return any(json_equal(item, expected) for item in actual)
    return False


_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "eq": json_equal,
    "neq": lambda a, e: not json_equal(a, e),
    "in": _in,
    "not_in": lambda a, e: isinstance(e, list | tuple) and not _in(a, e),
    "lt": _numeric(lambda a, e: a < e),
    "lte": _numeric(lambda a, e: a <= e),
    "gt": _numeric(lambda a, e: a > e),
    "gte": _numeric(lambda a, e: a >= e),
    "contains": _contains,
}


def evaluate(op: str, actual: Any, expected: Any, pattern: re.Pattern[str] | None = None) -> bool:
    """Apply `op` to a resolved argument (`MISSING` allowed); never raises.

    `pattern` is the pre-compiled `regex` value; without it the pattern is compiled here.
    """
    if op == "exists":
        present = actual is not MISSING and actual is not None
        return isinstance(expected, bool) and present is expected
    if actual is MISSING:
        return False
    if op == "regex":
        if not isinstance(actual, str):
            return False
        if pattern is None:
            if not isinstance(expected, str):
                return False
            try:
                pattern = re.compile(expected)
            except re.error:
                return False
        return pattern.search(actual) is not None
    compare = _COMPARE.get(op)
    return compare is not None and compare(actual, expected)


def matches(condition: ConditionLike, arguments: Mapping[str, Any]) -> bool:
    """Whether one condition holds for the call's arguments."""
    actual = resolve(arguments, condition.path)
    return evaluate(condition.op, actual, condition.value, condition.pattern)


def all_match(conditions: Iterable[ConditionLike], arguments: Mapping[str, Any]) -> bool:
    """AND of the conditions; true for an empty list."""
    return all(matches(c, arguments) for c in conditions)
