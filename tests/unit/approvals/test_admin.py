"""The approvals admin API over real HTTP: the sidecar's admin app on uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import structlog

from authz.approvals.base import ApprovalRequest, ApprovalStoreUnavailable
from authz.approvals.listener import admin_config
from authz.approvals.memory import MemoryApprovalStore
from authz.config.grants import hash_token
from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.devstack.stack import free_port
from authz.metrics import Metrics
from authz.model import Approval, ApprovalStatus
from authz.server import StoreHealth, _AdminServer, admin_app

T = TypeVar("T")

TOOL = "image.generate.gemini"
POLICY = {"version": "1", "default": "deny", "tools": {TOOL: {}}}
ALICE = "alice-admin-token"
BOB = "bob-admin-token"
AGENT = "agent-grant-token"
ARGS = {"prompt": "a red fox in the snow", "n": 2}


def write_config(root: Path, *, approvers: bool = True) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "seed.json").write_text(json.dumps(POLICY))
    (root / "policies" / "other.json").write_text(json.dumps({**POLICY, "default": "allow"}))
    grants = {
        "version": "1",
        "grants": [
            {"id": "g1", "label": "G1", "token_sha256": hash_token(AGENT), "policy": "seed"},
            {"id": "g2", "label": "G2", "token_sha256": hash_token("other"), "policy": "seed"},
        ],
    }
    (root / "grants.json").write_text(json.dumps(grants))
    if approvers:
        entries = [
            {"id": "alice", "label": "Alice", "token_sha256": hash_token(ALICE)},
            {"id": "bob", "token_sha256": hash_token(BOB)},
        ]
        (root / "approvers.json").write_text(json.dumps({"version": "1", "approvers": entries}))
    return root


class UnavailableStore(MemoryApprovalStore):
    async def get(self, approval_id: str, now: float) -> Approval:
        raise ApprovalStoreUnavailable("redis timed out")

    async def list_approvals(
        self, now: float, *, statuses: Sequence[ApprovalStatus] = (), **_page: Any
    ) -> list[Approval]:
        raise ApprovalStoreUnavailable("redis timed out")


class RunningAdmin:
    """The sidecar's admin app on uvicorn, in a thread with its own event loop."""

    def __init__(self, root: Path, store: MemoryApprovalStore | None = None) -> None:
        self.root = root
        self.source = ConfigSource.open(root)
        self.store = store if store is not None else MemoryApprovalStore()
        self.metrics = Metrics(self.source)
        counters = MemoryCounterStore()
        app = admin_app(
            self.source,
            counters,
            StoreHealth(counters, shared=False),
            False,
            self.metrics,
            approvals=self.store,
        )
        self.port = free_port()
        self.server = _AdminServer(admin_config(app, host="127.0.0.1", port=self.port))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunningAdmin:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the admin server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def hold(
        self,
        *,
        grant: str = "g1",
        policy: str = "seed",
        arguments: dict[str, Any] | None = None,
        ttl: int = 600,
        now: float | None = None,
    ) -> Approval:
        """A pending approval as the Authorizer would create it for a held call."""
        request = ApprovalRequest(
            grant_id=grant,
            grant_label=grant.upper(),
            policy=policy,
            policy_hash=self.source.current.policies[policy].content_hash,
            tool=TOOL,
            arguments=ARGS if arguments is None else arguments,
            rule=f"/tools/{TOOL}/approve_if/0",
            ttl_seconds=ttl,
            decision_id="d" * 24,
        )
        approval, created = self.run(
            self.store.request(request, time.time() if now is None else now)
        )
        assert created
        return approval


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[RunningAdmin]:
    running = RunningAdmin(write_config(tmp_path)).start()
    try:
        yield running
    finally:
        running.stop()


