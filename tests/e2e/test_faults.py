"""Faults, reloads and load on the real processes: nothing denied ever reaches the upstream.

Every case checks the upstream's own execution record (`executed`) for the grant `guard`,
whose policies always deny `image.generate.replicate`, and the exact result the agent gets
(status and body). `image.generate.openai` is the cheap allowed tool: the upstream runs it
(records it) and answers `isError` for lack of an API key, without generating an image.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from authz._pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz.config.grants import hash_token
from authz.devstack import faults
from authz.devstack.stack import Stack
from tests.e2e.conftest import audit_events, executed, mcp_client

pytestmark = pytest.mark.e2e

OPENAI = "image.generate.openai"  # allowed for guard; cheap (no key: the upstream says so)
REPLICATE = "image.generate.replicate"  # denied for guard by every policy version below
DENIED = "[POLICY DENIED] "

GUARD_V1 = {"version": "1", "default": "deny", "tools": {OPENAI: {}}}
GUARD_VARIANTS: list[dict[str, Any]] = [
    GUARD_V1,
    {"version": "1", "default": "allow", "hide": [REPLICATE]},
    {
        "version": "1",
        "default": "allow",
        "tools": {REPLICATE: {"deny_if": [{"conditions": [], "on_deny": "never replicate"}]}},
    },
    {
        "version": "1",
        "default": "allow",
        "tools": {
            REPLICATE: {
                "require": [{"conditions": [{"path": "args.never", "op": "eq", "value": "x-42"}]}]
            }
        },
    },
]
"""Every version of guard's policy: all allow OPENAI and deny REPLICATE, by different rules."""

GUARD_PAUSED = {
    "version": "1",
    "default": "deny",
    "tools": {OPENAI: {"deny_if": [{"conditions": [], "on_deny": "openai is paused"}]}},
}
"""A valid fix that is visibly different from GUARD_V1 (it denies OPENAI too)."""

FLIP_ON: list[dict[str, Any]] = [
    {"version": "1", "default": "deny", "tools": {OPENAI: {}}},
    {"version": "1", "default": "allow", "hide": [REPLICATE]},
]
FLIP_OFF: list[dict[str, Any]] = [
    {"version": "1", "default": "deny"},
    {
        "version": "1",
        "default": "allow",
        "tools": {OPENAI: {"deny_if": [{"conditions": [], "on_deny": "flipped off"}]}},
    },
]

CLOSED = {
    "version": "1",
    "default": "deny",
    "tools": {OPENAI: {}},
    "methods": {"default": "deny", "allow": ["initialize"]},
}
"""Denies tools/list (a JSON-RPC error, 403) through the `methods` extension."""

QUOTA = {
    "version": "1",
    "default": "deny",
    "tools": {OPENAI: {"limits": [{"counter": "c", "window": "day", "max": 2, "scope": "grant"}]}},
}

POLICIES: dict[str, dict[str, Any]] = {
    "guard": GUARD_V1,
    "flip": FLIP_ON[0],
    "quota": QUOTA,
    "closed": CLOSED,
}
GRANTS = {"guard": "guard", "flip": "flip", "quota": "quota", "reset": "quota", "closed": "closed"}

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def token(grant: str) -> str:
    return f"faults-token-{grant}"


def policy_bytes(doc: dict[str, Any], indent: int | None = 2) -> bytes:
    return json.dumps(doc, indent=indent).encode()


def grants_bytes(extra: tuple[str, ...] = ()) -> bytes:
    entries = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token(gid)), "policy": policy}
        for gid, policy in [*GRANTS.items(), *((e, "guard") for e in extra)]
    ]
    return json.dumps({"version": "1", "grants": entries}, indent=2).encode()


def write_faults_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_bytes(policy_bytes(doc))
    (root / "grants.json").write_bytes(grants_bytes())
    return root


