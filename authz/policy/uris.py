"""Resource URI patterns: an exact URI, or an RFC 6570 level-1/2 template (pure, no I/O).

A pattern is a key of a policy's `resources` section (or an entry of `hide.resources`):

- an exact URI, matched byte for byte (case-sensitive: `FILE:///a` is not `file:///a`,
  `file:///a/` is not `file:///a`);
- a template: literal text and variables. `{name}` matches one or more characters that are
  not `/`, `?` or `#`; `{+name}` (reserved expansion) one or more characters of any kind.
  The whole URI must match (anchored). Variable names are `[A-Za-z0-9_]+`.

Refused at load, each with a message saying what would fix it: an empty pattern,
unbalanced braces, a variable named `uri` (it would shadow `args.uri`), a name used twice,
two variables without literal text between them, more than one `{+name}`, and the other
RFC 6570 forms (`{#x}`, `{?x}`, `{/x}`, `{.x}`, `{;x}`, `{&x}`, `{x,y}`, `{x*}`, `{x:3}`).

**What the gateway judges is what the server reads.** The MCP Python SDK (`mcp` 2.3,
`mcp.shared.uri_template.UriTemplate.match`, behind `MCPServer`'s resource templates) reads
a URI with its own rules: a `{name}` value ends at `/`, `?`, `#`, `&` or `,`; a `{+name}`
value may not contain `?` or `#`; a value may be empty; bounded values before a `{+name}`
end at the first occurrence of the literal that follows them, those after it at the last;
every value is percent-decoded once (`urllib.parse.unquote`: `%2F` becomes `/`, `%2e%2e`
becomes `..`); a URI longer than 65,536 characters matches no template. A static resource
is found by exact string equality. `UriPattern.match` reads the URI the SDK's way
(`_server_reading`) and gives conditions exactly the values the SDK would pass to the
resource function (decoded). Where two readings part, the match is `AMBIGUOUS`, and the
engine denies the request: the policy never judges a URI by another reading than the
server's. They part when:

- the SDK would serve the URI through this template with an empty value;
- the pattern above matches a URI the SDK's reading does not, such as `docs://a,b` for
  `docs://{name}` or `x://a?b` for `x://{+p}`;
- the URI decoded once (`%73ecret` → `secret`) reads otherwise than the URI as sent: an
  exact pattern equal to the decoded URI, or other values (a value encoded twice). The SDK
  decodes the values it passes on, so `file:///data/%73ecret.txt` reaches the function of
  `file:///data/{name}` as `secret.txt`, the file an exact pattern
  `file:///data/secret.txt` names;
- a value would name another file than its text when a function reads it as a path (as
  the SDK recommends: `safe_join`, which resolves dot segments): a segment between `/` or
  `\\` that is empty, `.` or `..` (`./secret.txt`, `public/../secret.txt`, `/secret.txt`,
  `a//b`, `a/`, whether sent as is or encoded as `%2F` and `%2e`), or a NUL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

import re2

__all__ = [
    "AMBIGUOUS",
    "MAX_SERVER_URI",
    "NO_MATCH",
    "UriMatch",
    "UriPattern",
    "UriPatternError",
    "is_template",
    "parse_pattern",
]

MAX_SERVER_URI: Final = 65_536
"""Longest URI the SDK matches against a template (`DEFAULT_MAX_URI_LENGTH`); longer ones
match no template there."""

_NAME: Final = re.compile(r"[A-Za-z0-9_]+")
_OTHER_OPERATORS: Final = "#?/.;&=,!@|"
_SIMPLE_STOPS: Final = frozenset("/?#&,")
"""Where the SDK ends a `{name}` value."""
_RESERVED_STOPS: Final = frozenset("?#")
"""What the SDK refuses inside a `{+name}` value."""
_SIMPLE_CLASS: Final = "[^/?#]+"
_RESERVED_CLASS: Final = "(?s:.+)"


class UriPatternError(ValueError):
    """A pattern that cannot be used; the message says what would fix it."""


@dataclass(frozen=True, slots=True)
class _Var:
    name: str
    reserved: bool


_Atom = str | _Var


@dataclass(frozen=True, slots=True)
class UriMatch:
    """How a URI reads against one pattern: `variables` when it matches (the template's
    values, decoded as the server decodes them), `ambiguous` when the server's reading and
    the pattern's differ (the engine denies), neither when it does not match."""

    variables: Mapping[str, str] | None = None
    ambiguous: bool = False

    @property
    def matched(self) -> bool:
        return self.variables is not None


NO_MATCH: Final = UriMatch()
AMBIGUOUS: Final = UriMatch(ambiguous=True)
_EXACT: Final = UriMatch(variables={})


