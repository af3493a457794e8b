"""Token validation with real keys (pure): signature, issuer, audience, time, algorithm
confusion, and the claims a decision reads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from authz.oauth.tokens import (
    TokenClaims,
    TokenHeader,
    TokenRejected,
    VerificationKey,
    keys_from_jwks,
    looks_like_jwt,
    read_unverified,
    validate,
)
from tests.unit.oauth.keys import ISSUER, RESOURCE, SigningKey, jwks, oauth_config

RSA = SigningKey("rsa-1")
EC = SigningKey("ec-1", alg="ES256")
CONFIG = oauth_config()


def _key(signing: SigningKey) -> VerificationKey:
    (key,) = keys_from_jwks(jwks(signing))
    return key


def check(token: str, signing: SigningKey = RSA, now: float | None = None, **changes: Any) -> Any:
    config = oauth_config(**changes) if changes else CONFIG
    header = read_unverified(token, config)
    if isinstance(header, TokenRejected):
        return header
    return validate(token, _key(signing), header, config, time.time() if now is None else now)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def test_a_valid_rs256_token_gives_its_claims() -> None:
    claims = check(RSA.sign(scope="mcp:tools images:generate", groups=["artists", "staff"]))
    assert isinstance(claims, TokenClaims)
    assert claims.issuer == ISSUER
    assert claims.subject == "user-1"
    assert claims.client_id == "client-a"
    assert claims.scopes == {"mcp:tools", "images:generate"}
    assert claims.view() == {
        "iss": ISSUER,
        "sub": "user-1",
        "client_id": "client-a",
        "scope": ["images:generate", "mcp:tools"],
        "groups": ["artists", "staff"],
    }


def test_a_valid_es256_token_is_accepted() -> None:
    assert isinstance(check(EC.sign(), EC), TokenClaims)


def test_scp_list_and_scope_string_are_one_set_and_azp_names_the_client() -> None:
    claims = check(RSA.sign(scope="a  b", scp=["c", "a"], client_id=None, azp="client-z"))
    assert isinstance(claims, TokenClaims)
    assert claims.scopes == {"a", "b", "c"}
    assert claims.client_id == "client-z"


def test_an_expired_token_is_refused_past_the_clock_skew_only() -> None:
    now = time.time()
    token = RSA.sign(exp=int(now) - 10)
    assert isinstance(check(token, now=now), TokenClaims)  # within the 30 s skew
    assert check(token, now=now + 25) == TokenRejected("the token has expired")
    assert check(token, now=now, clock_skew_seconds=0) == TokenRejected("the token has expired")


def test_a_token_not_valid_yet_is_refused() -> None:
    now = time.time()
    token = RSA.sign(nbf=int(now) + 120)
    assert check(token, now=now) == TokenRejected("the token is not valid yet (nbf)")
    assert isinstance(check(token, now=now + 100), TokenClaims)


def test_another_audience_is_refused_and_an_audience_list_naming_the_resource_is_not() -> None:
    refused = check(RSA.sign(aud="http://127.0.0.1:10000/other"))
    assert refused == TokenRejected("the token is for another audience (aud)")
    assert isinstance(check(RSA.sign(aud=["https://elsewhere", RESOURCE])), TokenClaims)
    assert isinstance(check(RSA.sign(aud=None)), TokenRejected)


def test_an_untrusted_issuer_is_refused_before_any_key_is_looked_for() -> None:
    refused = read_unverified(RSA.sign(iss="http://127.0.0.1:9401"), CONFIG)
    assert refused == TokenRejected("the token's issuer is not a trusted authorization server")
    assert read_unverified(RSA.sign(), CONFIG) == TokenHeader("RS256", "rsa-1", ISSUER)


def test_a_token_without_exp_is_refused() -> None:
    assert check(RSA.sign(exp=None)) == TokenRejected("the token has no 'exp' claim")


def test_a_signature_by_another_key_with_the_same_kid_is_refused() -> None:
    impostor = SigningKey("rsa-1")
    assert check(impostor.sign()) == TokenRejected("the token's signature does not verify")


def test_alg_none_is_refused() -> None:
    token = _forged({"alg": "none", "kid": "rsa-1"}, RSA.claims(), None)
    refused = read_unverified(token, CONFIG)
    assert isinstance(refused, TokenRejected)
    assert "algorithm is not accepted" in refused.reason


@pytest.mark.parametrize("algorithms", [["RS256"], ["RS256", "ES256"]])
def test_hs256_signed_with_the_public_key_is_refused(algorithms: list[str]) -> None:
    public_pem = RSA.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = _forged({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, RSA.claims(), public_pem)
    refused = read_unverified(token, oauth_config(algorithms=algorithms))
    assert isinstance(refused, TokenRejected)
    # and even when handed a header claiming HS256, the key does not fit it
    header = TokenHeader("HS256", "rsa-1", ISSUER)
    assert isinstance(validate(token, _key(RSA), header, CONFIG, time.time()), TokenRejected)


def test_a_key_of_another_type_than_the_algorithm_is_refused() -> None:
    token = EC.sign()
    header = read_unverified(token, CONFIG)
    assert isinstance(header, TokenHeader)
    refused = validate(token, _key(RSA), header, CONFIG, time.time())
    assert refused == TokenRejected("the token's key does not fit its signature algorithm")


def test_an_algorithm_the_configuration_does_not_accept_is_refused() -> None:
    assert isinstance(check(EC.sign(), EC, algorithms=["RS256"]), TokenRejected)


def test_jwks_skips_private_symmetric_and_encryption_keys() -> None:
    private = RSA.jwk | {"d": "AAAA"}
    secret = {"kty": "oct", "k": "c2VjcmV0", "kid": "s"}
    encryption = EC.jwk | {"use": "enc"}
    keys = keys_from_jwks({"keys": [private, secret, encryption, RSA.jwk, "junk"]})
    assert [key.kid for key in keys] == ["rsa-1"]
    assert keys_from_jwks({"nokeys": []}) == ()


def test_shapes_that_are_not_jwts() -> None:
    assert not looks_like_jwt("opaque-static-token")
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a." * 10000 + "b.c")
    assert looks_like_jwt(RSA.sign())
    assert isinstance(read_unverified("a.b.c", CONFIG), TokenRejected)


def test_no_rejection_reason_carries_token_content() -> None:
    marker = "SECRET-MARKER"
    for token in (
        RSA.sign(sub=marker, aud=marker),
        RSA.sign(iss=marker),
        RSA.sign(sub=marker, exp=1),
    ):
        found = check(token)
        assert isinstance(found, TokenRejected)
        assert marker not in found.reason
