"""Server-sent events, pure: cutting a `text/event-stream` body into events as bytes arrive.

- `SseSplitter`: complete events (held only while in progress, at most `limit` bytes), and
  the bytes of a longer event as they come, marked so the caller knows where it ends.
- `event_payload`: the data of one event (its `data:` lines joined by LF).
- `rewrite_event`: the same event with other data; every other line (`id:`, `event:`,
  `retry:`, comments) and every line end is kept.
- `SseDataReader`: the data of an event too long to hold, fed piece by piece to a
  `ListingScanner`, with offsets mapped back to the raw bytes.

Line ends may be CRLF, LF or CR, and a chunk may end anywhere (inside a CRLF too).
"""

from __future__ import annotations

import enum
import re
from typing import Final

from authz.response.jsonrpc import Unparsable
from authz.response.listing import ListingScanner

__all__ = [
    "Segment",
    "SseDataReader",
    "SseSplitter",
    "event_payload",
    "rewrite_event",
]

_EOL: Final = re.compile(rb"[\r\n]")
_LINE: Final = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|\Z)")
_FIELD: Final = re.compile(rb"[^:\r\n]*")


class Segment(enum.Enum):
    """What a piece of the stream returned by `SseSplitter.feed` is."""

    EVENT = "event"
    """A complete event, ending with its blank line."""
    PART = "part"
    """Bytes of an event longer than the limit; more of it follows."""
    LAST = "last"
    """The last bytes of an event longer than the limit, ending with its blank line."""


class SseSplitter:
    """Cuts a `text/event-stream` body into events as bytes arrive.

    `feed` returns (bytes, Segment) pieces in order; they concatenate to exactly the bytes
    fed. Only the event in progress is held, never more than `limit` bytes of it: an event
    that grows past the limit comes out as PART pieces (the first one is everything held so
    far) and ends with a LAST piece.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = bytearray()
        self._line_empty = True
        self._after_cr = False
        self._skipping = False
        self.oversized = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def _boundaries(self, data: bytes) -> list[int]:
        """Offsets in `data` just after each blank line (the end of an event)."""
        if b"\n" not in data and b"\r" not in data:  # a piece of a long line (base64, say)
            if data:
                self._line_empty, self._after_cr = False, False
            return []
        ends: list[int] = []
        pos = 0
        for match in _EOL.finditer(data):
            i = match.start()
            if i > pos:
                self._line_empty, self._after_cr = False, False
            if data[i] == 0x0A and self._after_cr and i == pos:
                self._after_cr = False  # the LF of a CRLF
                if ends and ends[-1] == i:
                    ends[-1] = i + 1
                pos = i + 1
                continue
            if self._line_empty:
                ends.append(i + 1)
            self._line_empty = True
            self._after_cr = data[i] == 0x0D
            pos = i + 1
        if pos < len(data):
            self._line_empty, self._after_cr = False, False
        return ends

    def feed(self, data: bytes) -> list[tuple[bytes, Segment]]:
        out: list[tuple[bytes, Segment]] = []
        start = 0
        for end in self._boundaries(data):
            piece = data[start:end]
            if self._skipping:
                out.append((piece, Segment.LAST))
                self._skipping = False
            else:
                event = bytes(self._held) + piece
                self._held.clear()
                if len(event) > self._limit:
                    self.oversized += 1
                    out.append((event, Segment.PART))
                    out.append((b"", Segment.LAST))
                else:
                    out.append((event, Segment.EVENT))
            start = end
        tail = data[start:]
        if self._skipping:
            if tail:
                out.append((tail, Segment.PART))
        else:
            self._held += tail
            if len(self._held) > self._limit:
                out.append((bytes(self._held), Segment.PART))
                self._held.clear()
                self._skipping = True
                self.oversized += 1
        return out

    def finish(self) -> bytes:
        """The bytes of an event that never ended (held, not yet returned)."""
        rest = bytes(self._held)
        self._held.clear()
        return rest

    @property
    def in_long_event(self) -> bool:
        """Whether the stream stopped inside an event longer than the limit."""
        return self._skipping


def _event_lines(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(content, terminator) of each line of one event."""
    lines = []
    pos = 0
    while pos < len(raw):
        match = _LINE.match(raw, pos)
        assert match is not None
        lines.append((match.group(1), match.group(2)))
        pos = match.end()
    return lines


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, colon, value = line.partition(b":")
    if colon and value.startswith(b" "):
        value = value[1:]
    return name, value


