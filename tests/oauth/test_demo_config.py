"""The configuration `mcp-authz demo --oauth` serves: the demo's directory with oauth.json and
the OAuth grants, loaded as the sidecar loads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from authz.config.source import load_config
from authz.devstack.demo import default_config_dir
from authz.devstack.oauth import DEMO_MACHINE, write_demo_config

RESOURCE = "http://127.0.0.1:10000/mcp"
ISSUER = "http://127.0.0.1:9400"


def test_the_demo_configuration_with_oauth_loads(tmp_path: Path) -> None:
    source = default_config_dir()
    target = write_demo_config(source, tmp_path / "config", RESOURCE, ISSUER)
    config = load_config(target)
    assert config.oauth is not None
    assert config.oauth.resource == RESOURCE
    assert list(config.oauth.authorization_servers) == [ISSUER]
    artists = config.grants.lookup_oauth(
        {"iss": ISSUER, "sub": "artist", "client_id": "any", "scope": [], "groups": ["artists"]}
    )
    machine = config.grants.lookup_oauth(
        {
            "iss": ISSUER,
            "sub": DEMO_MACHINE.client_id,
            "client_id": DEMO_MACHINE.client_id,
            "scope": ["mcp:tools"],
            "groups": [],
        }
    )
    stranger = config.grants.lookup_oauth(
        {"iss": ISSUER, "sub": "x", "client_id": "x", "scope": [], "groups": []}
    )
    assert (artists and artists.id, machine and machine.id, stranger) == (
        "oauth-artists",
        "oauth-machine",
        None,
    )
    # the static demo grants stay, and the source directory is untouched
    ids = [g["id"] for g in json.loads((target / "grants.json").read_text())["grants"]]
    assert ids[:2] == ["demo-artist", "demo-limited"]
    assert not (source / "oauth.json").exists()


def test_a_directory_already_copied_is_extended_in_place(tmp_path: Path) -> None:
    copy = tmp_path / "config"
    shutil.copytree(default_config_dir(), copy)
    write_demo_config(copy, copy, RESOURCE, ISSUER)
    assert load_config(copy).oauth is not None
