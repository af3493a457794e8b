"""The decision pipeline without gRPC: CheckRequest bytes in, CheckResponse bytes out.

It runs the harness's mix (the same policy, grant and CheckRequests Envoy would send)
through `AuthorizationService.Check` in one process, with the memory counter store and the
audit stream to /dev/null, and prints microseconds per decision, overall and per kind. It
isolates what mcp-authz's own code costs from what grpc-python and Envoy cost (see the
"sidecar alone" part of harness.py for the gRPC floor).

    .venv/bin/python bench/inprocess.py [--decisions 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from authz._pb.envoy.service.auth.v3 import external_auth_pb2  # noqa: E402
from authz.audit import configure_logging  # noqa: E402
from authz.config.source import ConfigSource  # noqa: E402
from authz.counters.memory import MemoryCounterStore  # noqa: E402
from authz.envoy.grpc_authz import AuthorizationService  # noqa: E402
from authz.metrics import Metrics  # noqa: E402
from authz.pipeline.gate import Authorizer  # noqa: E402
from bench.harness import MIX, check_request, write_config  # noqa: E402


async def _run(service: AuthorizationService, requests: list[bytes], n: int) -> float:
    """CPU seconds of this process for `n` decisions cycling through `requests` (parse,
    check, the response's bytes), the event loop turning once every 10 decisions (as it
    does between gRPC calls: the log writer writes then)."""
    started = time.process_time()
    for i in range(n):
        check = external_auth_pb2.CheckRequest.FromString(requests[i % len(requests)])
        await service.Check(check, None)  # the CheckResponse's bytes, as gRPC sends them
        if i % 10 == 9:
            await asyncio.sleep(0)
    return time.process_time() - started


def _service(root: Path) -> AuthorizationService:
    config = ConfigSource.open(write_config(root))
    return AuthorizationService(Authorizer(config, MemoryCounterStore(), metrics=Metrics(config)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mix-only", action="store_true", help="skip the per-kind figures")
    args = parser.parse_args()
    with open("/dev/null", "w") as sink, tempfile.TemporaryDirectory() as tmp:
        configure_logging("info", sink)
        # the mix in its shares: 10 requests per cycle, as the wrk script sends them
        cycle: list[bytes] = []
        per_kind: dict[str, bytes] = {}
        for n, (kind, share) in enumerate(MIX, start=1):
            raw = check_request(kind, n).SerializeToString()
            per_kind[kind] = raw
            cycle += [raw] * share
        service = _service(Path(tmp) / "mix")
        asyncio.run(_run(service, cycle, 2000))  # warm up
        mix = [asyncio.run(_run(service, cycle, args.decisions)) for _ in range(args.rounds)]
        print(f"mix: {statistics.median(mix) / args.decisions * 1e6:.1f} µs/decision")
        for kind, raw in {} if args.mix_only else per_kind.items():
            service = _service(Path(tmp) / kind)
            asyncio.run(_run(service, [raw], 1000))
            seconds = statistics.median(
                asyncio.run(_run(service, [raw], args.decisions // 4)) for _ in range(args.rounds)
            )
            print(f"  {kind:<12} {seconds / (args.decisions // 4) * 1e6:.1f} µs/decision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
