"""mcp-authz check-policy on oauth.json and on a directory that holds one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.cli.commands import main
from tests.unit.oauth.keys import ISSUER, RESOURCE, oauth_json


def test_a_valid_oauth_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "oauth.json"
    path.write_bytes(oauth_json())
    assert main(["check-policy", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_a_bad_oauth_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "oauth.json"
    path.write_bytes(oauth_json(algorithms=["HS256"]))
    assert main(["check-policy", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}: oauth.json: $.algorithms: ")


def test_a_directory_with_oauth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "oauth.json").write_bytes(oauth_json())
    grants = [{"id": "people", "policy": "p", "oauth": {"issuer": ISSUER}}]
    (tmp_path / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    assert main(["check-policy", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out == f"{tmp_path}: ok (1 grant, 0 policies, no lock, OAuth resource {RESOURCE})\n"
    grants[0]["oauth"]["issuer"] = "http://untrusted"
    (tmp_path / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    assert main(["check-policy", str(tmp_path)]) == 1
    assert "not among oauth.json's authorization_servers" in capsys.readouterr().err
