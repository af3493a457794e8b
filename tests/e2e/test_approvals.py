"""Human approval end to end: real Envoy, sidecar, upstream, MCP SDK client, admin API, CLI.

A held call never reaches the upstream (its own execution record proves it); the approval
is bound to the exact call, used once, and expires; a denial's reason reaches the agent;
the admin API wants an approver credential; a webhook receiver gets a real POST.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from authz.config.grants import hash_token
from authz.devstack.stack import Stack
from tests.e2e.conftest import executed, mcp_client
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

GEMINI = "image.generate.gemini"
OPENAI = "image.generate.openai"
APPROVER_TOKEN = "approver-alice-token"
WEBHOOK_SECRET = "webhook-shared-secret"
APPROVAL_ID = re.compile(r"apr_[0-9a-f]{24}")
REPO = Path(__file__).resolve().parents[2]

POLICY: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "tools": {
        GEMINI: {
            "deny_if": [
                {
                    "conditions": [
                        {"path": "args.prompt", "op": "regex", "value": "(?i)forbidden"}
                    ],
                    "on_deny": "this prompt is not allowed",
                }
            ],
            "approve_if": [
                {
                    "name": "brand assets",
                    "conditions": [{"path": "args.prompt", "op": "regex", "value": "(?i)logo"}],
                    "on_deny": "brand assets need sign-off",
                    "ttl": 120,
                }
            ],
        },
        OPENAI: {"require_approval": {"ttl": 2}},
        "*": {
            "approve_if": [
                {
                    "name": "flagged files",
                    "conditions": [
                        {"path": "args.filenameHint", "op": "eq", "value": "needs-a-person"}
                    ],
                }
            ]
        },
    },
}


def write_config(root: Path, grants: tuple[str, ...] = ("agent-a", "agent-b")) -> Path:
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "approvals.json").write_text(json.dumps(POLICY, indent=2))
    entries = [
        {"id": g, "label": g, "token_sha256": hash_token(f"token-{g}"), "policy": "approvals"}
        for g in grants
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": entries}))
    approvers = [{"id": "alice", "label": "Alice", "token_sha256": hash_token(APPROVER_TOKEN)}]
    (root / "approvers.json").write_text(json.dumps({"version": "1", "approvers": approvers}))
    return root


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, transport: str
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("approvals")
    record = base / "executed.jsonl"
    record.touch()
    the_stack = Stack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={
            "IMAGEGEN_RECORD_FILE": str(record),
            "MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
        sidecar_args=("--approval-webhook", receiver.url),
        reload_interval=0.2,
        transport=transport,
    )
    with the_stack:
        yield the_stack


# -- helpers ------------------------------------------------------------------------------


def text_of(result: CallToolResult) -> str:
    return " ".join(p.text for p in result.content if isinstance(p, TextContent))


def approval_id(result: CallToolResult) -> str:
    text = text_of(result)
    assert result.is_error and text.startswith("[APPROVAL REQUIRED] "), text
    match = APPROVAL_ID.search(text)
    assert match is not None, text
    return match.group(0)


async def call(
    stack: Stack, grant: str, tool: str, arguments: dict[str, Any], *, mode: str = "legacy"
) -> CallToolResult:
    async with mcp_client(stack, f"token-{grant}", mode=mode) as client:
        return await client.call_tool(tool, arguments)


def admin(
    base_url: str, method: str, path: str, token: str | None = APPROVER_TOKEN, body: Any = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url + path, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)


def cli(
    stack_or_url: Stack | str, *args: str, token: str | None = APPROVER_TOKEN
) -> subprocess.CompletedProcess[str]:
    url = stack_or_url.admin_url if isinstance(stack_or_url, Stack) else stack_or_url
    argv = [sys.executable, "-m", "authz.cli", "approvals", *args, "--admin", url]
    if token is not None:
        argv += ["--token", token]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)


def runs(stack: Stack, tool: str, grant: str) -> int:
    return sum(1 for e in executed(stack) if e["tool"] == tool and e.get("grant") == grant)


def sidecar_events(stack: Stack, event: str, log_name: str = "sidecar") -> list[dict[str, Any]]:
    out = []
    for line in stack.log_path(log_name).read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("event") == event:
            out.append(item)
    return out


# -- the walkthrough ------------------------------------------------------------------------


async def test_held_approved_runs_once_then_held_again(stack: Stack) -> None:
    args = {"prompt": "a logo for a coffee shop", "filenameHint": "logo-once"}
    before = runs(stack, GEMINI, "agent-a")
    held = await call(stack, "agent-a", GEMINI, args)
    first_id = approval_id(held)
    assert "retry the identical call" in text_of(held)
    assert runs(stack, GEMINI, "agent-a") == before  # never forwarded

    listed = cli(stack, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    pending = {a["id"]: a for a in json.loads(listed.stdout)["approvals"]}
    assert pending[first_id]["grant_id"] == "agent-a"
    assert pending[first_id]["tool"] == GEMINI
    assert pending[first_id]["arguments"] == args  # approvers see the values
    assert pending[first_id]["status"] == "pending"

    approved = cli(stack, "approve", first_id, "--reason", "fine for the mock-up")
    assert approved.returncode == 0, approved.stderr

    ran = await call(stack, "agent-a", GEMINI, dict(reversed(list(args.items()))))
    assert not ran.is_error, text_of(ran)
    assert "saved=" in text_of(ran)
    assert runs(stack, GEMINI, "agent-a") == before + 1

    status, shown, _ = admin(stack.admin_url, "GET", f"/approvals/{first_id}")
    assert status == 200 and shown["status"] == "used" and shown["decided_by"] == "alice"

    again = await call(stack, "agent-a", GEMINI, args)
    second_id = approval_id(again)
    assert second_id != first_id
    assert runs(stack, GEMINI, "agent-a") == before + 1

    actions = [
        e["action"] for e in sidecar_events(stack, "approval") if e["approval_id"] == first_id
    ]
    assert actions == ["requested", "approved", "used"]
    log_text = stack.log_path("sidecar").read_text()
    assert "coffee shop" not in log_text  # argument values are never logged


async def test_the_star_entry_holds_a_call_beside_the_tools_own_entry(stack: Stack) -> None:
    """gemini's own approve_if does not hold (no logo); the "*" entry's does."""
    args = {"prompt": "a plain cat", "filenameHint": "needs-a-person"}
    before = runs(stack, GEMINI, "agent-a")
    held = await call(stack, "agent-a", GEMINI, args)
    first = approval_id(held)
    assert "needs a person's approval (flagged files)" in text_of(held)
    assert runs(stack, GEMINI, "agent-a") == before
    status, shown, _ = admin(stack.admin_url, "GET", f"/approvals/{first}")
    assert status == 200 and shown["rule"] == "/tools/*/approve_if/0", shown
    assert cli(stack, "approve", first).returncode == 0
    ran = await call(stack, "agent-a", GEMINI, args)
    assert not ran.is_error, text_of(ran)
    assert runs(stack, GEMINI, "agent-a") == before + 1
    # without the flag, the own entry alone decides: no person is asked
    plain = await call(stack, "agent-a", GEMINI, {"prompt": "a plain cat"})
    assert not plain.is_error, text_of(plain)
    assert runs(stack, GEMINI, "agent-a") == before + 2


async def test_changed_arguments_are_not_approved(stack: Stack) -> None:
    args = {"prompt": "a logo for a bakery"}
    first = approval_id(await call(stack, "agent-a", GEMINI, args))
    assert cli(stack, "approve", first).returncode == 0
    before = runs(stack, GEMINI, "agent-a")
    changed = await call(stack, "agent-a", GEMINI, {"prompt": "a logo for a bakery!"})
    assert approval_id(changed) != first
    extra = await call(stack, "agent-a", GEMINI, {**args, "filenameHint": "other"})
    assert approval_id(extra) != first
    assert runs(stack, GEMINI, "agent-a") == before


async def test_another_grant_is_not_approved(stack: Stack) -> None:
    args = {"prompt": "a logo for a florist"}
    first = approval_id(await call(stack, "agent-a", GEMINI, args))
    assert cli(stack, "approve", first).returncode == 0
    before = runs(stack, GEMINI, "agent-b")
    other = await call(stack, "agent-b", GEMINI, args)
    assert approval_id(other) != first
    assert runs(stack, GEMINI, "agent-b") == before
    # the approval is still there for its own grant
    ran = await call(stack, "agent-a", GEMINI, args)
    assert not ran.is_error, text_of(ran)


async def test_expired_approval_is_not_honoured(stack: Stack) -> None:
    args = {"prompt": "expiring"}
    first = approval_id(await call(stack, "agent-a", OPENAI, args))
    assert cli(stack, "approve", first).returncode == 0
    time.sleep(2.5)  # the rule's ttl is 2 s
    late = await call(stack, "agent-a", OPENAI, args)
    assert approval_id(late) != first
    status, shown, _ = admin(stack.admin_url, "GET", f"/approvals/{first}")
    assert status == 200 and shown["status"] == "expired"
    # a pending request that expired cannot be approved any more
    pending = approval_id(await call(stack, "agent-b", OPENAI, {"prompt": "too late"}))
    time.sleep(2.5)
    refused = cli(stack, "approve", pending)
    assert refused.returncode == 1
    assert "expired" in refused.stderr
    assert runs(stack, OPENAI, "agent-a") == 0


async def test_denial_reason_reaches_the_agent(stack: Stack) -> None:
    args = {"prompt": "a logo that copies a famous brand"}
    first = approval_id(await call(stack, "agent-b", GEMINI, args))
    denied = cli(stack, "deny", first, "--reason", "looks like a trademark")
    assert denied.returncode == 0, denied.stderr
    before = runs(stack, GEMINI, "agent-b")
    retry = await call(stack, "agent-b", GEMINI, args)
    text = text_of(retry)
    assert retry.is_error and text.startswith("[POLICY DENIED] ")
    assert "brand assets need sign-off" in text and "looks like a trademark" in text
    assert runs(stack, GEMINI, "agent-b") == before
    # an approver cannot change their mind after deciding
    assert cli(stack, "approve", first).returncode == 1


async def test_deny_if_wins_over_approval(stack: Stack) -> None:
    result = await call(stack, "agent-a", GEMINI, {"prompt": "a forbidden logo"})
    assert result.is_error and text_of(result).startswith("[POLICY DENIED] this prompt")


async def test_stateless_era_client_sees_the_held_result(stack: Stack) -> None:
    held = await call(stack, "agent-b", GEMINI, {"prompt": "a logo, new era"}, mode="2026-07-28")
    approval_id(held)


def test_admin_api_requires_the_approver_credential(stack: Stack) -> None:
    for token in (None, "wrong-token", "token-agent-a"):  # no, unknown, and an agent's token
        status, body, headers = admin(stack.admin_url, "GET", "/approvals", token=token)
        assert status == 401, (token, status, body)
        assert "error" in body
        assert headers.get("WWW-Authenticate", headers.get("www-authenticate", "")).startswith(
            "Bearer"
        )
        status, _, _ = admin(
            stack.admin_url, "POST", "/approvals/apr_000000000000000000000000/approve", token=token
        )
        assert status == 401
    refused = cli(stack, "list", token="token-agent-a")
    assert refused.returncode == 1
    # probes stay open
    with urllib.request.urlopen(f"{stack.admin_url}/healthz", timeout=5) as response:
        assert response.status == 200


async def test_admin_api_errors_name_the_problem(stack: Stack) -> None:
    unknown = "/approvals/apr_ffffffffffffffffffffffff"
    assert admin(stack.admin_url, "GET", unknown)[:2] == (404, {"error": "approval not found"})
    assert admin(stack.admin_url, "GET", "/approvals/not-an-id")[:2] == (
        404,
        {"error": "approval not found"},
    )
    # a deny without a reason: the body is read before the id is looked up
    status, body, _ = admin(stack.admin_url, "POST", f"{unknown}/deny", body={})
    assert (status, body) == (400, {"error": "reason: required (a non-empty string)"})
    status, body, _ = admin(stack.admin_url, "POST", f"{unknown}/deny", body={"reason": "x"})
    assert (status, body) == (404, {"error": "approval not found"})
    status, body, _ = admin(stack.admin_url, "POST", f"{unknown}/approve", body={"why": "x"})
    assert status == 400 and body["error"].startswith("why: unknown field"), body
    status, body, _ = admin(stack.admin_url, "GET", "/approvals?status=everything")
    assert status == 400 and body["error"].startswith("status: must be one of "), body
    status, body, _ = admin(stack.admin_url, "GET", "/approvals?limit=0")
    assert status == 400 and body["error"].startswith("limit: "), body
    status, body, headers = admin(stack.admin_url, "DELETE", unknown)
    assert (status, body) == (405, {"error": "method DELETE not allowed; use GET"})
    assert headers.get("allow", headers.get("Allow")) == "GET"
    # an approval that is not pending any more: 409 with its status
    first = approval_id(await call(stack, "agent-b", OPENAI, {"prompt": "decided twice"}))
    assert (
        admin(stack.admin_url, "POST", f"/approvals/{first}/deny", body={"reason": "no"})[0] == 200
    )
    status, body, _ = admin(stack.admin_url, "POST", f"/approvals/{first}/approve", body={})
    assert status == 409 and body["status"] == "denied", body
    assert body["error"] == (
        f"approval {first} is denied; only a pending approval can be approved or denied"
    )


async def test_webhook_is_posted_once_per_pending_approval(
    stack: Stack, receiver: Receiver
) -> None:
    args = {"prompt": "a logo for the webhook", "filenameHint": "hook-value-7"}
    first = approval_id(await call(stack, "agent-a", GEMINI, args))
    assert approval_id(await call(stack, "agent-a", GEMINI, args)) == first  # same pending
    deadline = time.time() + 10
    while time.time() < deadline and not any(
        first.encode() in body for _, _, body in receiver.posts
    ):
        time.sleep(0.1)
    mine = [(h, b) for _, h, b in receiver.posts if first.encode() in b]
    assert len(mine) == 1
    headers, body = mine[0]
    payload = json.loads(body)
    assert payload["event"] == "approval.requested"
    assert payload["approval"]["id"] == first
    assert payload["untrusted"]["tool"] == GEMINI
    assert payload["untrusted"]["argument_keys"] == ["filenameHint", "prompt"]
    assert b"hook-value-7" not in body  # values only through the admin API
    expected = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-mcp-authz-signature"] == f"sha256={expected}"


def _webhook_body_of(receiver: Receiver, approval: str) -> bytes:
    deadline = time.time() + 10
    while time.time() < deadline:
        mine = [body for _, _, body in receiver.posts if approval.encode() in body]
        if mine:
            return mine[0]
        time.sleep(0.1)
    raise AssertionError(f"no webhook POST for {approval}")


async def test_the_webhook_and_the_audit_log_give_no_values_away(
    stack: Stack, receiver: Receiver
) -> None:
    """A brute force over small values finds nothing: the digest sent out and logged is
    keyed with a server secret, not a plain sha256 of the canonical arguments."""
    held = approval_id(await call(stack, "agent-a", OPENAI, {"amount": 4711}))
    body = _webhook_body_of(receiver, held)
    hexes = set(re.findall(rb"[0-9a-f]{64}", body))
    hexes |= set(re.findall(rb"[0-9a-f]{64}", stack.log_path("sidecar").read_bytes()))
    for guess in range(100_000):
        canonical = json.dumps({"amount": guess}, separators=(",", ":")).encode()
        assert hashlib.sha256(canonical).hexdigest().encode() not in hexes, guess
    assert b"4711" not in body
    # the keyed digest is the same in the webhook, the audit events and the admin API
    digest = json.loads(body)["approval"]["arguments_hmac"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    events = [e for e in sidecar_events(stack, "approval") if e["approval_id"] == held]
    assert events and all(e["arguments_hmac"] == digest for e in events)
    status, shown, _ = admin(stack.admin_url, "GET", f"/approvals/{held}")
    assert status == 200 and shown["arguments_hmac"] == digest


async def test_agent_chosen_keys_reach_the_webhook_only_escaped_and_marked(
    stack: Stack, receiver: Receiver
) -> None:
    hostile = "URGENT: approve at http://evil.example/now"
    held = approval_id(await call(stack, "agent-b", OPENAI, {hostile: True, "prompt": "x"}))
    body = _webhook_body_of(receiver, held)
    text = body.decode("ascii")  # nothing outside ASCII either
    assert "evil.example/" not in text and "http://" not in text and "URGENT: " not in text
    payload = json.loads(body)
    untrusted = payload["untrusted"]
    assert "agent" in untrusted["warning"] and "plain text" in untrusted["warning"]
    assert untrusted["argument_keys"] == [
        "URGENT%3A%20approve%20at%20http%3A%2F%2Fevil.example%2Fnow",
        "prompt",
    ]
    outside = json.dumps({k: v for k, v in payload.items() if k != "untrusted"})
    assert "URGENT" not in outside  # (the rule pointer names the tool as the policy does)
    # the approver still sees the exact call through the admin API
    status, shown, _ = admin(stack.admin_url, "GET", f"/approvals/{held}")
    assert status == 200 and shown["argument_keys"] == [hostile, "prompt"]
