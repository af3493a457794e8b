"""Hidden tools never reach a grant that hides them, on any stream, and what cannot be checked
fails closed: the real Envoy, sidecar, MCP servers (the ImageGen upstream, with and without
an event store, and a test server with a listing over 1 MiB) and the real SDK client.

- A `tools/list` answer over the 1 MiB bound reaches the client as a JSON-RPC error, never
  unfiltered (SSE and JSON, both eras); a grant that hides nothing still gets it whole.
- A `ping` sent with the id of an in-flight `tools/list` never carries the listing.
- `GET /mcp` with `Last-Event-ID` replays a stored `tools/list` answer filtered.
- With the sidecar frozen mid-response, a grant that hides tools gets an error instead of an
  unread answer; any other grant gets the answer (the response phase fails open for it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from authz.config.grants import hash_token
from authz.devstack import faults
from authz.devstack.stack import LOOPBACK, Stack
from imagegen_upstream.testing import serve_in_thread
from tests.e2e.conftest import mcp_client, token_for
from tests.e2e.mcp_raw import (
    GEMINI,
    messages,
    messages_of,
    runs_of,
    session,
    wait_until,
)

pytestmark = pytest.mark.e2e

REPLICATE = "image.generate.replicate"
ERAS = ["legacy", "2026-07-28"]
POLICIES: dict[str, dict[str, Any]] = {
    "hider": {"version": "1", "default": "allow", "hide": [REPLICATE, "big-hidden"]},
    "viewer": {"version": "1", "default": "allow"},
}
GRANTS = {"hider": "hider", "viewer": "viewer"}


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc))
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token_for(gid)), "policy": policy}
        for gid, policy in GRANTS.items()
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    return root


def make_stack(base: Path, *, json_mode: bool = False, **options: Any) -> Stack:
    record = base / "executed.jsonl"
    record.touch()
    return Stack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        upstream_json_response=json_mode,
        reload_interval=0.2,
        **options,
    )


# -- a listing over the bound -------------------------------------------------------------------

BIG_TOOLS = [f"big-{n}" for n in range(30)] + ["big-hidden"]
DESCRIPTION = "x" * 40_000  # 31 tools: about 1.2 MB of listing


def big_listing_app(json_response: bool) -> Any:
    async def on_list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=n, description=DESCRIPTION, input_schema={"type": "object"})
                for n in BIG_TOOLS
            ]
        )

    server = Server("big", on_list_tools=on_list_tools)
    return server.streamable_http_app(
        json_response=json_response,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


@pytest.fixture(scope="module", params=["sse", "json"])
def big_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp(f"big-{request.param}")
    the_stack = make_stack(
        base, json_mode=request.param == "json", offline_gemini=False, transport=transport
    )
    the_stack.workdir.mkdir(parents=True, exist_ok=True)
    app = big_listing_app(json_response=request.param == "json")
    try:
        with serve_in_thread(app, LOOPBACK, the_stack.ports.upstream):
            the_stack.start_sidecar()
            the_stack.start_envoy()
            yield the_stack
    finally:
        the_stack.stop()


@pytest.mark.parametrize("era", ERAS)
async def test_a_listing_over_the_bound_is_an_error_never_unfiltered(
    big_stack: Stack, era: str
) -> None:
    async with session(big_stack, "viewer", era=era) as the:  # hides nothing: gets it whole
        [full] = messages(await the.post("tools/list", 2, {}))
    assert [t["name"] for t in full["result"]["tools"]] == BIG_TOOLS
    assert len(json.dumps(full)) > 1 << 20
    async with mcp_client(big_stack, token_for("hider"), mode=era) as client:
        with pytest.raises(MCPError) as failed:
            await client.list_tools(cache_mode="refresh")
    assert failed.value.error.code == -32603
    assert failed.value.error.message.startswith("[POLICY DENIED] ")
    assert "larger than 1 MiB" in failed.value.error.message
    # and on the wire: not one byte of the hidden tool
    async with session(big_stack, "hider", era=era) as the:
        reply = await the.post("tools/list", 3, {})
        assert b"big-hidden" not in reply.content and len(reply.content) < 1000
        [error] = messages(reply)
        assert error["id"] == 3 and error["error"]["code"] == -32603


# -- the ImageGen upstream with an event store ---------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("hiding")
    options: dict[str, Any] = {"upstream_args": ["--event-store", "memory"]}
    with make_stack(base, transport=transport, **options) as the_stack:
        yield the_stack


async def test_a_ping_with_the_id_of_an_inflight_listing_never_carries_it(stack: Stack) -> None:
    leaked = answered_lists = 0
    async with session(stack, "hider", timeout=5) as the:
        for n in range(40):
            replies = await asyncio.gather(
                the.post("tools/list", n, {}), the.post("ping", str(n)), return_exceptions=True
            )
            for reply in replies:
                if not isinstance(reply, httpx.Response):
                    continue
                leaked += REPLICATE.encode() in reply.content
                answered_lists += any(
                    "tools" in m.get("result", {}) for m in messages(reply) if "result" in m
                )
    assert leaked == 0
    assert answered_lists > 0  # the listings themselves came (filtered)


def event_ids(raw: bytes) -> list[str]:
    return [
        line[3:].strip().decode()
        for line in raw.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"id:")
    ]


async def test_a_replayed_listing_is_filtered(stack: Stack) -> None:
    async with session(stack, "hider") as the:
        listed = await the.post("tools/list", 1, {})
        assert listed.headers["content-type"].startswith("text/event-stream")
        ids = event_ids(listed.content)
        assert ids, "the upstream keeps no events (no resumption to test)"
        assert REPLICATE.encode() not in listed.content
        headers = {**the.request_headers(), "accept": "text/event-stream", "last-event-id": ids[0]}
        raw = b""
        async with the.http.stream("GET", stack.mcp_url, headers=headers) as replay:
            assert replay.status_code == 200
            async for chunk in replay.aiter_bytes():
                raw += chunk
                if b'"tools"' in raw and raw.replace(b"\r\n", b"\n").endswith(b"\n\n"):
                    break
    [replayed] = [m for m in messages_of("text/event-stream", raw) if "result" in m]
    names = {tool["name"] for tool in replayed["result"]["tools"]}
    assert replayed["id"] == 1 and GEMINI in names and REPLICATE not in names
    assert REPLICATE.encode() not in raw
    assert event_ids(raw)  # the event ids are kept, so resuming still works


@pytest.mark.parametrize(("grant", "gets_answer"), [("hider", False), ("viewer", True)])
async def test_a_frozen_sidecar_fails_the_answer_of_a_grant_that_hides_tools(
    stack: Stack, grant: str, gets_answer: bool
) -> None:
    async with session(stack, grant) as the:
        before = runs_of(stack, grant)
        faults.pause(stack, "gemini")
        try:
            call = asyncio.ensure_future(the.call(1, f"frozen-{grant}"))
            await wait_until(lambda: runs_of(stack, grant) > before, "the upstream ran the call")
            faults.pause(stack, "sidecar")
        finally:
            faults.resume(stack, "gemini")
        try:
            reply: httpx.Response | BaseException
            try:
                reply = await asyncio.wait_for(call, 20)
            except httpx.HTTPError as exc:
                reply = exc
        finally:
            faults.resume(stack, "sidecar")
    if gets_answer:
        assert isinstance(reply, httpx.Response) and reply.status_code == 200
        [answer] = [m for m in messages(reply) if m.get("id") == 1]
        assert answer["result"]["content"][0]["text"].startswith("provider=google(gemini)")
    else:  # a 500 from Envoy, or a reset once the answer started: never the answer
        if isinstance(reply, httpx.Response):
            assert reply.status_code >= 500 or b"provider=google(gemini)" not in reply.content
            assert b"provider=google(gemini)" not in reply.content
