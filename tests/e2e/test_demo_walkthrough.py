"""The README's approval walkthrough, command for command, against `mcp-authz demo`.

Terminal 1 runs the demo; the agent (scripts/demo_client.py) is held and waits; the
approver approves from another terminal with `mcp-authz approvals`; the agent's retry runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from authz.devstack.stack import free_port
from imagegen_upstream.tools import TOOL_NAMES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMPT = "a logo for a coffee shop"


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[tuple[str, str, Path]]:
    """(MCP URL, admin URL, its output) of a running `mcp-authz demo --transport <transport>`."""
    out = tmp_path_factory.mktemp("demo")
    log = open(out / "demo.log", "w+")  # noqa: SIM115 - closed below
    port = free_port()
    proc = subprocess.Popen(
        [
            *(str(BIN / "mcp-authz"), "demo", "--port", str(port)),
            *("--outputs", str(out / "images"), "--transport", transport),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        admin = None
        deadline = time.time() + 60
        while time.time() < deadline and admin is None:
            assert proc.poll() is None, (out / "demo.log").read_text()
            match = re.search(r"admin API\s+(http://\S+)", (out / "demo.log").read_text())
            admin = match.group(1) if match else None
            time.sleep(0.2)
        assert admin is not None, (out / "demo.log").read_text()
        yield f"http://127.0.0.1:{port}/mcp", admin, out / "demo.log"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def approvals(admin: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCP_AUTHZ_ADMIN_TOKEN": "mcp-demo-approver-token"}
    return subprocess.run(
        [str(BIN / "mcp-authz"), "approvals", *args, "--admin", admin],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=REPO,
    )


def agent(url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "scripts/demo_client.py",
            "--url",
            url,
            "--token",
            "mcp-demo-artist-token",
            "--prompt",
            PROMPT,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )


def test_walkthrough_held_approved_retried(demo: tuple[str, str, Path]) -> None:
    url, admin, _ = demo
    waiting = agent(url, "--wait-approval", "60")
    pending: list[dict[str, object]] = []
    deadline = time.time() + 30
    while time.time() < deadline and not pending:
        listed = approvals(admin, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        pending = json.loads(listed.stdout)["approvals"]
        time.sleep(0.3)
    assert len(pending) == 1 and pending[0]["arguments"] == {"prompt": PROMPT}
    approval_id = str(pending[0]["id"])

    shown = approvals(admin, "show", approval_id)
    assert shown.returncode == 0 and PROMPT in shown.stdout

    approved = approvals(admin, "approve", approval_id, "--reason", "fine for the mock-up")
    assert approved.returncode == 0, approved.stderr
    output, _ = waiting.communicate(timeout=60)
    assert "[APPROVAL REQUIRED] " in output and approval_id in output
    assert re.search(r"retry: provider=google\(gemini\) .* saved=", output), output

    # the approval is spent: the same call is held again, under a new id
    again = agent(url)
    output, _ = again.communicate(timeout=60)
    held = re.findall(r"apr_[0-9a-f]{24}", output)
    assert held and held[0] != approval_id, output


def test_the_shipped_lock_pins_the_four_tools_the_upstream_serves(
    demo: tuple[str, str, Path],
) -> None:
    """The banner says `pinned 4 tools`, and an agent lists all four through the gateway:
    under `pinning: enforce` a tool whose live definition differed from the shipped lock
    (deploy/config/tools.lock.json) would be cut from the listing."""
    url, _, log = demo
    assert "pinned 4 tools (tools.lock.json)" in log.read_text()

    async def listed() -> list[str]:
        headers = {"Authorization": "Bearer mcp-demo-artist-token"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode="legacy") as client:  # type: ignore[arg-type]
                return sorted(tool.name for tool in (await client.list_tools()).tools)

    assert asyncio.run(listed()) == sorted(TOOL_NAMES)
