"""Envoy ext_authz v3 over gRPC: CheckRequest → HttpRequest, Verdict → CheckResponse, and
the `Authorization` servicer that joins them to the pipeline.

Protobuf stops here (and in the sibling `extproc.py`): the pipeline sees an `HttpRequest`
and returns a `Verdict`; a denial is rendered by `denial.py`, shared by every transport.

Both directions do only the work a decision needs. The request's headers are read where
Envoy put them (`_Headers`: one map lookup per header the pipeline asks for, no copy). The
answer is written as bytes (`check_response_bytes`, with `wire.py`): the parts every answer
shares are encoded once (the OK status, the headers removed upstream, the metadata entries
of a grant, a method, a tool, a rule; `_Pieces`), the decision's own values per decision.
The bytes are exactly `SerializeToString(deterministic=True)` of the message the generated
classes would build, which `check_response` returns parsed.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterator, Mapping
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Final

import grpc
from google.protobuf import json_format

from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz.envoy import wire
from authz.envoy.denial import DECISION_HEADER, UNAUTHENTICATED_KINDS, denial
from authz.model import Outcome, RequestId, Reservation
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest

__all__ = [
    "AUTHZ_SERVICE",
    "FAIL_OPEN_HEADER",
    "GRANT_HEADER",
    "JWT_AUTHN_NAMESPACE",
    "METADATA_NAMESPACE",
    "PARTIAL_BODY_HEADER",
    "AuthorizationService",
    "add_authorization_service",
    "check_response",
    "check_response_bytes",
    "http_request_from_check",
]

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
GRANT_HEADER = "x-mcp-grant"
FAIL_OPEN_HEADER = "x-mcp-authz-fail-open"
"""On the client's response when a call was allowed without quota (counter store down)."""
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
JWT_AUTHN_NAMESPACE = "envoy.filters.http.jwt_authn"
"""Dynamic metadata of Envoy's jwt_authn filter; it reaches ext_authz in
`attributes.metadata_context` only when listed in `metadata_context_namespaces`."""

_GRPC_OK = 0
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAUTHENTICATED = 16


class _Headers(Mapping[str, str]):
    """The CheckRequest's header map as the pipeline reads it: each header it asks for is
    one lookup in Envoy's map, and nothing is copied. Envoy sends every name in lower case
    (the field's contract); `http_request_from_check` checks that before using this view."""

    __slots__ = ("_map",)

    def __init__(self, headers: Any) -> None:
        self._map = headers

    def __getitem__(self, name: str) -> str:
        if name in self._map:  # indexing a protobuf map would add a missing key
            value: str = self._map[name]
            return value
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self._map.get(name, default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)


def http_request_from_check(check: external_auth_pb2.CheckRequest) -> HttpRequest:
    attributes = check.attributes
    http = attributes.request.http
    raw = http.headers
    headers: Mapping[str, str]
    if "".join(raw).islower():  # every name in lower case, as Envoy sends them
        headers = _Headers(raw)
    else:
        headers = {key.lower(): value for key, value in raw.items()}
    body = http.raw_body if http.raw_body else http.body.encode("utf-8")
    # Identity that Envoy established itself: the verified client certificate (mTLS) and
    # the claims of a JWT that jwt_authn verified. Dynamic metadata is written by Envoy's
    # filters only; no client header can put anything there.
    filter_metadata = attributes.metadata_context.filter_metadata
    jwt_metadata = (
        json_format.MessageToDict(filter_metadata[JWT_AUTHN_NAMESPACE])
        if JWT_AUTHN_NAMESPACE in filter_metadata
        else None
    )
    return HttpRequest(
        # HTTP methods are case-sensitive: "post" is not POST (the upstream would not treat
        # it as one either), so the method is passed on exactly as Envoy received it.
        method=http.method,
        path=http.path,
        headers=headers,
        body=body,
        partial_body=headers.get(PARTIAL_BODY_HEADER, "").lower() == "true",
        request_id=headers.get("x-request-id") or None,
        source_principal=attributes.source.principal or None,
        jwt_metadata=jwt_metadata,
    )


# -- Verdict → CheckResponse bytes ------------------------------------------------------
#
# CheckResponse: status 1 (google.rpc.Status: code 1, message 2), denied_response 2
# (status 1 {code 1}, headers 2, body 3), ok_response 3 (headers 2, headers_to_remove 5,
# response_headers_to_add 6), dynamic_metadata 4 (Struct). HeaderValueOption: header 1
# (HeaderValue: key 1, value 2), append_action 3. A proto3 string or number equal to its
# default is not written; a message field that is set always is (`field(n, b"")`).
#
# Most pieces are cached whole (a grant's header, the metadata entry of a method, a tool, a
# rule). A value that differs on every answer (a decision id, a JSON-RPC id, a window start)
# is written after a cached prefix: the bytes in front of a value depend only on the value's
# length, so `prefix(length) + value` is the whole piece.

