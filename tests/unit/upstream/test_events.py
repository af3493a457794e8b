"""The upstream's optional in-memory event store (resumable SSE streams)."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp.server.streamable_http import EventMessage

from imagegen_upstream.cli import parse_args
from imagegen_upstream.events import MemoryEventStore
from imagegen_upstream.settings import from_env


def note(n: int) -> types.JSONRPCNotification:
    return types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"n": n})


async def test_replays_the_events_of_one_stream_after_the_given_id() -> None:
    store = MemoryEventStore()
    priming = await store.store_event("7", None)
    first = await store.store_event("7", note(1))
    await store.store_event("8", note(2))  # another stream
    second = await store.store_event("7", note(3))
    sent: list[EventMessage] = []

    async def send(event: EventMessage) -> None:
        sent.append(event)

    assert await store.replay_events_after(priming, send) == "7"
    assert [(e.event_id, e.message) for e in sent] == [(first, note(1)), (second, note(3))]
    assert await store.replay_events_after("unknown", send) is None


async def test_is_bounded_oldest_first() -> None:
    store = MemoryEventStore(max_events=2)
    oldest = await store.store_event("1", note(1))
    await store.store_event("1", note(2))
    await store.store_event("1", note(3))

    async def send(event: EventMessage) -> None:
        raise AssertionError("nothing to replay")

    assert await store.replay_events_after(oldest, send) is None


def test_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGEGEN_EVENT_STORE", raising=False)
    assert parse_args([]).event_store == "none"
    assert parse_args(["--event-store", "memory"]).event_store == "memory"
    assert from_env({"IMAGEGEN_EVENT_STORE": "memory"}).event_store == "memory"
    with pytest.raises(ValueError, match="event store"):
        from_env({"IMAGEGEN_EVENT_STORE": "redis"})
