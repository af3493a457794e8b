"""Decision-hop benchmark: what the policy check costs in front of an instant upstream.

One run compares, in the same order and for several rounds, five setups behind the real
Envoy (`.venv/bin/envoy`), each with a `direct_response` on the /mcp route so that the
upstream costs nothing and only the gateway is measured:

1. plain Envoy (router only);
2. Envoy + native `envoy.filters.http.mcp` + RBAC (in-proxy C++ reference);
3. Envoy + the sidecar (`mcp-authz serve`, memory counters), ext_authz as in deploy/envoy.yaml;
4. the same with Redis counters (a private `redis-server` on a free loopback port);
5. the same with 2 sidecar processes (two endpoints in the `mcp_authz` cluster).

Load comes from `wrk --latency` with a Lua script posting an MCP mix. The sidecar's CPU per
request comes from /proc/PID/stat (utime + stime) deltas around each wrk run.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/harness.py --rounds 2 --duration 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from authz.deploy import render_envoy_config, write_envoy_config  # noqa: E402
from authz.grants import hash_token  # noqa: E402
from authz.stack import LOOPBACK, find_envoy, free_port  # noqa: E402

TOKEN = "bench-harness-token"
ALLOWED = "image.generate.openai"
TIGHT = "image.generate.gemini"
DENIED = "image.generate.google"
HIDDEN = "image.generate.replicate"
POLICY = {
    "version": "1",
    "description": "decision-hop benchmark",
    "default": "deny",
    "hide": [HIDDEN],
    "all_tools": {
        "limits": [{"counter": "all_calls", "window": "minute", "max": 100000000, "scope": "grant"}]
    },
    "tools": {
        ALLOWED: {
            "limits": [
                {"counter": "openai", "window": "minute", "max": 100000000, "scope": "grant"}
            ]
        },
        # tight: after 5 a minute every call of this tool is rate-limited
        TIGHT: {"limits": [{"counter": "gemini", "window": "minute", "max": 5, "scope": "grant"}]},
    },
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
DIRECT_BODY = '{"jsonrpc":"2.0","id":1,"result":{}}'

# (kind, weight): one cycle of 10 requests per wrk connection
MIX = [
    ("call_allowed", 4),
    ("call_denied", 2),
    ("call_rate_limited", 2),
    ("tools_list", 1),
    ("notification", 1),
]

SETUPS = {
    "plain": "1 plain Envoy",
    "native": "2 Envoy + mcp filter + RBAC",
    "sidecar": "3 Envoy + sidecar (memory)",
    "redis": "4 Envoy + sidecar (Redis)",
    "sidecar2": "5 Envoy + 2 sidecars",
}


def request_for(kind: str, i: int) -> tuple[dict[str, str], str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {TOKEN}",
        "Mcp-Protocol-Version": "2026-07-28",
    }
    if kind == "tools_list":
        headers["Mcp-Method"] = "tools/list"
        msg: dict[str, Any] = {"id": i, "method": "tools/list", "params": {"_meta": META}}
    elif kind == "notification":
        headers["Mcp-Method"] = "notifications/initialized"
        msg = {"method": "notifications/initialized", "params": {"_meta": META}}
    else:
        tool = {"call_allowed": ALLOWED, "call_denied": DENIED, "call_rate_limited": TIGHT}[kind]
        headers["Mcp-Method"] = "tools/call"
        headers["Mcp-Name"] = tool
        msg = {
            "id": i,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {"prompt": f"bench {i}"}, "_meta": META},
        }
    return headers, json.dumps({"jsonrpc": "2.0", **msg}, separators=(",", ":"))


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_lua(path: Path) -> None:
    entries = []
    i = 1
    for kind, weight in MIX:
        for _ in range(weight):
            headers, body = request_for(kind, i)
            hdrs = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items())
            entries.append(f'  wrk.format("POST", "/mcp", {{{hdrs}}}, {lua_string(body)}),')
            i += 1
    # interleave so consecutive requests differ
    order = [0, 4, 1, 6, 2, 8, 5, 3, 7, 9]
    lua = "\n".join(
        [
            # built in init(): at load time wrk has not set the Host header yet
            "local reqs",
            "local n = 0",
            "init = function(args)",
            "  reqs = {",
            *["  " + entries[k] for k in order],
            "  }",
            "end",
            "request = function()",
            "  n = n + 1",
            "  return reqs[(n % #reqs) + 1]",
            "end",
            "",
        ]
    )
    path.write_text(lua)


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "bench.json").write_text(json.dumps(POLICY, indent=2))
    grant = {"id": "bench", "label": "bench", "token_sha256": hash_token(TOKEN), "policy": "bench"}
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": [grant]}))
    return root


# -- Envoy configurations ------------------------------------------------------------------


def direct_response() -> dict[str, Any]:
    return {"status": 200, "body": {"inline_string": DIRECT_BODY}}


def plain_config(port: int, admin: int, extra_filters: list[dict[str, Any]]) -> dict[str, Any]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mcp_ingress",
        "codec_type": "AUTO",
        "http_filters": [*extra_filters, router],
        "route_config": {
            "name": "r",
            "virtual_hosts": [
                {
                    "name": "mcp",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"path": "/mcp"},
                            "direct_response": direct_response(),
                            "response_headers_to_add": [
                                {
                                    "header": {"key": "content-type", "value": "application/json"},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                }
                            ],
                        }
                    ],
                }
            ],
        },
    }
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "mcp_ingress",
                    "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def native_filters() -> list[dict[str, Any]]:
    """The native MCP filter parses the body; RBAC denies the one tool the policy denies
    (and the hidden one) and any request without the grant's bearer token."""
    mcp_ns = "envoy.filters.http.mcp"

    def tool_is(name: str) -> dict[str, Any]:
        return {
            "metadata": {
                "filter": mcp_ns,
                "path": [{"key": "params"}, {"key": "name"}],
                "value": {"string_match": {"exact": name}},
            }
        }

    return [
        {
            "name": mcp_ns,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp"
            },
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {
                    "action": "DENY",
                    "policies": {
                        "denied-tools": {
                            "permissions": [
                                {"or_rules": {"rules": [tool_is(DENIED), tool_is(HIDDEN)]}}
                            ],
                            "principals": [{"any": True}],
                        },
                        "no-grant": {
                            "permissions": [{"any": True}],
                            "principals": [
                                {
                                    "not_id": {
                                        "header": {
                                            "name": "authorization",
                                            "string_match": {"exact": f"Bearer {TOKEN}"},
                                        }
                                    }
                                }
                            ],
                        },
                    },
                },
            },
        },
    ]


