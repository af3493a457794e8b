"""The check pipeline and the ext_authz rendering, through real protobuf messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz.config import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.envoy.authz import check_response, http_request_from_check
from authz.grants import hash_token
from authz.model import DenyKind, Outcome
from authz.service import Authorizer, HttpRequest, Verdict

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


def test_check_request_to_http_request() -> None:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method = "post"
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
