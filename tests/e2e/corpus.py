"""The adversarial corpus: hostile HTTP requests, as raw bytes, each with its expected outcome.

Every entry is sent as-is through the real Envoy by tests/e2e/test_adversarial.py, which
checks what the client gets and that the upstream executed exactly the tools listed (its own
execution record). docs/security.md ("Adversarial corpus") carries the same table, rendered
by `render_markdown()`; regenerate it with `python -m tests.e2e.corpus`.

The requests are independent of the ports the test stack uses (`Host: 127.0.0.1`, which the
upstream accepts on any port) and use the grants and policies defined here:

- grant `open`, policy `permissive`: `default: allow`, hides `image.generate.replicate`,
  denies `image.generate.openai` (a deny_if with empty conditions);
- grant `strict`, policy `strict`: `default: deny`, only `image.generate.gemini` listed;
- grant `orphan`: its policy does not exist;
- grant `reader`, policy `content` (resources and prompts, below): `default: deny`, one
  tool, `docs://{name}` resources and one prompt.

Only `image.generate.gemini` ever runs in this corpus (the positive controls); the other
three tools are forbidden for at least one grant and must never appear in the record.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

GEMINI = "image.generate.gemini"
OPENAI = "image.generate.openai"
GOOGLE = "image.generate.google"
REPLICATE = "image.generate.replicate"

POLICIES: dict[str, dict[str, Any]] = {
    "permissive": {
        "version": "1",
        "default": "allow",
        "hide": [REPLICATE],
        "tools": {
            OPENAI: {"deny_if": [{"conditions": [], "on_deny": "openai is not for this grant"}]}
        },
    },
    "strict": {
        "version": "1",
        "default": "deny",
        "tools": {GEMINI: {}},
        "methods": {
            "default": "deny",
            "allow": [
                "initialize",
                "notifications/initialized",
                "notifications/cancelled",
                "ping",
                "tools/list",
                "server/discover",
            ],
        },
    },
}
GRANTS = {"open": "permissive", "strict": "strict", "orphan": "absent"}


def token_for(grant: str) -> str:
    return f"adv-token-{grant}"


HOST = "127.0.0.1"
MODERN = "2026-07-28"
META: dict[str, Any] = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
META_JSON = json.dumps(META, separators=(",", ":")).encode()
DENIED = "[POLICY DENIED] "

Header = tuple[str, str] | bytes
"""A header as (name, value), or one raw header line (bytes, without CRLF)."""

# -- raw replies ---------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The JSON-RPC message of the body (plain JSON, or the last SSE `data:` line)."""
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            data = [
                line[5:].strip()
                for line in self.body.decode().splitlines()
                if line.startswith("data:") and line[5:].strip()
            ]
            return json.loads(data[-1])
        return json.loads(self.body)


# -- request builders ----------------------------------------------------------------------


def auth(grant: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token_for(grant)}")


def mcp_headers(method: str, name: str | None = None) -> list[Header]:
    """Headers of a 2026-07-28 (stateless) POST: media types, version and mirror headers."""
    headers: list[Header] = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", method),
    ]
    if name is not None:
        headers.append(("Mcp-Name", name))
    return headers


def call_body(
    tool: str,
    arguments: Any = None,
    rid: Any = 1,
    meta: Any = META,
    **params: Any,
) -> bytes:
    """A tools/call message (stateless era: the `_meta` envelope is in params)."""
    body: dict[str, Any] = {"name": tool, "arguments": arguments or {"prompt": "a fox"}}
    if meta is not None:
        body["_meta"] = meta
    body.update(params)
    message = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": body}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def rpc_body(method: str, rid: Any = 1, params: Any = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    message["params"] = {"_meta": META} if params is None else params
    return json.dumps(message, separators=(",", ":")).encode()


def raw_call(name: bytes, extra_params: bytes = b"", method: bytes = b"tools/call") -> bytes:
    """A tools/call written by hand, so the name and method can carry any escape or byte."""
    return (
        b'{"jsonrpc":"2.0","id":1,"method":"' + method + b'","params":{"name":"' + name + b'",'
        b'"arguments":{"prompt":"a fox"},"_meta":' + META_JSON + extra_params + b"}}"
    )


