"""The decision pipeline without gRPC: CheckRequest bytes in, CheckResponse bytes out.

It runs the harness's mix (the same policy, grant and CheckRequests Envoy would send)
through `AuthorizationService.Check` in one process, with the memory counter store and the
audit stream to /dev/null, and prints microseconds per decision, overall and per kind. It
isolates what mcp-authz's own code costs from what grpc-python and Envoy cost (see the
"sidecar alone" part of harness.py for the gRPC floor).

Then what tool pinning costs (`--pinning-only` runs this part alone, `--no-pinning` skips
it), with a tool lock built in process from the ImageGen server's own `tools/list`:

- per decision, a `tools/call` of each of the four ImageGen tools through the same
  pipeline, under three configurations that differ only in pinning: no lock, a lock with
  `arguments: lax`, the lock with `arguments: strict`; for realistic arguments (prompt,
  size, returnBase64) and for every parameter each tool declares. Strict minus lax is what
  validating the arguments adds; lax minus no lock is what the lock itself adds.
  Configurations alternate within each round and the best round counts, so a busy box
  moves them together;
- the validator alone (`ArgumentSchema.violation`), per tool, and the same arguments
  validated whole by jsonschema (and by fastjsonschema, when it is installed) for scale;
- the response phase: `filter_listing` of the server's 4-tool `tools/list` answer with a
  `ListingFilter` whose `definitions` is a `DriftWatch`-backed check, against the same
  filter without it.

    .venv/bin/python bench/inprocess.py [--decisions 20000] [--rounds 3] [--pinning-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jsonschema.validators  # noqa: E402

from authz._pb.envoy.service.auth.v3 import external_auth_pb2  # noqa: E402
from authz.audit import configure_logging  # noqa: E402
from authz.config.grants import hash_token  # noqa: E402
from authz.config.source import ConfigSource  # noqa: E402
from authz.counters.memory import MemoryCounterStore  # noqa: E402
from authz.envoy.grpc_authz import AuthorizationService  # noqa: E402
from authz.metrics import Metrics  # noqa: E402
from authz.model import ListingFilter  # noqa: E402
from authz.pinning import DriftWatch, ToolLock, load_lock, lock_document, render_lock  # noqa: E402
from authz.pipeline.gate import Authorizer  # noqa: E402
from authz.response.listing import filter_listing  # noqa: E402
from bench.harness import META, MIX, TOKEN, check_request, write_config  # noqa: E402
from imagegen_upstream.server import build_server  # noqa: E402
from imagegen_upstream.settings import Settings  # noqa: E402


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
    config = ConfigSource.open(root)
    return AuthorizationService(Authorizer(config, MemoryCounterStore(), metrics=Metrics(config)))


# -- pinning -------------------------------------------------------------------------------

REALISTIC = {"prompt": "a red fox in fresh snow, morning light", "size": "1024x1024"}
"""What an agent sends most: a prompt and a size (plus returnBase64, added below)."""
EVERY_VALUE: dict[str, Any] = {
    "prompt": "a red fox in fresh snow, morning light, telephoto",
    "negativePrompt": "blurry, text, watermark",
    "width": 1024,
    "height": 768,
    "size": "1024x768",
    "aspectRatio": "4:3",
    "format": "png",
    "seed": 42,
    "quality": "high",
    "style": "natural",
    "background": "opaque",
    "model": "provider-default",
    "returnBase64": True,
    "filenameHint": "fox-in-snow",
}
"""A valid value for every parameter the ImageGen tools declare (each tool gets those of
its own schema)."""
COERCED = {"prompt": "a red fox", "width": "1024"}
"""A string for an integer, as the SDK would convert it: strict arguments deny it."""


def imagegen_tools() -> list[dict[str, Any]]:
    """The ImageGen server's `tools/list` elements, as its SDK serves them."""

    async def listed() -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as outputs:
            server = build_server(Settings(outputs=Path(outputs)))
            tools = await server.list_tools()
        return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]

    return asyncio.run(listed())


def _arguments(element: Mapping[str, Any], which: str) -> dict[str, Any]:
    declared = element["inputSchema"].get("properties", {})
    if which == "realistic":
        chosen = {k: v for k, v in REALISTIC.items() if k in declared}
        return {**chosen, "returnBase64": False}
    if which == "every":
        return {k: v for k, v in EVERY_VALUE.items() if k in declared}
    return dict(COERCED)


