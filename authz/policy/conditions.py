"""Condition operators and `args.x.y` path resolution (pure, no I/O).

A condition is `{"path": "args.<key>[.<key>...]", "op": OP, "value": V}`. The path is
resolved inside the `tools/call` arguments object; each dot descends one level into an
object (there are no list indices, as in Intercept).

A path may also name the caller's verified token (`TOKEN_PATHS`): `token.iss`,
`token.sub`, `token.client_id` (strings), `token.scope` and `token.groups` (arrays of
strings: a `scope` string counts as the space-separated set it spells, so
`token.scope contains "images:generate"` tests membership). A caller without token
claims (a static token, a client certificate) has none of them: the condition is false,
`exists: false` true.

A condition is true, false or *unknown*. It is unknown when the argument has a JSON type
the operator does not compare, because the MCP server may convert it before the tool runs:
the official Python SDK reads `"500"` as 500, `"yes"`, `"on"`, `"t"`, `1` as true and
`'["a"]'` as a list. Judging the raw JSON would judge a different value from the one the
tool receives, so an unknown condition fails closed (see `Truth` and the engine).

Operators (the README quotes this table, in the same words):

| op         | value        | true when the argument at `path` ...   | unknown when the argument   |
|            |              |                                        | is not null and ...         |
|------------|--------------|----------------------------------------|-----------------------------|
| `eq`       | any JSON     | equals the value (JSON: 1 == 1.0;      | of another JSON type than   |
|            |              | arrays and objects are compared member | the value                   |
|            |              | by member)                             |                             |
| `neq`      | any JSON     | is present and does not equal the      | of another JSON type than   |
|            |              | value                                  | the value                   |
| `in`       | list         | equals an element of the list          | of none of the JSON types   |
|            |              |                                        | of the elements             |
| `not_in`   | list         | is present and equals no element of    | of none of the JSON types   |
|            |              | the list                               | of the elements             |
| `lt`       | number       | is a number less than the value        | not a number                |
| `lte`      | number       | is a number less than or equal to the  | not a number                |
|            |              | value                                  |                             |
| `gt`       | number       | is a number greater than the value     | not a number                |
| `gte`      | number       | is a number greater than or equal to   | not a number                |
|            |              | the value                              |                             |
| `regex`    | string       | is a string the RE2 pattern matches    | not a string                |
|            |              | anywhere (search, unanchored)          |                             |
| `contains` | any JSON     | is a string with the (string) value as | neither a string nor an     |
|            |              | a substring, or an array with an       | array; an array with an     |
|            |              | element equal to the value             | element of another JSON     |
|            |              |                                        | type than the value; a      |
|            |              |                                        | string whose JSON array     |
|            |              |                                        | reading gives another       |
|            |              |                                        | answer                      |
| `exists`   | true / false | true: is present and not null; false:  | never, but see paths below  |
|            |              | is missing or null                     |                             |

Rules that hold for every operator (the README lists them too):
- A missing argument makes the condition false, except for `exists` (`exists: false` is
  true). A null argument is compared as null, never unknown: `eq null` is true, `gt 0` is
  false, `neq 5` is true. A null policy value, or a list of nulls, is never unknown either.
- A path that meets a non-object before its last key (`args.a.b` where `args.a` is a
  string) is unknown for every operator, `exists` included: the server may parse that
  string into an object.
- Booleans are not numbers: `true` is neither `eq 1` nor `gt 0`; both are unknown.
- The conditions of one rule combine by Kleene AND: false if any is false, otherwise
  unknown if any is unknown, otherwise true. A rule without conditions is true.
- `require` and Intercept `evaluate` rules pass only when true; `deny_if` denies when true
  or unknown; `approve_if` and `require_approval` hold the call when true or unknown. A
  denial for an unknown condition names the argument and the JSON type the rule expects.
- With `"strict_types": false` nothing is unknown: a type mismatch makes the operator
  false (`neq` and `not_in` true), and a path through a non-object is missing. Unsafe in
  front of a server that converts types (see docs/security.md).
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from authz.policy.patterns import Pattern, PatternError, compile_pattern

__all__ = [
    "ARGS_PREFIX",
    "FALSE",
    "LIST_OPS",
    "MAX_DECODED_TEXT",
    "MISSING",
    "NUMERIC_OPS",
    "OPERATORS",
    "TOKEN_PATHS",
    "TOKEN_PREFIX",
    "TRUE",
    "Blocked",
    "ConditionLike",
    "Evaluation",
    "Mismatch",
    "Truth",
    "check",
    "check_all",
    "condition_path_problem",
    "evaluate",
    "is_number",
    "json_equal",
    "json_type",
    "locate",
    "non_negative_int",
    "path_problem",
    "resolve",
    "value_problem",
]


ARGS_PREFIX: Final = "args."
TOKEN_PREFIX: Final = "token."
TOKEN_PATHS: Final[tuple[str, ...]] = (
    "token.iss",
    "token.sub",
    "token.client_id",
    "token.scope",
    "token.groups",
)
"""The claims of the caller's token a condition can read (`authz.model.Grant.token`)."""

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