_OVERWRITE: Final = wire.varint_field(3, 2)  # append_action: OVERWRITE_IF_EXISTS_OR_ADD
_STATUS_OK: Final = wire.field(1, b"")  # Status{code: 0}
_REMOVED: Final = wire.field(5, b"authorization") + wire.field(5, FAIL_OPEN_HEADER.encode())
_KEPT: Final = 4096
"""Pieces kept per cache (grants, methods, tools, rules, buckets, prefixes); all forgotten
at once past it."""


def _text(number: int, text: str) -> bytes:
    return wire.field(number, text.encode()) if text else b""


def _option(name: str, value: str) -> bytes:
    """A HeaderValueOption that sets `name` (overwriting what the request had)."""
    return wire.field(1, _text(1, name) + _text(2, value)) + _OVERWRITE


class _Cache(dict[Any, bytes]):
    """A bounded dict of encoded pieces."""

    def keep(self, key: Any, piece: bytes) -> bytes:
        if len(self) >= _KEPT:
            self.clear()
        self[key] = piece
        return piece


_entries = _Cache()
_prefixes = _Cache()
_grants = _Cache()
_buckets: dict[tuple[str, str, str, int], tuple[bytes, bytes, bytes]] = {}


def _entry(key: str, text: str) -> bytes:
    """A metadata entry `key` → the string `text`, for values that repeat (cached)."""
    piece = _entries.get((key, text))
    if piece is None:
        piece = _entries.keep((key, text), wire.entry(key, wire.string_value(text)))
    return piece


def _fresh_entry(key: str, text: str) -> bytes:
    """A metadata entry `key` → the string `text`, for values that do not repeat."""
    raw = text.encode()
    prefix = _prefixes.get((key, len(raw)))
    if prefix is None:
        whole = wire.entry(key, wire.string_value(" " * len(raw)))
        prefix = _prefixes.keep((key, len(raw)), whole[: len(whole) - len(raw)])
    return prefix + raw


def _header_field(number: int, name: str, value: str) -> bytes:
    """Field `number` holding the option that sets header `name` to `value`."""
    raw = value.encode()
    prefix = _prefixes.get((number, name, len(raw)))
    if prefix is None:
        whole = wire.field(number, _option(name, " " * len(raw)))
        cut = len(whole) - len(raw) - len(_OVERWRITE)
        prefix = _prefixes.keep((number, name, len(raw)), whole[:cut])
    return prefix + raw + _OVERWRITE


def _grant_header(grant_id: str) -> bytes:
    """OkHttpResponse.headers: the `x-mcp-grant` option (cached per grant)."""
    piece = _grants.get(grant_id)
    if piece is None:
        piece = _grants.keep(grant_id, wire.field(2, _option(GRANT_HEADER, grant_id)))
    return piece


_DOUBLE: Final = struct.Struct("<d")


def _bucket(bucket: tuple[str, str, str, int]) -> tuple[bytes, bytes, bytes]:
    """One element of the reservation's `entries` list, as the three pieces around its two
    numbers: `head + cost + middle + start + tail`, where the element is a Value holding the
    Struct {cost, counter, key, scope, start, window} (in that order)."""
    pieces = _buckets.get(bucket)
    if pieces is None:
        if len(_buckets) >= _KEPT:
            _buckets.clear()
        counter, scope, scope_key, window = bucket
        nothing = _DOUBLE.pack(0.0)
        cost = wire.entry("cost", wire.number_value(0.0))
        start = wire.entry("start", wire.number_value(0.0))
        named = wire.entry("counter", wire.string_value(counter))
        named += wire.entry("key", wire.string_value(scope_key))
        named += wire.entry("scope", wire.string_value(scope))
        tail = wire.entry("window", wire.number_value(window))
        whole = wire.field(1, wire.struct_value(cost + named + start + tail))
        head = whole[: len(whole) - len(tail) - len(start) - len(named) - len(nothing)]
        middle = named + start[: len(start) - len(nothing)]
        pieces = _buckets[bucket] = (head, middle, tail)
    return pieces


def _reservation_of(entries: bytes, token: str) -> bytes:
    """The `reservation` entry around its encoded `entries` elements."""
    # an empty list leaves the Value empty, as the generated classes do
    taken = wire.entry("entries", wire.field(6, entries) if entries else b"")
    taken += _fresh_entry("token", token)
    return wire.entry("reservation", wire.struct_value(taken))


