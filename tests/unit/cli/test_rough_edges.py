"""What a new user of the demo and the CLI meets: readable configuration errors and
recovery, no probe noise, HOLD for a held call, the demo on a copy of the config, `--port 0`,
the client finding the demo, `grant add` warning of an unloaded policy, a closed pipe, and
the README's check-policy example."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import structlog

from authz.config.source import ConfigSource
from authz.devstack import demo
from authz.devstack.demo import _pump_decisions

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def pumped(lines: list[dict[str, object] | str], ready: bool | None = None) -> str:
    stream = io.BytesIO(
        b"".join(
            (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines
        )
    )
    out = io.StringIO()
    event = None
    if ready is not None:
        event = threading.Event()
        if ready:
            event.set()
    _pump_decisions(stream, out, event)
    return out.getvalue()


def test_a_rejected_config_names_file_and_reason_and_says_the_last_good_is_kept() -> None:
    error = "/cfg/policies/p.json: $.default: must be 'allow' or 'deny'"
    out = pumped([{"event": "config_rejected", "level": "error", "error": error}])
    assert error in out
    assert "kept the last good configuration" in out


def test_recovery_is_shown_as_config_applied() -> None:
    out = pumped([{"event": "config_applied", "fingerprint": "0123456789abcdef", "restored": True}])
    assert "config_applied (the last good one again): fingerprint 0123456789ab" in out


def test_probes_before_ready_are_not_shown_and_grants_and_holds_read_well() -> None:
    probe = {"event": "decision", "decision": "deny", "grant_id": None, "rule": "(auth)"}
    assert "DENY" not in pumped([probe], ready=False)
    out = pumped(
        [
            {**probe, "http_method": "POST"},
            {
                "event": "decision",
                "decision": "deny",
                "kind": "approval_required",
                "grant_id": "demo-artist",
                "tool": "image.generate.gemini",
            },
        ],
        ready=True,
    )
    assert "DENY   grant=-  POST" in out
    assert re.search(r"HOLD\s+grant=demo-artist\s+image\.generate\.gemini", out), out
    assert "DENY   grant=demo-artist" not in out


def test_a_reverted_config_logs_config_applied(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO / "deploy" / "config", config)
    source = ConfigSource.open(config)
    policy = config / "policies" / "imagegen.json"
    good = policy.read_bytes()
    with structlog.testing.capture_logs() as logs:
        policy.write_text("{not json")
        assert not source.poll()
        policy.write_bytes(good)
        assert not source.poll()  # the set in force is the good one: nothing to apply
    events = [entry["event"] for entry in logs]
    assert events == ["config_rejected", "config_applied"], logs
    assert logs[1]["restored"] is True
    assert source.status.last_error is None


@pytest.mark.processes
def test_grant_add_warns_when_its_policy_is_not_loaded(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO / "deploy" / "config", config)
    argv = [str(BIN / "mcp-authz"), "grant", "add", "--config", str(config), "--id", "x"]
    missing = subprocess.run(
        [*argv, "--policy", "nosuchpolicy"], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 0, missing
    assert "warning: policy 'nosuchpolicy' is not loaded" in missing.stderr
    loaded = subprocess.run(
        [*argv[:-1], "y", "--policy", "imagegen"], capture_output=True, text=True, timeout=30
    )
    assert loaded.returncode == 0 and "warning" not in loaded.stderr, loaded


@pytest.mark.processes
def test_a_closed_pipe_ends_quietly() -> None:
    """`mcp-authz schema | head` with the reader gone before the writer writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [str(BIN / "mcp-authz"), "schema"], stdout=write, stderr=subprocess.PIPE, timeout=30
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr.decode(), done.stderr
    assert "BrokenPipeError" not in done.stderr.decode()


@pytest.mark.processes
def test_the_readme_check_policy_example_is_what_the_command_prints(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    found = re.search(
        r"\$ cat bad\.json\n(?P<doc>.*?)\n\$ mcp-authz check-policy bad\.json\n(?P<out>.*?)```",
        readme,
        re.DOTALL,
    )
    assert found is not None
    (tmp_path / "bad.json").write_text(found["doc"])
    done = subprocess.run(
        [str(BIN / "mcp-authz"), "check-policy", "bad.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert done.returncode != 0
    assert done.stdout + done.stderr == found["out"]


@pytest.mark.processes
def test_the_demo_runs_on_a_copy_on_any_free_port_and_the_client_finds_it(
    tmp_path: Path,
) -> None:
    tracked = {p: p.read_bytes() for p in (REPO / "deploy" / "config").rglob("*") if p.is_file()}
    log = tmp_path / "demo.log"
    with log.open("w+") as sink:
        proc = subprocess.Popen(
            [str(BIN / "mcp-authz"), "demo", "--port", "0", "--outputs", str(tmp_path / "o")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 60
            while time.time() < deadline and "Decisions (Ctrl-C" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            banner = log.read_text()
            url = re.search(r"MCP URL\s+(http://127\.0\.0\.1:(\d+)/mcp)", banner)
            assert url is not None and int(url.group(2)) > 0, banner
            config = re.search(r"config\s+(\S+)\s+\(a copy of (\S+):", banner)
            assert config is not None, banner
            assert Path(config.group(1)) != REPO / "deploy" / "config"
            assert demo.running_demo_url() == url.group(1)

            # the README's client, without --url, reaches this demo
            client = subprocess.run(
                [sys.executable, "scripts/demo_client.py", "--token", "mcp-demo-artist-token"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
            )
            assert client.returncode == 0, client
            assert "provider=google(gemini)" in client.stdout, client.stdout

            # an edit to the copy applies; the tracked files never change
            policy = Path(config.group(1)) / "policies" / "imagegen.json"
            policy.write_text("{not json")
            deadline = time.time() + 20
            while time.time() < deadline and "[config] rejected" not in log.read_text():
                time.sleep(0.2)
            assert "kept the last good configuration" in log.read_text()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    shown = log.read_text()
    assert not re.search(r"DENY\s+grant=(None|-)\s+POST\s+rule=\(auth\)", shown), shown
    assert tracked == {
        p: p.read_bytes() for p in (REPO / "deploy" / "config").rglob("*") if p.is_file()
    }
    assert demo.running_demo_url() is None
