"""Large bodies are parsed on a worker thread, one grant after the other."""

from __future__ import annotations

import asyncio
import threading

import pytest

from authz.mcp import INVALID_REQUEST, PARSE_ERROR, McpParseError
from authz.model import McpRequest
from authz.pipeline import parsing
from authz.pipeline.parsing import LARGE_BYTES, LARGE_VALUES, ParsePool, is_large

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def large(tag: str) -> bytes:
    """A body the pool sends to the worker, recognisable by its first bytes."""
    return tag.encode() + b" " * LARGE_BYTES


def test_which_bodies_are_large() -> None:
    assert not is_large(PING)
    assert is_large(PING + b" " * LARGE_BYTES)
    assert is_large(b"[" + b"0," * LARGE_VALUES + b"0]")  # short, but many values
    assert not is_large(b"[" + b"0," * (LARGE_VALUES // 2) + b"0]")


async def test_small_and_large_bodies_parse_alike() -> None:
    pool = ParsePool()
    try:
        small = await pool.parse(PING, session_id="s", grant_id="g")
        big = await pool.parse(PING + b" " * LARGE_BYTES, session_id="s", grant_id="g")
        assert (
            small == big == McpRequest(method="ping", id=1, is_notification=False, session_id="s")
        )
        for body, code in ((b"[" + b"[]," * 20_000 + b"[]]", INVALID_REQUEST), (large("x"), None)):
            with pytest.raises(McpParseError) as info:
                await pool.parse(body, session_id=None, grant_id="g")
            assert info.value.code == (code or PARSE_ERROR)
    finally:
        pool.close()


class Worker:
    """Stands in for `parse_message`: records the order of bodies, holds the first one."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.hold = threading.Event()

    def parse(self, body: bytes, *, session_id: str | None) -> McpRequest:
        tag = body.split(b" ", 1)[0].decode()
        if tag == "first":
            assert self.hold.wait(10)
        self.order.append(tag)
        return McpRequest(method="ping", id=tag, is_notification=False, session_id=session_id)


async def _queue(
    pool: ParsePool, grants_and_tags: list[tuple[str, str]]
) -> list[asyncio.Task[McpRequest]]:
    tasks = []
    for grant, tag in grants_and_tags:
        tasks.append(asyncio.create_task(pool.parse(large(tag), session_id=None, grant_id=grant)))
        await asyncio.sleep(0)  # each reaches its place in line before the next
    return tasks


async def test_waiting_bodies_take_turns_by_grant(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker()
    monkeypatch.setattr(parsing, "parse_message", worker.parse)
    pool = ParsePool()
    try:
        first = asyncio.create_task(pool.parse(large("first"), session_id=None, grant_id="a"))
        await asyncio.sleep(0)
        waiting = [("a", "a2"), ("a", "a3"), ("a", "a4"), ("b", "b1"), ("c", "c1"), ("b", "b2")]
        tasks = await _queue(pool, waiting)
        assert pool.pending() == len(waiting)
        worker.hold.set()
        results = await asyncio.gather(first, *tasks)
    finally:
        pool.close()
    assert [r.id for r in results] == ["first"] + [tag for _, tag in waiting]
    # grant a's flood waits its turn: b and c are served between a's bodies
    assert worker.order == ["first", "a2", "b1", "c1", "a3", "b2", "a4"]
    assert pool.pending() == 0


async def test_a_cancelled_check_gives_up_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker()
    monkeypatch.setattr(parsing, "parse_message", worker.parse)
    pool = ParsePool()
    try:
        first = asyncio.create_task(pool.parse(large("first"), session_id=None, grant_id="a"))
        await asyncio.sleep(0)
        gone, kept = await _queue(pool, [("a", "gone"), ("b", "kept")])
        gone.cancel()
        first.cancel()  # Envoy gave up on it: the worker still finishes it, then moves on
        worker.hold.set()
        assert (await kept).id == "kept"
        with pytest.raises(asyncio.CancelledError):
            await gone
        with pytest.raises(asyncio.CancelledError):
            await first
        # the worker is free again: the next body goes straight to it
        assert (await pool.parse(large("next"), session_id=None, grant_id="c")).id == "next"
    finally:
        pool.close()
    assert worker.order == ["first", "kept", "next"]


async def test_a_closed_pool_refuses_large_bodies_without_blocking_the_next() -> None:
    pool = ParsePool()
    pool.close()
    for _ in range(2):  # the turn taken by the first refusal is handed on
        with pytest.raises(RuntimeError):
            # bounded: a turn that is never handed on would make the second wait forever
            await asyncio.wait_for(pool.parse(large("late"), session_id=None, grant_id="a"), 10)
    assert (await pool.parse(PING, session_id=None, grant_id="a")).method == "ping"
