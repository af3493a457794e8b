"""The response phase (ext_proc) end to end: real Envoy, sidecar, MCP servers and SDK client.

Every test runs against the ImageGen upstream answering in SSE (the SDK's default) and in
JSON (`--json-response`), with the SDK client in both protocol eras. Pagination runs
against a small paginating MCP server (the real SDK's low-level `Server`) started here.

- tools/list: a grant sees exactly what its policy does not hide; other grants see all.
- Give-back: a call Envoy could not deliver (the upstream is down) or the server refused
  (an HTTP 4xx) returns its quota; everything else keeps it: a result (`isError: true`
  included), a JSON-RPC error, a 5xx or reset after the request was delivered. Each response
  is one audit event under the request's decision id. (tests/e2e/test_quota_evidence.py:
  cancel, DELETE, disconnect and id collisions.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from authz.config.grants import hash_token
from authz.devstack import faults
from authz.devstack.stack import LOOPBACK, Stack
from authz.response.listing import filter_tools
from imagegen_upstream.testing import serve_in_thread
from tests.e2e.conftest import executed, mcp_client, token_for, wait_for_fresh_window
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

GEMINI = "image.generate.gemini"
OPENAI = "image.generate.openai"
GOOGLE = "image.generate.google"
REPLICATE = "image.generate.replicate"
ALL_TOOLS = {GEMINI, OPENAI, GOOGLE, REPLICATE}
ERAS = ["legacy", "2026-07-28"]
LIMIT_RULE = f"/tools/{GEMINI}/limits/g"

POLICIES: dict[str, dict[str, Any]] = {
    "hider": {"version": "1", "default": "allow", "hide": [REPLICATE]},
    "viewer": {"version": "1", "default": "allow"},
    "denier": {
        "version": "1",
        "default": "deny",
        "hide_denied": True,
        "tools": {GEMINI: {}, OPENAI: {"deny_if": [{"conditions": []}]}},
    },
    "hide-all": {"version": "1", "hide": "*"},
    "star-denier": {
        "version": "1",
        "hide_denied": True,
        "tools": {GEMINI: {}, "*": {"rules": [{"name": "maintenance", "action": "deny"}]}},
    },
    "quota": {
        "version": "1",
        "default": "deny",
        "tools": {
            GEMINI: {"limits": [{"counter": "g", "window": "minute", "max": 2, "scope": "grant"}]}
        },
    },
    "pager": {"version": "1", "hide": ["t3"]},
}
GRANTS = {
    "hider": "hider",
    "viewer": "viewer",
    "denier": "denier",
    "hide-all": "hide-all",
    "star-denier": "star-denier",
    "pager": "pager",
    "pager-viewer": "viewer",
    **{
        f"{test}-{mode}-{era}": "quota"
        for test in ("rpc-error", "killed", "down", "redis")
        for mode in ("sse", "json")
        for era in ERAS
    },
}


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc, indent=2))
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token_for(gid)), "policy": policy}
        for gid, policy in GRANTS.items()
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}, indent=2))
    return root


def make_stack(base: Path, *, json_mode: bool, **options: Any) -> Stack:
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


@pytest.fixture(scope="module", params=["sse", "json"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp(f"response-{request.param}")
    with make_stack(base, json_mode=request.param == "json", transport=transport) as the_stack:
        yield the_stack


def mode_of(stack: Stack) -> str:
    return "json" if stack.upstream_json_response else "sse"


# -- the audit stream ------------------------------------------------------------------------


def sidecar_events(stack: Stack, event: str) -> list[dict[str, Any]]:
    events = []
    for line in stack.log_path("sidecar").read_text().splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and parsed.get("event") == event:
                events.append(parsed)
    return events


def responses_of(stack: Stack, grant: str, method: str, count: int) -> list[dict[str, Any]]:
    """The `response` audit events of a grant's last `count` requests of `method`, each
    joined to its `decision` event by decision id (waits until all have been written)."""
    deadline = time.monotonic() + 10
    while True:
        decisions = [
            d
            for d in sidecar_events(stack, "decision")
            if d["grant_id"] == grant and d["method"] == method and d["decision"] == "allow"
        ][-count:]
        by_id = {r["decision_id"]: r for r in sidecar_events(stack, "response")}
        joined = [by_id.get(d["decision_id"]) for d in decisions]
        if len(decisions) == count and all(joined):
            return [r for r in joined if r is not None]
        if time.monotonic() > deadline:
            raise AssertionError(f"no response events for {grant} {method}: {decisions}")
        time.sleep(0.05)


# -- tools/list ------------------------------------------------------------------------------


async def tool_names(stack: Stack, grant: str, era: str) -> set[str]:
    async with mcp_client(stack, token_for(grant), mode=era) as client:
        listing = await client.list_tools(cache_mode="refresh")
    assert listing.next_cursor is None
    return {tool.name for tool in listing.tools}


@pytest.mark.parametrize("era", ERAS)
async def test_hidden_tool_is_absent_for_its_grant_and_present_for_another(
    stack: Stack, era: str
) -> None:
    assert await tool_names(stack, "hider", era) == ALL_TOOLS - {REPLICATE}
    assert await tool_names(stack, "viewer", era) == ALL_TOOLS
    [hidden] = responses_of(stack, "hider", "tools/list", 1)
    [shown] = responses_of(stack, "viewer", "tools/list", 1)
    assert (hidden["tools_removed"], hidden["status"]) == (1, 200)
    assert hidden["media"] in ("json", "sse") and hidden["complete"] is True
    assert shown["tools_removed"] == 0 and shown["give_back"] is False


@pytest.mark.parametrize("era", ERAS)
async def test_hide_denied_and_hide_all(stack: Stack, era: str) -> None:
    # default deny lists gemini only; openai is denied outright; the rest are unlisted
    assert await tool_names(stack, "denier", era) == {GEMINI}
    assert await tool_names(stack, "hide-all", era) == set()


@pytest.mark.parametrize("era", ERAS)
async def test_hide_denied_follows_the_star_entry_beside_a_tools_own_entry(
    stack: Stack, era: str
) -> None:
    """gemini's own entry allows it, but the "*" entry denies every call: it is hidden too."""
    before = len(executed(stack))
    assert await tool_names(stack, "star-denier", era) == set()
    async with mcp_client(stack, token_for("star-denier"), mode=era) as client:
        denied = await client.call_tool(GEMINI, {"prompt": "a cat"})
    assert denied.is_error
    assert "/tools/*/rules/0" in " ".join(getattr(p, "text", "") for p in denied.content)
    assert len(executed(stack)) == before


STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def stateless(
    method: str, rid: int, params: dict[str, Any], name: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A 2026-07-28 request as raw bytes and headers (no session needed)."""
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": method,
        "params": {**params, "_meta": STATELESS_META},
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    if name is not None:
        headers["mcp-name"] = name
    return json.dumps(body).encode(), headers


def stateless_list(rid: int = 1, cursor: str | None = None) -> tuple[bytes, dict[str, str]]:
    return stateless("tools/list", rid, {} if cursor is None else {"cursor": cursor})


def direct_post(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    response = httpx.post(f"http://{LOOPBACK}:{port}/mcp", content=body, headers=headers)
    assert response.status_code == 200
    return response.content


def through_envoy(stack: Stack, grant: str, body: bytes, headers: dict[str, str]) -> bytes:
    status, _, reply = stack.post_raw(
        body, headers={**headers, "authorization": f"Bearer {token_for(grant)}"}
    )
    assert status == 200, reply
    return reply


def test_listings_keep_every_other_byte(stack: Stack) -> None:
    body, headers = stateless_list(5)
    direct = direct_post(stack.ports.upstream, body, headers)
    assert through_envoy(stack, "viewer", body, headers) == direct  # nothing hidden: as sent
    hidden = through_envoy(stack, "hider", body, headers)
    assert hidden != direct
    expected, removed, _ = filter_tools(direct.decode(), lambda name: name == REPLICATE)
    assert removed == 1 and hidden == expected.encode()
    assert json.loads(hidden)["result"] == {
        **json.loads(direct)["result"],
        "tools": [t for t in json.loads(direct)["result"]["tools"] if t["name"] != REPLICATE],
    }


def test_sidecar_denials_and_other_methods_pass_untouched(stack: Stack) -> None:
    body, headers = stateless_list(6)
    status, _, reply = stack.post_raw(body, headers={**headers, "authorization": "Bearer nobody"})
    assert status == 401 and b"[POLICY DENIED]" in reply
    ping, ping_headers = stateless("server/discover", 7, {})
    direct = direct_post(stack.ports.upstream, ping, ping_headers)
    assert through_envoy(stack, "hider", ping, ping_headers) == direct


# -- pagination, against a paginating MCP server ------------------------------------------

PAGED = ["t1", "t2", "t3", "t4", "t5"]
PAGE = 2


def cursor_at(start: int) -> str:
    return f"p:{start}/é+=\\"  # non-ASCII and escapes: any re-serialisation would show


def paginating_app(json_response: bool) -> Any:
    async def on_list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        cursor = params.cursor if params else None
        start = 0 if cursor is None else int(cursor.split(":")[1].split("/")[0])
        if not json_response:  # an event before the listing (also commits SSE in 2026-07-28)
            note = types.LoggingMessageNotification(
                params=types.LoggingMessageNotificationParams(level="info", data=f"page {start}")
            )
            await ctx.session.send_notification(note, related_request_id=ctx.request_id)
        page = PAGED[start : start + PAGE]
        following = cursor_at(start + PAGE) if start + PAGE < len(PAGED) else None
        return types.ListToolsResult(
            tools=[types.Tool(name=n, input_schema={"type": "object"}) for n in page],
            next_cursor=following,
        )

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text="ok")])

    server = Server("pager", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    return server.streamable_http_app(
        json_response=json_response,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


@pytest.fixture(scope="module", params=["sse", "json"])
def pager_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp(f"pager-{request.param}")
    the_stack = make_stack(
        base, json_mode=request.param == "json", offline_gemini=False, transport=transport
    )
    the_stack.workdir.mkdir(parents=True, exist_ok=True)
    app = paginating_app(json_response=request.param == "json")
    try:
        with serve_in_thread(app, LOOPBACK, the_stack.ports.upstream):
            the_stack.start_sidecar()
            the_stack.start_envoy()
            yield the_stack
    finally:
        the_stack.stop()


@pytest.mark.parametrize("era", ERAS)
async def test_pagination_survives_filtering(pager_stack: Stack, era: str) -> None:
    seen: dict[str, list[tuple[list[str], str | None]]] = {}
    for grant in ("pager", "pager-viewer"):
        pages: list[tuple[list[str], str | None]] = []
        async with mcp_client(pager_stack, token_for(grant), mode=era) as client:
            cursor: str | None = None
            for _ in range(5):
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                pages.append(([t.name for t in page.tools], page.next_cursor))
                cursor = page.next_cursor
                if cursor is None:
                    break
        seen[grant] = pages
    assert seen["pager-viewer"] == [
        (["t1", "t2"], cursor_at(2)),
        (["t3", "t4"], cursor_at(4)),
        (["t5"], None),
    ]
    # t3 is hidden; the cursors, and so the pages after it, are unchanged
    assert seen["pager"] == [
        (["t1", "t2"], cursor_at(2)),
        (["t4"], cursor_at(4)),
        (["t5"], None),
    ]
    events = responses_of(pager_stack, "pager", "tools/list", 3)
    assert [e["tools_removed"] for e in events] == [0, 1, 0]
    # the SSE server sends an event before each listing: both eras answer in SSE then
    assert {e["media"] for e in events} == {mode_of(pager_stack)}


def test_next_cursor_is_kept_byte_for_byte(pager_stack: Stack) -> None:
    body, headers = stateless_list(3, cursor=cursor_at(2))
    direct = direct_post(pager_stack.ports.upstream, body, headers)
    filtered = through_envoy(pager_stack, "pager", body, headers)
    cursor_bytes = json.dumps(cursor_at(4)).encode()  # as the SDK writes it: "p:4/\u00e9+=\\"
    assert cursor_bytes in direct
    assert filtered.count(cursor_bytes) == 1
    assert b'"t3"' in direct and b'"t3"' not in filtered
    # the only bytes removed are the hidden tool's
    start = direct.index(b'{"inputSchema":{"type":"object"},"name":"t3"}')
    cut = direct[:start] + direct[start:].replace(
        b'{"inputSchema":{"type":"object"},"name":"t3"},', b"", 1
    )
    assert filtered == cut


# -- give-back -------------------------------------------------------------------------------


def invalid_call() -> types.CallToolRequest:
    """A tools/call the SDK server refuses with JSON-RPC -32602 (a progress token must be a
    string or an integer). The sidecar allows it (it does not police `_meta` contents)."""
    params = types.CallToolRequestParams.model_construct(
        name=GEMINI, arguments={"prompt": "never runs"}, meta={"progressToken": {}}
    )
    return types.CallToolRequest.model_construct(method="tools/call", params=params)


def stateless_call(rid: int = 99) -> tuple[bytes, dict[str, str]]:
    arguments = {"name": GEMINI, "arguments": {"prompt": "one too many"}}
    return stateless("tools/call", rid, arguments, name=GEMINI)


def assert_limit_reached(stack: Stack, grant: str) -> None:
    """The next call is over the limit (checked with a raw request: the 2026-era SDK client
    cannot read the sidecar's denial result)."""
    body, headers = stateless_call()
    status, _, reply = stack.post_raw(
        body, headers={**headers, "authorization": f"Bearer {token_for(grant)}"}
    )
    assert status == 200, reply
    text = json.loads(reply)["result"]["content"][0]["text"]
    assert text.startswith("[POLICY DENIED] ") and f"(rule: {LIMIT_RULE})" in text, text


def runs_of(stack: Stack, grant: str) -> int:
    return sum(1 for entry in executed(stack) if entry["grant"] == grant)


@pytest.mark.parametrize("era", ERAS)
async def test_a_refused_call_returns_its_quota_an_error_answer_keeps_it(
    stack: Stack, era: str
) -> None:
    """Invalid params: the 2026-07-28 transport refuses the request with HTTP 400 before it
    runs anything (evidence: the quota goes back); the handshake era answers a JSON-RPC error
    in a 200 (no evidence: an SDK answers a cancelled call the same way after the tool ran,
    so the quota stays)."""
    grant = f"rpc-error-{mode_of(stack)}-{era}"
    refused = era != "legacy"
    wait_for_fresh_window(25)
    async with mcp_client(stack, token_for(grant), mode=era) as client:
        attempts = 3 if refused else 1  # refused: more than the limit (2 a minute)
        for _ in range(attempts):
            with pytest.raises(MCPError) as failed:
                await client.session.send_request(invalid_call(), types.CallToolResult)
            assert failed.value.error.code == -32602
        failures = responses_of(stack, grant, "tools/call", attempts)
        assert runs_of(stack, grant) == 0
        ok = await client.call_tool(GEMINI, {"prompt": "a fox"})
        assert not ok.is_error
        if refused:
            tool_error = await client.call_tool(GEMINI, {"prompt": "[offline:error] a fox"})
            assert tool_error.is_error  # a completed call: it keeps its quota
    assert runs_of(stack, grant) == (2 if refused else 1)
    assert_limit_reached(stack, grant)

    for event in failures:
        if refused:
            assert (event["status"], event["give_back"], event["reason"]) == (400, True, "refused")
            assert event["released"] is True and event["origin"] == "via_upstream"
        else:
            assert (event["status"], event["give_back"], event["reason"]) == (
                200,
                False,
                "jsonrpc_error",
            )
    kept = responses_of(stack, grant, "tools/call", 2 if refused else 1)
    assert [(e["give_back"], e["reason"], e["released"]) for e in kept] == [
        (False, "result", None)
    ] * len(kept)


@contextlib.asynccontextmanager
async def client_of_a_dying_server(stack: Stack, grant: str, era: str) -> AsyncIterator[Client]:
    """`mcp_client` whose server is killed while it is open: closing it may then fail (how
    depends on the era), and only that failure is ignored; the body's own failures count."""
    manager = mcp_client(stack, token_for(grant), mode=era)
    client = await manager.__aenter__()
    try:
        yield client
    except BaseException:
        with contextlib.suppress(Exception):
            await manager.__aexit__(*sys.exc_info())
        raise
    with contextlib.suppress(Exception):
        await manager.__aexit__(None, None, None)


async def call_until_upstream_dies(stack: Stack, grant: str, era: str) -> None:
    """Start a call, wait until the upstream runs it, kill the upstream mid-call."""
    before = runs_of(stack, grant)
    faults.pause(stack, "gemini")  # the tool now waits on the (frozen) Gemini endpoint
    try:
        async with client_of_a_dying_server(stack, grant, era) as client:
            call = asyncio.ensure_future(
                client.call_tool(GEMINI, {"prompt": "dies"}, read_timeout_seconds=15)
            )
            deadline = time.monotonic() + 10
            while runs_of(stack, grant) == before:
                assert time.monotonic() < deadline, "the upstream never ran the call"
                await asyncio.sleep(0.05)
            faults.kill(stack, "upstream")
            with pytest.raises(Exception):  # noqa: B017 - how it fails depends on the era
                await asyncio.wait_for(call, 20)
    finally:
        faults.resume(stack, "gemini")
        faults.restart(stack, "upstream")


@pytest.mark.parametrize("era", ERAS)
async def test_a_call_the_upstream_dies_in_keeps_its_quota(stack: Stack, era: str) -> None:
    """The request was delivered and the tool ran (the provider may have been paid): a reset
    or a 5xx after delivery is no evidence that it did not run."""
    grant = f"killed-{mode_of(stack)}-{era}"
    wait_for_fresh_window(40)
    await call_until_upstream_dies(stack, grant, era)
    [died] = responses_of(stack, grant, "tools/call", 1)
    assert died["give_back"] is False and died["released"] is None
    # Before the response started (JSON; a 2026-07-28 answer not yet committed to SSE),
    # Envoy answers 503 (reset: flag UC/UR); once an SSE response started, the stream is
    # reset.
    if died["reason"] == "http_status":
        assert died["status"] >= 500 and died["origin"] != "via_upstream"
    else:
        assert (died["reason"], died["status"], died["complete"]) == ("incomplete", 200, False)
    async with mcp_client(stack, token_for(grant), mode=era) as client:
        assert not (await client.call_tool(GEMINI, {"prompt": "one"})).is_error
    assert_limit_reached(stack, grant)


def calls_while_upstream_down(stack: Stack, grant: str, count: int) -> None:
    faults.kill(stack, "upstream")
    try:
        body, headers = stateless_call(1)
        for _ in range(count):
            status, _, reply = stack.post_raw(
                body, headers={**headers, "authorization": f"Bearer {token_for(grant)}"}
            )
            assert status == 503, reply  # not delivered (flag UF)
            assert b"was not delivered" in reply
    finally:
        faults.restart(stack, "upstream")


@pytest.mark.parametrize("era", ERAS)
async def test_upstream_down_returns_the_quota(stack: Stack, era: str) -> None:
    """Envoy never delivered the call (connection refused: flag UF): the legit give-back."""
    grant = f"down-{mode_of(stack)}-{era}"
    wait_for_fresh_window(25)
    calls_while_upstream_down(stack, grant, 3)
    events = responses_of(stack, grant, "tools/call", 3)
    assert {(e["status"], e["give_back"], e["reason"], e["released"]) for e in events} == {
        (503, True, "not_delivered", True)
    }
    assert all(e["origin"].startswith("upstream_reset_before_response_started") for e in events)
    assert runs_of(stack, grant) == 0
    async with mcp_client(stack, token_for(grant), mode=era) as client:
        for prompt in ("one", "two"):  # the full limit is still there
            assert not (await client.call_tool(GEMINI, {"prompt": prompt})).is_error
    assert_limit_reached(stack, grant)


# -- the shared (Redis) store -----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("response-redis")
    with (
        RedisServer() as redis,
        make_stack(
            base,
            json_mode=False,
            sidecar_args=["--redis-url", redis.url],
            replicas=2,
            transport=transport,
        ) as the_stack,
    ):
        yield the_stack


@pytest.mark.parametrize("era", ERAS)
async def test_give_back_with_redis_and_two_replicas(redis_stack: Stack, era: str) -> None:
    """ext_authz and ext_proc of one request may land on different replicas: the
    reservation travels in the metadata, and either replica can give it back."""
    grant = f"redis-sse-{era}"
    wait_for_fresh_window(25)
    calls_while_upstream_down(redis_stack, grant, 4)
    async with mcp_client(redis_stack, token_for(grant), mode=era) as client:
        for prompt in ("one", "two"):
            assert not (await client.call_tool(GEMINI, {"prompt": prompt})).is_error
    assert_limit_reached(redis_stack, grant)


# -- a listing stays correct while the sidecar reloads its policy ------------------------------


async def test_listing_follows_a_policy_reload(stack: Stack) -> None:
    path = stack.config_dir / "policies" / "viewer.json"
    original = path.read_text()
    try:
        path.write_text(json.dumps({"version": "1", "hide": [GOOGLE]}))
        deadline = time.monotonic() + 10
        while await tool_names(stack, "viewer", "2026-07-28") != ALL_TOOLS - {GOOGLE}:
            assert time.monotonic() < deadline, "the reload never applied"
            await asyncio.sleep(0.2)
    finally:
        path.write_text(original)
    deadline = time.monotonic() + 10
    while await tool_names(stack, "viewer", "2026-07-28") != ALL_TOOLS:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
