"""ext_authz over HTTP beside gRPC, attacked end to end: the real Envoy (deploy/envoy.yaml and
deploy/envoy-http.yaml), the real sidecar on Redis, and a real MCP server (the SDK's low-level
`Server`) behind a recorder of every HTTP request it receives and every tool it runs.

- **The local-reply mappers touch only the sidecar's denials.** Over HTTP the sidecar sends a
  denied `tools/call` (200) as 299 and its 503 as 298, and two mappers turn exactly those back.
  An upstream that itself answers 299, 298, 403, 500 or 503 reaches the client as sent; Envoy's
  own 503 (the upstream is down) keeps its status and body; with the sidecar frozen or down
  every request is Envoy's 503 denial, a would-be 299 included, never a 200.
- **Headers only Envoy or the sidecar set cannot be forged.** A client sending the identity
  headers Envoy adds for the HTTP check (`x-mcp-authz-peer-uri-san`, `x-mcp-authz-jwt-authn`),
  the sidecar's answer headers (`x-mcp-grant`, `x-mcp-authz-context`, `-decision`, `-hides`,
  `-decision-id`) or Envoy's `x-envoy-auth-partial-body`, in any letter case, repeated, over
  HTTP/1.1 or h2c, changes no decision, reaches the upstream as nothing (its record of the
  headers it received), and reaches the response phase as nothing (a hidden tool stays hidden,
  a refused call's quota goes back under the real decision).

Every test runs once per transport (fixture `transport`): the guarantees are the same.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import mcp_types as types
import pytest
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.config.grants import hash_token
from authz.devstack import faults
from authz.devstack.stack import LOOPBACK, Stack
from authz.envoy.denial import DECISION_HEADER
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from imagegen_upstream.testing import serve_in_thread
from tests.e2e.conftest import audit_events, wait_for_fresh_window
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.processes]

RUN = "t.run"
SECRET = "t.secret"
PAINTER = "spiffe://example.org/ns/agents/sa/painter"
ISSUER = "https://idp.example.org"
STATUS_HEADER = "x-test-upstream-status"
"""A request carrying it is answered by the test upstream with that status, before MCP."""
UPSTREAM_BODY = b'{"answered_by":"the upstream","status":%d}'
LIMIT_RULE = f"/tools/{RUN}/limits/runs"

POLICIES: dict[str, dict[str, Any]] = {
    "hider": {"version": "1", "default": "allow", "hide": [SECRET]},
    "open": {"version": "1", "default": "allow"},
    "closed": {"version": "1", "default": "deny"},
    "quota": {
        "version": "1",
        "default": "deny",
        "tools": {
            RUN: {"limits": [{"counter": "runs", "window": "minute", "max": 2, "scope": "grant"}]}
        },
    },
}
VARIANTS = ["h1-lower", "h1-upper", "h1-mixed-repeated", "h2c-lower", "h2c-repeated"]
"""How forged headers are sent: protocol, letter case of the names, each once or twice."""
GRANTS: list[dict[str, Any]] = [
    {"id": "hider", "token_sha256": hash_token("token-hider"), "policy": "hider"},
    {"id": "viewer", "token_sha256": hash_token("token-viewer"), "policy": "open"},
    {"id": "closed", "token_sha256": hash_token("token-closed"), "policy": "closed"},
    {"id": "painter", "spiffe_id": PAINTER, "policy": "open"},
    {"id": "alice", "jwt": {"issuer": ISSUER, "subject": "alice"}, "policy": "open"},
    *(
        {"id": f"quota-{v}", "token_sha256": hash_token(f"token-quota-{v}"), "policy": "quota"}
        for v in VARIANTS
    ),
]


def token(grant: str) -> str:
    return f"token-{grant}"


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc))
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": GRANTS}))
    return root


# -- the upstream ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One HTTP request as the upstream received it (names in lower case), or one tool run."""

    headers: tuple[tuple[str, str], ...]
    tool: str | None = None

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def names(self) -> set[str]:
        return {key for key, _ in self.headers}


