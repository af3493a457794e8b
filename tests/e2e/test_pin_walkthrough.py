"""The README's pinning walkthrough, command for command, against `mcp-authz demo`.

The demo's upstream changes the Gemini tool's description (`IMAGEGEN_DRIFT`, a "rug
pull"): an agent's `tools/list` loses the tool and its call is denied `(pin)`, the demo
terminal shows the drift, `mcp-authz pin --check` fails with a diff, and after
`mcp-authz pin` the tool is back and runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.devstack.stack import free_port
from imagegen_upstream.tools import DRIFT_TEXT, GEMINI, TOOL_NAMES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Demo:
    def __init__(self, url: str, upstream: str, config: Path, log: Path) -> None:
        self.url, self.upstream, self.config, self.log = url, upstream, config, log

    def agent(self) -> str:
        """scripts/demo_client.py as the README runs it: lists tools, calls Gemini once."""
        done = subprocess.run(
            [
                *(sys.executable, "scripts/demo_client.py", "--url", self.url),
                *("--token", "mcp-demo-artist-token", "--prompt", "a lighthouse at dusk"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def pin(self, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "mcp-authz"), "pin", "--url", self.upstream]
        argv += ["--config", str(self.config), *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Demo]:
    """`IMAGEGEN_DRIFT=image.generate.gemini mcp-authz demo --config <a copy>`."""
    out = tmp_path_factory.mktemp("pin-demo")
    config = out / "config"
    shutil.copytree(REPO / "deploy" / "config", config)
    log = out / "demo.log"
    port = free_port()
    with log.open("w+") as sink:
        proc = subprocess.Popen(
            [
                *(str(BIN / "mcp-authz"), "demo", "--port", str(port), "--config", str(config)),
                *("--outputs", str(out / "images"), "--transport", transport),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "IMAGEGEN_DRIFT": GEMINI},
            start_new_session=True,
        )
        try:
            upstream = None
            deadline = time.time() + 60
            while time.time() < deadline and upstream is None:
                assert proc.poll() is None, log.read_text()
                text = log.read_text()
                match = re.search(r"upstream\s+(http://\S+)", text)
                upstream = match.group(1) if "admin API" in text and match else None
                time.sleep(0.2)
            assert upstream is not None, log.read_text()
            yield Demo(f"http://127.0.0.1:{port}/mcp", upstream, config, log)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(check: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_drift_is_cut_denied_shown_checked_and_repinned(demo: Demo) -> None:
    assert "pinned 4 tools (tools.lock.json)" in demo.log.read_text()

    # the upstream offers a Gemini tool whose description now speaks to the model
    first = demo.agent()
    listed = re.search(r"^tools: (.*)$", first, re.MULTILINE)
    assert listed is not None, first
    assert sorted(listed.group(1).split(", ")) == sorted(set(TOOL_NAMES) - {GEMINI}), first
    assert "ERROR [POLICY DENIED] tool 'image.generate.gemini' changed its definition" in first
    assert "(rule: (pin))" in first
    wait_for(lambda: f"DRIFT  {GEMINI}: definition changed" in demo.log.read_text(), "DRIFT")
    assert "removed from tools/list, calls denied (pin)" in demo.log.read_text()

    # the operator's check fails with the diff, then a review and a new pin
    check = demo.pin("--check")
    assert check.returncode == 1, check
    assert f"~ {GEMINI}: definition changed" in check.stdout
    assert DRIFT_TEXT.strip() in check.stdout
    pinned = demo.pin()
    assert pinned.returncode == 0, pinned
    assert pinned.stdout.startswith(f"pinned 4 tools to {demo.config / 'tools.lock.json'}")

    def serves_gemini_again() -> bool:
        return "provider=google(gemini)" in demo.agent()

    wait_for(serves_gemini_again, "the re-pinned Gemini tool to run")
    assert (REPO / "deploy" / "config" / "tools.lock.json").read_text() != (
        demo.config / "tools.lock.json"
    ).read_text()  # the walkthrough pinned the copy, not the tracked file
