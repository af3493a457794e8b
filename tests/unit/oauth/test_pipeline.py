"""OAuth through the request pipeline and both ext_authz renderings: the caller's token
checked against keys served over real HTTP (tests.unit.oauth.conftest), the grant it
matches, the challenges, the insufficient_scope 403, quotas per client, and no token in
any log line."""

from __future__ import annotations

import atexit
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from authz import audit
from authz.config.grants import hash_token
from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.devstack.stack import free_port
from authz.envoy.grpc_authz import check_response
from authz.envoy.http_authz import denied_answer
from authz.model import DenyKind
from authz.oauth.jwks import TokenVerifier
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest
from tests.unit.oauth.conftest import Site
from tests.unit.oauth.keys import SigningKey, oauth_json

pytestmark = pytest.mark.processes

GEM = "image.generate.gemini"
KEY = SigningKey("k1")
STATIC = "s7q2Xk.Zr9Lm4p.Wd3Vh8n"
METADATA = "http://127.0.0.1:10000/.well-known/oauth-protected-resource/mcp"
SCOPED = {
    "version": "1",
    "tools": {
        GEM: {
            "scopes": ["images:generate"],
            "deny_if": [{"conditions": [{"path": "token.sub", "op": "eq", "value": "mallory"}]}],
            "limits": [{"counter": "per_client", "window": "day", "max": 1, "scope": "client_id"}],
        }
    },
}


def configure(root: Path, issuer: str, *, oauth: bool = True) -> Authorizer:
    (root / "policies").mkdir()
    (root / "policies" / "open.json").write_text('{"version":"1","default":"allow"}')
    (root / "policies" / "scoped.json").write_text(json.dumps(SCOPED))
    grants: list[dict[str, Any]] = [
        {"id": "static", "token_sha256": hash_token(STATIC), "policy": "open"},
    ]
    if oauth:
        grants += [
            {"id": "artists", "policy": "scoped", "oauth": {"issuer": issuer, "groups": ["art"]}},
            {"id": "alice", "policy": "scoped", "oauth": {"issuer": issuer, "sub": "alice"}},
            {"id": "mallory", "policy": "scoped", "oauth": {"issuer": issuer, "sub": "mallory"}},
        ]
        (root / "oauth.json").write_bytes(oauth_json(authorization_servers=[issuer]))
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    return Authorizer(ConfigSource.open(root), MemoryCounterStore(), verifier=TokenVerifier())


def call(rid: int = 1) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": GEM, "arguments": {"prompt": "x"}},
        }
    ).encode()


async def check(authorizer: Authorizer, token: str | None, rid: int = 1) -> Verdict:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return await authorizer.check(HttpRequest("POST", "/mcp", headers, call(rid)))


def grpc_answer(verdict: Verdict) -> tuple[int, dict[str, str], Any]:
    denied = check_response(verdict).denied_response
    headers = {h.header.key: h.header.value for h in denied.headers}
    return denied.status.code, headers, json.loads(denied.body)


def http_answer(verdict: Verdict) -> tuple[int, dict[str, str], Any]:
    """The HTTP ext_authz answer (a 200 travels as 299 to Envoy's local-reply mapper)."""
    head, _, body = denied_answer(verdict).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers, json.loads(body)


def token(site: Site, **claims: Any) -> str:
    """A token of the issuer `site` for alice (client-a), unless `claims` say otherwise."""
    claims.setdefault("sub", "alice")
    return KEY.sign(iss=site.url, **claims)


async def test_no_token_is_challenged_toward_the_metadata(tmp_path: Path, site: Site) -> None:
    authorizer = configure(tmp_path, site.url)
    verdict = await check(authorizer, None)
    expected = f'Bearer resource_metadata="{METADATA}", scope="mcp:tools"'
    for status, headers, body in (grpc_answer(verdict), http_answer(verdict)):
        assert status == 401
        assert headers["www-authenticate"] == expected
        assert body["error"]["code"] == -32001
    assert sum(site.hits.values()) == 0


async def test_a_valid_token_names_its_grant_and_carries_its_claims(
    tmp_path: Path, site: Site
) -> None:
    site.publish(KEY)
    authorizer = configure(tmp_path, site.url)
    verdict = await check(authorizer, token(site, scope="mcp:tools images:generate"))
    assert verdict.decision.allowed, verdict.decision.message
    assert verdict.grant is not None and verdict.grant.id == "alice"
    assert verdict.grant.token == {
        "iss": site.url,
        "sub": "alice",
        "client_id": "client-a",
        "scope": ["images:generate", "mcp:tools"],
        "groups": [],
    }
    # the first oauth grant in file order wins
    verdict = await check(authorizer, token(site, groups=["art"], scope="images:generate"))
    assert verdict.grant is not None and verdict.grant.id == "artists"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"aud": "http://127.0.0.1:10000/elsewhere"}, "another audience"),
        ({"aud": None}, "'aud'"),
        ({"sub": "nobody"}, "no grant matches"),
    ],
)
async def test_refused_tokens_get_invalid_token(
    tmp_path: Path, site: Site, claims: dict[str, Any], reason: str
) -> None:
    site.publish(KEY)
    authorizer = configure(tmp_path, site.url)
    verdict = await check(authorizer, token(site, **claims))
    assert verdict.decision.kind is DenyKind.INVALID_TOKEN
    assert reason in verdict.decision.message
    status, headers, body = grpc_answer(verdict)
    assert status == 401
    assert headers["www-authenticate"] == (
        f'Bearer error="invalid_token", resource_metadata="{METADATA}", scope="mcp:tools"'
    )
    assert reason in body["error"]["message"]


