"""The issuers' keys over real HTTP: a local http.server serves the metadata and JWKS
documents the tests write (static JSON, not an authorization server). The cache's clock
is the test's own, so no test waits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from authz.devstack.stack import free_port
from authz.oauth.config import OAuthConfig
from authz.oauth.jwks import KeysUnavailable, TokenVerifier, discovery_urls
from authz.oauth.tokens import TokenClaims, TokenRejected
from tests.unit.oauth.conftest import Site
from tests.unit.oauth.keys import SigningKey, oauth_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(site: Site, **changes: Any) -> OAuthConfig:
    return oauth_config(authorization_servers=[site.url], **changes)


@pytest.mark.processes
async def test_keys_are_found_through_the_issuer_metadata_and_kept(site: Site) -> None:
    key = SigningKey("k1")
    site.publish(key)
    verifier = TokenVerifier()
    config = _config(site)
    try:
        for _ in range(3):
            claims = await verifier.verify(config, key.sign(iss=site.url))
            assert isinstance(claims, TokenClaims)
            assert claims.subject == "user-1"
    finally:
        await verifier.aclose()
    # RFC 8414 first (404 here), then OpenID Connect discovery; one fetch for three tokens
    assert site.hits["/.well-known/oauth-authorization-server"] == 1
    assert site.hits["/.well-known/openid-configuration"] == 1
    assert site.hits["/jwks"] == 1


@pytest.mark.processes
async def test_an_unknown_kid_fetches_again_and_a_rotated_key_is_accepted(site: Site) -> None:
    old, new = SigningKey("old"), SigningKey("new", alg="ES256")
    site.publish(old)
    clock = Clock()
    verifier = TokenVerifier(monotonic=clock)
    config = _config(site, jwks_refetch_seconds=5)
    try:
        assert isinstance(await verifier.verify(config, old.sign(iss=site.url)), TokenClaims)
        site.publish(new)  # the issuer rotates its key
        clock.now += 6
        claims = await verifier.verify(config, new.sign(iss=site.url))
        assert isinstance(claims, TokenClaims)
        assert site.hits["/jwks"] == 2
        # the retired key is gone from the kept set: its tokens are refused
        clock.now += 6
        refused = await verifier.verify(config, old.sign(iss=site.url))
        assert isinstance(refused, TokenRejected)
    finally:
        await verifier.aclose()


@pytest.mark.processes
async def test_a_flood_of_unknown_kids_fetches_at_most_once_per_interval(site: Site) -> None:
    key = SigningKey("real")
    site.publish(key)
    clock = Clock()
    verifier = TokenVerifier(monotonic=clock)
    config = _config(site, jwks_refetch_seconds=5)
    try:
        assert isinstance(await verifier.verify(config, key.sign(iss=site.url)), TokenClaims)
        clock.now += 10  # the interval since the first fetch has passed
        bogus = [
            SigningKey(f"bogus-{i}", private=key.private).sign(iss=site.url) for i in range(100)
        ]
        answers = await asyncio.gather(*(verifier.verify(config, t) for t in bogus))
        assert all(isinstance(answer, TokenRejected) for answer in answers)
        assert site.hits["/jwks"] == 2  # one refetch for the whole flood
        answers = await asyncio.gather(*(verifier.verify(config, t) for t in bogus))
        assert site.hits["/jwks"] == 2  # within the interval: none
        clock.now += 5
        await verifier.verify(config, bogus[0])
        assert site.hits["/jwks"] == 3
        # the real key still works throughout
        assert isinstance(await verifier.verify(config, key.sign(iss=site.url)), TokenClaims)
    finally:
        await verifier.aclose()


async def test_an_authorization_server_that_is_down_fails_closed() -> None:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    key = SigningKey("k1")
    verifier = TokenVerifier()
    try:
        found = await verifier.verify(
            oauth_config(authorization_servers=[issuer]), key.sign(iss=issuer)
        )
    finally:
        await verifier.aclose()
    assert isinstance(found, KeysUnavailable)
    assert issuer in found.reason


@pytest.mark.processes
async def test_an_error_answer_fails_closed_and_is_not_retried_within_the_interval(
    site: Site,
) -> None:
    key = SigningKey("k1")
    site.publish(key)
    site.documents["/jwks"] = (500, {"error": "boom"})
    clock = Clock()
    verifier = TokenVerifier(monotonic=clock)
    config = _config(site, jwks_refetch_seconds=5)
    token = key.sign(iss=site.url)
    try:
        for _ in range(5):
            assert isinstance(await verifier.verify(config, token), KeysUnavailable)
        assert site.hits["/jwks"] == 1
        site.publish(key)  # the issuer recovers
        clock.now += 5
        assert isinstance(await verifier.verify(config, token), TokenClaims)
    finally:
        await verifier.aclose()


@pytest.mark.processes
async def test_kept_keys_expire_and_are_not_used_once_the_issuer_is_down(site: Site) -> None:
    key = SigningKey("k1")
    site.publish(key)
    clock = Clock()
    verifier = TokenVerifier(monotonic=clock)
    config = _config(site, jwks_cache_seconds=60)
    token = key.sign(iss=site.url)
    try:
        assert isinstance(await verifier.verify(config, token), TokenClaims)
        site.documents.clear()  # every document now answers 404
        clock.now += 59
        assert isinstance(await verifier.verify(config, token), TokenClaims)
        clock.now += 2
        assert isinstance(await verifier.verify(config, token), KeysUnavailable)
    finally:
        await verifier.aclose()


@pytest.mark.processes
async def test_metadata_naming_another_issuer_is_not_trusted(site: Site) -> None:
    key = SigningKey("k1")
    site.publish(key, issuer="http://127.0.0.1:1")
    verifier = TokenVerifier()
    try:
        found = await verifier.verify(_config(site), key.sign(iss=site.url))
    finally:
        await verifier.aclose()
    assert isinstance(found, KeysUnavailable)
    assert site.hits["/jwks"] == 0


@pytest.mark.processes
async def test_a_request_that_goes_away_does_not_cancel_the_shared_fetch(site: Site) -> None:
    key = SigningKey("k1")
    site.publish(key)
    verifier = TokenVerifier()
    config = _config(site)
    token = key.sign(iss=site.url)
    try:
        first = asyncio.ensure_future(verifier.verify(config, token))
        await asyncio.sleep(0)  # the fetch has started
        first.cancel()
        assert isinstance(await verifier.verify(config, token), TokenClaims)
    finally:
        await verifier.aclose()
    assert site.hits["/jwks"] == 1


@pytest.mark.processes
async def test_prefetch_fetches_before_the_first_token(site: Site) -> None:
    key = SigningKey("k1")
    site.publish(key)
    verifier = TokenVerifier()
    config = _config(site)
    try:
        verifier.prefetch(config)
        assert isinstance(await verifier.verify(config, key.sign(iss=site.url)), TokenClaims)
    finally:
        await verifier.aclose()
    assert site.hits["/jwks"] == 1
    assert verifier.fetches(site.url) == 1


def test_discovery_urls_insert_the_issuer_path() -> None:
    assert discovery_urls("https://as.example") == (
        "https://as.example/.well-known/oauth-authorization-server",
        "https://as.example/.well-known/openid-configuration",
    )
    assert discovery_urls("https://as.example/tenant/1") == (
        "https://as.example/.well-known/oauth-authorization-server/tenant/1",
        "https://as.example/.well-known/openid-configuration/tenant/1",
        "https://as.example/tenant/1/.well-known/openid-configuration",
    )
