"""The floors of each ext_authz transport on this box: servers that allow everything without
looking at the request.

- `--grpc`: an Authorization servicer that answers every Check with the same OK
  CheckResponse, built once. It runs the way `mcp-authz serve` runs its gRPC server
  (grpc.aio under asyncio.run, the same server options), with the gRPC health service
  that Envoy's health check of the cluster asks.
- `--http`: an HTTP/1.1 server for Envoy's `http_service` that answers every request with
  `200` and no body, on kept-alive connections. It runs the way `mcp-authz serve
  --http-authz` does (an asyncio `Protocol` on `httptools`, one event loop).

The gap between a floor and the sidecar on the same transport is what the sidecar's own
work costs. On SIGTERM or SIGINT it prints `checks N` (the Checks, or the requests under the
check prefix, it answered) so that the harness can verify that every request it sent
reached it.

    .venv/bin/python bench/trivial_authz.py --grpc 127.0.0.1:9101
    .venv/bin/python bench/trivial_authz.py --http 127.0.0.1:9103
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import httptools
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from authz._pb.envoy.service.auth.v3 import (  # noqa: E402
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from authz._pb.google.rpc import status_pb2  # noqa: E402

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # as authz.config.settings.Settings.grpc_max_message_bytes
CHECK_PREFIX = b"/check"  # as authz.envoy.http_authz.CHECK_PREFIX (Envoy's path_prefix)
ALLOWED = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse()
)


class TrivialAuthorization(external_auth_pb2_grpc.AuthorizationServicer):
    """Answers OK to everything and counts the Checks."""

    def __init__(self) -> None:
        self.checks = 0

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        self.checks += 1
        return OK


class TrivialHttpAuthz(asyncio.Protocol):
    """One kept-alive connection: every complete request is answered 200 at once, in order.
    `counter[0]` counts the requests under the check prefix (not the health checks)."""

    def __init__(self, counter: list[int]) -> None:
        self._counter = counter
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._check = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._check = url.startswith(CHECK_PREFIX)

    def on_message_complete(self) -> None:
        if self._check:
            self._counter[0] += 1
        assert self._transport is not None
        self._transport.write(ALLOWED)


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_http(address: str) -> int:
    host, _, port = address.rpartition(":")
    counter = [0]
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: TrivialHttpAuthz(counter), host, int(port), reuse_address=True, backlog=1024
        )
    except OSError as exc:
        print(f"cannot bind {address}: {exc}", file=sys.stderr)
        return 1
    print(f"listening {address}", flush=True)
    await _until_stopped()
    server.close()
    print(f"checks {counter[0]}", flush=True)
    return 0


async def serve(address: str) -> int:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = TrivialAuthorization()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health = HealthServicer()  # Envoy's active health check of the cluster, as the sidecar's
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    if server.add_insecure_port(address) == 0:
        print(f"cannot bind {address}", file=sys.stderr)
        return 1
    await server.start()
    print(f"listening {address}", flush=True)
    await _until_stopped()
    await server.stop(1.0)
    print(f"checks {servicer.checks}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    transport = p.add_mutually_exclusive_group(required=True)
    transport.add_argument("--grpc", help="serve ext_authz over gRPC on HOST:PORT")
    transport.add_argument("--http", help="serve ext_authz over HTTP/1.1 on HOST:PORT")
    args = p.parse_args(argv)
    if args.http:
        return asyncio.run(serve_http(args.http))
    return asyncio.run(serve(args.grpc))


if __name__ == "__main__":
    sys.exit(main())
