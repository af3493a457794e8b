"""Patterns of `regex` conditions: RE2, searched in time linear in the text (pure, no I/O).

Every policy-controlled regular expression goes through `compile_pattern`, once, when the
policy loads; `Pattern.search` then runs RE2 (Google's `google-re2` bindings), which never
backtracks: `^(a+)+$` on a long run of `a` costs microseconds, not the exponential time of
Python's `re`. The syntax and meaning are RE2's, which is also Go's `regexp`, the engine of
PolicyLayer Intercept: `\\pL`, `\\p{Greek}`, `\\z`, `\\x{263a}` and `[[:alpha:]]` work as
they do there.

Patterns RE2 cannot compile are refused with a message that says what RE2 lacks:
backreferences (`\\1`, `(?P=name)`), lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`), atomic
groups and possessive quantifiers, `(?x)` verbose mode, `(?#...)` comments, the `(?a)`,
`(?u)`, `(?L)` flags (RE2's flags are `i`, `m`, `s`, `U`), `\\Z` (use `\\z`), `\\u00e9`
(use `\\x{e9}`) and more than 1000 repetitions. One form that both engines accept but read
differently is refused too, so that a pattern never silently changes meaning: `x{,3}` is
"zero to three" in Python but the literal text `x{,3}` in RE2 (write `x{0,3}`, or `\\{`
for a brace).

Same syntax, RE2's meaning (as in Go), worth knowing when porting a Python pattern:
- `$` without `(?m)` matches only at the very end of the text (Python's `$` also matches
  before a final newline);
- `\\d`, `\\w`, `\\s` and `\\b` are ASCII (Python's are Unicode: `\\d` matches `٣` there);
  use `\\pN`, `\\pL` or `[[:^space:]]`-style classes for Unicode;
- `[[:alpha:]]` is the POSIX class (Python reads `[[:alpha:]` plus a literal `]`).

Options (`_OPTIONS`): UTF-8 text and patterns (`.` is one code point); `max_mem` 8 MiB per
pattern (RE2's default, stated): it bounds the compiled program and the lazily built DFA
of each pattern, and a pattern too large for it is refused at load; no capture groups
(a search only needs whether it matches); errors are returned, never logged by RE2.

Search time is linear in the text, with a factor that grows with the pattern: an
unanchored counted gap such as `a.{100}b` can still cost about a second on a 1 MiB
argument built against it. Anchor such patterns or keep the counts small.
"""

from __future__ import annotations

from typing import Final

import re2

__all__ = ["MAX_MEM", "Pattern", "PatternError", "compile_pattern"]

MAX_MEM: Final = 8 << 20
"""Bytes of memory RE2 may use per pattern: program plus DFA cache (RE2's default)."""


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.log_errors = False
    options.never_capture = True
    return options


_OPTIONS: Final = _options()


class PatternError(ValueError):
    """A pattern RE2 cannot compile, or one it would read differently from Python's `re`."""


class Pattern:
    """A compiled RE2 pattern. Equal to another when the source text is the same."""

    __slots__ = ("_regexp", "source")

    def __init__(self, source: str, regexp: re2._Regexp[str]) -> None:
        self.source = source
        self._regexp = regexp

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in `text` (unanchored, like `re.search`)."""
        # bytes skip the binding's offset bookkeeping; surrogatepass keeps it total
        return self._regexp.search(text.encode("utf-8", "surrogatepass")) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"Pattern({self.source!r})"


def compile_pattern(source: str) -> Pattern:
    """Compile a policy pattern with RE2; raise `PatternError` saying what to change."""
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        raise PatternError("the pattern is not valid Unicode text (a lone surrogate)") from None
    found = _python_only_brace(source)
    if found is not None:
        at, brace = found
        raise PatternError(
            f"{brace!r} at position {at} means a repetition in Python but "
            f"literal text in RE2; write {'{0' + brace[1:]!r} for a repetition, or \\{{ for "
            "a literal brace"
        )
    try:
        regexp = re2.compile(source, _OPTIONS)
    except re2.error as exc:
        raise PatternError(_explain(source, exc)) from None
    return Pattern(source, regexp)


def _explain(source: str, exc: re2.error) -> str:
    raw = exc.args[0] if exc.args else ""
    reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    hint = _hint(source, reason)
    return f"RE2 cannot compile it: {reason}{'; ' + hint if hint else ''}"


_HINTS: Final[tuple[tuple[tuple[str, ...], str], ...]] = (
    (("(?=", "(?!", "(?<=", "(?<!"), "RE2 has no lookahead or lookbehind"),
    (("(?P=", "(?P>", "\\k<"), "RE2 has no backreferences"),
    (("(?>",), "RE2 has no atomic groups"),
    (("(?#",), "RE2 has no (?#...) comments"),
    (("(?x", "(?a", "(?u", "(?L"), "RE2's inline flags are i, m, s and U"),
    (("(?(",), "RE2 has no conditional groups"),
)


def _hint(source: str, reason: str) -> str:
    if "pattern too large" in reason:
        return f"it needs more than RE2's {MAX_MEM >> 20} MiB per pattern; simplify it"
    if "invalid repetition size" in reason:
        return "RE2 repeats at most 1000 times"
    if reason.startswith("bad repetition operator") and reason.rstrip().endswith("+"):
        return "RE2 has no possessive quantifiers; drop the second +"
    if reason.startswith("invalid escape sequence: \\"):
        escape = reason.removeprefix("invalid escape sequence: \\")[:1]
        if escape == "Z":
            return "RE2 has no \\Z; use \\z for the end of the text"
        if escape.isdigit():
            return "RE2 has no backreferences"
        if escape in "uU":
            return "write a code point as \\x{263a}"
    for starts, hint in _HINTS:
        if any(start in source for start in starts):
            return hint
    return ""


def _python_only_brace(source: str) -> tuple[int, str] | None:
    """The first `{,n}` / `{,}` outside a character class and not escaped, with its
    position, or None.

    Python's `re` reads it as a repetition (0 to n times); RE2 reads it as literal text.
    """
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char == "\\":
            if source.startswith("\\Q", i):  # RE2's literal text, up to \E
                end = source.find("\\E", i + 2)
                i = n if end < 0 else end + 2
            else:
                i += 2
        elif char == "[":
            i = _class_end(source, i)
        elif char == "{" and source.startswith("{,", i):
            j = i + 2
            while j < n and source[j].isascii() and source[j].isdigit():
                j += 1
            if j < n and source[j] == "}":
                return i, source[i : j + 1]
            i += 1
        else:
            i += 1
    return None


def _class_end(source: str, start: int) -> int:
    """The index after the `]` that closes the character class opened at `start`."""
    i, n = start + 1, len(source)
    if i < n and source[i] == "^":
        i += 1
    if i < n and source[i] == "]":  # a leading ] is literal
        i += 1
    while i < n:
        if source[i] == "\\":
            i += 2
        elif source.startswith("[:", i):  # [:alpha:] inside a class
            end = source.find(":]", i + 2)
            i = i + 1 if end < 0 else end + 2
        elif source[i] == "]":
            return i + 1
        else:
            i += 1
    return n
