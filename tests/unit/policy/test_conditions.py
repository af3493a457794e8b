"""Operators and args-path resolution: tables of (op, argument, value, truth)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.policy import conditions
from authz.policy.conditions import (
    MISSING,
    Blocked,
    Mismatch,
    Truth,
    check,
    check_all,
    evaluate,
    json_equal,
    locate,
    resolve,
)
from authz.policy.patterns import Pattern, compile_pattern

T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN

ARGS: dict[str, Any] = {
    "mode": "safe",
    "n": 5,
    "f": 2.5,
    "flag": True,
    "none": None,
    "tags": ["a", "b", 3],
    "meta": {"owner": {"name": "ann"}, "list": [{"x": 1}], "gone": None},
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
        ("args.none.deeper", MISSING),  # null on the way: missing, as a null argument
        ("args.meta.gone.x", MISSING),
        ("args.mode.deeper", Blocked("args.mode", "a string")),  # may be a JSON object
        ("args.tags.0", Blocked("args.tags", "an array")),  # no list indices (as Intercept)
        ("args.meta.list.0.x", Blocked("args.meta.list", "an array")),
        ("args.n.x.y", Blocked("args.n", "a number")),
        ("state.x.y", MISSING),
        ("mode", MISSING),
    ],
)
def test_locate(path: str, expected: Any) -> None:
    assert locate(ARGS, path) == expected
    # `resolve` (limit costs) keeps the old reading: through a non-object is missing
    assert resolve(ARGS, path) == (MISSING if isinstance(expected, Blocked) else expected)


# (op, actual, policy value, truth with strict types, truth without)
CASES: list[tuple[str, Any, Any, Truth, Truth]] = [
    ("eq", "safe", "safe", T, T),
    ("eq", "safe", "SAFE", F, F),
    ("eq", 1, 1.0, T, T),
    ("eq", True, 1, U, F),  # booleans are not numbers
    ("eq", 1, True, U, F),  # a lax server reads 1 as true
    ("eq", "yes", True, U, F),
    ("eq", "true", True, U, F),
    ("eq", 1.0, True, U, F),
    ("eq", True, True, T, T),
    ("eq", False, True, F, F),
    ("eq", "1", 1, U, F),
    ("eq", 1, "1", U, F),
    ("eq", None, None, T, T),
    ("eq", None, 5, F, F),  # a null argument compares as null
    ("eq", 5, None, F, F),  # so does a null policy value
    ("eq", [1, "a"], [1.0, "a"], T, T),
    ("eq", [1, "a"], [1, "b"], F, F),  # arrays: member by member, as before
    ("eq", [1, True], [1, 1], F, F),
    ("eq", '["a"]', ["a"], U, F),
    ("eq", {"a": 1}, {"a": 1}, T, T),
    ("eq", {"a": 1}, {"a": True}, F, F),
    ("eq", '{"a": 1}', {"a": 1}, U, F),
    ("neq", "draft", "main", T, T),
    ("neq", "main", "main", F, F),
    ("neq", True, 1, U, T),
    ("neq", "yes", False, U, T),
    ("neq", None, 1, T, T),
    ("neq", 1, None, T, T),
    ("in", "usd", ["usd", "eur"], T, T),
    ("in", "gbp", ["usd", "eur"], F, F),
    ("in", 2, [1, 2.0], T, T),
    ("in", True, [1], U, F),
    ("in", 5, ["a", "b"], U, F),
    ("in", 5, ["a", 5], T, T),  # a mixed list compares each of its types
    ("in", "c", ["a", 5], F, F),
    ("in", True, ["a", 5], U, F),
    ("in", 5, [None], F, F),  # nulls give no type to compare
    ("in", 5, [], F, F),
    ("in", None, ["a"], F, F),
    ("in", None, [None], T, T),
    ("not_in", "admin", ["admin"], F, F),
    ("not_in", "user", ["admin"], T, T),
    ("not_in", 5, ["admin"], U, T),
    ("not_in", 5, [], T, T),
    ("not_in", None, ["admin"], T, T),
    ("lt", 4, 5, T, T),
    ("lt", 5, 5, F, F),
    ("lte", 5, 5, T, T),
    ("lte", 5.5, 5, F, F),
    ("gt", 6, 5, T, T),
    ("gt", 5, 5, F, F),
    ("gte", 5, 5.0, T, T),
    ("gte", 4.9, 5, F, F),
    ("lt", "4", 5, U, F),
    ("gt", "4096", 1024, U, F),
    ("gt", True, 0, U, F),
    ("lt", None, 5, F, F),
    ("gt", [1], 0, U, F),
    ("gt", {"a": 1}, 0, U, F),
    ("regex", "feat/x", "^feat/", T, T),
    ("regex", "a feat/x", "feat/", T, T),  # search, not fullmatch
    ("regex", "fix/x", "^feat/", F, F),
    ("regex", 123, "1", U, F),
    ("regex", ["a"], "a", U, F),
    ("regex", None, "a", F, F),
    ("contains", "hello world", "lo w", T, T),
    ("contains", "hello", "xyz", F, F),
    ("contains", "a1", 1, F, F),
    ("contains", ["a", "b"], "b", T, T),
    ("contains", ["a", "b"], "c", F, F),
    ("contains", [1, 2], 2.0, T, T),
    ("contains", [1], True, U, F),  # 1 is true to a lax server
    ("contains", ["1"], 1, U, F),
    ("contains", ["a", None], "b", F, F),
    ("contains", [None], None, T, T),
    ("contains", ["a"], None, F, F),
    ("contains", {"b": 1}, "b", U, F),
    ("contains", 12, 1, U, F),
    ("contains", True, True, U, F),
    ("contains", '["admin"]', "admin", T, T),  # as text and as the array it spells
    ("contains", '["adm\\u0069n"]', "admin", U, F),  # only the array has it
    ("contains", '  ["x"]', "admin", F, F),
    ("contains", '["admin" ]', "admi", U, T),  # the text has it, the array does not
    ("contains", "[5]", 5, U, F),
    ("contains", "[not json", "admin", F, F),
    ("contains", '["a", 1]', "b", U, F),  # the array mixes types
    ("exists", "x", True, T, T),
    ("exists", "x", False, F, F),
    ("exists", 0, True, T, T),  # never unknown for its type
    ("exists", None, True, F, F),  # null counts as absent (Intercept)
    ("exists", None, False, T, T),
    ("bogus", "x", "x", F, F),
    ("in", "x", "x", F, F),  # not a list: never from a loaded policy
    ("not_in", "x", "x", F, F),
    ("gt", 5, "1", F, F),
]


@pytest.mark.parametrize(("op", "actual", "value", "strict", "lax"), CASES)
def test_operator(op: str, actual: Any, value: Any, strict: Truth, lax: Truth) -> None:
    assert evaluate(op, actual, value) is strict
    assert evaluate(op, actual, value, strict=False) is lax


def test_long_json_array_text_is_unknown_for_contains() -> None:
    text = "[" + " " * conditions.MAX_DECODED_TEXT + "]"
    assert evaluate("contains", text, "x") is U
    assert evaluate("contains", text, "x", strict=False) is F
    assert evaluate("contains", "x" * (conditions.MAX_DECODED_TEXT + 1), "y") is F


@pytest.mark.parametrize("op", [op for op in conditions.OPERATORS if op != "exists"])
@pytest.mark.parametrize("strict", [True, False])
def test_missing_is_false_for_every_op_but_exists(op: str, strict: bool) -> None:
    value: Any = {"in": ["x"], "not_in": ["x"], "regex": "x"}.get(op, 1)
    assert evaluate(op, MISSING, value, strict=strict) is F


def test_exists_on_missing() -> None:
    assert evaluate("exists", MISSING, True) is F
    assert evaluate("exists", MISSING, False) is T


@pytest.mark.parametrize("op", conditions.OPERATORS)
def test_blocked_path_is_unknown_for_every_op(op: str) -> None:
    blocked = Blocked("args.a", "a string")
    value: Any = {"in": ["x"], "not_in": ["x"], "regex": "x", "exists": True}.get(op, 1)
    assert evaluate(op, blocked, value) is U
    lax = evaluate(op, MISSING, value, strict=False)
    assert evaluate(op, blocked, value, strict=False) is lax


def test_precompiled_pattern_is_used() -> None:
    assert evaluate("regex", "ABC", "ignored", compile_pattern("(?i)b")) is T
    assert evaluate("regex", "x", "(") is F  # bad pattern without precompiling: false


@pytest.mark.parametrize(
    ("pattern", "text", "holds"),
    [
        (r"\pL+\z", "héllo", True),  # RE2 (Go) syntax
        (r"\pL", "123", False),
        (r"^\p{Greek}+$", "αβγ", True),
        (r"[[:alpha:]]", ":", False),  # a POSIX class, not Python's nested-set reading
        (r"[[:alpha:]]", "a", True),
        (r"foo$", "foo\n", False),  # $ is the end of the text, as in Go
        (r"(?m)foo$", "foo\nbar", True),
        (r"\d", "٣", False),  # \d is ASCII, as in Go
        (r"^(a+)+$", "a" * 10_000 + "!", False),  # linear: Python's re would never return
        (r"(?i)FORBIDDEN", "a forbidden prompt", True),
        (r"(?P<word>ab)+", "xababy", True),
        (r"\x{263a}", "☺", True),
        (r"caf\x{e9}", "café", True),
    ],
)
def test_regex_is_re2(pattern: str, text: str, holds: bool) -> None:
    assert evaluate("regex", text, pattern, compile_pattern(pattern)) is _of(holds)


def _of(holds: bool) -> Truth:
    return T if holds else F


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


# -- conditions and rules: mismatches and Kleene AND ---------------------------------------


@dataclass(frozen=True)
class Cond:
    path: str
    op: str
    value: Any
    pattern: Pattern | None = None


CALL = {"w": "4096", "n": 5, "flag": "yes", "opts": '{"mode": "danger"}', "tags": ["a", 2]}


@pytest.mark.parametrize(
    ("condition", "mismatch"),
    [
        (Cond("args.w", "gt", 1024), Mismatch("args.w", "a number", "a string")),
        (Cond("args.flag", "eq", True), Mismatch("args.flag", "a boolean", "a string")),
        (
            Cond("args.n", "in", ["a", True]),
            Mismatch("args.n", "a string or a boolean", "a number"),
        ),
        (Cond("args.n", "regex", "5"), Mismatch("args.n", "a string", "a number")),
        (Cond("args.n", "contains", 5), Mismatch("args.n", "a string or an array", "a number")),
        (
            Cond("args.tags", "contains", "x"),
            Mismatch("args.tags", "an array of strings", "an array holding a number"),
        ),
        (
            Cond("args.opts.mode", "eq", "danger"),
            Mismatch("args.opts", "an object", "a string"),
        ),
        (Cond("args.opts.mode", "exists", True), Mismatch("args.opts", "an object", "a string")),
    ],
)
def test_unknown_names_the_argument_and_types(condition: Cond, mismatch: Mismatch) -> None:
    found = check(condition, CALL)
    assert found.truth is U
    assert found.mismatch == mismatch
    assert "4096" not in mismatch.describe() and "danger" not in mismatch.describe()
    assert check(condition, CALL, strict=False).mismatch is None


def test_mismatch_describe() -> None:
    assert Mismatch("args.w", "a number", "a string").describe() == (
        "args.w must be a number, not a string"
    )


GT_TRUE, GT_FALSE, UNK = Cond("args.n", "gt", 1), Cond("args.n", "gt", 9), Cond("args.w", "gt", 1)
UNK2 = Cond("args.flag", "eq", True)


@pytest.mark.parametrize(
    ("conds", "truth", "named"),
    [
        ((), T, None),
        ((GT_TRUE,), T, None),
        ((GT_TRUE, GT_FALSE), F, None),
        ((UNK,), U, "args.w"),
        ((GT_TRUE, UNK), U, "args.w"),
        ((UNK, GT_TRUE), U, "args.w"),
        ((UNK, GT_FALSE), F, None),  # false wins over unknown
        ((GT_FALSE, UNK), F, None),
        ((UNK2, UNK), U, "args.flag"),  # the first unknown is named
        ((UNK, UNK2), U, "args.w"),
    ],
)
def test_check_all_is_kleene_and(conds: tuple[Cond, ...], truth: Truth, named: str | None) -> None:
    found = check_all(conds, CALL)
    assert found.truth is truth
    assert (found.mismatch.path if found.mismatch else None) == named
    lax = check_all(conds, CALL, strict=False)
    assert lax.truth is (T if truth is T else F) and lax.mismatch is None


def test_truth_order_and_negation() -> None:
    assert min(T, U) is U and min(F, U) is F and max(F, U) is U
    assert [t.negate() for t in (F, U, T)] == [T, U, F]


# -- properties --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
text_like_json = st.sampled_from(['["a"]', '["a", 1]', "[1]", '{"a": 1}', "[", " [true]", "[]"])
arguments = json_values | text_like_json


def ancestor(op: str, actual: Any, expected: Any) -> bool:
    """The operators before three-valued conditions (and PolicyLayer's "a mismatch is
    false"), written out as the oracle of `strict_types: false`."""
    if op == "exists":
        return isinstance(expected, bool) and (actual is not MISSING and actual is not None) is (
            expected
        )
    if actual is MISSING:
        return False
    num = conditions.is_number
    if op == "eq":
        return json_equal(actual, expected)
    if op == "neq":
        return not json_equal(actual, expected)
    if op in ("in", "not_in"):
        if not isinstance(expected, list):
            return False
        found = any(json_equal(actual, x) for x in expected)
        return found if op == "in" else not found
    if op in conditions.NUMERIC_OPS:
        if not (num(actual) and num(expected)):
            return False
        holds: bool = {
            "lt": actual < expected,
            "lte": actual <= expected,
            "gt": actual > expected,
            "gte": actual >= expected,
        }[op]
        return holds
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list):
            return any(json_equal(x, expected) for x in actual)
        return False
    if op == "regex":
        if not (isinstance(actual, str) and isinstance(expected, str)):
            return False
        try:
            return re.search(expected, actual) is not None  # the sampled patterns read alike
        except re.error:
            return False
    return False


