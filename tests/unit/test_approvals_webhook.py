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

from authz.approvals.base import Approval, ApprovalRequest
from authz.approvals.memory import MemoryApprovalStore
from authz.approvals.webhook import WebhookNotifier
from authz.counters.memory import MemoryCounterStore
from authz.metrics import Metrics
from authz.server import build_approval_store, build_notifier
from authz.settings import Settings, SettingsError
from authz.stack import free_port
from tests.webhook_receiver import Receiver

SECRET = "webhook-shared-secret"
SECRET_VALUE = "sk-live-0123456789-argument-value"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


async def _approval(prompt: str = SECRET_VALUE) -> Approval:
    request = ApprovalRequest(
        grant_id="g1",
        grant_label="Agent One",
        policy="seed",
        policy_hash="ab" * 32,
        tool="image.generate.gemini",
        arguments={"prompt": prompt, "filenameHint": "fox-77", "size": {"w": 31337777}},
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
    assert payload["approval"] == approval.public(with_arguments=False)
    assert payload["approval"]["argument_keys"] == ["filenameHint", "prompt", "size"]
    assert "arguments" not in payload["approval"]
    for value in (SECRET_VALUE, "fox-77", "31337777"):
        assert value.encode() not in body  # keys only, never values
    assert SECRET.encode() not in body

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
    for name in ("MCP_AUTHZ_APPROVAL_WEBHOOK", "MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET"):
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

    from authz.grants import hash_token
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
