"""Strict loading of the JSON credential files (grants.json, approvers.json).

Read by the one strict JSON reader (`authz.strictjson`: no byte-order mark, no duplicate
keys, no NaN, ...), then validated by a pydantic model. Every problem is raised as the
caller's error class, prefixed with the file name, and names its JSON path where one is
known (`grants.json: $.grants[3].token_sha256: ...`).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from authz import strictjson
from authz.strictjson import json_path

__all__ = ["load_document"]

Model = TypeVar("Model", bound=BaseModel)


def load_document(
    raw: bytes, *, file_name: str, model: type[Model], error: type[Exception]
) -> Model:
    """Parse and validate `raw`, or raise `error` naming `file_name` and the field at fault."""
    try:
        data = strictjson.loads(raw)
    except strictjson.StrictJsonError as exc:
        problems = [f"{json_path(loc)}: {message}" for loc, message in exc.problems]
        raise error(f"{file_name}: " + "; ".join(problems)) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{json_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise error(f"{file_name}: " + "; ".join(problems)) from exc