_Shape = tuple[bytes, tuple[tuple[bytes, bytes, bytes], ...], bytes]
_shapes: dict[tuple[tuple[tuple[str, str, str, int], ...], int], _Shape] = {}


def _shape(buckets: tuple[tuple[str, str, str, int], ...], token_size: int) -> _Shape:
    """The pieces of a reservation entry of these buckets and a token of this many bytes:
    `prefix`, each bucket's (head, middle, tail), and the token's prefix."""
    pieces = tuple(_bucket(bucket) for bucket in buckets)
    nothing = _DOUBLE.pack(0.0)
    elements = b"".join(head + nothing + middle + nothing + tail for head, middle, tail in pieces)
    placeholder = " " * token_size  # as many bytes as the token's UTF-8
    token = _fresh_entry("token", placeholder)
    whole = _reservation_of(elements, placeholder)
    prefix = whole[: len(whole) - len(token) - len(elements)]
    if len(_shapes) >= _KEPT:
        _shapes.clear()
    shape = _shapes[buckets, token_size] = (prefix, pieces, token[: len(token) - token_size])
    return shape


def _reservation(reservation: Reservation) -> bytes:
    """The `reservation` entry: {entries: [{cost, counter, key, scope, start, window}],
    token} (what `CounterStore.release` needs: the Redis store builds keys from the four
    parts of the bucket, the memory store needs the token). Every byte but the numbers and
    the token comes from the pieces cached for its buckets and the token's length."""
    entries = reservation.entries
    token = reservation.token.encode()
    buckets = tuple([entry[0] for entry in entries])
    shape = _shapes.get((buckets, len(token)))
    if shape is None:
        shape = _shape(buckets, len(token))
    prefix, pieces, token_prefix = shape
    parts = [prefix]
    pack = _DOUBLE.pack
    for (head, middle, tail), (_, start, cost) in zip(pieces, entries, strict=True):
        parts += (head, pack(cost), middle, pack(start), tail)
    parts += (token_prefix, token)
    return b"".join(parts)


_OUTCOME: Final = {o: _entry("decision", o.value) for o in Outcome}
_HIDES: Final = wire.entry("hides", wire.bool_value(True))
_FAIL_OPEN: Final = wire.field(6, _option(FAIL_OPEN_HEADER, "true"))
_granted = _Cache()
_called = _Cache()
_ruled = _Cache()


def _id_text(rid: RequestId) -> str:
    """A JSON-RPC id as JSON text."""
    if type(rid) is int:
        return int.__repr__(rid)
    if type(rid) is str:
        return _quote(rid)
    return json.dumps(rid)


def _metadata(verdict: Verdict) -> bytes:
    """Dynamic metadata for Envoy (access logs, ext_proc), as a Struct's bytes, its entries
    in `wire.map_order`: approval_id, decision_id, decision, grant_id, hides, inflight,
    jsonrpc_id, mcp_method, policy, reservation, rule, tool. The entries that repeat come in
    three cached runs: (decision, grant_id, hides), (mcp_method, policy), (rule, tool)."""
    decision = verdict.decision
    grant = verdict.grant
    request = verdict.request
    parts = []
    if decision.ticket is not None:  # held for, denied by, or run under an approval
        parts.append(_fresh_entry("approval_id", decision.ticket.id))
    parts.append(_fresh_entry("decision_id", verdict.decision_id))
    # hides: every answer is filtered; deploy/envoy.yaml routes such requests to the /mcp
    # route whose response phase fails closed (failure_mode_allow: false)
    key: Any = (decision.outcome, grant.id if grant is not None else None, verdict.hides)
    run = _granted.get(key)
    if run is None:
        run = _OUTCOME[decision.outcome]
        if grant is not None:
            run += _entry("grant_id", grant.id)
        if verdict.hides:
            run += _HIDES
        _granted.keep(key, run)
    parts.append(run)
    if verdict.inflight is not None:
        parts.append(_fresh_entry("inflight", verdict.inflight))  # freed at the response's end
    method = request.method if request is not None else None
    # For the response phase (authz/envoy/extproc.py reads these): the JSON-RPC id as JSON
    # text (a Struct number is a double and would round large integer ids), and the quota
    # this call took, so that ext_proc can give it back if the upstream fails it.
    if request is not None and not request.is_notification and request.id is not None:
        parts.append(_fresh_entry("jsonrpc_id", _id_text(request.id)))
    key = (method, grant.policy if grant is not None else None)
    run = _called.get(key)
    if run is None:
        run = _entry("mcp_method", method) if method is not None else b""
        if grant is not None:
            run += _entry("policy", grant.policy)
        _called.keep(key, run)
    parts.append(run)
    reservation = decision.reservation
    if decision.allowed and reservation is not None and reservation.token:
        parts.append(_reservation(reservation))
    key = (decision.rule, request.tool if request is not None else None)
    run = _ruled.get(key)
    if run is None:
        rule, tool = key
        run = (_entry("rule", rule) if rule else b"") + (
            _entry("tool", tool) if tool is not None else b""
        )
        _ruled.keep(key, run)
    parts.append(run)
    return b"".join(parts)