def is_template(text: str) -> bool:
    """Whether `text` holds a `{...}` expression (a `{` followed later by a `}`), the
    SDK's own test for a template among URIs."""
    opening = text.find("{")
    return opening != -1 and text.find("}", opening) != -1


@dataclass(frozen=True, slots=True)
class UriPattern:
    """A parsed pattern (`parse_pattern`); `match` reads a URI against it."""

    text: str
    atoms: tuple[_Atom, ...]
    variables: tuple[str, ...]
    _whole: re2._Regexp[str] | None = field(default=None, compare=False, repr=False)

    @property
    def exact(self) -> bool:
        """An exact URI (no variables)."""
        return not self.variables

    def match(self, uri: str) -> UriMatch:
        """`uri` read against this pattern (see the module docstring): the server's reading
        of the URI as sent, checked against the pattern's, against the reading of the URI
        once decoded, and for values a path would read otherwise."""
        found = self._read(uri)
        if found.variables is not None and not all(map(_plain, found.variables.values())):
            return AMBIGUOUS  # a handler reading the value as a path reads another value
        decoded = unquote(uri)
        if decoded != uri:
            again = self._read(decoded)
            if again.ambiguous or (again.matched and again.variables != found.variables):
                return AMBIGUOUS  # another spelling of a URI the pattern reads otherwise
        return found

    def _read(self, uri: str) -> UriMatch:
        """`uri` as sent, read by the server and by the pattern."""
        if not self.variables:
            return _EXACT if uri == self.text else NO_MATCH
        first, last = self.atoms[0], self.atoms[-1]
        if (isinstance(first, str) and not uri.startswith(first)) or (
            isinstance(last, str) and not uri.endswith(last)
        ):
            return NO_MATCH  # both readings anchor the first and the last literal
        values = _server_reading(self.atoms, uri)
        if values is not None:
            if all(values.values()):
                return UriMatch(variables=values)
            return AMBIGUOUS  # the server would serve it with an empty value
        assert self._whole is not None
        if self._whole.fullmatch(uri) is not None:
            return AMBIGUOUS  # the pattern matches a URI the server reads otherwise
        return NO_MATCH


_SEPARATORS: Final = re.compile(r"[/\\]")


def _plain(value: str) -> bool:
    """Whether a (decoded) value reads the same as a path: no NUL (where C stops reading),
    and no segment, between `/` or `\\`, that is empty, `.` or `..` (which a path resolves:
    `./secret`, `a/../secret`, `/secret`, `a//b` and `a/` all name another file than their
    text)."""
    if "\0" in value:
        return False
    return all(part not in ("", ".", "..") for part in _SEPARATORS.split(value))


def parse_pattern(text: str) -> UriPattern:
    """Parse a resource pattern; raises `UriPatternError` with what would fix it."""
    if not text:
        raise UriPatternError("a resource pattern must not be empty; write a URI or a template")
    atoms: list[_Atom] = []
    names: list[str] = []
    i = 0
    while i < len(text):
        opening = text.find("{", i)
        closing = text.find("}", i)
        if closing != -1 and (opening == -1 or closing < opening):
            raise UriPatternError(
                f"'}}' at position {closing} closes no '{{'; templates use {{name}} or {{+name}}"
            )
        if opening == -1:
            atoms.append(text[i:])
            break
        if opening > i:
            atoms.append(text[i:opening])
        end = text.find("}", opening)
        if end == -1:
            raise UriPatternError(f"'{{' at position {opening} is never closed; add '}}'")
        var = _variable(text[opening + 1 : end], opening)
        if atoms and isinstance(atoms[-1], _Var):
            raise UriPatternError(
                f"variables {atoms[-1].name!r} and {var.name!r} have no literal text between "
                "them, so no reading can tell where one ends; put text between them or use "
                "one variable"
            )
        if var.name in names:
            raise UriPatternError(f"variable {var.name!r} is used twice; rename one")
        atoms.append(var)
        names.append(var.name)
        i = end + 1
    reserved = [a.name for a in atoms if isinstance(a, _Var) and a.reserved]
    if len(reserved) > 1:
        raise UriPatternError(
            f"{{+{reserved[0]}}} and {{+{reserved[1]}}}: a template may have one {{+name}} "
            "variable (with two, which one takes an extra segment is ambiguous)"
        )
    whole = None
    if names:
        regex = "".join(
            re2.escape(a)
            if isinstance(a, str)
            else (_RESERVED_CLASS if a.reserved else _SIMPLE_CLASS)
            for a in atoms
        )
        whole = re2.compile(regex, _OPTIONS)
    return UriPattern(text, tuple(atoms), tuple(names), whole)


