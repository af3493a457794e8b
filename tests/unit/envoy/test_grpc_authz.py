"""Envoy ext_authz over gRPC (authz/envoy/grpc_authz.py): CheckRequest → HttpRequest (the
identity Envoy verified, never a header), and an allowed Verdict → CheckResponse."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz.envoy.grpc_authz import JWT_AUTHN_NAMESPACE, check_response, http_request_from_check
from authz.pipeline.gate import Authorizer
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from tests.unit.calls import ISSUER, PAINTER, mesh_check, post, tool_call


async def test_allowed_response_strips_authorization_and_sets_grant(authorizer: Authorizer) -> None:
    verdict = await post(authorizer, tool_call())
    response = check_response(verdict)
    assert response.status.code == 0
    ok = response.ok_response
    assert "authorization" in ok.headers_to_remove
    added = {h.header.key: h.header.value for h in ok.headers}
    assert added["x-mcp-grant"] == "g1"
    assert added["x-mcp-authz-decision-id"] == verdict.decision_id
    assert response.dynamic_metadata.fields["grant_id"].string_value == "g1"


def test_check_request_to_http_request() -> None:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method = "POST"
    http.path = "/mcp?x=1"
    http.headers["Content-Type"] = "application/json"
    http.headers["x-envoy-auth-partial-body"] = "true"
    http.headers["x-request-id"] = "rid-1"
    http.raw_body = b'{"a":1}'
    request = http_request_from_check(check)
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.body == b'{"a":1}'
    assert request.partial_body is True
    assert request.request_id == "rid-1"


def test_check_request_identity_fields() -> None:
    payload = {"iss": ISSUER, "sub": "alice", "aud": ["a", "b"], "exp": 2e9, "n": 2, "ok": True}
    check = mesh_check(
        PAINTER,
        {
            JWT_AUTHN_NAMESPACE: {JWT_PAYLOAD_KEY: payload},
            "envoy.filters.http.mcp": {"method": "tools/call"},
        },
    )
    request = http_request_from_check(check)
    assert request.source_principal == PAINTER
    assert request.jwt_metadata == {JWT_PAYLOAD_KEY: {**payload, "n": 2.0}}

    plain = http_request_from_check(
        mesh_check(namespaces={"envoy.filters.http.mcp": {"method": "tools/call"}})
    )
    assert plain.source_principal is None and plain.jwt_metadata is None


async def test_check_request_identity_is_never_taken_from_headers(
    mesh_authorizer: Authorizer,
) -> None:
    forged = {
        "x-forwarded-client-cert": f"URI={PAINTER}",
        "x-spiffe-id": PAINTER,
        "x-jwt-payload": json.dumps({"iss": ISSUER, "sub": "alice"}),
        JWT_AUTHN_NAMESPACE: json.dumps({JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice"}}),
    }
    request = http_request_from_check(mesh_check(**forged))
    assert request.source_principal is None and request.jwt_metadata is None
    verdict = await mesh_authorizer.check(request)
    assert check_response(verdict).denied_response.status.code == 401


@pytest.mark.parametrize(
    ("principal", "namespaces", "authorization", "grant_id"),
    [
        (PAINTER, None, None, "painter"),
        (
            PAINTER,
            {JWT_AUTHN_NAMESPACE: {JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice"}}},
            "Bearer some.jwt.value",
            "alice",
        ),
        (PAINTER, None, "Bearer tok", "tok"),
    ],
)
async def test_allowed_mesh_identity_renders_like_a_token(
    mesh_authorizer: Authorizer,
    principal: str,
    namespaces: dict[str, dict[str, Any]] | None,
    authorization: str | None,
    grant_id: str,
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    verdict = await mesh_authorizer.check(
        http_request_from_check(mesh_check(principal, namespaces, **headers))
    )
    response = check_response(verdict)
    assert response.status.code == 0, verdict.decision
    ok = response.ok_response
    assert "authorization" in ok.headers_to_remove
    added = {h.header.key: h.header.value for h in ok.headers}
    assert added["x-mcp-grant"] == grant_id
    assert response.dynamic_metadata.fields["grant_id"].string_value == grant_id
