"""The response phase, pure: what the MCP server answered, and what the client gets to see.

Sans-IO and synchronous, like the engine: `ResponseInspector` is told the response's status,
content type and Envoy's account of where the response came from, then its body chunk by
chunk, and answers with the bytes to send on. Its `ResponseReport` says how many listing
elements were cut, which messages were withheld, and whether an allowed `tools/call` gets
its quota back.
The Envoy edge (`authz/envoy/extproc.py`) feeds it; `authz/pipeline/response.py` acts on the
report.

- **Hiding** (a grant whose policy keeps something out of a listing,
  `authz.engine.listing_filter`, a `ListingFilter`): every response to that grant goes
  through FILTER, whatever its method, id or HTTP method (the GET stream and its
  `Last-Event-ID` replays included). Each JSON-RPC message (a JSON body, or the data of one
  SSE event) is read whole when it fits `MAX_HELD_BYTES` and loses the hidden elements of
  every listing array the filter names (`result.tools`, `result.resources`,
  `result.resourceTemplates`, `result.prompts`: `authz.response.listing.filter_listing`;
  all other bytes are kept). What cannot be checked fails closed, as a JSON-RPC error in
  its place (`ResponseReport.withheld`): a message over the bound that reaches such an
  array (found by `authz.response.listing.ListingScanner` while the message streams on,
  SSE framing by `authz.response.sse`; a large tool result without one, an image say,
  passes), a JSON answer to a listing request (of a filtered array) that answers another
  id, and, in a 2xx response or any answer to such a listing, a message that is not UTF-8
  or not JSON and a body that is neither JSON nor SSE (REFUSE: the sidecar answers instead
  of the server). An error page (the server's 421 for a wrong Host, say) is no message a
  client reads, and passes.
- **Give-back** (an allowed `tools/call` that took quota) needs evidence that the server
  did not run the call, from the response headers and Envoy's attributes
  (`authz.response.evidence`):
  `response.code_details` other than `via_upstream` with a response flag saying the request
  was never sent (`NOT_DELIVERED_FLAGS`: no healthy upstream, connection failure, overflow,
  no cluster, DNS failure, drop overload), or an HTTP 4xx from the server itself (the MCP
  transport refuses a request with a 4xx before it dispatches it). Nothing the body says
  counts (an SDK answers a cancelled call with a JSON-RPC error after the tool ran), nor
  does a 5xx from the server (a JSON-response server sends its status after the tool ran,
  e.g. 500 when the session is deleted mid-call), nor a stream that ends early.
- Anything else (denials, Envoy's local replies) passes unchanged; a `tools/call` that took
  quota, and a session request answered in SSE, are read without change (OBSERVE), to log
  how they ended and to tell the in-flight registry when the request is over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from authz.model import ListingFilter, RequestId, Reservation
from authz.response.evidence import VIA_UPSTREAM, give_back_evidence
from authz.response.jsonrpc import (
    Unparsable,
    answer_kind,
    parse_message,
    same_id,
    withheld_error,
)
from authz.response.listing import ListingScanner, filter_listing
from authz.response.sse import Segment, SseDataReader, SseSplitter, event_payload, rewrite_event

__all__ = [
    "MAX_HELD_BYTES",
    "Plan",
    "ResponseContext",
    "ResponseInspector",
    "ResponseReport",
]

MAX_HELD_BYTES: Final = 1 << 20
"""The most body bytes held per message (a JSON body, or one SSE event)."""

TOOLS_CALL: Final = "tools/call"


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
    """The request's JSON-RPC method (None: a GET or DELETE, or unknown)."""
    tool: str | None = None
    rpc_id: RequestId = None
    """The JSON-RPC id of the request (None: a notification, a GET, or unknown)."""
    reservation: Reservation | None = None
    """The quota the call took (only when there is something to give back)."""
    inflight: str | None = None
    """The in-flight registry key the request holds (`authz.inflight`), to free at its end."""
    hides: bool = False
    """The grant's policy kept something out of a listing when the request was allowed."""

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


