"""Envoy ext_proc v3 edge: ProcessingRequest → response phase, its answers → ProcessingResponse.

The sibling of `grpc_authz.py` (ext_authz) with the same shape: Envoy's messages become domain
values here (`ResponseContext` from the ext_authz dynamic metadata, status, content type,
body chunks), and the response phase's answers become `ProcessingResponse`s. The decisions
are made in `authz/response/` (the inspector); give-back and audit in
`authz/pipeline/response.py`.

The contract with `deploy/envoy.yaml` (filter `envoy.filters.http.ext_proc`):

- request headers are SKIPped: the stream opens at the response headers, which carry the
  ext_authz metadata (`metadata_options.forwarding_namespaces.untyped`:
  `envoy.filters.http.ext_authz`, never a client header) written by
  `grpc_authz._metadata` (ext_authz over gRPC), or by `http_authz.decision_metadata` as the
  JSON text of the sidecar's answer header `x-mcp-authz-context` (over HTTP, where Envoy keys
  the metadata by header name and keeps values as strings):
  `decision_id`, `decision`, `grant_id`, `policy`, `mcp_method`, `tool`, `jsonrpc_id` (the
  request's JSON-RPC id as JSON text), `hides` (the grant's policy hides tools), `inflight`
  (the request's in-flight registry key) and, for a call that took quota, `reservation`
  (`token`, `entries` of `counter`, `scope`, `key`, `window`, `start`, `cost`); and Envoy's
  account of the response (`response_attributes`, under this filter's name in
  `attributes`): `response.code_details` and `response.flags`, the evidence for give-back;
- the answer to the headers either lets the body pass without the sidecar (the stream then
  ends), switches this response to STREAMED body mode (`mode_override`, which must be in
  the filter's `allowed_override_modes`; a body that may be rewritten loses its
  `content-length`, and Envoy frames it itself), or replaces the response with the
  sidecar's own (`immediate_response`: a body a grant that hides tools may not get unread);
- each body chunk is answered at once, in order: unchanged, replaced, or cleared (held by
  the sidecar and sent with a later chunk), so SSE events flow as they arrive; once the
  sidecar has seen what it needs it ends the stream and Envoy passes the rest of the body
  by itself (never for a grant that hides tools: every message is read);
- the quota of a call Envoy never delivered (or the server refused) is given back before
  the answer to the headers, so the client never sees the failure before its quota is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import structlog
from google.protobuf import json_format

from authz._pb.envoy.config.core.v3 import base_pb2
from authz._pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from authz._pb.envoy.service.ext_proc.v3 import (
    external_processor_pb2,
    external_processor_pb2_grpc,
)
from authz._pb.envoy.type.v3 import http_status_pb2
from authz.envoy.http_authz import CONTEXT_HEADER
from authz.model import RequestId, Reservation
from authz.pipeline.response import Responder
from authz.response.inspector import Plan, ResponseContext, ResponseInspector
from authz.response.jsonrpc import withheld_error

__all__ = [
    "EXT_PROC_SERVICE",
    "STREAMED_RESPONSE",
    "ExternalProcessorService",
    "add_processor_service",
    "body_response",
    "headers_response",
    "immediate_response",
    "response_attributes",
    "response_context",
]

log = structlog.get_logger("mcp_authz.extproc")

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
"""The key under which Envoy sends the filter's `response_attributes`."""

_Mode = processing_mode_pb2.ProcessingMode
STREAMED_RESPONSE = _Mode(
    request_header_mode=_Mode.SKIP,
    response_header_mode=_Mode.SEND,
    request_body_mode=_Mode.NONE,
    response_body_mode=_Mode.STREAMED,
    request_trailer_mode=_Mode.SKIP,
    response_trailer_mode=_Mode.SKIP,
)
"""The one mode override the sidecar asks for (listed in `allowed_override_modes`)."""

_pb = external_processor_pb2


# -- Envoy → domain ----------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _rpc_id(value: Any) -> RequestId:
    if not isinstance(value, str):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if isinstance(parsed, bool) or not isinstance(parsed, str | int):
        return None
    return parsed


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def _reservation(value: Any) -> Reservation | None:
    if not isinstance(value, Mapping):
        return None
    token = value.get("token")
    entries = value.get("entries")
    if not isinstance(token, str) or not token or not isinstance(entries, list):
        return None
    parsed = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            return None
        counter, scope, key = entry.get("counter"), entry.get("scope"), entry.get("key")
        if not (isinstance(counter, str) and isinstance(scope, str) and isinstance(key, str)):
            return None
        try:
            bucket = (counter, scope, key, _count(entry.get("window")))
            parsed.append((bucket, _count(entry.get("start")), _count(entry.get("cost"))))
        except ValueError:
            return None
    return Reservation(entries=tuple(parsed), token=token)


