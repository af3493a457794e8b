"""The response phase, pure: what the MCP server answered, and what the client gets to see.

Sans-IO and synchronous, like the engine: `ResponseInspector` is told the response's status
and content type, then its body chunk by chunk, and answers with the bytes to send on. At the
end its `Outcome` says how many tools a `tools/list` listing lost and whether an allowed
`tools/call` failed upstream, so that its quota goes back. The Envoy edge
(`authz/envoy/extproc.py`) feeds it; `authz/responder.py` acts on the outcome.

- **tools/list** (a response to a `tools/list` *request*, matched by JSON-RPC id): tools the
  grant's policy hides (`hide`, `"*"`; with `hide_denied` also tools it can never call) are
  cut out of `result.tools`. Only the bytes of those array elements change: `nextCursor`,
  other members and every other message keep their exact bytes, and a response that loses
  no tool is never re-serialised. JSON bodies are held whole (at most `MAX_HELD_BYTES`);
  SSE events pass as they arrive, only the event in progress is held (at most
  `MAX_HELD_BYTES`), so notifications before the result are not delayed.
- **Give-back** (an allowed `tools/call` that took quota): the call failed when the answer
  is an HTTP error status (>= 400: 5xx from the server or Envoy; a 4xx means the server
  refused the request before running it), a JSON-RPC `error` for the call's id, a body that
  ends without an answer for the id, or a stream that ends early (reset, timeout). A result
  (also `isError: true`) is a completed call. An answer that cannot be read (malformed,
  over the size bound) keeps the quota: when in doubt, the limit wins.
- Anything else (local replies of the sidecar's denials, other methods, non-JSON bodies,
  malformed JSON or SSE) passes through unchanged. Nothing here raises on upstream bytes.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from authz.model import RequestId, Reservation
from authz.policy import WILDCARD, Policy

__all__ = [
    "MAX_HELD_BYTES",
    "Hides",
    "Outcome",
    "Plan",
    "ResponseContext",
    "ResponseInspector",
    "SseSplitter",
    "Unparsable",
    "answer_kind",
    "filter_tools_list",
    "listing_filter",
    "never_callable",
    "rewrite_event",
]

MAX_HELD_BYTES: Final = 1 << 20
"""The most body bytes held per response (a JSON body, or one SSE event); beyond it the
response passes through unchanged."""

TOOLS_LIST: Final = "tools/list"
TOOLS_CALL: Final = "tools/call"

Hides = Callable[[str | None], bool]
"""Whether a listed tool (by name; None when the entry has no string name) is removed."""


class Unparsable(ValueError):
    """Upstream bytes that are not the JSON (or SSE) they claim to be."""


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """What the request phase decided about the request a response answers.

    Built by the Envoy edge from the ext_authz dynamic metadata; `decision` is None when the
    sidecar never decided (an Envoy local reply before the check).
    """

    decision_id: str | None = None
    decision: str | None = None
    grant_id: str | None = None
    policy: str | None = None
    method: str | None = None
    tool: str | None = None
    rpc_id: RequestId = None
    """The JSON-RPC id of the request (None: a notification, or unknown)."""
    reservation: Reservation | None = None
    """The quota the call took (only when there is something to give back)."""

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


class Plan(enum.Enum):
    """What the edge asks Envoy for after the response headers."""

    PASS = "pass"
    """Nothing to do with the body: it is not sent to the sidecar."""
    OBSERVE = "observe"
    """Stream the body through the sidecar unchanged (give-back detection)."""
    FILTER = "filter"
    """Stream the body through the sidecar, which may rewrite it (tools/list)."""


@dataclass(slots=True)
class Outcome:
    """What one response turned out to be; the audit event of the response phase."""

    status: int | None = None
    media: str = "none"
    """`json`, `sse`, `other` (any other content type) or `none` (no body)."""
    tools_removed: int = 0
    give_back: bool = False
    reason: str | None = None
    """Why quota goes back (`http_status`, `jsonrpc_error`, `no_response`, `incomplete`) or
    stays (`result`, `unparsed`); None when the response took no quota."""
    unparsed: int = 0
    """JSON bodies or SSE events that could not be read (passed through unchanged)."""
    oversized: int = 0
    """Bodies or events over `MAX_HELD_BYTES` (passed through unchanged)."""
    complete: bool | None = None
    """Whether the body, streamed through the sidecar, ended normally (False: the stream
    ended first); None when the body did not go through the sidecar."""


# -- JSON-RPC ids and answers -----------------------------------------------------------


def same_id(a: object, b: object) -> bool:
    """JSON-RPC ids are equal: same type (string or integer, never bool) and value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return False


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Unparsable(f"not JSON: {type(exc).__name__}") from None


