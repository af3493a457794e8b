"""Held calls are bounded: real Envoy, sidecar (memory and Redis stores), real redis-server,
a real webhook receiver, the admin API and the CLI.

- A flood of 600 held calls with 512 KiB arguments from one grant leaves the sidecar's RSS
  and Redis's memory within 50 MiB of where they started: arguments over the size bound are
  denied, not stored.
- A grant may have at most 100 pending approvals; past that its new held calls are denied,
  naming the cap, while its retries and other grants are held as before.
- `GET /approvals` answers in pages; the CLI follows them.
- The webhook queue is fair per grant: a grant's backlog of notices does not delay another
  grant's notice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from authz.config.grants import hash_token
from authz.devstack import faults
from authz.devstack.stack import Stack
from tests.e2e.conftest import executed
from tests.redis_server import RedisServer
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

GEMINI = "image.generate.gemini"
APPROVER = "flood-approver-token"
CAP = 100
"""The per-grant cap on pending approvals (the default)."""
ARGUMENT_BOUND = 64 * 1024
"""The bound on the canonical JSON of a held call's arguments (the default)."""
MIB = 1024 * 1024
GRANTS = ("flood", "capped", "other", "fair-a", "fair-b")
POLICY = {"version": "1", "default": "deny", "tools": {GEMINI: {"require_approval": {"ttl": 600}}}}
REPO = Path(__file__).resolve().parents[2]


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "held.json").write_text(json.dumps(POLICY))
    grants = [
        {"id": g, "label": g, "token_sha256": hash_token(f"token-{g}"), "policy": "held"}
        for g in GRANTS
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    approvers = [{"id": "alice", "token_sha256": hash_token(APPROVER)}]
    (root / "approvers.json").write_text(json.dumps({"version": "1", "approvers": approvers}))
    return root


def make_stack(base: Path, *args: str, transport: str) -> Stack:
    record = base / "executed.jsonl"
    record.touch()
    return Stack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        sidecar_args=args,
        transport=transport,
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture(scope="module")
def memory_stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("flood-memory")
    with make_stack(base, "--approval-webhook", receiver.url, transport=transport) as stack:
        yield stack


@pytest.fixture(scope="module")
def redis_stack(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("flood-redis")
    redis.command("FLUSHALL")  # one Redis server for both transports' stacks
    with make_stack(base, "--redis-url", redis.url, transport=transport) as stack:
        yield stack


# -- helpers --------------------------------------------------------------------------------


def held_body(rid: int, arguments: dict[str, Any]) -> bytes:
    message = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": GEMINI, "arguments": arguments},
    }
    return json.dumps(message, separators=(",", ":")).encode()


def call(stack: Stack, grant: str, rid: int, arguments: dict[str, Any]) -> str:
    """One tools/call through Envoy; the text of the tool result (a held or denied call)."""
    status, _, body = stack.post_raw(
        held_body(rid, arguments),
        {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer token-{grant}",
        },
    )
    assert status == 200, (status, body[:300])
    result = json.loads(body)["result"]
    assert result["isError"] is True
    return str(result["content"][0]["text"])


def flood(stack: Stack, grant: str, arguments: list[dict[str, Any]]) -> list[str]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda ia: call(stack, grant, ia[0], ia[1]), enumerate(arguments)))


def approval_id_of(text: str) -> str:
    assert text.startswith("[APPROVAL REQUIRED] "), text[:300]
    start = text.index("apr_")
    return text[start : start + 28]


def rss_mib(stack: Stack) -> float:
    return faults.sample(stack, "sidecar").rss_kb / 1024


def redis_used_mib(redis: RedisServer) -> float:
    info = redis.command("INFO", "memory").decode()
    for line in info.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1]) / MIB
    raise AssertionError(f"no used_memory in INFO memory: {info[:200]}")


