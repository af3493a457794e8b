"""The response phase, pure (authz/response.py): listing filter, SSE framing, give-back."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.model import Reservation
from authz.policy import load_policy
from authz.response import (
    Hides,
    Plan,
    ResponseContext,
    ResponseInspector,
    SseSplitter,
    Unparsable,
    answer_kind,
    event_data,
    filter_tools_list,
    listing_filter,
    never_callable,
    rewrite_event,
)

HIDDEN = "image.generate.replicate"


def hide(*names: str) -> Hides:
    return lambda name: name in names


def listing(tools: list[Any], rid: object = 1, **extra: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"tools": tools, **extra}})


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} tool", "inputSchema": {"type": "object"}}


# -- filter_tools_list ------------------------------------------------------------------


def test_removes_hidden_tools_and_keeps_every_other_byte() -> None:
    text = listing([tool("a"), tool(HIDDEN), tool("b")], nextCursor="c2")
    new, removed = filter_tools_list(text, 1, hide(HIDDEN))
    assert removed == 1
    assert json.loads(new) == json.loads(listing([tool("a"), tool("b")], nextCursor="c2"))
    # exactly the element and one separator are gone
    assert new == text.replace(json.dumps(tool(HIDDEN)) + ", ", "")


def test_next_cursor_is_kept_byte_for_byte() -> None:
    # escapes a re-serialisation would change: \u00e9, \/, a surrogate pair, spacing
    cursor_bytes = '"p\\u00e9ge\\/2\\ud83d\\ude00==="'
    text = (
        '{ "jsonrpc":"2.0" , "id" : 7, "result" : { "nextCursor" : '
        + cursor_bytes
        + ' , "tools" : [ {"name":"image.generate.replicate"} ,\n {"name":"x"} ] ,'
        + ' "_meta": {"k": [1, 2.50, "\\""]} } }'
    )
    new, removed = filter_tools_list(text, 7, hide(HIDDEN))
    assert removed == 1
    assert cursor_bytes in new
    assert new.count(cursor_bytes) == 1
    assert '"_meta": {"k": [1, 2.50, "\\""]}' in new  # untouched, not re-serialised
    assert json.loads(new)["result"]["nextCursor"] == "pége/2\U0001f600==="
    assert json.loads(new)["result"]["tools"] == [{"name": "x"}]


def test_nothing_hidden_returns_the_same_text() -> None:
    text = listing([tool("a"), tool("b")], nextCursor="n")
    new, removed = filter_tools_list(text, 1, hide(HIDDEN))
    assert (new, removed) == (text, 0)
    assert new is text


@pytest.mark.parametrize(
    "text",
    [
        listing([tool(HIDDEN)], rid=2),  # another request's answer
        listing([tool(HIDDEN)], rid="1"),  # "1" is not 1
        '{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}',
        '{"jsonrpc":"2.0","id":1,"result":{"content":[]}}',  # not a listing
        '{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"image.generate.replicate"}}}',
        '{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}',
        '[{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}]',
        '"a string"',
    ],
)
def test_other_messages_are_left_alone(text: str) -> None:
    assert filter_tools_list(text, 1, hide(HIDDEN)) == (text, 0)


@pytest.mark.parametrize("text", ["", "{", '{"id":1,', "nope", '{"a":1}x', "\ud800"])
def test_malformed_json_raises_unparsable(text: str) -> None:
    with pytest.raises(Unparsable):
        filter_tools_list(text, 1, hide(HIDDEN))


def test_every_shape_of_removal() -> None:
    names = ["a", HIDDEN, "b", HIDDEN, "c"]
    for keep in range(1 << len(names)):
        tools = [{"name": n, "i": i} for i, n in enumerate(names)]
        hidden = {f"{n}{i}" for i, n in enumerate(names) if not keep >> i & 1}
        renamed = [{"name": f"{t['name']}{t['i']}", "i": t["i"]} for t in tools]
        for indent in (None, 2):
            text = json.dumps(
                {"jsonrpc": "2.0", "id": 1, "result": {"tools": renamed}}, indent=indent
            )
            new, removed = filter_tools_list(text, 1, hide(*hidden))
            kept = [t for t in renamed if t["name"] not in hidden]
            assert removed == len(renamed) - len(kept)
            assert json.loads(new)["result"]["tools"] == kept


def test_hide_all_removes_entries_without_a_name_too() -> None:
    text = listing([tool("a"), {"title": "nameless"}, 3])
    new, removed = filter_tools_list(text, 1, lambda _name: True)
    assert removed == 3 and json.loads(new)["result"]["tools"] == []


def test_entries_without_a_string_name_are_kept_otherwise() -> None:
    text = listing([{"name": 5}, {"title": "x"}, tool(HIDDEN)])
    new, removed = filter_tools_list(text, 1, hide(HIDDEN))
    assert removed == 1
    assert json.loads(new)["result"]["tools"] == [{"name": 5}, {"title": "x"}]


def test_duplicate_keys_every_tools_array_is_filtered() -> None:
    text = (
        '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"image.generate.replicate"}],'
        '"tools":[{"name":"a"},{"name":"image.generate.replicate"}]}}'
    )
    new, removed = filter_tools_list(text, 1, hide(HIDDEN))
    assert removed == 2
    assert HIDDEN not in new
    assert json.loads(new)["result"]["tools"] == [{"name": "a"}]


def test_large_listing_is_fast_enough_and_exact() -> None:
    tools = [tool(f"t{i}") for i in range(3000)] + [tool(HIDDEN)]
    random.Random(4).shuffle(tools)
    text = listing(tools, nextCursor="z")
    new, removed = filter_tools_list(text, 1, hide(HIDDEN))
    assert removed == 1
    assert len(json.loads(new)["result"]["tools"]) == 3000


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}', "result"),
        ('{"jsonrpc":"2.0","id":1,"result":{}}', "result"),
        ('{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}', "error"),
        ('{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"bad"}}', None),
        ('{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}', None),
        ('{"jsonrpc":"2.0","id":true,"result":{}}', None),
        ('{"jsonrpc":"2.0","method":"notifications/progress","params":{}}', None),
    ],
)
def test_answer_kind(text: str, kind: str | None) -> None:
    assert answer_kind(text, 1) == kind


def test_ids_compare_by_type_and_exact_value() -> None:
    big = 2**63 + 1
    assert answer_kind(f'{{"jsonrpc":"2.0","id":{big},"result":{{}}}}', big) == "result"
    assert answer_kind(f'{{"jsonrpc":"2.0","id":{big},"result":{{}}}}', big - 1) is None
    assert answer_kind('{"jsonrpc":"2.0","id":"a\\u00e9","result":{}}', "aé") == "result"


# -- which tools a listing hides --------------------------------------------------------


def test_listing_filter_follows_hide_and_hide_denied() -> None:
    plain = load_policy({"version": "1"}, name="p")
    assert listing_filter(plain) is None
    hiding = listing_filter(load_policy({"version": "1", "hide": [HIDDEN]}, name="p"))
    assert hiding is not None and hiding(HIDDEN) and not hiding("x") and not hiding(None)
    everything = listing_filter(load_policy({"version": "1", "hide": "*"}, name="p"))
    assert everything is not None and everything("x") and everything(None)


DENYING = {
    "version": "1",
    "default": "deny",
    "hide_denied": True,
    "tools": {
        "gemini": {},
        "openai": {"deny_if": [{"conditions": []}]},
        "google": {"deny_if": [{"conditions": [{"path": "args.x", "op": "eq", "value": 1}]}]},
        "flux": {"rules": [{"name": "off", "action": "deny"}]},
        "rate": {"rules": [{"rate_limit": "5/minute"}]},
    },
}


def test_hide_denied_removes_tools_the_grant_can_never_call() -> None:
    policy = load_policy(DENYING, name="d")
    hides = listing_filter(policy)
    assert hides is not None
    assert [n for n in ("gemini", "openai", "google", "flux", "rate", "unlisted") if hides(n)] == [
        "openai",
        "flux",
        "unlisted",
    ]


def test_never_callable_under_default_allow_and_the_star_entry() -> None:
    allow = load_policy({"version": "1", "tools": {"a": {}}}, name="a")
    assert not never_callable(allow, "unlisted") and not never_callable(allow, "a")
    star = load_policy(
        {"version": "1", "tools": {"*": {"deny_if": [{"conditions": []}]}}}, name="s"
    )
    assert never_callable(star, "anything")


# -- SSE ---------------------------------------------------------------------------------


def split_all(stream: bytes, sizes: list[int], limit: int = 1 << 20) -> list[tuple[bytes, bool]]:
    splitter = SseSplitter(limit)
    out: list[tuple[bytes, bool]] = []
    pos = 0
    for size in sizes:
        out += splitter.feed(stream[pos : pos + size])
        pos += size
    out += splitter.feed(stream[pos:])
    rest = splitter.finish()
    if rest:
        out.append((rest, False))
    return out


EVENTS = [
    b"event: message\r\ndata: {}\r\n\r\n",
    b"data: a\ndata: b\n\n",
    b": comment\rdata: x\r\r",
    b"\n",  # with the CR before it, a CRLF: no event of its own
    b"id: 3\r\ndata: y\r\n\r\n",
    b"\n\ndata: z\n\n",
]
DATA = ["{}", "a\nb", "x", "y", "z"]


@pytest.mark.parametrize("seed", range(60))
def test_splitter_finds_events_whatever_the_chunking(seed: int) -> None:
    stream = b"".join(EVENTS)
    rng = random.Random(seed)
    sizes = [rng.randint(0, 7) for _ in range(20)]
    segments = split_all(stream, sizes)
    assert b"".join(s for s, _ in segments) == stream
    data = [event_data(s) for s, complete in segments if complete]
    assert [d for d in data if d is not None] == DATA


def test_splitter_keeps_crlf_pairs_together_within_a_chunk() -> None:
    segments = split_all(b"data: 1\r\n\r\ndata: 2\r\n\r\n", [])
    assert segments == [(b"data: 1\r\n\r\n", True), (b"data: 2\r\n\r\n", True)]


def test_splitter_passes_an_oversized_event_and_resyncs() -> None:
    big = b"data: " + b"x" * 100 + b"\n\n"
    stream = b"data: a\n\n" + big + b"data: b\n\n"
    segments = split_all(stream, [5, 20, 30, 40, 50], limit=50)
    assert b"".join(s for s, _ in segments) == stream
    complete = [s for s, c in segments if c]
    assert complete == [b"data: a\n\n", b"data: b\n\n"]
    assert any(not c for _, c in segments)


def test_event_data_and_rewrite() -> None:
    raw = b'event: message\r\nid: 9\r\ndata: {"a":\r\ndata: 1}\r\n: note\r\n\r\n'
    assert event_data(raw) == '{"a":\n1}'
    assert event_data(b"event: ping\ndata: x\n\n") is None
    assert event_data(b": only a comment\n\n") is None
    assert event_data(b"data:x\n\n") == "x"
    new = rewrite_event(raw, '{"b":2}')
    assert new == b'event: message\r\nid: 9\r\ndata: {"b":2}\r\n: note\r\n\r\n'
    with pytest.raises(Unparsable):
        event_data(b"data: \xff\n\n")


# -- the inspector -----------------------------------------------------------------------

RESERVATION = Reservation(entries=((("c", "grant", "g", 60), 0, 1),), token="a" * 32)


def ctx(method: str, rid: object = 1, **kw: Any) -> ResponseContext:
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
) -> bytes:
    """Feed a response; returns what the client receives."""
    plan = inspector.headers(status, content_type, end_of_stream=not chunks and end)
    out = bytearray()
    for i, chunk in enumerate(chunks):
        last = end and i == len(chunks) - 1
        if plan is Plan.PASS:
            out += chunk
            continue
        replaced = inspector.body(chunk, last)
        out += chunk if replaced is None else replaced
    if not end:
        inspector.abort()
    return bytes(out)


def sse(*messages: str) -> bytes:
    return b"".join(b"event: message\r\ndata: " + m.encode() + b"\r\n\r\n" for m in messages)


PROGRESS = '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
LISTING = listing([tool("a"), tool(HIDDEN)], nextCursor="n2")
FILTERED = listing([tool("a")], nextCursor="n2")


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


@pytest.mark.parametrize("size", [1, 3, 17, 10_000])
def test_sse_listing_is_filtered_and_other_events_pass(size: int) -> None:
    stream = sse(PROGRESS, LISTING)
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    got = run(inspector, chunked(stream, size))
    assert got == sse(PROGRESS, FILTERED).replace(FILTERED.encode(), _cut(LISTING).encode())
    assert json.loads(got.split(b"data: ")[2].split(b"\r\n")[0]) == json.loads(FILTERED)
    assert inspector.outcome.tools_removed == 1
    assert inspector.outcome.complete is True


def _cut(text: str) -> str:
    return filter_tools_list(text, 1, hide(HIDDEN))[0]


def test_sse_events_before_the_listing_are_not_held() -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    assert inspector.headers(200, "text/event-stream", False) is Plan.FILTER
    first = sse(PROGRESS)
    assert inspector.body(first + b"event: message\r\ndata: {", False) == first  # rest held
    assert inspector.body(LISTING[1:].encode() + b"\r\n\r\n", True) is not None


def test_sse_listing_for_another_id_or_without_hidden_tools_passes_unchanged() -> None:
    for inspector, stream in [
        (ResponseInspector(ctx("tools/list", rid=2), hide(HIDDEN)), sse(LISTING)),
        (ResponseInspector(ctx("tools/list"), hide("zzz")), sse(LISTING)),
    ]:
        assert run(inspector, chunked(stream, 5)) == stream
        assert inspector.outcome.tools_removed == 0


@pytest.mark.parametrize("size", [1, 7, 100_000])
def test_json_listing_is_filtered_whole(size: int) -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    got = run(inspector, chunked(LISTING.encode(), size), content_type="application/json")
    assert got == _cut(LISTING).encode()
    assert json.loads(got) == json.loads(FILTERED)


def test_json_listing_with_nothing_hidden_is_returned_byte_for_byte() -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide("zzz"))
    body = (LISTING + "\n").encode()
    assert run(inspector, chunked(body, 4), content_type="application/json; charset=utf-8") == body


@pytest.mark.parametrize(
    "body",
    [b'{"jsonrpc":"2.0","id":1,"result":{"tools":[', b"\xff\xfe{}", b"<html>oops</html>"],
)
def test_malformed_json_passes_unchanged_and_is_counted(body: bytes) -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    assert run(inspector, chunked(body, 3), content_type="application/json") == body
    assert inspector.outcome.unparsed == 1


def test_malformed_sse_passes_unchanged_and_the_next_event_is_still_filtered() -> None:
    stream = b"data: {not json\r\n\r\ndata: \xff\xfe\r\n\r\n" + sse(LISTING)
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    got = run(inspector, chunked(stream, 9))
    assert got.startswith(b"data: {not json\r\n\r\ndata: \xff\xfe\r\n\r\n")
    assert HIDDEN.encode() not in got
    assert inspector.outcome.unparsed == 2 and inspector.outcome.tools_removed == 1


def test_over_the_bound_passes_through_unchanged() -> None:
    big = listing([tool(HIDDEN)] + [tool(f"t{i}") for i in range(50)])
    for content_type, body in [("application/json", big.encode()), ("text/event-stream", sse(big))]:
        inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN), limit=1000)
        assert run(inspector, chunked(body, 300), content_type=content_type) == body
        assert inspector.outcome.oversized == 1 and inspector.outcome.tools_removed == 0


def test_an_oversized_event_does_not_stop_filtering_the_next_one() -> None:
    stream = sse('{"jsonrpc":"2.0","method":"x","params":{"p":"' + "y" * 2000 + '"}}', LISTING)
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN), limit=1000)
    got = run(inspector, chunked(stream, 256))
    assert HIDDEN.encode() not in got and inspector.outcome.oversized == 1


@pytest.mark.parametrize(
    ("context", "status", "content_type"),
    [
        (ctx("tools/list", decision="deny"), 200, "application/json"),  # a sidecar denial
        (ctx("tools/list", decision=None), 413, "application/json"),  # Envoy, before the check
        (ctx("tools/list"), 503, "application/json"),  # an Envoy local reply after the allow
        (ctx("tools/list"), 200, "text/html"),
        (ctx("initialize"), 200, "text/event-stream"),
        (ctx("tools/call"), 200, "application/json"),  # no reservation: nothing to do
        (ResponseContext(), 200, "text/event-stream"),  # a GET stream, no metadata
    ],
)
def test_responses_the_sidecar_leaves_alone(
    context: ResponseContext, status: int, content_type: str
) -> None:
    inspector = ResponseInspector(context, hide(HIDDEN))
    assert inspector.headers(status, content_type, False) is Plan.PASS
    assert inspector.outcome.give_back is False


# -- give-back ---------------------------------------------------------------------------

RESULT = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
IS_ERROR = '{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}'
RPC_ERROR = '{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid"}}'
OTHER_ERROR = '{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Invalid"}}'


ANSWERS = [
    ([RESULT], False, "result"),
    ([IS_ERROR], False, "result"),
    ([PROGRESS, IS_ERROR], False, "result"),
    ([RPC_ERROR], True, "jsonrpc_error"),
    ([PROGRESS, RPC_ERROR], True, "jsonrpc_error"),
    ([OTHER_ERROR], True, "no_response"),
    ([PROGRESS], True, "no_response"),
    ([RESULT, RPC_ERROR], False, "result"),  # the first answer counts
]
CASES = [(m, g, r, "sse") for m, g, r in ANSWERS] + [
    (m, g, r, "json")
    for m, g, r in ANSWERS
    if len(m) == 1  # a JSON body is one message
]


@pytest.mark.parametrize(("messages", "give_back", "reason", "media"), CASES)
def test_give_back_follows_the_answer(
    messages: list[str], give_back: bool, reason: str, media: str
) -> None:
    if media == "json":
        body, content_type = messages[0].encode(), "application/json"
    else:
        body, content_type = sse(*messages), "text/event-stream"
    inspector = ResponseInspector(call_ctx())
    assert run(inspector, chunked(body, 5), content_type=content_type) == body  # never changed
    assert (inspector.outcome.give_back, inspector.outcome.reason) == (give_back, reason)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 400, 404])
def test_an_http_error_status_gives_back_without_reading_the_body(status: int) -> None:
    inspector = ResponseInspector(call_ctx())
    assert inspector.headers(status, "application/json", False) is Plan.PASS
    assert (inspector.outcome.give_back, inspector.outcome.reason) == (True, "http_status")


def test_a_stream_that_ends_early_gives_back() -> None:
    inspector = ResponseInspector(call_ctx())
    run(inspector, [sse(PROGRESS), b'event: message\r\ndata: {"jsonrpc"'], end=False)
    assert (inspector.outcome.give_back, inspector.outcome.reason) == (True, "incomplete")
    assert inspector.outcome.complete is False


def test_a_stream_that_ends_after_the_result_keeps_the_quota() -> None:
    inspector = ResponseInspector(call_ctx())
    run(inspector, [sse(RESULT)], end=False)
    assert (inspector.outcome.give_back, inspector.outcome.reason) == (False, "result")


def test_an_unreadable_answer_keeps_the_quota() -> None:
    for body, content_type in [
        (b"data: {broken\r\n\r\n", "text/event-stream"),
        (b"{broken", "application/json"),
        (b"<html></html>", "text/html"),
    ]:
        inspector = ResponseInspector(call_ctx())
        run(inspector, [body], content_type=content_type)
        assert (inspector.outcome.give_back, inspector.outcome.reason) == (False, "unparsed")
    inspector = ResponseInspector(call_ctx(), limit=100)
    run(inspector, [sse('{"jsonrpc":"2.0","id":1,"result":{"x":"' + "y" * 300 + '"}}')])
    assert (inspector.outcome.give_back, inspector.outcome.reason) == (False, "unparsed")


def test_no_body_at_all_gives_back() -> None:
    inspector = ResponseInspector(call_ctx())
    assert inspector.headers(200, "application/json", True) is Plan.PASS
    assert (inspector.outcome.give_back, inspector.outcome.reason) == (True, "no_response")


def test_no_give_back_without_a_reservation_or_for_a_denial() -> None:
    for context in [
        ctx("tools/call"),
        call_ctx(decision="deny"),
        call_ctx(reservation=Reservation()),
    ]:
        inspector = ResponseInspector(context)
        assert inspector.headers(503, "application/json", False) is Plan.PASS
        assert inspector.outcome.give_back is False


def test_a_compressed_body_is_opaque() -> None:
    listing = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    assert listing.headers(200, "application/json", False, content_encoding="gzip") is Plan.PASS
    call = ResponseInspector(call_ctx())
    assert call.headers(200, "text/event-stream", False, content_encoding="br") is Plan.PASS
    assert (call.outcome.give_back, call.outcome.reason, call.outcome.media) == (
        False,
        "unparsed",
        "other",
    )
    plain = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    assert plain.headers(200, "application/json", False, content_encoding="identity") is Plan.FILTER


def test_give_up_returns_what_was_held() -> None:
    inspector = ResponseInspector(ctx("tools/list"), hide(HIDDEN))
    inspector.headers(200, "application/json", False)
    assert inspector.body(b'{"jsonrpc"', False) == b""
    assert inspector.give_up() == b'{"jsonrpc"'
    assert inspector.body(b":1}", True) is None
    assert inspector.outcome.unparsed == 1


# -- properties: any bytes, any chunking ---------------------------------------------------

SSE_PIECES = st.sampled_from(
    [
        *(b"data: ", b"event: message", b"event: ping", b"\r\n", b"\n", b"\r", b":", b" "),
        *(b"{", b"}", b'"id":1', b"\xff", b"\x00"),
        *(LISTING.encode(), RESULT.encode(), RPC_ERROR.encode()),
    ]
)


def _replay(inspector: ResponseInspector, body: bytes, cuts: list[int], media: str) -> bytes:
    content_type = "text/event-stream" if media == "sse" else "application/json"
    plan = inspector.headers(200, content_type, end_of_stream=False)
    bounds = sorted({min(c, len(body)) for c in cuts} | {len(body)})
    out, start = bytearray(), 0
    for end in bounds:
        chunk = body[start:end]
        replaced = None if plan is Plan.PASS else inspector.body(chunk, end == len(body))
        out += chunk if replaced is None else replaced
        start = end
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(SSE_PIECES, max_size=30),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
    media=st.sampled_from(["sse", "json"]),
)
def test_any_body_any_chunking_never_raises_and_only_listings_change(
    pieces: list[bytes], cuts: list[int], media: str
) -> None:
    body = b"".join(pieces)
    # nothing hidden: every byte passes exactly as sent, however it is cut
    same = ResponseInspector(ctx("tools/list"), hide("zzz"), limit=300)
    assert _replay(same, body, cuts, media) == body
    assert same.error is None
    # give-back only reads
    observer = ResponseInspector(call_ctx(), limit=300)
    assert _replay(observer, body, cuts, media) == body
    assert observer.outcome.reason is not None and observer.error is None
    # filtering: never raises, and only ever removes bytes
    hider = ResponseInspector(ctx("tools/list"), hide(HIDDEN), limit=300)
    out = _replay(hider, body, cuts, media)
    assert hider.error is None
    assert len(out) <= len(body)
    if not hider.outcome.tools_removed:
        assert out == body
