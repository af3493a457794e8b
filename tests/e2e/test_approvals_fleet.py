"""Two sidecar replicas on one real Redis: an approval given through one is honoured by the
other, and is still used only once across the fleet."""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.config.grants import hash_token
from authz.devstack.envoy_config import EnvoyConfig
from authz.devstack.stack import LOOPBACK, Stack, sidecar_name
from tests.e2e.conftest import executed
from tests.e2e.test_approvals import (
    GEMINI,
    OPENAI,
    POLICY,
    admin,
    approval_id,
    call,
    sidecar_events,
    text_of,
)
from tests.e2e.test_approvals import write_config as write_approvals_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

RACE_MAX = 10
RACE_POLICY: dict[str, Any] = copy.deepcopy(POLICY)
RACE_POLICY["tools"][OPENAI] = {}  # the quota probe needs no approval
RACE_POLICY["all_tools"] = {
    "limits": [
        {
            "counter": "race",
            "window": "hour",
            "max": RACE_MAX,
            "scope": "grant",
            "cost": {"from": "args.width", "default": 1},
        }
    ]
}
"""The approval policy, plus one quota shared by every tool of the grant: a call costs its
`width` (gemini has none: 1), so one probe reads how much of the bucket is left."""
RACE_RULE = "/all_tools/limits/race"
STORE_WAIT = 5.0
"""Seconds a sidecar waits on Redis, and Envoy on the sidecar, in this fleet: long enough for
the test to hold every racing call at the store before letting them all through at once."""


def write_config(root: Path) -> Path:
    write_approvals_config(root)
    (root / "policies" / "race.json").write_text(json.dumps(RACE_POLICY, indent=2))
    grants = json.loads((root / "grants.json").read_text())
    grants["grants"].append(
        {
            "id": "agent-race",
            "label": "agent-race",
            "token_sha256": hash_token("token-agent-race"),
            "policy": "race",
        }
    )
    (root / "grants.json").write_text(json.dumps(grants))
    return root


def patient_authz(config: EnvoyConfig) -> None:
    """Envoy waits `STORE_WAIT` for a decision (deploy/envoy.yaml: 1 s)."""
    found = 0
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter.get("typed_config", {})
                for http_filter in manager.get("http_filters", []):
                    if http_filter["name"] == "envoy.filters.http.ext_authz":
                        ext_authz = http_filter["typed_config"]
                        # over gRPC the timeout is the service's, over HTTP the server URI's
                        service = ext_authz.get("grpc_service") or ext_authz["http_service"]
                        service.get("server_uri", service)["timeout"] = f"{STORE_WAIT}s"
                        found += 1
    assert found, "no ext_authz filter in the Envoy configuration"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("approvals-fleet")
    # one Redis server for both transports' fleets: each starts from an empty store
    redis.command("FLUSHALL")
    record = base / "executed.jsonl"
    record.touch()
    stack = Stack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        replicas=2,
        sidecar_args=("--redis-url", redis.url, "--redis-timeout", str(STORE_WAIT)),
        envoy_transform=patient_authz,
        transport=transport,
    )
    with stack:
        yield stack


def _creator(stack: Stack, approval: str) -> int:
    # a log line is written when the sidecar's event loop next turns, which may be after
    # the answer reached the client: wait for it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for index in range(stack.replicas):
            events = sidecar_events(stack, "approval", sidecar_name(index))
            if any(e["approval_id"] == approval and e["action"] == "requested" for e in events):
                return index
        time.sleep(0.02)
    raise AssertionError(f"no replica logged the request of {approval}")


async def test_approval_through_one_replica_is_honoured_by_the_other(fleet: Stack) -> None:
    for round_no in range(3):
        args = {"prompt": f"a logo, round {round_no}", "filenameHint": f"fleet-{round_no}"}
        held = approval_id(await call(fleet, "agent-a", GEMINI, args))
        creator = _creator(fleet, held)
        other = 1 - creator
        # both replicas see the same pending approval, with the digest its creator computed
        # (each replica has a key of its own here: none is configured)
        digests = set()
        for index in range(2):
            status, body, _ = admin(fleet.replica_admin_url(index), "GET", f"/approvals/{held}")
            assert status == 200 and body["status"] == "pending", (index, body)
            assert body["arguments"] == args
            digests.add(body["arguments_hmac"])
        assert len(digests) == 1
        status, body, _ = admin(
            fleet.replica_admin_url(other), "POST", f"/approvals/{held}/approve", body={}
        )
        assert status == 200 and body["status"] == "approved", body

        ran = await call(fleet, "agent-a", GEMINI, args)
        assert not ran.is_error, text_of(ran)
        status, body, _ = admin(fleet.replica_admin_url(creator), "GET", f"/approvals/{held}")
        assert body["status"] == "used"
        # and it is gone for the whole fleet
        assert approval_id(await call(fleet, "agent-a", GEMINI, args)) != held