def answer_kind(text: str, rpc_id: RequestId) -> str | None:
    """`result` or `error` when `text` is the JSON-RPC answer to `rpc_id`, else None.

    Raises `Unparsable` when `text` is not JSON.
    """
    message = _loads(text)
    if not isinstance(message, dict) or not same_id(message.get("id"), rpc_id):
        return None
    if "error" in message:
        return "error"
    if "result" in message:
        return "result"
    return None


# -- tools/list: cut hidden tools out of the raw JSON text ----------------------------------

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
    """(key, value start, value end) of the object starting at `i`."""
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


def _name_of(entry: object) -> str | None:
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) else None


def _tool_name(text: str) -> str | None:
    return _name_of(json.loads(text))


def filter_tools_list(text: str, rpc_id: RequestId, hides: Hides) -> tuple[str, int]:
    """Remove the tools `hides` names from the `tools/list` answer to `rpc_id`.

    Returns (text, number of tools removed). When nothing is removed, or `text` is not that
    answer (another id, an error, no `result.tools` list), `text` itself is returned. Only
    the removed array elements (and their separators) are cut from the text: every other
    byte, `nextCursor` included, is kept as it was. Duplicate keys are handled as a JSON
    parser that keeps the last one reads them, and every `tools` array is filtered.

    Raises `Unparsable` when `text` is not JSON.
    """
    message = _loads(text)
    if not isinstance(message, dict) or not same_id(message.get("id"), rpc_id):
        return text, 0
    result = message.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return text, 0
    if not any(hides(_name_of(tool)) for tool in result["tools"]):
        return text, 0

    edits: list[tuple[int, int, str]] = []
    removed = 0
    start = _skip_ws(text, 0)
    for key, value_start, _ in _members(text, start):
        if key != "result" or text[value_start] != "{":
            continue
        for inner_key, tools_start, tools_end in _members(text, value_start):
            if inner_key != "tools" or text[tools_start] != "[":
                continue
            elements, close = _elements(text, tools_start)
            kept = [(s, e) for s, e in elements if not hides(_tool_name(text[s:e]))]
            if len(kept) == len(elements):
                continue
            removed += len(elements) - len(kept)
            if not kept:
                replacement = "[]"
            else:
                separator = text[elements[0][1] : elements[1][0]] if len(elements) > 1 else ","
                leading = text[tools_start + 1 : elements[0][0]]
                trailing = text[elements[-1][1] : close]
                body = separator.join(text[s:e] for s, e in kept)
                replacement = f"[{leading}{body}{trailing}]"
            edits.append((tools_start, tools_end, replacement))
    for edit_start, edit_end, replacement in sorted(edits, reverse=True):
        text = text[:edit_start] + replacement + text[edit_end:]
    return text, removed


# -- which tools a listing hides -------------------------------------------------------------


def never_callable(policy: Policy, tool: str) -> bool:
    """Whether every `tools/call` of `tool` is denied whatever its arguments.

    True for a tool that is not listed under `default: deny`, or whose own entry or the
    `"*"` entry has a `deny_if` rule without conditions or an Intercept `action: deny` rule.
    """
    own = policy.tool(tool)
    if own is None and policy.default == "deny":
        return True
    entries = [own, policy.wildcard if tool != WILDCARD else None]
    for entry in entries:
        if entry is None:
            continue
        if any(not rule.conditions for rule in entry.deny_if):
            return True
        if any(rule.action == "deny" for rule in entry.rules):
            return True
    return False