def http(
    method: str = "POST",
    path: str = "/mcp",
    body: bytes | None = b"",
    headers: Iterable[Header] = (),
    *,
    content_length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """One HTTP/1.1 request as bytes: Host first, then `headers`, Content-Length, close."""
    lines = [f"{method} {path} {version}".encode(), f"Host: {HOST}".encode()]
    for header in headers:
        if isinstance(header, bytes):
            lines.append(header)
        else:
            lines.append(f"{header[0]}: {header[1]}".encode())
    if body is not None and content_length:
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def post(
    body: bytes,
    grant: str | None = "open",
    *headers: Header,
    path: str = "/mcp",
    media: bool = True,
) -> bytes:
    """POST with the grant's token and `headers` (give mcp_headers(...) for routing).

    Unless `media` is False, JSON Content-Type and Accept are added when `headers` has no
    Content-Type of its own.
    """
    all_headers: list[Header] = [auth(grant)] if grant else []
    named = {h[0].lower() for h in headers if isinstance(h, tuple)}
    if media and "content-type" not in named:
        all_headers += [
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ]
    all_headers.extend(headers)
    return http("POST", path, body, all_headers)


def call(tool: str, grant: str | None = "open", *extra: Header, **kwargs: Any) -> bytes:
    """A well-formed stateless tools/call of `tool` by `grant`, plus `extra` headers."""
    return post(call_body(tool, **kwargs), grant, *mcp_headers("tools/call", tool), *extra)


def hand_call(name: bytes, grant: str = "open", header_name: str | None = None) -> bytes:
    """A hand-written tools/call; Mcp-Name is `header_name` (default: the raw name)."""
    mirror = header_name if header_name is not None else name.decode("utf-8", "replace")
    return post(raw_call(name), grant, *mcp_headers("tools/call", mirror))


def chunked(request_head: bytes, body: bytes, sizes: Sequence[int]) -> bytes:
    """`request_head` (ending in CRLF CRLF, no Content-Length) with `body` in chunks."""
    out = [request_head]
    at = 0
    for size in [*sizes, len(body)]:
        piece = body[at : at + size]
        at += len(piece)
        if piece:
            out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        if at >= len(body):
            break
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def chunked_call(tool: str, grant: str, sizes: Sequence[int]) -> bytes:
    head = http(
        "POST",
        "/mcp",
        None,
        [auth(grant), *mcp_headers("tools/call", tool), ("Transfer-Encoding", "chunked")],
    )
    return chunked(head, call_body(tool), sizes)


def b64_header(value: str) -> str:
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


# -- the corpus ------------------------------------------------------------------------------

By = Literal["sidecar", "envoy", "upstream", "none"]


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    what: str
    """One line for the docs: the trick."""
    request: bytes
    status: int
    """Expected HTTP status; 0 means the connection closes without a response."""
    by: By
    """Who answers: the sidecar (a denial), Envoy (a local reply), the upstream (the
    gateway allowed it; the response carries x-mcp-authz-decision-id), or nobody."""
    code: int | None = None
    """JSON-RPC error code in the body; None for a tool result (or no JSON body)."""
    marker: str | None = None
    """Text the denial (or the upstream's answer) must contain, e.g. the rule."""
    executes: tuple[str, ...] = ()
    """Tools the upstream must start for this request, in order (positive controls)."""
    grant: str | None = None
    """The x-mcp-grant the upstream must see for those executions."""
    forbidden: tuple[str, ...] = ()
    """Tools the attack aims at: they must never appear in the execution record."""
    headers: tuple[tuple[str, str], ...] = field(default=())
    """Response headers that must be present, as (name, value prefix)."""
    half_close: bool = False
    """Shut down the sending side after the request (for partial bodies)."""


CORPUS: list[Case] = []
_family = ""


def family(name: str) -> None:
    global _family
    _family = name


def case(id: str, what: str, request: bytes, status: int, by: By, **kwargs: Any) -> None:
    CORPUS.append(Case(id, _family, what, request, status, by, **kwargs))


def parse_error(id: str, what: str, request: bytes, **kwargs: Any) -> None:
    case(id, what, request, 400, "sidecar", code=-32700, **kwargs)


def invalid_request(id: str, what: str, request: bytes, **kwargs: Any) -> None:
    case(id, what, request, 400, "sidecar", code=-32600, **kwargs)


def invalid_params(id: str, what: str, request: bytes, **kwargs: Any) -> None:
    case(id, what, request, 400, "sidecar", code=-32602, **kwargs)


def method_not_found(id: str, what: str, request: bytes, **kwargs: Any) -> None:
    case(id, what, request, 404, "sidecar", code=-32601, **kwargs)


def tool_denied(id: str, what: str, request: bytes, rule: str, **kwargs: Any) -> None:
    case(id, what, request, 200, "sidecar", marker=f"(rule: {rule})", **kwargs)


def runs(id: str, what: str, request: bytes, grant: str, tool: str = GEMINI, **kw: Any) -> None:
    case(id, what, request, 200, "upstream", executes=(tool,), grant=grant, **kw)


def passes(id: str, what: str, request: bytes, status: int = 200, **kwargs: Any) -> None:
    """Allowed by the gateway; the upstream answers without running a tool."""
    case(id, what, request, status, "upstream", **kwargs)


DENY_OPENAI = f"/tools/{OPENAI}/deny_if/0"
CALL_HEADERS = mcp_headers("tools/call", GEMINI)

# JSON parser differentials -----------------------------------------------------------------
family("JSON parser differentials")
runs("json-control", "positive control: plain tools/call of gemini", call(GEMINI), "open")
parse_error(
    "json-dup-method",
    "duplicate top-level `method` (tools/list, then tools/call of openai)",
    post(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
        b'"params":{"name":"' + OPENAI.encode() + b'","arguments":{},"_meta":' + META_JSON + b"}}",
        "open",
        *mcp_headers("tools/list"),
    ),
    forbidden=(OPENAI,),
)
parse_error(
    "json-dup-name",
    "duplicate `params.name` (gemini, then openai): last-wins parsers run openai",
    post(raw_call(GEMINI.encode() + b'","name":"' + OPENAI.encode()), "open", *CALL_HEADERS),
    forbidden=(OPENAI,),
)
parse_error(
    "json-dup-argument",
    "duplicate key inside `arguments`",
    post(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"'
        + GEMINI.encode()
        + b'","arguments":{"prompt":"a","prompt":"b"},"_meta":'
        + META_JSON
        + b"}}",
        "open",
        *CALL_HEADERS,
    ),
)
parse_error(
    "json-dup-escaped-key",
    'duplicate key spelled differently: `"name"` and `"n\\u0061me"`',
    post(
        raw_call(GEMINI.encode() + b'","n\\u0061me":"' + OPENAI.encode()),
        "open",
        *CALL_HEADERS,
    ),
    forbidden=(OPENAI,),
)
tool_denied(
    "json-escaped-denied-name",
    "`image.generate.\\u006fpenai`: decodes to openai, denied by its rule",
    hand_call(b"image.generate.\\u006fpenai", header_name=OPENAI),
    DENY_OPENAI,
    forbidden=(OPENAI,),
)
tool_denied(
    "json-escaped-hidden-name",
    "`image.generate.r\\u0065plicate`: decodes to the hidden tool",
    hand_call(b"image.generate.r\\u0065plicate", header_name=REPLICATE),
    "(hidden)",
    forbidden=(REPLICATE,),
)
tool_denied(
    "json-escaped-unlisted-name",
    "`image.generate.\\u0067oogle` for the default-deny grant",
    hand_call(b"image.generate.\\u0067oogle", "strict", header_name=GOOGLE),
    "(default deny)",
    forbidden=(GOOGLE,),
)
runs(
    "json-escaped-allowed-name",
    "`image.generate.\\u0067emini`: the upstream decodes it to gemini too and runs it",
    hand_call(b"image.generate.\\u0067emini", header_name=GEMINI),
    "open",
)
runs(
    "json-escaped-method",
    "method `tools\\u002fcall` (and `\\/`): decoded once, same call, gemini runs",
    post(raw_call(GEMINI.encode(), method=b"tools\\u002fcall"), "strict", *CALL_HEADERS),
    "strict",
)
parse_error(
    "json-bom",
    "UTF-8 byte-order mark before the message",
    post(b"\xef\xbb\xbf" + call_body(GEMINI), "open", *CALL_HEADERS),
)
parse_error(
    "json-invalid-utf8",
    "invalid UTF-8 byte (0xff) inside a string",
    post(call_body(GEMINI).replace(b"a fox", b"a \xff fox"), "open", *CALL_HEADERS),
)
parse_error(
    "json-overlong-utf8",
    "overlong UTF-8 encoding of `.` (0xc0 0xae) in the tool name",
    hand_call(b"image\xc0\xaegenerate.openai", header_name=OPENAI),
    forbidden=(OPENAI,),
)
parse_error(
    "json-utf16",
    "the whole message in UTF-16 (with BOM)",
    post(call_body(GEMINI).decode().encode("utf-16"), "open", *CALL_HEADERS),
)
parse_error(
    "json-lone-surrogate",
    "lone surrogate escape `\\ud800` in the tool name",
    hand_call(b"image.generate.openai\\ud800", header_name=OPENAI),
    forbidden=(OPENAI,),
)
parse_error(
    "json-overlong-number",
    "a 65-digit number literal in the arguments",
    post(call_body(GEMINI).replace(b'"a fox"', b'"a fox","seed":' + b"9" * 65), "open"),
)
parse_error(
    "json-huge-exponent",
    "`1e999` (overflows to infinity)",
    post(call_body(GEMINI).replace(b'"a fox"', b'"a fox","seed":1e999'), "open"),
)
parse_error(
    "json-nan",
    "`NaN` as an argument value",
    post(call_body(GEMINI).replace(b'"a fox"', b'"a fox","seed":NaN'), "open", *CALL_HEADERS),
)
parse_error(
    "json-infinity",
    "`-Infinity` as an argument value",
    post(call_body(GEMINI).replace(b'"a fox"', b'"a fox","seed":-Infinity'), "open"),
)
parse_error(
    "json-deep-nesting",
    "arguments nested 65 levels deep",
    post(call_body(GEMINI).replace(b'"a fox"', b'"a fox","x":' + b"[" * 65 + b"]" * 65), "open"),
)
invalid_request(
    "json-very-deep",
    "100 000 nested arrays (recursion bomb): refused for its values before any parsing",
    post(b"[" * 100_000 + b"]" * 100_000, "open", *CALL_HEADERS),
    marker="JSON values",
)
parse_error(
    "json-trailing-garbage",
    "valid message followed by `x`",
    post(call_body(GEMINI) + b"x", "open", *CALL_HEADERS),
)
parse_error(
    "json-two-messages",
    "a ping followed by a tools/call of openai in one body",
    post(rpc_body("ping") + call_body(OPENAI), "open", *mcp_headers("ping")),
    forbidden=(OPENAI,),
)
parse_error(
    "json-block-comment",
    "`/* comment */` between members",
    post(call_body(GEMINI).replace(b'"id":1,', b'"id":1,/* x */'), "open", *CALL_HEADERS),
)
parse_error(
    "json-line-comment",
    "`// comment` line before the message",
    post(b"// hi\n" + call_body(GEMINI), "open", *CALL_HEADERS),
)
parse_error(
    "json-single-quotes",
    "single-quoted strings",
    post(call_body(GEMINI).replace(b'"jsonrpc"', b"'jsonrpc'"), "open", *CALL_HEADERS),
)
parse_error(
    "json-trailing-comma",
    "trailing comma in `arguments`",
    post(call_body(GEMINI).replace(b'"a fox"', b'"a fox",'), "open", *CALL_HEADERS),
)
parse_error(
    "json-control-char",
    "raw control character (0x01) inside a string",
    post(call_body(GEMINI).replace(b"a fox", b"a \x01fox"), "open", *CALL_HEADERS),
)
parse_error("json-empty-body", "empty body", post(b"", "open", *CALL_HEADERS))

# JSON-RPC shape ----------------------------------------------------------------------------
family("JSON-RPC shape")
invalid_request(
    "rpc-batch",
    "batch of one tools/call of openai",
    post(b"[" + call_body(OPENAI) + b"]", "open", *mcp_headers("tools/call", OPENAI)),
    forbidden=(OPENAI,),
)
invalid_request(
    "rpc-batch-behind-ping",
    "batch: a ping hiding a tools/call of openai",
    post(
        b"[" + rpc_body("ping") + b"," + call_body(OPENAI, rid=2) + b"]",
        "open",
        *mcp_headers("ping"),
    ),
    forbidden=(OPENAI,),
)
invalid_request("rpc-empty-batch", "empty batch `[]`", post(b"[]", "open", *CALL_HEADERS))
invalid_request(
    "rpc-no-jsonrpc",
    "no `jsonrpc` member",
    post(call_body(GEMINI).replace(b'"jsonrpc":"2.0",', b""), "open", *CALL_HEADERS),
)
invalid_request(
    "rpc-jsonrpc-1",
    '`"jsonrpc":"1.0"`',
    post(call_body(GEMINI).replace(b'"2.0"', b'"1.0"'), "open", *CALL_HEADERS),
)
invalid_request(
    "rpc-jsonrpc-number",
    "`jsonrpc` as the number 2.0",
    post(call_body(GEMINI).replace(b'"2.0"', b"2.0"), "open", *CALL_HEADERS),
)
invalid_request("rpc-id-null", "`id: null`", call(GEMINI, rid=None))
invalid_request("rpc-id-float", "`id: 1.5`", call(GEMINI, rid=1.5))
invalid_request("rpc-id-bool", "`id: true`", call(GEMINI, rid=True))
invalid_request("rpc-id-object", "`id: {}`", call(GEMINI, rid={}))
invalid_request("rpc-id-array", "`id: [1]`", call(GEMINI, rid=[1]))
runs("rpc-id-string", "positive control: string id `abc`", call(GEMINI, rid="abc"), "open")
invalid_request(
    "rpc-notification-call",
    "tools/call of openai as a notification (no id)",
    post(
        call_body(OPENAI).replace(b'"id":1,', b""),
        "open",
        *mcp_headers("tools/call", OPENAI),
    ),
    forbidden=(OPENAI,),
)
invalid_request(
    "rpc-params-array",
    "`params` as an array",
    post(rpc_body("tools/call", params=[OPENAI, {}]), "open", *mcp_headers("tools/call")),
    forbidden=(OPENAI,),
)
invalid_request(
    "rpc-params-null",
    "`params: null`",
    post(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}', "open"),
)
invalid_request(
    "rpc-extra-member",
    "extra top-level member `tool` naming openai",
    post(
        call_body(GEMINI).replace(b'"id":1,', b'"id":1,"tool":"' + OPENAI.encode() + b'",'),
        "open",
        *CALL_HEADERS,
    ),
    forbidden=(OPENAI,),
)
invalid_request(
    "rpc-top-level-meta",
    "`_meta` beside `params` instead of inside",
    post(call_body(GEMINI).replace(b'"id":1,', b'"id":1,"_meta":{},'), "open", *CALL_HEADERS),
)
invalid_request(
    "rpc-response-with-method",
    "a response (`result`) that also carries `method: tools/call`",
    post(call_body(OPENAI).replace(b'"id":1,', b'"id":1,"result":{},'), "open"),
    forbidden=(OPENAI,),
)
invalid_request("rpc-scalar", "the JSON string `tools/call`", post(b'"tools/call"', "open"))

# MCP specifics -----------------------------------------------------------------------------
family("MCP methods, names and headers")
for cid, method, what in [
    ("mcp-method-titlecase", "Tools/Call", "method `Tools/Call`"),
    ("mcp-method-upper", "TOOLS/CALL", "method `TOOLS/CALL`"),
    ("mcp-method-trailing-space", "tools/call ", "method `tools/call ` (trailing space)"),
    ("mcp-method-rpc", "rpc.discover", "JSON-RPC reserved `rpc.discover`"),
    ("mcp-method-zero-width", "tools/\u200bcall", "method with a zero-width space"),
]:
    method_not_found(
        cid,
        f"{what} naming openai",
        post(raw_call(OPENAI.encode(), method=method.encode()), "open", *mcp_headers(method)),
        forbidden=(OPENAI,),
    )
case(
    "mcp-method-unknown-strict",
    "unknown method `tools/execute` naming openai, policy `methods.default: deny`",
    post(
        raw_call(OPENAI.encode(), method=b"tools/execute"), "strict", *mcp_headers("tools/execute")
    ),
    403,
    "sidecar",
    code=-32003,
    marker="/methods/default",
    forbidden=(OPENAI,),
)
case(
    "mcp-notification-unknown-strict",
    "notification with an unknown method, policy `methods.default: deny`",
    post(b'{"jsonrpc":"2.0","method":"notifications/tools/call"}', "strict"),
    403,
    "sidecar",
    code=-32003,
    marker="/methods/default",
)
method_not_found(
    "mcp-request-notification-method",
    "a notification method sent as a request (with an id)",
    post(rpc_body("notifications/initialized"), "open"),
)
case(
    "mcp-header-name-mismatch",
    "`Mcp-Name: gemini`, body calls openai",
    post(call_body(OPENAI), "open", *mcp_headers("tools/call", GEMINI)),
    400,
    "sidecar",
    code=-32020,
    marker="Mcp-Name",
    forbidden=(OPENAI,),
)
case(
    "mcp-header-name-mismatch-strict",
    "`Mcp-Name: gemini`, body calls google (default-deny grant)",
    post(call_body(GOOGLE), "strict", *mcp_headers("tools/call", GEMINI)),
    400,
    "sidecar",
    code=-32020,
    forbidden=(GOOGLE,),
)
case(
    "mcp-header-method-mismatch",
    "`Mcp-Method: tools/list`, body is a tools/call of openai",
    post(call_body(OPENAI), "open", *mcp_headers("tools/list")),
    400,
    "sidecar",
    code=-32020,
    marker="Mcp-Method",
    forbidden=(OPENAI,),
)
case(
    "mcp-header-method-case",
    "`Mcp-Method: TOOLS/CALL` for a tools/call",
    post(call_body(GEMINI), "open", *mcp_headers("TOOLS/CALL", GEMINI)),
    400,
    "sidecar",
    code=-32020,
)
runs(
    "mcp-header-name-base64",
    "positive control: `Mcp-Name` in the SDK's `=?base64?…?=` form, decoded like the SDK",
    post(call_body(GEMINI), "open", *mcp_headers("tools/call", b64_header(GEMINI))),
    "open",
)
case(
    "mcp-header-name-base64-mismatch",
    "`Mcp-Name: =?base64?(gemini)?=`, body calls openai",
    post(call_body(OPENAI), "open", *mcp_headers("tools/call", b64_header(GEMINI))),
    400,
    "sidecar",
    code=-32020,
    forbidden=(OPENAI,),
)
case(
    "mcp-header-name-twice",
    "`Mcp-Name` sent twice (Envoy joins the lines)",
    post(call_body(GEMINI), "open", *CALL_HEADERS, ("Mcp-Name", GEMINI)),
    400,
    "sidecar",
    code=-32020,
)
case(
    "mcp-header-name-folded",
    "`Mcp-Name` continued on a folded line (obs-fold; Envoy unfolds it with a space)",
    post(
        call_body(GEMINI),
        "open",
        *mcp_headers("tools/call"),
        b"Mcp-Name: image.generate.",
        b" gemini",
    ),
    400,
    "sidecar",
    code=-32020,
)
for cid, name, what in [
    ("mcp-name-trailing-space", "image.generate.openai ", "trailing space"),
    ("mcp-name-leading-space", " image.generate.openai", "leading space"),
    ("mcp-name-tab", "image.generate.openai\t", "trailing tab"),
    ("mcp-name-zero-width", "image.generate.open\u200bai", "zero-width space (U+200B)"),
    ("mcp-name-cyrillic", "image.generate.op\u0435nai", "Cyrillic ie (U+0435) for `e`"),
    ("mcp-name-fullwidth", "\uff49mage.generate.openai", "fullwidth i (U+FF49)"),
    ("mcp-name-nul", "image.generate.openai\x00", "trailing NUL"),
    ("mcp-name-slash", "image/generate/openai", "slashes instead of dots"),
    ("mcp-name-too-long", "image.generate.openai" + "a" * 108, "129 characters"),
    ("mcp-name-empty", "", "empty name"),
]:
    invalid_params(
        cid,
        f"tool name with {what}",
        post(call_body(name), "open", *mcp_headers("tools/call")),
        forbidden=(OPENAI,),
    )
invalid_params(
    "mcp-name-escaped-zero-width",
    "tool name with an escaped zero-width joiner `\\u200d`",
    post(raw_call(b"image.generate.open\\u200dai"), "open", *mcp_headers("tools/call")),
    forbidden=(OPENAI,),
)
invalid_params(
    "mcp-name-missing",
    "tools/call without `name`",
    post(call_body(GEMINI).replace(b'"name":"image.generate.gemini",', b""), "open"),
)
invalid_params(
    "mcp-arguments-array",
    "`arguments` as an array",
    call(GEMINI, arguments=["a fox"]),
)
passes(
    "mcp-name-case-variant",
    "`image.generate.OPENAI` (default-allow grant): passes policy, the upstream (exact, "
    "case-sensitive lookup) knows no such tool",
    call("image.generate.OPENAI"),
    marker="Unknown tool",
    forbidden=(OPENAI,),
)
tool_denied(
    "mcp-name-case-variant-strict",
    "`image.generate.GEMINI` for the default-deny grant",
    call("image.generate.GEMINI", "strict"),
    "(default deny)",
)
invalid_params(
    "mcp-meta-string",
    '`params._meta` as a string `"image.generate.openai"`',
    post(call_body(OPENAI, meta=OPENAI), "open", *mcp_headers("tools/call", OPENAI)),
    forbidden=(OPENAI,),
)
invalid_params(
    "mcp-meta-array",
    "`params._meta` as an array",
    post(call_body(GEMINI, meta=[META]), "open", *CALL_HEADERS),
)
runs(
    "mcp-meta-name",
    "`_meta` carrying `name: openai` beside `params.name: gemini`: gemini runs, not openai",
    call(GEMINI, meta={**META, "name": OPENAI}),
    "open",
    forbidden=(OPENAI,),
)
runs(
    "mcp-meta-arguments",
    "`_meta` carrying `arguments` and a `progressToken`: only params.arguments count",
    call(GEMINI, meta={**META, "arguments": {"prompt": "x", "model": "y"}, "progressToken": 7}),
    "open",
)
tool_denied(
    "mcp-meta-name-strict",
    "`_meta.name: gemini` with `params.name: google` (default-deny grant)",
    call(GOOGLE, "strict", meta={**META, "name": GEMINI, "progressToken": "p"}),
    "(default deny)",
    forbidden=(GOOGLE,),
)
tool_denied(
    "mcp-orphan-grant",
    "tools/call by a grant whose policy is not loaded",
    call(GEMINI, "orphan"),
    "(no policy)",
)
case(
    "mcp-get-no-token",
    "GET stream without a token",
    http("GET", "/mcp", None, [("Accept", "text/event-stream")]),
    401,
    "sidecar",
    code=-32001,
    headers=(("www-authenticate", "Bearer"),),
)
passes(
    "mcp-get-grant",
    "GET stream with a grant: allowed; the upstream wants a session",
    http("GET", "/mcp", None, [auth("open"), ("Accept", "text/event-stream")]),
    400,
    marker="Missing session ID",
)
case(
    "mcp-get-orphan",
    "GET stream by a grant without a loaded policy",
    http("GET", "/mcp", None, [auth("orphan"), ("Accept", "text/event-stream")]),
    403,
    "sidecar",
    code=-32003,
    marker="(no policy)",
)
invalid_request(
    "mcp-get-with-body",
    "GET carrying a tools/call body",
    http("GET", "/mcp", call_body(OPENAI), [auth("open"), *mcp_headers("tools/call", OPENAI)]),
    marker="(body)",
    forbidden=(OPENAI,),
)
case(
    "mcp-delete-no-token",
    "DELETE session without a token",
    http("DELETE", "/mcp", None, [("Mcp-Session-Id", "0123abcd")]),
    401,
    "sidecar",
    code=-32001,
)
passes(
    "mcp-delete-grant",
    "DELETE of an unknown session with a grant: allowed; the upstream knows no such session",
    http("DELETE", "/mcp", None, [auth("open"), ("Mcp-Session-Id", "0123abcd")]),
    404,
    marker="Session not found",
)
invalid_request(
    "mcp-session-twice",
    "`Mcp-Session-Id` sent twice (the upstream would read only one)",
    call(GEMINI, "open", ("Mcp-Session-Id", "s-1"), ("Mcp-Session-Id", "s-2")),
    marker="Mcp-Session-Id",
)
passes(
    "mcp-legacy-no-session",
    "handshake-era tools/call without a session: allowed; the upstream refuses it",
    post(
        call_body(GEMINI, meta=None),
        "open",
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ),
    400,
    marker="Missing session ID",
)

# HTTP level --------------------------------------------------------------------------------
family("HTTP framing, encoding and paths")
case(
    "http-gzip",
    "gzip-compressed body with `Content-Encoding: gzip`",
    post(
        gzip.compress(call_body(OPENAI)),
        "open",
        *mcp_headers("tools/call", OPENAI),
        ("Content-Encoding", "gzip"),
    ),
    415,
    "sidecar",
    code=-32600,
    forbidden=(OPENAI,),
)
case(
    "http-deflate",
    "deflate-compressed body with `Content-Encoding: deflate`",
    post(zlib.compress(call_body(GEMINI)), "open", *CALL_HEADERS, ("Content-Encoding", "deflate")),
    415,
    "sidecar",
    code=-32600,
)
case(
    "http-encoding-list",
    "`Content-Encoding: identity, gzip` on a plain body",
    call(GEMINI, "open", ("Content-Encoding", "identity, gzip")),
    415,
    "sidecar",
    code=-32600,
)
runs(
    "http-encoding-identity",
    "positive control: `Content-Encoding: identity`",
    call(GEMINI, "open", ("Content-Encoding", "identity")),
    "open",
)
case(
    "http-no-content-type",
    "no Content-Type",
    post(call_body(GEMINI), "open", ("Accept", "application/json, text/event-stream"), media=False),
    415,
    "sidecar",
    code=-32600,
)
case(
    "http-text-plain",
    "`Content-Type: text/plain`",
    post(
        call_body(GEMINI),
        "open",
        ("Content-Type", "text/plain"),
        *mcp_headers("tools/call", GEMINI)[1:],
    ),
    415,
    "sidecar",
    code=-32600,
)
case(
    "http-charset-utf16",
    "`Content-Type: application/json; charset=utf-16`",
    post(
        call_body(GEMINI),
        "open",
        ("Content-Type", "application/json; charset=utf-16"),
        *mcp_headers("tools/call", GEMINI)[1:],
    ),
    415,
    "sidecar",
    code=-32600,
)
case(
    "http-content-type-twice",
    "Content-Type sent twice (`application/json`, `text/plain`)",
    post(call_body(GEMINI), "open", *CALL_HEADERS, ("Content-Type", "text/plain")),
    415,
    "sidecar",
    code=-32600,
)
passes(
    "http-charset-utf8",
    "positive control: `application/json; charset=utf-8` (tools/list)",
    post(
        rpc_body("tools/list"),
        "open",
        ("Content-Type", "application/json; charset=utf-8"),
        *mcp_headers("tools/list")[1:],
    ),
    marker=GEMINI,
)
runs(
    "http-chunked",
    "chunked body (Envoy buffers it): same result as Content-Length",
    chunked_call(GEMINI, "open", [7, 30, 1]),
    "open",
)
tool_denied(
    "http-chunked-denied",
    "chunked tools/call of openai, a chunk boundary inside the tool name",
    chunked_call(OPENAI, "open", [len(call_body(OPENAI).split(b"openai")[0]) + 2]),
    DENY_OPENAI,
    forbidden=(OPENAI,),
)
case(
    "http-too-large",
    "body of 1 MiB + 1 byte",
    post(
        b" " * (1024 * 1024 - len(call_body(OPENAI)) + 1) + call_body(OPENAI),
        "open",
        *mcp_headers("tools/call", OPENAI),
    ),
    413,
    "envoy",
    forbidden=(OPENAI,),
)
case(
    "http-chunked-too-large",
    "chunked body over 1 MiB",
    chunked(
        http("POST", "/mcp", None, [auth("open"), *CALL_HEADERS, ("Transfer-Encoding", "chunked")]),
        b" " * (1024 * 1024 + 10) + call_body(GEMINI),
        [65536] * 20,
    ),
    413,
    "envoy",
)
case(
    "http-partial-body",
    "Content-Length larger than the bytes sent, then the client half-closes",
    http(
        "POST",
        "/mcp",
        None,
        [auth("open"), *mcp_headers("tools/call", OPENAI), ("Content-Length", "400")],
    )
    + call_body(OPENAI)[:60],
    0,
    "none",
    half_close=True,
    forbidden=(OPENAI,),
)
case(
    "http-cl-and-te",
    "both Content-Length and `Transfer-Encoding: chunked` (smuggling)",
    http(
        "POST",
        "/mcp",
        None,
        [auth("open"), *CALL_HEADERS, ("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
    )
    + b"5\r\nhello\r\n0\r\n\r\n",
    400,
    "envoy",
)
case(
    "http-two-content-lengths",
    "two different Content-Length headers",
    http("POST", "/mcp", call_body(GEMINI), [auth("open"), *CALL_HEADERS, ("Content-Length", "3")]),
    400,
    "envoy",
)
case(
    "http-te-gzip",
    "`Transfer-Encoding: gzip, chunked`",
    http(
        "POST", "/mcp", None, [auth("open"), *CALL_HEADERS, ("Transfer-Encoding", "gzip, chunked")]
    )
    + b"0\r\n\r\n",
    501,
    "envoy",
)
case(
    "http-1.0",
    "HTTP/1.0 request",
    http("POST", "/mcp", call_body(GEMINI), [auth("open"), *CALL_HEADERS], version="HTTP/1.0"),
    426,
    "envoy",
)
case(
    "http-lowercase-method",
    "method `post` (methods are case-sensitive)",
    http("post", "/mcp", call_body(GEMINI), [auth("open"), *CALL_HEADERS]),
    400,
    "envoy",
)
case(
    "http-put",
    "PUT with a tools/call body",
    http("PUT", "/mcp", call_body(GEMINI), [auth("open"), *CALL_HEADERS]),
    405,
    "sidecar",
    code=-32600,
    headers=(("allow", "GET, POST, DELETE"),),
)
case(
    "http-options",
    "OPTIONS (CORS preflight shape)",
    http("OPTIONS", "/mcp", None, [auth("open"), ("Access-Control-Request-Method", "POST")]),
    405,
    "sidecar",
    code=-32600,
)
for cid, header in [
    ("http-override-x-http-method-override", "X-HTTP-Method-Override"),
    ("http-override-x-method-override", "X-Method-Override"),
    ("http-override-x-http-method", "X-HTTP-Method"),
]:
    invalid_request(
        cid,
        f"`{header}: DELETE` on a POST",
        call(GEMINI, "open", (header, "DELETE")),
        marker="override",
    )
case(
    "http-nul-in-header",
    "NUL byte in a header value",
    post(call_body(GEMINI), "open", *CALL_HEADERS, b"X-Note: a\x00b"),
    400,
    "envoy",
)
case(
    "http-space-before-colon",
    "`Mcp-Name : …` (whitespace before the colon)",
    post(call_body(GEMINI), "open", *mcp_headers("tools/call"), b"Mcp-Name : x"),
    400,
    "envoy",
)
case(
    "http-underscore-header",
    "`x_mcp_grant: open` (underscore twin of x-mcp-grant)",
    call(GEMINI, "strict", ("x_mcp_grant", "open")),
    400,
    "envoy",
)
passes(
    "http-absolute-form",
    "absolute-form target `http://evil.example/mcp`: path /mcp, the upstream refuses the Host",
    http(
        "POST",
        "http://evil.example/mcp",
        call_body(GEMINI),
        [auth("open"), *mcp_headers("tools/call", GEMINI)],
    ),
    421,
)
for cid, path in [
    ("path-trailing-slash", "/mcp/"),
    ("path-uppercase", "/MCP"),
    ("path-dotdot-out", "/mcp/.."),
    ("path-matrix", "/mcp;x=1"),
    ("path-escaped-space", "/mcp%20"),
    ("path-other", "/healthz"),
]:
    case(
        cid,
        f"POST `{path}`",
        post(call_body(OPENAI), "open", *mcp_headers("tools/call", OPENAI), path=path),
        404,
        "sidecar",
        code=-32600,
        marker="(path)",
        forbidden=(OPENAI,),
    )
for cid, path in [
    ("path-escaped-slash", "/mcp%2F"),
    ("path-escaped-backslash", "/mcp%5c"),
    ("path-fragment", "/mcp#x"),
    ("path-nul", "/mcp%00"),
]:
    case(
        cid,
        f"POST `{path}`",
        post(call_body(OPENAI), "open", *mcp_headers("tools/call", OPENAI), path=path),
        400,
        "envoy",
        forbidden=(OPENAI,),
    )
for cid, path in [
    ("path-query", "/mcp?x=1"),
    ("path-double-slash", "//mcp"),
    ("path-percent-unreserved", "/%6Dc%70"),
    ("path-dot-segment", "/./mcp"),
    ("path-dotdot", "/a/../mcp"),
]:
    runs(
        cid,
        f"POST `{path}`: Envoy normalises it to /mcp",
        call(GEMINI, "open").replace(b"POST /mcp ", f"POST {path} ".encode(), 1),
        "open",
    )

# Identity ----------------------------------------------------------------------------------
family("Identity")
TOKEN = token_for("open")


def as_auth(value: str | bytes, tool: str = GEMINI) -> bytes:
    line = value if isinstance(value, bytes) else f"Authorization: {value}".encode()
    return post(call_body(tool), None, line, *mcp_headers("tools/call", tool))


case(
    "id-no-token",
    "no Authorization header",
    post(call_body(GEMINI), None, *CALL_HEADERS),
    401,
    "sidecar",
    code=-32001,
    headers=(("www-authenticate", "Bearer"),),
)
runs("id-scheme-lowercase", "`bearer <token>`", as_auth(f"bearer {TOKEN}"), "open")
runs("id-scheme-mixed-case", "`bEaReR <token>`", as_auth(f"bEaReR {TOKEN}"), "open")
runs(
    "id-header-name-case",
    "`aUTHORIZATION:` header name in odd case",
    as_auth(f"aUTHORIZATION: Bearer {TOKEN}".encode()),
    "open",
)
runs(
    "id-trailing-whitespace",
    "`Bearer <token>  ` (HTTP strips the trailing whitespace)",
    as_auth(f"Bearer {TOKEN}  "),
    "open",
)
for cid, value, what in [
    ("id-token-uppercase", f"Bearer {TOKEN.upper()}", "token in upper case"),
    ("id-double-space", f"Bearer  {TOKEN}", "two spaces after the scheme"),
    ("id-tab", f"Bearer\t{TOKEN}", "tab after the scheme"),
    ("id-token-inner-space", "Bearer adv-token- open", "space inside the token"),
    ("id-two-credentials", f"Bearer {TOKEN}, Bearer {token_for('strict')}", "two credentials"),
    ("id-basic", f"Basic {TOKEN}", "Basic scheme with the token"),
    ("id-token-prefix", f"Bearer {TOKEN[:-1]}", "token missing its last character"),
    (
        "id-token-hash",
        "Bearer " + hashlib.sha256(TOKEN.encode()).hexdigest(),
        "the token's sha256 (as stored in grants.json)",
    ),
]:
    case(
        cid,
        f"`Authorization`: {what}",
        as_auth(value),
        401,
        "sidecar",
        code=-32001,
        headers=(("www-authenticate", "Bearer"),),
    )
case(
    "id-authorization-twice",
    "two Authorization lines with the same valid token",
    post(call_body(GEMINI), "open", auth("open"), *CALL_HEADERS),
    401,
    "sidecar",
    code=-32001,
)
tool_denied(
    "id-other-grant",
    "the default-deny grant's token calling google: its own policy applies",
    call(GOOGLE, "strict"),
    "(default deny)",
    forbidden=(GOOGLE,),
)
tool_denied(
    "id-spoof-grant-header",
    "default-deny token plus `x-mcp-grant: open`, calling google",
    call(GOOGLE, "strict", ("x-mcp-grant", "open")),
    "(default deny)",
    forbidden=(GOOGLE,),
)
runs(
    "id-spoof-grant-header-upstream",
    "default-deny token plus `x-mcp-grant: open`, calling gemini: the upstream sees `strict`",
    call(GEMINI, "strict", ("x-mcp-grant", "open"), ("X-MCP-Grant", "open")),
    "strict",
)
case(
    "id-spoof-grant-no-token",
    "`x-mcp-grant: open` and no token",
    post(call_body(GEMINI), None, ("x-mcp-grant", "open"), *CALL_HEADERS),
    401,
    "sidecar",
    code=-32001,
)
tool_denied(
    "id-spoof-xfcc",
    "`x-forwarded-client-cert` naming a SPIFFE id, with the default-deny token",
    call(
        GOOGLE,
        "strict",
        ("x-forwarded-client-cert", "By=spiffe://mesh/open;URI=spiffe://mesh/ns/a/sa/open"),
    ),
    "(default deny)",
    forbidden=(GOOGLE,),
)
tool_denied(
    "id-spoof-spiffe",
    "`x-spiffe-id: spiffe://mesh/open`, with the default-deny token",
    call(GOOGLE, "strict", ("x-spiffe-id", "spiffe://mesh/open")),
    "(default deny)",
    forbidden=(GOOGLE,),
)
for cid, query, grant, what in [
    (
        "id-query-access-token",
        f"access_token={TOKEN}",
        None,
        "`?access_token=<valid token>`, no header",
    ),
    ("id-query-token", f"token={TOKEN}", "strict", "`?token=<open token>` beside a valid header"),
    (
        "id-query-encoded-name",
        f"access%5Ftoken={TOKEN}",
        None,
        "`?access%5Ftoken=…` (escaped name)",
    ),
    ("id-query-semicolon", f"x=1;ACCESS_TOKEN={TOKEN}", None, "`?x=1;ACCESS_TOKEN=…`"),
    ("id-query-no-value", "access_token", "open", "`?access_token` without a value"),
]:
    invalid_request(
        cid,
        what,
        post(call_body(GEMINI), grant, *CALL_HEADERS, path=f"/mcp?{query}"),
        marker="credentials in the URL",
    )


# Bounded work and id length ----------------------------------------------------------------
family("Bounded work and id length")

MIB = 1024 * 1024


def flood_body(tool: str, item: bytes, items: int | None = None, pad: bytes = b"") -> bytes:
    """A tools/call of `tool` whose arguments hold `items` copies of `item` in one array (as
    many as fit in 1 MiB when None), then a `prompt` of `pad` repeated up to 1 MiB."""
    head = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' + tool.encode()
    head += b'","_meta":' + META_JSON + b',"arguments":{"a":['
    tail = b'"}}}'
    if items is None:
        items = (MIB - len(head) - len(b'],"prompt":"') - len(tail)) // (len(item) + 1)
    body = head + b",".join([item] * items) + b'],"prompt":"'
    if pad:
        body += pad * ((MIB - len(body) - len(tail)) // len(pad))
    return body + tail


FLOOD_HEADERS = mcp_headers("tools/call", OPENAI)
invalid_request(
    "work-empty-arrays",
    "1 MiB of arguments holding ~350 000 empty arrays",
    post(flood_body(OPENAI, b"[]"), "open", *FLOOD_HEADERS),
    marker="JSON values",
    forbidden=(OPENAI,),
)
invalid_request(
    "work-empty-objects",
    "1 MiB of arguments holding ~350 000 empty objects",
    post(flood_body(OPENAI, b"{}"), "open", *FLOOD_HEADERS),
    marker="JSON values",
    forbidden=(OPENAI,),
)
invalid_request(
    "work-numbers",
    "1 MiB of arguments holding ~520 000 numbers",
    post(flood_body(OPENAI, b"0"), "open", *FLOOD_HEADERS),
    marker="JSON values",
    forbidden=(OPENAI,),
)
invalid_request(
    "work-nested",
    "1 MiB of arguments holding ~8 600 arrays nested 60 deep",
    post(flood_body(OPENAI, b"[" * 60 + b"]" * 60), "open", *FLOOD_HEADERS),
    marker="JSON values",
    forbidden=(OPENAI,),
)
invalid_request(
    "work-empty-strings",
    "1 MiB of arguments holding ~350 000 empty strings",
    post(flood_body(OPENAI, b'""'), "open", *FLOOD_HEADERS),
    marker="JSON values",
    forbidden=(OPENAI,),
)
tool_denied(
    "work-commas-in-prompt",
    "a prompt of 1 MiB of commas: one value, judged as usual (openai is denied)",
    post(flood_body(OPENAI, b"1", items=1, pad=b","), "open", *FLOOD_HEADERS),
    DENY_OPENAI,
    forbidden=(OPENAI,),
)
tool_denied(
    "work-at-the-bound",
    "as many values as the bound allows, padded to 1 MiB with surrogate pairs",
    post(flood_body(OPENAI, b"0", items=19_900, pad=b"\\ud83d\\ude00"), "open", *FLOOD_HEADERS),
    DENY_OPENAI,
    forbidden=(OPENAI,),
)
invalid_request(
    "id-too-long",
    "a JSON-RPC id of 257 bytes",
    post(call_body(OPENAI, rid="i" * 257), "open", *FLOOD_HEADERS),
    marker='"id" is longer than 256 bytes',
    forbidden=(OPENAI,),
)
invalid_request(
    "id-too-long-utf8",
    "a JSON-RPC id of 86 three-byte characters (258 bytes)",
    post(call_body(OPENAI, rid="\u20ac" * 86), "open", *FLOOD_HEADERS),
    marker='"id" is longer than 256 bytes',
    forbidden=(OPENAI,),
)
tool_denied(
    "id-at-the-bound",
    "a JSON-RPC id of exactly 256 bytes: judged as usual (openai is denied)",
    post(call_body(OPENAI, rid="i" * 256), "open", *FLOOD_HEADERS),
    DENY_OPENAI,
    forbidden=(OPENAI,),
)
parse_error(
    "id-huge-integer",
    "an integer id of 300 digits (no number literal over 64 characters is read)",
    post(call_body(OPENAI).replace(b'"id":1,', b'"id":' + b"9" * 300 + b","), "open"),
    forbidden=(OPENAI,),
)


# Type coercion -----------------------------------------------------------------------------
family("Type coercion")
# A policy judged the raw JSON while the server converts arguments before the tool runs (the
# SDK reads "yes", 1 or 1.0 as true and "4096" as 4096): a type the rule does not compare
# is unknown, and deny_if denies on unknown. A backtracking engine would stall every grant
# on the second rule's pattern; RE2 decides it in linear time.
POLICIES["coercion"] = {
    "version": "1",
    "default": "deny",
    "tools": {
        GEMINI: {
            "deny_if": [
                {"conditions": [{"path": "args.returnBase64", "op": "eq", "value": True}]},
                {"conditions": [{"path": "args.prompt", "op": "regex", "value": "^(a+)+$"}]},
            ]
        },
        GOOGLE: {"deny_if": [{"conditions": [{"path": "args.width", "op": "gt", "value": 1024}]}]},
    },
}
GRANTS["coerce"] = "coercion"
DENY_BASE64 = f"/tools/{GEMINI}/deny_if/0"
for cid, value in [
    ("coerce-bool-number", 1),
    ("coerce-bool-float", 1.0),
    ("coerce-bool-string-true", "true"),
    ("coerce-bool-string-True", "True"),
    ("coerce-bool-string-t", "t"),
    ("coerce-bool-string-1", "1"),
    ("coerce-bool-string-yes", "yes"),
    ("coerce-bool-string-on", "on"),
]:
    tool_denied(
        cid,
        f"`returnBase64: {json.dumps(value)}` against `deny_if returnBase64 eq true`",
        call(GEMINI, "coerce", arguments={"prompt": "a fox", "returnBase64": value}),
        DENY_BASE64,
    )
tool_denied(
    "coerce-number-string",
    '`width: "4096"` against `deny_if width gt 1024`',
    call(GOOGLE, "coerce", arguments={"prompt": "a fox", "width": "4096"}),
    f"/tools/{GOOGLE}/deny_if/0",
    forbidden=(GOOGLE,),
)
runs(
    "coerce-control",
    "positive control: `returnBase64: false`",
    call(GEMINI, "coerce", arguments={"prompt": "a fox", "returnBase64": False}),
    "coerce",
)
runs(
    "regex-catastrophic",
    "a prompt of 40 `a` and a `!` against `deny_if prompt regex ^(a+)+$`: decided at once",
    call(GEMINI, "coerce", arguments={"prompt": "a" * 40 + "!"}),
    "coerce",
)
tool_denied(
    "regex-catastrophic-match",
    "a prompt of 40 `a` against the same rule: it matches",
    call(GEMINI, "coerce", arguments={"prompt": "a" * 40}),
    f"/tools/{GEMINI}/deny_if/1",
)

family("Resources and prompts")
# Content methods under `default: deny`: the grant may read one tool and `docs://{name}`
# resources (but not names starting with `secret`) and get one prompt. The ImageGen server
# has no resources or prompts: every request here is the sidecar's to refuse.
POLICIES["content"] = {
    "version": "1",
    "default": "deny",
    "tools": {GEMINI: {}},
    "resources": {
        "docs://{name}": {
            "deny_if": [{"conditions": [{"path": "args.name", "op": "regex", "value": "^secret"}]}]
        }
    },
    "prompts": {"summarize": {}},
}
GRANTS["reader"] = "content"
DOCS_RULE = "/resources/docs:~1~1{name}"


def content(method: str, params: dict[str, Any], name: str | None = None) -> bytes:
    """A stateless content request by the `reader` grant (Mcp-Name as the SDK mirrors it)."""
    body = rpc_body(method, params={**params, "_meta": META})
    return post(body, "reader", *mcp_headers(method, name))


def content_denied(id: str, what: str, request: bytes, marker: str) -> None:
    case(id, what, request, 403, "sidecar", code=-32003, marker=marker)


def read_uri(uri: str) -> bytes:
    return content("resources/read", {"uri": uri}, uri)


REF_INTERNAL = {"ref": {"type": "ref/prompt", "name": "internal"}}
content_denied(
    "content-read-default-deny",
    "`resources/read` of `file:///etc/passwd`: no entry, `default: deny`",
    read_uri("file:///etc/passwd"),
    "(rule: (default deny))",
)
content_denied(
    "content-subscribe-default-deny",
    "`resources/subscribe` to `file:///etc/passwd`",
    content("resources/subscribe", {"uri": "file:///etc/passwd"}),
    "(rule: (default deny))",
)
content_denied(
    "content-prompt-default-deny",
    "`prompts/get` of a prompt the policy does not list",
    content("prompts/get", {"name": "internal"}, "internal"),
    "(rule: (default deny))",
)
content_denied(
    "content-complete-default-deny",
    "`completion/complete` for that prompt's arguments",
    content("completion/complete", {**REF_INTERNAL, "argument": {"name": "a", "value": ""}}),
    "(rule: (default deny))",
)
content_denied(
    "content-read-encoded-name",
    "`docs://%73ecret`: the server decodes the value to `secret`, and so does the policy",
    read_uri("docs://%73ecret"),
    f"(rule: {DOCS_RULE}/deny_if/0)",
)
content_denied(
    "content-read-dot-segment",
    "`docs://.%2Fsecret`: `./secret`, a path that names `secret`",
    read_uri("docs://.%2Fsecret"),
    f"(rule: {DOCS_RULE})",
)
content_denied(
    "content-read-empty-value",
    "`docs://`: the server would read `{name}` as empty, the pattern needs a character",
    read_uri("docs://"),
    f"(rule: {DOCS_RULE})",
)
content_denied(
    "content-read-comma",
    "`docs://a,secret`: the server ends `{name}` at `,`; the pattern would not",
    read_uri("docs://a,secret"),
    f"(rule: {DOCS_RULE})",
)
content_denied(
    "content-read-control-chars",
    "a 300-character URI with a newline and an escape sequence: denied, never echoed",
    content("resources/read", {"uri": "file:///etc/pa\nss\x1b[2J" + "x" * 300}),
    "… (321 characters)",
)
invalid_params(
    "content-uri-number",
    "`resources/read` whose `uri` is a number",
    content("resources/read", {"uri": 5}),
)
invalid_params(
    "content-prompt-argument-number",
    "`prompts/get` whose arguments hold a number (the schema says strings)",
    content("prompts/get", {"name": "summarize", "arguments": {"n": 5}}, "summarize"),
)
invalid_params(
    "content-complete-ref-tool",
    "`completion/complete` with a `ref/tool` reference naming openai",
    content(
        "completion/complete",
        {"ref": {"type": "ref/tool", "name": OPENAI}, "argument": {"name": "a", "value": ""}},
    ),
    forbidden=(OPENAI,),
)
case(
    "content-header-uri-mismatch",
    "`Mcp-Name: docs://readme`, body reads `file:///etc/passwd`",
    content("resources/read", {"uri": "file:///etc/passwd"}, "docs://readme"),
    400,
    "sidecar",
    code=-32020,
)


# -- docs -----------------------------------------------------------------------------------


def expected_text(c: Case) -> str:
    """The expected outcome in words, as the docs table shows it."""
    if c.by == "none":
        return "no response; nothing forwarded"
    if c.by == "envoy":
        return f"{c.status} from Envoy"
    if c.by == "upstream":
        ran = ", ".join(c.executes)
        tail = f"; runs `{ran}` as `{c.grant}`" if ran else "; runs nothing"
        return f"allowed; upstream answers {c.status}{tail}"
    if c.code is None:
        rule = (c.marker or "").removeprefix("(rule: ").removesuffix(")")
        return f"200 `[POLICY DENIED]` tool result, rule `{rule}`"
    return f"{c.status}, JSON-RPC {c.code}"


def render_markdown(corpus: Sequence[Case] = CORPUS) -> str:
    out: list[str] = []
    families: list[str] = []
    for c in corpus:
        if c.family not in families:
            families.append(c.family)
    for name in families:
        rows = [c for c in corpus if c.family == name]
        out += [
            f"### {name} ({len(rows)})",
            "",
            "| id | request | expected | never runs |",
            "|---|---|---|---|",
        ]
        for c in rows:
            what = c.what.replace("|", "\\|")
            never = ", ".join(f"`{t.rsplit('.', 1)[-1]}`" for t in c.forbidden)
            out.append(f"| `{c.id}` | {what} | {expected_text(c)} | {never} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
