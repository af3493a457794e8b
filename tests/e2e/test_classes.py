"""Class rules end to end: the real Envoy (both ext_authz transports), the real sidecar, the
real MCP SDK client, and a real SDK server with a read, a write and a destructive tool whose
tools change while it runs (tests/e2e/drift_upstream.py).

Ground truth is the server's own record of the tools that ran, and what Envoy returned. The
lock is written as `mcp-authz pin` writes it (`lock_document`, `render_lock`) from the
server's own `tools/list` answer, read straight from the server; the classes come from it
and from tool-classes.json, never from a policy edit.

- `classes.write.limits` (2 a minute per grant) limits probe.write: the third call is
  denied at `/classes/write/limits/writes` and the server ran two; read tools are not
  limited.
- `classes.delete.deny_if` denies probe.delete, which never runs; a grant whose policy has
  an entry of its own for probe.delete runs it (the own entry wins).
- A tool added at runtime, neither pinned nor overridden, is of unknown class: judged as the
  most restrictive class the policy names (delete: denied, hidden from a `hide_denied`
  listing) and, under `default: deny`, not admitted; pinned again from the live server, the
  same tool is judged by its real class (read: it runs, it is listed), with no policy edit.
- tool-classes.json written into the configuration directory re-classifies a tool at once;
  removed, the lock's class is back.
- Under `default: deny`, a class entry admits its tools and only those.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp_types import CallToolResult, TextContent

from authz.catalog.classes import OVERRIDES_FILE
from authz.config.grants import hash_token
from authz.config.source import load_config
from authz.devstack.stack import LOOPBACK, Stack
from authz.pinning import LOCK_FILE, lock_document, render_lock
from tests.e2e.conftest import (
    mcp_client,
    token_for,
    wait_for_fresh_window,
    wait_until_envoy_idle,
)
from tests.e2e.drift_upstream import DELETE, READ, WRITE
from tests.e2e.mcp_raw import HANDSHAKE_VERSION, messages

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NEW = "probe.new"
PROBES = (READ, WRITE, DELETE)
DENIED = "[POLICY DENIED] "
WRITE_LIMIT = "/classes/write/limits/writes"
DELETE_DENIED = "/classes/delete/deny_if/0"

CLASSES: dict[str, Any] = {
    "read": {},
    "write": {"limits": [{"counter": "writes", "window": "minute", "max": 2, "scope": "grant"}]},
    "delete": {"deny_if": [{"conditions": []}]},
}
POLICIES: dict[str, dict[str, Any]] = {
    # pinning: enforce (the default): every tool the grants call is pinned
    "classy": {"version": "1", "default": "allow", "classes": CLASSES},
    "own": {"version": "1", "default": "allow", "classes": CLASSES, "tools": {DELETE: {}}},
    "closed": {"version": "1", "default": "deny", "classes": {"read": {}}},
    # pinning off: a tool the lock lacks is not denied (pin) first, its class decides
    "unpinned": {
        "version": "1",
        "default": "allow",
        "pinning": "off",
        "hide_denied": True,
        "classes": CLASSES,
    },
    "unpinned-closed": {
        "version": "1",
        "default": "deny",
        "pinning": "off",
        "classes": {"read": {}},
    },
}
GRANTS = {
    "classy": "classy",
    "limited": "classy",
    "own": "own",
    "closed": "closed",
    "unpinned": "unpinned",
    "unpinned-closed": "unpinned-closed",
}


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc, indent=2))
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token_for(gid)), "policy": policy}
        for gid, policy in GRANTS.items()
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}, indent=2))
    return root


@dataclass
class ProbeStack(Stack):
    """The real Envoy and sidecar in front of tests/e2e/drift_upstream.py."""

    record: Path = field(default_factory=Path)

    def start_upstream(self) -> None:
        argv = [sys.executable, "-m", "tests.e2e.drift_upstream"]
        argv += ["--host", LOOPBACK, "--port", str(self.ports.upstream)]
        argv += ["--record", str(self.record)]
        self._spawn("upstream", argv, {**self.upstream_env(), "PYTHONPATH": str(ROOT)})
        self._wait_tcp("upstream", self.ports.upstream)

    @property
    def upstream_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.upstream}"

    def runs(self) -> list[str]:
        """The tools that ran, in order: the server's own record."""
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["tool"] for line in lines if line.strip()]

    def change(self, change: dict[str, Any]) -> None:
        """Change the server's tools at runtime (its admin endpoint, not behind Envoy)."""
        reply = httpx.post(f"{self.upstream_url}/admin/tools", json=change, timeout=10)
        assert reply.status_code == 200, reply.text

    def wire_tools(self) -> list[dict[str, Any]]:
        """The server's `tools/list` elements exactly as it sends them (raw MCP, straight to
        the server), as `mcp-authz pin` reads them."""
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        url = f"{self.upstream_url}/mcp"
        hello = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "pin", "version": "1"},
            },
        }
        with httpx.Client(timeout=10) as http:
            reply = http.post(url, json=hello, headers=headers)
            assert reply.status_code == 200, reply.text
            headers["mcp-session-id"] = reply.headers["mcp-session-id"]
            headers["mcp-protocol-version"] = HANDSHAKE_VERSION
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            http.post(url, json=initialized, headers=headers)
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            (message,) = messages(http.post(url, json=body, headers=headers))
        assert "nextCursor" not in message["result"], message
        tools: list[dict[str, Any]] = message["result"]["tools"]
        return tools


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[ProbeStack]:
    base = tmp_path_factory.mktemp("classes")
    record = base / "runs.jsonl"
    record.touch()
    the_stack = ProbeStack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        offline_gemini=False,
        reload_interval=0.2,
        transport=transport,
        record=record,
    )
    with the_stack:
        yield the_stack