def _pinned_policy(arguments: str) -> dict[str, Any]:
    """The four tools allowed, one generous limit on all of them (as the harness's allowed
    call has), arguments checked as `arguments` says."""
    return {
        "version": "1",
        "description": "pinning benchmark",
        "default": "allow",
        "arguments": arguments,
        "all_tools": {
            "limits": [{"counter": "all_calls", "window": "minute", "max": 10**8, "scope": "grant"}]
        },
    }


def _pinned_config(root: Path, arguments: str, lock: str | None) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "bench.json").write_text(json.dumps(_pinned_policy(arguments)))
    grant = {"id": "bench", "label": "bench", "token_sha256": hash_token(TOKEN), "policy": "bench"}
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": [grant]}))
    if lock is not None:
        (root / "tools.lock.json").write_text(lock)
    return root


def _call(tool: str, arguments: Mapping[str, Any], i: int) -> bytes:
    """The CheckRequest of a `tools/call` of `tool` with `arguments`: the harness's allowed
    call with its body and `Mcp-Name` replaced."""
    check = check_request("call_allowed", i)
    message = {
        "jsonrpc": "2.0",
        "id": i,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    body = json.dumps(message, separators=(",", ":")).encode()
    http = check.attributes.request.http
    http.raw_body = body
    http.size = len(body)
    http.headers["content-length"] = str(len(body))
    http.headers["mcp-name"] = tool
    return check.SerializeToString()


def _outcomes(service: AuthorizationService, requests: list[bytes]) -> list[str]:
    """How each request is decided (checked before timing: a benchmark of denials by
    mistake measures nothing)."""

    async def decide() -> list[str]:
        out = []
        for raw in requests:
            response = await service.Check(external_auth_pb2.CheckRequest.FromString(raw), None)
            answer = external_auth_pb2.CheckResponse.FromString(response)
            out.append("allow" if answer.status.code == 0 else "deny")
        return out

    return asyncio.run(decide())


def _per_decision(
    services: Mapping[str, AuthorizationService], requests: list[bytes], n: int, rounds: int
) -> dict[str, float]:
    """Best µs per decision of each service over `rounds`, the services alternating."""
    best = {name: float("inf") for name in services}
    for service in services.values():
        asyncio.run(_run(service, requests, 1000))  # warm up
    for _ in range(rounds):
        for name, service in services.items():
            seconds = asyncio.run(_run(service, requests, n))
            best[name] = min(best[name], seconds / n * 1e6)
    return best


def _best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def pinning(decisions: int, rounds: int) -> None:
    tools = imagegen_tools()
    names = [t["name"] for t in tools]
    rendered = render_lock(lock_document(tools))
    lock = load_lock(rendered.encode())
    print(f"\npinning: {len(lock)} ImageGen tools pinned from the server's own tools/list")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        services = {
            "no lock": _service(_pinned_config(root / "none", "lax", None)),
            "lock, lax": _service(_pinned_config(root / "lax", "lax", rendered)),
            "lock, strict": _service(_pinned_config(root / "strict", "strict", rendered)),
        }
        n = max(decisions // 4, 1000)
        print(f"  per decision (tools/call of the 4 tools in turn; best of {rounds} rounds):")
        print(f"  {'arguments':<12} {'no lock':>8} {'lax':>8} {'strict':>8} {'strict-lax':>11}")
        for which in ("realistic", "every"):
            requests = [
                _call(t["name"], _arguments(t, which), i) for i, t in enumerate(tools, start=1)
            ]
            for name, service in services.items():
                if set(_outcomes(service, requests)) != {"allow"}:
                    raise SystemExit(f"pinning bench: {name} does not allow the {which} calls")
            best = _per_decision(services, requests, n, rounds)
            added = best["lock, strict"] - best["lock, lax"]
            print(
                f"  {which:<12} {best['no lock']:>8.1f} {best['lock, lax']:>8.1f} "
                f"{best['lock, strict']:>8.1f} {added:>+10.1f} µs"
            )
        wide = [t for t in tools if "width" in t["inputSchema"].get("properties", {})]
        denied = [_call(t["name"], _arguments(t, "coerced"), i) for i, t in enumerate(wide, 1)]
        strict = {"strict": services["lock, strict"]}
        if set(_outcomes(strict["strict"], denied)) != {"deny"}:
            raise SystemExit("pinning bench: strict arguments do not deny a coerced width")
        denial = _per_decision(strict, denied, n, rounds)["strict"]
        print(f"  a string width denied under strict ({len(wide)} tools in turn): {denial:.1f} µs")
    _validator(tools, lock)
    _listing(tools, lock, names)


def _validator(tools: list[dict[str, Any]], lock: ToolLock) -> None:
    print("  the validator alone, µs per call (best of 5):")
    header = "  tool                      args  violation()  jsonschema whole"
    try:
        import fastjsonschema  # type: ignore[import-untyped]
    except ImportError:
        fastjsonschema = None
        print("  (fastjsonschema not installed: its column is left out)")
    else:
        header += "  fastjsonschema"
    print(header)
    for element in tools:
        pinned = lock.get(element["name"])
        assert pinned is not None and pinned.arguments is not None
        schema = element["inputSchema"]
        whole = jsonschema.validators.validator_for(schema)(schema)
        fast = fastjsonschema.compile(schema, use_default=False) if fastjsonschema else None
        for which in ("realistic", "every", "coerced"):
            args = _arguments(element, which)
            if which == "coerced" and "width" not in schema.get("properties", {}):
                continue
            ours = _best_us(lambda: pinned.arguments.violation(args), 2000, 5)  # noqa: B023
            reference = _best_us(lambda: whole.is_valid(args), 1000, 5)  # noqa: B023
            line = f"  {element['name']:<25} {len(args):>4} {ours:>12.1f} {reference:>17.1f}"
            if fast is not None:
                line += f" {_best_us(lambda: _fast_ok(fast, args), 5000, 5):>15.1f}"  # noqa: B023
            print(line + ("  (denied)" if which == "coerced" else ""))


def _fast_ok(validate: Callable[[Any], Any], args: Any) -> bool:
    try:
        validate(args)
    except Exception:
        return False
    return True


def _listing(tools: list[dict[str, Any]], lock: ToolLock, names: list[str]) -> None:
    text = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    watch = DriftWatch(lock)

    def drifted(element: Mapping[str, Any]) -> bool:
        # the response phase's check (`Responder._definitions`) as it runs when nothing
        # drifted: nothing to report, nothing cut
        seen = watch.observe(element)
        return seen is None or seen.drifted

    plain = ListingFilter.tools(lambda name: False)
    checked = ListingFilter({"tools": plain.arrays["tools"]}, definitions=drifted)
    for listing in (plain, checked):
        out, removed, _ = filter_listing(text, listing)
        if out != text or removed:
            raise SystemExit("pinning bench: the listing lost a tool")
    without = _best_us(lambda: filter_listing(text, plain), 200, 5)
    with_check = _best_us(lambda: filter_listing(text, checked), 200, 5)
    print(
        f"  response phase, a {len(names)}-tool tools/list ({len(text):,} bytes) through "
        f"filter_listing: {without:.1f} µs without the lock's check, {with_check:.1f} µs with "
        f"it ({with_check - without:+.1f} µs per listing)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mix-only", action="store_true", help="skip the per-kind figures")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--pinning-only", action="store_true", help="only the pinning figures")
    parts.add_argument("--no-pinning", action="store_true", help="skip the pinning figures")
    args = parser.parse_args()
    with open("/dev/null", "w") as sink, tempfile.TemporaryDirectory() as tmp:
        configure_logging("info", sink)
        if not args.pinning_only:
            _decisions(Path(tmp), args)
        if not args.no_pinning:
            pinning(args.decisions, max(args.rounds, 5))
    return 0


def _decisions(tmp: Path, args: argparse.Namespace) -> None:
    # the mix in its shares: 10 requests per cycle, as the wrk script sends them
    cycle: list[bytes] = []
    per_kind: dict[str, bytes] = {}
    for n, (kind, share) in enumerate(MIX, start=1):
        raw = check_request(kind, n).SerializeToString()
        per_kind[kind] = raw
        cycle += [raw] * share
    service = _service(write_config(tmp / "mix"))
    asyncio.run(_run(service, cycle, 2000))  # warm up
    mix = [asyncio.run(_run(service, cycle, args.decisions)) for _ in range(args.rounds)]
    print(f"mix: {statistics.median(mix) / args.decisions * 1e6:.1f} µs/decision")
    for kind, raw in {} if args.mix_only else per_kind.items():
        service = _service(write_config(tmp / kind))
        asyncio.run(_run(service, [raw], 1000))
        seconds = statistics.median(
            asyncio.run(_run(service, [raw], args.decisions // 4)) for _ in range(args.rounds)
        )
        print(f"  {kind:<12} {seconds / (args.decisions // 4) * 1e6:.1f} µs/decision")


if __name__ == "__main__":
    sys.exit(main())