def listing_filter(policy: Policy) -> Hides | None:
    """What a grant with `policy` must not see in `tools/list`; None when that is nothing."""
    if policy.hides_all:
        return lambda _name: True
    hidden = frozenset(policy.document.hide)
    hide_denied = policy.document.hide_denied
    if not hidden and not hide_denied:
        return None

    def hides(name: str | None) -> bool:
        if name is None:
            return False
        return name in hidden or (hide_denied and never_callable(policy, name))

    return hides


# -- SSE ---------------------------------------------------------------------------------

_EOL = re.compile(rb"[\r\n]")
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|\Z)")


class SseSplitter:
    """Cuts a `text/event-stream` body into events as bytes arrive (CRLF, LF or CR lines).

    `feed` returns segments in order: (bytes, True) for a complete event, ending with its
    blank line, and (bytes, False) for bytes to pass on unread (an event longer than
    `limit`, passed on as it arrives, up to its end). Only the event in progress is held,
    never more than `limit` bytes of it. The segments concatenate to exactly the bytes fed.
    """

    def __init__(self, limit: int = MAX_HELD_BYTES) -> None:
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

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        start = 0
        for end in self._boundaries(data):
            piece = data[start:end]
            if self._skipping:
                out.append((piece, False))
                self._skipping = False
            else:
                event = bytes(self._held) + piece
                self._held.clear()
                if len(event) > self._limit:
                    out.append((event, False))
                    self.oversized += 1
                else:
                    out.append((event, True))
            start = end
        tail = data[start:]
        if self._skipping:
            if tail:
                out.append((tail, False))
        else:
            self._held += tail
            if len(self._held) > self._limit:
                out.append((bytes(self._held), False))
                self._held.clear()
                self._skipping = True
                self.oversized += 1
        return out

    def finish(self) -> bytes:
        """The bytes of an event that never ended (passed on as they are)."""
        rest = bytes(self._held)
        self._held.clear()
        return rest


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


def event_data(raw: bytes) -> str | None:
    """The data of a `message` event (data lines joined by LF), or None for other events.

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
    if kind != b"message" or not data:
        return None
    return b"\n".join(data).decode("utf-8")


def rewrite_event(raw: bytes, data: str) -> bytes:
    """`raw` with its data replaced by `data`: other lines and every terminator are kept.

    The new data goes where the first data line was (one line per LF in `data`).
    """
    out = bytearray()
    written = False
    for content, terminator in _event_lines(raw):
        name, _ = _field(content) if content and not content.startswith(b":") else (b"", b"")
        if name != b"data":
            out += content + terminator
            continue
        if not written:
            eol = terminator or b"\n"
            for line in data.split("\n"):
                out += b"data: " + line.encode("utf-8") + eol
            written = True
    return bytes(out)


# -- the inspector -----------------------------------------------------------------------


def _media(content_type: str | None, content_encoding: str | None = None) -> str:
    """`json`, `sse`, `other` or `none`; an encoded (compressed) body is `other`."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not media:
        return "none"
    if (content_encoding or "").strip().lower() not in ("", "identity"):
        return "other"
    return {"application/json": "json", "text/event-stream": "sse"}.get(media, "other")


