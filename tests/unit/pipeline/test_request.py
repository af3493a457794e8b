"""The HTTP shape of a request (authz/pipeline/request.py): the one MCP path, no credentials
in the URL, no method overrides, bodyless GET and DELETE, JSON bodies, the session header."""

from __future__ import annotations

import pytest

from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz.envoy.grpc_authz import check_response, http_request_from_check
from authz.model import DenyKind, Outcome
from authz.pipeline.gate import Authorizer
from authz.pipeline.request import HttpRequest
from tests.unit.calls import JSON_HEADERS, denied, post, tool_call


async def test_envelope_checks(authorizer: Authorizer) -> None:
    gz = await post(authorizer, tool_call(), content_encoding="gzip")
    assert gz.decision.kind is DenyKind.UNSUPPORTED_MEDIA
    text = await post(authorizer, tool_call(), content_type="text/plain")
    assert text.decision.kind is DenyKind.UNSUPPORTED_MEDIA
    partial = await authorizer.check(
        HttpRequest("POST", "/mcp", JSON_HEADERS, tool_call(), partial_body=True)
    )
    assert check_response(partial).denied_response.status.code == 413
    put = await authorizer.check(HttpRequest("PUT", "/mcp", JSON_HEADERS, b""))
    assert check_response(put).denied_response.status.code == 405
    get = await authorizer.check(HttpRequest("GET", "/mcp", JSON_HEADERS, b""))
    assert get.decision.outcome is Outcome.ALLOW


@pytest.mark.parametrize(
    "path", ["/mcp/", "/MCP", "/", "/healthz", "/mcp;x=1", "/mcp%2F", "/mcp/..", "/mcpx", ""]
)
async def test_only_the_mcp_path_is_served(authorizer: Authorizer, path: str) -> None:
    verdict = await authorizer.check(HttpRequest("POST", path, JSON_HEADERS, tool_call()))
    assert verdict.decision.kind is DenyKind.NOT_FOUND and verdict.decision.rule == "(path)"
    status, body = await denied(authorizer, HttpRequest("POST", path, JSON_HEADERS, tool_call()))
    assert status == 404
    assert body["error"]["code"] == -32600
    # before identity: the same without a token
    status, _ = await denied(authorizer, HttpRequest("GET", path, {}, b""))
    assert status == 404


@pytest.mark.parametrize("path", ["/mcp", "/mcp?", "/mcp?x=1", "/mcp?session=abc&y"])
async def test_mcp_path_with_a_query_is_served(authorizer: Authorizer, path: str) -> None:
    verdict = await authorizer.check(HttpRequest("POST", path, JSON_HEADERS, tool_call()))
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
        status, body = await denied(
            authorizer, HttpRequest("POST", f"/mcp?{query}", headers, tool_call())
        )
        assert status == 400
        assert "credentials in the URL" in body["error"]["message"]


@pytest.mark.parametrize("header", ["x-http-method-override", "x-method-override", "x-http-method"])
async def test_method_override_headers_are_refused(authorizer: Authorizer, header: str) -> None:
    http = HttpRequest("POST", "/mcp", {**JSON_HEADERS, header: "GET"}, tool_call())
    assert (await denied(authorizer, http))[0] == 400


async def test_bodyless_methods_must_be_bodyless(authorizer: Authorizer) -> None:
    for method in ("GET", "DELETE"):
        status, body = await denied(
            authorizer, HttpRequest(method, "/mcp", JSON_HEADERS, tool_call())
        )
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
    verdict = await post(authorizer, tool_call(), content_type=content_type)
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
    verdict = await post(authorizer, tool_call(), mcp_session_id=session)
    assert verdict.decision.allowed is ok


async def test_http_method_is_case_sensitive(authorizer: Authorizer) -> None:
    check = external_auth_pb2.CheckRequest()
    check.attributes.request.http.method = "post"
    check.attributes.request.http.path = "/mcp"
    check.attributes.request.http.headers.update(JSON_HEADERS)
    check.attributes.request.http.raw_body = tool_call()
    request = http_request_from_check(check)
    assert request.method == "post"  # not upper-cased: "post" is not POST
    verdict = await authorizer.check(request)
    assert check_response(verdict).denied_response.status.code == 405
