"""Strict parsing of one MCP JSON-RPC message from raw request bytes (pure).

The sidecar must never decide on a different message than the one the upstream executes.
So anything that two JSON parsers could read differently is rejected instead of guessed.
The bytes are read by the one strict JSON reader (`authz.strictjson`: duplicate keys at any
depth, invalid UTF-8, a byte-order mark, lone surrogates, NaN and Infinity, numbers that
overflow, excessive nesting and trailing data are -32700); a message is also refused
(-32600) for more than `MAX_VALUES` JSON values (counted before parsing, so the cost of a
message is bounded), for an id longer than `MAX_ID_BYTES`, for being a batch, and for
JSON-RPC members the specification does not define. Method names must be MCP methods
spelled exactly (no case or whitespace variants) and tool names must use the charset of the
MCP specification (2025-11-25), so a confusable name never reaches the policy or the
upstream.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

from authz import strictjson
from authz.model import JsonValue, McpRequest, RequestId

__all__ = [
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "KNOWN_METHODS",
    "MAX_DEPTH",
    "MAX_ID_BYTES",
    "MAX_NUMBER_LITERAL",
    "MAX_VALUES",
    "METHOD_NAME",
    "METHOD_NOT_FOUND",
    "NOTIFICATION_METHODS",
    "PARSE_ERROR",
    "REQUEST_METHODS",
    "RESPONSE_METHOD",
    "TOOL_NAME",
    "HeaderMismatch",
    "McpParseError",
    "check_mirror_headers",
    "decode_header_value",
    "parse_json",
    "parse_message",
]


PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602

MAX_DEPTH = strictjson.MAX_DEPTH
MAX_NUMBER_LITERAL = strictjson.MAX_NUMBER_LITERAL

MAX_VALUES = 20_000
"""Most JSON values one message may hold (-32600 past it), counted on the bytes before
parsing (`strictjson.value_bound`: commas and brackets outside strings, so a long prompt
full of commas is one value). Parsing costs up to about 1 µs per value, so a 1 MiB message
costs at most ~20-30 ms of CPU (measured: docs/security.md, "Bounded work per request"),
against 0.3-0.7 s for the 350,000 empty arrays that fit in 1 MiB. Real MCP messages hold
tens of values, large ones a few thousand: an embedding of 3,072 numbers, a table of 1,000
rows of 10 cells (11,001 values) fit."""

MAX_ID_BYTES = 256
"""Longest JSON-RPC id accepted (-32600 past it): a string in UTF-8, an integer as its
decimal text. The id is echoed in every answer and matched by the response phase."""

_REQUEST_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})
_RESPONSE_MEMBERS = frozenset({"jsonrpc", "id", "result", "error"})

RESPONSE_METHOD = "(response)"
"""Pseudo-method for a client's JSON-RPC response to a server-initiated request."""

REQUEST_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
        "server/discover",
        "subscriptions/listen",
    }
)
"""Client-to-server requests of MCP 2024-11-05 through 2026-07-28, spelled exactly."""

NOTIFICATION_METHODS = frozenset(
    {
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "notifications/tasks/status",
    }
)
"""Client-to-server notifications of the same revisions."""

KNOWN_METHODS = REQUEST_METHODS | NOTIFICATION_METHODS

METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,127}")
"""A well-formed method name (use with `fullmatch`): ASCII, no whitespace, at most 128."""

_FOLDED_KNOWN = {name.casefold(): name for name in KNOWN_METHODS}


def _check_method_name(method: str, is_notification: bool, rid: RequestId) -> None:
    """Reject names the upstream could read as a different method than the policy would.

    Known MCP methods must be spelled exactly and used in their own role (a request method
    with an id, a notification method without). A name that is only a case or whitespace
    variant of a known method, a JSON-RPC reserved `rpc.*` name, or a name outside the
    METHOD_NAME charset is rejected with -32601. Any other well-formed name is an unknown
    method: it is parsed, and the policy's `methods` section decides (see engine).
    """
    if method in KNOWN_METHODS:
        expected = NOTIFICATION_METHODS if is_notification else REQUEST_METHODS
        if method in expected:
            return
        kind = "a notification" if method in NOTIFICATION_METHODS else "a request"
        raise McpParseError(
            METHOD_NOT_FOUND, f"method not found: {method} is {kind} method in MCP", rid
        )
    if METHOD_NAME.fullmatch(method) is None or method.startswith("rpc."):
        raise McpParseError(
            METHOD_NOT_FOUND, "method not found: malformed or reserved method name", rid
        )
    if method.casefold() in _FOLDED_KNOWN:
        raise McpParseError(
            METHOD_NOT_FOUND,
            f"method not found: method names are exact; did you mean "
            f"{_FOLDED_KNOWN[method.casefold()]!r}?",
            rid,
        )


TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
"""Tool names as the MCP specification (2025-11-25) says they SHOULD be: ASCII letters,
digits, `_`, `-` and `.`, 1 to 128 characters. Anything else (whitespace, zero-width or
confusable characters, fullwidth forms) is rejected with -32602; use with `fullmatch`."""


class McpParseError(ValueError):
    """The body is not exactly one well-formed MCP JSON-RPC message."""

    def __init__(self, code: int, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def parse_json(body: bytes) -> JsonValue:
    """Parse bytes as one strict JSON value (`authz.strictjson`) or raise McpParseError:
    -32600 past `MAX_VALUES` (counted before parsing), -32700 for anything else."""
    try:
        return strictjson.loads(body, max_values=MAX_VALUES)
    except strictjson.TooManyValues as exc:
        raise McpParseError(INVALID_REQUEST, f"invalid request: {exc.message}") from None
    except strictjson.StrictJsonError as exc:
        raise McpParseError(PARSE_ERROR, f"parse error: {exc.message}") from None


def _id_too_long(raw: object) -> bool:
    """Whether a string or integer id is longer than MAX_ID_BYTES: a string in UTF-8, an
    integer as its decimal text (at most MAX_NUMBER_LITERAL characters: the reader refuses
    longer literals, so `str()` never meets a huge integer here)."""
    if isinstance(raw, str):
        return len(raw) > MAX_ID_BYTES or len(raw.encode("utf-8")) > MAX_ID_BYTES
    return isinstance(raw, int) and len(str(raw)) > MAX_ID_BYTES


def _request_id(message: Mapping[str, JsonValue]) -> RequestId:
    """The id to echo in an error, or None when the id itself is unusable."""
    raw = message.get("id")
    if isinstance(raw, str) or (isinstance(raw, int) and not isinstance(raw, bool)):
        return None if _id_too_long(raw) else raw
    return None


def _check_id_length(message: Mapping[str, JsonValue]) -> None:
    if _id_too_long(message.get("id")):
        raise McpParseError(
            INVALID_REQUEST, f'invalid request: "id" is longer than {MAX_ID_BYTES} bytes'
        )


def parse_message(body: bytes, *, session_id: str | None = None) -> McpRequest:
    """Parse one MCP JSON-RPC message. Raises McpParseError with a JSON-RPC error code."""
    value = parse_json(body)
    if isinstance(value, list):
        raise McpParseError(
            INVALID_REQUEST,
            "invalid request: JSON-RPC batches are not supported (removed in MCP 2025-06-18)",
        )
    if not isinstance(value, dict):
        raise McpParseError(INVALID_REQUEST, "invalid request: message must be a JSON object")
    _check_id_length(value)
    rid = _request_id(value)
    if value.get("jsonrpc") != "2.0":
        raise McpParseError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', rid)

    if "method" not in value:
        return _parse_response(value, rid, session_id)

    extra = sorted(set(value) - _REQUEST_MEMBERS)
    if extra:
        raise McpParseError(
            INVALID_REQUEST, f"invalid request: unexpected member {extra[0]!r}", rid
        )
    method = value["method"]
    if not isinstance(method, str) or not method:
        raise McpParseError(INVALID_REQUEST, 'invalid request: "method" must be a string', rid)

    is_notification = "id" not in value
    if not is_notification:
        raw_id = value["id"]
        if not (
            isinstance(raw_id, str) or (isinstance(raw_id, int) and not isinstance(raw_id, bool))
        ):
            raise McpParseError(
                INVALID_REQUEST, 'invalid request: "id" must be a string or an integer'
            )
    if method == "tools/call" and is_notification:
        raise McpParseError(INVALID_REQUEST, "invalid request: tools/call must carry an id", None)
    _check_method_name(method, is_notification, rid)

    params: Mapping[str, JsonValue] = {}
    if "params" in value:
        if not isinstance(value["params"], dict):
            raise McpParseError(INVALID_REQUEST, 'invalid request: "params" must be an object', rid)
        params = value["params"]
    if "_meta" in params and not isinstance(params["_meta"], dict):
        raise McpParseError(INVALID_PARAMS, 'invalid params: "params._meta" must be an object', rid)

    tool: str | None = None
    arguments: Mapping[str, JsonValue] = {}
    if method == "tools/call":
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise McpParseError(
                INVALID_PARAMS, 'invalid params: "params.name" must be a non-empty string', rid
            )
        if TOOL_NAME.fullmatch(name) is None:
            raise McpParseError(
                INVALID_PARAMS,
                'invalid params: "params.name" must be 1-128 characters of A-Z a-z 0-9 _ - .',
                rid,
            )
        tool = name
        raw_args = params.get("arguments", {})
        if raw_args is None:
            raw_args = {}
        if not isinstance(raw_args, dict):
            raise McpParseError(
                INVALID_PARAMS, 'invalid params: "params.arguments" must be an object', rid
            )
        arguments = raw_args
    resource: str | None = None
    prompt: str | None = None
    if method in ("resources/read", "resources/subscribe"):
        resource = _string_param(params, "uri", rid)
    elif method == "prompts/get":
        prompt = _string_param(params, "name", rid)
        arguments = _prompt_arguments(params, rid)
    elif method == "completion/complete":
        resource, prompt = _reference(params, rid)

    return McpRequest(
        method=method,
        id=None if is_notification else rid,
        is_notification=is_notification,
        params=params,
        tool=tool,
        arguments=arguments,
        session_id=session_id,
        resource=resource,
        prompt=prompt,
    )


def _string_param(params: Mapping[str, JsonValue], name: str, rid: RequestId) -> str:
    """`params.<name>`, which must be a string (-32602 otherwise)."""
    value = params.get(name)
    if not isinstance(value, str):
        raise McpParseError(
            INVALID_PARAMS, f'invalid params: "params.{name}" must be a string', rid
        )
    return value


def _prompt_arguments(params: Mapping[str, JsonValue], rid: RequestId) -> Mapping[str, str]:
    """The `params.arguments` of a `prompts/get`: absent → {}; otherwise an object whose
    values are all strings, as the MCP schema types it (-32602 for anything else)."""
    if "arguments" not in params:
        return {}
    raw = params["arguments"]
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise McpParseError(
            INVALID_PARAMS,
            'invalid params: "params.arguments" of prompts/get must be an object of strings',
            rid,
        )
    return raw


def _reference(params: Mapping[str, JsonValue], rid: RequestId) -> tuple[str | None, str | None]:
    """(resource, prompt) of a `completion/complete`'s `params.ref`: `{"type":
    "ref/resource", "uri": <string>}` or `{"type": "ref/prompt", "name": <string>}`
    (-32602 for anything else)."""
    ref = params.get("ref")
    kind = ref.get("type") if isinstance(ref, dict) else None
    if isinstance(ref, dict) and kind == "ref/resource" and isinstance(ref.get("uri"), str):
        return ref["uri"], None
    if isinstance(ref, dict) and kind == "ref/prompt" and isinstance(ref.get("name"), str):
        return None, ref["name"]
    raise McpParseError(
        INVALID_PARAMS,
        'invalid params: "params.ref" must be {"type": "ref/prompt", "name": <string>} or '
        '{"type": "ref/resource", "uri": <string>}',
        rid,
    )


def _parse_response(
    value: Mapping[str, JsonValue], rid: RequestId, session_id: str | None
) -> McpRequest:
    extra = sorted(set(value) - _RESPONSE_MEMBERS)
    if extra:
        raise McpParseError(
            INVALID_REQUEST, f"invalid request: unexpected member {extra[0]!r}", rid
        )
    if ("result" in value) == ("error" in value):
        raise McpParseError(
            INVALID_REQUEST,
            'invalid request: a message needs "method", or exactly one of "result"/"error"',
            rid,
        )
    if "id" not in value or rid is None:
        raise McpParseError(
            INVALID_REQUEST, 'invalid request: a response needs a string or integer "id"'
        )
    return McpRequest(method=RESPONSE_METHOD, id=rid, is_notification=False, session_id=session_id)


@dataclass(frozen=True, slots=True)
class HeaderMismatch:
    header: str
    message: str


def check_mirror_headers(request: McpRequest, headers: Mapping[str, str]) -> HeaderMismatch | None:
    """Compare `Mcp-Method` / `Mcp-Name` headers with the body. The body is authoritative.

    Returns the first disagreement, or None. A header that is present must match exactly;
    `Mcp-Name` may carry the `=?base64?...?=` form of the MCP SDK, which is decoded the way
    the SDK decodes it (canonical base64 of UTF-8, anything else never matches). Repeated
    headers reach the sidecar joined by a comma, so they never match either.
    """
    method_header = headers.get("mcp-method")
    if method_header is not None and method_header != request.method:
        return HeaderMismatch("Mcp-Method", "Mcp-Method header disagrees with the body")
    name_header = headers.get("mcp-name")
    if name_header is not None:
        expected = _mirrored_name(request)
        if expected is None or decode_header_value(name_header) != expected:
            return HeaderMismatch("Mcp-Name", "Mcp-Name header disagrees with the body")
    return None


_B64_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=")


def decode_header_value(value: str) -> str | None:
    """A mirrored header value as the MCP SDK reads it, or None when it is malformed.

    Plain values are returned unchanged; `=?base64?<payload>?=` is decoded from canonical
    base64 as UTF-8.
    """
    match = _B64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != payload:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _mirrored_name(request: McpRequest) -> str | None:
    if request.method in ("tools/call", "prompts/get"):
        name = request.params.get("name")
        return name if isinstance(name, str) else None
    if request.method == "resources/read":
        uri = request.params.get("uri")
        return uri if isinstance(uri, str) else None
    return None