def _variable(body: str, position: int) -> _Var:
    """The variable of the expression `{body}` at `position`."""
    reserved = body.startswith("+")
    name = body[1:] if reserved else body
    shown = "{" + body + "}"
    if not body:
        raise UriPatternError(f"empty expression '{{}}' at position {position}; name it")
    if body[0] in _OTHER_OPERATORS:
        raise UriPatternError(
            f"{shown}: the RFC 6570 operator {body[0]!r} is not supported; use {{name}} (one "
            "segment) or {+name} (any characters)"
        )
    if "," in name:
        raise UriPatternError(f"{shown}: one variable per expression; write {{a}}-{{b}}")
    if name.endswith("*") or ":" in name:
        raise UriPatternError(
            f"{shown}: explode ('*') and prefix (':N') modifiers are not supported; use "
            "{name} or {+name}"
        )
    if _NAME.fullmatch(name) is None:
        raise UriPatternError(
            f"{shown}: a variable name is letters, digits and '_' ([A-Za-z0-9_]+)"
        )
    if name == "uri":
        raise UriPatternError(
            f"{shown}: a variable named 'uri' would shadow args.uri (the whole URI); rename it"
        )
    return _Var(name, reserved)


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    return options


_OPTIONS: Final = _options()


# -- the server's reading (mcp 2.3 `UriTemplate.match`, for {name} and {+name}) ------------


def _server_reading(atoms: tuple[_Atom, ...], uri: str) -> dict[str, str] | None:
    """The values the SDK's template matcher extracts from `uri` (decoded), or None when it
    does not match. A two-ended scan without backtracking: the literal and the bounded
    variables after the `{+name}` variable are read from the right, those before it from
    the left, and the `{+name}` variable takes what is left between them."""
    if len(uri) > MAX_SERVER_URI:
        return None
    greedy = next((i for i, a in enumerate(atoms) if isinstance(a, _Var) and a.reserved), None)
    if greedy is None:
        read = _from_right(atoms, uri, len(uri), anchored=True)
        if read is None or read[1] != 0:
            return None
        return read[0]
    right = _from_right(atoms[greedy + 1 :], uri, len(uri), anchored=False)
    if right is None:
        return None
    after, right_start = right
    left = _from_left(atoms[:greedy], uri, right_start)
    if left is None:
        return None
    before, left_end = left
    if right_start < left_end:
        return None
    middle = uri[left_end:right_start]
    if any(c in _RESERVED_STOPS for c in middle):
        return None
    var = atoms[greedy]
    assert isinstance(var, _Var)
    return {**before, var.name: unquote(middle), **after}


def _from_right(
    atoms: tuple[_Atom, ...], uri: str, end: int, *, anchored: bool
) -> tuple[dict[str, str], int] | None:
    """Read `atoms` leftwards from `end`: each `{name}` takes the shortest span that lets
    the literal before it end where the span starts (its rightmost occurrence; the very
    first literal of an anchored template sits at 0)."""
    values: dict[str, str] = {}
    pos = end
    for i in range(len(atoms) - 1, -1, -1):
        atom = atoms[i]
        if isinstance(atom, str):
            if not uri.endswith(atom, 0, pos):
                return None
            pos -= len(atom)
            continue
        earliest = pos
        while earliest > 0 and uri[earliest - 1] not in _SIMPLE_STOPS:
            earliest -= 1
        previous = atoms[i - 1] if i > 0 else None
        if previous is None:
            start = earliest
        else:
            assert isinstance(previous, str)
            if anchored and i == 1:
                start = len(previous)
                if start < earliest or start > pos:
                    return None
            else:
                found = uri.rfind(previous, 0, pos)
                if found == -1 or found + len(previous) < earliest:
                    return None
                start = found + len(previous)
        values[atom.name] = unquote(uri[start:pos])
        pos = start
    return values, pos


def _from_left(atoms: tuple[_Atom, ...], uri: str, limit: int) -> tuple[dict[str, str], int] | None:
    """Read `atoms` rightwards from 0, not past `limit`: each `{name}` ends at the first
    occurrence of the literal after it."""
    values: dict[str, str] = {}
    pos = 0
    for i, atom in enumerate(atoms):
        if isinstance(atom, str):
            end = pos + len(atom)
            if end > limit or uri[pos:end] != atom:
                return None
            pos = end
            continue
        following = atoms[i + 1]
        assert isinstance(following, str)
        latest = pos
        while latest < limit and uri[latest] not in _SIMPLE_STOPS:
            latest += 1
        end = uri.find(following, pos, latest + len(following))
        if end == -1:
            return None
        values[atom.name] = unquote(uri[pos:end])
        pos = end
    return values, pos