async def test_a_static_token_wins_over_oauth_without_any_fetch(tmp_path: Path, site: Site) -> None:
    authorizer = configure(tmp_path, site.url)
    verdict = await check(authorizer, STATIC)
    assert verdict.decision.allowed
    assert verdict.grant is not None and verdict.grant.id == "static"
    assert verdict.grant.token is None
    assert sum(site.hits.values()) == 0


async def test_without_oauth_json_a_jwt_is_an_unknown_token(tmp_path: Path, site: Site) -> None:
    site.publish(KEY)
    authorizer = configure(tmp_path, site.url, oauth=False)
    verdict = await check(authorizer, token(site))
    status, headers, _ = grpc_answer(verdict)
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="mcp-authz", error="invalid_token"'
    assert sum(site.hits.values()) == 0


async def test_a_missing_scope_is_a_403_challenge_even_for_tools_call(
    tmp_path: Path, site: Site
) -> None:
    site.publish(KEY)
    authorizer = configure(tmp_path, site.url)
    verdict = await check(authorizer, token(site, scope="mcp:tools"))
    assert verdict.decision.kind is DenyKind.INSUFFICIENT_SCOPE
    expected = (
        f'Bearer error="insufficient_scope", scope="images:generate", '
        f'resource_metadata="{METADATA}"'
    )
    for status, headers, body in (grpc_answer(verdict), http_answer(verdict)):
        assert status == 403
        assert headers["www-authenticate"] == expected
        assert body["id"] == 1
        assert body["error"]["message"].startswith("[POLICY DENIED] ")
        assert "/tools/image.generate.gemini/scopes" in body["error"]["message"]
    # the token with the scope succeeds
    verdict = await check(authorizer, token(site, scope="mcp:tools images:generate"))
    assert verdict.decision.allowed


async def test_a_policy_denial_on_the_token_stays_a_tool_result(tmp_path: Path, site: Site) -> None:
    site.publish(KEY)
    authorizer = configure(tmp_path, site.url)
    verdict = await check(authorizer, token(site, sub="mallory", scope="images:generate"))
    assert verdict.decision.kind is DenyKind.POLICY
    assert verdict.challenge is None
    denied = check_response(verdict).denied_response
    assert denied.status.code == 200
    body = json.loads(denied.body)
    assert body["result"]["isError"] is True
    assert "www-authenticate" not in {h.header.key for h in denied.headers}


async def test_two_clients_have_separate_quotas(tmp_path: Path, site: Site) -> None:
    site.publish(KEY)
    authorizer = configure(tmp_path, site.url)
    scope = "images:generate"
    first = await check(authorizer, token(site, scope=scope), rid=1)
    again = await check(authorizer, token(site, scope=scope), rid=2)
    other = await check(authorizer, token(site, scope=scope, client_id="client-b"), rid=3)
    assert first.decision.allowed
    assert again.decision.kind is DenyKind.RATE_LIMITED
    assert other.decision.allowed


async def test_an_authorization_server_that_is_down_is_a_503(tmp_path: Path, site: Site) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"
    authorizer = configure(tmp_path, issuer)
    verdict = await check(authorizer, KEY.sign(iss=issuer))
    assert verdict.decision.kind is DenyKind.UNAVAILABLE
    assert "cannot be checked" in verdict.decision.message
    status, headers, body = grpc_answer(verdict)
    assert status == 503
    assert "www-authenticate" not in headers
    assert body["error"]["code"] == -32603


async def test_no_token_reaches_a_log_line(tmp_path: Path, site: Site) -> None:
    site.publish(KEY)
    saved = structlog.get_config()
    saved_audit = (audit._writer, audit._processors, audit._decisions_logged)
    stream = io.StringIO()
    writer = audit.configure_logging("info", stream)
    structlog.configure(cache_logger_on_first_use=False)  # no logger keeps this stream
    tokens = [
        token(site, scope="images:generate"),
        token(site, exp=int(time.time()) - 3600),
        token(site, sub="nobody"),
        token(site, aud="http://elsewhere"),
        SigningKey("k1").sign(iss=site.url),  # a bad signature
        STATIC,
    ]
    try:
        authorizer = configure(tmp_path, site.url)
        for i, text in enumerate(tokens):
            await check(authorizer, text, rid=i)
        writer.flush()
    finally:
        atexit.unregister(writer.flush)
        structlog.configure(**saved)
        audit._writer, audit._processors, audit._decisions_logged = saved_audit
    output = stream.getvalue()
    assert output.count('"event": "decision"') == len(tokens)
    for text in tokens:
        assert text not in output
        for part in text.split("."):
            assert part not in output
