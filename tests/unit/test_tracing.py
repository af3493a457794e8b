"""Tracing (authz/tracing.py): one span per decision through the real pipeline, a child of
the incoming W3C traceparent, recorded by the SDK's in-memory exporter and exported over
OTLP/HTTP to a real receiver in this process; the audit line names the trace."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authz.config.settings import Settings, SettingsError
from authz.pipeline.gate import Authorizer
from authz.pipeline.request import HttpRequest
from authz.server import build_tracer
from authz.tracing import SPAN_NAME, DecisionTracer, otlp_tracer
from tests.unit.calls import JSON_HEADERS, seed_authorizer_at, tool_call

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def _call(traceparent: str | None = None, *, token: str = "tok", rid: int = 1) -> HttpRequest:
    headers = {**JSON_HEADERS, "authorization": f"Bearer {token}", "mcp-session-id": "sess-9"}
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return HttpRequest("POST", "/mcp", headers, tool_call(rid=rid))


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(tmp_path: Path, exporter: InMemorySpanExporter) -> Authorizer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    authorizer = seed_authorizer_at(tmp_path)
    authorizer._tracer = DecisionTracer(provider)
    return authorizer


def _only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    exporter.clear()
    return span


async def test_a_span_per_decision_continues_the_incoming_traceparent(
    traced: Authorizer, exporter: InMemorySpanExporter
) -> None:
    with structlog.testing.capture_logs() as logs:
        verdict = await traced.check(_call(TRACEPARENT, rid=42))
    assert verdict.decision.allowed
    span = _only(exporter)
    assert span.name == SPAN_NAME and span.kind is SpanKind.SERVER
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT_ID and span.parent.is_remote
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "image.generate.gemini",
        "gen_ai.operation.name": "execute_tool",
        "mcp.session.id": "sess-9",
        "jsonrpc.request.id": "42",
        "mcp_authz.decision": "allow",
        "mcp_authz.decision_id": verdict.decision_id,
        "mcp_authz.grant": "g1",
        "mcp_authz.policy": "seed",
    }
    (event,) = [e for e in logs if e["event"] == "decision"]
    assert event["trace_id"] == TRACE_ID
    assert "x" not in {str(v) for v in (span.attributes or {}).values()}  # no argument value


async def test_denials_carry_kind_and_rule(
    traced: Authorizer, exporter: InMemorySpanExporter
) -> None:
    for rid in (1, 2):
        await traced.check(_call(TRACEPARENT, rid=rid))
    exporter.clear()
    limited = await traced.check(_call(TRACEPARENT, rid=3))
    assert not limited.decision.allowed
    attributes = dict(_only(exporter).attributes or {})
    assert attributes["mcp_authz.decision"] == "deny"
    assert attributes["mcp_authz.deny_kind"] == "rate_limited"
    assert attributes["mcp_authz.rule"] == limited.decision.rule

    await traced.check(_call(TRACEPARENT, token="nobody"))
    span = _only(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["mcp_authz.rule"] == "(auth)"
    assert "mcp_authz.grant" not in attributes and "mcp.method.name" not in attributes
    assert span.status.status_code is StatusCode.UNSET  # a denial is not an error


async def test_without_or_with_a_bad_traceparent_a_new_trace(
    traced: Authorizer, exporter: InMemorySpanExporter
) -> None:
    for header in (None, "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "junk"):
        with structlog.testing.capture_logs() as logs:
            await traced.check(_call(header))
        span = _only(exporter)
        assert span.parent is None and span.context is not None
        assert f"{span.context.trace_id:032x}" != TRACE_ID
        (event,) = [e for e in logs if e["event"] == "decision"]
        assert event["trace_id"] == f"{span.context.trace_id:032x}"


async def test_untraced_decisions_have_no_trace_id(tmp_path: Path) -> None:
    authorizer = seed_authorizer_at(tmp_path)
    with structlog.testing.capture_logs() as logs:
        await authorizer.check(_call(TRACEPARENT))
    (event,) = [e for e in logs if e["event"] == "decision"]
    assert "trace_id" not in event


@pytest.mark.processes
def test_off_the_sidecar_does_not_import_the_sdk() -> None:
    code = (
        "import sys, authz.server, authz.cli.commands, authz.pipeline.gate\n"
        "loaded = [m for m in sys.modules if m == 'authz.tracing' or m.startswith("
        "('opentelemetry.sdk', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _Collector:
    """A real OTLP/HTTP receiver: records the protobuf bodies POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.requests.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.arrived.set()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[_Collector]:
    with _Collector() as running:
        yield running


