"""An in-memory event store: resumable SSE streams (`Last-Event-ID`) for one process.

Off unless asked for (`--event-store memory`, or `IMAGEGEN_EVENT_STORE=memory`): with it, the
SDK stores every message it sends on a session's SSE streams and replays the ones after a
client's `Last-Event-ID` on a GET. Bounded: the oldest events go first past `max_events`.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

import mcp_types as types
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId

__all__ = ["MemoryEventStore"]


class MemoryEventStore(EventStore):
    """Events in insertion order, keyed by a random id."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._max = max_events
        self._events: OrderedDict[EventId, tuple[StreamId, types.JSONRPCMessage | None]] = (
            OrderedDict()
        )

    async def store_event(
        self, stream_id: StreamId, message: types.JSONRPCMessage | None
    ) -> EventId:
        event_id = uuid.uuid4().hex
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._max:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        if last_event_id not in self._events:
            return None
        stream_id = self._events[last_event_id][0]
        after = False
        for event_id, (stream, message) in list(self._events.items()):
            if after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            if event_id == last_event_id:
                after = True
        return stream_id
