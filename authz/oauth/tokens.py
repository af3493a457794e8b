"""JWT access tokens, checked against keys already in hand (pure: no I/O, the time given).

`read_unverified` reads what picks the key: the header's `alg` (one of the configured
algorithms: never `none`, never HMAC) and `kid`, and the payload's `iss` (one of the
trusted issuers). Nothing read there is believed until `validate` has checked the
signature with that issuer's key and then `iss`, `aud` (must contain the resource's
canonical URI, RFC 8707), `exp` (required) and `nbf`, with the configured clock skew.

`TokenClaims.view()` is what a decision may read of the caller (`Grant.token`): `iss`,
`sub`, `client_id` (or `azp`), `scope` (a space-separated `scope` string and an `scp` list
both become one set, listed sorted) and `groups`. No token text or claim value is ever
put into a `TokenRejected` reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from authz.oauth.config import OAuthConfig

__all__ = [
    "MAX_TOKEN_CHARS",
    "TokenClaims",
    "TokenHeader",
    "TokenRejected",
    "VerificationKey",
    "claims_of",
    "key_fits",
    "keys_from_jwks",
    "looks_like_jwt",
    "read_unverified",
    "validate",
]

MAX_TOKEN_CHARS: Final = 16 * 1024
"""A longer bearer token is refused before it is decoded."""

_JWT: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
"""A JWS in compact serialization (used with fullmatch): three base64url parts."""

_KEY_TYPES: Final[Mapping[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
"""The JWK `kty` (and `crv`) each algorithm needs."""


@dataclass(frozen=True, slots=True)
class TokenRejected:
    """The token is not accepted: a 401 `invalid_token`. `reason` names what failed, never
    a value from the token."""

    reason: str


@dataclass(frozen=True, slots=True)
class TokenHeader:
    """What picks the key of a token not yet verified."""

    alg: str
    kid: str | None
    issuer: str


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The claims of a verified token that a grant and a decision read."""

    issuer: str
    subject: str | None
    client_id: str | None
    scopes: frozenset[str]
    groups: tuple[str, ...]
    expires_at: float

    def view(self) -> dict[str, Any]:
        """The caller as conditions see it (`token.iss`, `token.sub`, `token.client_id`,
        `token.scope`, `token.groups`); absent claims are left out (a condition on one is
        false, `exists: false` true)."""
        view: dict[str, Any] = {"iss": self.issuer, "scope": sorted(self.scopes)}
        if self.subject is not None:
            view["sub"] = self.subject
        if self.client_id is not None:
            view["client_id"] = self.client_id
        view["groups"] = list(self.groups)
        return view


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer token has the shape of a signed JWT (three base64url parts)."""
    return len(token) <= MAX_TOKEN_CHARS and _JWT.fullmatch(token) is not None


def read_unverified(token: str, config: OAuthConfig) -> TokenHeader | TokenRejected:
    """The algorithm, key id and issuer of a token, before its signature is checked: the
    algorithm must be one `config` accepts and the issuer one it trusts."""
    if not looks_like_jwt(token):
        return TokenRejected("the bearer token is not a JWT")
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return TokenRejected("the token cannot be decoded")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in config.algorithms:
        return TokenRejected(
            f"the token's signature algorithm is not accepted (accepted: "
            f"{', '.join(config.algorithms)})"
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        return TokenRejected("the token's key id is not a string")
    issuer = payload.get("iss") if isinstance(payload, Mapping) else None
    if not isinstance(issuer, str):
        return TokenRejected("the token has no issuer")
    if issuer not in config.authorization_servers:
        return TokenRejected("the token's issuer is not a trusted authorization server")
    return TokenHeader(alg=alg, kid=kid, issuer=issuer)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key of an issuer's JWKS: its JWK (the public members) and the key."""

    kid: str | None
    jwk: Mapping[str, Any]
    key: jwt.PyJWK

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a signature made with `alg`."""
        return key_fits(self.jwk, alg)


def keys_from_jwks(document: object) -> tuple[VerificationKey, ...]:
    """The usable signature keys of a JWKS document (`{"keys": [...]}`); a key that
    cannot be read (an unknown type, a private or symmetric key, a bad member) is skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        return ()
    found: list[VerificationKey] = []
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # "oct" (a shared secret) is never a verification key here
        if "d" in jwk or jwk.get("use") not in (None, "sig"):
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            key = jwt.PyJWK(dict(jwk))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        found.append(VerificationKey(kid, dict(jwk), key))
    return tuple(found)


def key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether a JWK may verify a signature made with `alg`: its type (and curve) is the
    algorithm's, and its own `alg`, when it names one, is that algorithm."""
    wanted = _KEY_TYPES.get(alg)
    if wanted is None:
        return False
    kty, crv = wanted
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        return False
    if jwk.get("use") not in (None, "sig"):
        return False
    named = jwk.get("alg")
    return named is None or named == alg


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def validate(
    token: str, key: VerificationKey, header: TokenHeader, config: OAuthConfig, now: float
) -> TokenClaims | TokenRejected:
    """Check the signature with `key`, then `iss`, `aud`, `exp` and `nbf` at `now`
    (seconds since the epoch) within `config.clock_skew_seconds`."""
    if header.alg not in config.algorithms or not key.fits(header.alg):
        return TokenRejected("the token's key does not fit its signature algorithm")
    try:
        payload = jwt.decode(
            token,
            key=key.key.key,
            algorithms=[header.alg],
            audience=config.resource,
            issuer=header.issuer,
            options={
                "verify_exp": False,  # checked below, at `now`
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["exp", "iss", "aud"],
            },
        )
    except jwt.InvalidSignatureError:
        return TokenRejected("the token's signature does not verify")
    except jwt.InvalidAudienceError:
        return TokenRejected("the token is for another audience (aud)")
    except jwt.InvalidIssuerError:
        return TokenRejected("the token's issuer is not a trusted authorization server")
    except jwt.MissingRequiredClaimError as exc:
        return TokenRejected(f"the token has no {exc.claim!r} claim")
    except (jwt.PyJWTError, ValueError, TypeError):
        return TokenRejected("the token is not a valid JWT")
    skew = config.clock_skew_seconds
    expires = _number(payload.get("exp"))
    if expires is None:
        return TokenRejected("the token's 'exp' is not a number")
    if now > expires + skew:
        return TokenRejected("the token has expired")
    if "nbf" in payload:
        not_before = _number(payload.get("nbf"))
        if not_before is None:
            return TokenRejected("the token's 'nbf' is not a number")
        if now + skew < not_before:
            return TokenRejected("the token is not valid yet (nbf)")
    return claims_of(payload, header.issuer, expires)


def claims_of(payload: Mapping[str, Any], issuer: str, expires_at: float) -> TokenClaims:
    """The claims a decision reads, from a verified payload: `client_id`, else `azp`; the
    scopes of a space-separated `scope` string and of an `scp` list (or string), as one
    set; `groups` (a list of strings, or one string). Values of another type are left out."""
    subject = payload.get("sub")
    client_id = payload.get("client_id")
    if not isinstance(client_id, str):
        client_id = payload.get("azp")
    scopes = set(_strings(payload.get("scp")))
    scope = payload.get("scope")
    if isinstance(scope, str):
        scopes.update(part for part in scope.split(" ") if part)
    return TokenClaims(
        issuer=issuer,
        subject=subject if isinstance(subject, str) else None,
        client_id=client_id if isinstance(client_id, str) else None,
        scopes=frozenset(scopes),
        groups=_strings(payload.get("groups")),
        expires_at=expires_at,
    )