@pytest.mark.processes
async def test_spans_are_exported_over_otlp_http(tmp_path: Path, collector: _Collector) -> None:
    tracer = otlp_tracer(f"{collector.endpoint}/v1/traces", service_name="mcp-authz-test")
    authorizer = seed_authorizer_at(tmp_path)
    authorizer._tracer = tracer
    verdict = await authorizer.check(_call(TRACEPARENT, rid=5))
    tracer.shutdown()  # flushes the batch
    assert collector.arrived.wait(30)
    (path, headers, body) = collector.requests[0]
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    export = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "mcp-authz-test"
    (scope_spans,) = resource_spans.scope_spans
    (span,) = scope_spans.spans
    assert span.name == SPAN_NAME
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["mcp_authz.decision_id"] == verdict.decision_id
    assert attributes["gen_ai.tool.name"] == "image.generate.gemini"
    assert attributes["mcp_authz.grant"] == "g1"


_OTEL_ENV = (
    "MCP_AUTHZ_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
)


@pytest.mark.parametrize(
    ("flag", "env", "url"),
    [
        (None, {}, None),
        ("http://c:4318", {}, "http://c:4318/v1/traces"),
        (
            "http://c:4318/",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:1"},
            "http://c:4318/v1/traces",
        ),
        (None, {"MCP_AUTHZ_OTLP_ENDPOINT": "https://c/v1/traces"}, "https://c/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:4318"}, "http://o:4318/v1/traces"),
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:4318",
            },
            "http://t:4318/custom",
        ),
        ("http://c:4318", {"OTEL_SDK_DISABLED": "true"}, None),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://o", "OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_tracing_is_configured_by_flag_or_environment(
    monkeypatch: pytest.MonkeyPatch, flag: str | None, env: dict[str, str], url: str | None
) -> None:
    for name in _OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.build(config="/cfg", grpc=None, admin=None, otlp_endpoint=flag)
    assert settings.otlp_traces_url == url
    assert (build_tracer(settings) is None) == (url is None)


def test_a_bad_endpoint_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError, match="--otlp-endpoint"):
        Settings.build(config="/cfg", grpc=None, admin=None, otlp_endpoint="collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "authz-eu")
    settings = Settings.build(config="/cfg", grpc=None, admin=None)
    assert settings.service_name == "authz-eu"


@pytest.mark.processes
async def test_over_grpc_the_span_continues_envoys_check_span_from_call_metadata(
    traced: Authorizer, exporter: InMemorySpanExporter
) -> None:
    """Envoy sends its ext_authz span's context as gRPC call metadata, apart from the
    request's own headers (the client's trace): the decision's span is that span's child.
    A real gRPC server and client on loopback."""
    import grpc

    from authz._pb.envoy.service.auth.v3 import external_auth_pb2
    from authz.envoy.grpc_authz import AUTHZ_SERVICE, add_authorization_service

    envoy_span = "b7ad6b7169203331"
    server = grpc.aio.server()
    add_authorization_service(server, traced)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        check = external_auth_pb2.CheckRequest()
        http = check.attributes.request.http
        http.method, http.path = "POST", "/mcp"
        http.headers.update(
            {**JSON_HEADERS, "authorization": "Bearer tok", "traceparent": TRACEPARENT}
        )
        http.raw_body = tool_call()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                f"/{AUTHZ_SERVICE}/Check",
                request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
                response_deserializer=external_auth_pb2.CheckResponse.FromString,
            )
            envoy_context = f"00-{TRACE_ID}-{envoy_span}-01"
            await call(check, metadata=(("traceparent", envoy_context),))
            span = _only(exporter)
            assert span.parent is not None and f"{span.parent.span_id:016x}" == envoy_span
            # without call metadata, the request's own traceparent is the parent
            await call(check)
            span = _only(exporter)
            assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID
    finally:
        await server.stop(None)
