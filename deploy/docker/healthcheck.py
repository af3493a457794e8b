"""Container health probe for the images' HEALTHCHECK (and compose's `healthcheck`).

  healthcheck.py grpc [HOST:PORT] [--service NAME]   grpc.health.v1 Check; SERVING -> exit 0
  healthcheck.py http URL                            GET URL; 2xx -> exit 0

`grpc` defaults to the port of MCP_AUTHZ_GRPC (the sidecar's gRPC address, default
0.0.0.0:9001), dialled on 127.0.0.1, and to the service the Envoy cluster checks,
envoy.service.auth.v3.Authorization. Any other outcome (NOT_SERVING, refused, timeout) exits 1
with one line on stderr, which `docker inspect` shows under .State.Health.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
DEFAULT_GRPC = "0.0.0.0:9001"


def grpc_target(address: str | None) -> str:
    """HOST:PORT to dial: a wildcard listen host (0.0.0.0, [::]) is dialled on loopback."""
    value = address or os.environ.get("MCP_AUTHZ_GRPC") or DEFAULT_GRPC
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def check_grpc(target: str, service: str, timeout: float) -> str | None:
    """None when `service` is SERVING at `target`, else why not."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"grpc {target} {service!r}: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return f"grpc {target} {service!r}: {name}"
    return None


def check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"GET {url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"GET {url}: {exc}"
    return None if 200 <= status < 300 else f"GET {url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=2.0)
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_parser = kinds.add_parser("grpc", help="grpc.health.v1 Check")
    grpc_parser.add_argument("address", nargs="?", help="HOST:PORT (default: MCP_AUTHZ_GRPC)")
    grpc_parser.add_argument("--service", default=AUTHZ_SERVICE, help='"" for the server')
    http_parser = kinds.add_parser("http", help="GET a URL, expect 2xx")
    http_parser.add_argument("url")
    args = parser.parse_args(argv)

    try:
        if args.kind == "grpc":
            problem = check_grpc(grpc_target(args.address), args.service, args.timeout)
        else:
            problem = check_http(args.url, args.timeout)
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
