"""Server-sent events, pure (authz/response/sse.py): cutting a stream into events whatever
the chunking, reading and rewriting an event's data, the data of an event too long to hold."""

from __future__ import annotations

import random

import pytest

from authz.response.jsonrpc import Unparsable
from authz.response.listing import ListingScanner
from authz.response.sse import Segment, SseDataReader, SseSplitter, event_payload, rewrite_event


def split_all(stream: bytes, sizes: list[int], limit: int = 1 << 20) -> list[tuple[bytes, Segment]]:
    splitter = SseSplitter(limit)
    out: list[tuple[bytes, Segment]] = []
    pos = 0
    for size in sizes:
        out += splitter.feed(stream[pos : pos + size])
        pos += size
    out += splitter.feed(stream[pos:])
    rest = splitter.finish()
    if rest:
        out.append((rest, Segment.PART))
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
    data = [event_payload(s)[1] for s, kind in segments if kind is Segment.EVENT]
    assert [d for d in data if d is not None] == DATA


def test_splitter_keeps_crlf_pairs_together_within_a_chunk() -> None:
    segments = split_all(b"data: 1\r\n\r\ndata: 2\r\n\r\n", [])
    assert segments == [(b"data: 1\r\n\r\n", Segment.EVENT), (b"data: 2\r\n\r\n", Segment.EVENT)]


def test_splitter_marks_an_oversized_event_from_first_part_to_last() -> None:
    big = b"data: " + b"x" * 100 + b"\n\n"
    stream = b"data: a\n\n" + big + b"data: b\n\n"
    segments = split_all(stream, [5, 20, 30, 40, 50], limit=50)
    assert b"".join(s for s, _ in segments) == stream
    kinds = [k for _, k in segments]
    assert [s for s, k in segments if k is Segment.EVENT] == [b"data: a\n\n", b"data: b\n\n"]
    first = kinds.index(Segment.PART)
    last = kinds.index(Segment.LAST)
    assert first < last and all(k is Segment.PART for k in kinds[first:last])
    assert b"".join(s for s, _ in segments[first : last + 1]) == big
    # an oversized event that arrives in one piece: a PART, then an empty LAST
    assert split_all(big, [], limit=50) == [(big, Segment.PART), (b"", Segment.LAST)]


def test_event_payload_and_rewrite_keep_every_other_line() -> None:
    raw = b'event: message\r\nid: 9\r\ndata: {"a":\r\ndata: 1}\r\nretry: 5\r\n: note\r\n\r\n'
    assert event_payload(raw) == ("message", '{"a":\n1}')
    assert event_payload(b"event: ping\ndata: x\n\n") == ("ping", "x")
    assert event_payload(b": only a comment\n\n") == ("message", None)
    assert event_payload(b"id: 1\ndata:\n\n") == ("message", "")
    assert event_payload(b"data:x\n\n") == ("message", "x")
    new = rewrite_event(raw, '{"b":2}')
    assert new == b'event: message\r\nid: 9\r\ndata: {"b":2}\r\nretry: 5\r\n: note\r\n\r\n'
    assert rewrite_event(b"id: 4\n\n", "{}") == b"id: 4\ndata: {}\n\n"
    with pytest.raises(Unparsable):
        event_payload(b"data: \xff\n\n")


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_the_data_reader_feeds_data_lines_only_and_maps_offsets(size: int) -> None:
    raw = (
        b'id: 7\r\nevent: message\r\n: {"result":{"tools":[\r\ndata: {"id":1,\r\n'
        b'data: "result":{"x":1,\r\ndata:"tools" :[1]}}\r\n\r\n'
    )
    reader = SseDataReader(ListingScanner())
    at = None
    for pos in range(0, len(raw), size):
        found = reader.feed(raw[pos : pos + size])
        if found is not None:
            at = pos + found
            break
    assert at == raw.index(b"[1]")
    assert reader.scanner.message_id == 1
