"""Envoy → ext_authz sidecar → ImageGen MCP server, all real processes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from mcp.types import CallToolResult, TextContent

from authz.devstack.stack import Stack
from tests.e2e.conftest import (
    audit_events,
    executed,
    mcp_client,
    token_for,
    wait_for_fresh_window,
)

pytestmark = pytest.mark.e2e

JSON = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def _text(result: CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if isinstance(part, TextContent))


def _images(stack: Stack) -> list[Path]:
    return sorted(stack.outputs_dir.rglob("*.png"))


STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _call_body(
    tool: str, arguments: dict[str, object], rid: int = 1, *, stateless: bool = False
) -> bytes:
    params: dict[str, object] = {"name": tool, "arguments": arguments}
    if stateless:
        params["_meta"] = STATELESS_META
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    ).encode()


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_allowed_call_generates_an_image_in_both_eras(stack: Stack, mode: str) -> None:
    before = len(_images(stack))
    async with mcp_client(stack, token_for("eras"), mode=mode) as client:
        tools = await client.list_tools()
        assert "image.generate.gemini" in {tool.name for tool in tools.tools}
        result = await client.call_tool("image.generate.gemini", {"prompt": f"a fox ({mode})"})
    assert not result.is_error, _text(result)
    assert "provider=google(gemini)" in _text(result)
    assert len(_images(stack)) == before + 1
    # the upstream saw the gateway's grant header and never the caller's token
    last = executed(stack)[-1]
    assert last["grant"] == "eras"
    assert last["authorization_present"] is False


async def test_client_supplied_grant_header_is_overwritten(stack: Stack) -> None:
    status, _, body = stack.post_raw(
        _call_body("image.generate.gemini", {"prompt": "spoof"}, stateless=True),
        headers={
            **JSON,
            "authorization": f"Bearer {token_for('eras')}",
            "x-mcp-grant": "seed-a",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": "image.generate.gemini",
        },
    )
    assert status == 200, body
    assert executed(stack)[-1]["grant"] == "eras"


async def test_seed_policy_31st_call_denied_while_other_grant_keeps_30(stack: Stack) -> None:
    wait_for_fresh_window(35)
    async with mcp_client(stack, token_for("seed-a")) as client:
        results = [
            await client.call_tool("image.generate.gemini", {"prompt": f"cat {i}"})
            for i in range(31)
        ]
    assert [r.is_error for r in results[:30]] == [False] * 30
    denied = results[30]
    assert denied.is_error
    text = _text(denied)
    assert text.startswith("[POLICY DENIED] ")
    assert "/tools/image.generate.gemini/limits/image.generate.gemini_rate" in text
    assert "retry after" in text

    # another grant on the same policy has its own 30, in the other protocol era
    async with mcp_client(stack, token_for("seed-b"), mode="2026-07-28") as client:
        others = await asyncio.gather(
            *(client.call_tool("image.generate.gemini", {"prompt": f"dog {i}"}) for i in range(30))
        )
    assert [_text(r) for r in others if r.is_error] == []


async def test_rate_limit_denial_has_retry_after_header(stack: Stack) -> None:
    # seed-a used its 30 this minute in the previous test (same module stack), or do so now
    for _ in range(31):
        status, headers, body = stack.post_raw(
            _call_body("image.generate.gemini", {"prompt": "x"}),
            headers={**JSON, "authorization": f"Bearer {token_for('seed-a')}"},
        )
        reply = json.loads(body)
        if "result" in reply and reply["result"].get("isError"):
            break
    assert status == 200
    assert int(headers["retry-after"]) >= 1
    assert reply["result"]["content"][0]["text"].startswith("[POLICY DENIED] ")


async def test_unlisted_tool_denied_under_default_deny(stack: Stack) -> None:
    before = executed(stack)
    async with mcp_client(stack, token_for("seed-b")) as client:
        result = await client.call_tool("image.generate.openai", {"prompt": "a cat"})
    assert result.is_error
    assert _text(result).startswith("[POLICY DENIED] ")
    assert "(default deny)" in _text(result)
    assert executed(stack) == before


async def test_hidden_tool_cannot_be_called(stack: Stack) -> None:
    before = executed(stack)
    async with mcp_client(stack, token_for("open")) as client:
        result = await client.call_tool("image.generate.replicate", {"prompt": "a cat"})
        allowed = await client.call_tool("image.generate.openai", {"prompt": "a cat"})
    assert result.is_error and "(hidden)" in _text(result)
    # default allow: openai is forwarded (and fails upstream for lack of a key, not by policy)
    assert allowed.is_error and "[POLICY DENIED]" not in _text(allowed)
    assert [e["tool"] for e in executed(stack)[len(before) :]] == ["image.generate.openai"]


async def test_conditions(stack: Stack) -> None:
    images_before = len(_images(stack))
    before = executed(stack)
    async with mcp_client(stack, token_for("cond")) as client:
        wrong_model = await client.call_tool(
            "image.generate.gemini", {"prompt": "a cat", "model": "gemini-other"}
        )
        no_model = await client.call_tool("image.generate.gemini", {"prompt": "a cat"})
        forbidden = await client.call_tool(
            "image.generate.gemini",
            {"prompt": "a FORBIDDEN cat", "model": "gemini-2.5-flash-image-preview"},
        )
        ok = await client.call_tool(
            "image.generate.gemini",
            {"prompt": "a cat", "model": "gemini-2.5-flash-image-preview"},
        )
    assert wrong_model.is_error and "only the preview model is allowed" in _text(wrong_model)
    assert "/tools/image.generate.gemini/require/0" in _text(wrong_model)
    assert no_model.is_error and "/tools/image.generate.gemini/require/0" in _text(no_model)
    assert forbidden.is_error and "this prompt is not allowed" in _text(forbidden)
    assert "/tools/image.generate.gemini/deny_if/0" in _text(forbidden)
    assert not ok.is_error, _text(ok)
    # only the allowed call reached the upstream and wrote a file
    assert len(executed(stack)) == len(before) + 1
    assert len(_images(stack)) == images_before + 1


async def test_the_star_entry_applies_beside_the_tools_own_entry(stack: Stack) -> None:
    """gemini has an entry of its own that allows everything; the "*" entry's require and
    deny_if still judge every call of it."""
    before = len(executed(stack))
    async with mcp_client(stack, token_for("star")) as client:
        forbidden = await client.call_tool(
            "image.generate.gemini", {"prompt": "a forbidden cat", "filenameHint": "ok"}
        )
        unnamed = await client.call_tool("image.generate.gemini", {"prompt": "a cat"})
        ok = await client.call_tool(
            "image.generate.gemini", {"prompt": "a cat", "filenameHint": "ok"}
        )
    assert forbidden.is_error and _text(forbidden).startswith("[POLICY DENIED] ")
    assert "no tool may draw this" in _text(forbidden)
    assert "/tools/*/deny_if/0" in _text(forbidden)
    assert unnamed.is_error and "every call names its file ok" in _text(unnamed)
    assert "/tools/*/require/0" in _text(unnamed)
    assert not ok.is_error, _text(ok)
    # the upstream ran the one call both entries allow, and nothing else
    assert [(e["tool"], e["grant"]) for e in executed(stack)[before:]] == [
        ("image.generate.gemini", "star")
    ]


async def test_grant_without_policy_denies_everything(stack: Stack) -> None:
    before = executed(stack)
    status, _, body = stack.post_raw(
        _call_body("image.generate.gemini", {"prompt": "x"}, rid=42),
        headers={**JSON, "authorization": f"Bearer {token_for('orphan')}"},
    )
    reply = json.loads(body)
    assert status == 200 and reply["id"] == 42
    assert reply["result"]["isError"] is True
    assert "(no policy)" in reply["result"]["content"][0]["text"]
    status, _, body = stack.post_raw(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        headers={**JSON, "authorization": f"Bearer {token_for('orphan')}"},
    )
    assert status == 403
    assert json.loads(body)["error"]["message"].startswith("[POLICY DENIED] ")
    assert executed(stack) == before


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {token_for('open')}", f"Bearer  {token_for('open')}"],
)
def test_bad_token_gets_401(stack: Stack, authorization: str | None) -> None:
    headers = dict(JSON)
    if authorization is not None:
        headers["authorization"] = authorization
    before = executed(stack)
    status, reply_headers, body = stack.post_raw(
        _call_body("image.generate.gemini", {"prompt": "x"}), headers=headers
    )
    assert status == 401
    assert reply_headers["www-authenticate"].startswith("Bearer")
    assert reply_headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["message"].startswith("[POLICY DENIED] ")
    assert executed(stack) == before


@pytest.mark.parametrize(
    ("path", "authorization", "status", "kind", "rule", "challenge"),
    [
        ("/other", f"Bearer {token_for('open')}", 404, "not_found", "(path)", None),
        ("/mcp", "Bearer wrong-token", 401, "invalid_token", "(auth)", ', error="invalid_token"'),
        ("/mcp", None, 401, "unauthenticated", "(auth)", ""),
    ],
)
def test_denials_are_shaped_and_audited_by_their_kind(
    stack: Stack,
    path: str,
    authorization: str | None,
    status: int,
    kind: str,
    rule: str,
    challenge: str | None,
) -> None:
    """A request outside /mcp and a token that names no grant are kinds of their own: the
    client gets a 404, or a 401 whose challenge says invalid_token, and the audit event and
    the metrics name the same kind."""
    headers = dict(JSON)
    if authorization is not None:
        headers["authorization"] = authorization
    before = executed(stack)
    got, reply_headers, _ = stack.post_raw(
        _call_body("image.generate.gemini", {"prompt": "x"}), headers=headers, path=path
    )
    assert got == status
    expected = None if challenge is None else f'Bearer realm="mcp-authz"{challenge}'
    assert reply_headers.get("www-authenticate") == expected
    decision_id = reply_headers["x-mcp-authz-decision-id"]
    _wait(lambda: any(e["decision_id"] == decision_id for e in audit_events(stack)))
    [event] = [e for e in audit_events(stack) if e["decision_id"] == decision_id]
    assert (event["decision"], event["kind"], event["rule"]) == ("deny", kind, rule)
    with urllib.request.urlopen(f"{stack.admin_url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert f'kind="{kind}"' in metrics
    assert executed(stack) == before


async def test_sdk_client_with_bad_token_cannot_connect(stack: Stack) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces the 401 as its own error
        async with mcp_client(stack, "nope") as client:
            await client.list_tools()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, -32700),
        (b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}', 400, -32700),
        (b"[" + _call_body("image.generate.gemini", {"prompt": "x"}) + b"]", 400, -32600),
        (
            b'[{"jsonrpc":"2.0","id":1,"method":"ping"},'
            + _call_body("image.generate.gemini", {"prompt": "x"}, rid=2)
            + b"]",
            400,
            -32600,
        ),
        (
            b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":'
            b'{"name":"image.generate.gemini","arguments":{"prompt":"x","prompt":"y"}}}',
            400,
            -32700,
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}', 400, -32600),
    ],
)
def test_malformed_or_batch_body_never_reaches_upstream(
    stack: Stack, body: bytes, status: int, code: int
) -> None:
    before = executed(stack)
    images = len(_images(stack))
    got, headers, reply = stack.post_raw(
        body, headers={**JSON, "authorization": f"Bearer {token_for('open')}"}
    )
    assert got == status
    assert headers["content-type"] == "application/json"
    error = json.loads(reply)["error"]
    assert error["code"] == code
    assert error["message"].startswith("[POLICY DENIED] ")
    assert executed(stack) == before
    assert len(_images(stack)) == images


def test_header_body_disagreement_is_denied(stack: Stack) -> None:
    before = executed(stack)
    status, _, body = stack.post_raw(
        _call_body("image.generate.gemini", {"prompt": "x"}),
        headers={
            **JSON,
            "authorization": f"Bearer {token_for('open')}",
            "mcp-method": "tools/call",
            "mcp-name": "image.generate.openai",
        },
    )
    assert status == 400
    assert "Mcp-Name" in json.loads(body)["error"]["message"]
    assert executed(stack) == before


def test_audit_line_has_no_token_or_argument_values(stack: Stack) -> None:
    secret_prompt = "a-very-secret-prompt-value"
    _, headers, _ = stack.post_raw(
        _call_body("image.generate.openai", {"prompt": secret_prompt}),
        headers={**JSON, "authorization": f"Bearer {token_for('seed-b')}"},
    )
    decision_id = headers["x-mcp-authz-decision-id"]
    _wait(lambda: any(e["decision_id"] == decision_id for e in audit_events(stack)))
    log_text = stack.log_path("sidecar").read_text()
    assert secret_prompt not in log_text
    assert token_for("seed-b") not in log_text
    [event] = [e for e in audit_events(stack) if e["decision_id"] == decision_id]
    assert event["tool"] == "image.generate.openai"
    assert event["arg_keys"] == ["prompt"]
    assert event["grant_id"] == "seed-b"
    assert event["decision"] == "deny" and event["rule"] == "(default deny)"
    for key in (
        "time",
        "decision_id",
        "request_id",
        "grant_label",
        "method",
        "message",
        "policy",
        "policy_hash",
        "duration_ms",
    ):
        assert key in event, key


async def test_hot_reload_takes_effect(stack: Stack) -> None:
    async with mcp_client(stack, token_for("reload")) as client:
        denied = await client.call_tool("image.generate.gemini", {"prompt": "a cat"})
    assert denied.is_error and "(default deny)" in _text(denied)

    path = stack.config_dir / "policies" / "reloadable.json"
    old = stack.readiness()["config"]["fingerprint"]  # type: ignore[index]
    # a broken edit keeps the last good set and shows on readiness
    path.write_text('{"version":"1","default":"maybe"}')
    _wait(lambda: stack.readiness()["config"]["last_error"] is not None)  # type: ignore[index]
    assert "default" in str(stack.readiness()["config"]["last_error"])  # type: ignore[index]
    # a valid replacement (atomic rename, as editors and ConfigMaps do) applies
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": "1", "default": "allow"}))
    tmp.replace(path)
    _wait(lambda: stack.readiness()["config"]["fingerprint"] != old)  # type: ignore[index]
    assert stack.readiness()["config"]["last_error"] is None  # type: ignore[index]
    async with mcp_client(stack, token_for("reload")) as client:
        allowed = await client.call_tool("image.generate.gemini", {"prompt": "a cat"})
    assert not allowed.is_error, _text(allowed)


def _wait(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_sidecar_down_means_503_not_allow(stack: Stack) -> None:
    before = executed(stack)
    stack.stop_process("sidecar")
    try:
        status, _, _ = stack.post_raw(
            _call_body("image.generate.gemini", {"prompt": "x"}),
            headers={**JSON, "authorization": f"Bearer {token_for('open')}"},
        )
        assert status == 503
        assert executed(stack) == before
    finally:
        stack.start_sidecar()
        stack.wait_path_ready()


async def test_strict_methods_deny_unlisted_methods(stack: Stack) -> None:
    async with mcp_client(stack, token_for("strict")) as client:
        tools = await client.list_tools()
        assert tools.tools
        result = await client.call_tool("image.generate.gemini", {"prompt": "strict cat"})
        assert not result.is_error, _text(result)
    headers = {**JSON, "authorization": f"Bearer {token_for('strict')}"}
    status, _, body = stack.post_raw(b'{"jsonrpc":"2.0","id":5,"method":"prompts/list"}', headers)
    assert status == 403
    error = json.loads(body)["error"]
    assert error["message"].startswith("[POLICY DENIED] ")
    assert "/methods/default" in error["message"]
    assert json.loads(body)["id"] == 5


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_client_reads_denials_in_both_eras(stack: Stack, mode: str) -> None:
    """The denial is a tool result the real SDK client accepts in either protocol era."""
    async with mcp_client(stack, token_for("seed-b"), mode=mode) as client:
        denied = await client.call_tool("image.generate.openai", {"prompt": "a cat"})
    assert denied.is_error
    assert _text(denied).startswith("[POLICY DENIED] ")
    assert "(default deny)" in _text(denied)