class Upstream:
    """The MCP server behind Envoy, with its own record of what reached it and what ran."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.runs: list[Received] = []
        self._lock = threading.Lock()
        self._serving: contextlib.ExitStack | None = None

    def _mcp_app(self) -> ASGIApp:
        async def on_list_tools(
            ctx: Any, params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            schema = {"type": "object"}
            return types.ListToolsResult(
                tools=[types.Tool(name=n, input_schema=schema) for n in (RUN, SECRET)]
            )

        async def on_call_tool(
            ctx: Any, params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            raw = ctx.request.headers.raw if ctx.request is not None else []
            with self._lock:
                self.runs.append(Received(_decoded(raw), tool=params.name))
            return types.CallToolResult(content=[types.TextContent(text=f"{params.name} ran")])

        server = Server("recorder", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
        app: ASGIApp = server.streamable_http_app(
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        return app

    def _recorder(self, mcp_app: ASGIApp) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await mcp_app(scope, receive, send)
                return
            received = Received(_decoded(scope["headers"]))
            with self._lock:
                self.received.append(received)
            forced = received.values(STATUS_HEADER)
            if not forced:
                await mcp_app(scope, receive, send)
                return
            message: Message = {"more_body": True}
            while message.get("more_body"):
                message = await receive()
            status = int(forced[0])
            body = UPSTREAM_BODY % status
            headers = [(b"content-type", b"application/json")]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return app

    def start(self, port: int) -> None:
        """Serve on `port` (again after `stop`: an SDK server app runs only once)."""
        serving = contextlib.ExitStack()
        serving.enter_context(serve_in_thread(self._recorder(self._mcp_app()), LOOPBACK, port))
        self._serving = serving

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.close()
            self._serving = None

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self.received), len(self.runs)


def _decoded(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw)


@dataclass
class Echo:
    stack: Stack
    upstream: Upstream
    redis: RedisServer


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Echo]:
    base = tmp_path_factory.mktemp(f"http-transport-{transport}")
    upstream = Upstream()
    with RedisServer(directory=base / "redis") as redis:
        stack = Stack(
            config_dir=write_config(base / "config"),
            outputs_dir=base / "outputs",
            workdir=base / "work",
            offline_gemini=False,
            reload_interval=0.2,
            sidecar_args=["--redis-url", redis.url],
            transport=transport,
        )
        stack.workdir.mkdir(parents=True, exist_ok=True)
        upstream.start(stack.ports.upstream)
        try:
            stack.start_sidecar()
            stack.start_envoy()
            yield Echo(stack, upstream, redis)
        finally:
            stack.stop()
            upstream.stop()


# -- requests -------------------------------------------------------------------------------

STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def mcp_request(
    method: str, rid: int, params: dict[str, Any] | None = None, name: str | None = None
) -> tuple[list[tuple[str, str]], bytes]:
    """A 2026-07-28 request (no session needed): its headers and body."""
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": method,
        "params": {**(params or {}), "_meta": STATELESS_META},
    }
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ]
    if name is not None:
        headers.append(("mcp-name", name))
    return headers, json.dumps(body).encode()


def call(tool: str = RUN, rid: int = 1) -> tuple[list[tuple[str, str]], bytes]:
    return mcp_request("tools/call", rid, {"name": tool, "arguments": {}}, name=tool)


def listing(rid: int = 2) -> tuple[list[tuple[str, str]], bytes]:
    return mcp_request("tools/list", rid)


def bearer(grant: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token(grant)}")]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key == name]
        assert len(found) <= 1, (name, found)
        return found[0] if found else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def decision_id(self) -> str | None:
        return self.header(DECISION_HEADER)


def send_h1(stack: Stack, headers: list[tuple[str, str]], body: bytes) -> Reply:
    """POST /mcp over HTTP/1.1 with the header names exactly as given (case, repeats)."""
    conn = http.client.HTTPConnection(LOOPBACK, stack.ports.envoy, timeout=15)
    try:
        conn.putrequest("POST", "/mcp", skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        got = tuple((k.lower(), v) for k, v in response.getheaders())
        return Reply(response.status, got, response.read())
    finally:
        conn.close()


def send_h2c(stack: Stack, headers: list[tuple[str, str]], body: bytes) -> Reply:
    """POST /mcp over h2c (prior knowledge); HTTP/2 header names are lower case."""
    with httpx.Client(http1=False, http2=True, timeout=15) as client:
        response = client.post(stack.mcp_url, content=body, headers=headers)
    assert response.http_version == "HTTP/2"
    got = tuple((k.decode().lower(), v.decode()) for k, v in response.headers.raw)
    return Reply(response.status_code, got, response.content)


def send(stack: Stack, variant: str, headers: list[tuple[str, str]], body: bytes) -> Reply:
    return (send_h2c if variant.startswith("h2c") else send_h1)(stack, headers, body)


# -- forged headers -------------------------------------------------------------------------

FORGED_ID = "f0f0f0f0f0f0f0f0f0f0f0f0"
FORGED_CONTEXT = {
    # what the sidecar would say of an open grant's call: no reservation, nothing hidden
    "decision_id": FORGED_ID,
    "decision": "allow",
    "grant_id": "viewer",
    "policy": "open",
    "mcp_method": "tools/call",
    "tool": RUN,
    "jsonrpc_id": "1",
}
FORGED: list[tuple[str, str, str]] = [
    # name, value, the value of a second copy
    ("x-mcp-authz-peer-uri-san", PAINTER, "spiffe://example.org/ns/agents/sa/other"),
    (
        "x-mcp-authz-jwt-authn",
        json.dumps({JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice", "exp": 2e9}}),
        json.dumps({JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "bob", "exp": 2e9}}),
    ),
    ("x-mcp-grant", "viewer", "painter"),
    ("x-mcp-authz-context", json.dumps(FORGED_CONTEXT), "{}"),
    ("x-mcp-authz-decision", "allow", "deny"),
    ("x-mcp-authz-hides", "false", "true"),
    ("x-mcp-authz-decision-id", FORGED_ID, "e0e0e0e0e0e0e0e0e0e0e0e0"),
    ("x-envoy-auth-partial-body", "true", "false"),
]
SIDECAR_ONLY = {name for name, _, _ in FORGED}


def forged(variant: str) -> list[tuple[str, str]]:
    def spelled(name: str) -> str:
        if "upper" in variant:
            return name.upper()
        if "mixed" in variant:
            return "-".join(part.capitalize() for part in name.split("-"))
        return name

    headers = [(spelled(name), value) for name, value, _ in FORGED]
    if "repeated" in variant:
        headers += [(spelled(name), second) for name, _, second in FORGED]
    return headers


# -- what happened ----------------------------------------------------------------------------


def sidecar_events(stack: Stack, event: str) -> list[dict[str, Any]]:
    found = []
    for line in stack.log_path("sidecar").read_text().splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and parsed.get("event") == event:
                found.append(parsed)
    return found


def decision_of(stack: Stack, decision_id: str | None) -> dict[str, Any]:
    """The sidecar's decision event of a reply's decision id."""
    assert decision_id is not None
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in audit_events(stack) if e["decision_id"] == decision_id]
        if found:
            [event] = found
            return event
        assert time.monotonic() < deadline, f"no decision event {decision_id}"
        time.sleep(0.05)


def response_of(stack: Stack, decision_id: str | None) -> dict[str, Any]:
    """The response phase's event of a reply's decision id (written when the response ends)."""
    assert decision_id is not None
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in sidecar_events(stack, "response") if e["decision_id"] == decision_id]
        if found:
            [event] = found
            return event
        assert time.monotonic() < deadline, f"no response event for {decision_id}"
        time.sleep(0.05)


def assert_no_forged_id_anywhere(stack: Stack) -> None:
    forged_ids = {FORGED_ID, "e0e0e0e0e0e0e0e0e0e0e0e0"}
    for event in audit_events(stack) + sidecar_events(stack, "response"):
        assert event["decision_id"] not in forged_ids, event


def assert_upstream_saw_only_the_sidecar(received: Received, grant: str, decision_id: str) -> None:
    """The identity headers of one request at the upstream: the sidecar's, once each."""
    assert received.values("x-mcp-grant") == [grant], received
    assert received.values(DECISION_HEADER) == [decision_id], received
    leaked = {n for n in received.names() if n in SIDECAR_ONLY or n.startswith("x-mcp-authz-")}
    assert leaked == {"x-mcp-grant", DECISION_HEADER}, received
    assert "authorization" not in received.names(), received