def replace_atomically(path: Path, data: bytes) -> None:
    """Write a hidden temp file next to `path` and rename it over `path` (as editors do)."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("faults")
    record = base / "executed.jsonl"
    record.touch()
    the_stack = Stack(
        config_dir=write_faults_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        reload_interval=0.2,
        transport=transport,
    )
    with the_stack:
        yield the_stack


@pytest.fixture(autouse=True)
def healthy(stack: Stack) -> Iterator[None]:
    """Each case starts and leaves the stack as the module built it: all up, config v1."""
    stack.wait_path_ready()
    yield
    for name in ("sidecar", "upstream"):
        proc = stack.procs.get(name)
        if proc is None or proc.popen.poll() is not None:
            faults.restart(stack, name)
    restore_config(stack)


def restore_config(stack: Stack) -> None:
    root = stack.config_dir
    for path in (root / "policies").iterdir():
        if path.stem not in POLICIES:
            path.unlink()
    for name, doc in POLICIES.items():
        path = root / "policies" / f"{name}.json"
        if path.read_bytes() != policy_bytes(doc):
            replace_atomically(path, policy_bytes(doc))
    grants = root / "grants.json"
    if not grants.exists() or grants.read_bytes() != grants_bytes():
        replace_atomically(grants, grants_bytes())
    wait_until(lambda: ready_with(stack, "guard", policy_bytes(GUARD_V1), error=None))


# -- helpers ----------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def config_state(stack: Stack) -> dict[str, Any]:
    config: dict[str, Any] = stack.readiness()["config"]  # type: ignore[assignment]
    return config


def polled_after(stack: Stack, moment: float) -> float:
    """Wait until the sidecar ends a poll of a rejected directory after `moment` (/readyz
    `last_error_at`, set by every such poll); its time. A poll that ends after the end of
    another began after it: `polled_after(stack, polled_after(stack, t))` saw the files as
    they were at `t`."""
    found: list[float] = []

    def ended() -> bool:
        at = config_state(stack)["last_error_at"]
        found[:] = [at] if at is not None and at > moment else []
        return bool(found)

    wait_until(ended, what="a poll of the configuration directory")
    return found[0]


def ready_with(stack: Stack, policy: str, raw: bytes, error: str | None) -> bool:
    """/readyz shows `raw` as the loaded `policy` and `error` (None, or a substring)."""
    state = config_state(stack)
    if state["policies"].get(policy) != hashlib.sha256(raw).hexdigest():
        return False
    if error is None:
        return state["last_error"] is None
    return error in (state["last_error"] or "")


Reply = tuple[int, dict[str, str], bytes]


def call(stack: Stack, grant: str, tool: str, rid: int = 1) -> tuple[int, dict[str, str], bytes]:
    """A stateless-era `tools/call` as raw HTTP through Envoy."""
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"prompt": "a fault"}, "_meta": META},
    }
    return stack.post_raw(
        json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token(grant)}",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": tool,
        },
    )


def list_tools(stack: Stack, grant: str) -> tuple[int, dict[str, str], bytes]:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": META}}
    return stack.post_raw(
        json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token(grant)}",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/list",
        },
    )


def outcome(status: int, body: bytes) -> tuple[str, str]:
    """("allowed" | "denied" | "http-<status>", text) for a `tools/call` reply."""
    if status != 200:
        return f"http-{status}", body.decode(errors="replace")
    result = json.loads(body)["result"]
    text = "\n".join(part.get("text", "") for part in result["content"])
    return ("denied" if text.startswith(DENIED) else "allowed"), text


def assert_allowed(reply: tuple[int, dict[str, str], bytes]) -> None:
    kind, text = outcome(reply[0], reply[2])
    assert kind == "allowed", (reply[0], text)
    assert text.startswith("OPENAI_API_KEY is not set"), text  # the upstream ran it


def assert_denied(reply: tuple[int, dict[str, str], bytes], rule: str) -> None:
    kind, text = outcome(reply[0], reply[2])
    assert kind == "denied", (reply[0], text)
    assert f"(rule: {rule})" in text, text


def runs(stack: Stack, since: int, grant: str | None = None) -> list[tuple[str, str]]:
    """(grant, tool) of each upstream execution after the first `since` records."""
    return [
        (e["grant"], e["tool"])
        for e in executed(stack)[since:]
        if grant is None or e["grant"] == grant
    ]


SIDECAR_UNAVAILABLE = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"[POLICY DENIED] the policy'
    b' sidecar is unavailable; the call was not run. Retry later."}}'
)
"""Envoy's reply when the sidecar is down, too slow or erroring (deploy/envoy.yaml mapper)."""


def is_sidecar_unavailable(reply: tuple[int, dict[str, str], bytes]) -> bool:
    return (reply[0], reply[2]) == (503, SIDECAR_UNAVAILABLE)


