"""Istio's ext_authz over HTTP, run: the filter istiod builds from the provider `mcp-authz-http`
(deploy/istio/install/istio-operator.yaml) and the CUSTOM policy deploy/istio/http/
imagegen-mcp-authz.yaml, in the real Envoy, in front of the real sidecar (`--http-authz`), the
real MCP server and the offline Gemini endpoint.

No istiod or cluster runs here: tests/deploy/istiod.py builds the MCP workload's inbound
listener as istiod does (an RBAC filter that marks requests for the provider, its ext_authz
filter, a catch-all route, no local_reply_config), with or without the optional EnvoyFilters
(deploy/istio/http/optional/authz-http-envoyfilter.yaml and deploy/istio/optional/
ext-proc-envoyfilter.yaml) patched in. Each test runs on both: `provider` and `envoyfilters`.

What must hold under Istio as in the standalone HTTP layout: credentials decide, a forged
identity header never reaches the sidecar, the upstream sees the sidecar's grant and no
Authorization, denials are readable to a real MCP client. What differs, as docs/deploy.md
says: without the EnvoyFilters a denied tools/call reaches the client as HTTP 299 (which the
MCP SDK client reads as the tool result it is) and hidden tools stay listed.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from authz.devstack import faults
from authz.devstack.envoy_config import AUTHZ_CLUSTER, HTTP_AUTHZ_CLUSTER, EnvoyConfig
from authz.devstack.stack import LOOPBACK, Stack
from authz.envoy.denial import DECISION_HEADER
from authz.envoy.http_authz import CHECK_PREFIX, GRANT_HEADER, JWT_HEADER, PEER_HEADER
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from tests.deploy import istiod
from tests.deploy.support import ISTIO, load_docs
from tests.e2e.conftest import executed, token_for, write_config
from tests.e2e.corpus import DENIED, GEMINI, REPLICATE, call_body, mcp_headers, rpc_body

pytestmark = pytest.mark.e2e

OPERATOR = ISTIO / "install" / "istio-operator.yaml"
HTTP_POLICY = ISTIO / "http" / "imagegen-mcp-authz.yaml"
HTTP_ENVOY_FILTER = ISTIO / "http" / "optional" / "authz-http-envoyfilter.yaml"
EXT_PROC_ENVOY_FILTER = ISTIO / "optional" / "ext-proc-envoyfilter.yaml"
HTTP_PROVIDER = "mcp-authz-http"
GRPC_PROVIDER = "mcp-authz"
INBOUND_PORT = 8000
"""The MCP workload's port, which the EnvoyFilters match (`portNumber`)."""

