"""Approvers: the people who may approve or deny held tool calls through the admin API.

``CONFIG_DIR/approvers.json`` (optional; without it nobody can decide approvals)::

    {"version": "1", "approvers": [
        {"id": "alice", "label": "Alice (on call)", "token_sha256": "<64 lower-case hex>"}
    ]}

An approver presents ``Authorization: Bearer <token>`` to the admin API; the token is
stored and compared only as its sha256, like a grant's. The approver's ``id`` is what the
approval records as ``decided_by``. An approver's token must not also be a grant's token
(checked when the configuration directory is loaded, see :mod:`authz.config.source`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from authz.config.files import load_document
from authz.config.grants import hash_token

__all__ = [
    "APPROVERS_FILE",
    "Approver",
    "ApproverTable",
    "ApproversError",
    "load_approvers",
]

APPROVERS_FILE = "approvers.json"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_APPROVER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}")
"""Letters, digits and `. _ @ + -` (an e-mail address fits): the id is written into audit
events and shown in terminals, so it has no spaces or control characters."""


class ApproversError(ValueError):
    """approvers.json is invalid; the message names the offending field."""


@dataclass(frozen=True, slots=True)
class Approver:
    id: str
    label: str
    token_sha256: str
    index: int
    """Position in `$.approvers` (for error messages that name the entry)."""


class _ApproverEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr
    label: StrictStr = Field(default="", max_length=200)
    token_sha256: StrictStr

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if _APPROVER_ID.fullmatch(value) is None:  # `$` would let a final newline in
            raise ValueError(
                "must be 1 to 200 characters: letters, digits and . _ @ + - "
                "(starting with a letter or digit)"
            )
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("must be 64 lowercase hex characters (sha256 of the token)")
        return value


class _ApproversDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: StrictStr
    approvers: tuple[_ApproverEntry, ...] = Field(max_length=1000)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != "1":
            raise ValueError('must be "1"')
        return value


@dataclass(frozen=True, slots=True)
class ApproverTable:
    """Approvers by token hash. Empty when approvers.json is absent."""

    approvers: tuple[Approver, ...] = ()
    _by_hash: Mapping[str, Approver] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_hash", {a.token_sha256: a for a in self.approvers})

    def lookup(self, token: str) -> Approver | None:
        """The approver whose token this is (compared as its sha256), else None."""
        return self._by_hash.get(hash_token(token))

    def by_hash(self, token_sha256: str) -> Approver | None:
        return self._by_hash.get(token_sha256)

    def __len__(self) -> int:
        return len(self.approvers)

    def __iter__(self) -> Iterator[Approver]:
        return iter(self.approvers)


def load_approvers(raw: bytes) -> ApproverTable:
    """Parse and validate approvers.json, or raise ApproversError naming the JSON path."""
    doc = load_document(
        raw, file_name=APPROVERS_FILE, model=_ApproversDocument, error=ApproversError
    )
    ids: dict[str, int] = {}
    hashes: dict[str, int] = {}
    approvers: list[Approver] = []
    for index, entry in enumerate(doc.approvers):
        where = f"{APPROVERS_FILE}: $.approvers[{index}]"
        if entry.id in ids:
            raise ApproversError(
                f"{where}.id: duplicate approver id {entry.id!r} "
                f"(also $.approvers[{ids[entry.id]}])"
            )
        if entry.token_sha256 in hashes:
            raise ApproversError(
                f"{where}.token_sha256: same token as $.approvers[{hashes[entry.token_sha256]}]; "
                "every approver needs their own token"
            )
        ids[entry.id] = index
        hashes[entry.token_sha256] = index
        approvers.append(
            Approver(id=entry.id, label=entry.label, token_sha256=entry.token_sha256, index=index)
        )
    return ApproverTable(tuple(approvers))
