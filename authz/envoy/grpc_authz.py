"""Envoy ext_authz v3 over gRPC: CheckRequest → HttpRequest, Verdict → CheckResponse, and
the `Authorization` servicer that joins them to the pipeline.

Protobuf stops here (and in the sibling `extproc.py`): the pipeline sees an `HttpRequest`
and returns a `Verdict`; a denial is rendered by `denial.py`, shared by every transport.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from authz._pb.envoy.config.core.v3 import base_pb2
from authz._pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz._pb.envoy.type.v3 import http_status_pb2
from authz._pb.google.rpc import status_pb2
from authz.envoy.denial import DECISION_HEADER, UNAUTHENTICATED_KINDS, denial
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest

__all__ = [
    "AUTHZ_SERVICE",
    "FAIL_OPEN_HEADER",
    "GRANT_HEADER",
    "JWT_AUTHN_NAMESPACE",
    "METADATA_NAMESPACE",
    "PARTIAL_BODY_HEADER",
    "AuthorizationService",
    "add_authorization_service",
    "check_response",
    "http_request_from_check",
]

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
GRANT_HEADER = "x-mcp-grant"
FAIL_OPEN_HEADER = "x-mcp-authz-fail-open"
"""On the client's response when a call was allowed without quota (counter store down)."""
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
JWT_AUTHN_NAMESPACE = "envoy.filters.http.jwt_authn"
"""Dynamic metadata of Envoy's jwt_authn filter; it reaches ext_authz in
`attributes.metadata_context` only when listed in `metadata_context_namespaces`."""

_GRPC_OK = 0
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAUTHENTICATED = 16


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
        if verdict.decision.kind in UNAUTHENTICATED_KINDS
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


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    """`envoy.service.auth.v3.Authorization/Check`: one check per request."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        verdict = await self._authorizer.check(http_request_from_check(request))
        return check_response(verdict)


def add_authorization_service(server: grpc.aio.Server, authorizer: Authorizer) -> None:
    """Serve ext_authz checks on `server` with `authorizer`."""
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(  # type: ignore[no-untyped-call]
        AuthorizationService(authorizer), server
    )
