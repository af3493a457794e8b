"""Strict loading of the JSON credential files (grants.json, approvers.json).

One JSON object, UTF-8, no duplicate keys, validated by a pydantic model. Every problem is
raised as the caller's error class, prefixed with the file name, and validation problems
name their JSON path (`$.grants[3].token_sha256: ...`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["json_path", "load_document"]

Model = TypeVar("Model", bound=BaseModel)


def json_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a JSON path: `("grants", 3, "id")` → `$.grants[3].id`."""
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def load_document(
    raw: bytes, *, file_name: str, model: type[Model], error: type[Exception]
) -> Model:
    """Parse and validate `raw`, or raise `error` naming `file_name` and the field at fault."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise error(f"{file_name}: duplicate key {key!r}")
            out[key] = value
        return out

    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except error:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{file_name}: not valid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{json_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise error(f"{file_name}: " + "; ".join(problems)) from exc
