"""Envoy ext_authz v3 over HTTP (`http_service`): a check request → `HttpRequest`, a `Verdict`
→ the HTTP/1.1 answer Envoy reads as allow (200) or deny (anything else), and the server.

The sibling of `grpc_authz.py`, without protobuf: Envoy sends the client's request as an
HTTP/1.1 request to this server (method, `path_prefix` + path, headers, the buffered body)
over kept-alive connections, and reads the answer's status and headers. The server is an
asyncio `Protocol` on a C HTTP parser (`httptools`), with no framework in between.

The contract with `deploy/envoy-http.yaml` (filter `envoy.filters.http.ext_authz`):

- the check request's path is `CHECK_PREFIX` + the client's path (`path_prefix`); every
  client header is sent (`allowed_headers`), none named `x-mcp-authz-*`, `x-mcp-grant` or
  `x-envoy-auth-partial-body` (a `header_mutation` filter ahead of ext_authz removes those
  from every client request; Envoy sets the partial-body marker of the check itself),
  plus what Envoy itself established (`authorization_request.headers_to_add`): the peer
  certificate's URI SAN (`PEER_HEADER`, `%DOWNSTREAM_PEER_URI_SAN%`: the gRPC
  `source.principal`) and the claims of a JWT that jwt_authn verified (`JWT_HEADER`,
  `%DYNAMIC_METADATA(envoy.filters.http.jwt_authn)%`: the gRPC `metadata_context`). Envoy adds
  a header only when its value is not empty, so a header the client sent could stand in for a
  missing one: that is why the prefix is removed first;
- an allowed request is answered 200 with `x-mcp-grant` and the decision id for the upstream
  (`allowed_upstream_headers`), `x-envoy-auth-headers-to-remove: authorization`, the decision
  id (and the fail-open mark) for the client (`allowed_client_headers_on_success`);
- a denial is the shared `denial.py` rendering with its status, except the two statuses
  Envoy would not pass on as they are: any non-200 answer is a denial and is forwarded with
  its status, body and `allowed_client_headers`, but a 200 would allow and a 5xx is taken for
  a failed check (`status_on_error`, the body dropped). So a denied `tools/call` (200, an
  `isError` result) is sent as 299 and a 503 as 298, and the HCM's `local_reply_config`
  turns exactly those two local replies back into 200 and 503, body and headers intact
  (`WIRE_STATUS`);
- on every answer, allow or deny, the dynamic metadata (`dynamic_metadata_from_headers`,
  values as strings keyed by header name): `x-mcp-authz-decision-id`, `x-mcp-authz-decision`
  (`allow`/`deny`, which the local-reply mappers match), `x-mcp-authz-hides` (`true` when the
  grant's policy hides tools: the route whose response phase fails closed) and
  `x-mcp-authz-context`, the JSON object the gRPC edge puts in its Struct
  (`decision_metadata`), which `extproc.response_context` reads.

The server fails closed: what it cannot read or decide is answered with a denial status and
the connection is closed (a bad request 400, headers over `MAX_HEAD_BYTES` or
`MAX_HEADERS` 431, a body over `MAX_BODY_BYTES` 413, a path without `CHECK_PREFIX` 404, an
error while answering 403); it never answers 200 but for an allowed `Verdict`.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import httptools
import structlog

from authz.envoy.denial import DECISION_HEADER, denial
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest

__all__ = [
    "CHECK_PREFIX",
    "CONTEXT_HEADER",
    "FAIL_OPEN_HEADER",
    "GRANT_HEADER",
    "HEALTH_PATH",
    "HIDES_HEADER",
    "JWT_HEADER",
    "MAX_BODY_BYTES",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "OUTCOME_HEADER",
    "PARTIAL_BODY_HEADER",
    "PEER_HEADER",
    "SIDECAR_ONLY_PREFIX",
    "WIRE_STATUS",
    "HttpAuthzProtocol",
    "allowed_answer",
    "decision_metadata",
    "denied_answer",
    "http_request",
    "serve_http_authz",
    "wire_status",
]

log = structlog.get_logger("mcp_authz.http_authz")

CHECK_PREFIX = "/check"
"""`http_service.path_prefix`: Envoy sends the client's path after it. A request whose path
does not start with it is not a check (the health check uses `HEALTH_PATH`)."""
HEALTH_PATH = "/healthz"
"""Envoy's active health check of the HTTP cluster: 200 while the sidecar serves checks,
503 while they would fail closed (the shared counter store is down), as gRPC health."""
GRANT_HEADER = "x-mcp-grant"
FAIL_OPEN_HEADER = "x-mcp-authz-fail-open"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
SIDECAR_ONLY_PREFIX = "x-mcp-authz-"
"""Headers only the sidecar or Envoy set: removed from every client request before the check
(Envoy's `header_mutation` filter), with `x-mcp-grant` and `x-envoy-auth-partial-body`."""
PEER_HEADER = "x-mcp-authz-peer-uri-san"
"""`%DOWNSTREAM_PEER_URI_SAN%`: the URI SANs of the client certificate Envoy validated, joined
by commas. The whole value is the peer's identity (gRPC: `source.principal`, the first SAN);
a certificate with several URI SANs names no grant (a SPIFFE ID has no comma)."""
JWT_HEADER = "x-mcp-authz-jwt-authn"
"""`%DYNAMIC_METADATA(envoy.filters.http.jwt_authn)%`: the jwt_authn filter's metadata as JSON
(`{"jwt_payload": {claims}}`), set only when it verified a JWT (gRPC: `metadata_context`)."""
OUTCOME_HEADER = "x-mcp-authz-decision"
HIDES_HEADER = "x-mcp-authz-hides"
CONTEXT_HEADER = "x-mcp-authz-context"
_CONSUMED = (PEER_HEADER, JWT_HEADER)
"""Headers the edge reads itself; the pipeline sees the client's headers as gRPC sends them."""

MAX_HEADERS = 200
"""Header lines per check request. Envoy lets a client send 100 (`max_headers_count`) and
adds a few of its own; more is not a check Envoy sent: 431."""
MAX_HEAD_BYTES = 128 * 1024
"""Bytes of request line and headers. Envoy lets a client send 60 KiB
(`max_request_headers_kb`) and adds the identity headers; more: 431."""
MAX_BODY_BYTES = 1024 * 1024
"""Envoy buffers at most `with_request_body.max_request_bytes` (1 MiB); more: 413."""
_MAX_QUEUED = 8
"""Requests pipelined on one connection before it is closed (Envoy sends one at a time)."""
_READ_DEADLINE = 10.0
"""Seconds a started request may take to arrive completely (Envoy gives up after 1 s)."""

WIRE_STATUS = {200: 299, 503: 298}
"""A denial's status → the status sent to Envoy; deploy/envoy-http.yaml maps each back."""


def wire_status(status: int) -> int:
    """The status a denial is sent with: never 200 (Envoy would allow) nor 5xx (Envoy would
    drop the body and answer `status_on_error`); 299 and 298 stand for 200 and 503."""
    if status == 200:
        return WIRE_STATUS[200]
    if status >= 500:
        return WIRE_STATUS[503]
    return status


# -- Envoy → domain ----------------------------------------------------------------------


def http_request(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> HttpRequest | None:
    """The pipeline's view of one check request; None when the path is not a check's.

    `headers` (lower-case names, repeated ones joined by commas) loses the identity headers
    Envoy added, which become `source_principal` and `jwt_metadata`; a JWT header that does
    not hold a JSON object is passed on as an empty namespace, which the pipeline refuses
    (401: the proxy is misconfigured). The body is partial unless Envoy's marker is absent
    or exactly `false`: a marker repeated or unreadable fails closed.
    """
    if not path.startswith(CHECK_PREFIX):
        return None
    peer = headers.pop(PEER_HEADER, None)
    raw_jwt = headers.pop(JWT_HEADER, None)
    jwt_metadata: dict[str, Any] | None = None
    if raw_jwt is not None:
        try:
            parsed = json.loads(raw_jwt)
        except ValueError:
            parsed = None
        jwt_metadata = parsed if isinstance(parsed, dict) else {}
    return HttpRequest(
        method=method,
        path=path[len(CHECK_PREFIX) :],
        headers=headers,
        body=body,
        partial_body=headers.get(PARTIAL_BODY_HEADER, "false").strip().lower() != "false",
        request_id=headers.get("x-request-id") or None,
        source_principal=peer or None,
        jwt_metadata=jwt_metadata,
    )


# -- domain → Envoy ----------------------------------------------------------------------


def decision_metadata(verdict: Verdict) -> dict[str, Any]:
    """The dynamic metadata of a decision: the same keys and values as the gRPC edge's Struct
    (`grpc_authz`), for access logs and the response phase (`extproc.response_context`)."""
    decision = verdict.decision
    meta: dict[str, Any] = {"decision_id": verdict.decision_id, "decision": decision.outcome.value}
    if decision.rule:
        meta["rule"] = decision.rule
    if decision.ticket is not None:
        meta["approval_id"] = decision.ticket.id
    if verdict.grant is not None:
        meta["grant_id"] = verdict.grant.id
        meta["policy"] = verdict.grant.policy
    if verdict.hides:
        meta["hides"] = True
    if verdict.inflight is not None:
        meta["inflight"] = verdict.inflight
    request = verdict.request
    if request is not None:
        meta["mcp_method"] = request.method
        if request.tool is not None:
            meta["tool"] = request.tool
        if not request.is_notification and request.id is not None:
            meta["jsonrpc_id"] = json.dumps(request.id, separators=(",", ":"))
    reservation = decision.reservation
    if decision.allowed and reservation is not None and reservation.token:
        meta["reservation"] = {
            "token": reservation.token,
            "entries": [
                {
                    "counter": counter,
                    "scope": scope,
                    "key": scope_key,
                    "window": window,
                    "start": start,
                    "cost": cost,
                }
                for (counter, scope, scope_key, window), start, cost in reservation.entries
            ],
        }
    return meta


def _line(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("latin-1")


_ALLOW_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    + _line(OUTCOME_HEADER, "allow")
    + _line("x-envoy-auth-headers-to-remove", f"authorization,{FAIL_OPEN_HEADER}")
)
_DENY_OUTCOME = _line(OUTCOME_HEADER, "deny")
_HIDES = _line(HIDES_HEADER, "true")
_FAIL_OPEN = _line(FAIL_OPEN_HEADER, "true")
_NO_BODY = b"content-length: 0\r\n\r\n"
_CONTEXT = f"{CONTEXT_HEADER}: ".encode("ascii")
_GRANT_LINES: dict[str, bytes] = {}


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # 298, 299
        return "Denied"


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {_reason(status)}\r\n".encode("ascii")
        if len(_STATUS_LINES) < 1000:  # statuses are three digits
            _STATUS_LINES[status] = line
    return line


# The context header is `json.dumps(decision_metadata(verdict), separators=(",", ":"))`,
# written from pieces: each is `_compact` of a few of its keys with the braces cut off (and
# a leading comma), so that joined they are that text exactly. The pieces that repeat (an
# outcome and rule, a grant and its policy, a method and tool, a bucket) are encoded once
# and kept; the values of one decision (its id, the JSON-RPC id, the in-flight key, the
# reservation's token and numbers) are quoted by the encoder's own string function.

_compact = json.JSONEncoder(separators=(",", ":")).encode
_KEPT = 4096
"""Pieces kept per cache; all forgotten at once past it."""
_ruled: dict[Any, str] = {}
_granted: dict[Any, str] = {}
_called: dict[Any, str] = {}
_buckets: dict[tuple[str, str, str, int], str] = {}


def _piece(cache: dict[Any, str], key: Any, values: dict[str, Any]) -> str:
    if len(cache) >= _KEPT:
        cache.clear()
    piece = cache[key] = f",{_compact(values)[1:-1]}" if values else ""
    return piece


def _id_text(rid: Any) -> str:
    """A JSON-RPC id as JSON text (`json.dumps` of it)."""
    if type(rid) is int:
        return int.__repr__(rid)
    if type(rid) is str:
        return _quote(rid)
    return _compact(rid)


def _number(value: Any) -> str:
    return int.__repr__(value) if type(value) is int else _compact(value)


def _bucket(bucket: tuple[str, str, str, int]) -> str:
    """A reservation entry up to its `start`: `{"counter":…,…,"start":` (cached)."""
    text = _buckets.get(bucket)
    if text is None:
        counter, scope, scope_key, window = bucket
        whole = _compact(
            {"counter": counter, "scope": scope, "key": scope_key, "window": window, "start": 0}
        )
        if len(_buckets) >= _KEPT:
            _buckets.clear()
        text = _buckets[bucket] = whole[: -len("0}")]
    return text


def _context_text(verdict: Verdict) -> str:
    """`decision_metadata(verdict)` as compact ASCII JSON (see above)."""
    decision = verdict.decision
    key: Any = (decision.outcome, decision.rule)
    ruled = _ruled.get(key)
    if ruled is None:
        values: dict[str, Any] = {"decision": decision.outcome.value}
        if decision.rule:
            values["rule"] = decision.rule
        ruled = _piece(_ruled, key, values)
    parts = ['{"decision_id":', _quote(verdict.decision_id), ruled]
    if decision.ticket is not None:
        parts += (',"approval_id":', _quote(decision.ticket.id))
    grant = verdict.grant
    hides = verdict.hides
    key = (grant.id, grant.policy, hides) if grant is not None else hides
    granted = _granted.get(key)
    if granted is None:
        values = {"grant_id": grant.id, "policy": grant.policy} if grant is not None else {}
        if hides:
            values["hides"] = True
        granted = _piece(_granted, key, values)
    parts.append(granted)
    if verdict.inflight is not None:
        parts += (',"inflight":', _quote(verdict.inflight))
    request = verdict.request
    if request is not None:
        key = (request.method, request.tool)
        called = _called.get(key)
        if called is None:
            values = {"mcp_method": request.method}
            if request.tool is not None:
                values["tool"] = request.tool
            called = _piece(_called, key, values)
        parts.append(called)
        if not request.is_notification and request.id is not None:
            parts += (',"jsonrpc_id":', _quote(_id_text(request.id)))
    reservation = decision.reservation
    if decision.allowed and reservation is not None and reservation.token:
        parts += (',"reservation":{"token":', _quote(reservation.token), ',"entries":[')
        for n, (bucket, start, cost) in enumerate(reservation.entries):
            if n:
                parts.append(",")
            parts += (_bucket(bucket), _number(start), ',"cost":', _number(cost), "}")
        parts.append("]}")
    parts.append("}")
    return "".join(parts)


def _context(verdict: Verdict) -> bytes:
    # ASCII JSON: every character a header value may carry
    return b"".join((_CONTEXT, _context_text(verdict).encode("ascii"), b"\r\n"))


def allowed_answer(verdict: Verdict) -> bytes:
    """The whole HTTP/1.1 answer to an allowed check (pure)."""
    assert verdict.decision.allowed and verdict.grant is not None
    grant_line = _GRANT_LINES.get(verdict.grant.id)
    if grant_line is None:
        if len(_GRANT_LINES) >= _KEPT:
            _GRANT_LINES.clear()
        grant_line = _GRANT_LINES[verdict.grant.id] = _line(GRANT_HEADER, verdict.grant.id)
    parts = [_ALLOW_HEAD, _line(DECISION_HEADER, verdict.decision_id), grant_line]
    if verdict.hides:
        parts.append(_HIDES)
    if verdict.fail_open:
        parts.append(_FAIL_OPEN)
    parts.append(_context(verdict))
    parts.append(_NO_BODY)
    return b"".join(parts)


def denied_answer(verdict: Verdict, *, head: bool = False) -> bytes:
    """The whole HTTP/1.1 answer to a denied check (pure): `denial(verdict)` with its status
    sent as `wire_status`. `head`: the check is a HEAD request, whose answer has no body."""
    rendered = denial(verdict)
    body = rendered.body.encode("utf-8")
    parts = [_status_line(wire_status(rendered.status))]
    parts += [_line(name, value) for name, value in rendered.headers]
    parts.append(_DENY_OUTCOME)
    parts.append(_context(verdict))
    parts.append(b"content-length: %d\r\n\r\n" % len(body))
    if not head:
        parts.append(body)
    return b"".join(parts)


def _refusal(status: int, message: str, *, head: bool = False) -> bytes:
    """An answer for what the server could not read or decide: never an allow, never
    metadata (Envoy's mappers see no decision id), and the connection closes after it."""
    body = json.dumps(
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": message}},
        separators=(",", ":"),
    ).encode("ascii")
    return (
        f"HTTP/1.1 {status} {_reason(status)}\r\n"
        "content-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode("ascii") + (b"" if head else body)


_ERROR = _refusal(403, "[POLICY DENIED] the policy sidecar could not decide this request")
_HEALTHY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_UNHEALTHY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"


# -- the server --------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside a parser callback: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Check:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class HttpAuthzProtocol(asyncio.Protocol):
    """One connection from Envoy: requests in, one answer each, in order, kept alive."""

    __slots__ = (
        "_authorizer",
        "_body",
        "_body_size",
        "_closed",
        "_deadline",
        "_final",
        "_head_size",
        "_header_count",
        "_headers",
        "_in_head",
        "_in_message",
        "_parser",
        "_peer_closed",
        "_queue",
        "_raw_head",
        "_serving",
        "_task",
        "_transport",
        "_url",
    )

    def __init__(self, authorizer: Authorizer, serving: Callable[[], bool]) -> None:
        self._authorizer = authorizer
        self._serving = serving
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: collections.deque[_Check] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._final: bytes | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._in_message = False
        self._peer_closed = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_count = 0
        self._head_size = 0
        self._raw_head = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_head = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        # A check in progress runs to its end (its decision is audited) and its answer is
        # dropped: Envoy has answered the client already (status_on_error).
        self._closed = True
        self._queue.clear()
        self._cancel_deadline()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._final is not None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.message)
            else:
                log.error("http_authz_callback_failed", error=type(refused).__name__)
                self._refuse(400, "the policy sidecar could not read this check request")
            return
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not accepted")
            return
        except httptools.HttpParserError:
            self._refuse(400, "the policy sidecar could not read this check request")
            return
        if self._in_head:
            # llhttp holds a header's bytes until the header ends: bound what it may hold
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD_BYTES:
                self._refuse(431, "check request headers are too large")
                return
        if self._in_message and self._deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(
                _READ_DEADLINE, self._refuse, 400, "check request incomplete"
            )

    def eof_received(self) -> bool | None:
        self._peer_closed = True
        return None  # the transport closes

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self._in_head = self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEAD_BYTES:
            raise _Refused(431, "check request path is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > MAX_HEADERS or self._head_size > MAX_HEAD_BYTES:
            raise _Refused(431, "check request headers are too large")
        key = name.decode("latin-1").lower()
        text = value.decode("utf-8", errors="replace")
        headers = self._headers
        # repeated: joined by commas, as Envoy joins them for the gRPC CheckRequest
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            raise _Refused(413, "check request body is over 1 MiB")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._cancel_deadline()
        if self._parser.should_upgrade():  # not a check Envoy sends: refused, never decided
            raise _Refused(400, "protocol upgrades are not accepted")
        if len(self._queue) >= _MAX_QUEUED:
            raise _Refused(400, "too many pipelined check requests")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._queue.append(
            _Check(
                method=self._parser.get_method().decode("ascii", errors="replace"),
                path=self._url.decode("latin-1"),
                headers=self._headers,
                body=body,
                keep_alive=self._parser.should_keep_alive(),
            )
        )
        self._reset()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._answer_queue())

    # -- answering ----------------------------------------------------------------------

    async def _answer_queue(self) -> None:
        try:
            while self._queue and not self._closed:
                check = self._queue.popleft()
                answer = await self._answer(check)
                if self._closed or self._transport is None:
                    return
                self._transport.write(answer)
                if not check.keep_alive:
                    self._close()
                    return
            if self._final is not None and not self._closed:
                self._send_final()
        finally:
            self._task = None

    async def _answer(self, check: _Check) -> bytes:
        head = check.method == "HEAD"
        try:
            request = http_request(check.method, check.path, check.headers, check.body)
            if request is None:
                if check.path == HEALTH_PATH and check.method in ("GET", "HEAD"):
                    return _HEALTHY if self._serving() else _UNHEALTHY
                check.keep_alive = False
                return _refusal(404, "not a check request", head=head)
            # Envoy gives up on a check after its timeout by closing the connection (HTTP/1.1
            # cannot cancel one request). A check read together with that close (the sidecar
            # was stalled) has no one to answer: it is not decided, so it takes no quota and
            # logs no decision, as a gRPC check Envoy reset is never decided. One turn of the
            # loop lets the close that arrived with the request be read first.
            await asyncio.sleep(0)
            if self._peer_closed or self._closed:
                check.keep_alive = False
                return b""
            verdict = await self._authorizer.check(request)
            if verdict.decision.allowed:
                return allowed_answer(verdict)
            return denied_answer(verdict, head=head)
        except Exception as exc:  # fail closed: never an allow
            log.error("http_authz_answer_failed", error=type(exc).__name__)
            check.keep_alive = False
            return _ERROR

    def _refuse(self, status: int, message: str) -> None:
        """Answer what cannot be read and close, after the answers already due."""
        self._cancel_deadline()
        if self._closed or self._final is not None:
            return
        log.warning("http_authz_refused", status=status, reason=message)
        self._final = _refusal(status, message)
        if self._task is None:
            self._queue.clear()
            self._send_final()

    def _send_final(self) -> None:
        if self._transport is not None and self._final is not None:
            self._transport.write(self._final)
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._queue.clear()
        self._cancel_deadline()
        if self._transport is not None:
            self._transport.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


async def serve_http_authz(
    authorizer: Authorizer,
    host: str,
    port: int,
    *,
    serving: Callable[[], bool] = lambda: True,
) -> asyncio.Server:
    """Listen for Envoy's HTTP ext_authz checks on `host:port` (0: any free port)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpAuthzProtocol(authorizer, serving),
        host,
        port,
        reuse_address=True,
        backlog=1024,
    )