class Plan(enum.Enum):
    """What the edge asks Envoy for after the response headers."""

    PASS = "pass"
    """Nothing to do with the body: it is not sent to the sidecar."""
    OBSERVE = "observe"
    """Stream the body through the sidecar unchanged (how the request ended)."""
    FILTER = "filter"
    """Stream the body through the sidecar, which may rewrite it (a grant whose listings
    are filtered)."""
    REFUSE = "refuse"
    """The body cannot be checked: the sidecar answers in its place (`refusal`)."""


@dataclass(slots=True)
class ResponseReport:
    """What one response turned out to be; the audit event of the response phase."""

    status: int | None = None
    media: str = "none"
    """`json`, `sse`, `other` (any other content type) or `none` (no body)."""
    origin: str | None = None
    """Envoy's `response.code_details` (`via_upstream`, or why Envoy answered itself)."""
    tools_removed: int = 0
    content_removed: int = 0
    """Resources, resource templates and prompts cut out of listings."""
    withheld: int = 0
    """Messages replaced by a JSON-RPC error because they could not be checked."""
    give_back: bool = False
    reason: str | None = None
    """Why quota goes back (`not_delivered`, `refused`) or stays (`result`,
    `jsonrpc_error`, `http_status`, `no_response`, `incomplete`, `unparsed`); None when the
    response took no quota."""
    unparsed: int = 0
    """Messages that could not be read."""
    oversized: int = 0
    """Messages over `MAX_HELD_BYTES` (streamed on, scanned for the filtered listings)."""
    complete: bool | None = None
    """Whether the body, streamed through the sidecar, ended normally (False: the stream
    ended first); None when the body did not go through the sidecar."""