ISSUER = "https://idp.example.org"
WORKLOAD = "spiffe://cluster.local/ns/mcp-authz/sa/trusted"
FORGED = {
    # what a client would send to pass for identities Envoy establishes
    JWT_HEADER: json.dumps({JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice", "exp": 2e9}}),
    PEER_HEADER: WORKLOAD,
}


def provider(name: str) -> dict[str, Any]:
    (doc,) = load_docs(OPERATOR)
    (entry,) = [p for p in doc["spec"]["meshConfig"]["extensionProviders"] if p["name"] == name]
    found: dict[str, Any] = entry.get("envoyExtAuthzHttp") or entry["envoyExtAuthzGrpc"]
    return found


def istio_inbound(envoy_filters: list[dict[str, Any]], *, grpc: bool = False) -> Any:
    """The Stack's `envoy_transform`: its MCP listener as Istio's inbound listener, with the
    HTTP provider (or, `grpc`, the gRPC one) and `envoy_filters`."""
    name = GRPC_PROVIDER if grpc else HTTP_PROVIDER
    (policy,) = load_docs(HTTP_POLICY)
    policy["spec"]["provider"] = {"name": name}
    chosen = provider(name)
    ports = {AUTHZ_CLUSTER: provider(GRPC_PROVIDER)["port"]}
    ports[HTTP_AUTHZ_CLUSTER] = provider(HTTP_PROVIDER)["port"]

    def transform(cfg: EnvoyConfig) -> None:
        istiod.inbound_listener(
            cfg,
            istiod.custom_filters(name, chosen, policy, grpc=grpc),
            envoy_filters=envoy_filters,
            service=chosen["service"],
            ports=ports,
            inbound_port=INBOUND_PORT,
        )

    return transform


def write_mesh_config(root: Path) -> Path:
    """The end-to-end grants and policies, plus a JWT and a SPIFFE identity that the forged
    headers name (granted the open policy: a forgery that worked would be allowed)."""
    write_config(root)
    grants = json.loads((root / "grants.json").read_text())
    grants["grants"] += [
        {"id": "jwt-alice", "jwt": {"issuer": ISSUER, "subject": "alice"}, "policy": "open"},
        {"id": "trusted-workload", "spiffe_id": WORKLOAD, "policy": "open"},
    ]
    (root / "grants.json").write_text(json.dumps(grants, indent=2))
    return root


class _FailingStack(Stack):
    """A stack whose Envoy is expected to refuse everything: ready once Envoy answers the
    probe with the ext_authz error status (503) instead of the sidecar's 401."""

    def wait_path_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.post_raw(b"{}", headers={"content-type": "application/json"})[0] != 503:
            self._check_alive()
            assert time.monotonic() < deadline, "Envoy never refused with 503"
            time.sleep(0.1)


def start_stack(
    base: Path, transform: Any, transport: str = "http", kind: type[Stack] = Stack
) -> Stack:
    record = base / "executed.jsonl"
    record.touch()
    return kind(
        config_dir=write_mesh_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        reload_interval=0.2,
        transport=transport,
        envoy_transform=transform,
    ).start()


@pytest.fixture(scope="module", params=["provider", "envoyfilters"])
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    filters = []
    if request.param == "envoyfilters":
        filters = [*load_docs(HTTP_ENVOY_FILTER), *load_docs(EXT_PROC_ENVOY_FILTER)]
    the_stack = start_stack(tmp_path_factory.mktemp("istio-http"), istio_inbound(filters))
    try:
        yield the_stack
    finally:
        the_stack.stop()


def with_envoy_filters(stack: Stack) -> bool:
    config = json.loads(stack.envoy_config_path().read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return "local_reply_config" in hcm["typed_config"]


def post(stack: Stack, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    status, got, raw = stack.post_raw(body, headers=headers)
    return status, got, json.loads(raw) if raw else None


def headers_of(method: str, name: str | None = None) -> dict[str, str]:
    """The headers of a stateless MCP POST (media types, version, mirror headers)."""
    return dict(header for header in mcp_headers(method, name) if isinstance(header, tuple))


def bearer(grant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(grant)}"}


@asynccontextmanager
async def client(stack: Stack, headers: dict[str, str]) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(stack.mcp_url, http_client=http)
        async with Client(transport, mode="legacy") as session:
            yield session


def text(result: CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if isinstance(part, TextContent))


# -- identity -------------------------------------------------------------------------------


def test_no_credential_is_a_readable_401(stack: Stack) -> None:
    status, headers, body = post(stack, rpc_body("tools/list"), headers_of("tools/list"))
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers[DECISION_HEADER]  # headersToDownstreamOnDeny
    assert body["error"]["message"].startswith(DENIED)


def test_forged_identity_headers_never_reach_the_sidecar(stack: Stack) -> None:
    """A client sends the headers Envoy would add for a verified JWT and a mesh certificate:
    the provider does not forward them (they are not in includeRequestHeadersInCheck), so the
    request has no credential. Control: the sidecar itself honours them, so a check that
    carried them would have been allowed."""
    before = len(executed(stack))
    status, _, body = post(stack, call_body(GEMINI), {**headers_of("tools/call", GEMINI), **FORGED})
    assert status == 401, body
    assert len(executed(stack)) == before

    check = urllib.request.Request(
        f"http://{LOOPBACK}:{stack.ports.authz_http}{CHECK_PREFIX}/mcp",
        data=call_body(GEMINI),
        method="POST",
        headers={**headers_of("tools/call", GEMINI), **FORGED},
    )
    with urllib.request.urlopen(check, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers[GRANT_HEADER] == "jwt-alice"


# -- allowed calls --------------------------------------------------------------------------


async def test_allowed_call_runs_under_the_sidecars_grant(stack: Stack) -> None:
    """The upstream runs the call with the grant the sidecar named (headersToUpstreamOnAllow
    overwrites the one the client forged) and without the client's Authorization."""
    before = len(executed(stack))
    async with client(stack, {**bearer("seed-a"), GRANT_HEADER: "open"}) as session:
        result = await session.call_tool(GEMINI, {"prompt": "a fox in the mesh"})
    assert not result.is_error, text(result)
    (ran,) = executed(stack)[before:]
    assert ran["tool"] == GEMINI
    assert ran["grant"] == "seed-a"
    assert ran["authorization_present"] is False


def test_allowed_answer_carries_the_decision_id(stack: Stack) -> None:
    status, headers, _ = post(
        stack, rpc_body("tools/list"), {**headers_of("tools/list"), **bearer("open")}
    )
    assert status == 200
    assert headers[DECISION_HEADER]  # headersToDownstreamOnAllow


# -- denials --------------------------------------------------------------------------------


def test_denied_call_is_a_tool_result_on_the_wire(stack: Stack) -> None:
    """A denied tools/call is the sidecar's `isError` result. Without the EnvoyFilter it
    arrives with the sidecar's wire status 299; with it, with 200."""
    before = len(executed(stack))
    status, headers, body = post(
        stack,
        call_body(GEMINI, {"prompt": "something forbidden"}),
        {**headers_of("tools/call", GEMINI), **bearer("cond")},
    )
    assert status == (200 if with_envoy_filters(stack) else 299)
    assert headers["content-type"].startswith("application/json")
    assert body["result"]["isError"] is True
    assert body["result"]["content"][0]["text"].startswith(DENIED)
    assert len(executed(stack)) == before


async def test_denied_call_reaches_an_mcp_client_as_a_tool_result(stack: Stack) -> None:
    """The MCP SDK client takes the 299 as the success it is (2xx) and reads the result."""
    before = len(executed(stack))
    async with client(stack, bearer("cond")) as session:
        result = await session.call_tool(GEMINI, {"prompt": "something forbidden"})
        ok = await session.call_tool(
            GEMINI, {"prompt": "a cat", "model": "gemini-2.5-flash-image-preview"}
        )
    assert result.is_error and text(result).startswith(DENIED), text(result)
    assert not ok.is_error, text(ok)
    assert [entry["tool"] for entry in executed(stack)[before:]] == [GEMINI]


def test_headers_the_provider_forwards_are_judged(stack: Stack) -> None:
    """A method override header and a mirror header that disagrees with the body reach the
    sidecar through includeRequestHeadersInCheck and are refused, as in the standalone
    layout."""
    before = len(executed(stack))
    status, _, _ = post(
        stack,
        call_body(GEMINI),
        {**headers_of("tools/call", GEMINI), **bearer("open"), "X-HTTP-Method-Override": "GET"},
    )
    assert status == 400
    status, _, body = post(
        stack, call_body(GEMINI), {**headers_of("tools/call", "other.tool"), **bearer("open")}
    )
    assert status == 400, body
    assert "Mcp-Name" in json.dumps(body)
    assert len(executed(stack)) == before


# -- the response phase ---------------------------------------------------------------------


async def test_hidden_tools_are_filtered_only_with_the_envoy_filters(stack: Stack) -> None:
    """With both EnvoyFilters, ext_proc reads the decision from the metadata the ext_authz
    patch adds and filters tools/list; with the provider alone there is no response phase
    (calls to a hidden tool are still denied)."""
    async with client(stack, bearer("open")) as session:
        listed = {tool.name for tool in (await session.list_tools()).tools}
        hidden = await session.call_tool(REPLICATE, {"prompt": "a cat"})
    assert GEMINI in listed
    assert (REPLICATE in listed) is not with_envoy_filters(stack)
    assert hidden.is_error and "(hidden)" in text(hidden)


# -- a misconfiguration, to know what it does -----------------------------------------------


@pytest.mark.processes
def test_http_envoy_filter_with_the_grpc_provider_fails_closed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The HTTP EnvoyFilter applied with the gRPC provider leaves ext_authz no server to ask
    (tests/deploy/test_istio.py): every request then fails closed with the provider's
    statusOnError, and nothing reaches the MCP server. Control: the gRPC provider alone, the
    same way, runs the call."""
    control = start_stack(
        tmp_path_factory.mktemp("istio-grpc"), istio_inbound([], grpc=True), transport="grpc"
    )
    try:
        status, _, raw = control.post_raw(
            call_body(GEMINI), {**headers_of("tools/call", GEMINI), **bearer("open")}
        )
        assert status == 200, raw
        assert [entry["grant"] for entry in executed(control)] == ["open"]
    finally:
        control.stop()

    grpc_stack = start_stack(
        tmp_path_factory.mktemp("istio-mixed"),
        istio_inbound(load_docs(HTTP_ENVOY_FILTER), grpc=True),
        transport="grpc",
        kind=_FailingStack,
    )
    try:
        for grant in ("open", "seed-a"):
            status, _, _ = grpc_stack.post_raw(
                call_body(GEMINI), {**headers_of("tools/call", GEMINI), **bearer(grant)}
            )
            assert status == int(provider(GRPC_PROVIDER)["statusOnError"]) == 503
        stats = faults.envoy_stats(grpc_stack, r"ext_authz\.(error|ok|denied)$")
        assert stats and all(v == 0 for k, v in stats.items() if not k.endswith(".error"))
        assert sum(v for k, v in stats.items() if k.endswith(".error")) >= 2
        assert executed(grpc_stack) == []
    finally:
        grpc_stack.stop()
