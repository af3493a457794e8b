"""One HTTP request as the sidecar sees it (`HttpRequest`), and the refusals of its HTTP
shape: the path, method overrides, credentials in the URL, the session header, the method,
and the body's envelope (truncated, compressed, not JSON). Pure; every edge builds an
`HttpRequest` from its transport's message."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz.mcp import INVALID_REQUEST
from authz.model import Decision, DenyKind, FixedRule

__all__ = [
    "BODYLESS_METHODS",
    "MCP_PATH",
    "METHOD_OVERRIDE_HEADERS",
    "QUERY_CREDENTIAL_NAMES",
    "HttpRequest",
    "check_envelope",
    "check_method",
    "check_shape",
]

BODYLESS_METHODS = frozenset({"GET", "DELETE"})
"""GET opens the server's SSE stream, DELETE ends a session: no body, grant still needed."""

MCP_PATH = "/mcp"
"""The one endpoint path the sidecar allows (plus an optional query string). Envoy has
already normalised the path (dot segments, merged slashes, decoded unreserved escapes;
escaped slashes are rejected), so the comparison is exact."""

METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-method-override", "x-http-method")
"""Headers some frameworks use to change the HTTP method: the method is what was sent."""

QUERY_CREDENTIAL_NAMES = frozenset(
    {
        "access_token",
        "token",
        "id_token",
        "refresh_token",
        "auth",
        "auth_token",
        "authorization",
        "bearer",
        "bearer_token",
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "client_secret",
    }
)
"""Query parameters that carry credentials. Tokens in URLs end up in logs and histories;
a request with one is refused (400), whether or not the token is valid."""

_SESSION_ID = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,256}")
"""`Mcp-Session-Id`: visible ASCII (MCP spec) without a comma, because Envoy joins repeated
headers with a comma and the upstream would read only one of them."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What the sidecar knows about one HTTP request, independent of Envoy's messages."""

    method: str
    path: str
    headers: Mapping[str, str]
    """Lower-cased header names."""
    body: bytes
    partial_body: bool = False
    request_id: str | None = None
    source_principal: str | None = None
    """The peer's identity as Envoy verified it on an mTLS listener
    (`attributes.source.principal`: the client certificate's first URI SAN, e.g. a SPIFFE
    ID). None without a client certificate. Never taken from a header."""
    jwt_metadata: Mapping[str, Any] | None = None
    """The dynamic metadata Envoy's jwt_authn filter wrote for this request (namespace
    `envoy.filters.http.jwt_authn`, sent in `attributes.metadata_context`), as plain JSON
    values; None when no JWT was verified. Never taken from a header."""
    trace_context: Mapping[str, str] | None = None
    """The W3C trace context of the check itself (`traceparent`, `tracestate`), when the
    transport carries it apart from the request's headers: Envoy's ext_authz span, sent as
    gRPC call metadata. None: the decision's span continues the request's headers."""


def check_shape(http: HttpRequest) -> Decision | None:
    """HTTP-level refusals, before the caller is identified: path, overrides, URL tokens."""
    path, _, query = http.path.partition("?")
    if path != MCP_PATH:
        return Decision.deny(
            DenyKind.NOT_FOUND,
            f"not found: the MCP endpoint is {MCP_PATH}",
            rule=FixedRule.PATH,
            rpc_code=INVALID_REQUEST,
        )
    for header in METHOD_OVERRIDE_HEADERS:
        if header in http.headers:
            return Decision.deny(
                DenyKind.BAD_REQUEST,
                "HTTP method override headers are not accepted",
                rule=FixedRule.HTTP,
                rpc_code=INVALID_REQUEST,
            )
    if any(name in QUERY_CREDENTIAL_NAMES for name in _query_names(query)):
        return Decision.deny(
            DenyKind.BAD_REQUEST,
            "credentials in the URL are not accepted; use the Authorization header",
            rule=FixedRule.HTTP,
            rpc_code=INVALID_REQUEST,
        )
    session = http.headers.get("mcp-session-id")
    if session is not None and _SESSION_ID.fullmatch(session) is None:
        return Decision.deny(
            DenyKind.BAD_REQUEST,
            "Mcp-Session-Id must be one value of visible ASCII characters",
            rule=FixedRule.HEADERS,
            rpc_code=INVALID_REQUEST,
        )
    return None


def check_method(http: HttpRequest) -> Decision | None:
    """A GET or DELETE that carries a body, or an HTTP method the endpoint does not serve."""
    if http.method in BODYLESS_METHODS:
        if http.body:
            return Decision.deny(
                DenyKind.BAD_REQUEST,
                f"a {http.method} request must not carry a body",
                rule=FixedRule.BODY,
                rpc_code=INVALID_REQUEST,
            )
        return None
    if http.method != "POST":
        return Decision.deny(
            DenyKind.METHOD_NOT_ALLOWED,
            f"HTTP method {http.method} is not allowed",
            rule=FixedRule.HTTP,
        )
    return None


def check_envelope(http: HttpRequest) -> Decision | None:
    """A POST body the sidecar does not read: truncated, compressed, or not JSON in UTF-8."""
    if http.partial_body:
        return Decision.deny(
            DenyKind.TOO_LARGE,
            "request body is larger than the sidecar accepts (it arrived truncated); "
            "the call was not run",
            rule=FixedRule.BODY,
        )
    encoding = http.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return Decision.deny(
            DenyKind.UNSUPPORTED_MEDIA,
            "compressed request bodies are not accepted (Content-Encoding)",
            rule=FixedRule.BODY,
        )
    content_type = http.headers.get("content-type")
    if _media_type(content_type) != "application/json" or not _utf8_charset(content_type):
        return Decision.deny(
            DenyKind.UNSUPPORTED_MEDIA,
            "Content-Type must be application/json (charset, if given, utf-8)",
            rule=FixedRule.BODY,
        )
    return None


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _utf8_charset(value: str | None) -> bool:
    """False when the Content-Type names a charset other than UTF-8 (the body is read as UTF-8)."""
    for parameter in (value or "").split(";")[1:]:
        name, _, raw = parameter.partition("=")
        if name.strip().lower() == "charset" and raw.strip().strip('"').lower() != "utf-8":
            return False
    return True


def _query_names(query: str) -> list[str]:
    """Parameter names of a query string, decoded and lower-cased; `;` separates too."""
    names = []
    for part in re.split(r"[&;]", query):
        name = part.partition("=")[0]
        names.append(urllib.parse.unquote_plus(name).strip().lower())
    return names
