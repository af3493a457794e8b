"""Requests for the pipeline's unit tests: the seed configuration (a token grant `g1` with
2 calls a minute, and `g2` whose policy is missing) and a mesh configuration (a token, a
SPIFFE ID and a JWT identity), with helpers that build and send requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz.config.grants import hash_token
from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.envoy.grpc_authz import check_response
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from authz.pipeline.request import HttpRequest

__all__ = [
    "ISSUER",
    "JSON_HEADERS",
    "OPEN",
    "PAINTER",
    "SEED",
    "denied",
    "jwt_meta",
    "mesh_authorizer_at",
    "mesh_check",
    "mesh_request",
    "post",
    "seed_authorizer_at",
    "tool_call",
]

SEED = (
    '{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":'
    '[{"counter":"image.generate.gemini_rate","window":"minute","max":2,"scope":"grant"}]}}}'
)
JSON_HEADERS = {"content-type": "application/json", "authorization": "Bearer tok"}
ISSUER = "https://idp.example.org"
PAINTER = "spiffe://example.org/ns/agents/sa/painter"
OPEN = '{"version":"1","default":"allow"}'


def tool_call(tool: str = "image.generate.gemini", rid: int = 1) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {"prompt": "x"}},
        }
    ).encode()


def seed_authorizer_at(tmp_path: Path) -> Authorizer:
    """The seed configuration in `tmp_path`, on memory counters, at a fixed clock."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "seed.json").write_text(SEED)
    grants = {
        "version": "1",
        "grants": [
            {"id": "g1", "label": "G1", "token_sha256": hash_token("tok"), "policy": "seed"},
            {"id": "g2", "label": "G2", "token_sha256": hash_token("orphan"), "policy": "gone"},
        ],
    }
    (tmp_path / "grants.json").write_text(json.dumps(grants))
    return Authorizer(ConfigSource.open(tmp_path), MemoryCounterStore(), clock=lambda: 1_000_040.0)


def mesh_authorizer_at(tmp_path: Path) -> Authorizer:
    """A token, a SPIFFE ID and a JWT identity, each granted the open policy."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "seed.json").write_text(SEED)
    (tmp_path / "policies" / "open.json").write_text(OPEN)
    grants = {
        "version": "1",
        "grants": [
            {"id": "tok", "token_sha256": hash_token("tok"), "policy": "open"},
            {"id": "painter", "spiffe_id": PAINTER, "policy": "open"},
            {"id": "alice", "jwt": {"issuer": ISSUER, "subject": "alice"}, "policy": "open"},
        ],
    }
    (tmp_path / "grants.json").write_text(json.dumps(grants))
    return Authorizer(ConfigSource.open(tmp_path), MemoryCounterStore(), clock=lambda: 1_000_040.0)


async def post(authorizer: Authorizer, body: bytes, **headers: str) -> Verdict:
    merged = {**JSON_HEADERS, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return await authorizer.check(HttpRequest("POST", "/mcp", merged, body))


async def denied(authorizer: Authorizer, http: HttpRequest) -> tuple[int, Any]:
    verdict = await authorizer.check(http)
    denied = check_response(verdict).denied_response
    return denied.status.code, json.loads(denied.body) if denied.body else {}


def jwt_meta(**claims: Any) -> dict[str, Any]:
    return {JWT_PAYLOAD_KEY: {"iss": ISSUER, "aud": "mcp-authz", "exp": 2e9, **claims}}


def mesh_request(
    authorization: str | None = None,
    principal: str | None = None,
    jwt: dict[str, Any] | None = None,
    **headers: str,
) -> HttpRequest:
    merged = {"content-type": "application/json", **headers}
    if authorization is not None:
        merged["authorization"] = authorization
    return HttpRequest(
        "POST", "/mcp", merged, tool_call(), source_principal=principal, jwt_metadata=jwt
    )


def mesh_check(
    principal: str = "", namespaces: dict[str, dict[str, Any]] | None = None, **headers: str
) -> external_auth_pb2.CheckRequest:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method = "POST"
    http.path = "/mcp"
    http.headers.update({"content-type": "application/json", **headers})
    http.raw_body = tool_call()
    check.attributes.source.principal = principal
    for namespace, values in (namespaces or {}).items():
        check.attributes.metadata_context.filter_metadata[namespace].update(values)
    return check