ANSWER_WITHHELD = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"the policy sidecar could not '
    b'check the answer of the MCP server, so it was withheld. Retry later."}}'
)
"""deploy/envoy.yaml's reply when the response phase fails on the route that fails closed."""


def is_answer_withheld(reply: tuple[int, dict[str, str], bytes]) -> bool:
    return (reply[0], reply[2]) == (500, ANSWER_WITHHELD)


def assert_sidecar_unavailable(reply: tuple[int, dict[str, str], bytes]) -> None:
    """503, a JSON-RPC error the agent can read, Retry-After, and no decision of the sidecar."""
    status, headers, body = reply
    assert (status, body) == (503, SIDECAR_UNAVAILABLE), reply
    assert headers["content-type"] == "application/json"
    assert headers["retry-after"] == "2"
    assert "x-mcp-authz-decision-id" not in headers


AUTHZ_ERRORS = "http.mcp_ingress.ext_authz.error"
UPSTREAM_CONNECT_FAIL = "cluster.imagegen_upstream.upstream_cx_connect_fail"


def envoy_counter(stack: Stack, name: str) -> int:
    """One of Envoy's counters (the access log is flushed too late to assert on)."""
    return faults.envoy_stats(stack, f"^{name.replace('.', '[.]')}$").get(name, 0)


# -- the sidecar dies, hangs, comes back -------------------------------------------------


def test_sidecar_killed_fails_closed_and_recovers_without_envoy_restart(stack: Stack) -> None:
    envoy_pid = faults.pid(stack, "envoy")
    assert_allowed(call(stack, "guard", OPENAI))
    for _ in range(2):
        assert_allowed(call(stack, "reset", OPENAI))
    assert_denied(call(stack, "reset", OPENAI), f"/tools/{OPENAI}/limits/c")
    since = len(executed(stack))

    errors = envoy_counter(stack, AUTHZ_ERRORS)
    assert faults.kill(stack, "sidecar") == -9
    replies = [call(stack, "guard", tool, rid) for rid, tool in enumerate([OPENAI, REPLICATE] * 3)]
    for reply in replies:
        assert_sidecar_unavailable(reply)  # Envoy's status_on_error, with a JSON-RPC body
    # Envoy counted each as an ext_authz error (access log: UAEX, ext_authz_error)
    assert envoy_counter(stack, AUTHZ_ERRORS) - errors == len(replies)
    assert runs(stack, since) == []

    faults.restart(stack, "sidecar")
    assert faults.pid(stack, "envoy") == envoy_pid
    assert_allowed(call(stack, "guard", OPENAI))
    assert_denied(call(stack, "guard", REPLICATE), "(default deny)")
    # counters live in the sidecar's memory: the restarted process starts from zero
    assert_allowed(call(stack, "reset", OPENAI))
    assert runs(stack, since) == [("guard", OPENAI), ("reset", OPENAI)]


def test_sidecar_killed_and_restarted_mid_traffic(stack: Stack) -> None:
    """Checks in flight when the sidecar dies fail closed; none turns into an allow."""
    since = len(executed(stack))
    deadline = time.monotonic() + 2.0
    replies: list[tuple[str, str]] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        for i in range(400):
            if time.monotonic() > deadline:
                return
            tool = (OPENAI, REPLICATE)[(i + worker) % 2]
            reply = call(stack, "guard", tool, rid=i)
            if is_sidecar_unavailable(reply):
                kind = "503"
            elif is_answer_withheld(reply):
                kind = "withheld"
            else:
                kind = outcome(reply[0], reply[2])[0]
            with lock:
                replies.append((tool, kind))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.4)
    faults.kill(stack, "sidecar")
    time.sleep(0.4)
    faults.restart(stack, "sidecar")
    for thread in threads:
        thread.join(30)

    by = Counter(replies)
    # The guard grant's policy (default: deny, no methods section) has its answers filtered,
    # so an allowed call whose response phase meets the dead sidecar has its answer withheld
    # (the route that fails closed): it ran, and the agent reads an error, never an
    # unfiltered answer.
    assert set(by) <= {
        (OPENAI, "allowed"),
        (OPENAI, "withheld"),
        (REPLICATE, "denied"),
        (OPENAI, "503"),
        (REPLICATE, "503"),
    }
    assert by[(OPENAI, "503")] + by[(REPLICATE, "503")] > 0, by  # the outage was seen
    ran = by[(OPENAI, "allowed")] + by[(OPENAI, "withheld")]
    assert Counter(runs(stack, since)) == Counter({("guard", OPENAI): ran})