def _value_for(op: str) -> st.SearchStrategy[Any]:
    if op in conditions.LIST_OPS:
        return st.lists(json_values, max_size=4)
    if op in conditions.NUMERIC_OPS:
        return st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    if op == "regex":
        return st.sampled_from(["a", "^a", "1", "[", "x|y", ""])
    if op == "exists":
        return st.booleans()
    return json_values


ops_and_values = st.sampled_from(conditions.OPERATORS).flatmap(
    lambda op: st.tuples(st.just(op), _value_for(op))
)


@given(arguments, ops_and_values)
def test_without_strict_types_operators_are_the_ancestors(
    actual: Any, op_value: tuple[str, Any]
) -> None:
    op, value = op_value
    assert evaluate(op, actual, value, strict=False) is _of(ancestor(op, actual, value))


@given(arguments, ops_and_values)
def test_strict_types_only_add_unknown(actual: Any, op_value: tuple[str, Any]) -> None:
    """Where strict evaluation knows the answer, it is the ancestor's answer."""
    op, value = op_value
    strict = evaluate(op, actual, value)
    if strict is not U:
        assert strict is evaluate(op, actual, value, strict=False)


@given(arguments, json_values)
def test_operators_never_raise(actual: Any, value: Any) -> None:
    for op in conditions.OPERATORS:
        for strict in (True, False):
            assert isinstance(evaluate(op, actual, value, strict=strict), Truth)


