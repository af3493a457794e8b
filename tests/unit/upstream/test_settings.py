"""Settings parsing, the Host-check configuration and CLI flags (pure, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.server.transport_security import TransportSecurityMiddleware

from imagegen_upstream.cli import parse_args, ready_line
from imagegen_upstream.providers import (
    ImageRequest,
    ProviderError,
    dimensions,
    nearest_aspect_ratio,
)
from imagegen_upstream.settings import Settings, expand_host_patterns, from_env


def test_expand_host_patterns() -> None:
    assert expand_host_patterns(["envoy", "envoy:8080", "x:*", "[::1]", "[::1]:9"]) == [
        "envoy", "envoy:*", "envoy:8080", "x:*", "[::1]", "[::1]:*", "[::1]:9",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        ((), "127.0.0.1:8080", True),
        ((), "localhost", True),
        ((), "[::1]:1", True),
        ((), "example.com", False),
        (("upstream.mesh",), "upstream.mesh", True),
        (("upstream.mesh",), "upstream.mesh:10000", True),
        (("upstream.mesh:80",), "upstream.mesh:81", False),
        (("*",), "anything:1", True),
    ],
)
def test_transport_security_host_check(allowed: tuple[str, ...], host: str, ok: bool) -> None:
    security = Settings(allowed_hosts=allowed).transport_security()
    middleware = TransportSecurityMiddleware(security)
    if not security.enable_dns_rebinding_protection:
        assert ok
        return
    assert middleware._validate_host(host) is ok


def test_from_env_reads_hosts_record_and_outputs(tmp_path: Path) -> None:
    env = {
        "IMAGEGEN_ALLOWED_HOSTS": " a.test , b.test:9 ,,",
        "IMAGEGEN_RECORD_FILE": str(tmp_path / "r.jsonl"),
        "OUTPUT_DIR": str(tmp_path / "o"),
    }
    settings = from_env(env)
    assert settings.allowed_hosts == ("a.test", "b.test:9")
    assert settings.record_file == tmp_path / "r.jsonl"
    assert settings.outputs == tmp_path / "o"
    assert from_env({}).record_file is None


def test_cli_flags_override_and_extend_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEGEN_ALLOWED_HOSTS", "from-env")
    monkeypatch.setenv("IMAGEGEN_RECORD_FILE", str(tmp_path / "env.jsonl"))
    settings = parse_args(
        ["--port", "0", "--outputs", str(tmp_path), "--json-response", "--allowed-host",
         "a,b", "--allowed-host", "c:1", "--record", str(tmp_path / "cli.jsonl"),
         "--log-level", "debug"]
    )  # fmt: skip
    assert settings.port == 0
    assert settings.json_response is True
    assert settings.allowed_hosts == ("from-env", "a", "b", "c:1")
    assert settings.record_file == tmp_path / "cli.jsonl"
    assert settings.log_level == "DEBUG"
    line = ready_line(settings, 1234)
    assert line.startswith("imagegen-upstream ready url=http://127.0.0.1:1234/mcp mode=json ")


def test_dimensions_and_aspect_ratio() -> None:
    assert dimensions(ImageRequest("p", size="640x480"), None) == (640, 480)
    assert dimensions(ImageRequest("p", width=10, height=20), (1, 1)) == (10, 20)
    assert dimensions(ImageRequest("p"), (1, 1)) == (1, 1)
    with pytest.raises(ProviderError, match="size must look like"):
        dimensions(ImageRequest("p", size="big"), None)
    ratios = ("1:1", "3:4", "4:3", "9:16", "16:9")
    assert nearest_aspect_ratio(1920, 1080, ratios) == "16:9"
    assert nearest_aspect_ratio(1000, 1100, ratios) == "1:1"
    assert nearest_aspect_ratio(600, 800, ratios) == "3:4"