def call(
    admin: RunningAdmin,
    method: str,
    path: str,
    *,
    token: str | None = ALICE,
    body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    with httpx.Client(base_url=admin.url, timeout=10, trust_env=False) as client:
        if body is not None:
            return client.request(method, path, json=body, headers=sent)
        return client.request(method, path, content=content, headers=sent)


# -- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "missing bearer token"),
        ("not-a-token", "unknown approver token"),
        (AGENT, "unknown approver token"),  # an agent's grant token is no approver token
        (hash_token(ALICE), "unknown approver token"),  # nor is the stored hash
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/approvals"),
        ("GET", "/approvals/apr_0123456789abcdef01234567"),
        ("POST", "/approvals/apr_0123456789abcdef01234567/approve"),
        ("POST", "/approvals/apr_0123456789abcdef01234567/deny"),
    ],
)
def test_every_route_wants_an_approver_token(
    admin: RunningAdmin, token: str | None, message: str, method: str, path: str
) -> None:
    approval = admin.hold()
    response = call(
        admin,
        method,
        path.replace("apr_0123456789abcdef01234567", approval.id),
        token=token,
        body={"reason": "x"} if method == "POST" else None,
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="mcp-authz-admin"')
    assert message in response.json()["error"]
    # nothing was decided
    assert admin.run(admin.store.get(approval.id, time.time())).status is ApprovalStatus.PENDING


def test_malformed_authorization_and_probes_stay_open(admin: RunningAdmin) -> None:
    for value in (f"Basic {ALICE}", f"Bearer  {ALICE}", f"Bearer {ALICE}, Bearer {BOB}"):
        response = call(admin, "GET", "/approvals", token=None, headers={"Authorization": value})
        assert response.status_code == 401, value
    for path in ("/healthz", "/readyz", "/metrics"):
        assert call(admin, "GET", path, token=None).status_code == 200


@pytest.mark.processes
def test_without_approvers_file_every_call_is_refused_with_a_hint(tmp_path: Path) -> None:
    running = RunningAdmin(write_config(tmp_path, approvers=False)).start()
    try:
        response = call(running, "GET", "/approvals", token=ALICE)
        assert response.status_code == 401
        assert "approvers.json" in response.json()["error"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    finally:
        running.stop()


def test_an_approver_removed_by_a_reload_is_refused(admin: RunningAdmin) -> None:
    assert call(admin, "GET", "/approvals", token=BOB).status_code == 200
    entries = [{"id": "alice", "token_sha256": hash_token(ALICE)}]
    (admin.root / "approvers.json").write_text(json.dumps({"version": "1", "approvers": entries}))
    with structlog.testing.capture_logs():
        assert admin.source.poll() is True
    assert call(admin, "GET", "/approvals", token=BOB).status_code == 401
    assert call(admin, "GET", "/approvals", token=ALICE).status_code == 200


# -- reading ------------------------------------------------------------------------------


def test_list_shows_pending_with_arguments_and_filters_by_status(admin: RunningAdmin) -> None:
    first = admin.hold()
    second = admin.hold(grant="g2", arguments={"prompt": "second"})
    expired = admin.hold(arguments={"prompt": "old"}, ttl=5, now=time.time() - 60)

    response = call(admin, "GET", "/approvals")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    listed = response.json()["approvals"]
    assert [a["id"] for a in listed] == [first.id, second.id]  # pending only, oldest first
    one = listed[0]
    assert one["status"] == "pending" and one["stale"] is False
    assert one["arguments"] == ARGS and one["argument_keys"] == ["n", "prompt"]
    assert one["grant_id"] == "g1" and one["tool"] == TOOL
    assert one["policy_hash"] == admin.source.current.policies["seed"].content_hash

    by_status = call(admin, "GET", "/approvals?status=expired").json()["approvals"]
    assert [a["id"] for a in by_status] == [expired.id]
    assert by_status[0]["status"] == "expired"
    everything = call(admin, "GET", "/approvals?status=all").json()["approvals"]
    assert {a["id"] for a in everything} == {first.id, second.id, expired.id}
    assert call(admin, "GET", "/approvals?status=approved").json()["approvals"] == []

    bad = call(admin, "GET", "/approvals?status=bogus")
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("status: must be one of pending")


def test_the_listing_comes_in_pages(admin: RunningAdmin) -> None:
    held = [admin.hold(arguments={"n": n}) for n in range(5)]
    first = call(admin, "GET", "/approvals").json()
    assert [a["id"] for a in first["approvals"]] == [a.id for a in held]
    assert first["next"] is None  # all on one page
    seen, path, pages = [], "/approvals?limit=2", 0
    while True:
        page = call(admin, "GET", path).json()
        pages += 1
        seen += [a["id"] for a in page["approvals"]]
        if page["next"] is None:
            break
        assert len(page["approvals"]) == 2
        path = f"/approvals?limit=2&after={page['next']}"
    assert seen == [a.id for a in held] and pages == 3
    exact = call(admin, "GET", "/approvals?limit=5").json()
    assert len(exact["approvals"]) == 5 and exact["next"] is None
    for query, field in (
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("after=nope", "after"),
        ("after=1.5_apr_0", "after"),
    ):
        refused = call(admin, "GET", f"/approvals?{query}")
        assert refused.status_code == 400, query
        assert refused.json()["error"].startswith(f"{field}: ")


def test_used_or_expired_approvals_no_longer_show_values(admin: RunningAdmin) -> None:
    expired = admin.hold(now=time.time() - 700)
    shown = call(admin, "GET", f"/approvals/{expired.id}").json()
    assert shown["status"] == "expired" and shown["arguments"] is None
    assert shown["argument_keys"] == ["n", "prompt"] and len(shown["arguments_hmac"]) == 64
    assert "arguments_sha256" not in shown


def test_show_one_and_unknown_ids(admin: RunningAdmin) -> None:
    approval = admin.hold()
    shown = call(admin, "GET", f"/approvals/{approval.id}")
    assert shown.status_code == 200
    body = shown.json()
    assert body["id"] == approval.id and body["arguments"] == ARGS and body["stale"] is False
    assert body["decided_by"] is None

    for path in (
        "/approvals/apr_ffffffffffffffffffffffff",
        "/approvals/not-an-id",
        "/approvals/apr_FFFF",
        "/approvals/%2e%2e",
    ):
        missing = call(admin, "GET", path)
        assert missing.status_code == 404, path
        assert "not found" in missing.json()["error"]


def test_wrong_method_is_a_json_405(admin: RunningAdmin) -> None:
    approval = admin.hold()
    response = call(admin, "GET", f"/approvals/{approval.id}/approve")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "use POST" in response.json()["error"]
    assert call(admin, "DELETE", "/approvals").status_code == 405
    # still authentication first: no hint about routes without a credential
    assert call(admin, "DELETE", "/approvals", token=None).status_code == 401


# -- deciding -----------------------------------------------------------------------------


def test_approve_records_the_credentials_approver_and_audits(admin: RunningAdmin) -> None:
    approval = admin.hold()
    with structlog.testing.capture_logs() as logs:
        response = call(
            admin,
            "POST",
            f"/approvals/{approval.id}/approve",
            token=BOB,
            body={"reason": "  fine for the mock-up "},
            headers={"X-Approver": "mallory", "X-Forwarded-User": "mallory"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "approved"
    assert body["decided_by"] == "bob"  # from the credential, never a header
    assert body["reason"] == "fine for the mock-up"
    assert body["arguments"] == ARGS and body["stale"] is False
    stored = admin.run(admin.store.get(approval.id, time.time()))
    assert stored.status is ApprovalStatus.APPROVED and stored.decided_by == "bob"

    audit = [e for e in logs if e["event"] == "approval"]
    assert len(audit) == 1
    assert audit[0]["action"] == "approved" and audit[0]["approver"] == "bob"
    assert audit[0]["approval_id"] == approval.id
    assert "a red fox" not in json.dumps(logs, default=str)  # argument values never logged
    assert ALICE not in json.dumps(logs, default=str) and BOB not in json.dumps(logs, default=str)

    again = call(admin, "POST", f"/approvals/{approval.id}/approve")
    assert again.status_code == 409
    assert again.json()["status"] == "approved"
    assert "is approved" in again.json()["error"]
    denied_late = call(admin, "POST", f"/approvals/{approval.id}/deny", body={"reason": "no"})
    assert denied_late.status_code == 409

    metrics = call(admin, "GET", "/metrics", token=None).text
    assert 'mcp_authz_approvals_total{action="approved"} 1.0' in metrics


def test_approve_without_a_body(admin: RunningAdmin) -> None:
    approval = admin.hold()
    response = call(admin, "POST", f"/approvals/{approval.id}/approve")
    assert response.status_code == 200
    assert response.json()["status"] == "approved" and response.json()["reason"] is None
    assert response.json()["decided_by"] == "alice"


def test_deny_needs_a_reason_and_records_it(admin: RunningAdmin) -> None:
    approval = admin.hold()
    path = f"/approvals/{approval.id}/deny"
    refusals: list[tuple[bytes | None, str]] = [
        (None, "reason: required"),
        (b"{}", "reason: required"),
        (b'{"reason": "   "}', "reason: must not be empty"),
        (b'{"reason": 5}', "reason: must be a string"),
        (b'{"reason": null}', "reason: required"),
        (json.dumps({"reason": "x" * 1001}).encode(), "reason: at most 1000"),
        (b'{"reason": "two\\nlines"}', "reason: must be one line"),
        (b'{"reason": "bidi \\u202e"}', "reason: must be one line"),
        (b'{"reason": "\\ud800"}', "reason: contains a lone surrogate"),
        (b'{"reason": "no", "decided_by": "mallory"}', "decided_by: unknown field"),
        (b"[1, 2]", "body: must be a JSON object"),
        (b"not json", "body: not valid JSON"),
        (b"\xff\xfe", "body: not valid JSON"),
    ]
    for content, message in refusals:
        response = call(admin, "POST", path, content=content)
        assert response.status_code == 400, (content, response.text)
        assert message in response.json()["error"], (content, response.json())
    assert admin.run(admin.store.get(approval.id, time.time())).status is ApprovalStatus.PENDING

    with structlog.testing.capture_logs() as logs:
        response = call(admin, "POST", path, body={"reason": "x" * 1000})
    assert response.status_code == 200
    assert response.json()["status"] == "denied" and response.json()["reason"] == "x" * 1000
    assert response.json()["decided_by"] == "alice"
    assert [e["action"] for e in logs if e["event"] == "approval"] == ["denied"]
    assert call(admin, "POST", f"/approvals/{approval.id}/approve").status_code == 409
    metrics = call(admin, "GET", "/metrics", token=None).text
    assert 'mcp_authz_approvals_total{action="denied"} 1.0' in metrics


def test_body_size_is_limited(admin: RunningAdmin) -> None:
    approval = admin.hold()
    big = json.dumps({"reason": "x" * (70 * 1024)}).encode()
    response = call(admin, "POST", f"/approvals/{approval.id}/deny", content=big)
    assert response.status_code == 413
    assert "body" in response.json()["error"]


def test_decisions_on_unknown_or_expired_approvals(admin: RunningAdmin) -> None:
    missing = call(admin, "POST", "/approvals/apr_ffffffffffffffffffffffff/approve")
    assert missing.status_code == 404
    expired = admin.hold(ttl=5, now=time.time() - 60)
    response = call(admin, "POST", f"/approvals/{expired.id}/approve")
    assert response.status_code == 409
    assert "expired" in response.json()["error"] and response.json()["status"] == "expired"
    response = call(admin, "POST", f"/approvals/{expired.id}/deny", body={"reason": "late"})
    assert response.status_code == 409
    metrics = call(admin, "GET", "/metrics", token=None).text
    assert 'mcp_authz_approvals_total{action="expired"} 2.0' in metrics


# -- stale approvals ------------------------------------------------------------------------


def _reload(admin: RunningAdmin) -> None:
    with structlog.testing.capture_logs():
        assert admin.source.poll() is True


def test_a_changed_policy_makes_pending_approvals_stale(admin: RunningAdmin) -> None:
    first = admin.hold()
    second = admin.hold(arguments={"prompt": "other"})
    (admin.root / "policies" / "seed.json").write_text(
        json.dumps({**POLICY, "tools": {TOOL: {}, "another.tool": {}}})
    )
    _reload(admin)

    listed = call(admin, "GET", "/approvals").json()["approvals"]
    assert [a["stale"] for a in listed] == [True, True]

    refused = call(admin, "POST", f"/approvals/{first.id}/approve")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error.startswith("the policy changed since this call was held")
    assert "the agent's next call will be judged by the new policy" in error
    assert "'seed' changed" in error
    assert refused.json()["stale"] is True
    assert admin.run(admin.store.get(first.id, time.time())).status is ApprovalStatus.PENDING

    denied = call(admin, "POST", f"/approvals/{second.id}/deny", body={"reason": "stale"})
    assert denied.status_code == 200 and denied.json()["status"] == "denied"
    metrics = call(admin, "GET", "/metrics", token=None).text
    assert 'mcp_authz_approvals_total{action="stale"} 1.0' in metrics


@pytest.mark.parametrize(
    ("grants", "expected"),
    [
        ([{"id": "g2", "token_sha256": hash_token("other"), "policy": "seed"}], "no longer exists"),
        (
            [{"id": "g1", "token_sha256": hash_token(AGENT), "policy": "other"}],
            "now uses policy 'other'",
        ),
    ],
)
def test_a_removed_or_moved_grant_makes_approvals_stale(
    admin: RunningAdmin, grants: list[dict[str, Any]], expected: str
) -> None:
    approval = admin.hold()
    (admin.root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    _reload(admin)
    shown = call(admin, "GET", f"/approvals/{approval.id}").json()
    assert shown["stale"] is True
    refused = call(admin, "POST", f"/approvals/{approval.id}/approve")
    assert refused.status_code == 409 and expected in refused.json()["error"]


def test_an_unchanged_reload_keeps_approvals_approvable(admin: RunningAdmin) -> None:
    approval = admin.hold()
    (admin.root / "policies" / "unrelated.json").write_text(json.dumps(POLICY))
    _reload(admin)
    assert call(admin, "POST", f"/approvals/{approval.id}/approve").status_code == 200


# -- store failures and readiness -------------------------------------------------------------


@pytest.mark.processes
def test_store_unavailable_is_a_503(tmp_path: Path) -> None:
    running = RunningAdmin(write_config(tmp_path), store=UnavailableStore()).start()
    try:
        with structlog.testing.capture_logs():
            listed = call(running, "GET", "/approvals")
            shown = call(running, "GET", "/approvals/apr_0123456789abcdef01234567")
            approved = call(running, "POST", "/approvals/apr_0123456789abcdef01234567/approve")
        for response in (listed, shown, approved):
            assert response.status_code == 503
            assert "unavailable" in response.json()["error"]
            assert response.headers["retry-after"] == "1"
    finally:
        running.stop()


def test_readiness_reports_approvals_and_approvers(admin: RunningAdmin) -> None:
    admin.hold()
    report = call(admin, "GET", "/readyz", token=None).json()
    assert report["approvals"] == "memory (1 approvals)"
    assert report["approvers"] == 2
    assert report["approval_webhook"] is None


# -- who may connect ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "remote", "status"),
    [
        ("10.1.2.3", False, 403),
        ("2001:db8::7", False, 403),
        ("10.1.2.3", True, 200),
        ("127.0.0.1", False, 200),
        ("::1", False, 200),
    ],
)
def test_approvals_answer_loopback_peers_unless_remote_is_allowed(
    tmp_path: Path, peer: str, remote: bool, status: int
) -> None:
    """The check uses the TCP peer (deployments bind the admin listener to every interface
    for probes); probes and /metrics stay open to everyone."""
    from starlette.testclient import TestClient

    source = ConfigSource.open(write_config(tmp_path / "config"))
    counters = MemoryCounterStore()
    app = admin_app(
        source,
        counters,
        StoreHealth(counters, shared=False),
        False,
        Metrics(source),
        approvals=MemoryApprovalStore(),
        approvals_remote=remote,
    )
    with TestClient(app, client=(peer, 50000)) as client:
        listed = client.get("/approvals", headers={"Authorization": f"Bearer {ALICE}"})
        assert listed.status_code == status, listed.text
        if status == 403:
            assert "loopback" in listed.json()["error"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


async def test_readiness_also_asks_the_approval_store() -> None:
    """A Redis approval store that does not answer makes the sidecar not ready, even when the
    counter store is fine (on a Redis Cluster the two can live on different shards)."""
    from authz.approvals.redis import RedisApprovalStore

    counters = MemoryCounterStore()
    dead = RedisApprovalStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        health = StoreHealth(counters, shared=True, also=(dead,))
        assert await health.probe() is False
        assert health.last_error is not None and "redis" in health.last_error
        assert await StoreHealth(counters, shared=True).probe() is True
    finally:
        await dead.close()
