"""Decision-hop benchmark: what the policy check costs in front of an instant upstream.

One run compares, in the same order and for several rounds, these setups behind the real
Envoy (`.venv/bin/envoy`), each with a `direct_response` on the /mcp route so that the
upstream costs nothing and only the gateway is measured:

1. plain Envoy (router only);
2. Envoy + native `envoy.filters.http.mcp` + RBAC (in-proxy C++ reference);
3. Envoy + a trivial grpc.aio ext_authz server that allows everything (`bench/trivial_authz.py
   --grpc`), ext_authz as in deploy/envoy.yaml: the floor of the gRPC transport;
4. Envoy + the sidecar (`mcp-authz serve`, memory counters), ext_authz over gRPC as in
   deploy/envoy.yaml;
5. the same with Redis counters (a private `redis-server` on a free loopback port);
6. Envoy + a trivial asyncio HTTP/1.1 server that allows everything (`bench/trivial_authz.py
   --http`), ext_authz over HTTP as in deploy/envoy-http.yaml: the floor of the HTTP transport;
7. Envoy + the sidecar over HTTP ext_authz (`mcp-authz serve --http-authz`, memory counters),
   as in deploy/envoy-http.yaml;
8. the same with Redis counters;
9. (not run by default: `--setups ...,sidecar2`) 4 with 2 sidecar processes (two endpoints in
   the `mcp_authz` cluster).

The HTTP setups render deploy/envoy.yaml through `authz.devstack.envoy_config.http_transport`
(what deploy/envoy-http.yaml is), so their ext_authz `http_service` cannot drift from it.
Load comes from `wrk --latency` with a Lua script posting an MCP mix. The authz server's CPU
per request comes from /proc/PID/stat (utime + stime) deltas around each wrk run.

Then (`--direct`, on by default when `h2load` is installed) the sidecar alone, without
Envoy, over real gRPC: h2load (nghttp2-client) posts the CheckRequests Envoy would send for
the same mix straight to `/envoy.service.auth.v3.Authorization/Check`, one kind after the
other with request counts in the mix's proportions, against:

a. a trivial grpc.aio servicer (`bench/trivial_authz.py`, a constant OK): grpc-python's floor;
b. one `mcp-authz serve` (memory counters, as setup 4);
c. (`--direct-setups`) two of them on two ports, each loaded by its own h2load with half the
   connections, at the same time (memory counters: each process has its own quotas);
d. one `mcp-authz serve` with Redis counters (as setup 5); e. (`--direct-setups`) two.

Every decision is checked against the sidecars' own `mcp_authz_decisions_total` (the
trivial servicer's count when it stops): h2load sees HTTP 200 even for a gRPC error.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/harness.py --rounds 2 --duration 5
    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/harness.py --setups '' --duration 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from authz.config.grants import hash_token  # noqa: E402
from authz.devstack.envoy_config import render_envoy_config, write_envoy_config  # noqa: E402
from authz.devstack.stack import LOOPBACK, find_envoy, free_port  # noqa: E402

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
    "grpc_floor": "3 Envoy + trivial gRPC authz (floor)",
    "sidecar": "4 Envoy + sidecar, gRPC (memory)",
    "redis": "5 Envoy + sidecar, gRPC (Redis)",
    "http_floor": "6 Envoy + trivial HTTP authz (floor)",
    "http": "7 Envoy + sidecar, HTTP (memory)",
    "http_redis": "8 Envoy + sidecar, HTTP (Redis)",
    "sidecar2": "9 Envoy + 2 sidecars, gRPC (memory)",
}
DEFAULT_SETUPS = [s for s in SETUPS if s != "sidecar2"]
FLOORS = {"grpc_floor": "grpc", "http_floor": "http"}
"""Setups whose authz server is `bench/trivial_authz.py` (with its transport)."""
HTTP_SETUPS = frozenset({"http_floor", "http", "http_redis"})
REDIS_SETUPS = frozenset({"redis", "http_redis"})


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


def sidecar_config(
    port: int, admin: int, grpc_ports: list[int], http_port: int | None = None
) -> dict[str, Any]:
    """deploy/envoy.yaml rendered for loopback (with `http_port`: its HTTP ext_authz twin,
    `http_transport`, i.e. deploy/envoy-http.yaml, with the check sent to `http_port`), with
    the /mcp route answered by Envoy itself, ext_proc dropped (no upstream response to
    process) and the access log dropped (the plain setup has none; this measures the
    decision hop, not logging)."""
    cfg = render_envoy_config(
        listen_host=LOOPBACK,
        listen_port=port,
        admin_port=admin,
        authz_host=LOOPBACK,
        authz_port=grpc_ports[0],
        upstream_host=LOOPBACK,
        upstream_port=free_port(),
        extra_authz_ports=grpc_ports[1:],
        transport="grpc" if http_port is None else "http",
        authz_http_port=http_port,
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
    """One `mcp-authz serve` process (or a trivial server: `admin_port` is 0; over HTTP,
    `grpc_port` is 0)."""

    proc: subprocess.Popen[bytes]
    grpc_port: int
    admin_port: int
    log: Path
    http_port: int = 0


def sidecar_argv(
    config_dir: Path,
    grpc_port: int,
    admin_port: int,
    redis_url: str | None,
    http_port: int | None = None,
) -> list[str]:
    argv = [
        sys.executable,
        "-c",
        "import sys; from authz.cli import main; sys.exit(main())",
        "serve",
        "--config",
        str(config_dir),
        "--grpc",
        f"{LOOPBACK}:{grpc_port}",
        "--admin",
        f"{LOOPBACK}:{admin_port}",
        "--log-level",
        "warning",
    ]
    argv += ["--http-authz", f"{LOOPBACK}:{http_port}"] if http_port else []
    return argv + (["--redis-url", redis_url] if redis_url else [])


def start_sidecars(
    n: int, tag: str, work: Path, config_dir: Path, redis_url: str | None, *, http: bool = False
) -> list[Sidecar]:
    """Start n sidecar processes on free ports (with `http`, each also serving HTTP
    ext_authz) and wait until each answers /healthz; the caller stops them with `stop_all`
    (on a failure here, those already started are)."""
    out: list[Sidecar] = []
    try:
        for k in range(n):
            grpc_port, admin_port = free_port(), free_port()
            http_port = free_port() if http else 0
            # the audit stream (one JSON line per decision) goes to a file, as in the demo
            log = work / f"{tag}-sidecar{k}.log"
            argv = sidecar_argv(config_dir, grpc_port, admin_port, redis_url, http_port)
            proc = start(argv, log)
            out.append(Sidecar(proc, grpc_port, admin_port, log, http_port))
            url = f"http://{LOOPBACK}:{admin_port}/healthz"
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
    """The authz server processes: the sidecars, or the trivial server of a floor."""
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
        elif setup in FLOORS:
            sidecars = start_trivial(work, f"{setup}-trivial", FLOORS[setup])
            floor = sidecars[0]
            if floor.http_port:  # nothing listens on the gRPC cluster's port (ext_proc is off)
                cfg = sidecar_config(port, admin, [free_port()], floor.http_port)
            else:
                cfg = sidecar_config(port, admin, [floor.grpc_port])
        else:
            n = 2 if setup == "sidecar2" else 1
            store = redis_url if setup in REDIS_SETUPS else None
            http = setup in HTTP_SETUPS
            sidecars = start_sidecars(n, setup, work, config_dir, store, http=http)
            cfg = sidecar_config(
                port,
                admin,
                [s.grpc_port for s in sidecars],
                sidecars[0].http_port if http else None,
            )
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


# -- the sidecar alone, over gRPC (h2load) ------------------------------------------------

DIRECT_SETUPS = {
    "trivial": "a trivial grpc.aio servicer (floor)",
    "sidecar": "b 1 sidecar (memory)",
    "sidecar2": "c 2 sidecars (memory)",
    "redis": "d 1 sidecar (Redis)",
    "redis2": "e 2 sidecars (Redis)",
}
DIRECT_DEFAULT = "trivial,sidecar,redis"
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
TRIVIAL = REPO / "bench" / "trivial_authz.py"
# the addresses and ids a CheckRequest carries: fixed values in the shape Envoy sends them
ENVOY_LISTENER = (LOOPBACK, 10000)
CLIENT_PEER = (LOOPBACK, 40000)
ROUTE_METADATA = {"upstream": "imagegen"}  # deploy/envoy.yaml's /mcp route, namespace mcp_authz
DECISION_KINDS = ("allow", "deny:policy", "deny:rate_limited")
"""The decisions the mix can produce (outcome, or outcome:kind); any other is a mismatch."""


def direct_processes(setup: str) -> int:
    return 2 if setup.endswith("2") else 1


def check_request(kind: str, i: int) -> external_auth_pb2.CheckRequest:
    """The CheckRequest Envoy sends the sidecar for `request_for(kind, i)`, with
    deploy/envoy.yaml's ext_authz settings (body as raw_body, route metadata): the same
    fields and headers, in Envoy's order, as one captured from Envoy 1.40 in setup 3."""
    client_headers, body = request_for(kind, i)
    raw = body.encode()
    authority = f"{ENVOY_LISTENER[0]}:{ENVOY_LISTENER[1]}"
    check = external_auth_pb2.CheckRequest()
    attrs = check.attributes
    attrs.source.address.socket_address.address = CLIENT_PEER[0]
    attrs.source.address.socket_address.port_value = CLIENT_PEER[1]
    attrs.destination.address.socket_address.address = ENVOY_LISTENER[0]
    attrs.destination.address.socket_address.port_value = ENVOY_LISTENER[1]
    attrs.request.time.GetCurrentTime()
    http = attrs.request.http
    http.id = str(6045741829322031174 + i)
    http.method = "POST"
    headers = {
        "x-request-id": f"7f15403c-41bd-4980-a433-{i:012d}",
        "x-forwarded-proto": "http",
        "x-forwarded-for": CLIENT_PEER[0],
        "x-envoy-external-address": CLIENT_PEER[0],
        "x-envoy-auth-partial-body": "false",
        **{k.lower(): v for k, v in client_headers.items()},
        "content-length": str(len(raw)),
        ":scheme": "http",
        ":path": "/mcp",
        ":method": "POST",
        ":authority": authority,
    }
    http.headers.update(headers)
    http.path = "/mcp"
    http.host = authority
    http.scheme = "http"
    http.size = len(raw)
    http.protocol = "HTTP/1.1"
    http.raw_body = raw
    attrs.metadata_context.SetInParent()
    attrs.route_metadata_context.filter_metadata["mcp_authz"].update(ROUTE_METADATA)
    return check


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def write_check_requests(work: Path) -> dict[str, Path]:
    """One h2load body per kind of the mix (h2load posts the same body all run long)."""
    out: dict[str, Path] = {}
    for n, (kind, _) in enumerate(MIX, start=1):
        path = work / f"check-{kind}.bin"
        path.write_bytes(grpc_frame(check_request(kind, n).SerializeToString()))
        out[kind] = path
    return out


