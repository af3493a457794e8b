"""The console entry points as real processes: ready line, a real MCP call, clean SIGTERM."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client

READY = re.compile(r"url=(http://\S+/mcp)")


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        pytest.fail(f"no ready line within {timeout}s")
    line = proc.stdout.readline()
    assert line, f"process exited early with {proc.poll()}"
    return line.strip()


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    return proc.returncode, out


@pytest.fixture
def offline_url() -> Iterator[str]:
    proc = _spawn(["-m", "imagegen_upstream.offline_gemini", "--port", "0"], dict(os.environ))
    try:
        line = _first_line(proc)
        assert line.startswith("offline-gemini listening on http://127.0.0.1:")
        yield line.rsplit(" ", 1)[-1]
    finally:
        code, out = _stop(proc)
        assert code == 0
        assert "offline-gemini stopped" in out


async def test_cli_serves_both_eras_and_stops_cleanly(offline_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_"))}
    env |= {"GOOGLE_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": offline_url}
    record = tmp_path / "record.jsonl"
    args = ["-m", "imagegen_upstream.cli", "--port", "0", "--outputs", str(tmp_path / "out"),
            "--record", str(record), "--allowed-host", "envoy.test"]  # fmt: skip
    proc = _spawn(args, env)
    try:
        line = _first_line(proc)
        assert "mode=sse" in line and "allowed_hosts=loopback,envoy.test" in line
        match = READY.search(line)
        assert match, line
        for era in ("legacy", "2026-07-28"):
            async with Client(match[1], mode=era) as client:
                result = await client.call_tool("image.generate.gemini", {"prompt": era})
            assert not result.is_error, result.content
    finally:
        code, out = _stop(proc)
    assert code == 0
    assert "imagegen-upstream stopped" in out
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    assert len(record.read_text().splitlines()) == 2
