"""The protected resource metadata on the sidecar's admin app (RFC 9728): both paths, from
the current oauth.json, 404 without it (starlette's test client: no socket)."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.testclient import TestClient

from authz.config.source import ConfigSource
from authz.server import metadata_routes
from tests.unit.oauth.keys import ISSUER, RESOURCE, oauth_json

DOCUMENT = {
    "resource": RESOURCE,
    "authorization_servers": [ISSUER],
    "scopes_supported": ["mcp:tools", "images:generate"],
    "bearer_methods_supported": ["header"],
}


def _source(root: Path, *, oauth: bytes | None) -> ConfigSource:
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": []}))
    if oauth is not None:
        (root / "oauth.json").write_bytes(oauth)
    return ConfigSource.open(root)


def test_both_paths_serve_the_document(tmp_path: Path) -> None:
    app = Starlette(routes=metadata_routes(_source(tmp_path, oauth=oauth_json())))
    with TestClient(app) as client:
        for path in (
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ):
            got = client.get(path)
            assert got.status_code == 200
            assert got.headers["content-type"] == "application/json"
            assert got.json() == DOCUMENT
        assert client.get("/.well-known/oauth-protected-resource/other").status_code == 404
        assert client.post("/.well-known/oauth-protected-resource").status_code == 405


def test_without_oauth_json_nothing_is_published(tmp_path: Path) -> None:
    app = Starlette(routes=metadata_routes(_source(tmp_path, oauth=None)))
    with TestClient(app) as client:
        assert client.get("/.well-known/oauth-protected-resource").status_code == 404
        assert client.get("/.well-known/oauth-protected-resource/mcp").status_code == 404


def test_the_document_follows_a_reload(tmp_path: Path) -> None:
    source = _source(tmp_path, oauth=oauth_json())
    app = Starlette(routes=metadata_routes(source))
    (tmp_path / "oauth.json").write_bytes(oauth_json(scopes_supported=[], default_scopes=[]))
    assert source.poll()
    with TestClient(app) as client:
        got = client.get("/.well-known/oauth-protected-resource/mcp").json()
    assert got["scopes_supported"] == []
    # a broken file keeps the last good document
    (tmp_path / "oauth.json").write_text('{"version": 1}')
    assert not source.poll()
    assert source.status.last_error is not None and "oauth.json" in source.status.last_error
    with TestClient(app) as client:
        assert client.get("/.well-known/oauth-protected-resource/mcp").status_code == 200
