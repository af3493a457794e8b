"""Listings, pure: cutting what a grant may not see out of JSON-RPC text.

What that is, per listing array, is the engine's (`authz.engine.listing_filter`, a
`ListingFilter`): `result.tools` elements by `name`, `result.resources` by `uri`,
`result.resourceTemplates` by `uriTemplate`, `result.prompts` by `name`
(`authz.model.LISTINGS`).

- `filter_listing(text, listing)`: one JSON-RPC message (or a batch) as text → the same text
  without the hidden elements of every array the filter names, in every `result`, whatever
  the message's id. Only those elements (and their separators) are cut: `nextCursor`, other
  members and every other byte keep their exact bytes, and a message that loses nothing is
  returned as it came. `filter_tools(text, hides)` is the same for `result.tools` alone.
- `ListingScanner`: for a message too large to hold, reads it piece by piece and stops at
  the first `result.<array>` array of the arrays it looks for, so the caller can withhold
  it (the response phase fails closed there rather than pass a listing unread).

Nothing here raises on upstream bytes except `Unparsable`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from authz import strictjson
from authz.model import LISTINGS, Definitions, Hides, ListingFilter, RequestId
from authz.response.jsonrpc import Unparsable, parse_message

__all__ = ["TOOLS", "ListingScanner", "filter_listing", "filter_tools"]

TOOLS: Final = frozenset({"tools"})
"""The arrays a tools-only filter cuts (and a scanner looks for by default)."""

_ELEMENT_KEY: Final = {array: key for array, key, _ in LISTINGS}


# -- cutting hidden tools out of the raw JSON text -----------------------------------------

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_WS = re.compile(r"[ \t\n\r]*")
_STRUCTURE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[,\]}\s]|\Z")


def _skip_ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    assert match is not None
    return match.end()


def _value_end(text: str, i: int) -> int:
    """The end of the JSON value starting at `i` (the text is known to be valid JSON)."""
    char = text[i]
    if char == '"':
        match = _STRING.match(text, i)
        if match is None:
            raise Unparsable("unterminated string")
        return match.end()
    if char not in "[{":
        end = _SCALAR_END.search(text, i)
        assert end is not None
        return end.start()
    depth = 0
    pos = i
    while True:
        match = _STRUCTURE.search(text, pos)
        if match is None:
            raise Unparsable("unterminated container")
        char = match.group()
        if char == '"':
            string = _STRING.match(text, match.start())
            if string is None:
                raise Unparsable("unterminated string")
            pos = string.end()
            continue
        depth += 1 if char in "[{" else -1
        pos = match.end()
        if depth == 0:
            return pos


def _members(text: str, i: int) -> list[tuple[str, int, int]]:
    """(key, value start, value end) of the object starting at `i`, duplicates included."""
    members: list[tuple[str, int, int]] = []
    pos = _skip_ws(text, i + 1)
    if text[pos] == "}":
        return members
    while True:
        key_match = _STRING.match(text, pos)
        if key_match is None:
            raise Unparsable("object key expected")
        key = json.loads(key_match.group())
        pos = _skip_ws(text, key_match.end())
        pos = _skip_ws(text, pos + 1)  # the ':'
        end = _value_end(text, pos)
        members.append((key, pos, end))
        pos = _skip_ws(text, end)
        if text[pos] == "}":
            return members
        pos = _skip_ws(text, pos + 1)  # the ','


def _elements(text: str, i: int) -> tuple[list[tuple[int, int]], int]:
    """((start, end) of each element, position of the closing bracket) of an array at `i`."""
    elements: list[tuple[int, int]] = []
    pos = _skip_ws(text, i + 1)
    if text[pos] == "]":
        return elements, pos
    while True:
        end = _value_end(text, pos)
        elements.append((pos, end))
        pos = _skip_ws(text, end)
        if text[pos] == "]":
            return elements, pos
        pos = _skip_ws(text, pos + 1)


def _hidden(text: str, start: int, hides: Hides, key: str) -> bool:
    """Whether the element at `start` is hidden: by any of its string `key` members (a
    parser that keeps the first duplicate and one that keeps the last must both not see it),
    or as an element without one (`hides(None)`)."""
    if text[start] != "{":
        return hides(None)
    values = [json.loads(text[s:e]) for name, s, e in _members(text, start) if name == key]
    strings = [value for value in values if isinstance(value, str)]
    if not strings:
        return hides(None)
    return any(hides(value) for value in strings)


def _drifted(text: str, start: int, end: int, definitions: Definitions) -> bool:
    """Whether the tool element at `start` is cut for its definition. An element that is
    not an object, or that has a key twice (two parsers could read two definitions), is."""
    if text[start] != "{":
        return True
    try:
        element = strictjson.loads(text[start:end].encode("utf-8", "surrogatepass"))
    except strictjson.StrictJsonError:
        return True
    return not isinstance(element, dict) or definitions(element)


def _cut(
    text: str, start: int, listing: ListingFilter, removed: dict[str, int]
) -> list[tuple[int, int, str]]:
    """Edits that remove hidden elements from every array the filter names in the `result`
    of the message object at `start` (every duplicate `result` and array member included);
    `removed` counts them per array."""
    edits: list[tuple[int, int, str]] = []
    for key, value_start, _ in _members(text, start):
        if key != "result" or text[value_start] != "{":
            continue
        for array, array_start, array_end in _members(text, value_start):
            hides = listing.arrays.get(array)
            if hides is None or text[array_start] != "[":
                continue
            element_key = _ELEMENT_KEY[array]
            elements, close = _elements(text, array_start)
            definitions = listing.definitions if array == "tools" else None
            kept = [
                (s, e)
                for s, e in elements
                if not (definitions is not None and _drifted(text, s, e, definitions))
                and not _hidden(text, s, hides, element_key)
            ]
            if len(kept) == len(elements):
                continue
            removed[array] = removed.get(array, 0) + len(elements) - len(kept)
            if not kept:
                replacement = "[]"
            else:
                separator = text[elements[0][1] : elements[1][0]] if len(elements) > 1 else ","
                leading = text[array_start + 1 : elements[0][0]]
                trailing = text[elements[-1][1] : close]
                body = separator.join(text[s:e] for s, e in kept)
                replacement = f"[{leading}{body}{trailing}]"
            edits.append((array_start, array_end, replacement))
    return edits


def filter_listing(text: str, listing: ListingFilter) -> tuple[str, dict[str, int], Any]:
    """Remove the elements `listing` hides from every array it names in `text`.

    `text` is one JSON-RPC message, or a batch (an array of them); the message's id and
    method do not matter. Returns (text, elements removed per array, the parsed value of
    the original text). When nothing is removed, `text` itself is returned. Only the
    removed array elements (and their separators) are cut from the text.

    Raises `Unparsable` when `text` is not JSON.
    """
    message = parse_message(text)
    start = _skip_ws(text, 0)
    if isinstance(message, dict):
        objects = [start]
    elif isinstance(message, list):
        objects = [s for s, _ in _elements(text, start)[0] if text[s] == "{"]
    else:
        return text, {}, message
    edits: list[tuple[int, int, str]] = []
    removed: dict[str, int] = {}
    for obj in objects:
        edits += _cut(text, obj, listing, removed)
    if not removed:
        return text, removed, message
    for edit_start, edit_end, replacement in sorted(edits, reverse=True):
        text = text[:edit_start] + replacement + text[edit_end:]
    return text, removed, message


def filter_tools(text: str, hides: Hides) -> tuple[str, int, Any]:
    """Remove the tools `hides` names from every `result.tools` array in `text`
    (`filter_listing` of that array alone): (text, tools removed, the parsed value of the
    original text)."""
    new, removed, message = filter_listing(text, ListingFilter.tools(hides))
    return new, removed.get("tools", 0), message


# -- reading a message too large to hold --------------------------------------------------------

_B_WS: Final = re.compile(rb"[ \t\n\r]*")
_B_OPAQUE_STOP: Final = re.compile(rb'["\[\]{}]')
_B_SCALAR: Final = re.compile(rb'[^ \t\n\r,\]}:\[{"]*')
_MAX_KEY: Final = 128
"""Encoded bytes kept of a key: `"id"`, `"result"` and the array names (the longest,
`"resourceTemplates"`, is 17 characters) fit even fully escaped (6 bytes each)."""
_MAX_ID: Final = 600
"""Encoded bytes kept of an id (the request phase refuses ids over 256 bytes)."""

_MESSAGE, _BATCH, _RESULT = "message", "batch", "result"


@dataclass(slots=True)
class _Frame:
    kind: str  # "{" or "["
    role: str  # _MESSAGE, _BATCH or _RESULT
    state: str
    key: str | None = None


@dataclass(slots=True)
class ListingScanner:
    """Reads one JSON-RPC message (or batch) piece by piece, holding nothing but a key or an
    id, and stops at the first `result.<array>` array of a message, for the `arrays` it
    looks for (`result.tools` unless told otherwise).

    `feed(data)` returns the offset in `data` of that array's `[` (every byte before it is
    free of listing elements), or None. Afterwards `found` is True and `feed` reads no
    more. A byte sequence that is not JSON sets `broken` (a strict parser would refuse it
    too). `message_id` is the message's id when it came before the find (and the value is
    not a batch); None otherwise.
    """

    arrays: frozenset[str] = TOOLS
    found: bool = False
    broken: bool = False
    message_id: RequestId = None
    _stack: list[_Frame] = field(default_factory=list)
    _opaque: int = 0
    """Depth inside a container nobody looks into."""
    _string: str | None = None
    """In a string: `key`, `id` (kept) or `skip`."""
    _escape: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _scalar: str | None = None
    """In a number or literal: `id` (kept) or `skip`."""
    _started: bool = False
    _ended: bool = False

    def feed(self, data: bytes) -> int | None:
        if self.found or self.broken:
            return None
        i, n = 0, len(data)
        while i < n:
            if self._string is not None:
                i = self._in_string(data, i)
            elif self._opaque:
                match = _B_OPAQUE_STOP.search(data, i)
                if match is None:
                    return None
                char, i = data[match.start()], match.end()
                if char == 0x22:  # "
                    self._string = "skip"
                elif char in b"[{":
                    self._opaque += 1
                else:
                    self._opaque -= 1
                    if not self._opaque:
                        self._value_done()
            elif self._scalar is not None:
                match = _B_SCALAR.match(data, i)
                assert match is not None
                if self._scalar == "id" and len(self._buf) <= _MAX_ID:
                    self._buf += match.group()
                i = match.end()
                if i < n:
                    self._scalar_done()
            else:
                match = _B_WS.match(data, i)
                assert match is not None
                i = match.end()
                if i >= n:
                    break
                cut = self._token(data[i], i)
                if self.found:
                    return cut
                if self.broken:
                    return None
                i += 1
        return None

    # -- internals -------------------------------------------------------------------

    def _in_string(self, data: bytes, i: int) -> int:
        keep = self._string in ("key", "id")
        if self._escape:
            if keep:
                self._buf += data[i : i + 1]
            self._escape = False
            return i + 1
        stops = [at for at in (data.find(b'"', i), data.find(b"\\", i)) if at >= 0]
        end = min(stops) if stops else len(data)  # memchr: a long string (base64) is fast
        if keep and len(self._buf) <= _MAX_KEY + _MAX_ID:
            self._buf += data[i:end]
        if not stops:
            return end
        if data[end] == 0x5C:  # backslash
            if keep:
                self._buf += b"\\"
            self._escape = True
            return end + 1
        role, self._string = self._string, None
        if role == "key":
            self._key_done()
        elif role == "id":
            self._id_done(b'"' + bytes(self._buf) + b'"')
        else:
            self._value_done()
        return end + 1

    def _key_done(self) -> None:
        frame = self._stack[-1]
        frame.key = None
        if len(self._buf) <= _MAX_KEY:
            try:
                key = json.loads(b'"' + bytes(self._buf) + b'"')
            except ValueError:
                key = None
            frame.key = key if isinstance(key, str) else None
        frame.state = "colon"

    def _id_done(self, raw: bytes) -> None:
        if len(raw) <= _MAX_ID and len(self._stack) == 1:
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str):
                self.message_id = value
        self._value_done()

    def _scalar_done(self) -> None:
        role, self._scalar = self._scalar, None
        if role == "id":
            self._id_done(bytes(self._buf))
        else:
            self._value_done()

    def _value_done(self) -> None:
        if not self._stack:
            self._ended = True
            return
        self._stack[-1].state = "comma"

    def _value_role(self) -> str | None:
        """What the value about to start is (a message, a batch, a result) or None."""
        if not self._stack:
            return "top"
        frame = self._stack[-1]
        if frame.role == _BATCH:
            return _MESSAGE
        if frame.role == _MESSAGE:
            return {"result": _RESULT, "id": "id"}.get(frame.key or "")
        if frame.role == _RESULT and frame.key in self.arrays:
            return "listing"
        return None

    def _token(self, char: int, pos: int) -> int:
        if self._ended:
            self.broken = True  # trailing data
            return pos
        frame = self._stack[-1] if self._stack else None
        state = frame.state if frame is not None else "value"
        if state in ("key_or_end", "key"):
            assert frame is not None
            if char == 0x22:
                self._string, self._buf = "key", bytearray()
            elif char == 0x7D and state == "key_or_end":  # }
                self._close()
            else:
                self.broken = True
            return pos
        if state == "colon":
            assert frame is not None
            if char == 0x3A:  # :
                frame.state = "value"
            else:
                self.broken = True
            return pos
        if state == "comma":
            assert frame is not None
            if char == 0x2C:  # ,
                frame.state = "key" if frame.kind == "{" else "value"
            elif (char == 0x7D and frame.kind == "{") or (char == 0x5D and frame.kind == "["):
                self._close()
            else:
                self.broken = True
            return pos
        # a value starts here (or an empty array ends)
        if char == 0x5D and frame is not None and frame.kind == "[" and state == "value_or_end":
            self._close()
            return pos
        self._started = True
        role = self._value_role()
        if char == 0x5B and role == "listing":  # [
            self.found = True
            return pos
        if char == 0x7B and role in ("top", _MESSAGE, _RESULT):  # {
            self._stack.append(_Frame("{", _MESSAGE if role == "top" else role, "key_or_end"))
        elif char == 0x5B and role == "top":
            self._stack.append(_Frame("[", _BATCH, "value_or_end"))
        elif char in b"[{":
            self._opaque = 1
        elif char == 0x22:
            self._string, self._buf = ("id" if role == "id" else "skip"), bytearray()
        elif char in b",:]}":
            self.broken = True
        else:
            self._scalar = "id" if role == "id" else "skip"
            self._buf = bytearray([char])
        return pos

    def _close(self) -> None:
        self._stack.pop()
        self._value_done()
