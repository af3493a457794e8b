"""What the protected resource publishes: its metadata document (RFC 9728) and the
`WWW-Authenticate` challenges (RFC 6750 §3, RFC 9728 §5.1). Pure, from `OAuthConfig`.

- A request without a token: `Bearer resource_metadata="<url>"` (+ `, scope="<default
  scopes>"` when `default_scopes` is set). RFC 6750 §3.1: no error code when the request
  carries no authentication information.
- A bad token (expired, another audience, an untrusted issuer, a bad signature, no grant
  matches it): `Bearer error="invalid_token", resource_metadata="<url>"` (+ `scope`).
- A valid token without a scope the call needs: `Bearer error="insufficient_scope",
  scope="<needed scopes>", resource_metadata="<url>"` (answered 403).

Every value is a quoted-string with no `"` or `\\` in it (the configuration refuses them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from authz.oauth.config import OAuthConfig

__all__ = [
    "insufficient_scope_challenge",
    "invalid_token_challenge",
    "missing_token_challenge",
    "protected_resource_metadata",
]


def protected_resource_metadata(config: OAuthConfig) -> dict[str, Any]:
    """The RFC 9728 document served at `/.well-known/oauth-protected-resource[/mcp]`."""
    return {
        "resource": config.resource,
        "authorization_servers": list(config.authorization_servers),
        "scopes_supported": list(config.scopes_supported),
        "bearer_methods_supported": ["header"],
    }


def _scope(scopes: Iterable[str]) -> str:
    return " ".join(scopes)


def missing_token_challenge(config: OAuthConfig) -> str:
    """The challenge of a 401 for a request without a bearer token."""
    challenge = f'Bearer resource_metadata="{config.metadata_url}"'
    if config.default_scopes:
        challenge += f', scope="{_scope(config.default_scopes)}"'
    return challenge


def invalid_token_challenge(config: OAuthConfig) -> str:
    """The challenge of a 401 for a token that is not accepted."""
    challenge = f'Bearer error="invalid_token", resource_metadata="{config.metadata_url}"'
    if config.default_scopes:
        challenge += f', scope="{_scope(config.default_scopes)}"'
    return challenge


def insufficient_scope_challenge(config: OAuthConfig | None, needed: Iterable[str]) -> str:
    """The challenge of a 403 for a token without every scope the call needs (`needed`);
    without `oauth.json` it names no metadata."""
    challenge = f'Bearer error="insufficient_scope", scope="{_scope(needed)}"'
    if config is not None:
        challenge += f', resource_metadata="{config.metadata_url}"'
    return challenge