def _http_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The decision's fields from ext_authz over HTTP: the JSON object in the
    `x-mcp-authz-context` string (what the gRPC transport sends as the Struct itself)."""
    try:
        parsed = json.loads(fields[CONTEXT_HEADER])
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        log.warning("authz_context_unreadable")
        return {}
    return parsed


def response_context(metadata: base_pb2.Metadata) -> ResponseContext:
    """What ext_authz decided about this response's request, from the forwarded metadata:
    the sidecar's Struct (ext_authz over gRPC), or its JSON text under `x-mcp-authz-context`
    (over HTTP).

    Empty (no decision) when the namespace is absent: Envoy answered before the sidecar did.
    """
    if AUTHZ_NAMESPACE not in metadata.filter_metadata:
        return ResponseContext()
    fields = json_format.MessageToDict(metadata.filter_metadata[AUTHZ_NAMESPACE])
    if CONTEXT_HEADER in fields:
        fields = _http_fields(fields)
    reservation = _reservation(fields.get("reservation"))
    if "reservation" in fields and reservation is None:
        log.warning("reservation_unreadable", decision_id=fields.get("decision_id"))
    return ResponseContext(
        decision_id=_text(fields.get("decision_id")),
        decision=_text(fields.get("decision")),
        grant_id=_text(fields.get("grant_id")),
        policy=_text(fields.get("policy")),
        method=_text(fields.get("mcp_method")),
        tool=_text(fields.get("tool")),
        rpc_id=_rpc_id(fields.get("jsonrpc_id")),
        reservation=reservation,
        inflight=_text(fields.get("inflight")),
        hides=fields.get("hides") is True,
    )


def response_attributes(request: _pb.ProcessingRequest) -> tuple[str | None, int | None]:
    """Envoy's `response.code_details` and `response.flags` for this response; None for
    what Envoy did not send (an older configuration: then there is no evidence)."""
    if EXT_PROC_FILTER not in request.attributes:
        return None, None
    fields = request.attributes[EXT_PROC_FILTER].fields
    details: str | None = None
    flags: int | None = None
    if "response.code_details" in fields:
        value = fields["response.code_details"]
        if value.WhichOneof("kind") == "string_value":
            details = value.string_value
    if "response.flags" in fields:
        value = fields["response.flags"]
        number = value.number_value
        if value.WhichOneof("kind") == "number_value" and number >= 0 and number == int(number):
            flags = int(number)
    return details, flags


def _header_value(header: base_pb2.HeaderValue) -> str:
    if header.raw_value:
        return bytes(header.raw_value).decode("utf-8", errors="replace")
    return header.value


def response_headers(headers: _pb.HttpHeaders) -> tuple[int | None, str | None, str | None]:
    """(`:status`, `content-type`, `content-encoding`) of the response headers."""
    status: int | None = None
    content_type: str | None = None
    encoding: str | None = None
    for header in headers.headers.headers:
        name = header.key.lower()
        if name == ":status":
            value = _header_value(header)
            status = int(value) if value.isdigit() else None
        elif name == "content-type":
            content_type = _header_value(header)
        elif name == "content-encoding":
            encoding = _header_value(header)
    return status, content_type, encoding


# -- domain → Envoy ----------------------------------------------------------------------


def headers_response(plan: Plan) -> _pb.ProcessingResponse:
    """The answer to the response headers for `plan`."""
    common = _pb.CommonResponse()
    response = _pb.ProcessingResponse(response_headers=_pb.HeadersResponse(response=common))
    if plan is Plan.PASS:
        return response
    response.mode_override.CopyFrom(STREAMED_RESPONSE)
    if plan is Plan.FILTER:
        # The body may change length: Envoy frames it (chunked) instead.
        response.response_headers.response.header_mutation.remove_headers.append("content-length")
    return response


def immediate_response(status: int, body: str) -> _pb.ProcessingResponse:
    """The sidecar answers instead of the server: `status`, a JSON body."""
    reply = _pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=status),  # type: ignore[arg-type]
        body=body.encode("utf-8"),
        details="mcp_authz_withheld",
    )
    reply.headers.set_headers.append(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    )
    return _pb.ProcessingResponse(immediate_response=reply)


def body_response(replacement: bytes | None) -> _pb.ProcessingResponse:
    """The answer to one body chunk: unchanged (None), cleared (b"") or replaced."""
    common = _pb.CommonResponse()
    if replacement is not None:
        if replacement:
            common.body_mutation.body = replacement
        else:
            common.body_mutation.clear_body = True
    return _pb.ProcessingResponse(response_body=_pb.BodyResponse(response=common))


def _continue(kind: str | None) -> _pb.ProcessingResponse:
    """A no-op answer to a message the filter is not configured to send."""
    if kind == "request_headers":
        return _pb.ProcessingResponse(request_headers=_pb.HeadersResponse())
    if kind == "request_body":
        return _pb.ProcessingResponse(request_body=_pb.BodyResponse())
    if kind == "request_trailers":
        return _pb.ProcessingResponse(request_trailers=_pb.TrailersResponse())
    if kind == "response_trailers":
        return _pb.ProcessingResponse(response_trailers=_pb.TrailersResponse())
    if kind == "response_body":
        return body_response(None)
    return _pb.ProcessingResponse(response_headers=_pb.HeadersResponse())


# -- the gRPC service --------------------------------------------------------------------


class ExternalProcessorService(external_processor_pb2_grpc.ExternalProcessorServicer):
    """`envoy.service.ext_proc.v3.ExternalProcessor/Process`: one stream per response.

    An error inside the sidecar is logged and lets an observed body through unchanged; a
    filtered body (a grant that hides tools) ends with a JSON-RPC error instead. A sidecar
    Envoy cannot reach is Envoy's `failure_mode_allow`: false on the route that serves
    grants that hide tools (deploy/envoy.yaml), true elsewhere.
    """

    def __init__(self, responder: Responder) -> None:
        self._responder = responder

    async def Process(
        self,
        request_iterator: AsyncIterator[_pb.ProcessingRequest],
        context: Any,
    ) -> AsyncIterator[_pb.ProcessingResponse]:
        inspector: ResponseInspector | None = None
        settled = False
        started = time.perf_counter()
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("request")
                if kind == "response_headers" and inspector is None:
                    inspector, answer = self._headers(request)
                    if inspector.plan in (Plan.PASS, Plan.REFUSE):
                        # Give back before the client sees the failure: a retry finds it.
                        await self._responder.settle(inspector, time.perf_counter() - started)
                        settled = True
                        yield answer
                        return
                    yield answer
                elif kind == "response_body" and inspector is not None:
                    body = request.response_body
                    answer = body_response(self._body(inspector, body))
                    if body.end_of_stream or not inspector.needs_body:
                        # The end, or the answer was seen: ending the stream lets the rest
                        # of the body (a large result, say) pass without the sidecar.
                        inspector.stop()
                        await self._responder.settle(inspector, time.perf_counter() - started)
                        settled = True
                        yield answer
                        return
                    yield answer
                else:
                    yield _continue(kind)
        except Exception:
            log.exception("extproc_failed")
        finally:
            if inspector is not None and not settled:
                # The stream ended before the response did (reset, timeout, disconnect), or
                # was cancelled while settling: settle in the background (idempotent).
                inspector.abort()
                self._responder.finish(inspector, time.perf_counter() - started)

    def _headers(
        self, request: _pb.ProcessingRequest
    ) -> tuple[ResponseInspector, _pb.ProcessingResponse]:
        inspector = self._responder.open(response_context(request.metadata_context))
        status, content_type, encoding = response_headers(request.response_headers)
        details, flags = response_attributes(request)
        try:
            plan = inspector.headers(
                status,
                content_type,
                request.response_headers.end_of_stream,
                content_encoding=encoding,
                details=details,
                flags=flags,
            )
        except Exception:
            log.exception("extproc_headers_failed", decision_id=inspector.context.decision_id)
            if inspector.hides is None:
                inspector.give_up()
                plan = Plan.PASS
            else:  # a grant that hides tools gets no body the sidecar did not read
                why = "the gateway failed to read it"
                inspector.refusal = (502, withheld_error(inspector.context.rpc_id, why))
                inspector.plan = plan = Plan.REFUSE
        if plan is Plan.REFUSE and inspector.refusal is not None:
            return inspector, immediate_response(*inspector.refusal)
        return inspector, headers_response(plan)

    @staticmethod
    def _body(inspector: ResponseInspector, body: _pb.HttpBody) -> bytes | None:
        chunk = bytes(body.body)
        try:
            out = inspector.body(chunk, body.end_of_stream)
        except Exception:
            log.exception("extproc_body_failed", decision_id=inspector.context.decision_id)
            if inspector.plan is Plan.FILTER:
                return inspector.fail_closed()
            inspector.give_up()  # observing: the chunk passes unchanged
            return None
        if inspector.error is not None:  # a bug while reading; the bytes passed unchanged
            log.error(
                "response_read_failed",
                decision_id=inspector.context.decision_id,
                exc_info=inspector.error,
            )
            inspector.error = None
        return out


def add_processor_service(server: grpc.aio.Server, responder: Responder) -> None:
    """Serve ext_proc streams on `server` with `responder`."""
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(  # type: ignore[no-untyped-call]
        ExternalProcessorService(responder), server
    )
