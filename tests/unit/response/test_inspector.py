"""The response inspector, pure (authz/response/inspector.py): filtering every
answer to a grant that hides tools, failing closed, and the give-back the headers decide."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.model import ListingFilter, Reservation
from authz.response.inspector import Plan, ResponseContext, ResponseInspector
from authz.response.jsonrpc import withheld_error
from authz.response.listing import filter_tools

HIDDEN = "image.generate.replicate"
UF, UH, UR, UC, UT, UAEX = 0x20, 0x2, 0x10, 0x40, 0x4, 0x1000
EARLY_RESET = "upstream_reset_before_response_started{remote_connection_failure}"


def hide(*names: str) -> ListingFilter:
    return ListingFilter.tools(lambda name: name in names)


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} tool", "inputSchema": {"type": "object"}}


def listing(tools: list[Any], rid: object = 1, **extra: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"tools": tools, **extra}})


# -- the inspector ---------------------------------------------------------------------------

RESERVATION = Reservation(entries=((("c", "grant", "g", 60), 0, 1),), token="a" * 32)


def ctx(method: str | None, rid: object = 1, **kw: Any) -> ResponseContext:
    fields: dict[str, Any] = {
        "decision_id": "d",
        "decision": "allow",
        "grant_id": "g",
        "policy": "p",
        "method": method,
        "rpc_id": rid,
    }
    fields.update(kw)
    return ResponseContext(**fields)


def call_ctx(**kw: Any) -> ResponseContext:
    kw.setdefault("reservation", RESERVATION)
    return ctx("tools/call", tool="t", **kw)


def run(
    inspector: ResponseInspector,
    chunks: list[bytes],
    *,
    status: int = 200,
    content_type: str = "text/event-stream",
    end: bool = True,
    details: str | None = "via_upstream",
    flags: int | None = 0,
) -> bytes:
    """Feed a response; returns what the client receives."""
    plan = inspector.headers(
        status, content_type, end_of_stream=not chunks and end, details=details, flags=flags
    )
    if plan is Plan.REFUSE:
        assert inspector.refusal is not None
        return inspector.refusal[1].encode()
    out = bytearray()
    for i, chunk in enumerate(chunks):
        last = end and i == len(chunks) - 1
        if plan is Plan.PASS or inspector.done:
            out += chunk
            continue
        replaced = inspector.body(chunk, last)
        out += chunk if replaced is None else replaced
    if not end:
        inspector.abort()
    return bytes(out)


def sse(*messages: str, ids: bool = False) -> bytes:
    out = b""
    for n, message in enumerate(messages):
        head = f"id: e{n}\r\n".encode() if ids else b""
        out += head + b"event: message\r\ndata: " + message.encode() + b"\r\n\r\n"
    return out


def events_of(raw: bytes) -> list[Any]:
    """The JSON messages a client reads from an SSE body, as the SSE specification reads
    lines (CRLF, LF or CR); an event whose data does not parse is None."""
    out: list[Any] = []
    data: list[bytes] = []
    for line in re.split(rb"\r\n|\r|\n", raw):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif not line:
            joined = b"\n".join(data)
            data = []
            if joined.strip():
                try:
                    out.append(json.loads(joined))
                except ValueError:
                    out.append(None)
    return out


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def names(message: Any) -> set[str]:
    result = message.get("result", {}) if isinstance(message, dict) else {}
    tools = result.get("tools", []) if isinstance(result, dict) else []
    return {t.get("name") for t in tools if isinstance(t, dict)}


PROGRESS = '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
LISTING = listing([tool("a"), tool(HIDDEN)], nextCursor="n2")
FILTERED = listing([tool("a")], nextCursor="n2")


def _cut(text: str) -> str:
    return filter_tools(text, lambda name: name == HIDDEN)[0]


@pytest.mark.parametrize("size", [1, 3, 17, 10_000])
def test_sse_listing_is_filtered_and_other_events_pass(size: int) -> None:
    stream = sse(PROGRESS, LISTING, ids=True)
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    got = run(inspector, chunked(stream, size))
    assert got == stream.replace(LISTING.encode(), _cut(LISTING).encode())
    assert b"id: e0\r\n" in got and b"id: e1\r\n" in got  # event ids kept (resumption)
    assert events_of(got)[1] == json.loads(FILTERED)
    assert (inspector.report.tools_removed, inspector.report.complete) == (1, True)
    assert inspector.answered


def test_sse_events_before_the_listing_are_not_held() -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    assert inspector.headers(200, "text/event-stream", False) is Plan.FILTER
    first = sse(PROGRESS)
    assert inspector.body(first + b"event: message\r\ndata: {", False) == first  # rest held
    assert inspector.body(LISTING[1:].encode() + b"\r\n\r\n", True) is not None


@pytest.mark.parametrize("size", [1, 7, 100_000])
def test_json_listing_is_filtered_whole(size: int) -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    got = run(inspector, chunked(LISTING.encode(), size), content_type="application/json")
    assert got == _cut(LISTING).encode()


def test_json_listing_with_nothing_hidden_is_returned_byte_for_byte() -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide("zzz"))
    body = (LISTING + "\n").encode()
    assert run(inspector, chunked(body, 4), content_type="application/json; charset=utf-8") == body


@pytest.mark.parametrize(
    ("context", "media"),
    [
        (ctx("ping", rid="7"), "sse"),  # the SDK routed a listing to a ping with id "7"
        (ctx("ping", rid="7"), "json"),
        (ctx(None, rid=None), "sse"),  # a GET stream, or its Last-Event-ID replay
        (ctx("tools/call", rid=3), "sse"),
        (ctx("tools/list", rid=2), "sse"),  # a listing under another id
    ],
)
def test_every_answer_with_result_tools_is_filtered(context: ResponseContext, media: str) -> None:
    message = listing([tool(HIDDEN), tool("a")], rid=7)
    body = sse(message, ids=True) if media == "sse" else message.encode()
    content_type = "text/event-stream" if media == "sse" else "application/json"
    inspector = ResponseInspector(context, hide(HIDDEN))
    got = run(inspector, chunked(body, 11), content_type=content_type)
    assert HIDDEN.encode() not in got
    read = events_of(got) if media == "sse" else [json.loads(got)]
    assert [names(m) for m in read] == [{"a"}]


def test_a_json_listing_that_answers_another_id_is_an_error() -> None:
    inspector = ResponseInspector(ctx("tools/list", rid=7), hide(HIDDEN))
    got = run(inspector, [listing([tool("a")], rid="7").encode()], content_type="application/json")
    error = json.loads(got)
    assert error["id"] == 7 and error["error"]["code"] == -32603
    assert "another request" in error["error"]["message"]
    assert inspector.report.withheld == 1


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"jsonrpc":"2.0","id":1,"result":{"tools":[', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"<html>oops</html>", "not JSON"),
    ],
)
def test_a_json_body_that_cannot_be_read_is_an_error_for_the_request(body: bytes, why: str) -> None:
    inspector = ResponseInspector(ctx("tools/list", rid=4), hide(HIDDEN))
    got = run(inspector, chunked(body, 3), content_type="application/json")
    assert json.loads(got) == json.loads(withheld_error(4, why))
    assert inspector.report.withheld == 1


def test_an_sse_event_that_cannot_be_read_is_replaced_and_the_next_still_filtered() -> None:
    stream = b"id: x1\r\ndata: {not json\r\n\r\ndata: \xff\xfe\r\n\r\n" + sse(LISTING)
    inspector = ResponseInspector(ctx("tools/list", rid=1), hide(HIDDEN))
    got = run(inspector, chunked(stream, 9))
    first, second, third = events_of(got)
    assert first["id"] == 1 and first["error"]["code"] == -32603  # the request's answer is due
    assert second["id"] is None and "not UTF-8" in second["error"]["message"]
    assert names(third) == {"a"}
    assert got.startswith(b"id: x1\r\n")
    assert inspector.report.withheld == 2 and inspector.report.tools_removed == 1


BIG = listing([tool(HIDDEN)] + [tool(f"t{i}") for i in range(50)], rid=6)
IMAGE = json.dumps(
    {"jsonrpc": "2.0", "id": 6, "result": {"content": [{"type": "image", "data": "A" * 5000}]}}
)


@pytest.mark.parametrize("size", [1, 300, 100_000])
def test_a_listing_over_the_bound_is_an_error_in_its_place(size: int) -> None:
    stream = sse(PROGRESS, BIG, PROGRESS, ids=True)
    inspector = ResponseInspector(ctx("tools/list", rid=6), hide(HIDDEN), limit=1000)
    got = run(inspector, chunked(stream, size))
    assert HIDDEN.encode() not in got and b"t7" not in got
    progress, error, after = events_of(got)
    assert progress == after == json.loads(PROGRESS)
    assert error["id"] == 6 and "larger than 1 MiB" in error["error"]["message"]
    assert inspector.report.oversized == 1 and inspector.report.withheld == 1
    json_inspector = ResponseInspector(ctx("tools/list", rid=6), hide(HIDDEN), limit=1000)
    got = run(json_inspector, chunked(BIG.encode(), size), content_type="application/json")
    assert json.loads(got)["id"] == 6 and json.loads(got)["error"]["code"] == -32603


@pytest.mark.parametrize("size", [1, 300, 100_000])
def test_a_large_result_without_tools_passes_unchanged(size: int) -> None:
    stream = sse(PROGRESS, IMAGE, ids=True)
    for content_type, body in [("text/event-stream", stream), ("application/json", IMAGE.encode())]:
        inspector = ResponseInspector(ctx("tools/call", rid=6), hide(HIDDEN), limit=1000)
        assert run(inspector, chunked(body, size), content_type=content_type) == body
        assert inspector.report.oversized == 1 and inspector.report.withheld == 0


def test_tools_found_past_the_bound_end_the_message_and_nothing_of_them_passes() -> None:
    late = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 6,
            "result": {"content": [{"type": "text", "text": "y" * 3000}], "tools": [tool(HIDDEN)]},
        }
    )
    stream = sse(late, PROGRESS)
    inspector = ResponseInspector(ctx("ping", rid=6), hide(HIDDEN), limit=1000)
    got = run(inspector, chunked(stream, 500))
    assert HIDDEN.encode() not in got
    cut, error, progress = events_of(got)
    assert cut is None  # the message was ended where the tools began: it no longer parses
    assert error["id"] == 6 and error["error"]["code"] == -32603
    assert progress == json.loads(PROGRESS)
    json_inspector = ResponseInspector(ctx("ping", rid=6), hide(HIDDEN), limit=1000)
    got = run(json_inspector, chunked(late.encode(), 500), content_type="application/json")
    assert HIDDEN.encode() not in got and got == late.encode()[: late.index('"tools": [') + 9]


@pytest.mark.parametrize(
    ("content_type", "encoding", "why"),
    [
        ("text/html", None, "neither JSON nor an event stream"),
        ("application/octet-stream", None, "neither JSON nor an event stream"),
        ("application/json", "gzip", "a compressed body"),
    ],
)
def test_a_body_that_cannot_be_checked_is_refused(
    content_type: str, encoding: str | None, why: str
) -> None:
    inspector = ResponseInspector(ctx("tools/list", rid=2), hide(HIDDEN))
    plan = inspector.headers(200, content_type, False, content_encoding=encoding)
    assert plan is Plan.REFUSE and inspector.refusal == (502, withheld_error(2, why))


@pytest.mark.parametrize(
    ("method", "status", "content_type", "body", "withheld"),
    [
        ("tools/call", 421, "", b"Invalid Host header", False),  # an error page
        ("tools/call", 421, "text/plain", b"Invalid Host header", False),
        ("ping", 500, "application/json", b"Internal Server Error", False),
        ("tools/list", 421, "", b"Invalid Host header", True),  # answers a tools/list
        ("tools/list", 400, "text/plain", b"bad", True),
        ("ping", 200, "", b"not json", True),  # a 2xx: read as a message
    ],
)
def test_what_cannot_be_read_fails_closed_for_messages_a_client_reads(
    method: str, status: int, content_type: str, body: bytes, withheld: bool
) -> None:
    inspector = ResponseInspector(ctx(method, rid=2), hide(HIDDEN))
    got = run(inspector, chunked(body, 4), status=status, content_type=content_type)
    assert (got != body) is withheld
    assert (inspector.report.withheld == 1) is withheld
    if withheld:
        assert json.loads(got)["error"]["code"] == -32603


def test_a_body_without_a_content_type_is_read_as_json() -> None:
    inspector = ResponseInspector(ctx("tools/list", rid=1), hide(HIDDEN))
    assert json.loads(run(inspector, [LISTING.encode()], content_type="")) == json.loads(FILTERED)


def test_fail_closed_ends_what_the_client_gets() -> None:
    inspector = ResponseInspector(ctx("tools/list", rid=5), hide(HIDDEN))
    inspector.headers(200, "text/event-stream", False)
    assert inspector.body(sse(PROGRESS), False) is None
    tail = inspector.fail_closed()
    assert [m["id"] for m in events_of(tail)] == [5]
    assert inspector.body(sse(LISTING), True) == b""
    json_one = ResponseInspector(ctx("tools/list", rid=5), hide(HIDDEN))
    json_one.headers(200, "application/json", False)
    assert json.loads(json_one.fail_closed())["id"] == 5


@pytest.mark.parametrize(
    ("context", "status", "content_type", "details"),
    [
        (ctx("tools/list", decision="deny"), 200, "application/json", "ext_authz_denied"),
        (ctx("tools/list", decision=None), 413, "application/json", "request_payload_too_large"),
        (ctx("tools/list"), 503, "application/json", EARLY_RESET),  # Envoy's own reply
        (ResponseContext(), 200, "text/event-stream", "via_upstream"),  # no metadata
    ],
)
def test_responses_a_hiding_grant_leaves_alone(
    context: ResponseContext, status: int, content_type: str, details: str
) -> None:
    inspector = ResponseInspector(context, hide(HIDDEN))
    assert inspector.headers(status, content_type, False, details=details) is Plan.PASS


@pytest.mark.parametrize(
    ("context", "content_type"),
    [
        (ctx("tools/list"), "application/json"),
        (ctx("initialize"), "text/event-stream"),
        (ctx("tools/call"), "application/json"),  # no reservation
        (ctx("ping", inflight="k"), "application/json"),  # the answer is the whole body
    ],
)
def test_without_hiding_most_responses_pass(context: ResponseContext, content_type: str) -> None:
    inspector = ResponseInspector(context, None)
    assert inspector.headers(200, content_type, False) is Plan.PASS


def test_a_session_request_answered_in_sse_is_observed_until_its_answer() -> None:
    inspector = ResponseInspector(ctx("ping", rid=3, inflight="k"), None)
    assert inspector.headers(200, "text/event-stream", False) is Plan.OBSERVE
    assert inspector.body(sse(PROGRESS), False) is None and inspector.needs_body
    assert inspector.body(sse('{"jsonrpc":"2.0","id":3,"result":{}}'), False) is None
    assert not inspector.needs_body and inspector.answered


# -- give-back: evidence that the call did not run ----------------------------------------


@pytest.mark.parametrize(
    ("status", "details", "flags", "give_back", "reason"),
    [
        (
            503,
            EARLY_RESET.replace("remote_connection_failure", "connection_failure"),
            UF,
            True,
            "not_delivered",
        ),
        (400, "via_upstream", 0, True, "refused"),
        (500, "via_upstream", 0, False, "http_status"),
        (503, EARLY_RESET, UC, False, "http_status"),
    ],
)
def test_the_headers_decide_the_give_back(
    status: int, details: str, flags: int, give_back: bool, reason: str
) -> None:
    inspector = ResponseInspector(call_ctx())
    assert (
        inspector.headers(status, "application/json", False, details=details, flags=flags)
        is Plan.PASS
    )
    assert (inspector.report.give_back, inspector.report.reason) == (give_back, reason)


RESULT = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
IS_ERROR = '{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}'
RPC_ERROR = '{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"Request cancelled"}}'


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([RESULT], "result"),
        ([PROGRESS, IS_ERROR], "result"),
        ([RPC_ERROR], "jsonrpc_error"),  # e.g. a cancelled call: the tool may have run
        ([PROGRESS], "no_response"),
    ],
)
@pytest.mark.parametrize("media", ["sse", "json"])
def test_whatever_the_body_says_the_quota_stays(
    messages: list[str], reason: str, media: str
) -> None:
    if media == "json" and len(messages) > 1:
        return
    body = sse(*messages) if media == "sse" else messages[0].encode()
    content_type = "text/event-stream" if media == "sse" else "application/json"
    inspector = ResponseInspector(call_ctx())
    assert inspector.headers(200, content_type, False) is Plan.OBSERVE
    assert run(ResponseInspector(call_ctx()), chunked(body, 5), content_type=content_type) == body
    run(inspector := ResponseInspector(call_ctx()), chunked(body, 5), content_type=content_type)
    assert (inspector.report.give_back, inspector.report.reason) == (False, reason)


def test_a_stream_that_ends_early_keeps_the_quota() -> None:
    inspector = ResponseInspector(call_ctx())
    run(inspector, [sse(PROGRESS), b'event: message\r\ndata: {"jsonrpc"'], end=False)
    assert (inspector.report.give_back, inspector.report.reason) == (False, "incomplete")
    assert inspector.report.complete is False


def test_no_give_back_without_a_reservation_or_for_a_denial() -> None:
    for context in [
        ctx("tools/call"),
        call_ctx(decision="deny"),
        call_ctx(reservation=Reservation()),
    ]:
        inspector = ResponseInspector(context)
        inspector.headers(503, "application/json", False, details=EARLY_RESET, flags=UF)
        assert inspector.report.give_back is False


def test_a_hiding_grants_call_is_filtered_and_its_quota_question_still_answered() -> None:
    inspector = ResponseInspector(call_ctx(), hide(HIDDEN))
    got = run(inspector, chunked(sse(PROGRESS, RESULT), 7))
    assert got == sse(PROGRESS, RESULT)
    assert inspector.plan is Plan.FILTER
    assert (inspector.report.give_back, inspector.report.reason) == (False, "result")


def test_a_filtered_call_whose_stream_ends_after_its_answer_is_a_result() -> None:
    """FILTER reads on past the answer (a grant whose listings are filtered, the seed's
    shape): a client that goes once it has the answer ends the stream first, and the call
    still ended with its result."""
    inspector = ResponseInspector(call_ctx(), hide(HIDDEN))
    run(inspector, [sse(PROGRESS, RESULT)], end=False)
    assert inspector.report.complete is False
    assert (inspector.report.give_back, inspector.report.reason) == (False, "result")


def test_giving_up_an_observed_body_keeps_the_quota_and_owes_nothing() -> None:
    inspector = ResponseInspector(call_ctx())
    inspector.headers(200, "application/json", False)
    assert inspector.body(b'{"jsonrpc"', False) is None  # observing: passed as it came
    inspector.give_up()
    assert inspector.plan is Plan.PASS and inspector.body(b":1}", True) is None
    assert inspector.report.unparsed == 1 and inspector.report.reason == "unparsed"


# -- properties: any bytes, any chunking ---------------------------------------------------

SSE_PIECES = st.sampled_from(
    [
        *(b"data: ", b"data:", b"id: 1", b"event: message", b"event: ping", b": c"),
        *(b"\r\n", b"\n", b"\r", b":", b" ", b"{", b"}", b'"id":1', b"\xff", b"\x00"),
        *(LISTING.encode(), RESULT.encode(), RPC_ERROR.encode(), BIG.encode()),
        *(b'{"result":{"tools":[{"name":"image.generate.replicate"}]}}',),
    ]
)


def _replay(inspector: ResponseInspector, body: bytes, cuts: list[int], media: str) -> bytes:
    content_type = "text/event-stream" if media == "sse" else "application/json"
    plan = inspector.headers(200, content_type, end_of_stream=False)
    if plan is Plan.REFUSE:
        assert inspector.refusal is not None
        return inspector.refusal[1].encode()
    bounds = sorted({min(c, len(body)) for c in cuts} | {len(body)})
    out, start = bytearray(), 0
    for end in bounds:
        chunk = body[start:end]
        replaced = None if plan is Plan.PASS else inspector.body(chunk, end == len(body))
        out += chunk if replaced is None else replaced
        start = end
    return bytes(out)


def _readable_hidden(out: bytes, media: str) -> bool:
    """Whether a client could read the hidden tool in a `result.tools` array."""
    try:
        read = events_of(out) if media == "sse" else [json.loads(out)]
    except ValueError:
        return False
    return any(HIDDEN in names(m) for m in read if isinstance(m, dict))


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(SSE_PIECES, max_size=30),
    cuts=st.lists(st.integers(0, 6000), max_size=8),
    media=st.sampled_from(["sse", "json"]),
)
def test_any_body_any_chunking_never_shows_a_hidden_tool(
    pieces: list[bytes], cuts: list[int], media: str
) -> None:
    body = b"".join(pieces)
    # nothing hidden and nothing to check: every byte passes exactly as sent
    observer = ResponseInspector(call_ctx(), limit=1000)
    assert _replay(observer, body, cuts, media) == body
    assert observer.report.reason is not None and observer.error is None
    # a grant that hides a tool: never raises, never lets a client read it
    hider = ResponseInspector(ctx("tools/list"), hide(HIDDEN), limit=1000)
    out = _replay(hider, body, cuts, media)
    assert hider.error is None
    assert not _readable_hidden(out, media)


# -- the other listings ----------------------------------------------------------------------

SECRET = "file:///etc/passwd"
RESOURCES = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 8,
        "result": {"resources": [{"uri": "docs://a", "name": "a"}, {"uri": SECRET, "name": "p"}]},
    }
)
PROMPTS = json.dumps(
    {"jsonrpc": "2.0", "id": 8, "result": {"prompts": [{"name": "internal"}, {"name": "ok"}]}}
)
TEMPLATES = json.dumps(
    {"jsonrpc": "2.0", "id": 8, "result": {"resourceTemplates": [{"uriTemplate": "db://{t}"}]}}
)


def content() -> ListingFilter:
    """A grant that may not see SECRET, the `internal` prompt, nor any template."""
    return ListingFilter(
        {
            "resources": lambda uri: uri in (None, SECRET),
            "resourceTemplates": lambda _text: True,
            "prompts": lambda name: name in (None, "internal"),
        }
    )


@pytest.mark.parametrize("media", ["json", "sse"])
@pytest.mark.parametrize(
    ("method", "body", "kept"),
    [
        ("resources/list", RESOURCES, {"resources": [{"uri": "docs://a", "name": "a"}]}),
        ("prompts/list", PROMPTS, {"prompts": [{"name": "ok"}]}),
        ("resources/templates/list", TEMPLATES, {"resourceTemplates": []}),
    ],
)
def test_content_listings_are_filtered_in_json_and_sse(
    media: str, method: str, body: str, kept: dict[str, Any]
) -> None:
    raw = sse(body, ids=True) if media == "sse" else body.encode()
    content_type = "text/event-stream" if media == "sse" else "application/json"
    inspector = ResponseInspector(ctx(method, rid=8), content())
    got = run(inspector, chunked(raw, 7), content_type=content_type)
    read = events_of(got) if media == "sse" else [json.loads(got)]
    assert [m["result"] for m in read] == [kept]
    assert inspector.report.content_removed == 1 and inspector.report.tools_removed == 0
    if media == "sse":
        assert got.startswith(b"id: e0\r\n")


def test_a_content_listing_that_answers_another_id_is_withheld_only_when_filtered() -> None:
    body = RESOURCES.replace('"id": 8', '"id": "8"').encode()
    filtered = ResponseInspector(ctx("resources/list", rid=8), content())
    got = json.loads(run(filtered, [body], content_type="application/json"))
    assert got["id"] == 8 and "another request" in got["error"]["message"]
    # a grant whose policy hides only tools: its resources/list passes as it always did
    tools_only = ResponseInspector(ctx("resources/list", rid=8), hide(HIDDEN))
    assert run(tools_only, [body], content_type="application/json") == body


def test_a_content_listing_over_the_bound_is_withheld_only_when_filtered() -> None:
    big = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 6,
            "result": {
                "resources": [{"uri": f"docs://{i}"} for i in range(60)] + [{"uri": SECRET}]
            },
        }
    )
    stream = sse(PROGRESS, big, ids=True)
    filtered = ResponseInspector(ctx("resources/list", rid=6), content(), limit=1000)
    got = run(filtered, chunked(stream, 300))
    assert SECRET.encode() not in got
    progress, error = events_of(got)
    assert progress == json.loads(PROGRESS)
    assert error["id"] == 6 and "larger than 1 MiB" in error["error"]["message"]
    tools_only = ResponseInspector(ctx("resources/list", rid=6), hide(HIDDEN), limit=1000)
    assert run(tools_only, chunked(stream, 300)) == stream
