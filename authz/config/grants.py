"""Grants: which policy a caller gets, and how the caller is recognised.

A grant matches exactly one kind of credential:

- ``token_sha256``: an opaque bearer token (``Authorization: Bearer <token>``), stored and
  compared only as its sha256;
- ``spiffe_id``: the peer certificate's identity on an mTLS listener, as Envoy reports it in
  ``attributes.source.principal`` (the first URI SAN), compared exactly;
- ``jwt``: the claims of a JWT that Envoy's ``jwt_authn`` filter verified (issuer, optional
  subject, audience and further claims, all compared exactly);
- ``oauth``: the claims of an OAuth access token the sidecar verified itself
  (:mod:`authz.oauth`): ``issuer`` (required), and any of ``sub``, ``client_id``, ``groups``
  (the token's groups include each one) and ``scope`` (the token carries it). Unlike the
  other kinds, several OAuth grants may match one token: the first in file order wins.

Which credential of a request is used is decided in :mod:`authz.pipeline.identity`; this module only
loads the table and answers "which grant, if any, does this credential name".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    field_validator,
    model_validator,
)

from authz.config.files import load_document
from authz.model import Grant

__all__ = [
    "RESERVED_CLAIMS",
    "SPIFFE_ID_MAX",
    "TRUST_DOMAIN_MAX",
    "ClaimValue",
    "GrantTable",
    "GrantsError",
    "JwtMatcher",
    "OAuthMatcher",
    "bearer_token",
    "check_spiffe_id",
    "hash_token",
    "load_grants",
]


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_GRANT_ID = re.compile(r"[!-~]{1,200}")
"""A grant id (used with fullmatch): 1 to 200 visible ASCII characters. The id is sent to
the upstream in the `x-mcp-grant` header and written to every audit event, so it has no
space, no control character (a CR made every call of the grant a plain-text 503) and
nothing outside ASCII."""
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([!-~]+)")
"""Used with fullmatch: `$` alone would also match before a trailing newline."""

_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)*)")
"""A SPIFFE ID as the SPIFFE specification defines it (used with fullmatch): the scheme in
lower case, a trust domain of lower-case letters, digits, `.`, `-`, `_`, and a path of
non-empty segments of letters, digits, `.`, `-`, `_` (no `.` or `..` segment, no trailing
slash, no query, fragment, port or user info)."""
SPIFFE_ID_MAX = 2048
TRUST_DOMAIN_MAX = 255

RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
"""Registered claims a grant's `jwt.claims` may not name: `iss`, `sub` and `aud` have their
own fields, and the time and id claims identify no one (jwt_authn checks `exp`/`nbf`)."""

_SAFE_INT = 2**53
"""Envoy hands claims over as a protobuf Struct, whose numbers are doubles: integers beyond
2**53 cannot be compared exactly, so a grant may not name one."""

ClaimValue = str | bool | int
"""A claim value a grant can require: a string, a boolean or an integer (no floats, lists
or objects), compared by type and value: `true` is not `1`, `"1"` is not `1`."""


class GrantsError(ValueError):
    """grants.json is invalid; the message names the offending field."""


def _no_lone_surrogates(value: str) -> str:
    """Reject a lone surrogate escape (`"\\ud800"`) in a claim name or value: no verified
    claim can equal it. (pydantic rejects them in `str` fields itself.)"""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate escape; remove it") from None
    return value


class _JwtEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: StrictStr = Field(min_length=1, max_length=1000)
    subject: StrictStr | None = Field(default=None, min_length=1, max_length=1000)
    audience: StrictStr | None = Field(default=None, min_length=1, max_length=1000)
    claims: dict[str, Any] = Field(default_factory=dict, max_length=32)

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: dict[str, Any]) -> dict[str, ClaimValue]:
        for name, claim in value.items():
            if not 1 <= len(name) <= 200:
                raise ValueError("a claim name has 1 to 200 characters")
            _no_lone_surrogates(name)
            if name in RESERVED_CLAIMS:
                field_name = {"iss": "issuer", "sub": "subject", "aud": "audience"}.get(name)
                hint = f"use jwt.{field_name}" if field_name else "it identifies no one"
                raise ValueError(f"claim {name!r} cannot be required here ({hint})")
            if isinstance(claim, str):
                if len(claim) > 1000:
                    raise ValueError(f"claim {name!r}: a value has at most 1000 characters")
                _no_lone_surrogates(claim)
            elif isinstance(claim, bool):
                pass
            elif isinstance(claim, int):
                if abs(claim) > _SAFE_INT:
                    raise ValueError(f"claim {name!r}: integers must be within ±2**53")
            else:
                raise ValueError(
                    f"claim {name!r}: the value must be a string, a boolean or an integer"
                )
        return value


class _OAuthEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: StrictStr = Field(min_length=1, max_length=1000)
    sub: StrictStr | None = Field(default=None, min_length=1, max_length=1000)
    client_id: StrictStr | None = Field(default=None, min_length=1, max_length=1000)
    groups: tuple[StrictStr, ...] = Field(default=(), max_length=32)
    scope: StrictStr | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("scope")
    @classmethod
    def _one_scope(cls, value: str | None) -> str | None:
        if value is not None and (" " in value or not value.isprintable()):
            raise ValueError("names one scope (no spaces); list further scopes in the policy")
        return value

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            if not 1 <= len(group) <= 1000:
                raise ValueError("a group name has 1 to 1000 characters")
            _no_lone_surrogates(group)
        return value


class _GrantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr
    label: str = ""
    token_sha256: str | None = None
    spiffe_id: StrictStr | None = None
    jwt: _JwtEntry | None = None
    oauth: _OAuthEntry | None = None
    policy: str = Field(min_length=1, max_length=200)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if _GRANT_ID.fullmatch(value) is None:
            raise ValueError(
                "must be 1 to 200 visible ASCII characters (no spaces or control characters)"
            )
        return value

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_HEX.match(value):
            raise ValueError("must be 64 lowercase hex characters (sha256 of the token)")
        return value

    @field_validator("spiffe_id")
    @classmethod
    def _spiffe(cls, value: str | None) -> str | None:
        if value is not None:
            check_spiffe_id(value)
        return value

    @model_validator(mode="after")
    def _one_matcher(self) -> _GrantEntry:
        given = [
            name
            for name, value in (
                ("token_sha256", self.token_sha256),
                ("spiffe_id", self.spiffe_id),
                ("jwt", self.jwt),
                ("oauth", self.oauth),
            )
            if value is not None
        ]
        if len(given) != 1:
            found = f"got {', '.join(given)}" if given else "got none"
            raise ValueError(
                f"a grant needs exactly one of token_sha256, spiffe_id, jwt, oauth ({found})"
            )
        return self


class _GrantsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    grants: tuple[_GrantEntry, ...]

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != "1":
            raise ValueError('must be "1"')
        return value


def check_spiffe_id(value: str) -> None:
    """Raise ValueError unless `value` is a well-formed SPIFFE ID."""
    if len(value) > SPIFFE_ID_MAX:
        raise ValueError(f"a SPIFFE ID has at most {SPIFFE_ID_MAX} characters")
    match = _SPIFFE_ID.fullmatch(value)
    if match is None:
        raise ValueError(
            "must be a SPIFFE ID: spiffe://<trust domain>/<path>, the trust domain in lower "
            "case (a-z 0-9 . - _), path segments of A-Z a-z 0-9 . - _ (no trailing slash)"
        )
    if len(match.group(1)) > TRUST_DOMAIN_MAX:
        raise ValueError(f"the trust domain has at most {TRUST_DOMAIN_MAX} characters")
    if any(segment in (".", "..") for segment in match.group(2).split("/")):
        raise ValueError("a SPIFFE ID path has no '.' or '..' segments")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _claim_equals(expected: ClaimValue, actual: Any) -> bool:
    """Type-strict equality of a required claim value with a verified claim value.

    Envoy's Struct turns every JSON number into a float, so an integer requirement matches
    a float of the same value; a boolean matches only a boolean, a string only a string.
    """
    if isinstance(expected, bool):
        return isinstance(actual, bool) and actual is expected
    if isinstance(expected, int):
        return (
            isinstance(actual, int | float) and not isinstance(actual, bool) and actual == expected
        )
    return isinstance(actual, str) and actual == expected


@dataclass(frozen=True, slots=True)
class JwtMatcher:
    """What a `jwt` grant requires of verified claims. Every listed field must match."""

    issuer: str
    subject: str | None = None
    audience: str | None = None
    claims: tuple[tuple[str, ClaimValue], ...] = ()

    def matches(self, payload: Mapping[str, Any]) -> bool:
        issuer = payload.get("iss")
        if not isinstance(issuer, str) or issuer != self.issuer:
            return False
        if self.subject is not None:
            subject = payload.get("sub")
            if not isinstance(subject, str) or subject != self.subject:
                return False
        if self.audience is not None:
            audience = payload.get("aud")
            # RFC 7519: `aud` is one string or an array of strings.
            if isinstance(audience, str):
                if audience != self.audience:
                    return False
            elif not isinstance(audience, Sequence) or not any(
                isinstance(item, str) and item == self.audience for item in audience
            ):
                return False
        return all(
            name in payload and _claim_equals(value, payload[name]) for name, value in self.claims
        )

    def overlaps(self, other: JwtMatcher) -> bool:
        """True when one token could satisfy both matchers (load-time ambiguity check).

        Two matchers are disjoint only when they require different values of the same claim
        (issuer, subject, or a claim both list). Different audiences do not separate them:
        `aud` may be an array naming both.
        """
        if self.issuer != other.issuer:
            return False
        if self.subject is not None and other.subject is not None and self.subject != other.subject:
            return False
        mine = dict(self.claims)
        for name, value in other.claims:
            if name in mine and not _same_claim_value(mine[name], value):
                return False
        return True


@dataclass(frozen=True, slots=True)
class OAuthMatcher:
    """What an `oauth` grant requires of a verified token's claims (as
    `authz.oauth.tokens.TokenClaims.view` gives them). Every listed field must match."""

    issuer: str
    sub: str | None = None
    client_id: str | None = None
    groups: tuple[str, ...] = ()
    scope: str | None = None

    def matches(self, claims: Mapping[str, Any]) -> bool:
        if claims.get("iss") != self.issuer:
            return False
        if self.sub is not None and claims.get("sub") != self.sub:
            return False
        if self.client_id is not None and claims.get("client_id") != self.client_id:
            return False
        groups = claims.get("groups") or ()
        if any(group not in groups for group in self.groups):
            return False
        return self.scope is None or self.scope in (claims.get("scope") or ())


def _same_claim_value(a: ClaimValue, b: ClaimValue) -> bool:
    return type(a) is type(b) and a == b


@dataclass(frozen=True, slots=True)
class GrantTable:
    """Immutable lookups from each kind of credential to its Grant.

    At most one grant matches any credential: `load_grants` rejects files where two grants
    could match the same token hash, SPIFFE ID or JWT.
    """

    by_hash: Mapping[str, Grant]
    by_spiffe_id: Mapping[str, Grant] = field(default_factory=dict)
    jwt_grants: tuple[tuple[JwtMatcher, Grant], ...] = ()
    oauth_grants: tuple[tuple[OAuthMatcher, Grant], ...] = ()
    """In file order: the first that matches a token wins."""
    _jwt_index: Mapping[tuple[str, str | None], list[tuple[JwtMatcher, Grant]]] = field(
        init=False, repr=False, compare=False
    )
    """`jwt_grants` by (issuer, subject or None): a lookup tries two small lists."""

    def __post_init__(self) -> None:
        index: dict[tuple[str, str | None], list[tuple[JwtMatcher, Grant]]] = {}
        for matcher, grant in self.jwt_grants:
            index.setdefault((matcher.issuer, matcher.subject), []).append((matcher, grant))
        object.__setattr__(self, "_jwt_index", index)

    def lookup(self, token: str) -> Grant | None:
        """The grant of an opaque bearer token (compared as its sha256)."""
        return self.by_hash.get(hash_token(token))

    def lookup_spiffe(self, principal: str) -> Grant | None:
        """The grant of a verified peer identity (`attributes.source.principal`), exactly."""
        return self.by_spiffe_id.get(principal)

    def lookup_jwt(self, payload: Mapping[str, Any]) -> Grant | None:
        """The grant whose `jwt` matcher the verified claims satisfy, if exactly one does."""
        issuer, subject = payload.get("iss"), payload.get("sub")
        if not isinstance(issuer, str):
            return None
        candidates = list(self._jwt_index.get((issuer, None), ()))
        if isinstance(subject, str):
            candidates += self._jwt_index.get((issuer, subject), ())
        found = [grant for matcher, grant in candidates if matcher.matches(payload)]
        # load_grants makes two matches impossible; if it ever happened, fail closed.
        return found[0] if len(found) == 1 else None

    def lookup_oauth(self, claims: Mapping[str, Any]) -> Grant | None:
        """The first `oauth` grant (in file order) whose matcher a verified token's claims
        satisfy."""
        for matcher, grant in self.oauth_grants:
            if matcher.matches(claims):
                return grant
        return None

    @property
    def oauth_issuers(self) -> frozenset[str]:
        """The issuers the `oauth` grants name."""
        return frozenset(matcher.issuer for matcher, _ in self.oauth_grants)

    def __len__(self) -> int:
        return (
            len(self.by_hash)
            + len(self.by_spiffe_id)
            + len(self.jwt_grants)
            + len(self.oauth_grants)
        )


def load_grants(raw: bytes) -> GrantTable:
    doc = load_document(raw, file_name="grants.json", model=_GrantsDocument, error=GrantsError)
    by_hash: dict[str, Grant] = {}
    by_spiffe: dict[str, Grant] = {}
    jwt_grants: list[tuple[JwtMatcher, Grant, int]] = []
    oauth_grants: list[tuple[OAuthMatcher, Grant]] = []
    # Per issuer: matchers without a subject, and matchers by subject. A matcher can only
    # overlap one of the same issuer with the same subject or without one.
    unscoped: dict[str, list[tuple[JwtMatcher, Grant, int]]] = {}
    by_subject: dict[str, dict[str, list[tuple[JwtMatcher, Grant, int]]]] = {}
    seen_ids: set[str] = set()
    for index, entry in enumerate(doc.grants):
        where = f"grants.json: $.grants[{index}]"
        if entry.id in seen_ids:
            raise GrantsError(f"{where}.id: duplicate grant id")
        seen_ids.add(entry.id)
        grant = Grant(id=entry.id, label=entry.label, policy=entry.policy)
        if entry.token_sha256 is not None:
            if entry.token_sha256 in by_hash:
                raise GrantsError(f"{where}.token_sha256: same token as another grant")
            by_hash[entry.token_sha256] = grant
        elif entry.spiffe_id is not None:
            if entry.spiffe_id in by_spiffe:
                other = by_spiffe[entry.spiffe_id].id
                raise GrantsError(f"{where}.spiffe_id: same SPIFFE ID as grant {other!r}")
            by_spiffe[entry.spiffe_id] = grant
        elif entry.oauth is not None:
            oauth = entry.oauth
            oauth_grants.append(
                (
                    OAuthMatcher(
                        issuer=oauth.issuer,
                        sub=oauth.sub,
                        client_id=oauth.client_id,
                        groups=oauth.groups,
                        scope=oauth.scope,
                    ),
                    grant,
                )
            )
        elif entry.jwt is not None:
            matcher = JwtMatcher(
                issuer=entry.jwt.issuer,
                subject=entry.jwt.subject,
                audience=entry.jwt.audience,
                claims=tuple(sorted(entry.jwt.claims.items())),
            )
            subjects = by_subject.setdefault(matcher.issuer, {})
            candidates = list(unscoped.get(matcher.issuer, ()))
            if matcher.subject is None:
                candidates += [item for group in subjects.values() for item in group]
            else:
                candidates += subjects.get(matcher.subject, ())
            for other_matcher, other_grant, other_index in sorted(candidates, key=_by_index):
                if matcher.overlaps(other_matcher):
                    raise GrantsError(
                        f"{where}.jwt: a token could match both this grant and grant "
                        f"{other_grant.id!r} ($.grants[{other_index}]); give them different "
                        "subjects or a claim with different values"
                    )
            item = (matcher, grant, index)
            jwt_grants.append(item)
            if matcher.subject is None:
                unscoped.setdefault(matcher.issuer, []).append(item)
            else:
                subjects.setdefault(matcher.subject, []).append(item)
    return GrantTable(
        by_hash=by_hash,
        by_spiffe_id=by_spiffe,
        jwt_grants=tuple((matcher, grant) for matcher, grant, _ in jwt_grants),
        oauth_grants=tuple(oauth_grants),
    )


def _by_index(item: tuple[JwtMatcher, Grant, int]) -> int:
    return item[2]


def bearer_token(authorization: str | None) -> str | None:
    """Extract the token from one `Authorization: Bearer <token>` value, else None.

    Exactly one space after the scheme and a token of visible ASCII only: anything else
    (several credentials joined by a comma, whitespace inside, other schemes) is no token.
    """
    if authorization is None:
        return None
    match = _BEARER.fullmatch(authorization)
    if match is None:
        return None
    token = match.group(1)
    if "," in token:
        return None
    return token
