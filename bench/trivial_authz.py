"""The floor of grpc-python on this box: an ext_authz Authorization servicer that answers
every Check with the same OK CheckResponse, built once, without looking at the request.

It runs the way `mcp-authz serve` runs its gRPC server (grpc.aio under asyncio.run, the same
server options), so the gap between the two is what the sidecar's own work costs. On SIGTERM
or SIGINT it prints `checks N` (the Checks it answered) so that the harness can verify that
every request it sent reached the servicer.

    .venv/bin/python bench/trivial_authz.py --grpc 127.0.0.1:9101
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from authz._pb.envoy.service.auth.v3 import (  # noqa: E402
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from authz._pb.google.rpc import status_pb2  # noqa: E402

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # as authz.config.settings.Settings.grpc_max_message_bytes

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
    if server.add_insecure_port(address) == 0:
        print(f"cannot bind {address}", file=sys.stderr)
        return 1
    await server.start()
    print(f"listening {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    print(f"checks {servicer.checks}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grpc", required=True, help="listen address HOST:PORT")
    return asyncio.run(serve(p.parse_args(argv).grpc))


if __name__ == "__main__":
    sys.exit(main())
