"""Soak: a bounded loopback run of mixed traffic through the real Envoy + sidecar + upstream.

Starts its own stack (authz/devstack/stack.py) in a temporary directory and sends allowed, denied,
rate-limited, unauthenticated and malformed requests from N threads for --duration
seconds. Every --sample-interval seconds it samples the sidecar process (RSS from
/proc/PID/status, open fds from /proc/PID/fd) and the counter store's bucket count (from
/readyz). At the end it prints a table and a JSON summary with a growth verdict, and exits
0 only when the verdict passes.

    .venv/bin/python bench/soak.py --duration 300 --concurrency 8

Traffic: stateless-era (2026-07-28) JSON-RPC POSTs, so the upstream keeps no session
state. Rate limits are per second and per session (a client-chosen Mcp-Session-Id, rotated
every few requests), so windows turn over constantly and the store sees a steady stream of
new bucket keys whose windows end: the sweep must reclaim them. The allowed tool call is
`image.generate.openai` without an API key (the upstream runs it and answers `isError`
at once); `image.generate.gemini` (a real PNG from the offline endpoint) is rare and limited
to a few per minute per grant.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from authz.config.grants import hash_token  # noqa: E402
from authz.devstack import faults  # noqa: E402
from authz.devstack.faults import proc_sample  # noqa: E402
from authz.devstack.stack import LOOPBACK, Stack  # noqa: E402

OPENAI = "image.generate.openai"
GEMINI = "image.generate.gemini"
REPLICATE = "image.generate.replicate"
GOOGLE = "image.generate.google"
DENIED_TOOLS = (REPLICATE, GOOGLE)

POLICY = {
    "version": "1",
    "description": "soak: per-second session limits, per-minute grant limits",
    "default": "deny",
    "hide": [REPLICATE],
    "all_tools": {
        "limits": [{"counter": "all_per_grant", "window": "second", "max": 20, "scope": "grant"}]
    },
    "tools": {
        OPENAI: {
            "limits": [
                {"counter": "openai_session", "window": "second", "max": 3, "scope": "session"}
            ]
        },
        GEMINI: {
            "limits": [{"counter": "gemini_grant", "window": "minute", "max": 2, "scope": "grant"}]
        },
    },
}

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
DENIED = "[POLICY DENIED] "
ENVOY_STATS = {
    "ext_authz_ok": "http.mcp_ingress.ext_authz.ok",
    "ext_authz_denied": "http.mcp_ingress.ext_authz.denied",
    "ext_authz_error": "http.mcp_ingress.ext_authz.error",
    "upstream_rq_5xx": "cluster.imagegen_upstream.upstream_rq_5xx",
    "upstream_reset_by_server": (
        "cluster.imagegen_upstream.upstream_cx_destroy_remote_with_active_rq"
    ),
}
"""Envoy's own count of ext_authz answers and errors, and of upstream failures."""
BUCKETS = re.compile(r"\((\d+) buckets?")
SWEEP_INTERVAL = 60.0
"""MemoryCounterStore's default sweep interval, as the sidecar runs it (authz/server.py)."""
LONGEST_WINDOW = 60.0
"""The longest window in POLICY (gemini_grant: a minute)."""

# (kind, weight): what one request of the mix is
MIX = [
    ("list", 30),
    ("allowed_call", 40),
    ("denied_call", 15),
    ("unauthenticated", 5),
    ("malformed", 5),
    ("gemini", 1),
]
EXPECTED = {
    "list": {"allowed"},
    "allowed_call": {"allowed", "rate_limited"},
    "denied_call": {"denied"},
    "unauthenticated": {"unauthenticated"},
    "malformed": {"bad_request"},
    "gemini": {"allowed", "rate_limited"},
}


def token(i: int) -> str:
    return f"soak-token-{i}"


