"""The approval webhook against a real HTTP receiver on loopback; its settings and wiring."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from authz.approvals.base import ApprovalLimits, ApprovalRequest, arguments_digest
from authz.approvals.memory import MemoryApprovalStore
from authz.approvals.webhook import (
    UNTRUSTED_MAX_CHARS,
    UNTRUSTED_MAX_KEYS,
    UNTRUSTED_WARNING,
    WebhookNotifier,
    escape_untrusted,
    webhook_body,
)
from authz.config.settings import Settings, SettingsError
from authz.counters.memory import MemoryCounterStore
from authz.devstack.stack import free_port
from authz.metrics import Metrics
from authz.model import Approval
from authz.server import build_approval_store, build_notifier
from tests.webhook_receiver import Receiver

SECRET = "webhook-shared-secret"
SECRET_VALUE = "sk-live-0123456789-argument-value"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


async def _approval(
    prompt: str = SECRET_VALUE,
    *,
    grant: str = "g1",
    arguments: dict[str, object] | None = None,
    tool: str = "image.generate.gemini",
) -> Approval:
    request = ApprovalRequest(
        grant_id=grant,
        grant_label="Agent One",
        policy="seed",
        policy_hash="ab" * 32,
        tool=tool,
        arguments=arguments
        if arguments is not None
        else {"prompt": prompt, "filenameHint": "fox-77", "size": {"w": 31337777}},
        rule="/tools/image.generate.gemini/approve_if/0",
        ttl_seconds=300,
        decision_id="c" * 24,
    )
    approval, _ = await MemoryApprovalStore().request(request, time.time())
    return approval


async def test_posts_the_event_signed_without_argument_values(receiver: Receiver) -> None:
    results: list[str] = []
    notifier = WebhookNotifier(receiver.url, secret=SECRET, on_result=results.append)
    approval = await _approval()
    with structlog.testing.capture_logs() as logs:
        notifier.notify(approval)  # synchronous: only schedules
        assert receiver.posts == [] and notifier.pending == 1
        await notifier.drain()
    assert results == ["sent"]
    assert len(receiver.posts) == 1
    path, headers, body = receiver.posts[0]
    assert path == "/hooks/approvals?channel=ops"
    assert headers["content-type"] == "application/json"
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-mcp-authz-signature"] == f"sha256={expected}"

    payload = json.loads(body)
    assert payload["event"] == "approval.requested"
    assert payload["admin_path"] == f"/approvals/{approval.id}"
    assert payload["approval_id"] == approval.id and payload["grant_id"] == "g1"
    assert payload["expires_at"] == approval.expires_at
    assert payload["approval"] == {
        "id": approval.id,
        "status": "pending",
        "grant_id": "g1",
        "grant_label": "Agent One",
        "policy": "seed",
        "policy_hash": "ab" * 32,
        "rule": "/tools/image.generate.gemini/approve_if/0",
        "requested_at": approval.requested_at,
        "expires_at": approval.expires_at,
        "decision_id": "c" * 24,
        "arguments_hmac": approval.arguments_hmac,
        "argument_count": 3,
    }
    # what the agent chose, apart and escaped
    assert payload["untrusted"] == {
        "warning": UNTRUSTED_WARNING,
        "tool": "image.generate.gemini",
        "argument_keys": ["filenameHint", "prompt", "size"],
        "argument_keys_omitted": 0,
    }
    assert "tool" not in payload and "tool" not in payload["approval"]
    for value in (SECRET_VALUE, "fox-77", "31337777"):
        assert value.encode() not in body  # keys only, never values
    assert SECRET.encode() not in body
    # the digest is keyed: the plain sha256 of the arguments is nowhere
    assert arguments_digest(approval.arguments or {}).encode() not in body

    rendered = json.dumps(logs, default=str)
    assert SECRET not in rendered and SECRET_VALUE not in rendered
    assert "channel=ops" not in rendered  # a webhook URL's path/query may be a secret


async def test_without_a_secret_there_is_no_signature(receiver: Receiver) -> None:
    notifier = WebhookNotifier(receiver.url)
    notifier.notify(await _approval())
    await notifier.drain()
    (_path, headers, body) = receiver.posts[0]
    assert "x-mcp-authz-signature" not in headers
    assert json.loads(body)["event"] == "approval.requested"


@pytest.mark.processes
async def test_retries_after_a_500_then_succeeds() -> None:
    with Receiver(statuses=(500, 503)) as receiver:
        results: list[str] = []
        notifier = WebhookNotifier(
            receiver.url, secret=SECRET, backoff=0.01, on_result=results.append
        )
        with structlog.testing.capture_logs() as logs:
            notifier.notify(await _approval())
            await notifier.drain()
    assert len(receiver.posts) == 3
    bodies = {body for _, _, body in receiver.posts}
    signatures = {headers["x-mcp-authz-signature"] for _, headers, _ in receiver.posts}
    assert len(bodies) == 1 and len(signatures) == 1  # the same event, re-sent
    failed = [e for e in logs if e["event"] == "approval_webhook_failed"]
    assert [(e["status"], e["attempt"], e["will_retry"]) for e in failed] == [
        (500, 1, True),
        (503, 2, True),
    ]
    assert results == ["sent"]


@pytest.mark.processes
async def test_gives_up_after_the_attempts_and_logs_without_secrets() -> None:
    with Receiver(statuses=(500, 500, 500, 500)) as receiver:
        results: list[str] = []
        notifier = WebhookNotifier(
            receiver.url, secret=SECRET, attempts=3, backoff=0.01, on_result=results.append
        )
        with structlog.testing.capture_logs() as logs:
            notifier.notify(await _approval())
            await notifier.drain()
    assert len(receiver.posts) == 3
    assert results == ["failed"]
    failed = [e for e in logs if e["event"] == "approval_webhook_failed"]
    assert [e["will_retry"] for e in failed] == [True, True, False]
    assert all(e["status"] == 500 and e["log_level"] == "warning" for e in failed)
    rendered = json.dumps(logs, default=str)
    assert SECRET not in rendered and SECRET_VALUE not in rendered


@pytest.mark.processes
async def test_a_client_error_is_not_retried() -> None:
    with Receiver(statuses=(400,)) as receiver:
        results: list[str] = []
        notifier = WebhookNotifier(receiver.url, backoff=0.01, on_result=results.append)
        with structlog.testing.capture_logs():
            notifier.notify(await _approval())
            await notifier.drain()
    assert len(receiver.posts) == 1
    assert results == ["failed"]


async def test_connection_errors_are_retried_and_logged_by_type() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
    results: list[str] = []
    notifier = WebhookNotifier(url, attempts=2, backoff=0.01, timeout=2, on_result=results.append)
    with structlog.testing.capture_logs() as logs:
        notifier.notify(await _approval())
        await notifier.drain()
    failed = [e for e in logs if e["event"] == "approval_webhook_failed"]
    assert [(e["error"], e["status"], e["will_retry"]) for e in failed] == [
        ("ConnectError", None, True),
        ("ConnectError", None, False),
    ]
    assert results == ["failed"]


@pytest.mark.processes
async def test_slow_receivers_do_not_block_notify_and_drain_bounds_shutdown() -> None:
    release = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait(5)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        notifier = WebhookNotifier(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5)
        approval = await _approval()
        started = time.monotonic()
        for _ in range(5):
            notifier.notify(approval)
        assert (
            time.monotonic() - started < 1.0
        )  # the receiver holds each POST for 5 s: notify never waits on it
        with structlog.testing.capture_logs() as logs:
            await notifier.drain(timeout=0.3)
        assert time.monotonic() - started < 2
        assert notifier.pending == 0
        assert any(e.get("error") == "shutdown" for e in logs)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("prompt", "prompt"),
        ("filename_hint-2.x~", "filename_hint-2.x~"),
        (
            "URGENT: approve at http://evil.example/now",
            "URGENT%3A%20approve%20at%20http%3A%2F%2Fevil.example%2Fnow",
        ),
        ("<b>bold</b>", "%3Cb%3Ebold%3C%2Fb%3E"),
        ("[click](https://x.example)", "%5Bclick%5D%28https%3A%2F%2Fx.example%29"),
        ("line\nbreak\u202e", "line%0Abreak%E2%80%AE"),
        ("*_`@here`_*", "%2A_%60%40here%60_%2A"),
        ("é", "%C3%A9"),
        ("", ""),
    ],
)
def test_escape_untrusted(text: str, shown: str) -> None:
    assert escape_untrusted(text) == shown


def test_escape_untrusted_cuts_long_strings() -> None:
    assert escape_untrusted("a" * 100) == "a" * UNTRUSTED_MAX_CHARS + "..."
    assert escape_untrusted("a" * UNTRUSTED_MAX_CHARS) == "a" * UNTRUSTED_MAX_CHARS


async def test_agent_chosen_keys_reach_the_body_only_escaped_and_marked() -> None:
    hostile = "URGENT: approve at http://evil.example/now <b>approve</b>"
    keys = {hostile: 1, **{f"k{i:02d}": i for i in range(40)}}
    approval = await _approval(arguments=keys)
    body = webhook_body(approval)
    body.decode("ascii")  # every character outside ASCII is escaped too
    text = body.decode()
    assert "http://" not in text and "<b>" not in text and "URGENT: approve" not in text
    payload = json.loads(body)
    untrusted = payload["untrusted"]
    assert untrusted["warning"] == UNTRUSTED_WARNING
    assert len(untrusted["argument_keys"]) == UNTRUSTED_MAX_KEYS
    assert untrusted["argument_keys_omitted"] == len(keys) - UNTRUSTED_MAX_KEYS
    assert untrusted["argument_keys"][0].startswith("URGENT%3A%20approve%20at%20http%3A%2F%2F")
    assert payload["approval"]["argument_count"] == len(keys)
    outside = json.dumps({k: v for k, v in payload.items() if k != "untrusted"})
    assert "URGENT" not in outside and "k00" not in outside


@pytest.mark.processes
async def test_a_grants_flood_drops_only_its_own_notices() -> None:
    """Per-grant queues: grant A floods while the receiver is slow; A's surplus is dropped,
    B's one notice is delivered, and it goes out before A's backlog."""
    with Receiver() as receiver:
        results: list[str] = []
        notifier = WebhookNotifier(
            receiver.url,
            concurrency=1,
            max_pending_per_grant=3,
            on_result=results.append,
        )
        receiver.close_gate()
        flood = [await _approval(f"a-{i}", grant="A") for i in range(10)]
        with structlog.testing.capture_logs() as logs:
            notifier.notify(flood[0])
            for _ in range(100):  # the worker has taken A's first notice: it is in flight
                if receiver.posts:
                    break
                await asyncio.sleep(0.01)
            for approval in flood[1:]:
                notifier.notify(approval)
            b = await _approval("b", grant="B")
            notifier.notify(b)
        assert notifier.queued("A") == 3 and notifier.queued("B") == 1
        assert notifier.pending == 5  # 3 + 1 queued, 1 in flight
        receiver.open_gate()
        await notifier.drain()
        order = [p["approval_id"] for p in receiver.payloads()]
    assert order == [flood[0].id, flood[1].id, b.id, flood[2].id, flood[3].id]
    assert results.count("dropped") == 6 and results.count("sent") == 5
    dropped = [e for e in logs if "dropped" in str(e.get("error"))]
    assert {e["grant_id"] for e in dropped} == {"A"}
    assert {e["approval_id"] for e in dropped} == {a.id for a in flood[4:]}


@pytest.mark.processes
async def test_grants_take_turns() -> None:
    with Receiver() as receiver:
        notifier = WebhookNotifier(receiver.url, concurrency=1)
        receiver.close_gate()
        made = {
            g: [await _approval(f"{g}-{i}", grant=g) for i in range(n)]
            for g, n in (("A", 4), ("B", 2), ("C", 1))
        }
        for grant in ("A", "B", "C"):
            for approval in made[grant]:
                notifier.notify(approval)
        receiver.open_gate()
        await notifier.drain()
        grants = [p["grant_id"] for p in receiver.payloads()]
    # all queued before the worker's first turn: one each, in the order grants arrived
    assert grants == ["A", "B", "C", "A", "B", "A", "A"]


def test_notify_outside_an_event_loop_drops_without_raising(receiver: Receiver) -> None:
    approval = asyncio.run(_approval())
    results: list[str] = []
    notifier = WebhookNotifier(receiver.url, on_result=results.append)
    with structlog.testing.capture_logs():
        notifier.notify(approval)
    assert results == ["dropped"] and receiver.posts == []


def test_describe_hides_the_path_and_query() -> None:
    notifier = WebhookNotifier("https://hooks.example.com:8443/services/T0/B0/XXXX?k=v", "s")
    assert notifier.describe() == "webhook https://hooks.example.com:8443 (signed)"


# -- settings and wiring ----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "MCP_AUTHZ_APPROVAL_WEBHOOK",
        "MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET",
        "MCP_AUTHZ_APPROVAL_DIGEST_KEY",
        "MCP_AUTHZ_APPROVAL_MAX_PENDING",
        "MCP_AUTHZ_APPROVAL_MAX_ARGUMENT_BYTES",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _settings(approval_webhook: str | None = None) -> Settings:
    return Settings.build(config="/cfg", grpc=None, admin=None, approval_webhook=approval_webhook)


def test_webhook_settings_flags_env_and_secret(clean_env: pytest.MonkeyPatch) -> None:
    assert _settings().approval_webhook is None
    clean_env.setenv("MCP_AUTHZ_APPROVAL_WEBHOOK", "https://env.example/hook")
    assert _settings().approval_webhook == "https://env.example/hook"
    flagged = _settings(approval_webhook="http://flag.example:8080/hook")
    assert flagged.approval_webhook == "http://flag.example:8080/hook"  # flags win
    assert flagged.approval_webhook_secret is None

    clean_env.setenv("MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET", SECRET)
    settings = _settings()
    assert settings.approval_webhook_secret == SECRET
    assert SECRET not in repr(settings)  # never printed with the settings


def test_approval_bounds_and_digest_key_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    default = _settings()
    assert (default.approval_max_pending, default.approval_max_argument_bytes) == (100, 65536)
    assert default.approval_digest_key is None
    assert default.approval_max_pending == ApprovalLimits().max_pending_per_grant
    assert default.approval_max_argument_bytes == ApprovalLimits().max_argument_bytes
    clean_env.setenv("MCP_AUTHZ_APPROVAL_MAX_PENDING", "7")
    clean_env.setenv("MCP_AUTHZ_APPROVAL_MAX_ARGUMENT_BYTES", "2048")
    clean_env.setenv("MCP_AUTHZ_APPROVAL_DIGEST_KEY", "k" * 32)
    settings = _settings()
    assert (settings.approval_max_pending, settings.approval_max_argument_bytes) == (7, 2048)
    assert settings.approval_digest_key == "k" * 32
    assert "k" * 32 not in repr(settings)
    store = build_approval_store(settings, MemoryCounterStore())
    assert isinstance(store, MemoryApprovalStore)
    assert store.limits == ApprovalLimits(max_pending_per_grant=7, max_argument_bytes=2048)


async def test_replicas_with_one_digest_key_agree_on_the_digest(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("MCP_AUTHZ_APPROVAL_DIGEST_KEY", "shared-" + "k" * 20)
    one, two = (build_approval_store(_settings(), MemoryCounterStore()) for _ in "ab")
    request = ApprovalRequest(
        grant_id="g1",
        grant_label="g1",
        policy="seed",
        policy_hash="ab" * 32,
        tool="t",
        arguments={"amount": 4711},
        rule="/tools/t/approve_if/0",
        ttl_seconds=60,
    )
    a, _ = await one.request(request, time.time())
    b, _ = await two.request(request, time.time())
    assert a.arguments_hmac == b.arguments_hmac
    clean_env.delenv("MCP_AUTHZ_APPROVAL_DIGEST_KEY")
    c, _ = await build_approval_store(_settings(), MemoryCounterStore()).request(
        request, time.time()
    )
    assert c.arguments_hmac != a.arguments_hmac  # no key configured: one per process


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MCP_AUTHZ_APPROVAL_MAX_PENDING", "0"),
        ("MCP_AUTHZ_APPROVAL_MAX_PENDING", "ten"),
        ("MCP_AUTHZ_APPROVAL_MAX_ARGUMENT_BYTES", "-1"),
        ("MCP_AUTHZ_APPROVAL_MAX_ARGUMENT_BYTES", "2000000"),
        ("MCP_AUTHZ_APPROVAL_DIGEST_KEY", "short"),
    ],
)
def test_bad_approval_settings_name_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError, match=name) as raised:
        _settings()
    if name.endswith("DIGEST_KEY"):
        assert value not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "example.com/hook", "http://", "http://host:99999/", "http://a b/"],
)
def test_webhook_url_must_be_http_or_https(clean_env: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(SettingsError, match="--approval-webhook"):
        _settings(approval_webhook=url)


def test_sidecar_wiring_builds_store_and_notifier(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(config_dir=Path("/cfg"))
    assert isinstance(build_approval_store(settings, MemoryCounterStore()), MemoryApprovalStore)
    assert build_notifier(settings) is None

    clean_env.setenv("MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET", SECRET)
    with_hook = _settings(approval_webhook="https://hooks.example/a")
    metrics = Metrics()
    notifier = build_notifier(with_hook, metrics)
    assert isinstance(notifier, WebhookNotifier)
    assert notifier.url == "https://hooks.example/a"
    assert notifier.describe().endswith("(signed)")
    metrics.observe_webhook("sent")
    assert b'mcp_authz_approval_webhooks_total{result="sent"} 1.0' in metrics.render()


def test_serve_parses_the_webhook_flag() -> None:
    from authz.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--config", "/cfg", "--approval-webhook", "https://h.example/x"]
    )
    assert args.approval_webhook == "https://h.example/x"


async def test_the_sidecar_shares_one_store_and_mounts_the_api(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """Sidecar wiring: the Authorizer and the admin API use the same approval store, the
    notifier reaches the Authorizer, and readiness reports both."""
    import httpx

    from authz.config.grants import hash_token
    from authz.server import Sidecar

    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "seed.json").write_text('{"version":"1","default":"allow"}')
    grants = [{"id": "g1", "token_sha256": hash_token("agent"), "policy": "seed"}]
    (tmp_path / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    approvers = [{"id": "alice", "token_sha256": hash_token("alice-token")}]
    (tmp_path / "approvers.json").write_text(json.dumps({"version": "1", "approvers": approvers}))
    clean_env.setenv("MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET", SECRET)
    admin_port = free_port()
    settings = Settings.build(
        config=str(tmp_path),
        grpc=f"127.0.0.1:{free_port()}",
        admin=f"127.0.0.1:{admin_port}",
        approval_webhook=receiver.url,
    )
    with structlog.testing.capture_logs():
        sidecar = Sidecar(settings)
        assert sidecar.notifier is not None
        assert sidecar.authorizer._approvals is sidecar.approvals
        assert sidecar.authorizer._notify == sidecar.notifier.notify
        await sidecar.start()
        try:
            assert sidecar._admin is not None
            for _ in range(500):
                if sidecar._admin.started:
                    break
                await asyncio.sleep(0.01)
            held = await _approval()
            stored, _ = await sidecar.approvals.request(
                ApprovalRequest(
                    grant_id="g1",
                    grant_label="g1",
                    policy="seed",
                    policy_hash=sidecar.config.current.policies["seed"].content_hash,
                    tool=held.tool,
                    arguments={"prompt": "x"},
                    rule="/tools/t/approve_if/0",
                    ttl_seconds=60,
                ),
                time.time(),
            )
            sidecar.notifier.notify(stored)
            base = f"http://127.0.0.1:{admin_port}"
            async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
                ready = (await client.get("/readyz")).json()
                listed = await client.get(
                    "/approvals", headers={"Authorization": "Bearer alice-token"}
                )
                refused = await client.get("/approvals", headers={"Authorization": "Bearer agent"})
        finally:
            await sidecar.stop()
    assert ready["approvals"].startswith("memory") and ready["approvers"] == 1
    assert (
        ready["approval_webhook"]
        == f"webhook http://127.0.0.1:{receiver.server.server_address[1]} (signed)"
    )
    assert [a["id"] for a in listed.json()["approvals"]] == [stored.id]
    assert refused.status_code == 401
    # stop() drained the notifier: the POST has arrived
    assert [json.loads(body)["approval"]["id"] for _, _, body in receiver.posts] == [stored.id]


async def test_with_redis_the_approvals_borrow_the_counters_client() -> None:
    """One connection pool per sidecar: the approval store uses the counter store's client
    and leaves closing it to the counter store."""
    from authz.approvals.redis import RedisApprovalStore
    from authz.server import build_counter_store

    settings = Settings(config_dir=Path("/cfg"), redis_url="redis://127.0.0.1:1/0")
    counters = build_counter_store(settings)
    approvals = build_approval_store(settings, counters)
    assert isinstance(approvals, RedisApprovalStore)
    assert approvals.client is getattr(counters, "client", None)
    await approvals.close()
    await counters.close()