class ResponseInspector:
    """One response, from its headers to its end (see the module docstring).

    `hides` is what the grant's policy removes from listings (None: nothing, or no policy).
    """

    def __init__(
        self, context: ResponseContext, hides: Hides | None = None, *, limit: int = MAX_HELD_BYTES
    ) -> None:
        self.context = context
        self.hides = hides
        self.limit = limit
        self.outcome = Outcome()
        self.plan = Plan.PASS
        self._held = bytearray()
        self._splitter: SseSplitter | None = None
        self._settled = False
        """Nothing more to learn from the body (the answer was seen, or reading gave up)."""
        self._uncertain = False
        """Some of the body could not be read; it may have held the answer."""
        self._done = False
        self.error: Exception | None = None
        """An unexpected error while reading the body (a bug; the bytes passed unchanged)."""

    @property
    def done(self) -> bool:
        return self._done

    @property
    def needs_body(self) -> bool:
        """Whether the sidecar must see more of the body; False once the answer was seen
        and nothing is held (the rest of the body can pass without the sidecar)."""
        if self._done or self.plan is Plan.PASS:
            return False
        if not self._settled:
            return True
        return self._splitter is not None and self._splitter.held > 0

    def stop(self) -> None:
        """The rest of the body passes without the sidecar (see `needs_body`)."""
        if not self._done and self.plan is not Plan.PASS:
            self.outcome.complete = True
        self._done = True

    @property
    def takes_quota(self) -> bool:
        ctx = self.context
        return (
            ctx.allowed
            and ctx.method == TOOLS_CALL
            and ctx.reservation is not None
            and bool(ctx.reservation.token)
        )

    def headers(
        self,
        status: int | None,
        content_type: str | None,
        end_of_stream: bool,
        *,
        content_encoding: str | None = None,
    ) -> Plan:
        """The response headers arrived: decide whether the sidecar needs the body.

        A body with a `content-encoding` (compressed) is opaque: media `other`.
        """
        out = self.outcome
        out.status = status
        out.media = "none" if end_of_stream else _media(content_type, content_encoding)
        ctx = self.context
        ok = status is not None and 200 <= status < 300
        if self.takes_quota:
            if status is not None and status >= 400:
                self._finish(give_back=True, reason="http_status")
            elif end_of_stream and ok:
                self._finish(give_back=True, reason="no_response")
            elif ok and out.media in ("json", "sse"):
                self.plan = Plan.OBSERVE
            else:
                self._finish(give_back=False, reason="unparsed")
        elif (
            ctx.allowed
            and ctx.method == TOOLS_LIST
            and ctx.rpc_id is not None
            and self.hides is not None
            and ok
            and not end_of_stream
            and out.media in ("json", "sse")
        ):
            self.plan = Plan.FILTER
        else:
            self._finish(give_back=False, reason=None)
        if self.plan is not Plan.PASS and out.media == "sse":
            self._splitter = SseSplitter(self.limit)
        return self.plan

    def body(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        """One body chunk: the bytes to send on instead (b"" holds it), or None: unchanged."""
        if self._done:
            return None
        if self.plan is Plan.OBSERVE:
            self._observe(chunk, end_of_stream)
            return None
        if self.plan is not Plan.FILTER:
            return None
        if self.outcome.media == "sse":
            out = self._filter_sse(chunk, end_of_stream)
        else:
            out = self._filter_json(chunk, end_of_stream)
        if end_of_stream:
            self._end()
        return None if out == chunk else out

    def abort(self) -> None:
        """The stream ended before the body did (reset, timeout, disconnect)."""
        if self._done:
            return
        if self.plan is not Plan.PASS:
            self.outcome.complete = False
        if self.takes_quota and self.plan is Plan.OBSERVE and not self._settled:
            if self._uncertain:
                self._finish(give_back=False, reason="unparsed")
            else:
                self._finish(give_back=True, reason="incomplete")
        self._done = True

    def give_up(self) -> bytes:
        """Stop touching the body (after an internal error): the bytes held so far."""
        held = bytes(self._held)
        self._held.clear()
        if self._splitter is not None:
            held += self._splitter.finish()
        self.plan = Plan.PASS
        self.outcome.unparsed += 1
        if self.takes_quota and not self._settled:
            self._finish(give_back=False, reason="unparsed")
        return held

    # -- internals -------------------------------------------------------------------

    def _finish(self, *, give_back: bool, reason: str | None) -> None:
        self.outcome.give_back = give_back
        self.outcome.reason = reason
        self._settled = True

    def _end(self) -> None:
        self.outcome.complete = True
        if self.takes_quota and not self._settled:
            if self._uncertain:
                self._finish(give_back=False, reason="unparsed")
            else:
                self._finish(give_back=True, reason="no_response")
        self._done = True

    def _unreadable(self, exc: Exception) -> None:
        """Upstream bytes this module could not read; a bug is kept for the edge to log."""
        self.outcome.unparsed += 1
        self._uncertain = True
        if not isinstance(exc, Unparsable):
            self.error = exc

    def _answer(self, text: str) -> None:
        """Settle the give-back from one JSON-RPC message (or note it could not be read)."""
        try:
            kind = answer_kind(text, self.context.rpc_id)
        except Exception as exc:
            self._unreadable(exc)
            return
        if kind == "error":
            self._finish(give_back=True, reason="jsonrpc_error")
        elif kind == "result":
            self._finish(give_back=False, reason="result")

    def _observe(self, chunk: bytes, end_of_stream: bool) -> None:
        if not self._settled:
            if self._splitter is not None:
                self._observe_sse(chunk, end_of_stream)
            else:
                self._observe_json(chunk, end_of_stream)
        if end_of_stream:
            self._end()

    def _observe_json(self, chunk: bytes, end_of_stream: bool) -> None:
        if len(self._held) + len(chunk) > self.limit:
            self._held.clear()
            self.outcome.oversized += 1
            self._finish(give_back=False, reason="unparsed")
            return
        self._held += chunk
        if end_of_stream:
            text = self._decode(bytes(self._held))
            self._held.clear()
            if text is not None:
                self._answer(text)

    def _observe_sse(self, chunk: bytes, end_of_stream: bool) -> None:
        splitter = self._splitter
        assert splitter is not None
        for raw, complete in splitter.feed(chunk):
            if self._settled:
                break
            if not complete:
                self._uncertain = True
                continue
            data = self._event_data(raw)
            if data is not None:
                self._answer(data)
        self.outcome.oversized = splitter.oversized
        if end_of_stream and not self._settled and splitter.finish().strip(b"\r\n"):
            self._uncertain = True  # an event that never ended

    def _filter_json(self, chunk: bytes, end_of_stream: bool) -> bytes:
        if self.outcome.oversized:
            return chunk
        if len(self._held) + len(chunk) > self.limit:
            self.outcome.oversized += 1
            out = bytes(self._held) + chunk
            self._held.clear()
            return out
        self._held += chunk
        if not end_of_stream:
            return b""
        original = bytes(self._held)
        self._held.clear()
        text = self._decode(original)
        if text is None:
            return original
        try:
            new, removed = filter_tools_list(text, self.context.rpc_id, self._hides)
        except Exception as exc:
            self._unreadable(exc)
            return original
        if not removed:
            return original
        self.outcome.tools_removed += removed
        return new.encode("utf-8")

    def _filter_sse(self, chunk: bytes, end_of_stream: bool) -> bytes:
        splitter = self._splitter
        assert splitter is not None
        if self._settled:
            return splitter.finish() + chunk  # the listing was seen: the rest passes on
        out = bytearray()
        for raw, complete in splitter.feed(chunk):
            out += self._filter_event(raw) if complete and not self._settled else raw
        self.outcome.oversized = splitter.oversized
        if end_of_stream:
            out += splitter.finish()
        return bytes(out)

    def _filter_event(self, raw: bytes) -> bytes:
        data = self._event_data(raw)
        if data is None:
            return raw
        try:
            kind = answer_kind(data, self.context.rpc_id)
            if kind is None:
                return raw
            self._settled = True
            new, removed = filter_tools_list(data, self.context.rpc_id, self._hides)
            if not removed:
                return raw
            rewritten = rewrite_event(raw, new)
        except Exception as exc:
            self._unreadable(exc)
            return raw
        self.outcome.tools_removed += removed
        return rewritten

    def _hides(self, name: str | None) -> bool:
        assert self.hides is not None
        return self.hides(name)

    def _event_data(self, raw: bytes) -> str | None:
        try:
            return event_data(raw)
        except Exception as exc:
            self._unreadable(exc)
            return None

    def _decode(self, raw: bytes) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.outcome.unparsed += 1
            self._uncertain = True
            return None
