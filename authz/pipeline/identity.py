"""Who is calling: the request's one credential → its grant, or a 401 denial (pure; the
grant table is the configuration's)."""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from authz.config.grants import GrantTable, bearer_token
from authz.model import Decision, DenyKind, FixedRule, Grant
from authz.pipeline.request import HttpRequest

__all__ = ["JWT_PAYLOAD_KEY", "identify"]

log = structlog.get_logger("mcp_authz.pipeline")

JWT_PAYLOAD_KEY = "jwt_payload"
"""The key under which Envoy's jwt_authn filter stores a verified JWT's claims: every
provider must set `payload_in_metadata: jwt_payload` (see deploy/envoy-mesh.yaml)."""


def _unauthenticated(message: str, kind: DenyKind = DenyKind.UNAUTHENTICATED) -> Decision:
    return Decision.deny(kind, message, rule=FixedRule.AUTH)


def identify(grants: GrantTable, http: HttpRequest) -> Grant | Decision:
    """The caller's grant, or a 401 denial. Exactly one credential is looked at:

    1. a JWT verified by Envoy's jwt_authn filter (its claims in `http.jwt_metadata`): it
       names the end user or agent. The `Authorization` header is then ignored: it carried
       that JWT (jwt_authn reads it from there).
    2. otherwise an `Authorization` header: it must be one well-formed bearer token of a
       token grant.
    3. otherwise the verified peer certificate's identity (`http.source_principal`, e.g. a
       SPIFFE ID): it names the workload, shared by everything that runs in it.

    A credential that is present but names no grant is a 401: the request never falls back
    to the next one (a bad token with a good client certificate is still a 401). Nothing is
    ever read from client-supplied headers other than `Authorization`.
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
        return grant
    authorization = http.headers.get("authorization")
    if authorization is not None:
        token = bearer_token(authorization)
        if token is None:
            return _unauthenticated("missing bearer token")
        grant = grants.lookup(token)
        if grant is None:
            return _unauthenticated("unknown bearer token", DenyKind.INVALID_TOKEN)
        return grant
    if http.source_principal:
        grant = grants.lookup_spiffe(http.source_principal)
        if grant is None:
            return _unauthenticated("no grant for the client certificate's identity")
        return grant
    return _unauthenticated("missing bearer token")
