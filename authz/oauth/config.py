"""`oauth.json`: this MCP endpoint as an OAuth 2.1 protected resource (optional).

::

    {"version": 1,
     "resource": "http://127.0.0.1:10000/mcp",
     "authorization_servers": ["http://127.0.0.1:9400"],
     "scopes_supported": ["mcp:tools", "images:generate"],
     "default_scopes": ["mcp:tools"],
     "clock_skew_seconds": 30,
     "algorithms": ["RS256", "ES256"]}

- `resource`: the canonical URI of the MCP endpoint (RFC 8707, RFC 9728): an absolute
  `http`/`https` URI without query or fragment. Every token must name it in `aud`.
- `authorization_servers`: the issuers whose tokens are trusted (compared exactly with a
  token's `iss`); their keys are found through their metadata (`authz.oauth.jwks`).
- `scopes_supported`: published in the protected resource metadata; `default_scopes`
  (each one of them) is named in the 401 challenge.
- `clock_skew_seconds` (0 to 300, default 30): leeway for `exp` and `nbf`.
- `algorithms`: the signature algorithms accepted (asymmetric only; `none` and the HMAC
  algorithms are refused at load: a public key is never an HMAC secret).
- `jwks_cache_seconds` (default 300) and `jwks_refetch_seconds` (default 5): how long an
  issuer's keys are kept, and the least time between two fetches of them for a token
  with an unknown `kid`.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from authz import strictjson

__all__ = [
    "ALGORITHMS",
    "OAUTH_FILE",
    "PRM_PATH",
    "OAuthConfig",
    "OAuthConfigError",
    "load_oauth",
]

OAUTH_FILE: Final = "oauth.json"

PRM_PATH: Final = "/.well-known/oauth-protected-resource"
"""Where the protected resource metadata (RFC 9728) is served, and the prefix of its
path-suffixed form (`/.well-known/oauth-protected-resource/mcp`)."""

ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""The signature algorithms a configuration may accept: asymmetric ones only."""

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")
"""A scope token (RFC 6749 §3.3: visible ASCII but `"` and `\\`), used with fullmatch."""


class OAuthConfigError(ValueError):
    """oauth.json is invalid; the message names the offending field."""


def _absolute_uri(value: str, what: str) -> str:
    if len(value) > 2000:
        raise ValueError(f"{what} has at most 2000 characters")
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{what} must be ASCII without spaces or control characters")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an absolute http:// or https:// URI; got {value!r}")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{what} must have no query or fragment; got {value!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{what} must have no user information; got {value!r}")
    if '"' in value or "\\" in value:
        raise ValueError(f"{what} must not contain a quote or a backslash")
    return value


class OAuthConfig(BaseModel):
    """The validated `oauth.json` (frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: StrictInt = Field(description="The format's version: 1.")
    resource: StrictStr = Field(
        description="The canonical URI of the MCP endpoint: the `aud` every token must name."
    )
    authorization_servers: tuple[StrictStr, ...] = Field(
        min_length=1, max_length=16, description="The trusted issuers, exactly as in `iss`."
    )
    scopes_supported: tuple[StrictStr, ...] = Field(default=(), max_length=200)
    default_scopes: tuple[StrictStr, ...] = Field(default=(), max_length=200)
    clock_skew_seconds: StrictInt = Field(default=30, ge=0, le=300)
    algorithms: tuple[StrictStr, ...] = Field(default=("RS256", "ES256"), min_length=1)
    jwks_cache_seconds: StrictInt = Field(default=300, ge=1, le=86400)
    jwks_refetch_seconds: StrictInt = Field(default=5, ge=1, le=3600)

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != 1:
            raise ValueError("must be 1")
        return value

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: str) -> str:
        return _absolute_uri(value, "the resource")

    @field_validator("authorization_servers")
    @classmethod
    def _issuers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for issuer in value:
            _absolute_uri(issuer, "an authorization server (issuer)")
        if len(set(value)) != len(value):
            raise ValueError("an authorization server is listed twice")
        return value

    @field_validator("scopes_supported", "default_scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for scope in value:
            if _SCOPE_TOKEN.fullmatch(scope) is None:
                raise ValueError(
                    f"{scope!r} is not a scope token (1 to 200 visible ASCII characters, "
                    'no space, " or \\)'
                )
        if len(set(value)) != len(value):
            raise ValueError("a scope is listed twice")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for alg in value:
            if alg not in ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} is not accepted; use asymmetric ones: "
                    f"{', '.join(ALGORITHMS)} (none and HS* are never accepted)"
                )
        return value

    @model_validator(mode="after")
    def _defaults_supported(self) -> OAuthConfig:
        if self.scopes_supported:
            missing = [s for s in self.default_scopes if s not in self.scopes_supported]
            if missing:
                raise ValueError(
                    f"default_scopes names {', '.join(missing)}, which scopes_supported "
                    "does not list; add it there"
                )
        return self

    @property
    def origin(self) -> str:
        """`scheme://host[:port]` of the resource: where its metadata is published."""
        parts = urllib.parse.urlsplit(self.resource)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def resource_path(self) -> str:
        """The resource's path (`/mcp`), or "" for a resource at its origin's root."""
        path = urllib.parse.urlsplit(self.resource).path
        return "" if path == "/" else path

    @property
    def metadata_paths(self) -> tuple[str, ...]:
        """The paths the metadata document is served at: `PRM_PATH`, and `PRM_PATH` with
        the resource's path appended (RFC 9728 §3.1) when it has one."""
        if self.resource_path:
            return (PRM_PATH, PRM_PATH + self.resource_path)
        return (PRM_PATH,)

    @property
    def metadata_url(self) -> str:
        """The `resource_metadata` URL named in challenges: the path-suffixed form."""
        return self.origin + PRM_PATH + self.resource_path


def load_oauth(raw: bytes) -> OAuthConfig:
    """Parse (the strict JSON reader) and validate `oauth.json`, or raise `OAuthConfigError`
    naming the field (`oauth.json: $.resource: ...`)."""
    try:
        data = strictjson.loads(raw)
    except strictjson.StrictJsonError as exc:
        problems = [f"{strictjson.json_path(loc)}: {message}" for loc, message in exc.problems]
        raise OAuthConfigError(f"{OAUTH_FILE}: " + "; ".join(problems)) from None
    try:
        return OAuthConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{strictjson.json_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise OAuthConfigError(f"{OAUTH_FILE}: " + "; ".join(problems)) from exc
