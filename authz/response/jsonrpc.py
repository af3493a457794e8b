"""JSON-RPC messages as the MCP server answers them, pure: reading one, matching it to the
request's id, and the error that stands in for one the sidecar could not check."""

from __future__ import annotations

import json
from typing import Any, Final

from authz.model import RequestId

__all__ = [
    "WITHHELD_CODE",
    "Unparsable",
    "answer_kind",
    "parse_message",
    "same_id",
    "withheld_error",
]

WITHHELD_CODE: Final = -32603


class Unparsable(ValueError):
    """Upstream bytes that are not the JSON (or SSE) they claim to be."""


def same_id(a: object, b: object) -> bool:
    """JSON-RPC ids are equal: same type (string or integer, never bool) and value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return False


def parse_message(text: str) -> Any:
    """The JSON value of `text`; `Unparsable` when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Unparsable(f"not JSON: {type(exc).__name__}") from None


def answer_kind(message: Any, rpc_id: RequestId) -> str | None:
    """`result` or `error` when `message` (parsed) is the JSON-RPC answer to `rpc_id`."""
    if not isinstance(message, dict) or not same_id(message.get("id"), rpc_id):
        return None
    if "error" in message:
        return "error"
    if "result" in message:
        return "result"
    return None


def withheld_error(rpc_id: RequestId, why: str) -> str:
    """The JSON-RPC error that stands in for a message the sidecar could not check."""
    message = (
        "[POLICY DENIED] the MCP server's answer was withheld: it could not be checked for "
        f"tools this grant may not see ({why})"
    )
    payload = {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": WITHHELD_CODE, "message": message}}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