# -- helpers -------------------------------------------------------------------------------


def wait(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def applied(stack: ProbeStack) -> None:
    """Wait until the sidecar serves the configuration directory as it is now."""
    expected = load_config(stack.config_dir).fingerprint

    def served() -> bool:
        config: dict[str, Any] = stack.readiness()["config"]  # type: ignore[assignment]
        return config["fingerprint"] == expected and config["last_error"] is None

    wait(served, "the sidecar applied the configuration directory")


def replace_file(path: Path, raw: bytes) -> None:
    """Replace a configuration file as an editor or a ConfigMap does (write, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)


def pin(stack: ProbeStack) -> list[str]:
    """Pin the server's tools as they are now (`mcp-authz pin`), and wait until the sidecar
    loaded the lock; returns the names pinned."""
    elements = stack.wire_tools()
    replace_file(stack.config_dir / LOCK_FILE, render_lock(lock_document(elements)).encode())
    applied(stack)
    return sorted(e["name"] for e in elements)


def reset(stack: ProbeStack) -> None:
    """The server's three tools, pinned; no tool-classes.json."""
    overrides = stack.config_dir / OVERRIDES_FILE
    if overrides.exists():
        overrides.unlink()
    if NEW in [t["name"] for t in stack.wire_tools()]:
        stack.change({"remove": NEW})
    assert pin(stack) == sorted(PROBES)


async def call(stack: Stack, grant: str, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    async with mcp_client(stack, token_for(grant)) as client:
        return await client.call_tool(tool, arguments)


async def listed(stack: Stack, grant: str) -> list[str]:
    """The tools an agent of `grant` is offered (the SDK client's listing)."""
    async with mcp_client(stack, token_for(grant)) as client:
        page = await client.list_tools(cache_mode="bypass")
        assert page.next_cursor is None
        return [tool.name for tool in page.tools]


def text_of(result: CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if isinstance(part, TextContent))


def assert_ran(result: CallToolResult) -> None:
    assert not result.is_error, text_of(result)
    assert text_of(result) == "ran"


def assert_denied(result: CallToolResult, rule: str) -> str:
    """A readable `[POLICY DENIED]` tool result naming `rule`; returns its text."""
    text = text_of(result)
    assert result.is_error, text
    assert text.startswith(DENIED), text
    assert text.endswith(f"(rule: {rule})"), text
    return text


def runs_since(stack: ProbeStack, before: int) -> list[str]:
    """The tools that ran since `before` runs, once nothing is on its way to the server."""
    wait_until_envoy_idle(stack)
    return stack.runs()[before:]


def policy_bytes(stack: ProbeStack) -> dict[str, bytes]:
    policies = stack.config_dir / "policies"
    return {p.name: p.read_bytes() for p in sorted(policies.iterdir())}


# -- the tests -----------------------------------------------------------------------------


async def test_the_write_class_limit_counts_every_call_of_a_write_tool(stack: ProbeStack) -> None:
    reset(stack)
    wait_for_fresh_window()
    before = len(stack.runs())
    for amount in (1, 2):
        assert_ran(await call(stack, "limited", WRITE, {"amount": amount}))
    third = await call(stack, "limited", WRITE, {"amount": 3})
    text = assert_denied(third, WRITE_LIMIT)
    assert "rate limit 'writes' exceeded: 2 per minute per grant" in text, text
    assert "class unknown" not in text
    for query in ("a", "b", "c"):  # read: named, nothing special, not limited
        assert_ran(await call(stack, "limited", READ, {"query": query}))
    # another grant of the same policy has buckets of its own
    assert_ran(await call(stack, "classy", WRITE, {"amount": 4}))
    assert runs_since(stack, before) == [WRITE, WRITE, READ, READ, READ, WRITE]


async def test_the_delete_class_denies_and_an_own_entry_wins(stack: ProbeStack) -> None:
    reset(stack)
    before = len(stack.runs())
    text = assert_denied(await call(stack, "classy", DELETE, {"target": "t-1"}), DELETE_DENIED)
    assert text == f"{DENIED}tool {DELETE!r} is denied by policy (rule: {DELETE_DENIED})"
    assert "t-1" not in text
    assert_ran(await call(stack, "own", DELETE, {"target": "t-2"}))  # its own entry: {}
    assert runs_since(stack, before) == [DELETE]
    assert await listed(stack, "unpinned") == [READ, WRITE]  # hide_denied: delete never runs


async def test_a_tool_of_unknown_class_fails_closed_until_it_is_pinned(stack: ProbeStack) -> None:
    reset(stack)
    policies = policy_bytes(stack)
    stack.change({"add": NEW, "annotations": {"readOnlyHint": True, "openWorldHint": False}})
    assert NEW in [t["name"] for t in stack.wire_tools()]
    before = len(stack.runs())

    # not pinned, no override: judged as the most restrictive class the policy names
    text = assert_denied(await call(stack, "unpinned", NEW, {"query": "q"}), DELETE_DENIED)
    assert f"tool {NEW!r} (class unknown, judged as delete) is denied by policy" in text, text
    assert await listed(stack, "unpinned") == [READ, WRITE]
    # under default deny, a class the policy does not name is denied: not admitted
    closed = assert_denied(await call(stack, "unpinned-closed", NEW, {}), "(default deny)")
    assert f"tool {NEW!r} (class unknown, judged as financial) is not permitted" in closed
    # a grant that enforces the lock denies it before its class is asked
    assert_denied(await call(stack, "classy", NEW, {}), "(pin)")
    assert runs_since(stack, before) == []

    # pinned from the live server: its real class (read) judges it, with no policy edit
    assert pin(stack) == sorted((*PROBES, NEW))
    assert_ran(await call(stack, "unpinned", NEW, {"query": "q"}))
    assert await listed(stack, "unpinned") == [READ, WRITE, NEW]
    assert_ran(await call(stack, "unpinned-closed", NEW, {}))
    assert_ran(await call(stack, "closed", NEW, {}))
    assert_ran(await call(stack, "classy", NEW, {}))
    assert runs_since(stack, before) == [NEW, NEW, NEW, NEW]
    assert policy_bytes(stack) == policies

    reset(stack)


async def test_an_override_reclassifies_a_tool_without_a_policy_edit(stack: ProbeStack) -> None:
    reset(stack)
    policies = policy_bytes(stack)
    before = len(stack.runs())
    assert_ran(await call(stack, "classy", READ, {"query": "q"}))

    overrides = {
        "version": 1,
        "tools": {
            READ: {"class": "delete", "reason": "it reads customer secrets"},
            DELETE: {"class": "read", "risk": "low"},
        },
    }
    replace_file(stack.config_dir / OVERRIDES_FILE, json.dumps(overrides).encode())
    applied(stack)
    text = assert_denied(await call(stack, "classy", READ, {"query": "q"}), DELETE_DENIED)
    assert text.startswith(f"{DENIED}tool {READ!r} is denied by policy"), text
    assert_ran(await call(stack, "classy", DELETE, {"target": "t-3"}))
    assert await listed(stack, "unpinned") == [WRITE, DELETE]

    # a file the sidecar cannot read is refused: the last good classes stay in force
    replace_file(stack.config_dir / OVERRIDES_FILE, b'{"version": 1, "tools": {"x": {}}}')
    wait(
        lambda: OVERRIDES_FILE in str(stack.readiness()["config"]["last_error"]),  # type: ignore[index]
        "the sidecar refused tool-classes.json",
    )
    assert_denied(await call(stack, "classy", READ, {"query": "q"}), DELETE_DENIED)

    (stack.config_dir / OVERRIDES_FILE).unlink()
    applied(stack)
    assert_ran(await call(stack, "classy", READ, {"query": "q"}))
    assert_denied(await call(stack, "classy", DELETE, {"target": "t-4"}), DELETE_DENIED)
    assert runs_since(stack, before) == [READ, DELETE, READ]
    assert policy_bytes(stack) == policies


async def test_under_default_deny_a_class_entry_admits_its_tools(stack: ProbeStack) -> None:
    reset(stack)
    before = len(stack.runs())
    assert_ran(await call(stack, "closed", READ, {"query": "q"}))
    for tool, arguments in ((WRITE, {"amount": 1}), (DELETE, {"target": "t-5"})):
        text = assert_denied(await call(stack, "closed", tool, arguments), "(default deny)")
        assert text == f"{DENIED}tool {tool!r} is not permitted by policy (rule: (default deny))"
    assert runs_since(stack, before) == [READ]
