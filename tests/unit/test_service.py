"""The check pipeline and the ext_authz rendering, through real protobuf messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz.config.grants import hash_token
from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.envoy.denial import denial
from authz.envoy.grpc_authz import JWT_AUTHN_NAMESPACE, check_response, http_request_from_check
from authz.model import Decision, DenyKind, Outcome
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from authz.pipeline.request import HttpRequest

SEED = (
    '{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":'
    '[{"counter":"image.generate.gemini_rate","window":"minute","max":2,"scope":"grant"}]}}}'
)
JSON_HEADERS = {"content-type": "application/json", "authorization": "Bearer tok"}


def _call(tool: str = "image.generate.gemini", rid: int = 1) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {"prompt": "x"}},
        }
    ).encode()


@pytest.fixture
def authorizer(tmp_path: Path) -> Authorizer:
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


async def _check(authorizer: Authorizer, body: bytes, **headers: str) -> Verdict:
    merged = {**JSON_HEADERS, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return await authorizer.check(HttpRequest("POST", "/mcp", merged, body))


async def test_allow_then_rate_limited(authorizer: Authorizer) -> None:
    first = await _check(authorizer, _call())
    second = await _check(authorizer, _call())
    third = await _check(authorizer, _call(rid=9))
    assert first.decision.allowed and second.decision.allowed
    assert third.decision.kind is DenyKind.RATE_LIMITED
    assert third.decision.retry_after == 40  # 1_000_040 is 20 s into its minute

    response = check_response(third)
    assert response.HasField("denied_response")
    assert response.denied_response.status.code == 200
    body = json.loads(response.denied_response.body)
    assert body["id"] == 9
    assert body["result"]["isError"] is True
    assert body["result"]["content"][0]["text"].startswith("[POLICY DENIED] ")
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["retry-after"] == "40"
    assert headers["content-type"] == "application/json"


async def test_allowed_response_strips_authorization_and_sets_grant(authorizer: Authorizer) -> None:
    verdict = await _check(authorizer, _call())
    response = check_response(verdict)
    assert response.status.code == 0
    ok = response.ok_response
    assert "authorization" in ok.headers_to_remove
    added = {h.header.key: h.header.value for h in ok.headers}
    assert added["x-mcp-grant"] == "g1"
    assert added["x-mcp-authz-decision-id"] == verdict.decision_id
    assert response.dynamic_metadata.fields["grant_id"].string_value == "g1"


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"authorization": ""}, 401), ({"authorization": "Bearer nope"}, 401)],
)
async def test_unauthenticated(
    authorizer: Authorizer, headers: dict[str, str], status: int
) -> None:
    verdict = await _check(authorizer, _call(), **headers)
    response = check_response(verdict)
    assert response.denied_response.status.code == status
    keys = {h.header.key for h in response.denied_response.headers}
    assert "www-authenticate" in keys


async def test_envelope_checks(authorizer: Authorizer) -> None:
    gz = await _check(authorizer, _call(), content_encoding="gzip")
    assert gz.decision.kind is DenyKind.UNSUPPORTED_MEDIA
    text = await _check(authorizer, _call(), content_type="text/plain")
    assert text.decision.kind is DenyKind.UNSUPPORTED_MEDIA
    partial = await authorizer.check(
        HttpRequest("POST", "/mcp", JSON_HEADERS, _call(), partial_body=True)
    )
    assert check_response(partial).denied_response.status.code == 413
    put = await authorizer.check(HttpRequest("PUT", "/mcp", JSON_HEADERS, b""))
    assert check_response(put).denied_response.status.code == 405
    get = await authorizer.check(HttpRequest("GET", "/mcp", JSON_HEADERS, b""))
    assert get.decision.outcome is Outcome.ALLOW


async def test_orphan_grant_denies_everything(authorizer: Authorizer) -> None:
    call = await _check(authorizer, _call(), authorization="Bearer orphan")
    assert call.decision.rule == "(no policy)"
    listing = await _check(
        authorizer, b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', authorization="Bearer orphan"
    )
    assert check_response(listing).denied_response.status.code == 403
    stream = await authorizer.check(
        HttpRequest("GET", "/mcp", {"authorization": "Bearer orphan"}, b"")
    )
    assert not stream.decision.allowed


async def test_counter_store_failure_fails_closed(authorizer: Authorizer) -> None:
    class Broken(MemoryCounterStore):
        async def reserve(self, claims, now):  # type: ignore[no-untyped-def]
            raise ConnectionError("store down")

    authorizer._counters = Broken()
    verdict = await _check(authorizer, _call())
    assert verdict.decision.kind is DenyKind.UNAVAILABLE
    body = json.loads(check_response(verdict).denied_response.body)
    assert body["result"]["isError"] is True
    assert "quota state is unavailable" in body["result"]["content"][0]["text"]


async def _status(authorizer: Authorizer, http: HttpRequest) -> tuple[int, Any]:
    verdict = await authorizer.check(http)
    denied = check_response(verdict).denied_response
    return denied.status.code, json.loads(denied.body) if denied.body else {}


@pytest.mark.parametrize(
    "path", ["/mcp/", "/MCP", "/", "/healthz", "/mcp;x=1", "/mcp%2F", "/mcp/..", "/mcpx", ""]
)
async def test_only_the_mcp_path_is_served(authorizer: Authorizer, path: str) -> None:
    verdict = await authorizer.check(HttpRequest("POST", path, JSON_HEADERS, _call()))
    assert verdict.decision.kind is DenyKind.NOT_FOUND and verdict.decision.rule == "(path)"
    status, body = await _status(authorizer, HttpRequest("POST", path, JSON_HEADERS, _call()))
    assert status == 404
    assert body["error"]["code"] == -32600
    # before identity: the same without a token
    status, _ = await _status(authorizer, HttpRequest("GET", path, {}, b""))
    assert status == 404


def test_the_http_shape_comes_from_the_kind_not_the_rule_or_the_message() -> None:
    def shape(kind: DenyKind, message: str, rule: str | None) -> tuple[int, list[str]]:
        rendered = denial(Verdict(Decision.deny(kind, message, rule=rule), "d" * 24))
        return rendered.status, [v for k, v in rendered.headers if k == "www-authenticate"]

    assert shape(DenyKind.NOT_FOUND, "not found", None) == (404, [])
    assert shape(DenyKind.BAD_REQUEST, "not found", "(path)") == (400, [])
    plain = 'Bearer realm="mcp-authz"'
    assert shape(DenyKind.UNAUTHENTICATED, "unknown bearer token", "(auth)") == (401, [plain])
    invalid = f'{plain}, error="invalid_token"'
    assert shape(DenyKind.INVALID_TOKEN, "no grant", "(auth)") == (401, [invalid])


@pytest.mark.parametrize("path", ["/mcp", "/mcp?", "/mcp?x=1", "/mcp?session=abc&y"])
async def test_mcp_path_with_a_query_is_served(authorizer: Authorizer, path: str) -> None:
    verdict = await authorizer.check(HttpRequest("POST", path, JSON_HEADERS, _call()))
    assert verdict.decision.allowed


@pytest.mark.parametrize(
    "query",
    [
        "access_token=tok",
        "token=tok",
        "x=1&token=tok",
        "x=1;access_token=tok",
        "ACCESS_TOKEN=tok",
        "access%5Ftoken=tok",
        "api_key=k",
        "access_token",
        "authorization=Bearer%20tok",
    ],
)
async def test_credentials_in_the_query_are_refused(authorizer: Authorizer, query: str) -> None:
    for headers in (JSON_HEADERS, {"content-type": "application/json"}):
        status, body = await _status(
            authorizer, HttpRequest("POST", f"/mcp?{query}", headers, _call())
        )
        assert status == 400
        assert "credentials in the URL" in body["error"]["message"]


@pytest.mark.parametrize("header", ["x-http-method-override", "x-method-override", "x-http-method"])
async def test_method_override_headers_are_refused(authorizer: Authorizer, header: str) -> None:
    http = HttpRequest("POST", "/mcp", {**JSON_HEADERS, header: "GET"}, _call())
    assert (await _status(authorizer, http))[0] == 400


async def test_bodyless_methods_must_be_bodyless(authorizer: Authorizer) -> None:
    for method in ("GET", "DELETE"):
        status, body = await _status(authorizer, HttpRequest(method, "/mcp", JSON_HEADERS, _call()))
        assert status == 400 and "must not carry a body" in body["error"]["message"]
        empty = await authorizer.check(HttpRequest(method, "/mcp", JSON_HEADERS, b""))
        assert empty.decision.allowed


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ('application/json;charset="UTF-8"', True),
        ("Application/JSON", True),
        ("application/json; charset=utf-16", False),
        ("application/json; charset=latin-1", False),
        ("application/json,text/plain", False),
        ("application/json-seq", False),
        ("text/json", False),
    ],
)
async def test_content_type(authorizer: Authorizer, content_type: str, ok: bool) -> None:
    verdict = await _check(authorizer, _call(), content_type=content_type)
    assert verdict.decision.allowed is ok
    if not ok:
        assert check_response(verdict).denied_response.status.code == 415


@pytest.mark.parametrize(
    ("session", "ok"),
    [("0123abcd", True), ("s-1,s-2", False), ("a b", False), ("", False), ("\u00e9", False)],
)
async def test_session_id_must_be_one_visible_ascii_value(
    authorizer: Authorizer, session: str, ok: bool
) -> None:
    verdict = await _check(authorizer, _call(), mcp_session_id=session)
    assert verdict.decision.allowed is ok


async def test_unknown_method_is_404_with_method_not_found(authorizer: Authorizer) -> None:
    status, body = await _status(
        authorizer,
        HttpRequest(
            "POST", "/mcp", JSON_HEADERS, b'{"jsonrpc":"2.0","id":4,"method":"Tools/Call"}'
        ),
    )
    assert status == 404
    assert body["id"] == 4 and body["error"]["code"] == -32601


async def test_bad_tool_name_is_invalid_params(authorizer: Authorizer) -> None:
    status, body = await _status(
        authorizer, HttpRequest("POST", "/mcp", JSON_HEADERS, _call("image.generate.gemini "))
    )
    assert status == 400 and body["error"]["code"] == -32602


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


async def test_http_method_is_case_sensitive(authorizer: Authorizer) -> None:
    check = external_auth_pb2.CheckRequest()
    check.attributes.request.http.method = "post"
    check.attributes.request.http.path = "/mcp"
    check.attributes.request.http.headers.update(JSON_HEADERS)
    check.attributes.request.http.raw_body = _call()
    request = http_request_from_check(check)
    assert request.method == "post"  # not upper-cased: "post" is not POST
    verdict = await authorizer.check(request)
    assert check_response(verdict).denied_response.status.code == 405


# -- identity precedence: verified JWT, then bearer token, then the client certificate ----------

ISSUER = "https://idp.example.org"
PAINTER = "spiffe://example.org/ns/agents/sa/painter"
OPEN = '{"version":"1","default":"allow"}'


@pytest.fixture
def mesh_authorizer(tmp_path: Path) -> Authorizer:
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


def _jwt_meta(**claims: Any) -> dict[str, Any]:
    return {JWT_PAYLOAD_KEY: {"iss": ISSUER, "aud": "mcp-authz", "exp": 2e9, **claims}}


def _mesh_request(
    authorization: str | None = None,
    principal: str | None = None,
    jwt: dict[str, Any] | None = None,
    **headers: str,
) -> HttpRequest:
    merged = {"content-type": "application/json", **headers}
    if authorization is not None:
        merged["authorization"] = authorization
    return HttpRequest(
        "POST", "/mcp", merged, _call(), source_principal=principal, jwt_metadata=jwt
    )


@pytest.mark.parametrize(
    ("request_", "grant_id", "message"),
    [
        # 1. a verified JWT names the caller; the Authorization header is ignored
        (_mesh_request(jwt=_jwt_meta(sub="alice")), "alice", None),
        (_mesh_request("Bearer tok", PAINTER, _jwt_meta(sub="alice")), "alice", None),
        (_mesh_request("Bearer nope", None, _jwt_meta(sub="alice")), "alice", None),
        (_mesh_request(None, PAINTER, _jwt_meta(sub="mallory")), None, "unknown JWT identity"),
        (_mesh_request("Bearer tok", None, _jwt_meta(sub="mallory")), None, "unknown JWT"),
        (_mesh_request(None, PAINTER, {}), None, "jwt_authn metadata"),
        (_mesh_request(None, PAINTER, {"jwt_header": {"alg": "RS256"}}), None, "misconfigured"),
        (_mesh_request(None, PAINTER, {JWT_PAYLOAD_KEY: "alice"}), None, "misconfigured"),
        # 2. else the Authorization header: a bad one never falls back to the certificate
        (_mesh_request("Bearer tok", PAINTER), "tok", None),
        (_mesh_request("Bearer tok"), "tok", None),
        (_mesh_request("Bearer nope", PAINTER), None, "unknown bearer token"),
        (_mesh_request("Basic dG9r", PAINTER), None, "missing bearer token"),
        (_mesh_request("", PAINTER), None, "missing bearer token"),
        (_mesh_request("Bearer tok,Bearer tok", PAINTER), None, "missing bearer token"),
        # 3. else the verified client certificate's SPIFFE ID, exactly
        (_mesh_request(None, PAINTER), "painter", None),
        (_mesh_request(None, PAINTER + "/x"), None, "client certificate"),
        (_mesh_request(None, "spiffe://example.org/ns/agents/sa/other"), None, "certificate"),
        (_mesh_request(None, ""), None, "missing bearer token"),
        (_mesh_request(), None, "missing bearer token"),
        # identity-looking headers from the client are never read
        (
            _mesh_request(
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


def _mesh_check(
    principal: str = "", namespaces: dict[str, dict[str, Any]] | None = None, **headers: str
) -> external_auth_pb2.CheckRequest:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method = "POST"
    http.path = "/mcp"
    http.headers.update({"content-type": "application/json", **headers})
    http.raw_body = _call()
    check.attributes.source.principal = principal
    for namespace, values in (namespaces or {}).items():
        check.attributes.metadata_context.filter_metadata[namespace].update(values)
    return check


def test_check_request_identity_fields() -> None:
    payload = {"iss": ISSUER, "sub": "alice", "aud": ["a", "b"], "exp": 2e9, "n": 2, "ok": True}
    check = _mesh_check(
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
        _mesh_check(namespaces={"envoy.filters.http.mcp": {"method": "tools/call"}})
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
    request = http_request_from_check(_mesh_check(**forged))
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
        http_request_from_check(_mesh_check(principal, namespaces, **headers))
    )
    response = check_response(verdict)
    assert response.status.code == 0, verdict.decision
    ok = response.ok_response
    assert "authorization" in ok.headers_to_remove
    added = {h.header.key: h.header.value for h in ok.headers}
    assert added["x-mcp-grant"] == grant_id
    assert response.dynamic_metadata.fields["grant_id"].string_value == grant_id
