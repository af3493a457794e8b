"""Who is calling: the request's one credential → its grant, or a 401 denial (pure; the
grant table is the configuration's, and an OAuth token arrives already checked).

The one step that is not pure, checking an OAuth token's signature against its issuer's
keys, is done by the caller between `oauth_token` (which token, if any, needs it) and
`identify` (`authz.pipeline.gate`), so this module never waits on the network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import structlog

from authz.config.grants import GrantTable, bearer_token
from authz.model import Decision, DenyKind, FixedRule, Grant
from authz.oauth.config import OAuthConfig
from authz.oauth.jwks import KeysUnavailable
from authz.oauth.tokens import TokenClaims, TokenRejected, claims_of, looks_like_jwt
from authz.pipeline.request import HttpRequest

__all__ = ["JWT_PAYLOAD_KEY", "TokenCheck", "identify", "oauth_token"]

log = structlog.get_logger("mcp_authz.pipeline")

JWT_PAYLOAD_KEY = "jwt_payload"
"""The key under which Envoy's jwt_authn filter stores a verified JWT's claims: every
provider must set `payload_in_metadata: jwt_payload` (see deploy/envoy-mesh.yaml)."""

TokenCheck = TokenClaims | TokenRejected | KeysUnavailable
"""What checking an OAuth token gave (`authz.oauth.jwks.TokenVerifier.verify`)."""


def _unauthenticated(message: str, kind: DenyKind = DenyKind.UNAUTHENTICATED) -> Decision:
    return Decision.deny(kind, message, rule=FixedRule.AUTH)


def oauth_token(grants: GrantTable, oauth: OAuthConfig | None, http: HttpRequest) -> str | None:
    """The bearer token that must be checked as an OAuth access token before `identify`:
    with `oauth.json`, no JWT verified by Envoy, an `Authorization: Bearer` token that is
    no static token grant's and has the shape of a JWT. None otherwise."""
    if oauth is None or http.jwt_metadata is not None:
        return None
    token = bearer_token(http.headers.get("authorization"))
    if token is None or not looks_like_jwt(token) or grants.lookup(token) is not None:
        return None
    return token


def identify(
    grants: GrantTable, http: HttpRequest, checked: TokenCheck | None = None
) -> Grant | Decision:
    """The caller's grant, or a denial (401; 503 when an OAuth token cannot be checked).
    Exactly one credential is looked at:

    1. a JWT verified by Envoy's jwt_authn filter (its claims in `http.jwt_metadata`): it
       names the end user or agent. The `Authorization` header is then ignored: it carried
       that JWT (jwt_authn reads it from there).
    2. otherwise an `Authorization` header: it must be one well-formed bearer token, and
       a. a static token grant's token (by its sha256), or else
       b. an OAuth access token, when `checked` says how its check went (`oauth_token`):
          its verified claims must match an `oauth` grant (the first in file order).
    3. otherwise the verified peer certificate's identity (`http.source_principal`, e.g. a
       SPIFFE ID): it names the workload, shared by everything that runs in it.

    A credential that is present but names no grant is a 401: the request never falls back
    to the next one (a bad token with a good client certificate is still a 401). Nothing is
    ever read from client-supplied headers other than `Authorization`. A grant found by a
    token (1, 2b) carries the token's claims (`Grant.token`) for this request.
    """
    if http.jwt_metadata is not None:
        payload = http.jwt_metadata.get(JWT_PAYLOAD_KEY)
        if not isinstance(payload, Mapping):
            log.warning("jwt_payload_missing", namespace_keys=sorted(http.jwt_metadata))
            return _unauthenticated(
                "a JWT was verified but its claims are not in the jwt_authn metadata "
                f"({JWT_PAYLOAD_KEY!r}): the proxy is misconfigured"
            )
        grant = grants.lookup_jwt(payload)
        if grant is None:
            return _unauthenticated(
                "unknown JWT identity: no grant matches its claims", DenyKind.INVALID_TOKEN
            )
        issuer = payload.get("iss")
        if isinstance(issuer, str):
            return dataclasses.replace(grant, token=claims_of(payload, issuer, 0.0).view())
        return grant
    authorization = http.headers.get("authorization")
    if authorization is not None:
        token = bearer_token(authorization)
        if token is None:
            return _unauthenticated("missing bearer token")
        grant = grants.lookup(token)
        if grant is not None:
            return grant
        if checked is not None:
            return _oauth_grant(grants, checked)
        return _unauthenticated("unknown bearer token", DenyKind.INVALID_TOKEN)
    if http.source_principal:
        grant = grants.lookup_spiffe(http.source_principal)
        if grant is None:
            return _unauthenticated("no grant for the client certificate's identity")
        return grant
    return _unauthenticated("missing bearer token")


def _oauth_grant(grants: GrantTable, checked: TokenCheck) -> Grant | Decision:
    """The `oauth` grant of a checked token, or why there is none."""
    if isinstance(checked, KeysUnavailable):
        return Decision.deny(
            DenyKind.UNAVAILABLE,
            f"{checked.reason}; the token cannot be checked, so the request was not run",
            rule=FixedRule.AUTH,
            retry_after=1,
        )
    if isinstance(checked, TokenRejected):
        return _unauthenticated(f"invalid token: {checked.reason}", DenyKind.INVALID_TOKEN)
    view = checked.view()
    grant = grants.lookup_oauth(view)
    if grant is None:
        return _unauthenticated(
            "the token is valid but no grant matches its claims", DenyKind.INVALID_TOKEN
        )
    return dataclasses.replace(grant, token=view)