MAX_DECODED_TEXT: Final = 64 * 1024
"""Longest string `contains` reads as the JSON array it spells; a longer one is unknown."""


class Truth(enum.IntEnum):
    """Kleene's three truth values, ordered so that AND is `min` and OR is `max`."""

    FALSE = 0
    UNKNOWN = 1
    TRUE = 2

    def negate(self) -> Truth:
        return Truth(2 - self)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Returned by `resolve` when the path leads nowhere."""


@dataclass(frozen=True, slots=True)
class Blocked:
    """A path that met a non-object before its last key: `path` is the prefix that did."""

    path: str
    got: str
    """The JSON type found there, with its article ("a string")."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Why a condition is unknown: the argument at `path` has a type it does not compare.

    Names the argument and JSON types only, never the argument's value.
    """

    path: str
    expected: str
    got: str

    def describe(self) -> str:
        """`args.width must be a number, not a string`."""
        return f"{self.path} must be {self.expected}, not {self.got}"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A condition's (or a rule's) truth, and for an unknown one the first mismatch."""

    truth: Truth
    mismatch: Mismatch | None = None


TRUE: Final = Evaluation(Truth.TRUE)
FALSE: Final = Evaluation(Truth.FALSE)


class ConditionLike(Protocol):
    """What the evaluator needs of a validated condition (see `authz.policy.Condition`)."""

    @property
    def path(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def value(self) -> Any: ...
    @property
    def pattern(self) -> Pattern | None: ...


# -- values ----------------------------------------------------------------------------


def is_number(value: object) -> bool:
    """True for JSON numbers: int or float, never bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def non_negative_int(value: object) -> int | None:
    """`value` as a non-negative integer, or None when it is not one.

    JSON has one number type, so an integral float counts (3.0 → 3); booleans, strings,
    fractions (2.5), negative numbers and non-finite floats do not.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


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


def _a(type_name: str) -> str:
    """`array` → `an array`; `null` stays `null`."""
    if type_name == "null":
        return type_name
    return f"an {type_name}" if type_name[:1] in "aeiou" else f"a {type_name}"


def _either(type_names: Iterable[str]) -> str:
    """`a string or a number`."""
    return " or ".join(_a(name) for name in type_names)


# -- paths -----------------------------------------------------------------------------


def path_problem(path: str) -> str | None:
    """Why `path` is not a valid argument path, or None."""
    if not path.startswith(ARGS_PREFIX):
        return f"path must start with 'args.' (e.g. 'args.mode'); got {path!r}"
    if any(part == "" for part in path[len(ARGS_PREFIX) :].split(".")):
        return f"path has an empty segment; write 'args.a.b'; got {path!r}"
    return None


def condition_path_problem(path: str) -> str | None:
    """Why `path` is not a path a condition can read (an argument path, or one of
    `TOKEN_PATHS`), or None."""
    if path.startswith(TOKEN_PREFIX):
        if path in TOKEN_PATHS:
            return None
        return f"unknown token path {path!r}; use one of: {', '.join(TOKEN_PATHS)}"
    problem = path_problem(path)
    if problem is not None and not path.startswith(ARGS_PREFIX):
        return (
            f"path must start with 'args.' (e.g. 'args.mode') or name a token claim "
            f"({', '.join(TOKEN_PATHS)}); got {path!r}"
        )
    return problem


def resolve(arguments: Mapping[str, Any], path: str) -> Any:
    """The value at `args.a.b` inside `arguments`, or `MISSING` (also through a non-object)."""
    found = locate(arguments, path)
    return MISSING if isinstance(found, Blocked) else found


def locate(arguments: Mapping[str, Any], path: str) -> Any:
    """The value at `args.a.b` inside `arguments`; `MISSING` when a key is absent (or null
    on the way), `Blocked` when a non-object stands before the last key."""
    if not path.startswith(ARGS_PREFIX):
        return MISSING
    parts = path[len(ARGS_PREFIX) :].split(".")
    current: Any = arguments
    for depth, part in enumerate(parts):
        if current is None:
            return MISSING
        if not isinstance(current, Mapping):
            return Blocked(ARGS_PREFIX + ".".join(parts[:depth]), _a(json_type(current)))
        if part not in current:
            return MISSING
        current = current[part]
    return current


# -- operators -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Why:
    """An unknown outcome: what the operator compares, and what the argument is."""

    expected: str
    got: str


_Outcome = Truth | _Why


def _truth(outcome: _Outcome) -> Truth:
    return outcome if isinstance(outcome, Truth) else Truth.UNKNOWN


def _of(holds: bool) -> Truth:
    return Truth.TRUE if holds else Truth.FALSE


def _eq(actual: Any, expected: Any, strict: bool) -> _Outcome:
    if json_equal(actual, expected):
        return Truth.TRUE
    if strict and expected is not None and json_type(actual) != json_type(expected):
        return _Why(_a(json_type(expected)), _a(json_type(actual)))
    return Truth.FALSE


def _in(actual: Any, expected: Any, strict: bool) -> _Outcome:
    if any(json_equal(actual, item) for item in expected):
        return Truth.TRUE
    types = dict.fromkeys(json_type(item) for item in expected if item is not None)
    if strict and types and json_type(actual) not in types:
        return _Why(_either(types), _a(json_type(actual)))
    return Truth.FALSE


def _numeric(op: str, actual: Any, expected: Any, strict: bool) -> _Outcome:
    if not is_number(expected):
        return Truth.FALSE
    if not is_number(actual):
        return _Why("a number", _a(json_type(actual))) if strict else Truth.FALSE
    if op == "lt":
        return _of(actual < expected)
    if op == "lte":
        return _of(actual <= expected)
    if op == "gt":
        return _of(actual > expected)
    return _of(actual >= expected)


def _regex(actual: Any, expected: Any, pattern: Pattern | None, strict: bool) -> _Outcome:
    if not isinstance(actual, str):
        return _Why("a string", _a(json_type(actual))) if strict else Truth.FALSE
    if pattern is None:
        pattern = _compiled(expected) if isinstance(expected, str) else None
        if pattern is None:
            return Truth.FALSE  # never from a loaded policy: its patterns compiled at load
    return _of(pattern.search(actual))


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> Pattern | None:
    try:
        return compile_pattern(source)
    except PatternError:
        return None


def _contains_in_list(items: Sequence[Any], expected: Any, strict: bool) -> _Outcome:
    if any(json_equal(item, expected) for item in items):
        return Truth.TRUE
    if strict and expected is not None:
        wanted = json_type(expected)
        for item in items:
            if item is not None and json_type(item) != wanted:
                return _Why(f"an array of {wanted}s", f"an array holding {_a(json_type(item))}")
    return Truth.FALSE


_JSON_SPACE: Final = " \t\n\r"


def _contains(actual: Any, expected: Any, strict: bool) -> _Outcome:
    if isinstance(actual, list | tuple):
        return _contains_in_list(actual, expected, strict)
    if not isinstance(actual, str):
        return _Why("a string or an array", _a(json_type(actual))) if strict else Truth.FALSE
    as_text = _of(isinstance(expected, str) and expected in actual)
    if not strict or not actual.lstrip(_JSON_SPACE).startswith("["):
        return as_text
    # A server may read this string as the JSON array it spells ('["a"]' → ["a"]), with
    # escapes decoded: both readings must agree.
    spelled = "a string that reads as a JSON array"
    if len(actual) > MAX_DECODED_TEXT:
        return _Why(f"an array, or text shorter than {MAX_DECODED_TEXT} characters", spelled)
    try:
        decoded = json.loads(actual)
    except (ValueError, RecursionError):
        return as_text
    if not isinstance(decoded, list):
        return as_text
    as_array = _contains_in_list(decoded, expected, strict)
    if as_array == as_text:
        return as_text
    return _Why("an array, or text that is not a JSON array", spelled)


def _positive(
    op: str, actual: Any, expected: Any, pattern: Pattern | None, strict: bool
) -> _Outcome:
    """The outcome of `op` (of `in` for `not_in`, of `eq` for `neq`) on a present value."""
    if op in ("eq", "neq"):
        return _eq(actual, expected, strict)
    if op in LIST_OPS:
        if not isinstance(expected, list | tuple):
            return Truth.FALSE  # never from a loaded policy (validated at load)
        return _in(actual, expected, strict)
    if op in NUMERIC_OPS:
        return _numeric(op, actual, expected, strict)
    if op == "regex":
        return _regex(actual, expected, pattern, strict)
    if op == "contains":
        return _contains(actual, expected, strict)
    return Truth.FALSE


def _outcome(op: str, actual: Any, expected: Any, pattern: Pattern | None, strict: bool) -> Any:
    """A `Truth`, or a `_Why` (unknown), or the `Blocked` path itself (unknown)."""
    if isinstance(actual, Blocked):
        if strict:
            return actual
        actual = MISSING
    if op == "exists":
        present = actual is not MISSING and actual is not None
        return _of(isinstance(expected, bool) and present is expected)
    if actual is MISSING:
        return Truth.FALSE
    # a null argument compares as null: never unknown
    outcome = _positive(op, actual, expected, pattern, strict and actual is not None)
    negated = op == "neq" or (op == "not_in" and isinstance(expected, list | tuple))
    return outcome.negate() if negated and isinstance(outcome, Truth) else outcome


def evaluate(
    op: str,
    actual: Any,
    expected: Any,
    pattern: Pattern | None = None,
    *,
    strict: bool = True,
) -> Truth:
    """Apply `op` to a resolved argument (`MISSING` and `Blocked` allowed); never raises.

    `pattern` is the pre-compiled `regex` value; without it the pattern is compiled here.
    With `strict=False`, unknown outcomes become false (`neq`/`not_in`: true).
    """
    outcome = _outcome(op, actual, expected, pattern, strict)
    return outcome if isinstance(outcome, Truth) else Truth.UNKNOWN


def check(
    condition: ConditionLike,
    arguments: Mapping[str, Any],
    *,
    strict: bool = True,
    token: Mapping[str, Any] | None = None,
) -> Evaluation:
    """One condition on the call's arguments (or, for a `token.` path, on the caller's
    token claims: `token`, None when the caller has none), with the mismatch when it is
    unknown."""
    path = condition.path
    if path.startswith(TOKEN_PREFIX):
        claims = token if token is not None else {}
        actual = claims.get(path[len(TOKEN_PREFIX) :], MISSING)
    else:
        actual = locate(arguments, path)
    outcome = _outcome(condition.op, actual, condition.value, condition.pattern, strict)
    if isinstance(outcome, Truth):
        return TRUE if outcome is Truth.TRUE else FALSE
    if isinstance(outcome, Blocked):
        mismatch = Mismatch(outcome.path, "an object", outcome.got)
    else:
        mismatch = Mismatch(condition.path, outcome.expected, outcome.got)
    return Evaluation(Truth.UNKNOWN, mismatch)


def check_all(
    conditions: Iterable[ConditionLike],
    arguments: Mapping[str, Any],
    *,
    strict: bool = True,
    token: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Kleene AND of the conditions (true for none), with the first mismatch if unknown.

    Stops at the first false condition.
    """
    unknown: Evaluation | None = None
    for condition in conditions:
        found = check(condition, arguments, strict=strict, token=token)
        if found.truth is Truth.FALSE:
            return FALSE
        if found.truth is Truth.UNKNOWN and unknown is None:
            unknown = found
    return unknown or TRUE
