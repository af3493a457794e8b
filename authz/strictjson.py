"""The one strict JSON reader: bytes in, a JSON value or `StrictJsonError` out (pure).

MCP request bodies, policies, grants.json and approvers.json are all read here, with one
set of rules, so that what the sidecar judges is what any other JSON parser would read:

- UTF-8 only, without a byte-order mark;
- RFC 8259 syntax only: no NaN or Infinity, no comments, no single quotes, no raw control
  characters in strings, nothing after the value;
- no duplicate keys in any object, in any spelling (escapes are decoded before comparing);
- at most `MAX_DEPTH` (64) levels of nested arrays and objects;
- no lone surrogate escapes (a `\\ud800` without its pair is not Unicode text);
- number literals of at most `MAX_NUMBER_LITERAL` (64) characters, and no number that
  overflows a double (`1e999`);
- optionally (`max_values`), at most that many JSON values. They are counted on the bytes
  before anything is parsed: one plus the commas and opening brackets outside strings,
  an upper bound that is exact for a document without empty arrays or objects.

Nesting and the value count are checked on the text with the strings cut out, before
`json` builds anything, so neither deep nesting nor a flood of tiny values costs more than
a few passes of C string functions over the bytes. Every problem has a location: a JSON
path (as a tuple of keys and indexes) where one is known, else the document's root.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "MAX_NUMBER_LITERAL",
    "Loc",
    "Problem",
    "StrictJsonError",
    "TooManyValues",
    "json_path",
    "loads",
    "rough_values",
    "value_bound",
]

MAX_DEPTH: Final = 64
"""Deepest nesting of arrays and objects accepted (the top-level container is level 1)."""
MAX_NUMBER_LITERAL: Final = 64
"""Longest number literal accepted, in characters (Python's int() is quadratic in it)."""

Loc = tuple[str | int, ...]
"""Where a problem is: keys and indexes from the root; `()` is the document itself."""
Problem = tuple[Loc, str]

_BOM: Final = b"\xef\xbb\xbf"
_KEY_SHOWN: Final = 64
"""Longest key quoted in full in a message; longer keys are cut (a key is chosen by whoever
wrote the document, and a denial must stay small)."""


class StrictJsonError(ValueError):
    """The bytes are not one JSON value under the rules above.

    `problems` lists (location, message); `loc` and `message` are the first. Messages never
    quote a string value or a number from the document (keys, yes: they name the field).
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("a StrictJsonError needs at least one problem")
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.loc, self.message = self.problems[0]
        super().__init__(self.message)


_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def json_path(loc: Iterable[str | int]) -> str:
    """A location as a JSON path, for messages that name the field at fault:
    `('tools', 'a.b', 'deny_if', 0)` → `$.tools['a.b'].deny_if[0]` (a key that is not an
    identifier is quoted, so no two locations read alike)."""
    out = "$"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            out += f"['{escaped}']"
    return out


class TooManyValues(StrictJsonError):
    """The document holds more JSON values than the caller allows (checked before parsing)."""


def _show_key(key: str) -> str:
    shown = key if len(key) <= _KEY_SHOWN else key[:_KEY_SHOWN] + "…"
    return repr(shown)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _Marked(dict[str, Any]):
    """An object that remembers the keys it saw more than once (to locate duplicates)."""

    duplicates: list[str]


def _marking(pairs: list[tuple[str, Any]]) -> _Marked:
    obj = _Marked()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj and key not in obj.duplicates:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; use a finite number")


def _too_long() -> ValueError:
    return ValueError(f"a number literal is longer than {MAX_NUMBER_LITERAL} characters")


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_LITERAL:
        raise _too_long()
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_LITERAL:
        raise _too_long()
    value = float(literal)
    if math.isinf(value):
        raise ValueError("a number is out of range (it overflows to infinity); use a smaller one")
    return value


_STRICT = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_reject_constant,
    parse_float=_parse_float,
    parse_int=_parse_int,
    strict=True,
)
_LOCATING = json.JSONDecoder(
    object_pairs_hook=_marking,
    parse_constant=_reject_constant,
    parse_float=_parse_float,
    parse_int=_parse_int,
    strict=True,
)

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A `\\uD800`-`\\uDFFF` escape: the only way a lone surrogate gets into decoded text (the
bytes themselves are strictly UTF-8 decoded). It also matches an escaped backslash followed
by `ud8..`; that only costs the full check."""

_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _without_escaped_quotes(data: bytes) -> bytes:
    """`data` where every remaining `"` opens or closes a string (valid JSON assumed: for
    anything else the result is only used to refuse sooner). Escapes pair up from the left,
    so dropping every `\\\\` and then every `\\"` leaves exactly the delimiting quotes."""
    return data.replace(b"\\\\", b"").replace(b'\\"', b"")


def _outside(plain: bytes) -> bytes:
    """The pieces of `plain` (see `_without_escaped_quotes`) that are outside strings."""
    return b"".join(plain.split(b'"')[::2])


def _count_values(outside: bytes) -> int:
    return 1 + outside.count(b",") + outside.count(b"[") + outside.count(b"{")


def value_bound(data: bytes) -> int:
    """An upper bound of the JSON values in `data`: 1 + commas + opening brackets outside
    strings (each value is the document, the first item of a container, or after a comma).
    Exact for a document without empty arrays or objects."""
    return _count_values(_outside(_without_escaped_quotes(data)))


def rough_values(data: bytes) -> int:
    """A cheaper, looser bound than `value_bound`: commas and brackets inside strings count
    too (three passes of `bytes.count`)."""
    return 1 + data.count(b",") + data.count(b"[") + data.count(b"{")


def _too_many_values(data: bytes, max_values: int) -> bool:
    """`value_bound(data) > max_values`, at the cost of a few passes of C over the bytes:
    only a document with more commas and brackets than that is looked at closer, and one
    with more than twice as many strings has too many values anyway (a string is a value
    or the key of one), so the text is never cut into more than 4 * max_values pieces."""
    if rough_values(data) <= max_values:
        return False
    plain = _without_escaped_quotes(data)
    if plain.count(b'"') // 2 > 2 * max_values:
        return True
    return _count_values(_outside(plain)) > max_values


def _too_deep(data: bytes) -> bool:
    """Whether arrays and objects nest deeper than MAX_DEPTH (on the bytes, before parsing:
    `json` never recurses that deep)."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _outside(_without_escaped_quotes(data)).translate(None, _NOT_BRACKET)
    steps = map(_DEPTH_STEP.__getitem__, brackets)
    return max(itertools.accumulate(steps), default=0) > MAX_DEPTH


def loads(data: bytes, *, max_values: int | None = None) -> Any:
    """Read `data` as exactly one JSON value under the module's rules.

    `max_values` bounds the values (see `value_bound`), checked before parsing; past it
    `TooManyValues` is raised. Any other problem raises `StrictJsonError`.
    """
    if data.startswith(_BOM):
        raise StrictJsonError(
            [((), "starts with a byte-order mark (U+FEFF); save it as UTF-8 without one")]
        )
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise StrictJsonError([((), f"not valid UTF-8 at byte {exc.start}")]) from None
    if max_values is not None and _too_many_values(data, max_values):
        raise TooManyValues([((), f"more than {max_values} JSON values")])
    if _too_deep(data):
        raise StrictJsonError([((), f"nesting deeper than {MAX_DEPTH} levels")])
    try:
        value = _STRICT.decode(text)
    except _DuplicateKey as exc:
        raise StrictJsonError(_duplicates(text, exc.key)) from None
    except json.JSONDecodeError as exc:
        raise StrictJsonError(
            [((), f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
        ) from None
    except RecursionError:  # unreachable after the depth check; kept as a guard
        raise StrictJsonError([((), f"nesting deeper than {MAX_DEPTH} levels")]) from None
    except ValueError as exc:  # from the number and constant hooks
        raise StrictJsonError([((), str(exc))]) from None
    if _SURROGATE_ESCAPE.search(data) is not None:
        problem = _lone_surrogate(value)
        if problem is not None:
            raise StrictJsonError([problem])
    return value


def _duplicate(key: str) -> str:
    return f"duplicate key {_show_key(key)}; each key may appear once"


def _duplicates(text: str, first: str) -> list[Problem]:
    """Every duplicate key, with its path (the rare path: the text is read again). When
    the rest of the text is invalid too, only the first duplicate found, at the root."""
    try:
        root = _LOCATING.decode(text)
    except (ValueError, RecursionError):
        return [((), _duplicate(first))]
    problems: list[Problem] = []
    stack: list[tuple[Any, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, dict):
            for key in getattr(node, "duplicates", ()):
                problems.append(((*loc, key), _duplicate(key)))
            stack.extend((child, (*loc, key)) for key, child in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((child, (*loc, i)) for i, child in reversed(list(enumerate(node))))
    return problems


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(value: Any) -> Problem | None:
    """The first string or key holding a lone surrogate, in document order, if any."""
    stack: list[tuple[Any, Loc]] = [(value, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, str):
            if not _is_text(node):
                return (loc, "a string contains a lone surrogate escape; remove it")
        elif isinstance(node, dict):
            for key in node:
                if not _is_text(key):
                    return (loc, "a key contains a lone surrogate escape; remove it")
            stack.extend((child, (*loc, key)) for key, child in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((child, (*loc, i)) for i, child in reversed(list(enumerate(node))))
    return None
