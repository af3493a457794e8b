"""The request pipeline (authz/pipeline/gate.py) on the stores `mcp-authz serve` builds: in
memory, or in a REAL Redis (standalone and a 3-node cluster). A tool call in a session
registers its id and takes its quota with one round trip to Redis (counted by MONITOR at
the servers, commands run by scripts excluded), with the same results as in memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from authz.config.settings import Settings
from authz.config.source import ConfigSource
from authz.model import DenyKind, FixedRule
from authz.pipeline.gate import Authorizer, Verdict
from authz.server import build_counter_store, build_inflight_store
from tests.redis_server import RedisClusterProcesses, RedisServer
from tests.unit.calls import post, seed_authorizer_at

TOOL = "image.generate.gemini"  # the seed policy: 2 calls a minute per grant


def call(rid: Any, method: str = "tools/call") -> bytes:
    params = {"name": TOOL, "arguments": {"prompt": "x"}} if method == "tools/call" else {}
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode()


async def send(authorizer: Authorizer, rid: Any, method: str = "tools/call") -> Verdict:
    return await post(authorizer, call(rid, method), mcp_session_id="s1")


@contextlib.asynccontextmanager
async def store_pair(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Authorizer, list[str]]]:
    """An Authorizer on the seed configuration with the counter and in-flight stores built
    as `mcp-authz serve` builds them for `backend`, and the URLs of the Redis servers."""
    seed_authorizer_at(tmp_path)  # writes the seed configuration
    urls: list[str] = []
    settings = Settings(config_dir=tmp_path)
    if backend != "memory":
        prefix = f"t-{secrets.token_hex(4)}"
        if backend == "redis-cluster":
            cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
            urls = [node.url for node in cluster.nodes]
            settings = Settings(
                config_dir=tmp_path,
                redis_url=cluster.url,
                redis_cluster=True,
                redis_prefix=prefix,
                redis_timeout=2.0,
            )
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            urls = [server.url]
            settings = Settings(
                config_dir=tmp_path, redis_url=server.url, redis_prefix=prefix, redis_timeout=2.0
            )
    counters = build_counter_store(settings)
    inflight = build_inflight_store(settings, counters)
    try:
        yield Authorizer(ConfigSource.open(tmp_path), counters, inflight=inflight), urls
    finally:
        await inflight.close()
        await counters.close()


@contextlib.asynccontextmanager
async def client_commands(urls: list[str]) -> AsyncIterator[list[str]]:
    """The commands clients sent to the servers at `urls` while the block ran, as MONITOR
    reports them (the commands a script runs are reported as Lua's, and not counted). The
    list is filled when the block ends: each server is sent a marker, and its MONITOR
    stream is read up to it."""
    seen: list[str] = []
    marker = f"end-of-block-{secrets.token_hex(4)}"
    async with contextlib.AsyncExitStack() as stack:
        watched = []
        for url in urls:
            side = Redis.from_url(url)
            stack.push_async_callback(side.aclose)
            await side.ping()
            watcher = Redis.from_url(url)
            stack.push_async_callback(watcher.aclose)
            monitor = await stack.enter_async_context(watcher.monitor())
            watched.append((side, monitor))
        yield seen
        for side, monitor in watched:
            await side.echo(marker)
            async with asyncio.timeout(10):
                while True:
                    command = await monitor.next_command()
                    if marker in command["command"]:
                        break
                    if command["client_type"] != "lua":
                        seen.append(command["command"].split(" ", 1)[0].upper())


REDIS = [pytest.param(b, marks=pytest.mark.processes) for b in ("redis", "redis-cluster")]


@pytest.mark.parametrize("backend", ["memory", *REDIS])
async def test_ids_and_quota_give_the_same_results_on_every_backend(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    async with store_pair(tmp_path, backend, request) as (authorizer, _urls):
        first = await send(authorizer, 1)
        assert first.decision.allowed and first.inflight is not None
        assert first.decision.reservation is not None and first.decision.reservation.token
        clash = await send(authorizer, "1")  # the same id as text: in use, nothing taken
        assert clash.decision.rule == FixedRule.ID_IN_USE and clash.inflight is None
        second = await send(authorizer, 2)
        assert second.decision.allowed and second.inflight is not None
        limited = await send(authorizer, 3)  # the third call of 2 a minute
        assert limited.decision.kind is DenyKind.RATE_LIMITED and limited.inflight is None
        # the refused call's id was not kept: the same id is refused for quota, not in use
        again = await send(authorizer, 3)
        assert again.decision.kind is DenyKind.RATE_LIMITED
        listing = await send(authorizer, 3, "tools/list")
        assert listing.decision.allowed and listing.inflight is not None


@pytest.mark.parametrize("backend", REDIS)
async def test_a_call_in_a_session_is_one_round_trip(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    async with store_pair(tmp_path, backend, request) as (authorizer, urls):
        await send(authorizer, 0, "tools/list")  # connections made, scripts loaded
        warm = await send(authorizer, 100)
        assert warm.decision.allowed
        async with client_commands(urls) as allowed_call:
            assert (await send(authorizer, 1)).decision.allowed
        async with client_commands(urls) as id_in_use:
            assert (await send(authorizer, 1)).decision.rule == FixedRule.ID_IN_USE
        async with client_commands(urls) as rate_limited:
            assert (await send(authorizer, 2)).decision.kind is DenyKind.RATE_LIMITED
        assert allowed_call == ["EVALSHA"]
        assert id_in_use == ["EVALSHA"]
        assert rate_limited == ["EVALSHA"]  # the id is dropped in the same script


@pytest.mark.processes
@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_redis_that_cannot_answer_fails_as_configured(
    tmp_path: Path, own_server: RedisServer, fail_open: bool
) -> None:
    seed_authorizer_at(tmp_path)
    settings = Settings(
        config_dir=tmp_path, redis_url=own_server.url, redis_timeout=0.3, redis_fail_open=fail_open
    )
    counters = build_counter_store(settings)
    inflight = build_inflight_store(settings, counters)
    authorizer = Authorizer(
        ConfigSource.open(tmp_path), counters, inflight=inflight, fail_open=fail_open
    )
    try:
        assert (await send(authorizer, 1)).decision.allowed
        own_server.kill()
        verdict = await send(authorizer, 2)
        if fail_open:  # allowed without quota and unregistered, as the two steps did
            assert verdict.decision.allowed and verdict.fail_open and verdict.inflight is None
            assert verdict.decision.rule == FixedRule.COUNTERS_FAIL_OPEN
        else:  # the id's state is the first thing that could not be read
            assert verdict.decision.kind is DenyKind.UNAVAILABLE
            assert verdict.decision.rule == FixedRule.INFLIGHT
    finally:
        await inflight.close()
        await counters.close()