def read_check_request(path: Path) -> external_auth_pb2.CheckRequest:
    check: external_auth_pb2.CheckRequest = external_auth_pb2.CheckRequest.FromString(
        path.read_bytes()[5:]
    )
    return check


def probe_grpc(port: int, files: dict[str, Path]) -> dict[str, int]:
    """Each h2load body once over a Python gRPC channel: the CheckResponse's status code
    (0 allowed, 7 denied; the first calls of the rate-limited tool are allowed), -1 if
    the call itself failed."""
    out: dict[str, int] = {}
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)  # type: ignore[no-untyped-call]
        for kind, path in files.items():
            try:
                out[kind] = int(stub.Check(read_check_request(path), timeout=5).status.code)
            except grpc.RpcError:
                out[kind] = -1
    return out


def start_trivial(work: Path, tag: str, transport: str = "grpc") -> list[Sidecar]:
    """`bench/trivial_authz.py` serving `transport` ("grpc" or "http") on a free port."""
    port = free_port()
    log = work / f"{tag}.log"  # one per round: its last line is this process's count
    proc = start([sys.executable, str(TRIVIAL), f"--{transport}", f"{LOOPBACK}:{port}"], log)
    if transport == "http":
        target = Sidecar(proc, 0, 0, log, http_port=port)
    else:
        target = Sidecar(proc, port, 0, log)
    try:
        wait_until("trivial server", lambda: _tcp_open(port))
    except BaseException:
        stop_all([target])
        raise
    return [target]