def _media(content_type: str | None, content_encoding: str | None = None) -> str:
    """`json`, `sse`, `other` or `none`; an encoded (compressed) body is `other`."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not media:
        return "none"
    if (content_encoding or "").strip().lower() not in ("", "identity"):
        return "other"
    return {"application/json": "json", "text/event-stream": "sse"}.get(media, "other")


class _LongEvent:
    """An SSE event over the bound, streamed on while its data is scanned for listings."""

    def __init__(self, arrays: frozenset[str]) -> None:
        self.scanner = ListingScanner(arrays)
        self.reader = SseDataReader(self.scanner)
        self.skipping = False
        """The event was cut (an error event stands in for it): its remaining bytes go."""
        self.started = False


class ResponseInspector:
    """One response, from its headers to its end (see the module docstring).

    `hides` is what the grant's policy removes from listings (None: nothing, or no policy).
    """

    def __init__(
        self,
        context: ResponseContext,
        hides: ListingFilter | None = None,
        *,
        limit: int = MAX_HELD_BYTES,
    ) -> None:
        self.context = context
        self.hides = hides
        self.limit = limit
        self.report = ResponseReport()
        self.plan = Plan.PASS
        self.refusal: tuple[int, str] | None = None
        """(status, JSON body) the sidecar answers with instead, for REFUSE."""
        self._held = bytearray()
        self._splitter: SseSplitter | None = None
        self._answered: str | None = None
        """`result` or `error` once a message answering the request's id was seen."""
        self._uncertain = False
        """Some of the body could not be read; it may have held the answer."""
        self._quota_open = False
        """The give-back question is still open (the body decides the audit reason)."""
        self._scanner: ListingScanner | None = None
        """A JSON body over the bound, streaming on while scanned."""
        self._long: _LongEvent | None = None
        self._withholding = False
        """Everything from here on is dropped (a JSON body was cut)."""
        self._strict = True
        """A message that cannot be read is withheld (False: passed as it came)."""
        self._done = False
        self.error: Exception | None = None
        """An unexpected error while reading the body (a bug; logged by the edge)."""

    @property
    def done(self) -> bool:
        return self._done

    @property
    def needs_body(self) -> bool:
        """Whether the sidecar must see more of the body. FILTER reads to the end; OBSERVE
        until the answer to the request's id was seen and nothing is held."""
        if self._done or self.plan in (Plan.PASS, Plan.REFUSE):
            return False
        return self.plan is Plan.FILTER or self._answered is None

    def stop(self) -> None:
        """The rest of the body passes without the sidecar (see `needs_body`)."""
        if not self._done and self.plan is not Plan.PASS:
            self.report.complete = True
        self._settle_quota()
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
        details: str | None = None,
        flags: int | None = None,
    ) -> Plan:
        """The response headers arrived: decide whether the sidecar needs the body.

        `details`/`flags`: Envoy's `response.code_details` and `response.flags` (None when
        Envoy did not send them). A body with a `content-encoding` (compressed) is `other`.
        """
        out = self.report
        out.status = status
        out.origin = details
        out.media = "none" if end_of_stream else _media(content_type, content_encoding)
        ctx = self.context
        ok = status is not None and 200 <= status < 300
        has_body = not end_of_stream
        upstream = details is None or details == VIA_UPSTREAM
        if self.takes_quota:
            evidence = give_back_evidence(status, details, flags)
            if evidence is not None:
                self._quota(give_back=True, reason=evidence)
            elif not ok:
                self._quota(give_back=False, reason="http_status")
            elif not has_body:
                self._quota(give_back=False, reason="no_response")
            elif out.media not in ("json", "sse"):
                self._quota(give_back=False, reason="unparsed")
            else:
                self._quota_open = True
        if not ctx.allowed or not has_body:
            self.plan = Plan.PASS
        elif self.hides is not None and upstream:
            # What cannot be read fails closed for an answer a client reads as a message
            # (a 2xx, or anything that answers a filtered listing); an error page (the
            # server's 421 for a wrong Host, say) is not a message and passes as it is.
            self._strict = ok or self.hides.lists(ctx.method)
            if out.media != "other":  # JSON, SSE, or no content type (read as JSON)
                self.plan = Plan.FILTER
            elif not self._strict:
                self.plan = Plan.PASS
            elif (content_encoding or "").strip().lower() not in ("", "identity"):
                self._refuse("a compressed body")
            else:
                self._refuse("neither JSON nor an event stream")
        elif (
            ok
            and out.media in ("json", "sse")
            and (self._quota_open or (ctx.inflight is not None and out.media == "sse"))
        ):
            self.plan = Plan.OBSERVE
        else:
            self.plan = Plan.PASS
        if self.plan in (Plan.PASS, Plan.REFUSE):
            self._settle_quota()
        if self.plan in (Plan.OBSERVE, Plan.FILTER) and out.media == "sse":
            self._splitter = SseSplitter(self.limit)
        return self.plan

    def body(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        """One body chunk: the bytes to send on instead (b"" holds it), or None: unchanged."""
        if self._done:
            return None
        if self.plan is Plan.OBSERVE:
            self._observe(chunk, end_of_stream)
            out: bytes | None = None
        elif self.plan is Plan.FILTER:
            if self._withholding:
                out = b""
            elif self.report.media == "sse":
                out = self._filter_sse(chunk, end_of_stream)
            else:
                out = self._filter_json(chunk, end_of_stream)
            out = None if out == chunk else out
        else:
            return None
        if end_of_stream:
            self._end()
        return out

    def abort(self) -> None:
        """The stream ended before the body did (reset, timeout, disconnect)."""
        if self._done:
            return
        if self.plan is not Plan.PASS:
            self.report.complete = False
        if self._quota_open:  # an answer already read (FILTER reads on) says how it ended
            self._quota(give_back=False, reason=self._answered_reason() or "incomplete")
        self._done = True

    def give_up(self) -> None:
        """Stop reading (after an internal error while observing). Observing never holds a
        byte back from the client, so nothing is owed to it."""
        self._held.clear()
        if self._splitter is not None:
            self._splitter.finish()
        self.plan = Plan.PASS
        self.report.unparsed += 1
        if self._quota_open:
            self._quota(give_back=False, reason="unparsed")

    def fail_closed(self) -> bytes:
        """Stop filtering (after an internal error): the error that ends what the client
        gets; every later chunk is dropped. Never raises."""
        self._held.clear()
        self._withholding = True
        self.report.withheld += 1
        self.report.unparsed += 1
        error = withheld_error(self._error_id(None), "the gateway failed to read it")
        if self.report.media == "sse":
            return b"\r\n\r\nevent: message\r\ndata: " + error.encode("utf-8") + b"\r\n\r\n"
        return error.encode("utf-8")

    @property
    def answered(self) -> bool:
        """Whether a message answering the request's id went by."""
        return self._answered is not None

    # -- internals -------------------------------------------------------------------

    def _quota(self, *, give_back: bool, reason: str) -> None:
        self.report.give_back = give_back
        self.report.reason = reason
        self._quota_open = False

    def _settle_quota(self) -> None:
        """The body is not read (further): the quota question closes with what is known."""
        if self._quota_open:
            self._quota(give_back=False, reason=self._answered_reason() or "no_response")

    def _answered_reason(self) -> str | None:
        if self._answered == "error":
            return "jsonrpc_error"
        if self._answered == "result":
            return "result"
        return "unparsed" if self._uncertain else None

    def _refuse(self, why: str) -> None:
        self.plan = Plan.REFUSE
        self.report.withheld += 1
        self.refusal = (502, withheld_error(self.context.rpc_id, why))

    def _end(self) -> None:
        self.report.complete = True
        self._settle_quota()
        self._done = True

    def _unreadable(self, exc: Exception) -> None:
        """Upstream bytes this module could not read; a bug is kept for the edge to log."""
        self.report.unparsed += 1
        self._uncertain = True
        if not isinstance(exc, Unparsable):
            self.error = exc

    def _note(self, message: Any) -> None:
        """A message went by: is it the answer to the request's id?"""
        if self._answered is None:
            self._answered = answer_kind(message, self.context.rpc_id)

    def _error_id(self, message_id: RequestId) -> RequestId:
        """The id a stand-in error carries: the message's own, else the request's while its
        answer is still due (so the client's request ends with the error), else null."""
        if message_id is not None:
            return message_id
        if self._answered is None and self.context.rpc_id is not None:
            self._answered = "error"
            return self.context.rpc_id
        return None

    # -- OBSERVE -------------------------------------------------------------------------

    def _observe(self, chunk: bytes, end_of_stream: bool) -> None:
        if self._answered is not None:
            return
        if self._splitter is not None:
            self._observe_sse(chunk, end_of_stream)
        else:
            self._observe_json(chunk, end_of_stream)

    def _observe_json(self, chunk: bytes, end_of_stream: bool) -> None:
        if self._uncertain:
            return
        if len(self._held) + len(chunk) > self.limit:
            self._held.clear()
            self.report.oversized += 1
            self._uncertain = True
            return
        self._held += chunk
        if end_of_stream:
            raw = bytes(self._held)
            self._held.clear()
            self._read(raw)

    def _observe_sse(self, chunk: bytes, end_of_stream: bool) -> None:
        splitter = self._splitter
        assert splitter is not None
        for raw, kind in splitter.feed(chunk):
            if self._answered is not None:
                break
            if kind is not Segment.EVENT:
                self._uncertain = True
                continue
            try:
                _, data = event_payload(raw)
            except Exception as exc:
                self._unreadable(exc)
                continue
            if data is not None and data.strip():
                self._read_text(data)
        self.report.oversized = splitter.oversized
        if end_of_stream and self._answered is None and splitter.finish().strip(b"\r\n"):
            self._uncertain = True  # an event that never ended

    def _read(self, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._unreadable(Unparsable("not UTF-8"))
            return
        self._read_text(text)

    def _read_text(self, text: str) -> None:
        try:
            self._note(parse_message(text))
        except Exception as exc:
            self._unreadable(exc)

    # -- FILTER: JSON ----------------------------------------------------------------------

    def _filter_json(self, chunk: bytes, end_of_stream: bool) -> bytes:
        if self._scanner is not None:  # over the bound: streaming on, scanned
            cut = self._scanner.feed(chunk)
            if self._scanner.found or (self._scanner.broken and self._strict):
                self._withholding = True
                self.report.withheld += 1
                return chunk[: cut or 0] if self._scanner.found else b""
            return chunk
        self._held += chunk
        if len(self._held) > self.limit:
            self.report.oversized += 1
            scanner = ListingScanner(self._arrays)
            scanner.feed(bytes(self._held))
            if scanner.found or (scanner.broken and self._strict):
                self._held.clear()
                self._withholding = True
                return self._json_error("larger than 1 MiB")
            self._scanner = scanner
            out = bytes(self._held)
            self._held.clear()
            return out
        if not end_of_stream:
            return b""
        original = bytes(self._held)
        self._held.clear()
        try:
            text = original.decode("utf-8")
        except UnicodeDecodeError:
            self.report.unparsed += 1
            return self._json_error("not UTF-8") if self._strict else original
        if not text.strip():
            return original
        try:
            new, removed, message = filter_listing(text, self._listing)
        except Exception as exc:
            self._unreadable(exc)
            return self._json_error("not JSON") if self._strict else original
        ctx = self.context
        if (
            self._listing.lists(ctx.method)
            and ctx.rpc_id is not None
            and isinstance(message, dict)
            and "result" in message
            and not same_id(message.get("id"), ctx.rpc_id)
        ):
            return self._json_error("an answer to another request")
        self._note(message)
        if not removed:
            return original
        self._count(removed)
        return new.encode("utf-8")

    def _json_error(self, why: str) -> bytes:
        """The body that stands in for a JSON body: the answer to the request's id."""
        self.report.withheld += 1
        return withheld_error(self._error_id(None), why).encode("utf-8")

    # -- FILTER: SSE -------------------------------------------------------------------------

    def _filter_sse(self, chunk: bytes, end_of_stream: bool) -> bytes:
        splitter = self._splitter
        assert splitter is not None
        out = bytearray()
        for raw, kind in splitter.feed(chunk):
            if kind is Segment.EVENT:
                out += self._filter_event(raw)
            else:
                out += self._long_event(raw, last=kind is Segment.LAST)
        self.report.oversized = splitter.oversized
        if end_of_stream:
            rest = splitter.finish()
            if rest.strip(b"\r\n"):  # an event the stream never ended: checked all the same
                out += self._filter_event(rest)
            elif rest:
                out += rest
        return bytes(out)

    def _filter_event(self, raw: bytes) -> bytes:
        try:
            _, data = event_payload(raw)
        except Exception as exc:
            self._unreadable(exc)
            return self._event_error(raw, None, "not UTF-8") if self._strict else raw
        if data is None or not data.strip():
            return raw
        try:
            new, removed, message = filter_listing(data, self._listing)
        except Exception as exc:
            self._unreadable(exc)
            return self._event_error(raw, None, "not JSON") if self._strict else raw
        self._note(message)
        if not removed:
            return raw
        self._count(removed)
        return rewrite_event(raw, new)

    def _event_error(self, raw: bytes | None, message_id: RequestId, why: str) -> bytes:
        self.report.withheld += 1
        error = withheld_error(self._error_id(message_id), why)
        if raw is not None:
            return rewrite_event(raw, error)
        return b"event: message\r\ndata: " + error.encode("utf-8") + b"\r\n\r\n"

    def _long_event(self, raw: bytes, *, last: bool) -> bytes:
        """A piece of an event over the bound: scanned, passed on, or cut at a listing."""
        long = self._long
        if long is None:
            long = self._long = _LongEvent(self._arrays)
        out = b""
        if not long.skipping:
            cut = long.reader.feed(raw)
            scanner = long.scanner
            if scanner.found or (scanner.broken and self._strict):
                long.skipping = True
                why = "larger than 1 MiB" if scanner.found else "not JSON"
                if not long.started:  # nothing of it went out: the error replaces it
                    out = self._event_error(None, scanner.message_id, why)
                else:  # end the event (its data no longer parses), then the error
                    kept = raw[: cut or 0] if scanner.found else b""
                    out = kept + b"\r\n\r\n" + self._event_error(None, scanner.message_id, why)
            else:
                long.started = True
                out = raw
        if last:
            self._long = None
        return out

    @property
    def _listing(self) -> ListingFilter:
        assert self.hides is not None
        return self.hides

    @property
    def _arrays(self) -> frozenset[str]:
        """The listing arrays a message over the bound is scanned for."""
        return frozenset(self._listing.arrays)

    def _count(self, removed: dict[str, int]) -> None:
        for array, count in removed.items():
            if array == "tools":
                self.report.tools_removed += count
            else:
                self.report.content_removed += count
