"""MCP authorization end to end: the real oidc-provider, the MCP SDK's own OAuth clients, Envoy,
the sidecar and the ImageGen server, over both ext_authz transports.

What counts is what happened: the requests the client made (its HTTP log), what Envoy
answered (status, `WWW-Authenticate`, body), what the upstream ran (its execution record,
which also says whether an `Authorization` header reached it) and what the sidecar wrote.

The configuration:
- `oauth.json`: this endpoint's resource (`http://127.0.0.1:<envoy>/mcp`), the authorization
  server as the one issuer, default scope `mcp:tools`, no clock skew (expiry is exact).
- grants, first match wins: `people` (the issuer, group `artists`), `scoped-machine` (one
  client_id), `machines` (any client of the issuer whose token carries `mcp:tools`).
- `people` and `scoped-machine` policies: image.generate.gemini needs the scope
  `images:generate` (`tools[name].scopes`: 403 insufficient_scope without it).
- `machines` policy: image.generate.gemini requires `token.scope contains
  "images:generate"` (a policy denial: a 200 `[POLICY DENIED]` tool result) and counts 2
  calls a minute per OAuth client (`scope: client_id`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import jwt
import pytest

from authz.devstack.oauth import AuthorizationServer, MachineClient, User, oauth_config
from authz.devstack.stack import LOOPBACK, Ports, Stack
from tests.e2e.conftest import executed, wait_for_fresh_window
from tests.oauth.clients import (
    MemoryTokenStorage,
    SignIn,
    machine_client,
    signed_in_client,
    token_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.processes]

OTHER_RESOURCE = "https://other.example/mcp"
PRM = "/.well-known/oauth-protected-resource"
GEMINI = "image.generate.gemini"
SCOPE_DENIAL = "drawing needs the images:generate scope"
QUOTA_DENIAL = "2 images a minute per OAuth client"

POLICIES: dict[str, Any] = {
    "people": {
        "version": "1",
        "default": "deny",
        "tools": {GEMINI: {"scopes": ["images:generate"]}},
    },
    "scoped": {
        "version": "1",
        "default": "deny",
        "tools": {GEMINI: {"scopes": ["images:generate"]}},
    },
    "machines": {
        "version": "1",
        "default": "deny",
        "tools": {
            GEMINI: {
                "require": [
                    {
                        "conditions": [
                            {"path": "token.scope", "op": "contains", "value": "images:generate"}
                        ],
                        "on_deny": SCOPE_DENIAL,
                    }
                ],
                "limits": [
                    {
                        "counter": "machine_images",
                        "window": "minute",
                        "max": 2,
                        "scope": "client_id",
                        "on_deny": QUOTA_DENIAL,
                    }
                ],
            }
        },
    },
}


@dataclass
class OAuthLayout:
    stack: Stack
    server: AuthorizationServer
    scoped: MachineClient
    """The client of the `scoped-machine` grant."""
    issued: list[str] = field(default_factory=list)
    """Every access token a test obtained (the leak check looks for each)."""

    @property
    def resource(self) -> str:
        return self.stack.mcp_url

    def token(self, client: MachineClient, *, resource: str | None = None, scope: str) -> str:
        answer = token_for(
            self.server.issuer,
            client,
            resource=self.resource if resource is None else resource,
            scope=scope,
        )
        token = str(answer["access_token"])
        self.issued.append(token)
        return token

    def keep(self, storage: MemoryTokenStorage) -> None:
        if storage.tokens is not None:
            self.issued.append(storage.tokens.access_token)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[OAuthLayout]:
    base = tmp_path_factory.mktemp("oauth")
    ports = Ports()
    resource = f"http://{LOOPBACK}:{ports.envoy}/mcp"
    server = AuthorizationServer(
        resources=[resource, OTHER_RESOURCE],
        log_path=base / "authorization-server.log",
        users=[User("alice", "wonderland", ("artists",))],
    )
    with server:
        scoped = server.register_machine_client("scoped machine")
        config = base / "config"
        (config / "policies").mkdir(parents=True)
        for name, doc in POLICIES.items():
            (config / "policies" / f"{name}.json").write_text(json.dumps(doc))
        grants = [
            {
                "id": "people",
                "policy": "people",
                "oauth": {"issuer": server.issuer, "groups": ["artists"]},
            },
            {
                "id": "scoped-machine",
                "policy": "scoped",
                "oauth": {"issuer": server.issuer, "client_id": scoped.client_id},
            },
            {
                "id": "machines",
                "policy": "machines",
                "oauth": {"issuer": server.issuer, "scope": "mcp:tools"},
            },
        ]
        (config / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
        (config / "oauth.json").write_text(
            json.dumps(oauth_config(resource, [server.issuer], clock_skew_seconds=0))
        )
        record = base / "executed.jsonl"
        record.touch()
        stack = Stack(
            config_dir=config,
            outputs_dir=base / "outputs",
            workdir=base / "work",
            ports=ports,
            extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
            reload_interval=0.2,
            transport=transport,
        )
        with stack:
            assert stack.mcp_url == resource
            yield OAuthLayout(stack, server, scoped)


@dataclass
class HttpLog:
    """The client's own requests and the statuses it got, in order."""

    lines: list[tuple[str, str, int]] = field(default_factory=list)

    async def response(self, response: httpx2.Response) -> None:
        request = response.request
        self.lines.append((request.method, str(request.url).split("?")[0], response.status_code))


