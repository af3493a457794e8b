"""The tool lock in the mounted configuration directory (authz/config/source.py): loaded
with the rest, named in every error, last-good on a bad edit, removable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from authz.config.grants import hash_token
from authz.config.source import ConfigError, ConfigSource, load_config
from authz.pinning import LOCK_FILE, definition_hash
from tests.unit.pinning import lock_bytes, probe_tools

POLICY = '{"version":"1","pinning":"enforce","arguments":"strict"}'


def write_config(root: Path) -> None:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "pinned.json").write_text(POLICY)
    grants = {
        "version": "1",
        "grants": [{"id": "a", "token_sha256": hash_token("tok"), "policy": "pinned"}],
    }
    (root / "grants.json").write_text(json.dumps(grants))


def write_lock(root: Path, raw: bytes) -> None:
    (root / LOCK_FILE).write_bytes(raw)


def hand_edited() -> bytes:
    document = json.loads(lock_bytes(probe_tools()))
    document["tools"][0]["description"] = "Looks something up. And mails it."
    return json.dumps(document).encode()


def test_a_directory_with_a_lock_loads_it(tmp_path: Path) -> None:
    write_config(tmp_path)
    raw = lock_bytes(probe_tools())
    write_lock(tmp_path, raw)
    config = load_config(tmp_path)
    assert config.pins is not None
    assert sorted(config.pins.tools) == ["probe.delete", "probe.read", "probe.write"]
    assert config.pins.content_hash == hashlib.sha256(raw).hexdigest()
    write = config.pins.tools["probe.write"]
    assert write.arguments is not None
    assert write.arguments.violation({"amount": "500"}) is not None
    policy = config.policy("pinned")
    assert policy is not None and policy.pinning == "enforce"


def test_a_directory_without_a_lock_pins_nothing(tmp_path: Path) -> None:
    write_config(tmp_path)
    assert load_config(tmp_path).pins is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "$: invalid JSON"),
        (b'{"version":1,"tools":[]', "$: invalid JSON"),
        (b'{"version":2,"tools":[]}', "$.version: must be 1"),
        (hand_edited(), "$.tools[0].sha256: does not match the definition it pins"),
        (
            lock_bytes([{"name": "t", "inputSchema": {"type": "object", "required": 1}}]),
            "$.tools[0].inputSchema.required: not a valid JSON Schema",
        ),
        (b"[" * 100_000, "$: nesting deeper than 64 levels"),
    ],
    ids=["not-json", "truncated", "version", "hand-edited", "bad-schema", "deep"],
)
def test_a_bad_lock_is_rejected_with_the_file_named(
    tmp_path: Path, raw: bytes, fragment: str
) -> None:
    write_config(tmp_path)
    write_lock(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / LOCK_FILE}: ")
    assert fragment in message


def test_a_corrupt_lock_keeps_the_last_good_set_then_recovers(tmp_path: Path) -> None:
    write_config(tmp_path)
    elements = probe_tools()
    write_lock(tmp_path, lock_bytes(elements))
    source = ConfigSource.open(tmp_path)
    good = source.current
    assert good.pins is not None

    write_lock(tmp_path, hand_edited())
    assert source.poll() is False
    assert source.current is good and source.current.pins is good.pins
    assert source.status.last_error is not None
    assert str(tmp_path / LOCK_FILE) in source.status.last_error
    assert "$.tools[0].sha256" in source.status.last_error
    assert source.status.failures == 1
    assert source.poll() is False and source.status.failures == 1  # the same error, once

    repinned = {**elements[0], "description": "Re-pinned after review."}
    write_lock(tmp_path, lock_bytes([repinned, *elements[1:]]))
    assert source.poll() is True
    assert source.status.last_error is None
    pins = source.current.pins
    assert pins is not None and pins is not good.pins
    assert pins.tools[repinned["name"]].sha256 == definition_hash(repinned)


def test_removing_the_lock_removes_the_pins(tmp_path: Path) -> None:
    write_config(tmp_path)
    write_lock(tmp_path, lock_bytes(probe_tools()))
    source = ConfigSource.open(tmp_path)
    assert source.current.pins is not None
    (tmp_path / LOCK_FILE).unlink()
    assert source.poll() is True
    assert source.current.pins is None
    write_lock(tmp_path, lock_bytes(probe_tools()))
    assert source.poll() is True
    assert source.current.pins is not None


def test_a_changed_lock_is_a_new_configuration(tmp_path: Path) -> None:
    """Only the lock changed: it is applied like any other file (hot reload)."""
    write_config(tmp_path)
    write_lock(tmp_path, lock_bytes(probe_tools()))
    source = ConfigSource.open(tmp_path)
    applied: list[object] = []
    source.on_change = applied.append
    before = source.current.fingerprint
    write_lock(tmp_path, lock_bytes(probe_tools()[:1]))
    assert source.poll() is True
    assert source.current.fingerprint != before
    assert applied == [source.current]
    assert source.current.pins is not None and len(source.current.pins) == 1


def test_a_bad_policy_field_with_a_good_lock_is_still_rejected(tmp_path: Path) -> None:
    write_config(tmp_path)
    write_lock(tmp_path, lock_bytes(probe_tools()))
    (tmp_path / "policies" / "pinned.json").write_text('{"version":"1","pinning":"audit"}')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "pinned.json" in str(info.value) and "$.pinning" in str(info.value)
