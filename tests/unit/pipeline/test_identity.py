"""The caller's grant (authz/pipeline/identity.py): one credential is looked at, a verified
JWT, else the Authorization header, else the client certificate; never a client header."""

from __future__ import annotations

import json

import pytest

from authz.envoy.grpc_authz import check_response
from authz.model import DenyKind
from authz.pipeline.gate import Authorizer
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from authz.pipeline.request import HttpRequest
from tests.unit.calls import ISSUER, PAINTER, jwt_meta, mesh_request, post, tool_call


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"authorization": ""}, 401), ({"authorization": "Bearer nope"}, 401)],
)
async def test_unauthenticated(
    authorizer: Authorizer, headers: dict[str, str], status: int
) -> None:
    verdict = await post(authorizer, tool_call(), **headers)
    response = check_response(verdict)
    assert response.denied_response.status.code == status
    keys = {h.header.key for h in response.denied_response.headers}
    assert "www-authenticate" in keys


@pytest.mark.parametrize(
    ("request_", "grant_id", "message"),
    [
        # 1. a verified JWT names the caller; the Authorization header is ignored
        (mesh_request(jwt=jwt_meta(sub="alice")), "alice", None),
        (mesh_request("Bearer tok", PAINTER, jwt_meta(sub="alice")), "alice", None),
        (mesh_request("Bearer nope", None, jwt_meta(sub="alice")), "alice", None),
        (mesh_request(None, PAINTER, jwt_meta(sub="mallory")), None, "unknown JWT identity"),
        (mesh_request("Bearer tok", None, jwt_meta(sub="mallory")), None, "unknown JWT"),
        (mesh_request(None, PAINTER, {}), None, "jwt_authn metadata"),
        (mesh_request(None, PAINTER, {"jwt_header": {"alg": "RS256"}}), None, "misconfigured"),
        (mesh_request(None, PAINTER, {JWT_PAYLOAD_KEY: "alice"}), None, "misconfigured"),
        # 2. else the Authorization header: a bad one never falls back to the certificate
        (mesh_request("Bearer tok", PAINTER), "tok", None),
        (mesh_request("Bearer tok"), "tok", None),
        (mesh_request("Bearer nope", PAINTER), None, "unknown bearer token"),
        (mesh_request("Basic dG9r", PAINTER), None, "missing bearer token"),
        (mesh_request("", PAINTER), None, "missing bearer token"),
        (mesh_request("Bearer tok,Bearer tok", PAINTER), None, "missing bearer token"),
        # 3. else the verified client certificate's SPIFFE ID, exactly
        (mesh_request(None, PAINTER), "painter", None),
        (mesh_request(None, PAINTER + "/x"), None, "client certificate"),
        (mesh_request(None, "spiffe://example.org/ns/agents/sa/other"), None, "certificate"),
        (mesh_request(None, ""), None, "missing bearer token"),
        (mesh_request(), None, "missing bearer token"),
        # identity-looking headers from the client are never read
        (
            mesh_request(
                None,
                None,
                None,
                **{
                    "x-forwarded-client-cert": f"URI={PAINTER}",
                    "x-spiffe-id": PAINTER,
                    "x-jwt-payload": json.dumps({"iss": ISSUER, "sub": "alice"}),
                    "x-mcp-grant": "painter",
                },
            ),
            None,
            "missing bearer token",
        ),
    ],
)
async def test_identity_precedence(
    mesh_authorizer: Authorizer, request_: HttpRequest, grant_id: str | None, message: str | None
) -> None:
    verdict = await mesh_authorizer.check(request_)
    if grant_id is not None:
        assert verdict.decision.allowed, verdict.decision
        assert verdict.grant is not None and verdict.grant.id == grant_id
        return
    assert verdict.grant is None
    # a credential that names no grant is an invalid token; no credential at all is not
    invalid = message in ("unknown JWT identity", "unknown JWT", "unknown bearer token")
    kind = DenyKind.INVALID_TOKEN if invalid else DenyKind.UNAUTHENTICATED
    assert verdict.decision.kind is kind
    assert verdict.decision.rule == "(auth)"
    assert message is not None and message in verdict.decision.message
    denied = check_response(verdict).denied_response
    assert denied.status.code == 401
    challenges = [h.header.value for h in denied.headers if h.header.key == "www-authenticate"]
    error = ', error="invalid_token"' if invalid else ""
    assert challenges == [f'Bearer realm="mcp-authz"{error}']
