"""Two sidecar replicas behind one real Envoy share one real Redis: fleet-wide quotas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from authz.config.grants import hash_token
from authz.devstack.stack import Stack
from tests.e2e.conftest import audit_events, executed, mcp_client
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

OPENAI = "image.generate.openai"  # runs and records at once (no API key): cheap to call
GRANTS = ("fleet", "weighted", "closed", "open", "recover")


def _policies() -> dict[str, Any]:
    return {
        "fleet": {
            "version": "1",
            "default": "deny",
            "tools": {
                OPENAI: {
                    "limits": [{"counter": "calls", "window": "hour", "max": 30, "scope": "grant"}]
                }
            },
        },
        "weighted": {
            "version": "1",
            "default": "deny",
            "tools": {
                OPENAI: {
                    "limits": [
                        {
                            "counter": "images",
                            "window": "hour",
                            "max": 30,
                            "scope": "grant",
                            "cost": {"from": "args.seed", "default": 1},
                        }
                    ]
                }
            },
        },
    }


def _write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True)
    policies = _policies()
    for name, doc in policies.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc))
    policy_of = {"fleet": "fleet", "weighted": "weighted"}
    grants = [
        {
            "id": gid,
            "label": gid,
            "token_sha256": hash_token(f"scale-{gid}"),
            "policy": policy_of.get(gid, "fleet"),
        }
        for gid in GRANTS
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    return root


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("fleet")
    record = base / "executed.jsonl"
    record.touch()
    stack = Stack(
        config_dir=_write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        replicas=2,
        sidecar_args=("--redis-url", redis.url, "--redis-timeout", "0.25"),
        upstream_json_response=True,
        transport=transport,
    )
    with stack:
        yield stack


def _text(result: CallToolResult) -> str:
    return " ".join(p.text for p in result.content if isinstance(p, TextContent))


def _policy_denied(result: CallToolResult) -> bool:
    return bool(result.is_error) and _text(result).startswith("[POLICY DENIED] ")


async def _client_burst(
    stack: Stack, grant: str, calls: int, arguments: dict[str, Any]
) -> list[CallToolResult]:
    async with mcp_client(stack, f"scale-{grant}") as client:
        return [await client.call_tool(OPENAI, arguments) for _ in range(calls)]


def _decisions_by_replica(stack: Stack, grant: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in stack.sidecar_names:
        path = stack.log_path(name)
        counts[name] = sum(
            1
            for line in path.read_text().splitlines()
            if '"event": "decision"' in line and f'"grant_id": "{grant}"' in line
        )
    return counts


async def test_two_replicas_eight_clients_exactly_thirty(fleet: Stack) -> None:
    before = len([e for e in executed(fleet) if e["grant"] == "fleet"])
    bursts = await asyncio.gather(
        *(_client_burst(fleet, "fleet", 6, {"prompt": f"c{i}"}) for i in range(8))
    )
    results = [r for burst in bursts for r in burst]
    assert len(results) == 48
    allowed = [r for r in results if not _policy_denied(r)]
    denied = [r for r in results if _policy_denied(r)]
    assert len(allowed) == 30
    assert len(denied) == 18
    assert all("/tools/image.generate.openai/limits/calls" in _text(r) for r in denied)
    # exactly the allowed calls reached the upstream
    ran = [e for e in executed(fleet) if e["grant"] == "fleet"]
    assert len(ran) - before == 30
    # both replicas took part in deciding
    per_replica = _decisions_by_replica(fleet, "fleet")
    assert all(count > 0 for count in per_replica.values()), per_replica


async def test_weighted_limit_is_exact_across_replicas(fleet: Stack) -> None:
    # every call costs args.seed = 4 units of 30: exactly 7 calls (28 units) fit
    bursts = await asyncio.gather(
        *(_client_burst(fleet, "weighted", 3, {"prompt": "w", "seed": 4}) for _ in range(8))
    )
    results = [r for burst in bursts for r in burst]
    allowed = [r for r in results if not _policy_denied(r)]
    assert len(allowed) == 7
    # 2 units are left: a call costing 2 fits, then nothing more
    async with mcp_client(fleet, "scale-weighted") as client:
        two = await client.call_tool(OPENAI, {"prompt": "w", "seed": 2})
        one = await client.call_tool(OPENAI, {"prompt": "w", "seed": 1})
    assert not _policy_denied(two), _text(two)
    assert _policy_denied(one)
    ran = [e for e in executed(fleet) if e["grant"] == "weighted"]
    assert len(ran) == 8


def _post_call(stack: Stack, grant: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": OPENAI,
                "arguments": {"prompt": "x"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
    ).encode()
    status, headers, raw = stack.post_raw(
        body,
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer scale-{grant}",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": OPENAI,
        },
    )
    return status, headers, json.loads(raw) if raw else {}


def _raw_denied(reply: dict[str, Any]) -> bool:
    content = reply.get("result", {}).get("content", [{}])
    return str(content[0].get("text", "")).startswith("[POLICY DENIED] ")


def _ready(stack: Stack, index: int) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{stack.replica_admin_url(index)}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_redis_down_fails_closed_then_recovers(fleet: Stack, redis: RedisServer) -> None:
    status, _, reply = _post_call(fleet, "recover")
    assert status == 200 and not _raw_denied(reply), reply
    before = executed(fleet)

    redis.kill()
    try:
        for _ in range(6):  # both replicas, several calls each
            started = time.monotonic()
            status, headers, reply = _post_call(fleet, "recover")
            elapsed = time.monotonic() - started
            assert status == 200, reply  # a tool result, not a transport error
            assert reply["id"] == 7
            result = reply["result"]
            assert result["isError"] is True
            text = result["content"][0]["text"]
            assert text.startswith("[POLICY DENIED] ")
            assert "quota state is unavailable" in text
            assert "(counters)" in text
            assert headers.get("retry-after") == "1"
            # The sidecar's answer (not Envoy's 503) shows it came within Envoy's 1 s; this
            # generous bound, measured by this test's own slower clock, only catches a hang.
            assert elapsed < 5.0
        assert executed(fleet) == before  # nothing reached the upstream

        # readiness reports the state on both replicas
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = [_ready(fleet, i) for i in range(2)]
            if all(code == 503 for code, _ in states):
                break
            time.sleep(0.2)
        for code, report in states:
            assert code == 503
            assert report["counter_store"]["ok"] is False
            assert report["counter_store"]["on_failure"] == "deny (fail-closed)"
    finally:
        redis.start()

    # the same sidecars recover by themselves: no restart
    deadline = time.monotonic() + 10
    while True:
        status, _, reply = _post_call(fleet, "recover")
        if status == 200 and not _raw_denied(reply):
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)
    assert len(executed(fleet)) == len(before) + 1
    assert all(_ready(fleet, i)[0] == 200 for i in range(2))


def test_fail_open_allows_and_logs(tmp_path: Path, redis: RedisServer, transport: str) -> None:
    record = tmp_path / "executed.jsonl"
    record.touch()
    stack = Stack(
        config_dir=_write_config(tmp_path / "config"),
        outputs_dir=tmp_path / "outputs",
        workdir=tmp_path / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        sidecar_args=("--redis-url", "redis://127.0.0.1:1/0", "--redis-fail-open"),
        upstream_json_response=True,
        transport=transport,
    )
    with stack:
        status, headers, reply = _post_call(stack, "open")
        assert status == 200
        assert not _raw_denied(reply), reply
        assert headers.get("x-mcp-authz-fail-open") == "true"
        decision_id = headers["x-mcp-authz-decision-id"]
        deadline = time.monotonic() + 10
        while not (events := [e for e in audit_events(stack) if e["decision_id"] == decision_id]):
            assert time.monotonic() < deadline, "the decision was never logged"
            time.sleep(0.05)
        [event] = events
        assert event["tool"] == "image.generate.openai"
        assert event["fail_open"] is True
        assert event["rule"] == "(counters fail-open)"
        code, report = _ready(stack, 0)
        assert code == 200
        assert report["counter_store"]["ok"] is False
        assert report["counter_store"]["on_failure"] == "allow (fail-open)"


def _scrape(stack: Stack, index: int = 0) -> dict[str, float]:
    """Parse the Prometheus text exposition of one replica into {series: value}."""
    import urllib.request

    with urllib.request.urlopen(f"{stack.replica_admin_url(index)}/metrics", timeout=2) as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def _grpc_health(stack: Stack, index: int, service: str = "") -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{stack.replica_ports[index][0]}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(response.status)


def _http_health(stack: Stack, index: int) -> int:
    """The status of the HTTP ext_authz port's /healthz (Envoy's health check over HTTP)."""
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{stack.replica_http_ports[index]}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def _health(stack: Stack, index: int) -> int:
    """gRPC health (1 serving, 2 not serving); over HTTP, the HTTP health check must agree."""
    status = _grpc_health(stack, index)
    if stack.transport == "http":
        assert _http_health(stack, index) == (200 if status == 1 else 503)
    return status


def test_metrics_are_scraped(fleet: Stack) -> None:
    totals = [_scrape(fleet, i) for i in range(2)]
    allowed = sum(
        value
        for series in totals
        for name, value in series.items()
        if name.startswith("mcp_authz_decisions_total{")
        and 'outcome="allow"' in name
        and 'tool="image.generate.openai"' in name
    )
    limited = sum(
        value
        for series in totals
        for name, value in series.items()
        if name.startswith("mcp_authz_decisions_total{")
        and 'kind="rate_limited"' in name
        and 'rule_kind="limit"' in name
    )
    assert allowed >= 30 + 8  # the fleet test's 30 and the weighted test's 8, at least
    assert limited >= 18
    store_errors = sum(
        value
        for series in totals
        for name, value in series.items()
        if name.startswith("mcp_authz_counter_store_errors_total{")
    )
    assert store_errors >= 6  # the fail-closed test's calls while Redis was down
    first = totals[0]
    assert first["mcp_authz_check_duration_seconds_count"] > 0
    assert any(k.startswith("mcp_authz_counter_store_duration_seconds_bucket") for k in first)
    assert any(k.startswith("mcp_authz_policy_info{") and 'policy="fleet"' in k for k in first)
    assert 'mcp_authz_policy_reloads_total{result="applied"}' in first
    assert first["mcp_authz_counter_store_up"] in (0.0, 1.0)


def test_health_follows_readiness(fleet: Stack, redis: RedisServer) -> None:
    serving, not_serving = 1, 2
    assert _health(fleet, 0) == serving
    redis.kill()
    try:
        deadline = time.monotonic() + 6
        while _health(fleet, 0) != not_serving:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert _grpc_health(fleet, 0, "envoy.service.auth.v3.Authorization") == not_serving
        errors = _scrape(fleet, 0)
        assert errors["mcp_authz_counter_store_up"] == 0.0
    finally:
        redis.start()
    deadline = time.monotonic() + 6
    while _health(fleet, 0) != serving:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert _scrape(fleet, 0)["mcp_authz_counter_store_up"] == 1.0
