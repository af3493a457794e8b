"""`mcp-authz approvals ...` as a subprocess against a real running admin API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from authz.approvals.admin import LIST_LIMIT
from authz.devstack.stack import free_port
from authz.model import ApprovalStatus
from tests.unit.approvals.test_admin import (
    AGENT,
    ALICE,
    ARGS,
    POLICY,
    TOOL,
    RunningAdmin,
    write_config,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[RunningAdmin]:
    running = RunningAdmin(write_config(tmp_path / "config")).start()
    try:
        yield running
    finally:
        running.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MCP_AUTHZ_")}
    return subprocess.run(
        [sys.executable, "-m", "authz.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**clean, **(env or {})},
    )


def approvals(
    admin: RunningAdmin, *args: str, token: str | None = ALICE
) -> subprocess.CompletedProcess[str]:
    argv = ["approvals", *args, "--admin", admin.url]
    if token is not None:
        argv += ["--token", token]
    return cli(*argv)


def test_credentials_are_required(admin: RunningAdmin) -> None:
    admin.hold()
    missing = approvals(admin, "list", token=None)
    assert missing.returncode == 1
    assert "missing bearer token" in missing.stderr and "HTTP 401" in missing.stderr
    assert missing.stdout == ""
    wrong = approvals(admin, "list", token="not-the-token")
    assert wrong.returncode == 1 and "unknown approver token" in wrong.stderr
    agent = approvals(admin, "list", token=AGENT)  # an agent's grant token
    assert agent.returncode == 1 and "HTTP 401" in agent.stderr
    assert AGENT not in agent.stderr


def test_list_as_a_table_with_env_token_and_bare_host_port(admin: RunningAdmin) -> None:
    first = admin.hold()
    second = admin.hold(grant="g2", arguments={"prompt": "second", "seed": 4})
    result = cli(
        "approvals",
        "list",
        env={"MCP_AUTHZ_ADMIN_URL": f"127.0.0.1:{admin.port}", "MCP_AUTHZ_ADMIN_TOKEN": ALICE},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "ID",
        "STATUS",
        "GRANT",
        "TOOL",
        "ARGUMENT KEYS",
        "EXPIRES IN",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {first.id, second.id}
    assert rows[first.id][1:5] == ["pending", "g1", TOOL, "n,prompt"]
    assert rows[second.id][1:5] == ["pending", "g2", TOOL, "prompt,seed"]
    assert re.fullmatch(r"(9|10)m\d\ds", rows[first.id][5])  # 600 s ttl
    assert "red fox" not in result.stdout  # the list shows keys, not values


def test_list_follows_the_pages(admin: RunningAdmin) -> None:
    held = [admin.hold(arguments={"n": n}) for n in range(LIST_LIMIT + 7)]  # two pages
    listed = approvals(admin, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["id"] for a in json.loads(listed.stdout)["approvals"]] == [a.id for a in held]
    table = approvals(admin, "list")
    assert table.returncode == 0, table.stderr
    assert {line.split()[0] for line in table.stdout.splitlines()[1:]} == {a.id for a in held}


def test_show_says_when_the_values_are_gone(admin: RunningAdmin) -> None:
    expired = admin.hold(now=time.time() - 700)
    shown = approvals(admin, "show", expired.id)
    assert shown.returncode == 0, shown.stderr
    assert "no longer kept" in shown.stdout and "red fox" not in shown.stdout
    assert "arguments hmac:" in shown.stdout


def test_list_json_status_and_all(admin: RunningAdmin) -> None:
    first = admin.hold()
    second = admin.hold(arguments={"prompt": "no"})
    assert approvals(admin, "deny", second.id, "--reason", "no thanks").returncode == 0

    as_json = approvals(admin, "list", "--json")
    assert as_json.returncode == 0
    listed = json.loads(as_json.stdout)["approvals"]
    assert [a["id"] for a in listed] == [first.id]
    assert listed[0]["arguments"] == ARGS and listed[0]["stale"] is False

    denied = json.loads(approvals(admin, "list", "--status", "denied", "--json").stdout)
    assert [(a["id"], a["reason"]) for a in denied["approvals"]] == [(second.id, "no thanks")]
    everything = approvals(admin, "list", "--all")
    assert first.id in everything.stdout and second.id in everything.stdout
    assert "denied" in everything.stdout
    empty = approvals(admin, "list", "--status", "used")
    assert empty.returncode == 0 and empty.stdout.strip() == "no used approvals"
    both = approvals(admin, "list", "--all", "--status", "used")
    assert both.returncode == 2  # usage error


def test_show_prints_everything_including_arguments(admin: RunningAdmin) -> None:
    approval = admin.hold()
    result = approvals(admin, "show", approval.id)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(rf"^id:\s+{approval.id}$", out, re.M)
    assert re.search(r"^status:\s+pending$", out, re.M)
    assert re.search(r"^grant:\s+g1$", out, re.M)
    assert re.search(rf"^tool:\s+{re.escape(TOOL)}$", out, re.M)
    assert re.search(r"^policy sha256:\s+[0-9a-f]{64}$", out, re.M)
    assert re.search(r"^expires in:\s+\d+m\d\ds$", out, re.M)
    arguments = out[out.index("arguments:\n") + len("arguments:\n") :]
    assert json.loads(arguments) == ARGS
    assert '  "prompt": "a red fox in the snow"' in arguments  # indented JSON

    as_json = json.loads(approvals(admin, "show", approval.id, "--json").stdout)
    assert as_json["id"] == approval.id and as_json["arguments"] == ARGS

    missing = approvals(admin, "show", "apr_ffffffffffffffffffffffff")
    assert missing.returncode == 1 and "not found" in missing.stderr and "404" in missing.stderr
    traversal = approvals(admin, "show", "../healthz")
    assert traversal.returncode == 1 and "404" in traversal.stderr


def test_show_escapes_terminal_control_characters(admin: RunningAdmin) -> None:
    approval = admin.hold(arguments={"prompt": "\x1b[2J\x9bclear \u202eevil", "k\x1b": 1})
    result = approvals(admin, "show", approval.id)
    assert result.returncode == 0, result.stderr
    for char in ("\x1b", "\x9b", "\u202e"):
        assert char not in result.stdout
    assert "\\u001b[2J" in result.stdout and "\\u202e" in result.stdout
    listed = approvals(admin, "list")
    assert "\x1b" not in listed.stdout and "k\\u001b" in listed.stdout


def test_approve_with_a_token_file_then_conflict(admin: RunningAdmin, tmp_path: Path) -> None:
    approval = admin.hold()
    token_file = tmp_path / "token"
    token_file.write_text(ALICE + "\n")
    base = ["approvals", "approve", approval.id, "--admin", admin.url]
    result = cli(*base, "--token-file", str(token_file), "--reason", "ok for the demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"approved {approval.id}: {TOOL} for grant g1 (by alice)"]
    stored = admin.run(admin.store.get(approval.id, time.time()))
    assert stored.status is ApprovalStatus.APPROVED
    assert stored.decided_by == "alice" and stored.reason == "ok for the demo"

    again = cli(*base, "--token-file", str(token_file))
    assert again.returncode == 1
    assert "is approved" in again.stderr and "HTTP 409" in again.stderr

    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert cli(*base, "--token-file", str(empty)).returncode == 2
    assert cli(*base, "--token-file", str(tmp_path / "absent")).returncode == 2
    both = cli(*base, "--token-file", str(token_file), "--token", ALICE)
    assert both.returncode == 2


def test_deny_needs_a_reason(admin: RunningAdmin) -> None:
    approval = admin.hold()
    no_reason = approvals(admin, "deny", approval.id)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    blank = approvals(admin, "deny", approval.id, "--reason", "  ")
    assert blank.returncode == 1 and "reason: must not be empty" in blank.stderr
    result = approvals(admin, "deny", approval.id, "--reason", "not this prompt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"denied {approval.id}: {TOOL} for grant g1 (by alice)"
    stored = admin.run(admin.store.get(approval.id, time.time()))
    assert stored.status is ApprovalStatus.DENIED and stored.reason == "not this prompt"
    assert approvals(admin, "approve", approval.id).returncode == 1


def test_a_stale_approval_is_refused(admin: RunningAdmin) -> None:
    approval = admin.hold()
    (admin.root / "policies" / "seed.json").write_text(json.dumps({**POLICY, "default": "allow"}))
    with structlog.testing.capture_logs():
        assert admin.source.poll() is True
    shown = approvals(admin, "show", approval.id)
    assert "pending (stale)" in shown.stdout
    refused = approvals(admin, "approve", approval.id)
    assert refused.returncode == 1
    assert "the policy changed since this call was held" in refused.stderr
    assert approvals(admin, "deny", approval.id, "--reason", "policy moved").returncode == 0


@pytest.mark.processes
def test_unreachable_or_malformed_admin_is_a_usage_error() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = cli("approvals", "list", "--admin", dead, "--token", ALICE)
    assert result.returncode == 2
    assert "cannot reach the admin API" in result.stderr and ALICE not in result.stderr
    for bad in ("ftp://host:1", "http://host:notaport", "host:1?x=y"):
        assert cli("approvals", "list", "--admin", bad).returncode == 2, bad


@pytest.mark.processes
def test_a_redirect_is_refused_and_the_token_stays_home() -> None:
    """urllib would follow a redirect with the Authorization header; the CLI must not."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"approvals": [], "now": 0}')

        def log_message(self, *args: object) -> None:
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    target_url = f"http://127.0.0.1:{target.server_address[1]}"

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target_url + self.path)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    servers = (target, redirect)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{redirect.server_address[1]}"
        result = cli("approvals", "list", "--admin", url, "--token", ALICE)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert result.returncode == 1, result
    assert "redirect" in result.stderr
    assert seen == []


def test_the_reason_may_follow_the_id_as_words(admin: RunningAdmin) -> None:
    approval = admin.hold()
    both = approvals(admin, "deny", approval.id, "too", "costly", "--reason", "x")
    assert both.returncode == 2
    result = approvals(admin, "deny", approval.id, "too", "costly")
    assert result.returncode == 0, result.stderr
    stored = admin.run(admin.store.get(approval.id, time.time()))
    assert stored.status is ApprovalStatus.DENIED and stored.reason == "too costly"
    other = admin.hold(arguments={"prompt": "another"})
    approved = approvals(admin, "approve", other.id, "looks", "fine")
    assert approved.returncode == 0, approved.stderr
    stored = admin.run(admin.store.get(other.id, time.time()))
    assert stored.status is ApprovalStatus.APPROVED and stored.reason == "looks fine"