def write_config(root: Path, grants: int) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "soak.json").write_text(json.dumps(POLICY, indent=2))
    entries = [
        {
            "id": f"g{i}",
            "label": f"soak {i}",
            "token_sha256": hash_token(token(i)),
            "policy": "soak",
        }
        for i in range(grants)
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": entries}))
    return root


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    session_last_reserved: dict[str, float] = field(default_factory=dict)
    """Session key -> monotonic time of its last allowed (quota-taking) call."""

    def reserved(self, session: str) -> None:
        with self.lock:
            self.session_last_reserved[session] = time.monotonic()

    def live_session_keys(self, horizon: float) -> int:
        """Session keys with quota taken in the last `horizon` seconds."""
        since = time.monotonic() - horizon
        with self.lock:
            return sum(1 for t in self.session_last_reserved.values() if t >= since)

    def add(self, kind: str, outcome: str, detail: str) -> None:
        with self.lock:
            self.requests += 1
            self.outcomes[outcome] += 1
            if outcome not in EXPECTED[kind]:
                key = f"{kind}->{outcome}"
                self.unexpected[key] += 1
                self.examples.setdefault(key, detail[:300])


def classify(status: int, headers: http.client.HTTPMessage, body: bytes) -> tuple[str, str]:
    if status == 401:
        return "unauthenticated", ""
    if status == 400:
        return "bad_request", ""
    if status >= 500:
        return "http_5xx", f"{status} {body[:200]!r}"
    if status != 200:
        return f"http_{status}", body[:200].decode(errors="replace")
    try:
        reply = json.loads(body)
        result = reply["result"]
    except (ValueError, KeyError, TypeError):
        return "other", body[:200].decode(errors="replace")
    text = "".join(part.get("text", "") for part in result.get("content") or [])
    if text.startswith(DENIED):
        return ("rate_limited" if headers.get("retry-after") else "denied"), text
    return "allowed", text


class Worker(threading.Thread):
    """One keep-alive client connection sending the mix until the deadline (or max count)."""

    def __init__(
        self, port: int, grants: int, deadline: float, tally: Tally, seed: int, max_requests: int
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.grants = grants
        self.deadline = deadline
        self.tally = tally
        self.rng = random.Random(seed)
        self.max_requests = max_requests
        self.conn: http.client.HTTPConnection | None = None
        self.kinds = [kind for kind, _ in MIX]
        self.weights = [weight for _, weight in MIX]

    def run(self) -> None:
        session = uuid.uuid4().hex
        grant = self.rng.randrange(self.grants)
        for i in range(self.max_requests):
            if time.monotonic() >= self.deadline:
                break
            if i % 12 == 0:  # a new session (and grant): new session-scoped bucket keys
                session, grant = uuid.uuid4().hex, self.rng.randrange(self.grants)
            kind = self.rng.choices(self.kinds, self.weights)[0]
            body, headers = self.request(kind, i, grant, session)
            try:
                status, reply_headers, reply = self.post(body, headers)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                self.tally.add(kind, "transport_error", repr(exc))
                time.sleep(0.05)
                continue
            outcome, detail = classify(status, reply_headers, reply)
            if kind == "allowed_call" and outcome == "allowed":
                self.tally.reserved(f"{grant}/{session}")
            self.tally.add(kind, outcome, detail)
        self.close()

    def request(self, kind: str, i: int, grant: int, session: str) -> tuple[bytes, dict[str, str]]:
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token(grant)}",
            "mcp-protocol-version": "2026-07-28",
            "mcp-session-id": session,
        }
        if kind == "list":
            headers["mcp-method"] = "tools/list"
            message: dict[str, Any] = {"method": "tools/list", "params": {"_meta": META}}
        elif kind == "malformed":
            return b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}', headers
        else:
            tool = {"allowed_call": OPENAI, "gemini": GEMINI, "unauthenticated": OPENAI}.get(
                kind, DENIED_TOOLS[i % 2]
            )
            if kind == "unauthenticated":
                headers["authorization"] = f"Bearer not-a-soak-token-{i}"
            headers["mcp-method"] = "tools/call"
            headers["mcp-name"] = tool
            message = {
                "method": "tools/call",
                "params": {"name": tool, "arguments": {"prompt": f"soak {i}"}, "_meta": META},
            }
        body = json.dumps({"jsonrpc": "2.0", "id": i, **message}).encode()
        return body, headers

    def post(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        self.conn.request("POST", "/mcp", body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.getheader("connection", "").lower() == "close":
            self.close()
        return response.status, response.headers, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    threads: int
    buckets: int
    requests: int
    bucket_bound: int
    """The most buckets the store may hold now if expired ones are reclaimed: 2 grant-keyed
    counters per grant, plus every session key that took quota within one sweep interval
    plus the longest window (plus slack for clocks)."""


def bucket_bound(tally: Tally, grants: int) -> int:
    return 2 * grants + tally.live_session_keys(SWEEP_INTERVAL + LONGEST_WINDOW + 5)


def bucket_count(stack: Stack) -> int:
    match = BUCKETS.search(str(stack.readiness().get("counters", "")))
    return int(match.group(1)) if match else -1


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60


def verdict(samples: list[Sample], total_keys: int, args: argparse.Namespace) -> dict[str, Any]:
    half = samples[len(samples) // 2 :]
    first = samples[: len(samples) // 2] or samples[:1]
    rss_slope = slope_per_min([(s.t, s.rss_kb / 1024) for s in half])
    rss_rise = (half[-1].rss_kb - half[0].rss_kb) / 1024
    fd_rise = max(s.fds for s in half) - half[0].fds
    max_buckets_first = max(s.buckets for s in first)
    max_buckets_second = max(s.buckets for s in half)
    drops = sum(1 for a, b in itertools.pairwise(samples) if b.buckets < a.buckets)
    over_bound = [s.t for s in samples if s.buckets > s.bucket_bound or s.buckets < 0]
    checks = {
        # RSS flat in the second half: a small slope, or a rise within allocator noise
        "rss_flat": rss_slope <= args.max_rss_slope or rss_rise <= args.rss_noise_mib,
        "fds_flat": fd_rise <= args.max_fd_rise,
        # the store never holds more than the keys that can still be live (Sample.bucket_bound)
        "buckets_bounded": not over_bound,
        # expired buckets were dropped: the sweep runs every 60 s of traffic, so only a run
        # longer than that can see it (shorter runs report null); more keys were created
        # over the run than the store ends with
        "buckets_reclaimed": (
            drops > 0 and samples[-1].buckets < total_keys
            if samples[-1].t >= SWEEP_INTERVAL + 15
            else None
        ),
    }
    return {
        "pass": all(v is not False for v in checks.values()),
        "checks": checks,
        "rss_slope_mib_per_min_second_half": round(rss_slope, 3),
        "rss_rise_mib_second_half": round(rss_rise, 2),
        "fd_rise_second_half": fd_rise,
        "max_buckets_first_half": max_buckets_first,
        "max_buckets_second_half": max_buckets_second,
        "bucket_drops_observed": drops,
        "bucket_keys_created": total_keys,
        "samples_over_bucket_bound": over_bound,
        "thresholds": {
            "max_rss_slope_mib_per_min": args.max_rss_slope,
            "rss_noise_mib": args.rss_noise_mib,
            "max_fd_rise": args.max_fd_rise,
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mcp-authz-soak-"))
    record = workdir / "executed.jsonl"
    record.touch()
    stack = Stack(
        config_dir=write_config(workdir / "config", args.grants),
        outputs_dir=workdir / "outputs",
        workdir=workdir / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        reload_interval=1.0,
    )
    tally = Tally()
    samples: list[Sample] = []
    try:
        stack.start()
        sidecar_pid = faults.pid(stack, "sidecar")
        neighbours = {name: faults.sample(stack, name).rss_kb for name in ("envoy", "upstream")}
        load_start = os.getloadavg()
        started = time.monotonic()
        deadline = started + args.duration
        workers = [
            Worker(stack.ports.envoy, args.grants, deadline, tally, seed, args.max_requests)
            for seed in range(args.concurrency)
        ]
        for worker in workers:
            worker.start()
        print(
            f"{'t(s)':>6} {'rss(MiB)':>9} {'fds':>5} {'thr':>4} {'buckets':>8} "
            f"{'bound':>7} {'requests':>9} {'req/s':>7}",
            flush=True,
        )
        max_samples = int(args.duration / args.sample_interval) + 3
        last_requests, last_t = 0, 0.0
        for _ in range(max_samples):  # bounded by count and by time
            now = time.monotonic() - started
            proc = proc_sample(sidecar_pid)
            sample = Sample(
                t=round(now, 1),
                rss_kb=proc.rss_kb,
                fds=proc.fds,
                threads=proc.threads,
                buckets=bucket_count(stack),
                requests=tally.requests,
                bucket_bound=bucket_bound(tally, args.grants),
            )
            samples.append(sample)
            rate = (sample.requests - last_requests) / max(now - last_t, 1e-9)
            last_requests, last_t = sample.requests, now
            print(
                f"{sample.t:>6.0f} {sample.rss_kb / 1024:>9.1f} {sample.fds:>5} "
                f"{sample.threads:>4} {sample.buckets:>8} {sample.bucket_bound:>7} "
                f"{sample.requests:>9} {rate:>7.0f}",
                flush=True,
            )
            if time.monotonic() >= deadline:
                break
            time.sleep(min(args.sample_interval, max(0.0, deadline - time.monotonic())))
        for worker in workers:
            worker.join(15)
        elapsed = time.monotonic() - started
        final = proc_sample(sidecar_pid)
        samples.append(
            Sample(
                round(elapsed, 1),
                final.rss_kb,
                final.fds,
                final.threads,
                bucket_count(stack),
                tally.requests,
                bucket_bound(tally, args.grants),
            )
        )
        ran = Counter(
            json.loads(line)["tool"] for line in record.read_text().splitlines() if line.strip()
        )
        sidecar_alive = stack.procs["sidecar"].popen.poll() is None
        neighbours_end = {name: faults.sample(stack, name).rss_kb for name in ("envoy", "upstream")}
        stats = faults.envoy_stats(
            stack, r"^(http\.mcp_ingress\.ext_authz|cluster\.imagegen_upstream)\."
        )
        envoy = {short: stats.get(name, 0) for short, name in ENVOY_STATS.items()}
        load_end = os.getloadavg()
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    total_keys = 2 * args.grants + len(tally.session_last_reserved)
    result = verdict(samples, total_keys, args)
    denied_ran = sum(ran[tool] for tool in DENIED_TOOLS)
    clean = not tally.unexpected and denied_ran == 0 and sidecar_alive
    result["checks"]["denied_never_executed"] = denied_ran == 0
    result["checks"]["all_responses_expected"] = not tally.unexpected
    result["checks"]["sidecar_alive"] = sidecar_alive
    result["pass"] = result["pass"] and clean
    rss = [s.rss_kb for s in samples]
    fds = [s.fds for s in samples]
    return {
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "grants": args.grants,
        "requests": tally.requests,
        "req_per_s": round(tally.requests / elapsed, 1),
        "outcomes": dict(tally.outcomes.most_common()),
        "unexpected": dict(tally.unexpected),
        "unexpected_examples": tally.examples,
        "upstream_executions": dict(ran),
        "sidecar": {
            "rss_mib": {
                "start": round(rss[0] / 1024, 1),
                "end": round(rss[-1] / 1024, 1),
                "max": round(max(rss) / 1024, 1),
            },
            "fds": {"start": fds[0], "end": fds[-1], "max": max(fds)},
            "buckets": {
                "start": samples[0].buckets,
                "end": samples[-1].buckets,
                "max": max(s.buckets for s in samples),
            },
        },
        "envoy_stats": envoy,
        "others_rss_mib": {
            name: {"start": round(neighbours[name] / 1024, 1), "end": round(kb / 1024, 1)}
            for name, kb in neighbours_end.items()
        },
        "loadavg_1m": {"start": load_start[0], "end": load_end[0]},
        "cpus": os.cpu_count(),
        "verdict": result,
        "samples": [s.__dict__ for s in samples],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--grants", type=int, default=64, help="distinct grants (default 64)")
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="per-thread cap (default 1e6)"
    )
    parser.add_argument("--max-rss-slope", type=float, default=1.0, help="MiB/min (default 1)")
    parser.add_argument(
        "--rss-noise-mib", type=float, default=4.0, help="RSS rise always accepted (default 4)"
    )
    parser.add_argument("--max-fd-rise", type=int, default=16, help="fds (default 16)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON summary here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency <= 0 or args.sample_interval <= 0:
        parser.error("--duration, --concurrency and --sample-interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    text = json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2))
    verdict_ = summary["verdict"]
    print(f"verdict: {'PASS' if verdict_['pass'] else 'FAIL'} {verdict_['checks']}")
    return 0 if verdict_["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