def admin_get(stack: Stack, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        stack.admin_url + path, headers={"Authorization": f"Bearer {APPROVER}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def all_pages(stack: Stack, status: str) -> tuple[list[dict[str, Any]], int, int]:
    """Every approval of `status` by following `next`: (approvals, pages, largest page)."""
    found: list[dict[str, Any]] = []
    path = f"/approvals?status={status}"
    pages = largest = 0
    while True:
        code, raw = admin_get(stack, path)
        assert code == 200
        pages += 1
        largest = max(largest, len(raw))
        page = json.loads(raw)
        found += page["approvals"]
        if not page.get("next"):
            return found, pages, largest
        path = f"/approvals?status={status}&after={page['next']}"


def large_arguments(count: int, start: int = 0) -> list[dict[str, Any]]:
    filler = "x" * (512 * 1024)
    return [{"prompt": filler, "n": start + i} for i in range(count)]


# -- the flood ------------------------------------------------------------------------------


def _flood_stays_bounded(stack: Stack, redis: RedisServer | None) -> None:
    flood(stack, "flood", large_arguments(20, start=10_000))  # warm up: buffers, allocator
    time.sleep(0.5)
    rss_before = rss_mib(stack)
    redis_before = redis_used_mib(redis) if redis is not None else 0.0

    started = time.monotonic()
    answers = flood(stack, "flood", large_arguments(600))
    seconds = time.monotonic() - started
    time.sleep(0.5)
    rss_grown = rss_mib(stack) - rss_before
    redis_grown = redis_used_mib(redis) - redis_before if redis is not None else 0.0
    print(
        f"\n600 held calls of 512 KiB in {seconds:.1f} s: sidecar RSS {rss_before:.1f} MiB "
        f"+{rss_grown:.1f} MiB"
        + (f", Redis used_memory {redis_before:.1f} MiB +{redis_grown:.1f} MiB" if redis else "")
    )
    assert rss_grown < 50, f"the sidecar grew by {rss_grown:.1f} MiB"
    assert redis_grown < 50, f"Redis grew by {redis_grown:.1f} MiB"
    # each call was denied, naming the bound, and none was held or run
    assert all(a.startswith("[POLICY DENIED] ") for a in answers), answers[0][:300]
    assert all("arguments" in a and str(ARGUMENT_BOUND) in a for a in answers), answers[0]
    assert not any(e["grant"] == "flood" for e in executed(stack) if "grant" in e)
    status, raw = admin_get(stack, "/approvals?status=all")
    assert status == 200 and len(raw) < MIB
    assert not [a for a in json.loads(raw)["approvals"] if a["grant_id"] == "flood"]


def test_a_flood_of_large_held_calls_stays_bounded_in_memory(memory_stack: Stack) -> None:
    _flood_stays_bounded(memory_stack, None)


def test_a_flood_of_large_held_calls_stays_bounded_in_redis(
    redis_stack: Stack, redis: RedisServer
) -> None:
    _flood_stays_bounded(redis_stack, redis)


# -- the per-grant cap and the listing --------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.processes
def test_pending_approvals_are_capped_per_grant(
    request: pytest.FixtureRequest, store: str, transport: str
) -> None:
    stack: Stack = request.getfixturevalue(f"{store}_stack")
    arguments = [{"prompt": "p" * 1024, "n": i} for i in range(CAP + 20)]
    answers = flood(stack, "capped", arguments)
    held = [a for a in answers if a.startswith("[APPROVAL REQUIRED] ")]
    denied = [a for a in answers if a.startswith("[POLICY DENIED] ")]
    assert (len(held), len(denied)) == (CAP, 20), answers[-1][:300]
    assert len({approval_id_of(a) for a in held}) == CAP
    assert all(f"{CAP} pending approvals" in a for a in denied), denied[0]
    assert all("prompt" not in a and "ppp" not in a for a in denied)  # no argument echoed

    # a retry of a held call still finds its approval; another grant is not capped
    first = held[0]
    index = next(i for i, a in enumerate(answers) if a == first)
    assert approval_id_of(call(stack, "capped", 1, arguments[index])) == approval_id_of(first)
    assert call(stack, "other", 2, arguments[0]).startswith("[APPROVAL REQUIRED] ")

    # deciding one frees a place
    assert call(stack, "capped", 3, {"prompt": "one more"}).startswith("[POLICY DENIED] ")
    decided = approval_id_of(held[1])
    body = json.dumps({"reason": "no"}).encode()
    decide = urllib.request.Request(
        f"{stack.admin_url}/approvals/{decided}/deny",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {APPROVER}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(decide, timeout=10) as response:
        assert response.status == 200
    assert call(stack, "capped", 4, {"prompt": "one more"}).startswith("[APPROVAL REQUIRED] ")

    # the listing comes in pages; every pending approval is on one of them
    pending, pages, largest = all_pages(stack, "pending")
    capped = [a for a in pending if a["grant_id"] == "capped"]
    assert len(capped) == CAP
    assert pages >= 2 and largest < MIB
    argv = ["approvals", "list", "--json", "--admin", stack.admin_url, "--token", APPROVER]
    cli = subprocess.run(
        [sys.executable, "-m", "authz.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert cli.returncode == 0, cli.stderr
    listed = json.loads(cli.stdout)["approvals"]
    assert {a["id"] for a in listed} == {a["id"] for a in pending}


# -- a fair webhook queue -----------------------------------------------------------------------


def _quiet(receiver: Receiver, seconds: float = 1.5, timeout: float = 60.0) -> None:
    """Wait until no POST has arrived for `seconds`."""
    deadline = time.monotonic() + timeout
    count, since = len(receiver.posts), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if len(receiver.posts) != count:
            count, since = len(receiver.posts), time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
    raise AssertionError("the webhook receiver never went quiet")


def test_one_grants_backlog_does_not_delay_anothers_notice(
    memory_stack: Stack, receiver: Receiver
) -> None:
    _quiet(receiver)
    already = len(receiver.posts)
    receiver.close_gate()  # a slow receiver: the notices of fair-a pile up
    try:
        a_held = flood(memory_stack, "fair-a", [{"prompt": f"a-{i}"} for i in range(CAP)])
        b_held = call(memory_stack, "fair-b", 1, {"prompt": "b"})
    finally:
        receiver.open_gate()
    b_id = approval_id_of(b_held)
    a_ids = {approval_id_of(a) for a in a_held}
    deadline = time.monotonic() + 60
    order: list[str] = []
    while time.monotonic() < deadline:
        order = []
        for payload in receiver.payloads()[already:]:
            approval = payload["approval_id"]
            if approval not in order:
                order.append(approval)
        if b_id in order:
            break
        time.sleep(0.1)
    assert b_id in order, "fair-b's notice never arrived"
    position = order.index(b_id)
    a_before = len([x for x in order[:position] if x in a_ids])
    print(f"\nfair-b's notice arrived after {a_before} of fair-a's {CAP}")
    assert a_before <= 10, f"fair-b's notice waited behind {a_before} of fair-a's"
