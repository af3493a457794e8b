"""The mounted config directory: validation, last-good on bad edits, ConfigMap swaps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from authz.config.grants import hash_token
from authz.config.source import ConfigError, ConfigSource, load_config

SEED = (
    '{"version":"1","default":"deny","tools":{"image.generate.gemini":{"limits":'
    '[{"counter":"image.generate.gemini_rate","window":"minute","max":30,"scope":"grant"}]}}}'
)


def _write(root: Path, policy: str = SEED, policy_name: str = "seed") -> None:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / f"{policy_name}.json").write_text(policy)
    grants = {
        "version": "1",
        "grants": [
            {"id": "a", "label": "A", "token_sha256": hash_token("tok"), "policy": policy_name}
        ],
    }
    (root / "grants.json").write_text(json.dumps(grants))


def test_loads_directory(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "policies" / "README.md").write_text("ignored")
    (tmp_path / "policies" / ".hidden.json").write_text("ignored")
    config = load_config(tmp_path)
    assert set(config.policies) == {"seed"}
    grant = config.grants.lookup("tok")
    assert grant is not None and config.policy(grant.policy) is not None


def test_missing_grants_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grants\.json"):
        load_config(tmp_path)


def test_invalid_policy_names_file(tmp_path: Path) -> None:
    _write(tmp_path, policy='{"version":"1","default":"deny","tools":{"t":{"limits":[{}]}}}')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "seed.json" in str(info.value)
    assert "counter" in str(info.value)


def test_bad_edit_keeps_last_good_then_recovers(tmp_path: Path) -> None:
    _write(tmp_path)
    source = ConfigSource.open(tmp_path)
    good = source.current
    assert source.poll() is False  # nothing changed

    (tmp_path / "policies" / "seed.json").write_text("{not json")
    assert source.poll() is False
    assert source.current is good
    assert source.status.last_error is not None and "seed.json" in source.status.last_error

    (tmp_path / "grants.json").unlink()
    assert source.poll() is False
    assert source.current is good

    _write(tmp_path, policy='{"version":"1","default":"allow"}')
    assert source.poll() is True
    assert source.current is not good
    assert source.status.last_error is None
    assert source.current.policies["seed"].content_hash != good.policies["seed"].content_hash


def test_configmap_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes mounts: files are symlinks through `..data` to a timestamped directory."""
    mount = tmp_path / "mount"
    mount.mkdir()
    v1 = mount / "..2026_01_01_v1"
    _write(v1)
    os.symlink(v1.name, mount / "..data")
    os.symlink("..data/grants.json", mount / "grants.json")
    os.symlink("..data/policies", mount / "policies")
    source = ConfigSource.open(mount)
    assert source.current.policies["seed"].content_hash

    v2 = mount / "..2026_01_01_v2"
    _write(v2, policy='{"version":"1","default":"allow"}')
    tmp_link = mount / "..data_tmp"
    os.symlink(v2.name, tmp_link)
    os.replace(tmp_link, mount / "..data")
    assert source.poll() is True
    assert source.current.policies["seed"].content_hash != ""
    assert b'"allow"' in (mount / "policies" / "seed.json").read_bytes()