async def test_concurrent_retries_run_once_across_replicas(fleet: Stack) -> None:
    args = {"prompt": "a logo, raced", "filenameHint": "fleet-race"}
    held = approval_id(await call(fleet, "agent-b", GEMINI, args))
    status, _, _ = admin(fleet.replica_admin_url(0), "POST", f"/approvals/{held}/approve", body={})
    assert status == 200
    before = sum(1 for e in executed(fleet) if e.get("grant") == "agent-b")
    results = await asyncio.gather(*(call(fleet, "agent-b", GEMINI, args) for _ in range(6)))
    ran = [r for r in results if not r.is_error]
    held_again = [r for r in results if r.is_error]
    assert len(ran) == 1, [text_of(r) for r in results]
    assert all(text_of(r).startswith("[APPROVAL REQUIRED] ") for r in held_again)
    assert all(approval_id(r) != held for r in held_again)
    assert sum(1 for e in executed(fleet) if e.get("grant") == "agent-b") == before + 1


STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def stateless_call(
    tool: str, arguments: dict[str, Any], token: str
) -> tuple[bytes, dict[str, str]]:
    """A 2026-07-28 tools/call without a session: the sidecar's first store operation for it
    is the approval lookup (no in-flight id to register)."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": STATELESS_META},
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
        "authorization": f"Bearer {token}",
    }
    return json.dumps(body).encode(), headers


def blocked_clients(redis: RedisServer) -> int:
    for line in redis.command("INFO", "clients").decode().splitlines():
        if line.startswith("blocked_clients:"):
            return int(line.split(":", 1)[1])
    raise AssertionError("INFO clients has no blocked_clients")


async def test_retries_that_lose_the_race_give_their_quota_back(
    fleet: Stack, redis: RedisServer
) -> None:
    """Every racing retry finds the approval approved and reserves quota; all but one lose
    the consume, and each loser gives its quota back: the bucket holds one call."""
    racers = 6
    args = {"prompt": "a logo, raced for quota", "filenameHint": "fleet-quota"}
    held = approval_id(await call(fleet, "agent-race", GEMINI, args))
    status, _, _ = admin(fleet.replica_admin_url(1), "POST", f"/approvals/{held}/approve", body={})
    assert status == 200
    before = [e for e in executed(fleet) if e.get("grant") == "agent-race"]
    body, headers = stateless_call(GEMINI, args, "token-agent-race")
    connections = [
        http.client.HTTPConnection(LOOPBACK, fleet.ports.envoy, timeout=30) for _ in range(racers)
    ]
    for connection in connections:
        connection.connect()
    replies: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def send(connection: http.client.HTTPConnection) -> None:
        connection.request("POST", "/mcp", body=body, headers=headers)
        response = connection.getresponse()
        with lock:
            replies.append((response.status, response.read()))

    # Writes to Redis wait (reads and PING go on) until every racer is at the store: then
    # all of them read the approval as approved before any consumes it.
    redis.command("CLIENT", "PAUSE", str(int(STORE_WAIT * 1000)), "WRITE")
    threads = [threading.Thread(target=send, args=(c,)) for c in connections]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + STORE_WAIT - 1
        while blocked_clients(redis) < racers:
            assert time.monotonic() < deadline, f"{blocked_clients(redis)} racers at the store"
            time.sleep(0.01)
    finally:
        redis.command("CLIENT", "UNPAUSE")
    for thread in threads:
        thread.join(30)
    for connection in connections:
        connection.close()

    assert [status for status, _ in replies] == [200] * racers, replies
    held_again = [reply for _, reply in replies if b"[APPROVAL REQUIRED] " in reply]
    assert len(held_again) == racers - 1, replies
    assert all(held.encode() not in reply for reply in held_again)
    ran = [e for e in executed(fleet) if e.get("grant") == "agent-race"][len(before) :]
    assert [e["tool"] for e in ran] == [GEMINI]

    # the bucket: one call (the winner) of RACE_MAX; a probe costing the rest still fits
    probe = await call(fleet, "agent-race", OPENAI, {"prompt": "probe", "width": RACE_MAX - 1})
    assert not text_of(probe).startswith("[POLICY DENIED] "), text_of(probe)
    over = await call(fleet, "agent-race", OPENAI, {"prompt": "probe", "width": 1})
    assert text_of(over).startswith("[POLICY DENIED] ") and RACE_RULE in text_of(over)
    ran = [e for e in executed(fleet) if e.get("grant") == "agent-race"][len(before) :]
    assert [e["tool"] for e in ran] == [GEMINI, OPENAI]