def trivial_checks(log: Path) -> int | None:
    """The Checks the trivial servicer answered (it prints `checks N` when stopped)."""
    m = re.search(r"^checks (\d+)$", log.read_text(errors="replace"), re.M)
    return int(m.group(1)) if m else None


DECISIONS = re.compile(r"^mcp_authz_decisions_total\{([^}]*)\} (\S+)$", re.M)


def sidecar_decisions(admin: int) -> dict[str, int]:
    """The sidecar's own count of decisions (`mcp_authz_decisions_total` on /metrics),
    summed by "outcome" or "outcome:kind"."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for m in DECISIONS.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = labels.get("outcome", "?") + (f":{labels['kind']}" if labels.get("kind") else "")
        out[key] = out.get(key, 0) + int(float(m.group(2)))
    return out


def add_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def children_cpu_seconds() -> float:
    """utime + stime of this process's finished children (the h2load runs: the processes
    under test are still running, so they are not in it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_h2load(port: int, conns: int, n: int, data: Path, log: Path) -> dict[str, Any]:
    """`n` POSTs of one gRPC body on `conns` HTTP/2 connections, one stream each. h2load
    sees HTTP statuses only (a gRPC error is a 200 too): the caller checks the decisions."""
    argv = [
        "h2load",
        "-n",
        str(n),
        "-c",
        str(conns),
        "-m",
        "1",
        "-t",
        "1",
        "-d",
        str(data),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--log-file",
        str(log),
        f"http://{LOOPBACK}:{port}{CHECK_PATH}",
    ]
    res: dict[str, Any] = {"requests": 0, "seconds": 0.0, "failed": 0, "errored": 0}
    res.update(non_2xx=0, latencies_us=[], error="")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=n / 50 + 60)
    except subprocess.TimeoutExpired:
        res["error"] = f"h2load timed out ({n} requests)"
        return res
    out = done.stdout
    finished = re.search(r"^finished in (\S+),", out, re.M)
    counts = re.search(
        r"^requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored",
        out,
        re.M,
    )
    statuses = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    if done.returncode != 0 or not (finished and counts and statuses):
        res["error"] = f"h2load exit {done.returncode}: {(done.stderr or out)[-300:]}"
        return res
    res["seconds"] = to_ms(finished.group(1).rstrip(",")) / 1e3
    res["requests"] = int(counts.group(1))
    res["failed"], res["errored"] = int(counts.group(2)), int(counts.group(3))
    res["non_2xx"] = sum(int(statuses.group(k)) for k in (2, 3, 4))
    with contextlib.suppress(OSError):
        res["latencies_us"] = [
            int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip()
        ]
    return res


