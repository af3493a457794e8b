"""OpenTelemetry traces: one span per decision, continuing the W3C `traceparent` Envoy sends.

Off unless configured (`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`: see
`authz.config.settings`). Off, nothing here is imported and the pipeline pays one `is None`
test per request; the OpenTelemetry SDK is an optional extra (`mcp-authz-sidecar[otel]`).

On, `Authorizer.check` opens a `mcp_authz.decide` span (kind SERVER: it answers Envoy's
check) whose parent is the `traceparent` (and `tracestate`) among the request's headers, as
the edge passed them (the CheckRequest's headers over gRPC, the forwarded headers over HTTP
ext_authz), and closes it with the decision's attributes: the OpenTelemetry semantic
conventions for MCP where they exist (`mcp.method.name`, `gen_ai.tool.name`,
`gen_ai.operation.name`, `mcp.session.id`, `jsonrpc.request.id`) and the sidecar's own under
`mcp_authz.*` (grant, decision, deny kind, rule, policy, decision id). Argument values,
tokens and headers other than the trace context never enter a span. Spans are exported in
batches over OTLP/HTTP (protobuf) by a background thread; a collector that is down costs
dropped spans, never a decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from authz.audit import rpc_id_text
from authz.model import Decision, FixedRule, Grant, McpRequest

__all__ = ["SPAN_NAME", "DecisionTracer", "otlp_tracer"]

SPAN_NAME: Final = "mcp_authz.decide"
_SCOPE: Final = "mcp_authz"

_propagator = TraceContextTextMapPropagator()


class DecisionTracer:
    """Opens and closes the span of one decision on a given `TracerProvider` (an OTLP
    exporter's in the sidecar, an in-memory one in tests)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(_SCOPE)

    def start(self, headers: Mapping[str, str], http_method: str) -> Span:
        """The decision's span, a child of the `traceparent` in `headers` (lower-case names)
        when it is valid, else the root of a new trace."""
        parent = _propagator.extract(headers)
        return self._tracer.start_span(
            SPAN_NAME,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": http_method},
        )

    def finish(
        self,
        span: Span,
        decision: Decision,
        decision_id: str,
        grant: Grant | None,
        request: McpRequest | None,
    ) -> str:
        """Record the decision on `span`, end it, and return its trace id (32 hex digits)
        for the audit line."""
        attributes: dict[str, str | int | bool] = {
            "mcp_authz.decision": decision.outcome.value,
            "mcp_authz.decision_id": decision_id,
        }
        if decision.rule is not None:
            attributes["mcp_authz.rule"] = decision.rule
        if decision.kind is not None:
            attributes["mcp_authz.deny_kind"] = decision.kind.value
        if grant is not None:
            attributes["mcp_authz.grant"] = grant.id
            attributes["mcp_authz.policy"] = grant.policy
        if request is not None:
            attributes["mcp.method.name"] = request.method
            if request.tool is not None:
                attributes["gen_ai.tool.name"] = request.tool
                attributes["gen_ai.operation.name"] = "execute_tool"
            if request.session_id is not None:
                attributes["mcp.session.id"] = request.session_id
            rpc_id = rpc_id_text(request.id)
            if rpc_id is not None:
                attributes["jsonrpc.request.id"] = rpc_id
        span.set_attributes(attributes)
        if decision.rule == FixedRule.ERROR:
            span.set_status(Status(StatusCode.ERROR, "the sidecar could not decide"))
        span.end()
        return trace.format_trace_id(span.get_span_context().trace_id)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter (at the sidecar's exit)."""
        self.provider.shutdown()


def otlp_tracer(traces_url: str, *, service_name: str = "mcp-authz") -> DecisionTracer:
    """A tracer exporting over OTLP/HTTP (protobuf) to `traces_url`, the collector's traces
    URL as it is (`http://collector:4318/v1/traces`; `authz.config.settings` builds it)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    return DecisionTracer(provider)
