"""A body over Envoy's 1 MiB buffer never reaches the MCP server, whichever way it is framed.

Envoy's ext_authz is configured with `allow_partial_message: false`. Envoy has nevertheless
been seen to hand the authorization server a *partial* body over h2c (a body larger than
`max_request_bytes`, sent without Content-Length), marked `x-envoy-auth-partial-body: true`.
Whoever refuses it, Envoy (its own 413) or the sidecar (413, rule `(body)`, for a body marked
partial), the call must not run. Ground truth: the upstream's own execution record. The
sidecar's guard itself is tested against the marker in tests/unit/test_service.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from authz.devstack.stack import LOOPBACK, Stack
from tests.e2e.conftest import audit_events, executed, token_for

pytestmark = pytest.mark.e2e

LIMIT = 1 << 20


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "h2c-test", "version": "1"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def big_call(size: int) -> bytes:
    """A `tools/call` the open grant may make, padded past `size` bytes with its prompt."""
    prompt = "a cat " * (size // 6 + 1)
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "image.generate.gemini", "arguments": {"prompt": prompt}},
        }
    ).encode()


def chunks(body: bytes, size: int = 16384) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def headers() -> dict[str, str]:
    return {
        "authorization": f"Bearer {token_for('open')}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
    }


@pytest.mark.parametrize("over", [1, 4096, 3 * LIMIT])
def test_h2c_body_over_the_buffer_without_length_never_runs(stack: Stack, over: int) -> None:
    body = big_call(LIMIT + over)
    before = len(executed(stack))
    seen = len(audit_events(stack))
    # prior-knowledge HTTP/2 over cleartext; a generator body has no Content-Length
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        response = client.post(
            f"http://{LOOPBACK}:{stack.ports.envoy}/mcp", content=chunks(body), headers=headers()
        )
    assert response.http_version == "HTTP/2"
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == -32600
    assert "larger than" in error["message"] and "not run" in error["message"]
    # nothing was allowed on a truncated body: the sidecar either never saw it (Envoy's 413)
    # or refused it as partial
    decided = audit_events(stack)[seen:]
    assert all(e["decision"] == "deny" and e.get("rule") == "(body)" for e in decided), decided
    assert len(executed(stack)) == before


def test_h2c_body_within_the_buffer_without_length_runs(stack: Stack) -> None:
    """The control: the same framing under the bound is decided and runs."""
    body = big_call(2000)
    before = len(executed(stack))
    url = f"http://{LOOPBACK}:{stack.ports.envoy}/mcp"
    with httpx.Client(http1=False, http2=True, timeout=30) as client:
        init = client.post(url, json=INITIALIZE, headers=headers())
        assert init.status_code == 200, init.text
        session = {**headers(), "mcp-session-id": init.headers["mcp-session-id"]}
        done = client.post(url, json=INITIALIZED, headers=session)
        assert done.status_code == 202, done.text
        response = client.post(url, content=chunks(body), headers=session)
    assert response.status_code == 200, response.text
    assert '"isError":false' in response.text.replace(" ", "")
    assert len(executed(stack)) == before + 1


def test_http1_chunked_body_over_the_buffer_gets_413(stack: Stack) -> None:
    body = big_call(LIMIT + 4096)
    before = len(executed(stack))
    with httpx.Client(timeout=20) as client:
        response = client.post(
            f"http://{LOOPBACK}:{stack.ports.envoy}/mcp", content=chunks(body), headers=headers()
        )
    assert response.status_code == 413
    assert len(executed(stack)) == before