def mix_counts(total: float, conns: int) -> dict[str, int]:
    """Requests per kind, proportional to the mix's shares (at least one per connection)."""
    weights = sum(w for _, w in MIX)
    return {kind: max(conns, round(total * w / weights)) for kind, w in MIX}


def run_mix(
    port: int, conns: int, counts: dict[str, int], files: dict[str, Path], logs: Path
) -> dict[str, Any]:
    """The mix as one run: each kind in turn, `counts[kind]` requests of it. The run's time
    is the sum of h2load's own times, so mix req/s = total decisions / total time."""
    runs = {
        kind: run_h2load(port, conns, counts[kind], files[kind], logs / f"{port}-{kind}.tsv")
        for kind, _ in MIX
    }
    return {
        "requests": sum(r["requests"] for r in runs.values()),
        "seconds": sum(r["seconds"] for r in runs.values()),
        "failed": sum(r["failed"] + r["errored"] for r in runs.values()),
        "non_2xx": sum(r["non_2xx"] for r in runs.values()),
        "latencies_us": [t for r in runs.values() for t in r["latencies_us"]],
        "kind_rps": {
            k: r["requests"] / r["seconds"] if r["seconds"] else 0.0 for k, r in runs.items()
        },
        "sent": {k: r["requests"] for k, r in runs.items()},
        "errors": [f"{k}: {r['error']}" for k, r in runs.items() if r["error"]],
    }


def in_parallel(
    targets: list[Sidecar], work: Callable[[Sidecar], dict[str, Any]]
) -> list[dict[str, Any]]:
    """`work(target)` for every target at once (one h2load per process), in target order."""
    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(work, targets))


def calibrate(
    targets: list[Sidecar], conns: int, files: dict[str, Path], logs: Path
) -> list[dict[str, Any]]:
    """Warm-up and rate estimate: the allowed tools/call on every process at once,
    max(200, 100 x conns) requests each."""
    n = max(200, 100 * conns)
    path = files["call_allowed"]
    return in_parallel(
        targets, lambda t: run_h2load(t.grpc_port, conns, n, path, logs / f"{t.grpc_port}-warm.tsv")
    )


def percentiles_ms(latencies_us: list[int]) -> dict[str, float | None]:
    if len(latencies_us) < 2:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    cuts = statistics.quantiles(latencies_us, n=100)
    return {
        "p50_ms": cuts[49] / 1e3,
        "p90_ms": cuts[89] / 1e3,
        "p99_ms": cuts[98] / 1e3,
        "mean_ms": statistics.fmean(latencies_us) / 1e3,
    }