def assert_client_sees_no_internals(reply: Reply) -> None:
    """The client gets the decision id, never the metadata headers or the grant."""
    names = {name for name, _ in reply.headers}
    hidden = {"x-mcp-grant", "x-mcp-authz-context", "x-mcp-authz-decision", "x-mcp-authz-hides"}
    assert not names & hidden, reply.headers


def tool_text(reply: Reply) -> tuple[bool, str]:
    result = reply.json()["result"]
    return result["isError"], result["content"][0]["text"]


# -- forgery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_forged_identity_without_a_token_is_401_and_nothing_runs(echo: Echo, variant: str) -> None:
    """The peer SAN of a granted SPIFFE ID, the claims of a granted JWT subject and a grant
    name, sent by the client: none of them names a caller (the HTTP check would honour the
    first two if they reached the sidecar)."""
    headers, body = call()
    before = echo.upstream.counts()
    reply = send(echo.stack, variant, headers + forged(variant), body)
    assert reply.status == 401, reply
    assert reply.header("www-authenticate") == 'Bearer realm="mcp-authz"'
    assert "missing bearer token" in reply.json()["error"]["message"]
    event = decision_of(echo.stack, reply.decision_id)
    assert (event["decision"], event["grant_id"]) == ("deny", None)
    assert echo.upstream.counts() == before
    assert_client_sees_no_internals(reply)
    assert_no_forged_id_anywhere(echo.stack)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forged_headers_do_not_change_a_real_grant(echo: Echo, variant: str) -> None:
    headers, body = call()
    before_received, before_runs = echo.upstream.counts()
    reply = send(echo.stack, variant, bearer("hider") + headers + forged(variant), body)
    assert reply.status == 200, reply
    assert tool_text(reply) == (False, f"{RUN} ran")
    decision_id = reply.decision_id
    assert decision_id is not None
    event = decision_of(echo.stack, decision_id)
    assert (event["decision"], event["grant_id"], event["tool"]) == ("allow", "hider", RUN)
    # ground truth: what the upstream received and ran
    assert echo.upstream.counts() == (before_received + 1, before_runs + 1)
    [run] = echo.upstream.runs[before_runs:]
    assert run.tool == RUN
    assert_upstream_saw_only_the_sidecar(run, "hider", decision_id)
    # the response phase read the sidecar's metadata, not the client's
    response = response_of(echo.stack, decision_id)
    assert (response["grant_id"], response["tool"], response["status"]) == ("hider", RUN, 200)
    assert_client_sees_no_internals(reply)
    assert_no_forged_id_anywhere(echo.stack)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forged_context_does_not_unhide_a_tool(echo: Echo, variant: str) -> None:
    """`hider` hides t.secret; a forged context of an open grant and `hides: false` leave it
    hidden. `viewer` hides nothing; a forged `hides: true` hides nothing."""
    for grant, expected, removed in (("hider", [RUN], 1), ("viewer", [RUN, SECRET], 0)):
        headers, body = listing()
        reply = send(echo.stack, variant, bearer(grant) + headers + forged(variant), body)
        assert reply.status == 200, reply
        assert [tool["name"] for tool in reply.json()["result"]["tools"]] == expected
        response = response_of(echo.stack, reply.decision_id)
        assert (response["grant_id"], response["tools_removed"]) == (grant, removed)
        assert_client_sees_no_internals(reply)
    assert_no_forged_id_anywhere(echo.stack)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forged_decision_does_not_let_a_denied_call_through(echo: Echo, variant: str) -> None:
    headers, body = call(rid=3)
    before = echo.upstream.counts()
    reply = send(echo.stack, variant, bearer("closed") + headers + forged(variant), body)
    assert reply.status == 200, reply
    is_error, text = tool_text(reply)
    assert is_error and text.startswith("[POLICY DENIED] ") and "(default deny)" in text
    assert reply.json()["id"] == 3
    event = decision_of(echo.stack, reply.decision_id)
    assert (event["decision"], event["grant_id"]) == ("deny", "closed")
    assert echo.upstream.counts() == before
    assert_client_sees_no_internals(reply)
    assert_no_forged_id_anywhere(echo.stack)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forged_context_does_not_change_a_give_back(echo: Echo, variant: str) -> None:
    """A call the upstream refuses (403) gives its quota back under the sidecar's decision; a
    forged context (no reservation, another grant) would keep it, or release another."""
    grant = f"quota-{variant}"
    wait_for_fresh_window(25)
    headers, body = call(rid=4)
    refused = send(
        echo.stack,
        variant,
        bearer(grant) + headers + forged(variant) + [(STATUS_HEADER, "403")],
        body,
    )
    assert (refused.status, refused.body) == (403, UPSTREAM_BODY % 403)
    response = response_of(echo.stack, refused.decision_id)
    assert (response["grant_id"], response["status"]) == (grant, 403)
    assert (response["give_back"], response["reason"], response["released"]) == (
        True,
        "refused",
        True,
    )
    # both units of the limit are still there, and no more
    _, runs_before = echo.upstream.counts()
    for rid in (5, 6):
        headers, body = call(rid=rid)
        assert tool_text(send(echo.stack, variant, bearer(grant) + headers, body)) == (
            False,
            f"{RUN} ran",
        )
    headers, body = call(rid=7)
    is_error, text = tool_text(send(echo.stack, variant, bearer(grant) + headers, body))
    assert is_error and f"(rule: {LIMIT_RULE})" in text, text
    assert echo.upstream.counts()[1] == runs_before + 2
    assert_no_forged_id_anywhere(echo.stack)


