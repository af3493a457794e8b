"""OAuth grants in grants.json: what they match, file order, and the checks against
oauth.json when the directory loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz.config.grants import GrantsError, hash_token, load_grants
from authz.config.source import ConfigError, load_config
from tests.unit.oauth.keys import ISSUER, oauth_json


def table(*entries: dict[str, Any]) -> Any:
    grants = [{"id": f"g{i}", "policy": "p", **entry} for i, entry in enumerate(entries)]
    return load_grants(json.dumps({"version": "1", "grants": grants}).encode())


def claims(**changes: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "client_id": "client-a",
        "scope": ["images:generate", "mcp:tools"],
        "groups": ["artists", "staff"],
    }
    view.update(changes)
    return view


@pytest.mark.parametrize(
    ("matcher", "view", "matches"),
    [
        ({"issuer": ISSUER}, claims(), True),
        ({"issuer": "http://other"}, claims(), False),
        ({"issuer": ISSUER, "sub": "alice"}, claims(), True),
        ({"issuer": ISSUER, "sub": "alice"}, claims(sub="bob"), False),
        ({"issuer": ISSUER, "client_id": "client-a"}, claims(), True),
        ({"issuer": ISSUER, "client_id": "client-b"}, claims(), False),
        ({"issuer": ISSUER, "groups": ["staff", "artists"]}, claims(), True),
        ({"issuer": ISSUER, "groups": ["staff", "admins"]}, claims(), False),
        ({"issuer": ISSUER, "scope": "images:generate"}, claims(), True),
        ({"issuer": ISSUER, "scope": "images"}, claims(), False),
        ({"issuer": ISSUER, "sub": "alice", "scope": "x"}, claims(), False),
    ],
)
def test_every_listed_field_must_match(
    matcher: dict[str, Any], view: dict[str, Any], matches: bool
) -> None:
    found = table({"oauth": matcher}).lookup_oauth(view)
    assert (found is not None) is matches


def test_the_first_matching_grant_in_file_order_wins() -> None:
    grants = table(
        {"oauth": {"issuer": ISSUER, "groups": ["admins"]}},
        {"oauth": {"issuer": ISSUER, "sub": "alice"}},
        {"oauth": {"issuer": ISSUER}},
    )
    assert grants.lookup_oauth(claims()).id == "g1"
    assert grants.lookup_oauth(claims(groups=["admins"])).id == "g0"
    assert grants.lookup_oauth(claims(sub="bob")).id == "g2"
    assert len(grants) == 3


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        ({"oauth": {"sub": "alice"}}, "issuer"),
        ({"oauth": {"issuer": ISSUER, "scope": "a b"}}, "one scope"),
        ({"oauth": {"issuer": ISSUER, "audience": "x"}}, "audience"),
        ({"oauth": {"issuer": ISSUER}, "token_sha256": hash_token("t")}, "exactly one"),
    ],
)
def test_bad_oauth_grants_are_refused(entry: dict[str, Any], text: str) -> None:
    with pytest.raises(GrantsError, match=text):
        table(entry)


def _directory(root: Path, grants: list[dict[str, Any]], *, oauth: bool) -> Path:
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    if oauth:
        (root / "oauth.json").write_bytes(oauth_json())
    return root


def test_the_directory_loads_oauth_json(tmp_path: Path) -> None:
    grants = [{"id": "a", "policy": "p", "oauth": {"issuer": ISSUER}}]
    loaded = load_config(_directory(tmp_path, grants, oauth=True))
    assert loaded.oauth is not None and loaded.oauth.authorization_servers == (ISSUER,)


def test_an_oauth_grant_needs_oauth_json(tmp_path: Path) -> None:
    grants = [{"id": "a", "policy": "p", "oauth": {"issuer": ISSUER}}]
    with pytest.raises(ConfigError, match=r"no oauth\.json"):
        load_config(_directory(tmp_path, grants, oauth=False))


def test_an_oauth_grant_names_a_trusted_issuer(tmp_path: Path) -> None:
    grants = [{"id": "a", "policy": "p", "oauth": {"issuer": "http://elsewhere"}}]
    with pytest.raises(ConfigError, match=r"not among oauth\.json's authorization_servers"):
        load_config(_directory(tmp_path, grants, oauth=True))


def test_a_bad_oauth_json_rejects_the_directory(tmp_path: Path) -> None:
    _directory(tmp_path, [], oauth=False)
    (tmp_path / "oauth.json").write_text('{"version": 1, "resource": "mcp"}')
    with pytest.raises(ConfigError, match=r"oauth.json: oauth.json: \$.resource"):
        load_config(tmp_path)
