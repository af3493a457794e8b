"""The request pipeline (authz/pipeline/gate.py): allowed and rate-limited calls, a grant whose
policy is missing, a counter store that fails, bodies that do not parse."""

from __future__ import annotations

import json

from authz.counters.memory import MemoryCounterStore
from authz.envoy.grpc_authz import check_response
from authz.model import DenyKind
from authz.pipeline.gate import Authorizer
from authz.pipeline.request import HttpRequest
from tests.unit.calls import JSON_HEADERS, denied, post, tool_call


async def test_allow_then_rate_limited(authorizer: Authorizer) -> None:
    first = await post(authorizer, tool_call())
    second = await post(authorizer, tool_call())
    third = await post(authorizer, tool_call(rid=9))
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


async def test_orphan_grant_denies_everything(authorizer: Authorizer) -> None:
    call = await post(authorizer, tool_call(), authorization="Bearer orphan")
    assert call.decision.rule == "(no policy)"
    listing = await post(
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
    verdict = await post(authorizer, tool_call())
    assert verdict.decision.kind is DenyKind.UNAVAILABLE
    body = json.loads(check_response(verdict).denied_response.body)
    assert body["result"]["isError"] is True
    assert "quota state is unavailable" in body["result"]["content"][0]["text"]


async def test_unknown_method_is_404_with_method_not_found(authorizer: Authorizer) -> None:
    status, body = await denied(
        authorizer,
        HttpRequest(
            "POST", "/mcp", JSON_HEADERS, b'{"jsonrpc":"2.0","id":4,"method":"Tools/Call"}'
        ),
    )
    assert status == 404
    assert body["id"] == 4 and body["error"]["code"] == -32601


async def test_bad_tool_name_is_invalid_params(authorizer: Authorizer) -> None:
    status, body = await denied(
        authorizer, HttpRequest("POST", "/mcp", JSON_HEADERS, tool_call("image.generate.gemini "))
    )
    assert status == 400 and body["error"]["code"] == -32602
