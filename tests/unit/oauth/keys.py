"""Real signing keys and tokens for the OAuth tests: RSA and EC keys from `cryptography`,
tokens signed by `pyjwt`, JWKS documents of the public halves."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from authz.oauth.config import OAuthConfig, load_oauth

__all__ = ["ISSUER", "RESOURCE", "SigningKey", "jwks", "oauth_config", "oauth_json"]

ISSUER = "http://127.0.0.1:9400"
RESOURCE = "http://127.0.0.1:10000/mcp"


def oauth_json(**changes: Any) -> bytes:
    document: dict[str, Any] = {
        "version": 1,
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["mcp:tools", "images:generate"],
        "default_scopes": ["mcp:tools"],
        "clock_skew_seconds": 30,
        "algorithms": ["RS256", "ES256"],
    }
    document.update(changes)
    return json.dumps(document).encode()


def oauth_config(**changes: Any) -> OAuthConfig:
    return load_oauth(oauth_json(**changes))


@dataclass
class SigningKey:
    """A private key with its kid; `sign` makes a token, `jwk` is the public JWK."""

    kid: str
    alg: str = "RS256"
    private: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.private is None:
            if self.alg.startswith("ES"):
                self.private = ec.generate_private_key(ec.SECP256R1())
            else:
                self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        found: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
        found.update(kid=self.kid, use="sig", alg=self.alg)
        return found

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": RESOURCE,
            "client_id": "client-a",
            "scope": "mcp:tools",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, *, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        return jwt.encode(
            self.claims(**changes),
            self.private,
            algorithm=self.alg,
            headers={"kid": self.kid, "typ": "at+jwt", **(headers or {})},
        )


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk for key in keys]}
