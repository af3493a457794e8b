"""RE2 patterns of `regex` conditions: what compiles, what is refused and why, how it reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.policy.patterns import MAX_MEM, Pattern, PatternError, compile_pattern


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        (r"(a)\1", "RE2 has no backreferences"),
        ("(?P<n>a)(?P=n)", "RE2 has no backreferences"),
        (r"(?<n>a)\k<n>", "RE2 has no backreferences"),
        ("a(?=b)", "RE2 has no lookahead or lookbehind"),
        ("a(?!b)", "RE2 has no lookahead or lookbehind"),
        ("(?<=a)b", "RE2 has no lookahead or lookbehind"),
        ("(?<!a)b", "RE2 has no lookahead or lookbehind"),
        ("(?>a+)b", "RE2 has no atomic groups"),
        ("a++", "RE2 has no possessive quantifiers"),
        ("(?x) a b", "RE2's inline flags are i, m, s and U"),
        (r"(?a)\w", "RE2's inline flags are i, m, s and U"),
        (r"(?u)\w", "RE2's inline flags are i, m, s and U"),
        ("(?#note)a", "RE2 has no (?#...) comments"),
        ("(a)?(?(1)b|c)", "RE2 has no conditional groups"),
        (r"end\Z", r"RE2 has no \Z; use \z for the end of the text"),
        (r"\u263a", r"write a code point as \x{263a}"),
        ("a{1001}", "RE2 repeats at most 1000 times"),
        (r"\pL{1000}", f"it needs more than RE2's {MAX_MEM >> 20} MiB per pattern"),
        ("(unclosed", ""),
        ("[a-", ""),
    ],
)
def test_refused_with_a_reason(pattern: str, hint: str) -> None:
    with pytest.raises(PatternError) as raised:
        compile_pattern(pattern)
    message = str(raised.value)
    assert message.startswith("RE2 cannot compile it: ")
    assert hint in message


@pytest.mark.parametrize(
    ("pattern", "position", "brace"),
    [
        ("x{,3}", 1, "{,3}"),
        ("ab{,}", 2, "{,}"),
        ("[{]x{,12}", 4, "{,12}"),
        ("x{,3}y{,4}", 1, "{,3}"),
    ],
)
def test_python_only_repetition_is_refused(pattern: str, position: int, brace: str) -> None:
    """Python reads `x{,3}` as zero to three x; RE2 as the text "x{,3}": never silently."""
    with pytest.raises(PatternError) as raised:
        compile_pattern(pattern)
    assert str(raised.value).startswith(f"{brace!r} at position {position} means a repetition")
    assert "write '{0" in str(raised.value)


@pytest.mark.parametrize(
    "pattern",
    [r"\{,3}", "[{,3}]", "[]{,3}]", "[^]{,3}]", "[[:alpha:]{,3}]", r"\Q{,3}\E", "x{0,3}", "{,x}"],
)
def test_literal_braces_are_fine(pattern: str) -> None:
    compile_pattern(pattern)


def test_lone_surrogate_pattern_is_refused() -> None:
    with pytest.raises(PatternError, match="not valid Unicode"):
        compile_pattern("a\ud800")


@pytest.mark.parametrize(
    ("pattern", "text", "holds"),
    [
        (r"\pL+\z", "héllo", True),
        (r"\pL+\z", "héllo1", False),
        ("[[:alpha:]]+", "abc", True),
        ("[[:alpha:]]", ":]", False),
        ("^.$", "é", True),  # UTF-8: . is one code point
        ("foo$", "foo\n", False),  # $ is the end of the text without (?m), as in Go
        (r"\bfoo\b", "a foo b", True),
        (r"\d", "٣", False),  # ASCII classes, as in Go
        (r"\pN", "٣", True),
        ("(?i)straße", "STRASSE", False),  # simple case folding only
        ("(?s)a.b", "a\nb", True),
        ("a.b", "a\nb", False),
        ("(?U)a+", "aaa", True),  # RE2's ungreedy flag
        ("^(a+)+$", "a" * 100_000 + "!", False),  # linear time: exponential in Python's re
        ("(x+x+)+y", "x" * 100_000, False),
        ("", "", True),
    ],
)
def test_search_reads_like_re2(pattern: str, text: str, holds: bool) -> None:
    assert compile_pattern(pattern).search(text) is holds


def test_search_never_raises_on_lone_surrogates() -> None:
    assert compile_pattern("a").search("\ud800a") is True


def test_patterns_compare_by_source() -> None:
    one, two, other = compile_pattern("^a"), compile_pattern("^a"), compile_pattern("^b")
    assert one == two and hash(one) == hash(two) and one != other
    assert one != "^a"
    assert repr(one) == "Pattern('^a')" and isinstance(one, Pattern)


@given(st.text(max_size=12))
def test_compile_never_raises_anything_but_pattern_error(source: str) -> None:
    try:
        pattern = compile_pattern(source)
    except PatternError as err:
        assert str(err)
    else:
        assert pattern.search(source) in (True, False)
