"""Grants: which policy a credential gets. Tokens are stored and compared only as sha256."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from authz.model import Grant

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([!-~]+)")
"""Used with fullmatch: `$` alone would also match before a trailing newline."""


class GrantsError(ValueError):
    """grants.json is invalid; the message names the offending field."""


class _GrantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    label: str = ""
    token_sha256: str
    policy: str = Field(min_length=1, max_length=200)

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("must be 64 lowercase hex characters (sha256 of the token)")
        return value


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


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class GrantTable:
    """Immutable lookup from token hash to Grant."""

    by_hash: Mapping[str, Grant]

    def lookup(self, token: str) -> Grant | None:
        return self.by_hash.get(hash_token(token))

    def __len__(self) -> int:
        return len(self.by_hash)


def _dup_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise GrantsError(f"grants.json: duplicate key {key!r}")
        out[key] = value
    return out


def load_grants(raw: bytes) -> GrantTable:
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_dup_pairs)
    except GrantsError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GrantsError(f"grants.json: not valid JSON: {exc}") from exc
    try:
        doc = _GrantsDocument.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = "$" + "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in err["loc"]
            )
            problems.append(f"{path}: {err['msg']}")
        raise GrantsError("grants.json: " + "; ".join(problems)) from exc
    by_hash: dict[str, Grant] = {}
    seen_ids: set[str] = set()
    for index, entry in enumerate(doc.grants):
        if entry.id in seen_ids:
            raise GrantsError(f"grants.json: $.grants[{index}].id: duplicate grant id")
        if entry.token_sha256 in by_hash:
            raise GrantsError(
                f"grants.json: $.grants[{index}].token_sha256: same token as another grant"
            )
        seen_ids.add(entry.id)
        by_hash[entry.token_sha256] = Grant(id=entry.id, label=entry.label, policy=entry.policy)
    return GrantTable(by_hash=by_hash)


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