def authz_timeout(stack: Stack) -> float:
    """The ext_authz timeout of the running Envoy, in seconds (deploy/envoy.yaml and
    deploy/envoy-http.yaml: 1 s)."""
    config = json.loads(stack.envoy_config_path().read_text())
    timeouts = [
        # over gRPC the timeout is the service's, over HTTP the server URI's
        (
            http_filter["typed_config"].get("grpc_service")
            or http_filter["typed_config"]["http_service"]["server_uri"]
        )["timeout"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for network_filter in chain["filters"]
        for http_filter in network_filter.get("typed_config", {}).get("http_filters", [])
        if http_filter["name"] == "envoy.filters.http.ext_authz"
    ]
    assert len(set(timeouts)) == 1, timeouts
    return float(timeouts[0].removesuffix("s"))


async def h2_call(client: httpx.AsyncClient, stack: Stack, grant: str, tool: str) -> Reply:
    """`call`, as one stream of the caller's HTTP/2 connection to Envoy."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"prompt": "a fault"}, "_meta": META},
    }
    response = await client.post(
        stack.mcp_url,
        content=json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token(grant)}",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": tool,
        },
    )
    assert response.http_version == "HTTP/2"
    return (
        response.status_code,
        {k.lower(): v for k, v in response.headers.items()},
        response.content,
    )


async def test_sidecar_frozen_past_the_timeout_fails_closed_then_recovers(stack: Stack) -> None:
    since = len(executed(stack))
    errors = envoy_counter(stack, AUTHZ_ERRORS)
    decisions = len(audit_events(stack))
    timeout = authz_timeout(stack)
    # One HTTP/2 connection to Envoy is served by one Envoy worker, whose one connection to
    # the sidecar carries the timed-out checks and, behind them, the checks after the thaw.
    async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as client:

        async def timed(tool: str) -> tuple[float, Reply]:
            started = time.monotonic()
            reply = await h2_call(client, stack, "guard", tool)
            return time.monotonic() - started, reply

        await h2_call(client, stack, "guard", REPLICATE)  # the connections are up
        decisions += 1
        faults.pause(stack, "sidecar")
        try:
            results = await asyncio.gather(*(timed(t) for t in [OPENAI, REPLICATE] * 2))
        finally:
            faults.resume(stack, "sidecar")
        for elapsed, reply in results:
            assert_sidecar_unavailable(reply)
            # Envoy's timeout answered: not sooner, and not only once the sidecar thawed
            # (generous: a loaded 2-core box may be slow to run this test's own code)
            assert timeout - 0.1 <= elapsed < timeout + 5.0, elapsed
        assert envoy_counter(stack, AUTHZ_ERRORS) - errors == len(results)

        assert_allowed(await h2_call(client, stack, "guard", OPENAI))
        assert_denied(await h2_call(client, stack, "guard", REPLICATE), "(default deny)")
    assert runs(stack, since) == [("guard", OPENAI)]
    # Envoy reset the timed-out Check streams, so the thawed sidecar never decided them (no
    # quota taken for them either): only the two calls after SIGCONT were decided. Their
    # decisions are logged before they are answered, and the sidecar read the timed-out
    # streams before them on the same connection, so a decision of those would be logged
    # by now.
    assert len(audit_events(stack)) - decisions == 2


# -- Envoy's rewriting of its own errors never touches a sidecar denial -------------------

DECISION_HEADER = "x-mcp-authz-decision-id"
ENVOY_ADDS = {"content-length", "date", "server", "x-request-id", "connection"}
"""Response headers Envoy adds to every local reply (connection: close after some 4xx)."""
LIST_BODY = json.dumps(
    {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": META}}
).encode()
CALL_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": REPLICATE, "arguments": {"prompt": "a fault"}, "_meta": META},
    }
).encode()


def rpc_headers(grant: str | None, method: str = "tools/list", **extra: str) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
        **extra,
    }
    if grant is not None:
        headers["authorization"] = f"Bearer {token(grant)}"
    return headers


SIDECAR_DENIALS: dict[str, tuple[str, str, dict[str, str], bytes, int]] = {
    # id: (HTTP method, path, headers, body, status the sidecar renders)
    "no-token": ("POST", "/mcp", rpc_headers(None), LIST_BODY, 401),
    "unknown-token": (
        "POST",
        "/mcp",
        rpc_headers(None, authorization="Bearer not-a-token"),
        LIST_BODY,
        401,
    ),
    "not-mcp-path": ("POST", "/elsewhere", rpc_headers("guard"), LIST_BODY, 404),
    "http-method": ("PUT", "/mcp", rpc_headers("guard"), LIST_BODY, 405),
    "media-type": (
        "POST",
        "/mcp",
        rpc_headers("guard", **{"content-type": "text/plain"}),
        LIST_BODY,
        415,
    ),
    "unparsable": ("POST", "/mcp", rpc_headers("guard"), b'{"jsonrpc": "2.0", "id": 1,', 400),
    "method-denied": ("POST", "/mcp", rpc_headers("closed"), LIST_BODY, 403),
    "tool-denied": (
        "POST",
        "/mcp",
        rpc_headers("guard", "tools/call", **{"mcp-name": REPLICATE}),
        CALL_BODY,
        200,
    ),
}


def through_envoy(
    stack: Stack, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request through Envoy: status, every response header (lower-cased, in order), body."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.envoy, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return (
            response.status,
            [(k.lower(), v) for k, v in response.getheaders()],
            response.read(),
        )
    finally:
        conn.close()


def straight_to_sidecar(
    stack: Stack, method: str, path: str, headers: dict[str, str], body: bytes
) -> external_auth_pb2.CheckResponse:
    """The same request as a Check sent to the sidecar itself, bypassing Envoy."""
    request = external_auth_pb2.CheckRequest()
    http_request = request.attributes.request.http
    http_request.method = method
    http_request.path = path
    http_request.raw_body = body
    http_request.headers.update({k.lower(): v for k, v in headers.items()})
    http_request.headers["content-length"] = str(len(body))
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.authz_grpc}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)  # type: ignore[no-untyped-call, unused-ignore]
        response: external_auth_pb2.CheckResponse = stub.Check(request, timeout=5)
        return response


@pytest.mark.parametrize("case", sorted(SIDECAR_DENIALS))
def test_sidecar_denials_reach_the_agent_byte_for_byte(stack: Stack, case: str) -> None:
    """Denials are Envoy local replies (flag UAEX) like the sidecar-unavailable 503, but none
    of Envoy's local-reply mappers touches them: what the sidecar rendered is what arrives."""
    method, path, headers, body, expected = SIDECAR_DENIALS[case]
    since = len(executed(stack))
    status, got_headers, got_body = through_envoy(stack, method, path, headers, body)
    sent = straight_to_sidecar(stack, method, path, headers, body)

    assert sent.HasField("denied_response"), sent
    denied = sent.denied_response
    assert status == denied.status.code == expected
    assert got_body == denied.body.encode()  # byte for byte
    # Every header the sidecar set arrives unchanged (the decision id is per decision), and
    # Envoy adds only its usual ones: no Retry-After, no content-type of its own.
    decision_ids = [v for k, v in got_headers if k == DECISION_HEADER]
    assert len(decision_ids) == 1 and len(decision_ids[0]) == 24, got_headers
    sidecar_set = sorted(
        (o.header.key.lower(), "<id>" if o.header.key == DECISION_HEADER else o.header.value)
        for o in denied.headers
    )
    arrived = sorted(
        (k, "<id>" if k == DECISION_HEADER else v) for k, v in got_headers if k not in ENVOY_ADDS
    )
    assert arrived == sidecar_set
    assert dict(got_headers)["content-length"] == str(len(got_body))
    assert runs(stack, since) == []


# -- reloads under load ------------------------------------------------------------------


def test_reload_under_concurrent_load_never_lets_a_denied_call_through(stack: Stack) -> None:
    root = stack.config_dir
    since = len(executed(stack))
    reloads_before = config_state(stack)["reloads"]
    deadline = time.monotonic() + 6.0
    stop = threading.Event()
    replies: list[tuple[str, str, int, str, str]] = []  # (grant, tool, status, kind, text)
    lock = threading.Lock()

    def writer() -> None:
        """Flip `flip` on/off and rotate `guard` and grants.json, in place and by rename."""
        flips = itertools.cycle([*FLIP_ON, *FLIP_OFF][i] for i in (0, 2, 1, 3))
        guards = itertools.cycle(GUARD_VARIANTS)
        for i in range(400):  # bounded by count and by time
            if stop.is_set() or time.monotonic() > deadline:
                return
            write = replace_atomically if i % 2 else Path.write_bytes
            write(root / "policies" / "flip.json", policy_bytes(next(flips), indent=i % 3))
            write(root / "policies" / "guard.json", policy_bytes(next(guards), indent=i % 3))
            if i % 5 == 0:
                replace_atomically(root / "grants.json", grants_bytes(("extra",) * (i % 2)))
            time.sleep(0.07)

    def raw_client(worker: int) -> None:
        plan = [("guard", OPENAI), ("guard", REPLICATE), ("flip", OPENAI), ("guard", "list")]
        for i in range(300):
            if time.monotonic() > deadline:
                return
            grant, tool = plan[(i + worker) % len(plan)]
            if tool == "list":
                status, _, body = list_tools(stack, grant)
                # 4 tools, or 3 while guard's version that hides REPLICATE is in force
                listed = [t["name"] for t in json.loads(body)["result"]["tools"]]
                ok = status == 200 and len([n for n in listed if n != REPLICATE]) == 3
                kind, text = ("allowed" if ok else f"http-{status}"), body[:200].decode()
            else:
                status, _, body = call(stack, grant, tool, rid=i)
                kind, text = outcome(status, body)
            with lock:
                replies.append((grant, tool, status, kind, text))

    async def sdk_session() -> None:
        async with mcp_client(stack, token("flip"), mode="legacy") as client:
            for _ in range(300):
                if time.monotonic() > deadline:
                    return
                result = await client.call_tool(OPENAI, {"prompt": "sdk"})
                text = "\n".join(getattr(part, "text", "") for part in result.content)
                kind = "denied" if text.startswith(DENIED) else "allowed"
                with lock:
                    replies.append(("flip", OPENAI, 200, kind, text))

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=raw_client, args=(w,)) for w in range(7)]
    threads.append(threading.Thread(target=asyncio.run, args=(sdk_session(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stop.set()
    assert not any(thread.is_alive() for thread in threads)

    by = Counter((grant, tool, kind) for grant, tool, _, kind, _ in replies)
    # every reply is a valid allow or a clean policy denial: no 5xx, no transport errors
    assert {kind for _, _, _, kind, _ in replies} <= {"allowed", "denied"}, by
    # guard's policy was rewritten all along, yet every version applied cleanly: its allowed
    # calls never saw a gap ("(no policy)", 401) and its denied tool was never run
    assert by[("guard", REPLICATE, "allowed")] == 0, by
    assert by[("guard", OPENAI, "denied")] == 0, by
    assert ("guard", REPLICATE) not in runs(stack, since)
    # flip was really flipped under load, and each denial names a rule of an "off" version
    assert by[("flip", OPENAI, "allowed")] > 0 and by[("flip", OPENAI, "denied")] > 0, by
    off_rules = ("(rule: (default deny))", f"(rule: /tools/{OPENAI}/deny_if/0)")
    flip_denials = [text for g, _, _, k, text in replies if g == "flip" and k == "denied"]
    assert all(any(rule in text for rule in off_rules) for text in flip_denials), flip_denials
    # the upstream ran exactly the calls that were answered as allowed, nothing more
    ran = Counter(runs(stack, since))
    assert ran == Counter(
        {(g, t): n for (g, t, k), n in by.items() if k == "allowed" and t != "list"}
    )
    assert config_state(stack)["reloads"] - reloads_before >= 10
    assert len(replies) >= 200


# -- broken configuration ----------------------------------------------------------------

CORRUPTIONS = {
    "truncated": policy_bytes(GUARD_V1)[:-7],
    "invalid-field": b'{"version": "1", "default": "deny", "tools": {}, "bogus": true}',
    "bad-operator": json.dumps(
        {"version": "1", "tools": {OPENAI: {"require": [{"conditions": [{"path": "args.a"}]}]}}}
    ).encode(),
    "empty": b"",
    "binary-garbage": bytes(range(256)) * 4,
    "json-null": b"null",
    "nesting-bomb": b"[" * 100_000,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_policy_keeps_the_last_good_one(stack: Stack, corruption: str) -> None:
    path = stack.config_dir / "policies" / "guard.json"
    good = path.read_bytes()
    since = len(executed(stack))
    path.write_bytes(CORRUPTIONS[corruption])  # in place, as a bad edit would
    wait_until(lambda: ready_with(stack, "guard", good, error="policies/guard.json"))

    # decisions unchanged: the last good policy is in force
    assert_allowed(call(stack, "guard", OPENAI))
    assert_denied(call(stack, "guard", REPLICATE), "(default deny)")
    where, _, error = config_state(stack)["last_error"].partition(": ")
    assert where == str(path) and error.strip(), error  # names the file and the problem

    fixed = policy_bytes(GUARD_PAUSED)
    path.write_bytes(fixed)
    wait_until(lambda: ready_with(stack, "guard", fixed, error=None))
    assert_denied(call(stack, "guard", OPENAI), f"/tools/{OPENAI}/deny_if/0")
    assert_denied(call(stack, "guard", REPLICATE), "(default deny)")
    assert runs(stack, since) == [("guard", OPENAI)]


def test_deleted_grants_file_keeps_the_last_good_grants(stack: Stack) -> None:
    grants = stack.config_dir / "grants.json"
    since = len(executed(stack))
    grants.unlink()
    wait_until(lambda: "grants.json: file not found" in (config_state(stack)["last_error"] or ""))
    assert config_state(stack)["grants"] == len(GRANTS)
    # the tokens of the last good grants keep working, with their policies
    assert_allowed(call(stack, "guard", OPENAI))
    assert_denied(call(stack, "guard", REPLICATE), "(default deny)")
    # a policy change still cannot apply while the directory as a whole is invalid
    (stack.config_dir / "policies" / "guard.json").write_bytes(policy_bytes(GUARD_PAUSED))
    polled_after(stack, polled_after(stack, time.time()))  # a whole poll after the write
    assert ready_with(stack, "guard", policy_bytes(GUARD_V1), error="grants.json")
    assert_allowed(call(stack, "guard", OPENAI))

    replace_atomically(grants, grants_bytes())
    wait_until(lambda: ready_with(stack, "guard", policy_bytes(GUARD_PAUSED), error=None))
    assert_denied(call(stack, "guard", OPENAI), f"/tools/{OPENAI}/deny_if/0")
    assert runs(stack, since) == [("guard", OPENAI)] * 2


# -- the upstream is down ----------------------------------------------------------------


def test_upstream_down_is_503_and_the_allowed_call_gives_its_quota_back(stack: Stack) -> None:
    left = 86_400 - time.time() % 86_400
    if left < 60:  # the limit's day window must not turn over during the test
        time.sleep(left + 0.5)
    day = int(time.time() // 86_400)
    since = len(executed(stack))
    connect_fails = envoy_counter(stack, UPSTREAM_CONNECT_FAIL)
    faults.kill(stack, "upstream")
    status, headers, body = call(stack, "quota", OPENAI)  # allowed: takes 1 of 2, gives it back
    assert status == 503  # Envoy's status for a refused connection (flag UF), kept
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32603,
            # not a policy decision: no [POLICY DENIED] prefix
            "message": "the MCP server is unavailable; the call was not delivered to it."
            " Retry later.",
        },
    }
    assert "x-mcp-authz-decision-id" in headers  # the sidecar allowed it; routing failed
    assert envoy_counter(stack, UPSTREAM_CONNECT_FAIL) == connect_fails + 1
    # a denial does not need the upstream: it is still a clean policy answer
    assert_denied(call(stack, "guard", REPLICATE), "(default deny)")
    assert runs(stack, since) == []

    faults.restart(stack, "upstream")
    # The response phase (ext_proc) gave the undelivered call's quota back before the 503
    # reached the client: both units are still there.
    assert_allowed(call(stack, "quota", OPENAI))  # quota 1 of 2
    assert_allowed(call(stack, "quota", OPENAI))  # quota 2 of 2
    reply = call(stack, "quota", OPENAI)
    assert int(time.time() // 86_400) == day, "the test ran past the end of the UTC day"
    assert_denied(reply, f"/tools/{OPENAI}/limits/c")
    assert int(reply[1]["retry-after"]) >= 1
    assert runs(stack, since) == [("quota", OPENAI)] * 2
