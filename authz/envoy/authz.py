"""Envoy ext_authz v3 edge: CheckRequest → HttpRequest, Verdict → CheckResponse.

This module and its sibling ext_proc module are the only places that touch protobuf.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from authz._pb.envoy.config.core.v3 import base_pb2
from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz._pb.envoy.type.v3 import http_status_pb2
from authz._pb.google.rpc import status_pb2
from authz.mcp import METHOD_NOT_FOUND
from authz.model import DenyKind, McpRequest, RequestId
from authz.pipeline.gate import Verdict
from authz.pipeline.request import HttpRequest

METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
GRANT_HEADER = "x-mcp-grant"
DECISION_HEADER = "x-mcp-authz-decision-id"
FAIL_OPEN_HEADER = "x-mcp-authz-fail-open"
"""On the client's response when a call was allowed without quota (counter store down)."""
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
JWT_AUTHN_NAMESPACE = "envoy.filters.http.jwt_authn"
"""Dynamic metadata of Envoy's jwt_authn filter; it reaches ext_authz in
`attributes.metadata_context` only when listed in `metadata_context_namespaces`."""

_GRPC_OK = 0
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAUTHENTICATED = 16

_JSONRPC_UNAUTHORIZED = -32001
_JSONRPC_FORBIDDEN = -32003
_JSONRPC_INTERNAL = -32603

DENIED_PREFIX = "[POLICY DENIED] "
APPROVAL_PREFIX = "[APPROVAL REQUIRED] "
APPROVAL_HEADER = "x-mcp-authz-approval-id"
APPROVAL_META_KEY = "io.github.mcp-authz/approval"
"""`_meta` key of a held or approval-denied tool result: {id, status, expires_at}."""


def http_request_from_check(check: external_auth_pb2.CheckRequest) -> HttpRequest:
    http = check.attributes.request.http
    headers = {key.lower(): value for key, value in http.headers.items()}
    body = bytes(http.raw_body) if http.raw_body else http.body.encode("utf-8")
    # Identity that Envoy established itself: the verified client certificate (mTLS) and
    # the claims of a JWT that jwt_authn verified. Dynamic metadata is written by Envoy's
    # filters only; no client header can put anything there.
    filter_metadata = check.attributes.metadata_context.filter_metadata
    jwt_metadata = (
        json_format.MessageToDict(filter_metadata[JWT_AUTHN_NAMESPACE])
        if JWT_AUTHN_NAMESPACE in filter_metadata
        else None
    )
    return HttpRequest(
        # HTTP methods are case-sensitive: "post" is not POST (the upstream would not treat
        # it as one either), so the method is passed on exactly as Envoy received it.
        method=http.method,
        path=http.path,
        headers=headers,
        body=body,
        partial_body=headers.get(PARTIAL_BODY_HEADER, "").lower() == "true",
        request_id=headers.get("x-request-id") or None,
        source_principal=check.attributes.source.principal or None,
        jwt_metadata=jwt_metadata,
    )


@dataclass(frozen=True, slots=True)
class HttpDenial:
    """A denial as the client will see it: status, headers and a JSON body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: str


def _jsonrpc_error(request_id: RequestId, code: int, message: str) -> str:
    payload = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


_UNAUTHENTICATED = (DenyKind.UNAUTHENTICATED, DenyKind.INVALID_TOKEN)
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
    if kind in _UNAUTHENTICATED:
        challenge = 'Bearer realm="mcp-authz"'
        if kind is DenyKind.INVALID_TOKEN:
            challenge += ', error="invalid_token"'
        headers.append(("www-authenticate", challenge))
        return HttpDenial(401, tuple(headers), _jsonrpc_error(None, _JSONRPC_UNAUTHORIZED, text))

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
    return HttpDenial(403, tuple(headers), _jsonrpc_error(request_id, _JSONRPC_FORBIDDEN, text))


def _header(key: str, value: str, *, overwrite: bool = True) -> base_pb2.HeaderValueOption:
    action = (
        base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        if overwrite
        else base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    )
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=action
    )


def _metadata(verdict: Verdict) -> struct_pb2.Struct:
    """Dynamic metadata for Envoy (access logs, ext_proc). Fields are set directly: the
    generic `Struct.update` costs several times more per decision."""
    meta = struct_pb2.Struct()
    fields = meta.fields
    decision = verdict.decision
    fields["decision_id"].string_value = verdict.decision_id
    fields["decision"].string_value = decision.outcome.value
    if decision.rule:
        fields["rule"].string_value = decision.rule
    if decision.ticket is not None:
        fields["approval_id"].string_value = decision.ticket.id
    if verdict.grant is not None:
        fields["grant_id"].string_value = verdict.grant.id
        fields["policy"].string_value = verdict.grant.policy
    if verdict.hides:
        # every answer is filtered; deploy/envoy.yaml routes such requests to the /mcp route
        # whose response phase fails closed (failure_mode_allow: false)
        fields["hides"].bool_value = True
    if verdict.inflight is not None:
        fields["inflight"].string_value = verdict.inflight  # freed at the response's end
    request = verdict.request
    if request is not None:
        fields["mcp_method"].string_value = request.method
        if request.tool is not None:
            fields["tool"].string_value = request.tool
        # For the response phase (authz/envoy/extproc.py reads these): the JSON-RPC id as
        # JSON text (a Struct number is a double and would round large integer ids), and the
        # quota this call took, so that ext_proc can give it back if the upstream fails it.
        if not request.is_notification and request.id is not None:
            fields["jsonrpc_id"].string_value = json.dumps(request.id, separators=(",", ":"))
    reservation = decision.reservation
    if decision.allowed and reservation is not None and reservation.token:
        taken = fields["reservation"].struct_value.fields
        taken["token"].string_value = reservation.token
        entries = taken["entries"].list_value
        for (counter, scope, scope_key, window), start, cost in reservation.entries:
            entry = entries.values.add().struct_value.fields
            entry["counter"].string_value = counter
            entry["scope"].string_value = scope
            entry["key"].string_value = scope_key
            entry["window"].number_value = window
            entry["start"].number_value = start
            entry["cost"].number_value = cost
    return meta


def check_response(verdict: Verdict) -> external_auth_pb2.CheckResponse:
    """Render a Verdict as Envoy's CheckResponse."""
    if verdict.decision.allowed:
        assert verdict.grant is not None
        response_headers = [_header(DECISION_HEADER, verdict.decision_id)]
        if verdict.fail_open:
            response_headers.append(_header(FAIL_OPEN_HEADER, "true"))
        ok = external_auth_pb2.OkHttpResponse(
            headers=[
                _header(GRANT_HEADER, verdict.grant.id),
                _header(DECISION_HEADER, verdict.decision_id),
            ],
            headers_to_remove=["authorization", FAIL_OPEN_HEADER],
            response_headers_to_add=response_headers,
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=_GRPC_OK),
            ok_response=ok,
            dynamic_metadata=_metadata(verdict),
        )
    rendered = denial(verdict)
    grpc_code = (
        _GRPC_UNAUTHENTICATED
        if verdict.decision.kind in _UNAUTHENTICATED
        else _GRPC_PERMISSION_DENIED
    )
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=rendered.status),  # type: ignore[arg-type]
        headers=[_header(k, v) for k, v in rendered.headers],
        body=rendered.body,
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=verdict.decision.message),
        denied_response=denied,
        dynamic_metadata=_metadata(verdict),
    )
