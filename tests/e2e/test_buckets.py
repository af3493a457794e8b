"""Buckets never collide across callers, and grant ids are checked when they are loaded.

On the real stack (Envoy, sidecar, ImageGen upstream, MCP SDK clients), with the memory
counter store and with a real Redis: grant `team` calling in its session `S`, and a grant
whose id is `team/S` calling without a session, each get their own session-scoped quota.
Before, both were counted in one bucket keyed `team/S` (`…:session:per_session:team%2FS` in
Redis), so `team` could spend the other grant's quota. The ground truth is the upstream's
own execution record.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from authz.config.grants import hash_token
from authz.devstack.stack import Stack
from tests.e2e.conftest import executed, mcp_client
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

OPENAI = "image.generate.openai"  # runs and records at once, then fails (no API key): cheap
PER_SESSION = 2
POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        OPENAI: {
            "limits": [
                {"counter": "per_session", "window": "day", "max": PER_SESSION, "scope": "session"}
            ]
        }
    },
}


def token(grant: str) -> str:
    return f"buckets-{hash_token(grant)[:16]}"


def _grants(root: Path, *ids: str) -> None:
    grants = [{"id": gid, "token_sha256": hash_token(token(gid)), "policy": "p"} for gid in ids]
    tmp = root / "grants.json.tmp"
    tmp.write_text(json.dumps({"version": "1", "grants": grants}))
    tmp.replace(root / "grants.json")


@pytest.fixture(scope="module", params=["memory", "redis"])
def bucket_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp(f"buckets-{request.param}")
    config = base / "config"
    (config / "policies").mkdir(parents=True)
    (config / "policies" / "p.json").write_text(json.dumps(POLICY))
    _grants(config, "team")
    record = base / "executed.jsonl"
    record.touch()
    args: tuple[str, ...] = ()
    redis: RedisServer | None = None
    if request.param == "redis":
        redis = RedisServer(directory=base / "redis")
        redis.start()
        args = ("--redis-url", redis.url)
    stack = Stack(
        config_dir=config,
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        reload_interval=0.2,
        sidecar_args=args,
        transport=transport,
    )
    try:
        with stack:
            yield stack
    finally:
        if redis is not None:
            redis.close()


@asynccontextmanager
async def session_client(stack: Stack, grant: str) -> AsyncIterator[tuple[Client, list[str]]]:
    """A handshake-era client of `grant`, and the session ids the upstream gave it."""
    sessions: list[str] = []

    async def remember(response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and sid not in sessions:
            sessions.append(sid)

    headers = {"Authorization": f"Bearer {token(grant)}"}
    async with httpx2.AsyncClient(
        headers=headers, timeout=30, event_hooks={"response": [remember]}
    ) as http:
        transport = streamable_http_client(stack.mcp_url, http_client=http)
        async with Client(transport, mode="legacy") as client:  # type: ignore[arg-type]
            yield client, sessions


def _text(result: CallToolResult) -> str:
    return " ".join(p.text for p in result.content if isinstance(p, TextContent))


def _denied(result: CallToolResult) -> bool:
    """Refused by the gateway (the tool itself may fail: it runs without an API key)."""
    return bool(result.is_error) and _text(result).startswith("[POLICY DENIED] ")


def _ran(stack: Stack, grant: str) -> int:
    return sum(1 for e in executed(stack) if e["tool"] == OPENAI and e["grant"] == grant)


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_a_grant_in_a_session_does_not_spend_a_grant_named_after_both(
    bucket_stack: Stack,
) -> None:
    stack = bucket_stack
    # grant `team` uses its session's quota up, in a session S the upstream gave it
    async with session_client(stack, "team") as (client, sessions):
        results = [await client.call_tool(OPENAI, {"prompt": f"fox {i}"}) for i in range(3)]
    (session,) = sessions
    assert [_denied(r) for r in results] == [False, False, True], [_text(r) for r in results]
    assert "[POLICY DENIED] rate limit 'per_session' exceeded" in _text(results[2])
    assert _ran(stack, "team") == PER_SESSION

    # a grant whose id is `team/S` calls without a session (the stateless era)
    other = f"team/{session}"
    _grants(stack.config_dir, "team", other)
    _wait(lambda: stack.readiness()["config"]["grants"] == 2)  # type: ignore[index]
    async with mcp_client(stack, token(other), mode="2026-07-28") as client:
        mine = [await client.call_tool(OPENAI, {"prompt": f"owl {i}"}) for i in range(3)]
    # its own quota, untouched by `team`'s session: two run, the third is refused
    assert [_denied(r) for r in mine] == [False, False, True], [_text(r) for r in mine]
    assert _ran(stack, other) == PER_SESSION
    assert _ran(stack, "team") == PER_SESSION


async def test_a_grant_id_with_a_control_character_is_refused_at_load(
    bucket_stack: Stack,
) -> None:
    stack = bucket_stack
    before = stack.readiness()["config"]["fingerprint"]  # type: ignore[index]
    _grants(stack.config_dir, "team", "keeper")
    _wait(lambda: stack.readiness()["config"]["fingerprint"] != before)  # type: ignore[index]
    applied = stack.readiness()["config"]["fingerprint"]  # type: ignore[index]

    _grants(stack.config_dir, "team", "keeper", "bad\rid")
    _wait(lambda: stack.readiness()["config"]["last_error"] is not None)  # type: ignore[index]
    config = stack.readiness()["config"]
    error = str(config["last_error"])  # type: ignore[index]
    assert "grants.json: $.grants[2].id: " in error, error
    assert "visible ASCII" in error, error
    assert config["fingerprint"] == applied  # type: ignore[index]

    # the last good set stays in force: `keeper` is served, the new grant is unknown
    ran = _ran(stack, "keeper")
    async with mcp_client(stack, token("keeper"), mode="2026-07-28") as client:
        result = await client.call_tool(OPENAI, {"prompt": "a heron"})
    assert not _denied(result), _text(result)
    assert _ran(stack, "keeper") == ran + 1
    headers = {
        "Authorization": f"Bearer {token('bad' + chr(13) + 'id')}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    status, _, body = stack.post_raw(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', headers)
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == -32001