def sidecar_config(port: int, admin: int, grpc_ports: list[int]) -> dict[str, Any]:
    """deploy/envoy.yaml rendered for loopback, with the /mcp route answered by Envoy itself,
    ext_proc dropped (no upstream response to process) and the access log dropped (the
    plain setup has none; this measures the decision hop, not logging)."""
    cfg = render_envoy_config(
        listen_host=LOOPBACK,
        listen_port=port,
        admin_port=admin,
        authz_host=LOOPBACK,
        authz_port=grpc_ports[0],
        upstream_host=LOOPBACK,
        upstream_port=free_port(),
        extra_authz_ports=grpc_ports[1:],
    )
    listener = cfg["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)
    hcm["http_filters"] = [
        f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"
    ]
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if route["match"].get("path") == "/mcp":
                route.pop("route", None)
                route.pop("typed_per_filter_config", None)
                route.pop("request_headers_to_remove", None)
                route["direct_response"] = direct_response()
    return cfg


# -- processes ----------------------------------------------------------------------------


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def http_status(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return -1


def wait_until(what: str, probe: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


STATS = re.compile(
    r"^http\.mcp_ingress\.(ext_authz\.(?:ok|denied|error)|rbac\.(?:allowed|denied)): (\d+)$", re.M
)


def envoy_decisions(admin: int) -> dict[str, int]:
    """Envoy's own count of decisions (ext_authz ok/denied/error, RBAC allowed/denied)."""
    url = f"http://{LOOPBACK}:{admin}/stats?filter=mcp_ingress"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {m.group(1): int(m.group(2)) for m in STATS.finditer(text)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Sidecar:
    """One `mcp-authz serve` process (or the trivial servicer: `admin` is 0)."""

    proc: subprocess.Popen[bytes]
    grpc: int
    admin: int
    log: Path


def sidecar_argv(config_dir: Path, grpc: int, admin: int, redis_url: str | None) -> list[str]:
    argv = [
        sys.executable,
        "-c",
        "import sys; from authz.cli import main; sys.exit(main())",
        "serve",
        "--config",
        str(config_dir),
        "--grpc",
        f"{LOOPBACK}:{grpc}",
        "--admin",
        f"{LOOPBACK}:{admin}",
        "--log-level",
        "warning",
    ]
    return argv + (["--redis-url", redis_url] if redis_url else [])


def start_sidecars(
    n: int, tag: str, work: Path, config_dir: Path, redis_url: str | None
) -> list[Sidecar]:
    """Start n sidecar processes on free ports and wait until each answers /healthz. The
    caller stops them (the list grows as they start, so a failure leaves none behind
    unaccounted for: they are stopped in `finally` blocks via `stop_all`)."""
    out: list[Sidecar] = []
    try:
        for k in range(n):
            grpc, admin = free_port(), free_port()
            # the audit stream (one JSON line per decision) goes to a file, as in the demo
            log = work / f"{tag}-sidecar{k}.log"
            proc = start(sidecar_argv(config_dir, grpc, admin, redis_url), log)
            out.append(Sidecar(proc, grpc, admin, log))
            url = f"http://{LOOPBACK}:{admin}/healthz"
            wait_until(f"{tag} sidecar {k}", lambda u=url: http_status(u) == 200)
    except BaseException:
        stop_all(out)
        raise
    return out


def stop_all(sidecars: list[Sidecar]) -> None:
    for s in sidecars:
        stop(s.proc)


@dataclass
class Running:
    envoy: subprocess.Popen[bytes]
    sidecars: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    admin: int = 0


@contextlib.contextmanager
def running_setup(
    setup: str, work: Path, config_dir: Path, redis_url: str | None
) -> Iterator[Running]:
    port, admin = free_port(), free_port()
    sidecars: list[Sidecar] = []
    envoy: subprocess.Popen[bytes] | None = None
    try:
        if setup in ("plain", "native"):
            cfg = plain_config(port, admin, native_filters() if setup == "native" else [])
        else:
            n = 2 if setup == "sidecar2" else 1
            url = redis_url if setup == "redis" else None
            sidecars = start_sidecars(n, setup, work, config_dir, url)
            cfg = sidecar_config(port, admin, [s.grpc for s in sidecars])
        path = work / f"envoy-{setup}.json"
        write_envoy_config(cfg, path)
        envoy = start(
            [
                find_envoy(),
                "-c",
                str(path),
                "--base-id",
                str(port),
                "--log-level",
                "warn",
                "--concurrency",
                "2",
            ],
            work / f"{setup}-envoy.log",
        )
        wait_until(f"{setup} envoy", lambda: http_status(f"http://{LOOPBACK}:{admin}/ready") == 200)
        headers, body = request_for("call_allowed", 1)
        url = f"http://{LOOPBACK}:{port}/mcp"
        wait_until(
            f"{setup} path", lambda: http_status(url, body.encode(), headers) == 200, timeout=20
        )
        yield Running(envoy, [s.proc for s in sidecars], port, admin)
    finally:
        if envoy is not None:
            stop(envoy)
        stop_all(sidecars)


def probe_mix(port: int) -> dict[str, int]:
    """One request of each kind: the HTTP status (a policy denial of a tools/call is a 200
    carrying `[POLICY DENIED]`, so the body is checked too)."""
    out: dict[str, int] = {}
    for kind, _ in MIX:
        headers, body = request_for(kind, 99)
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{port}/mcp", data=body.encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                text = resp.read().decode(errors="replace")
                status = int(resp.status)
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(errors="replace"), int(err.code)
        out[kind] = status
        if "[POLICY DENIED]" in text:
            out[kind + "_policy_denied"] = 1
    return out


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(port: int, conns: int, duration: float, lua: Path) -> dict[str, Any]:
    threads = 1 if conns == 1 else 2
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "2s",
        "--latency",
        "-s",
        str(lua),
        f"http://{LOOPBACK}:{port}/mcp",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    res: dict[str, Any] = {}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    return res


# -- the run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    conns = [int(c) for c in args.connections.split(",")]
    setups = [s for s in args.setups.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="mcp-authz-hop-"))
    config_dir = write_config(work / "config")
    lua = work / "mix.lua"
    write_lua(lua)
    results: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    probes: dict[str, dict[str, int]] = {}
    redis: subprocess.Popen[bytes] | None = None
    redis_url = None
    started = time.monotonic()

    # the native filter's configuration must validate, or the setup is skipped
    if "native" in setups:
        path = work / "envoy-native-validate.json"
        write_envoy_config(plain_config(free_port(), free_port(), native_filters()), path)
        check = subprocess.run(
            [find_envoy(), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check.returncode != 0:
            notes["native"] = "skipped: config did not validate: " + check.stdout[-400:]
            setups.remove("native")
    try:
        if "redis" in setups:
            rport = free_port()
            redis = start(
                [
                    "redis-server",
                    "--port",
                    str(rport),
                    "--bind",
                    LOOPBACK,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                work / "redis.log",
            )
            redis_url = f"redis://{LOOPBACK}:{rport}/0"
            wait_until("redis", lambda: redis is not None and _tcp_open(rport))
        for rnd in range(1, args.rounds + 1):
            for setup in setups:
                with running_setup(setup, work, config_dir, redis_url) as env:
                    if rnd == 1:
                        probes[setup] = probe_mix(env.port)
                    run_wrk(env.port, max(conns), 1.0, lua)  # warm-up, not recorded
                    for c in conns:
                        pids = [p.pid for p in env.sidecars]
                        cpu0 = [cpu_seconds(p) for p in pids]
                        ecpu0 = cpu_seconds(env.envoy.pid)
                        dec0 = envoy_decisions(env.admin)
                        res = run_wrk(env.port, c, args.duration, lua)
                        cpu = sum(cpu_seconds(p) for p in pids) - sum(cpu0)
                        ecpu = cpu_seconds(env.envoy.pid) - ecpu0
                        dec1 = envoy_decisions(env.admin)
                        decisions = {k: v - dec0.get(k, 0) for k, v in dec1.items()}
                        n = max(res["requests"], 1)
                        res.update(
                            setup=setup,
                            round=rnd,
                            connections=c,
                            sidecar_cpu_us_per_req=cpu / n * 1e6 if pids else None,
                            envoy_cpu_us_per_req=ecpu / n * 1e6,
                            sidecar_rss_mib=max(rss_mib(p) for p in pids) if pids else None,
                            load1=os.getloadavg()[0],
                            decisions=decisions,
                        )
                        results.append(res)
                        print(
                            f"round {rnd} {setup:9s} c={c:3d} rps={res['rps']:9.1f} "
                            f"p50={res['p50_ms']} p99={res['p99_ms']} "
                            f"sidecar_cpu_us/req={res['sidecar_cpu_us_per_req']} "
                            f"rss={res['sidecar_rss_mib']} non2xx={res['non_2xx']} "
                            f"decisions={decisions}",
                            flush=True,
                        )
    finally:
        if redis is not None:
            stop(redis)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results, setups, conns)
    return {
        "command": " ".join(sys.argv),
        "rounds": args.rounds,
        "duration": args.duration,
        "connections": conns,
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "notes": notes,
        "probes": probes,
        "summary": summary,
        "targets": targets(summary),
        "results": results,
    }


def _tcp_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def summarize(results: list[dict[str, Any]], setups: list[str], conns: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setup in setups:
        for c in conns:
            rows = [r for r in results if r["setup"] == setup and r["connections"] == c]
            if not rows:
                continue

            def med(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
                vals = [r[key] for r in rows if r.get(key) is not None]
                return statistics.median(vals) if vals else None

            rss = [r["sidecar_rss_mib"] for r in rows if r["sidecar_rss_mib"] is not None]
            out[f"{setup}@{c}"] = {
                "rps": med("rps"),
                "rps_min": min(r["rps"] for r in rows),
                "rps_max": max(r["rps"] for r in rows),
                "p50_ms": med("p50_ms"),
                "p90_ms": med("p90_ms"),
                "p99_ms": med("p99_ms"),
                "sidecar_cpu_us_per_req": med("sidecar_cpu_us_per_req"),
                "envoy_cpu_us_per_req": med("envoy_cpu_us_per_req"),
                "sidecar_rss_mib": max(rss) if rss else None,
                "non_2xx": sum(r["non_2xx"] for r in rows),
            }
    for key, row in out.items():
        base = out.get("plain@" + key.split("@")[1])
        if base and base["rps"]:
            row["rps_ratio"] = row["rps"] / base["rps"]
            row["p50_added_ms"] = row["p50_ms"] - base["p50_ms"]
    return out


def targets(s: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if "sidecar@16" in s and "plain@16" in s:
        r = s["sidecar@16"]["rps_ratio"]
        t["throughput_16_ge_0.5x"] = {"value": round(r, 3), "met": r >= 0.5}
    if "sidecar@1" in s and "plain@1" in s:
        d = s["sidecar@1"]["p50_added_ms"]
        t["added_p50_1conn_le_0.4ms"] = {"value": round(d, 3), "met": d <= 0.4}
    for c in (16, 64):
        if f"sidecar2@{c}" in s and f"sidecar@{c}" in s:
            r = s[f"sidecar2@{c}"]["rps"] / s[f"sidecar@{c}"]["rps"]
            t[f"two_sidecars_{c}_ge_1.6x"] = {"value": round(r, 3), "met": r >= 1.6}
    rss = [v["sidecar_rss_mib"] for v in s.values() if v.get("sidecar_rss_mib")]
    if rss:
        t["rss_le_80MB"] = {"value": round(max(rss), 1), "met": max(rss) * 1.048576 <= 80}
    return t


def print_table(report: dict[str, Any]) -> None:
    s = report["summary"]
    print()
    print(
        "| setup | conns | req/s (min-max) | x plain | p50 ms | p90 ms | p99 ms | "
        "+p50 ms | sidecar CPU µs/req | Envoy CPU µs/req | sidecar RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    for key, row in s.items():
        setup, c = key.split("@")
        print(
            f"| {SETUPS[setup]} | {c} | {row['rps']:,.0f} ({row['rps_min']:,.0f}-"
            f"{row['rps_max']:,.0f}) | {f(row.get('rps_ratio'))} | {f(row['p50_ms'], '{:.3f}')} | "
            f"{f(row['p90_ms'], '{:.3f}')} | {f(row['p99_ms'], '{:.3f}')} | "
            f"{f(row.get('p50_added_ms'), '{:+.3f}')} | "
            f"{f(row['sidecar_cpu_us_per_req'], '{:.0f}')} | "
            f"{f(row['envoy_cpu_us_per_req'], '{:.0f}')} | {f(row['sidecar_rss_mib'], '{:.1f}')} |"
        )
    print()
    for name, t in report["targets"].items():
        print(f"{name}: {t['value']} -> {'MET' if t['met'] else 'NOT MET'}")
    for name, note in report["notes"].items():
        print(f"note {name}: {note}")
    print("probes (status per kind, first round):", json.dumps(report["probes"]))
    print(f"elapsed {report['elapsed_s']} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--connections", default="1,16,64")
    p.add_argument("--setups", default=",".join(SETUPS), help="subset, comma-separated")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
