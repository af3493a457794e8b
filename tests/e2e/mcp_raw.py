"""Raw MCP over HTTP through Envoy, for what the SDK client will not do on purpose: two
requests with colliding ids, a cancel or DELETE at a chosen moment, a dropped connection, a
GET with `Last-Event-ID`. Real HTTP (httpx) against the real stack."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from authz.devstack.stack import Stack
from tests.e2e.conftest import executed, token_for

HANDSHAKE_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
}
GEMINI = "image.generate.gemini"


@dataclass
class Session:
    """One MCP session of one grant, in the handshake era (or none: the 2026-07-28 era)."""

    stack: Stack
    grant: str
    http: httpx.AsyncClient
    era: str = "legacy"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def session_id(self) -> str | None:
        return self.headers.get("mcp-session-id")

    def request_headers(self, method: str | None = None, name: str | None = None) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token_for(self.grant)}",
            **self.headers,
        }
        if self.era != "legacy" and method is not None:
            headers["mcp-protocol-version"] = MODERN_VERSION
            headers["mcp-method"] = method
            if name is not None:
                headers["mcp-name"] = name
        return headers

    def message(self, method: str, rid: Any, params: dict[str, Any] | None = None) -> bytes:
        params = dict(params or {})
        if self.era != "legacy":
            params["_meta"] = STATELESS_META
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if rid is not None:
            body["id"] = rid
        return json.dumps(body).encode()

    async def post(
        self, method: str, rid: Any, params: dict[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        name = (params or {}).get("name") if method == "tools/call" else None
        return await self.http.post(
            self.stack.mcp_url,
            content=self.message(method, rid, params),
            headers=self.request_headers(method, name),
            **kw,
        )

    def call_params(self, prompt: str, tool: str = GEMINI) -> dict[str, Any]:
        return {"name": tool, "arguments": {"prompt": prompt}}

    async def call(self, rid: Any, prompt: str) -> httpx.Response:
        return await self.post("tools/call", rid, self.call_params(prompt))

    async def notify(self, method: str, params: dict[str, Any]) -> httpx.Response:
        return await self.post(method, None, params)

    async def delete(self) -> httpx.Response:
        headers = self.request_headers()
        return await self.http.delete(self.stack.mcp_url, headers=headers)


@asynccontextmanager
async def session(
    stack: Stack, grant: str, *, era: str = "legacy", timeout: float = 30
) -> AsyncIterator[Session]:
    """A session of `grant` (initialized in the handshake era; nothing to set up in the
    2026-07-28 era). Each session has its own connection pool."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        the = Session(stack, grant, http, era)
        if era == "legacy":
            params = {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            }
            reply = await the.post("initialize", 0, params)
            assert reply.status_code == 200, reply.text
            the.headers["mcp-session-id"] = reply.headers["mcp-session-id"]
            the.headers["mcp-protocol-version"] = HANDSHAKE_VERSION
            await the.notify("notifications/initialized", {})
        yield the


def messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response: its JSON body, or the data of its SSE events."""
    return messages_of(response.headers.get("content-type", ""), response.content)


def messages_of(content_type: str, raw: bytes) -> list[dict[str, Any]]:
    if content_type.startswith("application/json"):
        return [json.loads(raw)] if raw.strip() else []
    out = []
    data: list[bytes] = []
    for line in [*re.split(rb"\r\n|\r|\n", raw), b""]:  # lines as the SSE specification reads them
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif not line:
            joined, data = b"\n".join(data), []
            if joined.strip():
                out.append(json.loads(joined))
    return out


def runs_of(stack: Stack, grant: str) -> int:
    """Executions the upstream itself recorded for `grant`."""
    return sum(1 for entry in executed(stack) if entry["grant"] == grant)


def provider_requests(stack: Stack, marker: str) -> int:
    """Requests the offline Gemini endpoint served whose prompt contains `marker`."""
    url = f"http://127.0.0.1:{stack.ports.gemini}/offline/requests"
    seen = httpx.get(url, timeout=5).json()["requests"]
    return sum(1 for entry in seen if marker in str(entry.get("prompt", "")))


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)
