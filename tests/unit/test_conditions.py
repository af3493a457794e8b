"""Operators and args-path resolution: a table of (op, argument, value, expected)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz import conditions
from authz.conditions import MISSING, evaluate, json_equal, resolve

ARGS: dict[str, Any] = {
    "mode": "safe",
    "n": 5,
    "f": 2.5,
    "flag": True,
    "none": None,
    "tags": ["a", "b", 3],
    "meta": {"owner": {"name": "ann"}, "list": [{"x": 1}]},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("args.mode", "safe"),
        ("args.meta.owner.name", "ann"),
        ("args.meta.owner", {"name": "ann"}),
        ("args.none", None),
        ("args.missing", MISSING),
        ("args.meta.missing.deeper", MISSING),
        ("args.mode.deeper", MISSING),  # descending into a string
        ("args.tags.0", MISSING),  # no list indices (as Intercept)
        ("args.meta.list.0.x", MISSING),
        ("state.x.y", MISSING),
        ("mode", MISSING),
    ],
)
def test_resolve(path: str, expected: Any) -> None:
    assert resolve(ARGS, path) == expected


# (op, actual, policy value, holds)
CASES: list[tuple[str, Any, Any, bool]] = [
    ("eq", "safe", "safe", True),
    ("eq", "safe", "SAFE", False),
    ("eq", 1, 1.0, True),
    ("eq", True, 1, False),
    ("eq", 1, True, False),
    ("eq", True, True, True),
    ("eq", "1", 1, False),
    ("eq", None, None, True),
    ("eq", [1, "a"], [1.0, "a"], True),
    ("eq", {"a": 1}, {"a": 1}, True),
    ("eq", {"a": 1}, {"a": True}, False),
    ("neq", "draft", "main", True),
    ("neq", "main", "main", False),
    ("neq", True, 1, True),
    ("in", "usd", ["usd", "eur"], True),
    ("in", "gbp", ["usd", "eur"], False),
    ("in", 2, [1, 2.0], True),
    ("in", True, [1], False),
    ("not_in", "admin", ["admin"], False),
    ("not_in", "user", ["admin"], True),
    ("lt", 4, 5, True),
    ("lt", 5, 5, False),
    ("lte", 5, 5, True),
    ("lte", 5.5, 5, False),
    ("gt", 6, 5, True),
    ("gt", 5, 5, False),
    ("gte", 5, 5.0, True),
    ("gte", 4.9, 5, False),
    ("lt", "4", 5, False),  # type mismatch: false, never an error
    ("gt", True, 0, False),  # bool is not a number
    ("lt", None, 5, False),
    ("gt", [1], 0, False),
    ("regex", "feat/x", "^feat/", True),
    ("regex", "a feat/x", "feat/", True),  # search, not fullmatch
    ("regex", "fix/x", "^feat/", False),
    ("regex", 123, "1", False),  # only strings
    ("contains", "hello world", "lo w", True),
    ("contains", "hello", "xyz", False),
    ("contains", "a1", 1, False),
    ("contains", ["a", "b"], "b", True),
    ("contains", ["a", "b"], "c", False),
    ("contains", [1, 2], 2.0, True),
    ("contains", [1], True, False),
    ("contains", {"b": 1}, "b", False),
    ("contains", 12, 1, False),
    ("exists", "x", True, True),
    ("exists", "x", False, False),
    ("exists", None, True, False),  # null counts as absent (Intercept)
    ("exists", None, False, True),
    ("bogus", "x", "x", False),
]


@pytest.mark.parametrize(("op", "actual", "value", "holds"), CASES)
def test_operator(op: str, actual: Any, value: Any, holds: bool) -> None:
    assert evaluate(op, actual, value) is holds


@pytest.mark.parametrize("op", [op for op in conditions.OPERATORS if op != "exists"])
def test_missing_is_false_for_every_op_but_exists(op: str) -> None:
    value: Any = {"in": ["x"], "not_in": ["x"], "regex": "x"}.get(op, 1)
    assert evaluate(op, MISSING, value) is False


def test_exists_on_missing() -> None:
    assert evaluate("exists", MISSING, True) is False
    assert evaluate("exists", MISSING, False) is True


def test_precompiled_pattern_is_used() -> None:
    assert evaluate("regex", "ABC", "ignored", re.compile("b", re.IGNORECASE))
    assert not evaluate("regex", "x", "(")  # bad pattern without precompiling: false


@pytest.mark.parametrize(
    ("op", "value", "problem"),
    [
        ("in", "a", "'in' needs a list"),
        ("not_in", None, "'not_in' needs a list"),
        ("lt", "5", "'lt' needs a number"),
        ("gte", True, "'gte' needs a number"),
        ("exists", 1, "'exists' needs true or false"),
        ("regex", 1, "'regex' needs a string"),
        ("eq", None, None),
        ("contains", 1, None),
        ("lt", 1.5, None),
    ],
)
def test_value_problem(op: str, value: Any, problem: str | None) -> None:
    found = conditions.value_problem(op, value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


@pytest.mark.parametrize(
    ("path", "ok"),
    [("args.a", True), ("args.a.b", True), ("args.", False), ("args.a..b", False), ("x", False)],
)
def test_path_problem(path: str, ok: bool) -> None:
    assert (conditions.path_problem(path) is None) is ok


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(json_values, json_values)
def test_operators_never_raise(actual: Any, value: Any) -> None:
    for op in conditions.OPERATORS:
        evaluate(op, actual, value)


@given(json_values)
def test_json_equal_reflexive_and_eq_neq_complementary(value: Any) -> None:
    assert json_equal(value, value)
    assert evaluate("eq", value, value) != evaluate("neq", value, value)
