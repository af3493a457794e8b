"""The operator's tool classes in the mounted configuration directory
(authz/config/source.py): tool-classes.json loads into `ConfigSet.classes` next to the
classes of the pinned tools and wins over them; a bad file is refused with its path and the
JSON path of the problem, the last good set stays in force on `poll()`, and removing the
file gives the lock's classes back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz.catalog.classes import OVERRIDES_FILE, Override, Risk, ToolClass
from authz.config.grants import hash_token
from authz.config.source import ConfigError, ConfigSource, load_config
from authz.pinning import LOCK_FILE
from tests.unit.pinning import lock_bytes, probe_tools

POLICY = {"version": "1", "classes": {"delete": {"deny_if": [{"conditions": []}]}}}


def write_config(root: Path) -> None:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "classy.json").write_text(json.dumps(POLICY))
    grants = {
        "version": "1",
        "grants": [{"id": "a", "token_sha256": hash_token("tok"), "policy": "classy"}],
    }
    (root / "grants.json").write_text(json.dumps(grants))


def write_overrides(root: Path, document: dict[str, Any] | bytes) -> None:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    (root / OVERRIDES_FILE).write_bytes(raw)


def classes_of(source_or_root: ConfigSource | Path) -> dict[str, tuple[str | None, str]]:
    """tool → (class, source) of the configuration set."""
    config = (
        source_or_root.current
        if isinstance(source_or_root, ConfigSource)
        else load_config(source_or_root)
    )
    return {
        name: (c.tool_class.value if c.tool_class else None, c.source)
        for name, c in config.classes.items()
    }


PINNED = {
    "probe.delete": ("delete", "definition"),
    "probe.read": ("read", "definition"),
    "probe.write": ("write", "definition"),
}


def test_without_a_lock_or_overrides_no_class_is_known(tmp_path: Path) -> None:
    write_config(tmp_path)
    config = load_config(tmp_path)
    assert dict(config.classes) == {} and dict(config.overrides) == {}


def test_the_lock_gives_the_pinned_tools_their_classes(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / LOCK_FILE).write_bytes(lock_bytes(probe_tools()))
    assert classes_of(tmp_path) == PINNED
    delete = load_config(tmp_path).classes["probe.delete"]
    assert delete.risk is Risk.HIGH and "destructiveHint is true" in delete.reason


def test_overrides_load_and_win_over_the_lock(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / LOCK_FILE).write_bytes(lock_bytes(probe_tools()))
    write_overrides(
        tmp_path,
        {
            "version": 1,
            "tools": {
                "probe.read": {"class": "delete", "reason": "it reads secrets"},
                "probe.new": {"class": "read", "risk": "medium"},
            },
        },
    )
    config = load_config(tmp_path)
    assert classes_of(tmp_path) == {
        **PINNED,
        "probe.read": ("delete", "override"),
        "probe.new": ("read", "override"),
    }
    read = config.classes["probe.read"]
    assert (read.risk, read.reason) == (Risk.HIGH, "it reads secrets")
    assert config.classes["probe.new"].risk is Risk.MEDIUM
    assert dict(config.overrides) == {
        "probe.read": Override(ToolClass.DELETE, None, "it reads secrets"),
        "probe.new": Override(ToolClass.READ, Risk.MEDIUM, None),
    }


def test_overrides_without_a_lock(tmp_path: Path) -> None:
    write_config(tmp_path)
    write_overrides(
        tmp_path, {"version": 1, "tools": {"image.generate.gemini": {"class": "write"}}}
    )
    assert classes_of(tmp_path) == {"image.generate.gemini": ("write", "override")}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{nope", "$: invalid JSON"),
        (b'{"version": 1, "tools": {"t": {"class": "admin"}}}', "$.tools.t.class: must be one of"),
        (b'{"version": 2}', "$.version: must be 1"),
        (
            b'{"version": 1, "tools": {"t": {"class": "read"}, "t": {"class": "write"}}}',
            "$.tools.t: duplicate key 't'",
        ),
        (b'{"version": 1, "tools": {"t": {"class": ["read"]}}}', "$.tools.t.class: must be"),
        (b"[" * 100_000, "$: nesting deeper than 64 levels"),
    ],
    ids=["not-json", "unknown-class", "version", "duplicate-key", "class-a-list", "deep"],
)
def test_a_bad_file_is_refused_naming_it(tmp_path: Path, raw: bytes, fragment: str) -> None:
    write_config(tmp_path)
    write_overrides(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / OVERRIDES_FILE}: "), message
    assert fragment in message, message


def test_a_corrupt_file_keeps_the_last_good_set_then_recovers(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / LOCK_FILE).write_bytes(lock_bytes(probe_tools()))
    write_overrides(tmp_path, {"version": 1, "tools": {"probe.read": {"class": "delete"}}})
    source = ConfigSource.open(tmp_path)
    good = source.current
    assert classes_of(source)["probe.read"] == ("delete", "override")

    write_overrides(tmp_path, {"version": 1, "tools": {"probe.read": {"class": "root"}}})
    assert source.poll() is False
    assert source.current is good
    error = source.status.last_error
    assert error is not None and error.startswith(str(tmp_path / OVERRIDES_FILE)), error
    assert "$.tools['probe.read'].class: must be one of" in error
    assert source.status.failures == 1
    assert source.poll() is False and source.status.failures == 1  # the same error, once
    assert classes_of(source)["probe.read"] == ("delete", "override")

    write_overrides(tmp_path, {"version": 1, "tools": {"probe.write": {"class": "financial"}}})
    assert source.poll() is True
    assert source.status.last_error is None
    assert classes_of(source) == {**PINNED, "probe.write": ("financial", "override")}


def test_removing_the_file_gives_the_lock_classes_back(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / LOCK_FILE).write_bytes(lock_bytes(probe_tools()))
    write_overrides(tmp_path, {"version": 1, "tools": {"probe.delete": {"class": "read"}}})
    source = ConfigSource.open(tmp_path)
    assert classes_of(source)["probe.delete"] == ("read", "override")
    (tmp_path / OVERRIDES_FILE).unlink()
    assert source.poll() is True
    assert classes_of(source) == PINNED and dict(source.current.overrides) == {}


def test_a_new_lock_reclassifies_with_the_overrides_kept(tmp_path: Path) -> None:
    """Re-pinning adds the new tool's class; the operator's word still wins."""
    write_config(tmp_path)
    tools = probe_tools()
    (tmp_path / LOCK_FILE).write_bytes(lock_bytes(tools))
    write_overrides(tmp_path, {"version": 1, "tools": {"probe.write": {"class": "execute"}}})
    source = ConfigSource.open(tmp_path)
    assert "probe.new" not in source.current.classes
    added = {"name": "probe.new", "annotations": {"readOnlyHint": True}}
    (tmp_path / LOCK_FILE).write_bytes(lock_bytes([*tools, added]))
    assert source.poll() is True
    assert classes_of(source) == {
        **PINNED,
        "probe.write": ("execute", "override"),
        "probe.new": ("read", "definition"),
    }