def event_payload(raw: bytes) -> tuple[str, str | None]:
    """(event type, data) of one event: the data lines joined by LF, None without any.

    Raises `Unparsable` when the event is not UTF-8.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unparsable("SSE event is not UTF-8") from None
    kind = b"message"
    data: list[bytes] = []
    for content, _ in _event_lines(raw):
        if not content or content.startswith(b":"):
            continue
        name, value = _field(content)
        if name == b"data":
            data.append(value)
        elif name == b"event":
            kind = value
    text = b"\n".join(data).decode("utf-8") if data else None
    return kind.decode("utf-8"), text


def rewrite_event(raw: bytes, data: str) -> bytes:
    """`raw` with its data replaced by `data`: other lines and every terminator are kept.

    The new data goes where the first data line was (one line per LF in `data`); an event
    without a data line gets it before its blank line.
    """
    out = bytearray()
    written = False
    lines = _event_lines(raw)
    eol = next((t for _, t in lines if t), b"\n")
    for index, (content, terminator) in enumerate(lines):
        name, _ = _field(content) if content and not content.startswith(b":") else (b"", b"")
        if not written and not content and index == len(lines) - 1:
            for line in data.split("\n"):
                out += b"data: " + line.encode("utf-8") + eol
            written = True
        if name != b"data":
            out += content + terminator
            continue
        if not written:
            for line in data.split("\n"):
                out += b"data: " + line.encode("utf-8") + (terminator or eol)
            written = True
    return bytes(out)


def _line_end(raw: bytes, i: int) -> int:
    """The offset of the first CR or LF at or after `i` (len(raw) without one)."""
    ends = [end for end in (raw.find(b"\r", i), raw.find(b"\n", i)) if end >= 0]
    return min(ends) if ends else len(raw)


class SseDataReader:
    """The data of one event, read piece by piece, fed to `scanner` (data lines joined by
    LF, as a client joins them). `feed(raw)` returns the offset in `raw` where the scanner
    found a listing array (`result.tools`, ...), or None."""

    def __init__(self, scanner: ListingScanner) -> None:
        self.scanner = scanner
        self._state = "field"
        self._field = bytearray()
        self._after_cr = False
        self._data_lines = 0

    def feed(self, raw: bytes) -> int | None:
        i, n = 0, len(raw)
        while i < n:
            if self._after_cr:
                self._after_cr = False
                if raw[i] == 0x0A:
                    i += 1
                    continue
            if self._state == "field":
                match = _FIELD.match(raw, i)
                assert match is not None
                if len(self._field) < 8:
                    self._field += match.group()[:8]
                i = match.end()
                if i >= n:
                    break
                if raw[i] == 0x3A:  # :
                    self._state = "space"
                    i += 1
                    continue
                if self._field == b"data":  # a line "data" without a colon: empty data
                    self._data_line()
                i = self._eol(raw, i)
            elif self._state == "space":
                if raw[i] == 0x20:
                    i += 1
                self._state = "data" if self._field == b"data" else "other"
                if self._state == "data":
                    self._data_line()
            else:
                end = _line_end(raw, i)
                if self._state == "data" and end > i:
                    cut = self.scanner.feed(raw[i:end])
                    if cut is not None:
                        return i + cut
                i = end
                if i < n:
                    i = self._eol(raw, i)
        return None

    def _data_line(self) -> None:
        if self._data_lines:
            self.scanner.feed(b"\n")
        self._data_lines += 1

    def _eol(self, raw: bytes, i: int) -> int:
        self._after_cr = raw[i] == 0x0D
        self._state = "field"
        self._field = bytearray()
        return i + 1
