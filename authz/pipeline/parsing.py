"""Parsing large MCP bodies off the event loop, one grant after the other.

Every decision shares one event loop (gRPC checks, the response phase, /healthz, /readyz,
the approvals API). Parsing is pure CPU: a 1 MiB body within the value bound
(`authz.mcp.MAX_VALUES`) costs up to a few tens of milliseconds, and twelve of them in
flight from one grant would queue every other grant's requests behind them. So a body that
can be expensive (`is_large`) is parsed on one worker thread instead, and the waiting bodies
take turns by grant (round robin): one grant's flood delays its own bodies, while the loop
keeps serving everyone else, with the worker's thread and the loop sharing the interpreter
lock in short slices. Small bodies (nearly all MCP traffic) are parsed inline: a thread hop
would cost them more than the parse.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from authz.mcp import parse_message
from authz.model import McpRequest
from authz.strictjson import rough_values

__all__ = ["LARGE_BYTES", "LARGE_VALUES", "ParsePool", "is_large"]

LARGE_BYTES: Final = 64 * 1024
"""Bodies longer than this are parsed on the worker (decoding 64 KiB of escapes: ~0.5 ms)."""
LARGE_VALUES: Final = 1000
"""So are bodies with more commas and brackets than this (about 1 µs each to parse)."""


def is_large(body: bytes) -> bool:
    """Whether parsing `body` may take long enough to hold up other requests."""
    return len(body) > LARGE_BYTES or rough_values(body) > LARGE_VALUES


class ParsePool:
    """`parse_message` for the pipeline: inline for small bodies, else on one worker thread
    with waiting bodies served one grant at a time, in turn."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcp-authz-parse")
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        """Grants with bodies waiting for the worker, in turn order (a dict keeps order)."""
        self._busy = False

    async def parse(self, body: bytes, *, session_id: str | None, grant_id: str) -> McpRequest:
        """Parse one body (raises `McpParseError` as `parse_message` does)."""
        if not is_large(body):
            return parse_message(body, session_id=session_id)
        await self._turn(grant_id)
        try:
            job = asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(parse_message, body, session_id=session_id)
            )
        except BaseException:  # not submitted (the pool is closed): the turn is not used
            self._hand_on()
            raise
        job.add_done_callback(lambda _: self._hand_on())
        # shielded: a cancelled check (Envoy gave up) leaves the worker's turn to the job
        return await asyncio.shield(job)

    def pending(self) -> int:
        """Bodies waiting for the worker (not counting the one it parses)."""
        return sum(len(queue) for queue in self._waiting.values())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _turn(self, grant_id: str) -> None:
        """Wait until the worker is this body's: at once if it is idle."""
        if not self._busy:
            self._busy = True
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(grant_id, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._hand_on()  # the turn came with the cancellation: pass it on
            raise

    def _hand_on(self) -> None:
        """Give the worker to the next grant in turn, or mark it idle."""
        while self._waiting:
            grant_id = next(iter(self._waiting))
            queue = self._waiting.pop(grant_id)
            turn = queue.popleft()
            if queue:
                self._waiting[grant_id] = queue  # back of the line
            if not turn.done():  # a waiter that was cancelled has no turn to take
                turn.set_result(None)
                return
        self._busy = False
