"""A denial as the client sees it, for every transport: status, headers and a JSON body.

`denial(verdict)` renders a denied `Verdict` (pure): a denied `tools/call` is an `isError`
tool result with HTTP 200 (`[POLICY DENIED] …` or `[APPROVAL REQUIRED] …`: many MCP clients
drop the session on a 4xx), everything else a JSON-RPC error with the status its
`DenyKind` calls for (401 with a `WWW-Authenticate` challenge, 400, 404, 405, 413, 415,
429, 403, 503). With `oauth.json` the 401's challenge is the one the pipeline computed
(`Verdict.challenge`: `resource_metadata`, `scope`, `error="invalid_token"`); a token
without a scope the call needs is a 403 JSON-RPC error with an `insufficient_scope`
challenge, even for a `tools/call` (a client steps up on it; a policy denial of a
`tools/call` stays a 200 tool result). A held or approval-denied request that is not a
`tools/call` (a `prompts/get`, a `resources/read`) is such an error (403, `[APPROVAL REQUIRED] …` or
`[POLICY DENIED] …`) whose `data` carries the approval as a tool result's `_meta` does.
Each edge puts the result into its transport's message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from authz.mcp import METHOD_NOT_FOUND
from authz.model import DenyKind, McpRequest, RequestId
from authz.oauth.metadata import insufficient_scope_challenge
from authz.pipeline.gate import Verdict

__all__ = [
    "APPROVAL_HEADER",
    "APPROVAL_META_KEY",
    "APPROVAL_PREFIX",
    "DECISION_HEADER",
    "DENIED_PREFIX",
    "STATELESS_VERSION_KEY",
    "UNAUTHENTICATED_KINDS",
    "HttpDenial",
    "denial",
]

DECISION_HEADER = "x-mcp-authz-decision-id"
"""The decision's id, on every answer the sidecar shapes (it names the audit event)."""

DENIED_PREFIX = "[POLICY DENIED] "
APPROVAL_PREFIX = "[APPROVAL REQUIRED] "
APPROVAL_HEADER = "x-mcp-authz-approval-id"
APPROVAL_META_KEY = "io.github.mcp-authz/approval"
"""`_meta` key of a held or approval-denied tool result: {id, status, expires_at}."""

_JSONRPC_UNAUTHORIZED = -32001
_JSONRPC_FORBIDDEN = -32003
_JSONRPC_INTERNAL = -32603


@dataclass(frozen=True, slots=True)
class HttpDenial:
    """A denial as the client will see it: status, headers and a JSON body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: str


def _jsonrpc_error(
    request_id: RequestId, code: int, message: str, data: dict[str, Any] | None = None
) -> str:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    payload = {"jsonrpc": "2.0", "id": request_id, "error": error}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


UNAUTHENTICATED_KINDS = (DenyKind.UNAUTHENTICATED, DenyKind.INVALID_TOKEN)
"""The kinds answered 401 with a `WWW-Authenticate` challenge."""

STATELESS_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
"""`params._meta` key that marks a request of the stateless (2026-07-28+) protocol era."""


def _tool_denied(
    request_id: RequestId, text: str, *, stateless: bool, meta: dict[str, Any] | None = None
) -> str:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True}
    if meta:
        result["_meta"] = meta
    if stateless:
        # 2026-07-28 results carry a resultType; clients of that era reject a result without
        result["resultType"] = "complete"
    payload: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _is_stateless(request: McpRequest) -> bool:
    meta = request.params.get("_meta")
    return isinstance(meta, dict) and STATELESS_VERSION_KEY in meta


def denial(verdict: Verdict) -> HttpDenial:
    """Render a denied Verdict as the HTTP response the agent receives (pure)."""
    decision = verdict.decision
    request = verdict.request
    request_id = request.id if request is not None else verdict.reply_id
    rule = f" (rule: {decision.rule})" if decision.rule else ""
    kind = decision.kind
    prefix = APPROVAL_PREFIX if kind is DenyKind.APPROVAL_REQUIRED else DENIED_PREFIX
    text = f"{prefix}{decision.message}{rule}"
    headers: list[tuple[str, str]] = [
        ("content-type", "application/json"),
        (DECISION_HEADER, verdict.decision_id),
    ]
    meta: dict[str, Any] | None = None
    if decision.ticket is not None:
        headers.append((APPROVAL_HEADER, decision.ticket.id))
        meta = {
            APPROVAL_META_KEY: {
                "id": decision.ticket.id,
                "status": decision.ticket.status,
                "expires_at": decision.ticket.expires_at,
            }
        }
    if kind in UNAUTHENTICATED_KINDS:
        challenge = verdict.challenge
        if challenge is None:
            challenge = 'Bearer realm="mcp-authz"'
            if kind is DenyKind.INVALID_TOKEN:
                challenge += ', error="invalid_token"'
        headers.append(("www-authenticate", challenge))
        return HttpDenial(401, tuple(headers), _jsonrpc_error(None, _JSONRPC_UNAUTHORIZED, text))
    if kind is DenyKind.INSUFFICIENT_SCOPE:
        challenge = verdict.challenge or insufficient_scope_challenge(None, decision.scopes)
        headers.append(("www-authenticate", challenge))
        return HttpDenial(403, tuple(headers), _jsonrpc_error(request_id, _JSONRPC_FORBIDDEN, text))

    if decision.retry_after is not None:
        headers.append(("retry-after", str(decision.retry_after)))

    # A denied tools/call is a tool result: many MCP clients drop the session on a 4xx.
    if (
        request is not None
        and request.is_tool_call
        and kind
        in (
            DenyKind.POLICY,
            DenyKind.RATE_LIMITED,
            DenyKind.UNAVAILABLE,
            DenyKind.APPROVAL_REQUIRED,
        )
    ):
        if decision.retry_after is not None and "retry after" not in text:
            text += f"; retry after {decision.retry_after}s"
        body = _tool_denied(request_id, text, stateless=_is_stateless(request), meta=meta)
        return HttpDenial(200, tuple(headers), body)

    if kind in (DenyKind.BAD_REQUEST, DenyKind.NOT_FOUND):
        code = decision.rpc_code if decision.rpc_code is not None else -32600
        # Not the MCP endpoint, or not an MCP method: 404, as the MCP SDK answers -32601.
        status = 404 if kind is DenyKind.NOT_FOUND or code == METHOD_NOT_FOUND else 400
        return HttpDenial(status, tuple(headers), _jsonrpc_error(request_id, code, text))
    if kind is DenyKind.TOO_LARGE:
        return HttpDenial(413, tuple(headers), _jsonrpc_error(None, -32600, text))
    if kind is DenyKind.UNSUPPORTED_MEDIA:
        return HttpDenial(415, tuple(headers), _jsonrpc_error(None, -32600, text))
    if kind is DenyKind.METHOD_NOT_ALLOWED:
        headers.append(("allow", "GET, POST, DELETE"))
        return HttpDenial(405, tuple(headers), _jsonrpc_error(None, -32600, text))
    if kind is DenyKind.RATE_LIMITED:
        return HttpDenial(429, tuple(headers), _jsonrpc_error(request_id, _JSONRPC_FORBIDDEN, text))
    if kind is DenyKind.UNAVAILABLE:
        return HttpDenial(503, tuple(headers), _jsonrpc_error(request_id, _JSONRPC_INTERNAL, text))
    return HttpDenial(
        403, tuple(headers), _jsonrpc_error(request_id, _JSONRPC_FORBIDDEN, text, meta)
    )
