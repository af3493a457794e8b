"""Quota goes back only when the MCP server did not run the call, and a client cannot cause
that: the real Envoy, sidecar, ImageGen upstream (SSE and `--json-response`) and offline
Gemini endpoint. Ground truth is the upstream's execution record and the Gemini endpoint's
request list, never the sidecar's own account.

- A request whose JSON-RPC id collides with one in flight in its session (`7` and `"7"`, as
  the SDK compares them) is refused with -32600 before it reaches the server, whatever its
  method; a burst of colliding calls runs at most the limit.
- `notifications/cancelled`, `DELETE` of the session and a dropped connection, each after
  the provider was called, keep the quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.config.grants import hash_token
from authz.devstack import faults
from authz.devstack.stack import Stack
from tests.e2e.conftest import token_for
from tests.e2e.mcp_raw import (
    GEMINI,
    Session,
    messages,
    provider_requests,
    runs_of,
    session,
    wait_until,
)

pytestmark = pytest.mark.e2e

LIMIT = 2
LIMIT_RULE = f"/tools/{GEMINI}/limits/daily"
POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        GEMINI: {"limits": [{"counter": "daily", "window": "day", "max": LIMIT, "scope": "grant"}]}
    },
}
ENDINGS = [("cancel", "legacy"), ("delete", "legacy"), ("disconnect", "legacy")]
ENDINGS += [("disconnect", "2026-07-28")]
GRANTS = [f"{kind}-{era}" for kind, era in ENDINGS] + ["collide", "burst"]


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "daily.json").write_text(json.dumps(POLICY))
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token_for(gid)), "policy": "daily"}
        for gid in GRANTS
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    return root


@pytest.fixture(scope="module", params=["sse", "json"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp(f"evidence-{request.param}")
    record = base / "executed.jsonl"
    record.touch()
    the_stack = Stack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        upstream_json_response=request.param == "json",
        reload_interval=0.2,
        transport=transport,
    )
    with the_stack:
        yield the_stack


def mode_of(stack: Stack) -> str:
    return "json" if stack.upstream_json_response else "sse"


@contextlib.contextmanager
def provider_frozen(stack: Stack) -> Iterator[None]:
    """Calls that reach the provider wait there (the offline Gemini endpoint is stopped)
    until the block ends."""
    faults.pause(stack, "gemini")
    try:
        yield
    finally:
        faults.resume(stack, "gemini")


def answer_of(response: httpx.Response, rid: Any) -> dict[str, Any] | None:
    for message in messages(response):
        if message.get("id") == rid and ("result" in message or "error" in message):
            return message
    return None


def limited(response: httpx.Response, rid: Any) -> bool:
    """The sidecar's rate-limit denial of the call `rid` (a tool result)."""
    answer = answer_of(response, rid)
    if answer is None or "result" not in answer:
        return False
    text = answer["result"]["content"][0]["text"]
    return text.startswith("[POLICY DENIED] ") and f"(rule: {LIMIT_RULE})" in text


async def started_call(the: Session, rid: Any, prompt: str) -> asyncio.Task[httpx.Response]:
    """Start a call and wait until the upstream runs it (it then waits on the provider)."""
    before = runs_of(the.stack, the.grant)
    task = asyncio.ensure_future(the.call(rid, prompt))
    await wait_until(lambda: runs_of(the.stack, the.grant) > before, "the upstream ran the call")
    return task


# -- id collisions ---------------------------------------------------------------------------


async def test_a_colliding_id_is_refused_before_it_reaches_the_server(stack: Stack) -> None:
    grant = "collide"
    marker = f"collide-{mode_of(stack)}"
    async with session(stack, grant) as the:
        with provider_frozen(stack):
            first = await started_call(the, 7, marker)
            for rid, method, params in [
                ("7", "tools/call", the.call_params(marker)),
                (7, "tools/list", {}),
                ("7", "ping", {}),
            ]:
                refused = await the.post(method, rid, params)
                assert refused.status_code == 400, refused.text
                [error] = messages(refused)
                assert error["id"] == rid and error["error"]["code"] == -32600
                assert "in flight" in error["error"]["message"]
            assert runs_of(stack, grant) == 1
        done = await asyncio.wait_for(first, 30)
        assert done.status_code == 200
        answer = answer_of(done, 7)
        assert answer is not None and answer["result"].get("isError") is not True, answer
        # the id is free once the answer went by
        again = await the.post("ping", "7")
        assert again.status_code == 200 and answer_of(again, "7") == {
            "jsonrpc": "2.0",
            "id": "7",
            "result": {},
        }
    assert runs_of(stack, grant) == 1
    assert provider_requests(stack, marker) == 1


async def test_a_burst_of_colliding_calls_runs_at_most_the_limit(stack: Stack) -> None:
    grant = "burst"
    marker = f"burst-{mode_of(stack)}"
    statuses: list[object] = []
    async with session(stack, grant, timeout=5) as the:
        for n in range(8):  # a pair of colliding calls at a time, as many times as quota lasts
            replies = await asyncio.gather(
                the.call(n, marker), the.call(str(n), marker), return_exceptions=True
            )
            statuses += [r.status_code if isinstance(r, httpx.Response) else r for r in replies]
    assert runs_of(stack, grant) <= LIMIT
    assert provider_requests(stack, marker) <= LIMIT
    # every call was answered: run, refused as a collision (400), or over the limit
    assert set(statuses) <= {200, 400}, statuses
    async with session(stack, grant) as the:
        assert limited(await the.call(99, marker), 99)


# -- cancel, DELETE, disconnect -------------------------------------------------------------------


async def end_early(stack: Stack, grant: str, era: str, kind: str, marker: str) -> None:
    """One call, ended by the client after the provider was called."""
    rid = 5
    async with session(stack, grant, era=era) as the:
        with provider_frozen(stack):
            call = await started_call(the, rid, marker)
            if kind == "cancel":
                params = {"requestId": rid, "reason": "changed my mind"}
                note = await the.notify("notifications/cancelled", params)
                assert note.status_code == 202
            elif kind == "delete":
                assert (await the.delete()).status_code == 200
            else:  # drop the connection
                call.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await asyncio.wait_for(call, 30)
    await wait_until(lambda: provider_requests(stack, marker) >= 1, "the provider saw the call")


@pytest.mark.parametrize(("kind", "era"), ENDINGS)
async def test_ending_a_call_early_keeps_its_quota(stack: Stack, kind: str, era: str) -> None:
    grant = f"{kind}-{era}"
    marker = f"{kind}-{era}-{mode_of(stack)}"
    for attempt in range(LIMIT):
        await end_early(stack, grant, era, kind, f"{marker}-{attempt}")
    assert runs_of(stack, grant) == LIMIT
    async with session(stack, grant) as the:
        reply = await the.call(1, f"{marker}-over")
        assert limited(reply, 1), reply.text
    assert runs_of(stack, grant) == LIMIT
    assert provider_requests(stack, marker) == LIMIT
