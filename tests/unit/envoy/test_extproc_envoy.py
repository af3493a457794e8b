"""The response phase's fail mode, on the real Envoy 1.40 with deploy/envoy.yaml.

ext_proc fails open (`failure_mode_allow: true`, see docs/security.md) for grants that hide
nothing: a processor that is missing, too slow or erroring never blocks a response; it
passes as the upstream sent it. For a grant that hides tools (the sidecar's metadata says
`hides`) Envoy picks the other /mcp route, whose response phase fails closed: the same
failures fail the response, and the listing never reaches the client unread.
A stub gRPC server plays the sidecar (ext_authz allows, with the metadata of a tools/list
request) and a stub processor misbehaves in each way; a well-behaved stub shows the same
set-up does filter, so the fail-open cases are not vacuous.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz._pb.envoy.config.core.v3 import base_pb2
from authz._pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz._pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from authz._pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from authz._pb.google.rpc import status_pb2
from authz.devstack.envoy_config import render_envoy_config, write_envoy_config
from authz.devstack.stack import find_envoy, free_port
from authz.envoy.extproc import STREAMED_RESPONSE, body_response

LOOPBACK = "127.0.0.1"
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
LISTING = (
    b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"tools":'
    b'[{"name":"a"},{"name":"hidden"}]}}\r\n\r\n'
)


@dataclass
class Behaviour:
    mode: str = "ok"
    streams: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


HIDES_HEADER = "x-test-hides"
"""The stub sidecar's stand-in for a grant whose policy hides tools."""


class AllowingAuthz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc, unused-ignore]
    def Check(self, request: Any, context: Any) -> external_auth_pb2.CheckResponse:
        ok = external_auth_pb2.OkHttpResponse()
        # as the sidecar does on every allow: a request header changes, so Envoy picks the
        # route again (clear_route_cache) with this metadata
        ok.headers.append(
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-mcp-grant", value="g"))
        )
        response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0), ok_response=ok)
        metadata: dict[str, Any] = {
            "decision_id": "d",
            "decision": "allow",
            "mcp_method": "tools/list",
        }
        if HIDES_HEADER in request.attributes.request.http.headers:
            metadata["hides"] = True
        response.dynamic_metadata.update(metadata)
        return response


SLOW = 6.0
"""Seconds the `slow` stub takes to answer the response headers."""


class StubProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc, unused-ignore]
    """`ok` removes the tool `hidden` (a stand-in for the sidecar); the others misbehave."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    def Process(self, request_iterator: Iterator[pb.ProcessingRequest], context: Any) -> Any:
        mode = self.behaviour.mode
        with self.behaviour.lock:
            self.behaviour.streams += 1
        if mode == "unimplemented":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no ext_proc here")
        held = b""
        for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "response_headers":
                if mode == "slow":
                    time.sleep(SLOW)  # far past message_timeout (1 s)
                if mode == "error-headers":
                    context.abort(grpc.StatusCode.INTERNAL, "boom")
                answer = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
                answer.mode_override.CopyFrom(STREAMED_RESPONSE)
                answer.response_headers.response.header_mutation.remove_headers.append(
                    "content-length"
                )
                yield answer
            elif kind == "response_body":
                if mode == "error-body" and held:
                    context.abort(grpc.StatusCode.INTERNAL, "boom")
                held += request.response_body.body
                if not request.response_body.end_of_stream:
                    yield body_response(b"")
                    continue
                yield body_response(held.replace(b',{"name":"hidden"}', b""))
                return


def make_upstream() -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:  # http.server API
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (LISTING[:30], LISTING[30:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    return server


@dataclass
class Harness:
    envoy_port: int
    behaviour: Behaviour

    def post(self, *, hides: bool = False) -> tuple[int, bytes, float]:
        """(status, body, seconds); status 0 when the response was cut off (a reset)."""
        started = time.monotonic()
        conn = http.client.HTTPConnection(LOOPBACK, self.envoy_port, timeout=15)
        headers = {"content-type": "application/json"}
        if hides:
            headers[HIDES_HEADER] = "1"
        try:
            conn.request("POST", "/mcp", body=b"{}", headers=headers)
            response = conn.getresponse()
            try:
                return response.status, response.read(), time.monotonic() - started
            except http.client.IncompleteRead as cut:
                return 0, cut.partial, time.monotonic() - started
        finally:
            conn.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("extproc-envoy")
    behaviour = Behaviour()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(  # type: ignore[no-untyped-call, unused-ignore]
        AllowingAuthz(), server
    )
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(  # type: ignore[no-untyped-call, unused-ignore]
        StubProcessor(behaviour), server
    )
    health_servicer = health.HealthServicer()
    health_servicer.set(AUTHZ_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    grpc_port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    upstream = make_upstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    envoy_port, admin_port = free_port(), free_port()
    cfg = render_envoy_config(
        listen_host=LOOPBACK,
        listen_port=envoy_port,
        admin_port=admin_port,
        authz_host=LOOPBACK,
        authz_port=grpc_port,
        upstream_host=LOOPBACK,
        upstream_port=int(upstream.server_address[1]),
    )
    path = tmp / "envoy.json"
    write_envoy_config(cfg, path)
    log = (tmp / "envoy.log").open("wb")
    envoy = subprocess.Popen(
        [find_envoy(), "-c", str(path), "--base-id", str(envoy_port), "--log-level", "error"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        the_harness = Harness(envoy_port, behaviour)
        deadline = time.monotonic() + 20
        while True:
            try:
                if the_harness.post()[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or envoy.poll() is not None:
                pytest.fail(f"envoy not ready:\n{Path(tmp / 'envoy.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield the_harness
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()
        server.stop(grace=None).wait(timeout=5)
        upstream.shutdown()
        upstream.server_close()


def run(harness: Harness, mode: str, *, hides: bool = False) -> tuple[int, bytes, float]:
    harness.behaviour.mode = mode
    before = harness.behaviour.streams
    result = harness.post(hides=hides)
    assert harness.behaviour.streams == before + 1  # the processor was asked
    return result


def test_a_working_processor_rewrites_the_listing(harness: Harness) -> None:
    status, body, _ = run(harness, "ok")
    assert status == 200
    assert body == LISTING.replace(b',{"name":"hidden"}', b"")


@pytest.mark.parametrize("mode", ["unimplemented", "error-headers", "slow"])
def test_a_broken_processor_lets_the_response_through_unchanged(
    harness: Harness, mode: str
) -> None:
    status, body, seconds = run(harness, mode)
    assert (status, body) == (200, LISTING)
    if mode == "slow":
        # Envoy gave up after message_timeout (1 s), long before the stub answered
        assert 0.9 < seconds < SLOW - 1.0


def test_a_processor_that_fails_mid_body_does_not_fail_the_response(harness: Harness) -> None:
    status, body, _ = run(harness, "error-body")
    assert status == 200
    # The chunk the processor held when it failed is lost with it (the sidecar only ever
    # holds the SSE event in progress of a tools/list answer); the rest still comes, as sent.
    assert body == LISTING[30:]


@pytest.mark.parametrize("hides", [False, True])
def test_a_working_processor_filters_on_both_routes(harness: Harness, hides: bool) -> None:
    status, body, _ = run(harness, "ok", hides=hides)
    assert (status, body) == (200, LISTING.replace(b',{"name":"hidden"}', b""))


@pytest.mark.parametrize("mode", ["unimplemented", "error-headers", "slow", "error-body"])
def test_a_broken_processor_fails_the_response_of_a_grant_that_hides_tools(
    harness: Harness, mode: str
) -> None:
    status, body, seconds = run(harness, mode, hides=True)
    assert b'"hidden"' not in body  # never the unread listing
    if mode == "error-body":
        # cut off once the body started (a reset after the headers): no byte of it came
        assert (status, body) == (0, b"")
    else:  # Envoy's 500 (504 for the timeout), with a JSON-RPC error (a local reply mapper)
        assert status == (504 if mode == "slow" else 500)
        error = json.loads(body)["error"]
        assert error["message"].startswith("the policy sidecar could not check the answer")
    if mode == "slow":
        assert 0.9 < seconds < SLOW - 1.0
