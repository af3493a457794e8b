"""End-to-end fixtures: the real Envoy, sidecar, upstream and offline Gemini as processes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from authz.config.grants import hash_token
from authz.devstack import faults
from authz.devstack.envoy_config import TRANSPORTS
from authz.devstack.stack import Stack
from tests.redis_server import RedisServer

SEED_POLICY = (
    '{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":'
    '[{"counter":"image.generate.gemini_rate","window":"minute","max":30,"scope":"grant"}]}}}'
)

POLICIES: dict[str, Any] = {
    "seed": SEED_POLICY,
    "open": {
        "version": "1",
        "default": "allow",
        "hide": ["image.generate.replicate"],
    },
    "conditions": {
        "version": "1",
        "default": "deny",
        "tools": {
            "image.generate.gemini": {
                "require": [
                    {
                        "conditions": [
                            {
                                "path": "args.model",
                                "op": "in",
                                "value": ["gemini-2.5-flash-image-preview"],
                            }
                        ],
                        "on_deny": "only the preview model is allowed",
                    }
                ],
                "deny_if": [
                    {
                        "conditions": [
                            {"path": "args.prompt", "op": "regex", "value": "(?i)forbidden"}
                        ],
                        "on_deny": "this prompt is not allowed",
                    }
                ],
            }
        },
    },
    "reloadable": {"version": "1", "default": "deny"},
    "star": {
        "version": "1",
        "default": "deny",
        "tools": {
            "image.generate.gemini": {},
            "*": {
                "deny_if": [
                    {
                        "conditions": [
                            {"path": "args.prompt", "op": "regex", "value": "(?i)forbidden"}
                        ],
                        "on_deny": "no tool may draw this",
                    }
                ],
                "require": [
                    {
                        "conditions": [{"path": "args.filenameHint", "op": "eq", "value": "ok"}],
                        "on_deny": "every call names its file ok",
                    }
                ],
            },
        },
    },
    "strict": {
        "version": "1",
        "default": "deny",
        "tools": {"image.generate.gemini": {}},
        "methods": {
            "default": "deny",
            "allow": ["initialize", "notifications/initialized", "tools/list"],
        },
    },
}

GRANTS = {
    "seed-a": "seed",
    "seed-b": "seed",
    "open": "open",
    "cond": "conditions",
    "orphan": "does-not-exist",
    "reload": "reloadable",
    "eras": "open",
    "strict": "strict",
    "star": "star",
}


def token_for(grant_id: str) -> str:
    return f"test-token-{grant_id}"


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        text = doc if isinstance(doc, str) else json.dumps(doc, indent=2)
        (root / "policies" / f"{name}.json").write_text(text)
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token_for(gid)), "policy": policy}
        for gid, policy in GRANTS.items()
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}, indent=2))
    return root


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """How Envoy asks the sidecar for decisions: ext_authz over gRPC (deploy/envoy.yaml) or
    over HTTP (deploy/envoy-http.yaml). Every module whose stack uses it runs once per
    transport, so each guarantee is checked on both."""
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    config = write_config(base / "config")
    record = base / "executed.jsonl"
    record.touch()
    the_stack = Stack(
        config_dir=config,
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        reload_interval=0.2,
        transport=transport,
    )
    with the_stack:
        yield the_stack


def executed(stack: Stack) -> list[dict[str, Any]]:
    """Every tool execution the upstream actually started (its own record)."""
    path = Path(stack.extra_env["IMAGEGEN_RECORD_FILE"])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


FORWARDED = "cluster.imagegen_upstream.upstream_rq_total"
IN_FLIGHT = (
    "http.mcp_ingress.downstream_rq_active",
    "cluster.imagegen_upstream.upstream_rq_active",
)


def forwarded(stack: Stack) -> int:
    """Requests Envoy has sent to the MCP server so far (its counter, current at once)."""
    return faults.envoy_stats(stack, f"^{FORWARDED.replace('.', '[.]')}$").get(FORWARDED, 0)


def wait_until_envoy_idle(stack: Stack, timeout: float = 10.0) -> None:
    """Wait until Envoy has no request in flight, neither from a client nor to the MCP server.

    Positive evidence that nothing is still on its way: every request Envoy forwarded has
    been answered (the server records an execution before it answers) or reset, and none
    can be forwarded later. Call it once the clients have their answers and are closed.
    """
    pattern = "|".join(name.replace(".", "[.]") for name in IN_FLIGHT)
    deadline = time.monotonic() + timeout
    while True:
        stats = faults.envoy_stats(stack, f"^({pattern})$")
        assert set(stats) == set(IN_FLIGHT), stats
        if not any(stats.values()):
            return
        assert time.monotonic() < deadline, f"Envoy still busy: {stats}"
        time.sleep(0.02)


def audit_events(stack: Stack) -> list[dict[str, Any]]:
    events = []
    for line in stack.log_path("sidecar").read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "decision":
            events.append(event)
    return events


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server of the test module's own (fails, never skips, without one)."""
    server = RedisServer(directory=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@asynccontextmanager
async def mcp_client(
    stack: Stack, token: str | None, *, mode: str = "legacy"
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(stack.mcp_url, http_client=http)
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            yield client


def wait_for_fresh_window(min_seconds_left: float = 20.0) -> None:
    """Sleep into the next UTC minute if too little of this one is left for a quota test."""
    left = 60 - (time.time() % 60)
    if left < min_seconds_left:
        time.sleep(left + 0.2)