def test_underscore_names_are_refused_before_the_check(echo: Echo) -> None:
    """`x_mcp_grant` is not `x-mcp-grant` to Envoy, but is to a CGI-style upstream."""
    for name in ("x_mcp_grant", "x_mcp_authz_peer_uri_san", "X_MCP_AUTHZ_JWT_AUTHN"):
        headers, body = call()
        before, decisions = echo.upstream.counts(), len(audit_events(echo.stack))
        reply = send_h1(echo.stack, bearer("viewer") + headers + [(name, "viewer")], body)
        assert reply.status == 400, reply
        assert reply.decision_id is None
        assert echo.upstream.counts() == before
        assert len(audit_events(echo.stack)) == decisions


def h2_upper_case(stack: Stack, headers: list[tuple[str, str]], body: bytes) -> int | None:
    """POST /mcp over h2c with header names sent as given (not lower-cased): the response
    status, or None when Envoy refused the stream or the connection instead."""
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    pseudo = [(":method", "POST"), (":path", "/mcp"), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, [*pseudo, *headers, ("content-length", str(len(body)))])
    conn.send_data(1, body, end_stream=True)
    status: int | None = None
    with socket.create_connection((LOOPBACK, stack.ports.envoy), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return status
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return status
                if isinstance(event, h2.events.ConnectionTerminated):
                    return status
            sock.sendall(conn.data_to_send())


def test_upper_case_names_over_h2_are_refused_before_the_check(echo: Echo) -> None:
    """HTTP/2 names are lower case; an upper-case one makes the request malformed, so it
    never reaches the prefix match of the header filter, the sidecar or the upstream."""
    headers, body = call()
    before, decisions = echo.upstream.counts(), len(audit_events(echo.stack))
    upper = [(name.upper(), value) for name, value, _ in FORGED]
    assert h2_upper_case(echo.stack, headers + upper, body) in (None, 400)
    assert echo.upstream.counts() == before
    assert len(audit_events(echo.stack)) == decisions


def test_methods_the_endpoint_does_not_serve_are_denied_before_the_upstream(echo: Echo) -> None:
    """HEAD (whose check request is a HEAD too: its answer has no body) and OPTIONS."""
    before = echo.upstream.counts()
    for method, status in (("HEAD", 405), ("OPTIONS", 405), ("PUT", 405)):
        conn = http.client.HTTPConnection(LOOPBACK, echo.stack.ports.envoy, timeout=15)
        try:
            conn.request(method, "/mcp", headers={"authorization": f"Bearer {token('viewer')}"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == status, (method, response.status, body)
            assert response.getheader("allow") == "GET, POST, DELETE"
            assert response.getheader(DECISION_HEADER) is not None
            assert (body == b"") is (method == "HEAD")
        finally:
            conn.close()
    assert echo.upstream.counts() == before


# -- the local-reply mappers ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["h1", "h2c"])
@pytest.mark.parametrize("status", [299, 298, 403, 500, 503])
def test_upstream_statuses_reach_the_client_as_sent(echo: Echo, status: int, protocol: str) -> None:
    headers, body = call()
    reply = send(
        echo.stack, protocol, bearer("viewer") + headers + [(STATUS_HEADER, str(status))], body
    )
    assert (reply.status, reply.body) == (status, UPSTREAM_BODY % status)
    assert reply.header("content-type") == "application/json"
    response = response_of(echo.stack, reply.decision_id)
    assert (response["status"], response["origin"]) == (status, "via_upstream")


def test_a_denied_call_is_a_200_tool_result(echo: Echo) -> None:
    """The sidecar's 299 (over HTTP) reaches the client as the 200 it stands for."""
    headers, body = call(rid=8)
    reply = send_h1(echo.stack, bearer("closed") + headers, body)
    assert reply.status == 200, reply
    assert reply.header("content-type") == "application/json"
    assert reply.json()["id"] == 8 and tool_text(reply)[0] is True


def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_the_sidecars_own_503_reaches_the_client_as_sent(echo: Echo) -> None:
    """Redis is down: a request with an id in a session cannot be registered as in flight,
    and the sidecar denies it with 503 and Retry-After (298 on the wire over HTTP)."""
    headers, body = listing(rid=9)
    request = bearer("viewer") + headers + [("mcp-session-id", "session-298")]
    echo.redis.kill()
    try:
        reply = send_h1(echo.stack, request, body)
        assert reply.status == 503, reply
        assert reply.header("retry-after") == "1"
        assert reply.decision_id is not None
        error = reply.json()["error"]
        assert reply.json()["id"] == 9
        assert "request id state is unavailable" in error["message"]
        assert error["message"].startswith("[POLICY DENIED] ")
    finally:
        echo.redis.start()

    def served() -> bool:
        return send_h1(echo.stack, request, body).status == 200

    wait_until(served, "the sidecar to reach Redis again")


SIDECAR_UNAVAILABLE = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"[POLICY DENIED] the policy'
    b' sidecar is unavailable; the call was not run. Retry later."}}'
)


def assert_every_request_is_a_503(echo: Echo) -> None:
    """With no answer from the sidecar, a call it would deny (299), one it would allow and
    one without a token are each Envoy's 503 denial (status_on_error); nothing runs."""
    before = echo.upstream.counts()
    for grant in ("closed", "viewer", None):
        headers, body = call(rid=10)
        reply = send_h1(echo.stack, (bearer(grant) if grant else []) + headers, body)
        assert (reply.status, reply.body) == (503, SIDECAR_UNAVAILABLE), reply
        assert reply.decision_id is None
    assert echo.upstream.counts() == before


def test_sidecar_frozen_or_down_is_a_503_never_a_200(echo: Echo) -> None:
    faults.pause(echo.stack, "sidecar")
    try:
        assert_every_request_is_a_503(echo)
    finally:
        faults.resume(echo.stack, "sidecar")
    faults.kill(echo.stack, "sidecar")
    try:
        assert_every_request_is_a_503(echo)
    finally:
        faults.restart(echo.stack, "sidecar")
    headers, body = call(rid=11)

    def decided() -> bool:
        return send_h1(echo.stack, bearer("closed") + headers, body).status == 200

    wait_until(decided, "Envoy to reach the restarted sidecar")


def test_envoys_own_503_is_left_as_it_is(echo: Echo) -> None:
    """The upstream is down: Envoy's 503 for an allowed call keeps its status and its body;
    a call the sidecar denies is still its 200 tool result."""
    echo.upstream.stop()
    try:
        headers, body = call(rid=12)
        reply = send_h1(echo.stack, bearer("viewer") + headers, body)
        assert reply.status == 503, reply
        assert b"the call was not delivered" in reply.body
        assert reply.decision_id is not None  # the sidecar allowed it; routing failed
        denied = send_h1(echo.stack, bearer("closed") + headers, body)
        assert denied.status == 200 and tool_text(denied)[0] is True
    finally:
        echo.upstream.start(echo.stack.ports.upstream)
    headers, body = call(rid=13)

    def runs() -> bool:
        return send_h1(echo.stack, bearer("viewer") + headers, body).status == 200

    wait_until(runs, "Envoy to reach the restarted upstream")