_ok_pieces: dict[tuple[str, int, bool], tuple[bytes, bytes, bytes]] = {}


def _allowed(grant_id: str, id_size: int, fail_open: bool) -> tuple[bytes, bytes, bytes]:
    """An allowed answer up to its metadata, around its decision id (written twice: for the
    upstream and for the client): `head + id + middle + id + tail`, cached per grant, id
    length and fail-open mark."""
    pieces = _ok_pieces.get((grant_id, id_size, fail_open))
    if pieces is None:
        placeholder = " " * id_size
        upstream = _header_field(2, DECISION_HEADER, placeholder)
        client = _header_field(6, DECISION_HEADER, placeholder)
        ok = _grant_header(grant_id) + upstream + _REMOVED + client
        if fail_open:
            ok += _FAIL_OPEN
        whole = _STATUS_OK + wire.field(3, ok)
        # ok: grant, upstream (prefix, id, _OVERWRITE), _REMOVED, client (prefix, id,
        # _OVERWRITE), the fail-open option: the ids are found from the end
        second = len(whole) - (len(_FAIL_OPEN) if fail_open else 0) - len(_OVERWRITE) - id_size
        client_prefix = len(client) - id_size - len(_OVERWRITE)
        first = second - client_prefix - len(_REMOVED) - len(_OVERWRITE) - id_size
        head, middle, tail = (
            whole[:first],
            whole[first + id_size : second],
            whole[second + id_size :],
        )
        if len(_ok_pieces) >= _KEPT:
            _ok_pieces.clear()
        pieces = _ok_pieces[grant_id, id_size, fail_open] = (head, middle, tail)
    return pieces


def check_response_bytes(verdict: Verdict) -> bytes:
    """A Verdict as Envoy's CheckResponse, serialized (deterministically)."""
    decision = verdict.decision
    if decision.allowed:
        assert verdict.grant is not None
        decision_id = verdict.decision_id.encode()
        head, middle, tail = _allowed(verdict.grant.id, len(decision_id), verdict.fail_open)
        metadata = wire.field(4, _metadata(verdict))
        return b"".join((head, decision_id, middle, decision_id, tail, metadata))
    rendered = denial(verdict)
    code = (
        _GRPC_UNAUTHENTICATED if decision.kind in UNAUTHENTICATED_KINDS else _GRPC_PERMISSION_DENIED
    )
    status = wire.varint_field(1, code) + _text(2, decision.message)
    denied = (
        wire.field(1, wire.varint_field(1, rendered.status))
        + b"".join(_header_field(2, name, value) for name, value in rendered.headers)
        + _text(3, rendered.body)
    )
    return wire.field(1, status) + wire.field(2, denied) + wire.field(4, _metadata(verdict))


def check_response(verdict: Verdict) -> external_auth_pb2.CheckResponse:
    """A Verdict as Envoy's CheckResponse message (`check_response_bytes`, parsed)."""
    response: external_auth_pb2.CheckResponse = external_auth_pb2.CheckResponse.FromString(
        check_response_bytes(verdict)
    )
    return response


TRACE_METADATA = frozenset({"traceparent", "tracestate"})
"""The W3C trace context keys read from a check's gRPC call metadata."""


class AuthorizationService:
    """`envoy.service.auth.v3.Authorization/Check`: one check per request, answered with
    the CheckResponse's bytes (gRPC sends them as they are)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(self, request: external_auth_pb2.CheckRequest, context: Any) -> bytes:
        http = http_request_from_check(request)
        if self._authorizer.traces:
            # Envoy's own ext_authz span travels as call metadata: the decision's parent
            trace = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if key in TRACE_METADATA and isinstance(value, str)
            }
            if "traceparent" in trace:
                http = dataclasses.replace(http, trace_context=trace)
        verdict = await self._authorizer.check(http)
        return check_response_bytes(verdict)


def add_authorization_service(server: grpc.aio.Server, authorizer: Authorizer) -> None:
    """Serve ext_authz checks on `server` with `authorizer`: the generated servicer's method,
    with the response serializer left out, since `Check` returns bytes already."""
    service = AuthorizationService(authorizer)
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            service.Check,
            request_deserializer=external_auth_pb2.CheckRequest.FromString,
            response_serializer=None,
        )
    }
    # as the generated add_AuthorizationServicer_to_server registers them
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(AUTHZ_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(AUTHZ_SERVICE, handlers)