STATELESS = "2026-07-28"
"""Raw requests use the stateless era: one request, no session to set up."""


def _message(method: str, params: dict[str, Any] | None = None) -> bytes:
    meta = {
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**(params or {}), "_meta": meta}}
    ).encode()


def _post(
    stack: Stack, token: str | None, method: str = "tools/list", prompt: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw request through Envoy: tools/list, or with `prompt` a Gemini tools/call."""
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": STATELESS,
        "mcp-method": method,
    }
    params = None
    if prompt is not None:
        headers["mcp-name"] = GEMINI
        params = {"name": GEMINI, "arguments": {"prompt": prompt}}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return stack.post_raw(_message(method, params), headers=headers)


def _call(stack: Stack, token: str, prompt: str = "x") -> tuple[int, dict[str, str], bytes]:
    return _post(stack, token, "tools/call", prompt)


def _challenge(headers: dict[str, str]) -> dict[str, str]:
    value = headers.get("www-authenticate", "")
    assert value.startswith("Bearer "), headers
    return dict(re.findall(r'(\w+)="([^"]*)"', value))


def _texts(result: Any) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


def _tool_result_text(body: bytes) -> tuple[bool, str]:
    """(isError, text) of a tools/call answer, JSON or one SSE event."""
    text = body.decode()
    if text.lstrip().startswith("{"):
        message = json.loads(text)
    else:
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        message = json.loads(data[-1])
    result = message["result"]
    return bool(result.get("isError")), " ".join(p.get("text", "") for p in result["content"])


# -- discovery from a cold start -----------------------------------------------------------


async def test_a_person_signs_in_from_nothing_but_the_url(layout: OAuthLayout) -> None:
    """The SDK's OAuthClientProvider: 401 → protected resource metadata → authorization
    server metadata → dynamic registration → sign-in (authorization code + PKCE) → token →
    tools; then a call that needs images:generate gets 403 insufficient_scope and the client
    steps up (a second sign-in asking for both scopes) and the call runs."""
    stack, log = layout.stack, HttpLog()
    storage, sign_in = MemoryTokenStorage(), SignIn("alice", "wonderland")
    before = len(executed(stack))
    async with signed_in_client(stack.mcp_url, sign_in, storage, hooks=[log.response]) as client:
        tools = await client.list_tools()
        assert GEMINI in {tool.name for tool in tools.tools}
        result = await client.call_tool(GEMINI, {"prompt": "a fox in the snow"})
        assert not result.is_error, _texts(result)
    layout.keep(storage)

    origin = f"http://{LOOPBACK}:{stack.ports.envoy}"
    issuer = layout.server.issuer
    steps = [(method, url) for method, url, _ in log.lines]
    first_401 = log.lines.index(("POST", stack.mcp_url, 401))
    prm = steps.index(("GET", f"{origin}{PRM}/mcp"))
    metadata = steps.index(("GET", f"{issuer}/.well-known/oauth-authorization-server"))
    registration = steps.index(("POST", f"{issuer}/reg"))
    token = steps.index(("POST", f"{issuer}/token"))
    assert first_401 < prm < metadata < registration < token
    assert log.lines[prm][2] == 200
    assert ("POST", stack.mcp_url, 403) in log.lines[token:]
    assert steps.count(("POST", f"{issuer}/token")) == 2  # the sign-in, then the step-up

    asked = [
        set(urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["scope"][0].split())
        for url in sign_in.visited
        if url.startswith(f"{issuer}/auth?")
    ]
    # the challenge's scope first (the SDK adds offline_access, which the server offers),
    # then the step-up's union
    assert len(asked) == 2
    assert "mcp:tools" in asked[0] and "images:generate" not in asked[0]
    assert {"mcp:tools", "images:generate"} <= asked[1]
    assert storage.tokens is not None
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert claims["aud"] == stack.mcp_url
    assert claims["sub"] == "alice"
    assert set(claims["scope"].split()) == {"mcp:tools", "images:generate"}

    runs = executed(stack)[before:]
    assert [(run["tool"], run["grant"]) for run in runs] == [(GEMINI, "people")]


async def test_a_machine_client_discovers_and_steps_up(layout: OAuthLayout) -> None:
    """The SDK's ClientCredentialsOAuthProvider, knowing the URL and its own credentials:
    discovery from the 401, a token for mcp:tools, then images:generate after the 403."""
    stack, storage = layout.stack, MemoryTokenStorage()
    before = len(executed(stack))
    async with machine_client(
        stack.mcp_url, layout.scoped, layout.server.issuer, storage
    ) as client:
        await client.list_tools()
        first = storage.tokens.scope if storage.tokens else None
        result = await client.call_tool(GEMINI, {"prompt": "a robot"})
        assert not result.is_error, _texts(result)
    layout.keep(storage)
    assert first == "mcp:tools"
    assert storage.tokens is not None
    assert set((storage.tokens.scope or "").split()) == {"mcp:tools", "images:generate"}
    runs = executed(stack)[before:]
    assert [(run["tool"], run["grant"]) for run in runs] == [(GEMINI, "scoped-machine")]


# -- the spec's answers --------------------------------------------------------------------


def test_no_token_gets_the_challenge_and_the_metadata_is_public(layout: OAuthLayout) -> None:
    stack = layout.stack
    status, headers, body = _post(stack, None)
    assert status == 401
    challenge = _challenge(headers)
    origin = f"http://{LOOPBACK}:{stack.ports.envoy}"
    assert challenge["resource_metadata"] == f"{origin}{PRM}/mcp"
    assert challenge["scope"] == "mcp:tools"
    assert "error" not in challenge
    assert json.loads(body)["error"]["code"] < 0  # the JSON-RPC error body stays

    for path in (f"{PRM}/mcp", PRM):
        answer = httpx2.get(f"{origin}{path}", timeout=10)
        assert answer.status_code == 200, path
        assert answer.json() == {
            "resource": stack.mcp_url,
            "authorization_servers": [layout.server.issuer],
            "scopes_supported": ["mcp:tools", "images:generate"],
            "bearer_methods_supported": ["header"],
        }


def test_a_token_for_another_audience_is_refused(layout: OAuthLayout) -> None:
    client = layout.server.register_machine_client("elsewhere")
    stack = layout.stack
    before = len(executed(stack))
    other = layout.token(client, resource=OTHER_RESOURCE, scope="mcp:tools images:generate")
    assert jwt.decode(other, options={"verify_signature": False})["aud"] == OTHER_RESOURCE
    status, headers, _ = _call(stack, other)
    assert status == 401
    assert _challenge(headers)["error"] == "invalid_token"

    # the same client's token for this resource works: only the audience differed
    mine = layout.token(client, scope="mcp:tools images:generate")
    status, _, body = _call(stack, mine)
    assert status == 200, body
    assert len(executed(stack)) == before + 1


def test_an_opaque_token_and_a_token_no_grant_matches_are_refused(layout: OAuthLayout) -> None:
    client = layout.server.register_machine_client("no grant")
    # no resource asked for: oidc-provider issues an opaque token, not a JWT for us
    opaque = layout.token(client, resource="", scope="mcp:tools")
    status, headers, _ = _post(layout.stack, opaque)
    assert status == 401
    assert _challenge(headers)["error"] == "invalid_token"
    # valid for this resource, but without mcp:tools no grant matches
    ungranted = layout.token(client, scope="images:generate")
    status, headers, _ = _post(layout.stack, ungranted)
    assert status == 401
    assert _challenge(headers)["error"] == "invalid_token"


def test_an_expired_token_is_refused(layout: OAuthLayout) -> None:
    client = layout.server.register_machine_client("short-lived")
    layout.server.client_settings(client.client_id, access_token_ttl=3)
    token = layout.token(client, scope="mcp:tools")
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    status, _, _ = _post(layout.stack, token)
    assert status == 200 or time.time() >= expires  # accepted while it lived
    deadline = time.monotonic() + 20
    while True:
        status, headers, _ = _post(layout.stack, token)
        if status == 401:
            break
        assert status == 200
        assert time.monotonic() < deadline, "the expired token was still accepted"
        time.sleep(0.2)
    assert time.time() >= expires  # refused for its expiry, not before
    assert _challenge(headers)["error"] == "invalid_token"


def test_a_rotated_key_is_picked_up(layout: OAuthLayout) -> None:
    """New keys at the authorization server: the sidecar fetches its JWKS again for the
    unknown key id, whichever algorithm signs (RS256, then ES256)."""
    client = layout.server.register_machine_client("rotation")
    old = layout.token(client, scope="mcp:tools")
    assert _post(layout.stack, old)[0] == 200
    new_kids = layout.server.rotate_keys(keep_previous=True)

    for alg in ("RS256", "ES256"):
        layout.server.client_settings(client.client_id, alg=alg)
        token = layout.token(client, scope="mcp:tools")
        header = jwt.get_unverified_header(token)
        assert (header["alg"], header["kid"] in new_kids) == (alg, True)
        # the sidecar refetches a JWKS at most every few seconds: poll for the evidence
        deadline = time.monotonic() + 20
        while (status := _post(layout.stack, token)[0]) != 200:
            assert status == 401
            assert time.monotonic() < deadline, f"{alg} token of the new key never accepted"
            time.sleep(0.25)
    assert _post(layout.stack, old)[0] == 200  # the old key is still published


def test_a_missing_scope_gets_insufficient_scope(layout: OAuthLayout) -> None:
    stack = layout.stack
    before = len(executed(stack))
    narrow = layout.token(layout.scoped, scope="mcp:tools")
    assert _post(stack, narrow)[0] == 200  # enough for listing
    status, headers, body = _call(stack, narrow)
    assert status == 403
    challenge = _challenge(headers)
    assert challenge["error"] == "insufficient_scope"
    assert challenge["scope"] == "images:generate"
    assert challenge["resource_metadata"].endswith(f"{PRM}/mcp")
    error = json.loads(body)["error"]
    assert error["message"].startswith("[POLICY DENIED]"), error
    assert len(executed(stack)) == before

    wide = layout.token(layout.scoped, scope="mcp:tools images:generate")
    status, _, body = _call(stack, wide)
    assert status == 200
    assert _tool_result_text(body)[0] is False
    assert [run["grant"] for run in executed(stack)[before:]] == ["scoped-machine"]


def test_a_policy_on_token_scope_denies_as_written(layout: OAuthLayout) -> None:
    """`require token.scope contains "images:generate"` is policy, not a scope challenge:
    a 200 `[POLICY DENIED]` tool result with the rule's message, and nothing runs."""
    stack = layout.stack
    client = layout.server.register_machine_client("policy")
    before = len(executed(stack))
    narrow = layout.token(client, scope="mcp:tools")
    status, headers, body = _call(stack, narrow)
    assert status == 200
    assert "www-authenticate" not in headers
    is_error, text = _tool_result_text(body)
    assert is_error
    assert text.startswith("[POLICY DENIED]") and SCOPE_DENIAL in text
    assert len(executed(stack)) == before

    wide = layout.token(client, scope="mcp:tools images:generate")
    status, _, body = _call(stack, wide)
    assert (status, _tool_result_text(body)[0]) == (200, False)
    assert [run["grant"] for run in executed(stack)[before:]] == ["machines"]


def test_two_client_ids_have_separate_quotas(layout: OAuthLayout) -> None:
    """One grant (`machines`), a limit with `scope: client_id`: each client has its own 2
    calls a minute, whatever the other spent."""
    stack = layout.stack
    first = layout.server.register_machine_client("quota one")
    second = layout.server.register_machine_client("quota two")
    tokens = {
        client.client_id: layout.token(client, scope="mcp:tools images:generate")
        for client in (first, second)
    }
    wait_for_fresh_window()
    before = len(executed(stack))

    def calls(client: MachineClient, count: int) -> list[str]:
        outcomes = []
        for index in range(count):
            status, _, body = _call(stack, tokens[client.client_id], f"quota {index}")
            assert status == 200, body
            is_error, text = _tool_result_text(body)
            assert not is_error or text.startswith(f"[POLICY DENIED] {QUOTA_DENIAL}"), text
            outcomes.append("denied" if is_error else "ran")
        return outcomes

    assert calls(first, 3) == ["ran", "ran", "denied"]
    assert calls(second, 2) == ["ran", "ran"]
    assert calls(first, 1) == ["denied"]
    runs = executed(stack)[before:]
    assert [run["grant"] for run in runs] == ["machines"] * 4


def test_tokens_never_reach_the_upstream_nor_the_log(layout: OAuthLayout) -> None:
    """Runs last in the module: every token the tests used, against the upstream's record
    (no Authorization header ever arrived) and every byte the sidecar wrote."""
    stack = layout.stack
    runs = executed(stack)
    assert runs, "no tool ran in this module"
    assert all(run["authorization_present"] is False for run in runs)
    assert len(layout.issued) >= 10
    written = stack.log_path("sidecar").read_text()
    envoy = stack.log_path("envoy").read_text()
    for token in layout.issued:
        assert token not in written
        assert token not in envoy
        assert token.rsplit(".", 1)[-1] not in written  # not even its signature
