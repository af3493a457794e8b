"""approvers.json: validation with JSON paths, token lookup, config-directory integration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from authz.cli import main
from authz.config.approvers import ApproversError, ApproverTable, load_approvers
from authz.config.grants import hash_token
from authz.config.source import ConfigError, ConfigSource, load_config

POLICY = '{"version":"1","default":"allow"}'


def _doc(*approvers: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"version": "1", "approvers": list(approvers), **extra}).encode()


def _entry(id_: str, token: str, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "label": id_.title(), "token_sha256": hash_token(token), **extra}


def _write_config(root: Path, approvers: bytes | None = None, grant_token: str = "agent") -> None:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "p.json").write_text(POLICY)
    grants = {
        "version": "1",
        "grants": [
            {"id": "g1", "label": "G1", "token_sha256": hash_token(grant_token), "policy": "p"}
        ],
    }
    (root / "grants.json").write_text(json.dumps(grants))
    if approvers is not None:
        (root / "approvers.json").write_bytes(approvers)


def test_lookup_by_token_hash() -> None:
    table = load_approvers(_doc(_entry("alice", "tok-a"), _entry("bob@example.com", "tok-b")))
    assert len(table) == 2
    alice = table.lookup("tok-a")
    assert alice is not None and alice.id == "alice" and alice.label == "Alice"
    bob = table.lookup("tok-b")
    assert bob is not None and bob.id == "bob@example.com"
    assert table.lookup("tok-c") is None
    assert table.lookup(hash_token("tok-a")) is None  # the hash itself is no credential
    assert len(ApproverTable()) == 0 and ApproverTable().lookup("tok-a") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "$: invalid JSON at line 1, column 2"),
        (b'{"version":"1","version":"1","approvers":[]}', "duplicate key 'version'"),
        (_doc(version="2"), "$.version: "),
        (json.dumps({"version": "1"}).encode(), "$.approvers: Field required"),
        (_doc({"id": "a", "token_sha256": "ABC"}), "$.approvers[0].token_sha256: "),
        (_doc(_entry("a", "t"), {"id": "b"}), "$.approvers[1].token_sha256: Field required"),
        (_doc(_entry("a", "t", role="admin")), "$.approvers[0].role: Extra inputs"),
        (_doc(_entry("a", "t"), extra=1), "$.extra: Extra inputs"),
        (_doc(_entry("has space", "t")), "$.approvers[0].id: "),
        (_doc(_entry("alice\n", "t")), "$.approvers[0].id: "),
        (_doc(_entry("", "t")), "$.approvers[0].id: "),
        (_doc({"id": 7, "token_sha256": hash_token("t")}), "$.approvers[0].id: "),
        (_doc(_entry("a", "t", label="line\nbreak")), "$.approvers[0].label: "),
        (_doc(_entry("a", "t1"), _entry("a", "t2")), "$.approvers[1].id: duplicate approver"),
        (_doc(_entry("a", "t"), _entry("b", "t")), "$.approvers[1].token_sha256: same token"),
    ],
)
def test_invalid_files_name_the_json_path(raw: bytes, expected: str) -> None:
    with pytest.raises(ApproversError) as info:
        load_approvers(raw)
    message = str(info.value)
    assert message.startswith("approvers.json: ")
    assert expected in message


def test_config_without_approvers_file_has_an_empty_table(tmp_path: Path) -> None:
    _write_config(tmp_path)
    config = load_config(tmp_path)
    assert len(config.approvers) == 0


def test_config_loads_approvers_and_hot_reloads_them(tmp_path: Path) -> None:
    _write_config(tmp_path, _doc(_entry("alice", "tok-a")))
    source = ConfigSource.open(tmp_path)
    first = source.current
    alice = first.approvers.lookup("tok-a")
    assert alice is not None and alice.id == "alice"

    (tmp_path / "approvers.json").write_bytes(_doc(_entry("bob", "tok-b")))
    with structlog.testing.capture_logs() as logs:
        assert source.poll() is True
    assert source.current.fingerprint != first.fingerprint  # the file is in the fingerprint
    assert source.current.approvers.lookup("tok-a") is None
    assert source.current.approvers.lookup("tok-b") is not None
    applied = [e for e in logs if e["event"] == "config_applied"]
    assert applied and applied[0]["approvers"] == 1

    # a bad edit keeps the last good set (bob stays) and is reported
    (tmp_path / "approvers.json").write_bytes(_doc(_entry("x", "t"), _entry("x", "u")))
    with structlog.testing.capture_logs():
        assert source.poll() is False
    assert source.current.approvers.lookup("tok-b") is not None
    assert source.status.last_error is not None
    assert "approvers.json" in source.status.last_error
    assert "$.approvers[1].id" in source.status.last_error

    # removing the file is a valid change: nobody can decide any more
    (tmp_path / "approvers.json").unlink()
    with structlog.testing.capture_logs():
        assert source.poll() is True
    assert len(source.current.approvers) == 0


def test_an_approver_token_may_not_be_a_grant_token(tmp_path: Path) -> None:
    _write_config(
        tmp_path,
        _doc(_entry("alice", "tok-a"), _entry("mallory", "agent")),
        grant_token="agent",
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert "approvers.json" in message
    assert "$.approvers[1].token_sha256" in message
    assert "'mallory'" in message and "grant 'g1'" in message
    assert hash_token("agent") not in message


def test_approver_add_prints_the_token_once_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_config(tmp_path)
    assert main(["approver", "add", "--config", str(tmp_path), "--id", "alice"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    token = out[-1]
    assert token.startswith("mcpadm_") and len(token) > 40
    raw = (tmp_path / "approvers.json").read_text()
    assert token not in raw and hash_token(token) in raw
    assert main(["approver", "add", "--config", str(tmp_path), "--id", "bob", "--label", "B"]) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1]

    config = load_config(tmp_path)  # the whole directory still loads
    alice, bob = config.approvers.lookup(token), config.approvers.lookup(second)
    assert alice is not None and alice.id == "alice" and alice.label == "alice"
    assert bob is not None and bob.id == "bob" and bob.label == "B"

    # a duplicate id is refused and the file is left as it was
    before = (tmp_path / "approvers.json").read_bytes()
    assert main(["approver", "add", "--config", str(tmp_path), "--id", "alice"]) == 1
    assert "duplicate approver id" in capsys.readouterr().err
    assert (tmp_path / "approvers.json").read_bytes() == before