@given(json_values)
def test_json_equal_reflexive_and_eq_neq_complementary(value: Any) -> None:
    assert json_equal(value, value)
    assert evaluate("eq", value, value) is T
    assert evaluate("neq", value, value) is F


@given(arguments, json_values)
def test_neq_is_not_eq_and_not_in_is_not_in(actual: Any, value: Any) -> None:
    assert evaluate("neq", actual, value) is evaluate("eq", actual, value).negate()
    listed = [value]
    assert evaluate("not_in", actual, listed) is evaluate("in", actual, listed).negate()


@given(json_values, json_values)
def test_same_json_type_is_never_unknown_for_eq(actual: Any, value: Any) -> None:
    if conditions.json_type(actual) == conditions.json_type(value):
        assert evaluate("eq", actual, value) is not U


# -- the README quotes the operator table in the same words --------------------------------

README = Path(__file__).resolve().parents[3] / "README.md"


def _table_rows(lines: list[str]) -> list[tuple[str, ...]]:
    """Rows of a markdown table; a row with an empty first cell continues the one above."""
    rows: list[list[str]] = []
    for line in lines:
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if rows and not cells[0]:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return [tuple(row) for row in rows]


def _operator_table(text: str) -> list[tuple[str, ...]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith("|op|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return _table_rows(lines[start:end])


def test_readme_quotes_the_operator_table() -> None:
    documented = _operator_table(conditions.__doc__ or "")
    assert [row[0] for row in documented[1:]] == [f"`{op}`" for op in conditions.OPERATORS]
    assert _operator_table(README.read_text(encoding="utf-8")) == documented


def test_mapping_arguments() -> None:
    frozen: Mapping[str, Any] = {"a": {"b": 1}}
    assert check(Cond("args.a.b", "eq", 1), frozen).truth is T
