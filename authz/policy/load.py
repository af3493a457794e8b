"""Loading a policy: bytes read by the strict JSON reader, validated once into a frozen
`Policy` (or a `PolicyError` listing every problem); checking policy files; the JSON Schema."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from authz import strictjson
from authz.policy import conditions
from authz.policy.document import Policy, PolicyDocument
from authz.policy.errors import PolicyError, Problem, from_validation_error
from authz.strictjson import json_path

__all__ = ["MAX_DOCUMENT_DEPTH", "check_policy_files", "load_policy", "policy_json_schema"]

MAX_DOCUMENT_DEPTH: Final = strictjson.MAX_DEPTH
"""Deepest nesting accepted in a policy document (guards the recursive validators)."""


def _parse(raw: bytes) -> tuple[Any, list[Problem]]:
    """The document read by the one strict JSON reader (`authz.strictjson`), or its
    problems (every duplicate key, else the first problem found)."""
    try:
        return strictjson.loads(raw), []
    except strictjson.StrictJsonError as exc:
        return None, [(json_path(loc), message) for loc, message in exc.problems]


def load_policy(data: bytes | str | Mapping[str, Any], *, name: str) -> Policy:
    """Parse and validate a policy document; raise `PolicyError` listing every problem.

    `data` is the document's raw bytes (preferred: the hash is of exactly these bytes), a
    str (hashed as UTF-8), or an already-parsed mapping (hashed as its canonical JSON:
    sorted keys, no spaces). Duplicate keys are only detectable in bytes/str input.
    """
    if isinstance(data, Mapping):
        try:
            ascii_text = json.dumps(
                data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise PolicyError(name, [("$", f"not a JSON document: {exc}")]) from None
        except RecursionError:
            raise PolicyError(
                name, [("$", f"nesting deeper than {MAX_DOCUMENT_DEPTH} levels")]
            ) from None
        # the same reader and rules as for bytes (depth, lone surrogates, big numbers)
        _, problems = _parse(ascii_text.encode())
        if problems:
            raise PolicyError(name, problems)
        parsed: Any = data
        raw_bytes = json.dumps(
            data, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    else:
        raw_bytes = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        parsed, problems = _parse(raw_bytes)
        if problems:
            raise PolicyError(name, problems)
    if not isinstance(parsed, Mapping):
        problems.append(
            ("$", f"a policy must be a JSON object; got {conditions.json_type(parsed)}")
        )
        raise PolicyError(name, problems)
    try:
        document = PolicyDocument.model_validate(parsed)
    except ValidationError as exc:
        problems.extend(from_validation_error(exc, PolicyDocument))
    if problems:
        raise PolicyError(name, problems)
    return Policy(name=name, content_hash=hashlib.sha256(raw_bytes).hexdigest(), document=document)


def check_policy_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Validate policy files; one `"FILE: $.path: message"` line per problem (empty: all ok).

    Each policy is named after its file name without the extension.
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            out.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        try:
            load_policy(raw, name=path.stem)
        except PolicyError as err:
            out.extend(f"{path}: {where}: {message}" for where, message in err.problems)
    return out


# -- JSON Schema -----------------------------------------------------------------------


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy document (what `scripts/export_schema.py` writes)."""
    return PolicyDocument.model_json_schema()
