"""The test authorization server itself: oidc-provider as the end-to-end tests run it.

Checked from outside, over HTTP, with PyJWT against the published JWKS: metadata at both
well-known addresses, dynamic registration, tokens for the requested resource only (RFC 8707
audience), both signing algorithms, per-client lifetimes, key rotation, and the sign-in
that the authorization code tests drive.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from authz.devstack.oauth import AuthorizationServer, MachineClient, User
from tests.oauth.clients import REDIRECT_URI, SignIn, token_for

pytestmark = [pytest.mark.processes]

RESOURCE = "http://127.0.0.1:10000/mcp"
OTHER = "https://other.example/mcp"


@pytest.fixture(scope="module")
def oauth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    server = AuthorizationServer(
        resources=[RESOURCE, OTHER],
        log_path=tmp_path_factory.mktemp("oauth") / "as.log",
        users=[User("alice", "wonderland", ("artists", "staff"))],
        clients=[MachineClient("fixed", "fixed-secret", ("mcp:tools",))],
    )
    with server:
        yield server


def _jwks(server: AuthorizationServer) -> dict[str, Any]:
    answer: dict[str, Any] = httpx2.get(f"{server.issuer}/jwks", timeout=10).json()
    return answer


def _verify(server: AuthorizationServer, token: str, audience: str) -> dict[str, Any]:
    """The token's claims, checked as a resource server checks them (PyJWT, the AS's JWKS)."""
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {key["kid"]: key for key in _jwks(server)["keys"]}
    key = jwt.PyJWK.from_dict(keys[kid])
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["RS256", "ES256"], audience=audience, issuer=server.issuer
    )
    return claims


def test_metadata_at_both_well_known_addresses(oauth_server: AuthorizationServer) -> None:
    documents = [
        httpx2.get(f"{oauth_server.issuer}/.well-known/{name}", timeout=10).json()
        for name in ("oauth-authorization-server", "openid-configuration")
    ]
    for metadata in documents:
        assert metadata["issuer"] == oauth_server.issuer
        assert metadata["registration_endpoint"] == f"{oauth_server.issuer}/reg"
        assert metadata["code_challenge_methods_supported"] == ["S256"]
        assert {"authorization_code", "client_credentials"} <= set(
            metadata["grant_types_supported"]
        )
        assert {"mcp:tools", "images:generate"} <= set(metadata["scopes_supported"])
        assert metadata["response_types_supported"] == ["code"]
    algorithms = {key["alg"] for key in _jwks(oauth_server)["keys"]}
    assert algorithms == {"RS256", "ES256"}
    assert all("d" not in key for key in _jwks(oauth_server)["keys"])  # public keys only


def test_client_credentials_token_is_a_jwt_for_the_resource(
    oauth_server: AuthorizationServer,
) -> None:
    client = oauth_server.register_machine_client("machine")
    answer = token_for(
        oauth_server.issuer, client, resource=RESOURCE, scope="mcp:tools images:generate"
    )
    claims = _verify(oauth_server, str(answer["access_token"]), RESOURCE)
    assert claims["aud"] == RESOURCE
    assert claims["sub"] == claims["client_id"] == client.client_id
    assert claims["scope"] == "mcp:tools images:generate"
    assert jwt.get_unverified_header(str(answer["access_token"]))["typ"] == "at+jwt"

    other = token_for(oauth_server.issuer, client, resource=OTHER)
    assert _verify(oauth_server, str(other["access_token"]), OTHER)["aud"] == OTHER
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(oauth_server, str(other["access_token"]), RESOURCE)


def test_unknown_resource_and_unregistered_scope_are_refused(
    oauth_server: AuthorizationServer,
) -> None:
    fixed = MachineClient("fixed", "fixed-secret")
    refused = httpx2.post(
        f"{oauth_server.issuer}/token",
        data={"grant_type": "client_credentials", "resource": "http://elsewhere/mcp"},
        auth=(fixed.client_id, fixed.client_secret),
        timeout=10,
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_target"
    # the fixed client was registered for mcp:tools only
    narrow = httpx2.post(
        f"{oauth_server.issuer}/token",
        data={"grant_type": "client_credentials", "resource": RESOURCE, "scope": "images:generate"},
        auth=(fixed.client_id, fixed.client_secret),
        timeout=10,
    )
    assert narrow.status_code == 400
    assert narrow.json()["error"] == "invalid_scope"


def test_client_settings_choose_the_algorithm_and_lifetime(
    oauth_server: AuthorizationServer,
) -> None:
    client = oauth_server.register_machine_client("es256")
    oauth_server.client_settings(client.client_id, alg="ES256", access_token_ttl=5)
    answer = token_for(oauth_server.issuer, client, resource=RESOURCE)
    token = str(answer["access_token"])
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = _verify(oauth_server, token, RESOURCE)
    assert claims["exp"] - claims["iat"] == 5
    assert answer["expires_in"] == 5


def test_rotation_signs_with_new_keys_and_keeps_or_drops_the_old(
    oauth_server: AuthorizationServer,
) -> None:
    client = oauth_server.register_machine_client("rotation")
    before = str(token_for(oauth_server.issuer, client, resource=RESOURCE)["access_token"])
    old_kid = jwt.get_unverified_header(before)["kid"]

    new_kids = oauth_server.rotate_keys(keep_previous=True)
    after = str(token_for(oauth_server.issuer, client, resource=RESOURCE)["access_token"])
    assert jwt.get_unverified_header(after)["kid"] in new_kids
    assert old_kid not in new_kids
    published = {key["kid"] for key in _jwks(oauth_server)["keys"]}
    assert {old_kid, *new_kids} <= published
    _verify(oauth_server, before, RESOURCE)
    _verify(oauth_server, after, RESOURCE)

    # registered clients survive a rotation
    newest = oauth_server.rotate_keys(keep_previous=False)
    published = {key["kid"] for key in _jwks(oauth_server)["keys"]}
    assert published == set(newest)
    assert old_kid not in published
    token_for(oauth_server.issuer, client, resource=RESOURCE)


def _authorization_url(server: AuthorizationServer, client_id: str, challenge: str) -> str:
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": "state-1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": RESOURCE,
            "scope": "mcp:tools images:generate",
        }
    )
    return f"{server.issuer}/auth?{query}"


async def test_authorization_code_with_pkce_and_sign_in(oauth_server: AuthorizationServer) -> None:
    registered = httpx2.post(
        f"{oauth_server.issuer}/reg",
        json={
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": "mcp:tools",
        },
        timeout=10,
    )
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    )

    wrong = SignIn("alice", "not-her-password")
    with pytest.raises(AssertionError, match="sign-in stopped at 401"):
        await wrong.redirect(_authorization_url(oauth_server, client_id, challenge))

    sign_in = SignIn("alice", "wonderland")
    await sign_in.redirect(_authorization_url(oauth_server, client_id, challenge))
    result = await sign_in.callback()
    assert result.state == "state-1"
    assert result.iss == oauth_server.issuer
    exchange = {
        "grant_type": "authorization_code",
        "code": result.code,
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "resource": RESOURCE,
    }
    missing_verifier = httpx2.post(f"{oauth_server.issuer}/token", data=exchange, timeout=10)
    assert missing_verifier.status_code == 400
    # a code is good once: the refused exchange above spent it, so sign in again
    again = SignIn("alice", "wonderland")
    await again.redirect(_authorization_url(oauth_server, client_id, challenge))
    code = (await again.callback()).code
    answer = httpx2.post(
        f"{oauth_server.issuer}/token",
        data={**exchange, "code": code, "code_verifier": verifier},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    claims = _verify(oauth_server, answer.json()["access_token"], RESOURCE)
    assert claims["sub"] == "alice"
    assert claims["client_id"] == client_id
    assert claims["groups"] == ["artists", "staff"]
    # the registered scope does not narrow what the client may ask for later (step-up)
    assert claims["scope"] == "mcp:tools images:generate"


def test_npm_install_is_cached(oauth_server: AuthorizationServer) -> None:
    stamp = Path(oauth_server.app_dir) / "node_modules" / ".mcp-authz-installed"
    lock = (Path(oauth_server.app_dir) / "package-lock.json").read_bytes()
    assert stamp.read_text().strip() == hashlib.sha256(lock).hexdigest()