def verify_decisions(decisions: dict[str, int], sent: dict[str, int]) -> str:
    """What differs between the sidecars' decisions and what was sent (every request
    decided, each denied-tool call a policy denial, no other kind of decision); empty if
    nothing does."""
    problems = []
    total, expected = sum(decisions.values()), sum(sent.values())
    if total != expected:
        problems.append(f"{total} decisions for {expected} requests")
    if decisions.get("deny:policy", 0) != sent.get("call_denied", 0):
        problems.append(
            f"{decisions.get('deny:policy', 0)} policy denials for "
            f"{sent.get('call_denied', 0)} denied-tool calls"
        )
    other = {k: v for k, v in decisions.items() if k not in DECISION_KINDS and v}
    if other:
        problems.append(f"unexpected decisions {other}")
    return "; ".join(problems)


def measure_direct(
    targets: list[Sidecar],
    conns_each: int,
    duration: float,
    files: dict[str, Path],
    logs: Path,
    sent_total: dict[int, int],
) -> dict[str, Any]:
    """One measured mix on every target at once, sized to last about `duration` seconds:
    decisions/s = all decisions / the slowest process's time; CPU = utime + stime of every
    process; the decisions are checked against the sidecars' own count."""
    warm = calibrate(targets, conns_each, files, logs)
    rates = [w["requests"] / w["seconds"] if w["seconds"] else 1.0 for w in warm]
    counts = [mix_counts(rate * duration, conns_each) for rate in rates]
    sidecars = [t for t in targets if t.admin_port]
    dec0 = [sidecar_decisions(t.admin_port) for t in sidecars]
    cpu0 = sum(cpu_seconds(t.proc.pid) for t in targets)
    load0 = children_cpu_seconds()
    plan = dict(zip((t.grpc_port for t in targets), counts, strict=True))
    mixes = in_parallel(
        targets, lambda t: run_mix(t.grpc_port, conns_each, plan[t.grpc_port], files, logs)
    )
    cpu = sum(cpu_seconds(t.proc.pid) for t in targets) - cpu0
    load_cpu = children_cpu_seconds() - load0
    rss = [rss_mib(t.proc.pid) for t in targets]
    dec1 = [sidecar_decisions(t.admin_port) for t in sidecars]
    for t, w, m in zip(targets, warm, mixes, strict=True):
        sent_total[t.grpc_port] += (
            w["requests"] + w["failed"] + w["errored"] + sum(m["sent"].values())
        )
    requests = sum(m["requests"] for m in mixes)
    seconds = max(m["seconds"] for m in mixes)
    sent = add_counts([m["sent"] for m in mixes])
    decisions = add_counts(
        [{k: v - d0.get(k, 0) for k, v in d1.items()} for d0, d1 in zip(dec0, dec1, strict=True)]
    )
    errors = [f"warm-up: {w['error']}" for w in warm if w["error"]]
    errors += [e for m in mixes for e in m["errors"]]
    row: dict[str, Any] = {
        "processes": len(targets),
        "connections": conns_each * len(targets),
        "requests": requests,
        "seconds": seconds,
        "rps": requests / seconds if seconds else 0.0,
        "process_rps": [m["requests"] / m["seconds"] if m["seconds"] else 0.0 for m in mixes],
        "kind_rps": [m["kind_rps"] for m in mixes],
        **percentiles_ms([t for m in mixes for t in m["latencies_us"]]),
        "failed": sum(m["failed"] for m in mixes),
        "non_2xx": sum(m["non_2xx"] for m in mixes),
        "cpu_us_per_decision": cpu / requests * 1e6 if requests else None,
        "h2load_cpu_us_per_decision": load_cpu / requests * 1e6 if requests else None,
        "rss_mib": max(rss),
        "rss_mib_each": rss,
        "sent": sent,
        "decisions": decisions if sidecars else None,
        "mismatch": verify_decisions(decisions, sent) if sidecars else None,
        "errors": errors,
        "load1": os.getloadavg()[0],
    }
    return row


def start_direct(
    setup: str, rnd: int, work: Path, config_dir: Path, redis_url: str | None
) -> list[Sidecar]:
    tag = f"direct-{setup}-r{rnd}"
    if setup == "trivial":
        return start_trivial(work, tag)
    store = redis_url if setup.startswith("redis") else None
    return start_sidecars(direct_processes(setup), tag, work, config_dir, store)


