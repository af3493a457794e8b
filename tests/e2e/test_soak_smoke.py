"""A 15-second run of bench/soak.py: the soak harness works and its verdict passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


@pytest.mark.processes
def test_soak_smoke(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--duration",
            "15",
            "--concurrency",
            "4",
            "--sample-interval",
            "3",
            "--json-out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    checks = summary["verdict"]["checks"]
    assert summary["verdict"]["pass"], checks
    assert checks["denied_never_executed"] and checks["all_responses_expected"]
    assert checks["buckets_bounded"] and checks["rss_flat"] and checks["fds_flat"]
    assert summary["unexpected"] == {}
    # the mix really exercised every path
    for outcome in ("allowed", "rate_limited", "denied", "unauthenticated", "bad_request"):
        assert summary["outcomes"].get(outcome, 0) > 0, summary["outcomes"]
    assert summary["outcomes"].get("http_5xx", 0) == 0
    assert summary["sidecar"]["buckets"]["max"] > 0
    assert len(summary["samples"]) >= 5