def run_direct_setup(
    setup: str,
    rnd: int,
    conns: list[int],
    duration: float,
    work: Path,
    config_dir: Path,
    files: dict[str, Path],
    redis_url: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
    """Fresh processes for one setup and round: a gRPC probe of each body on each process,
    then one measured mix per connection count (split evenly over the processes)."""
    n = direct_processes(setup)
    targets = start_direct(setup, rnd, work, config_dir, redis_url)
    sent_total = {t.grpc_port: 0 for t in targets}
    logs = work / "h2load"
    logs.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        probes = [probe_grpc(t.grpc_port, files) for t in targets]
        for t in targets:
            sent_total[t.grpc_port] += len(files)
        for c in conns:
            if c < n:
                continue
            row = measure_direct(targets, c // n, duration, files, logs, sent_total)
            row.update(setup=setup, round=rnd)
            rows.append(row)
            print(
                f"direct round {rnd} {setup:8s} c={row['connections']:3d} "
                f"decisions/s={row['rps']:8.1f} p50={_fmt(row['p50_ms'])} "
                f"p99={_fmt(row['p99_ms'])} cpu_us/decision={_fmt(row['cpu_us_per_decision'], 0)} "
                f"rss={_fmt(row['rss_mib'], 1)} failed={row['failed']} "
                f"decisions={row['decisions']} mismatch={row['mismatch']!r} errors={row['errors']}",
                flush=True,
            )
    finally:
        stop_all(targets)
    if setup == "trivial":
        served = trivial_checks(targets[0].log)
        total = sum(sent_total.values())
        mismatch = "" if served == total else f"{served} Checks answered for {total} sent"
        print(f"direct round {rnd} trivial: {served} Checks answered, {total} sent", flush=True)
        for row in rows:
            row["mismatch"] = mismatch
    return rows, probes


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run_direct(
    setups: list[str],
    conns: list[int],
    rounds: int,
    duration: float,
    work: Path,
    config_dir: Path,
    redis_url: str | None,
) -> dict[str, Any]:
    """The sidecar alone: every direct setup, fresh in each round, loaded by h2load over
    real gRPC. A setup that fails is recorded in `errors`; the others still run."""
    files = write_check_requests(work)
    results: list[dict[str, Any]] = []
    probes: dict[str, list[dict[str, int]]] = {}
    errors: list[str] = []
    for rnd in range(1, rounds + 1):
        for setup in setups:
            try:
                rows, probe = run_direct_setup(
                    setup, rnd, conns, duration, work, config_dir, files, redis_url
                )
            except Exception as exc:  # one setup failing must not lose the rest
                errors.append(f"round {rnd} {setup}: {exc!r}")
                print(f"direct round {rnd} {setup}: FAILED {exc!r}", flush=True)
                continue
            results += rows
            probes.setdefault(setup, probe)
    summary = summarize_direct(results, setups)
    return {
        "setups": setups,
        "connections": conns,
        "duration": duration,
        "body_bytes": {kind: path.stat().st_size for kind, path in files.items()},
        "probes": probes,
        "summary": summary,
        "ratios": direct_ratios(summary),
        "errors": errors,
        "results": results,
    }


def summarize_direct(results: list[dict[str, Any]], setups: list[str]) -> dict[str, Any]:
    """Per setup and connection count: medians over the rounds (req/s also min-max), the
    max RSS, and whether every run was verified."""
    out: dict[str, Any] = {}
    for setup in setups:
        for c in sorted({r["connections"] for r in results if r["setup"] == setup}):
            rows = [r for r in results if r["setup"] == setup and r["connections"] == c]

            def med(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
                vals = [r[key] for r in rows if r.get(key) is not None]
                return statistics.median(vals) if vals else None

            problems = [f"round {r['round']}: {run_problems(r)}" for r in rows if run_problems(r)]
            out[f"{setup}@{c}"] = {
                "processes": rows[0]["processes"],
                "rps": med("rps"),
                "rps_min": min(r["rps"] for r in rows),
                "rps_max": max(r["rps"] for r in rows),
                "p50_ms": med("p50_ms"),
                "p90_ms": med("p90_ms"),
                "p99_ms": med("p99_ms"),
                "mean_ms": med("mean_ms"),
                "cpu_us_per_decision": med("cpu_us_per_decision"),
                "h2load_cpu_us_per_decision": med("h2load_cpu_us_per_decision"),
                "rss_mib": max(r["rss_mib"] for r in rows),
                "verified": not problems,
                "problems": problems,
            }
    for key, row in out.items():
        floor = out.get("trivial@" + key.split("@")[1])
        row["x_floor"] = row["rps"] / floor["rps"] if floor and floor["rps"] else None
    return out


def run_problems(row: dict[str, Any]) -> str:
    """Why a direct run does not count as verified; empty if it does."""
    found = [row["mismatch"]] if row["mismatch"] else []
    if row["failed"] or row["non_2xx"]:
        found.append(f"h2load: {row['failed']} failed, {row['non_2xx']} non-2xx")
    return "; ".join(found + row["errors"])


def direct_ratios(s: dict[str, Any]) -> dict[str, float]:
    """2 processes / 1 process (same counter store) and 1 process / the trivial floor."""
    out: dict[str, float] = {}
    for key, row in s.items():
        setup, c = key.split("@")
        if not row["rps"]:
            continue
        if setup in ("sidecar2", "redis2") and s.get(f"{setup[:-1]}@{c}", {}).get("rps"):
            out[f"{setup}/{setup[:-1]}@{c}"] = row["rps"] / s[f"{setup[:-1]}@{c}"]["rps"]
        if setup in ("sidecar", "redis") and row.get("x_floor"):
            out[f"{setup}/trivial@{c}"] = row["x_floor"]
    return out


def direct_targets(direct: dict[str, Any]) -> dict[str, Any]:
    """The sidecar alone against grpc-python's floor (decisions/s, 16 connections)."""
    ratio = direct["ratios"].get("sidecar/trivial@16")
    if ratio is None:
        return {}
    return {"grpc_direct_16_conns_ge_0.75x_floor": {"value": round(ratio, 3), "met": ratio >= 0.75}}


def print_direct_table(direct: dict[str, Any]) -> None:
    print()
    print(
        "| setup (sidecar alone, h2load over gRPC) | procs | conns | decisions/s (min-max) | "
        "x floor | p50 ms | p90 ms | p99 ms | mean ms | CPU µs/decision | h2load CPU µs/decision | "
        "RSS MiB | verified |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key, row in direct["summary"].items():
        setup, c = key.split("@")
        verified = "yes" if row["verified"] else "NO: " + " | ".join(row["problems"])
        print(
            f"| {DIRECT_SETUPS[setup]} | {row['processes']} | {c} | {row['rps']:,.0f} "
            f"({row['rps_min']:,.0f}-{row['rps_max']:,.0f}) | {_fmt(row['x_floor'], 2)} | "
            f"{_fmt(row['p50_ms'])} | {_fmt(row['p90_ms'])} | {_fmt(row['p99_ms'])} | "
            f"{_fmt(row['mean_ms'])} | {_fmt(row['cpu_us_per_decision'], 0)} | "
            f"{_fmt(row['h2load_cpu_us_per_decision'], 0)} | "
            f"{_fmt(row['rss_mib'], 1)} | {verified} |"
        )
    print()
    for name, ratio in direct["ratios"].items():
        print(f"direct ratio {name}: {ratio:.2f}")
    for error in direct["errors"]:
        print(f"direct error: {error}")
    print("direct probes (CheckResponse status per body, per process, first round):")
    print("  " + json.dumps(direct["probes"]))


# -- the run ------------------------------------------------------------------------------


def direct_plan(args: argparse.Namespace, notes: dict[str, str]) -> list[str]:
    """The direct setups to run: none with --no-direct; none, with a note, when h2load is
    missing (never an error: the Envoy part still runs); Redis ones only with redis-server."""
    if args.direct is False:
        return []
    setups = [s for s in args.direct_setups.split(",") if s]
    unknown = [s for s in setups if s not in DIRECT_SETUPS]
    if unknown:
        raise SystemExit(f"unknown --direct-setups {unknown}; choose from {list(DIRECT_SETUPS)}")
    if shutil.which("h2load") is None:
        notes["direct"] = (
            "skipped the sidecar-alone part: h2load not found (apt-get install -y nghttp2-client)"
        )
        print(f"note: {notes['direct']}", flush=True)
        return []
    if any(s.startswith("redis") for s in setups) and shutil.which("redis-server") is None:
        notes["direct_redis"] = "skipped direct Redis setups: redis-server not found"
        setups = [s for s in setups if not s.startswith("redis")]
    if any(direct_processes(s) > 1 for s in setups):
        notes["direct_connections"] = (
            "2-process setups: each process gets half the connections (one h2load each, "
            "run at the same time); they skip connection counts below 2"
        )
    return setups


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port, no persistence."""
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
    try:
        wait_until("redis", lambda: _tcp_open(rport))
    except BaseException:
        stop(redis)
        raise
    return redis, f"redis://{LOOPBACK}:{rport}/0"


def run(args: argparse.Namespace) -> dict[str, Any]:
    conns = [int(c) for c in args.connections.split(",")]
    direct_conns = [int(c) for c in args.direct_connections.split(",")]
    setups = [s for s in args.setups.split(",") if s]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        raise SystemExit(f"unknown --setups {unknown}; choose from {list(SETUPS)}")
    if setups and shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
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
    direct_setups = direct_plan(args, notes)
    direct: dict[str, Any] | None = None
    try:
        if REDIS_SETUPS & set(setups) or any(s.startswith("redis") for s in direct_setups):
            redis, redis_url = start_redis(work)
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
                            floor=setup in FLOORS,
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
        if direct_setups:
            direct = run_direct(
                direct_setups,
                direct_conns,
                args.rounds,
                args.direct_duration or args.duration,
                work,
                config_dir,
                redis_url,
            )
    finally:
        if redis is not None:
            stop(redis)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results, setups, conns)
    goals = targets(summary)
    if direct is not None:
        goals.update(direct_targets(direct))
        rss = [
            row["rss_mib"]
            for key, row in direct["summary"].items()
            if not key.startswith("trivial@") and row.get("rss_mib")
        ]
        if rss:  # the sidecar alone at full load counts for the RSS target too
            worst = max([*rss, goals.get("sidecar_rss_le_80MB", {}).get("value", 0.0)])
            goals["sidecar_rss_le_80MB"] = {"value": round(worst, 1), "met": worst * 1.048576 <= 80}
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
        "targets": goals,
        "results": results,
        "direct": direct,
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
                "floor": setup in FLOORS,
            }
    for key, row in out.items():
        base = out.get("plain@" + key.split("@")[1])
        if base and base["rps"]:
            row["rps_ratio"] = row["rps"] / base["rps"]
            row["p50_added_ms"] = row["p50_ms"] - base["p50_ms"]
    return out


def targets(s: dict[str, Any]) -> dict[str, Any]:
    """The Envoy part's targets: the HTTP transport against plain Envoy, Redis against
    memory counters (each transport), the sidecar's RSS."""
    t: dict[str, Any] = {}
    if "http@16" in s and "plain@16" in s:
        r = s["http@16"]["rps_ratio"]
        t["http_16_conns_ge_0.5x_plain"] = {"value": round(r, 3), "met": r >= 0.5}
    if "http@1" in s and "plain@1" in s:
        d = s["http@1"]["p50_added_ms"]
        t["http_added_p50_1_conn_le_0.2ms"] = {"value": round(d, 3), "met": d <= 0.2}
    for memory, redis in (("sidecar", "redis"), ("http", "http_redis")):
        if f"{memory}@1" in s and f"{redis}@1" in s:
            d = s[f"{redis}@1"]["p50_ms"] - s[f"{memory}@1"]["p50_ms"]
            name = f"redis_added_p50_1_conn_le_0.15ms[{'grpc' if memory == 'sidecar' else 'http'}]"
            t[name] = {"value": round(d, 3), "met": d <= 0.15}
    rss = [
        v["sidecar_rss_mib"] for k, v in s.items() if v.get("sidecar_rss_mib") and not v["floor"]
    ]
    if rss:
        t["sidecar_rss_le_80MB"] = {"value": round(max(rss), 1), "met": max(rss) * 1.048576 <= 80}
    return t


def print_table(report: dict[str, Any]) -> None:
    if report["summary"]:
        print_envoy_table(report["summary"])
    if report["direct"] is not None:
        print_direct_table(report["direct"])
    print()
    for name, t in report["targets"].items():
        print(f"{name}: {t['value']} -> {'MET' if t['met'] else 'NOT MET'}")
    for name, note in report["notes"].items():
        print(f"note {name}: {note}")
    if report["probes"]:
        print("probes (status per kind, first round):", json.dumps(report["probes"]))
    print(f"elapsed {report['elapsed_s']} s")


def print_envoy_table(s: dict[str, Any]) -> None:
    print()
    print(
        "| setup | conns | req/s (min-max) | x plain | p50 ms | p90 ms | p99 ms | "
        "+p50 ms | authz CPU µs/req | Envoy CPU µs/req | authz RSS MiB |"
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--connections", default="1,16,64")
    p.add_argument(
        "--setups",
        default=",".join(DEFAULT_SETUPS),
        help=f"Envoy setups, comma-separated, of {','.join(SETUPS)} ('' for none)",
    )
    p.add_argument(
        "--direct",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the Envoy setups, load the sidecar alone over gRPC with h2load "
        "(default: on when h2load is installed)",
    )
    p.add_argument(
        "--direct-setups",
        default=DIRECT_DEFAULT,
        help=f"direct setups, comma-separated, of {','.join(DIRECT_SETUPS)}",
    )
    p.add_argument("--direct-connections", default="1,16", help="h2load connections in all")
    p.add_argument(
        "--direct-duration", type=float, help="seconds per direct mix (default --duration)"
    )
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
