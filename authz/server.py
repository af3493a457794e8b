"""Process wiring: grpc.aio (ext_authz, ext_proc, health), ext_authz over HTTP (optional,
its own port), the admin HTTP endpoint, reloads.

The admin HTTP endpoint serves /healthz, /readyz and /metrics without authentication, the
approvals API (`authz.approvals.admin`, approver tokens only) under /approvals, and, with
`oauth.json`, the protected resource metadata (RFC 9728) at
`/.well-known/oauth-protected-resource` and its path-suffixed form (public: Envoy routes
that prefix here without ext_authz).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import structlog
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from authz.approvals.admin import approval_routes
from authz.approvals.base import ApprovalLimits, ApprovalStore
from authz.approvals.listener import admin_config
from authz.approvals.memory import MemoryApprovalStore
from authz.config.settings import Settings
from authz.config.source import ConfigSource
from authz.counters.base import CounterStore
from authz.counters.memory import MemoryCounterStore
from authz.envoy.extproc import add_processor_service
from authz.envoy.grpc_authz import AUTHZ_SERVICE, add_authorization_service
from authz.envoy.http_authz import serve_http_authz
from authz.inflight.base import InflightStore
from authz.inflight.memory import MemoryInflightStore
from authz.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from authz.metrics import Metrics
from authz.oauth.config import PRM_PATH
from authz.oauth.jwks import TokenVerifier
from authz.oauth.metadata import protected_resource_metadata
from authz.pinning.drift import DriftWatch
from authz.pipeline.gate import Authorizer
from authz.pipeline.response import Responder

if TYPE_CHECKING:
    from authz.approvals.webhook import WebhookNotifier
    from authz.tracing import DecisionTracer

__all__ = [
    "Sidecar",
    "StoreHealth",
    "admin_app",
    "build_approval_store",
    "build_counter_store",
    "build_inflight_store",
    "build_notifier",
    "build_tracer",
    "metadata_routes",
    "readiness",
    "serve",
]


log = structlog.get_logger("mcp_authz.server")


class StoreHealth:
    """Watches the counter store in the background; readiness reports what it saw."""

    def __init__(
        self,
        store: CounterStore,
        *,
        shared: bool,
        interval: float = 1.0,
        on_change: Callable[[bool], Awaitable[None]] | None = None,
        also: Sequence[Any] = (),
    ) -> None:
        self.store = store
        self.also = tuple(also)
        """Further shared stores to ping with it (the Redis approval store, whose shard may
        differ from the counters' on a Redis Cluster)."""
        self.shared = shared
        self.interval = interval
        self.on_change = on_change
        self.ok = True
        self.last_error: str | None = None
        self.changed_at = time.time()
        self._task: asyncio.Task[None] | None = None

    async def probe(self) -> bool:
        ok, error = True, None
        for store in (self.store, *self.also):
            ping = getattr(store, "ping", None)
            if ping is None:
                continue
            # twice: after a Redis restart the first command on a pooled connection fails
            # (client retries are off), and a store only the probe uses would read as down
            for _attempt in range(2):
                try:
                    answered = bool(await ping())
                    problem = None if answered else "ping failed"
                except Exception as exc:  # any store error means: not available
                    answered, problem = False, f"{type(exc).__name__}: {exc}"
                if answered:
                    break
            if not answered:
                ok, error = False, f"{store.describe()}: {problem}"
                break
        changed = ok != self.ok
        if changed:
            self.changed_at = time.time()
            if ok:
                log.info("counter_store_recovered", store=self.store.describe())
            else:
                log.error("counter_store_unavailable", store=self.store.describe(), error=error)
        self.ok, self.last_error = ok, error
        if changed and self.on_change is not None:
            await self.on_change(ok)
        return ok

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.shared and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def readiness(
    config: ConfigSource,
    counters: CounterStore,
    health: StoreHealth,
    fail_open: bool,
    *,
    approvals: ApprovalStore | None = None,
    notifier: WebhookNotifier | None = None,
) -> tuple[bool, dict[str, Any]]:
    """(ready, report). Not ready while a shared store is down and calls fail closed."""
    current = config.current
    ready = health.ok or fail_open
    report: dict[str, Any] = {
        "ready": ready,
        "config": {
            "dir": str(config.root),
            "fingerprint": current.fingerprint,
            "loaded_at": current.loaded_at,
            "grants": len(current.grants),
            "policies": {
                name: policy.content_hash for name, policy in sorted(current.policies.items())
            },
            "reloads": config.status.reloads,
            "last_error": config.status.last_error,
            "last_error_at": config.status.last_error_at,
        },
        "counters": counters.describe(),
        "counter_store": {
            "ok": health.ok,
            "last_error": health.last_error,
            "since": health.changed_at,
            "on_failure": "allow (fail-open)" if fail_open else "deny (fail-closed)",
        },
    }
    if approvals is not None:
        report["approvals"] = approvals.describe()
        report["approvers"] = len(current.approvers)
        report["approval_webhook"] = notifier.describe() if notifier is not None else None
    return ready, report


def metadata_routes(config: ConfigSource) -> list[BaseRoute]:
    """The protected resource metadata at `PRM_PATH` and `PRM_PATH` + the resource's path,
    from the current `oauth.json`; 404 without it, or at any other path under the prefix."""

    async def metadata(request: Request) -> JSONResponse:
        oauth = config.current.oauth
        if oauth is None or request.url.path not in oauth.metadata_paths:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(
            protected_resource_metadata(oauth),
            headers={"cache-control": "max-age=60", "access-control-allow-origin": "*"},
        )

    return [
        Route(PRM_PATH, metadata, methods=["GET"]),
        Route(PRM_PATH + "/{rest:path}", metadata, methods=["GET"]),
    ]


def admin_app(
    config: ConfigSource,
    counters: CounterStore,
    health: StoreHealth,
    fail_open: bool,
    metrics: Metrics,
    *,
    approvals: ApprovalStore | None = None,
    notifier: WebhookNotifier | None = None,
    approvals_remote: bool = False,
) -> Starlette:
    """/healthz, /readyz, /metrics and the protected resource metadata (open) and, with an
    approval store, /approvals (approvers only)."""

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def readyz(_request: Request) -> JSONResponse:
        if health.shared:
            await health.probe()
        ready, report = readiness(
            config, counters, health, fail_open, approvals=approvals, notifier=notifier
        )
        return JSONResponse(report, status_code=200 if ready else 503)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *metadata_routes(config),
    ]
    if approvals is not None:
        routes += approval_routes(config, approvals, metrics=metrics, allow_remote=approvals_remote)
    return Starlette(routes=routes)


def build_counter_store(settings: Settings) -> CounterStore:
    if settings.redis_url is None:
        return MemoryCounterStore()
    from authz.counters.redis import RedisCounterStore

    return RedisCounterStore.from_url(
        settings.redis_url,
        cluster=settings.redis_cluster,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout,
    )


def build_approval_store(settings: Settings, counters: CounterStore) -> ApprovalStore:
    """Approvals live where the counters do: in Redis when a Redis URL is set (shared by
    every replica, so any replica's admin API sees every held call), on the counter store's
    client (one connection pool per sidecar), else in memory. Both hold the same bounds
    (`ApprovalLimits`) and key `arguments_hmac` with MCP_AUTHZ_APPROVAL_DIGEST_KEY, or with
    a random key of this process when it is not set."""
    limits = ApprovalLimits(
        max_pending_per_grant=settings.approval_max_pending,
        max_argument_bytes=settings.approval_max_argument_bytes,
    )
    key = settings.approval_digest_key.encode() if settings.approval_digest_key else None
    if settings.redis_url is None:
        return MemoryApprovalStore(limits=limits, digest_key=key)
    from authz.approvals.redis import RedisApprovalStore
    from authz.counters.redis import RedisCounterStore

    assert isinstance(counters, RedisCounterStore)
    return RedisApprovalStore(
        counters.client,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout,
        url=settings.redis_url,
        owns_client=False,  # the counter store closes it
        limits=limits,
        digest_key=key,
    )


def build_inflight_store(settings: Settings, counters: CounterStore) -> InflightStore:
    """In-flight ids live where the counters do: in Redis when a Redis URL is set (Envoy may
    send two requests of one session to different replicas), on the counter store's client,
    else in memory."""
    if settings.redis_url is None:
        return MemoryInflightStore()
    from authz.counters.redis import RedisCounterStore
    from authz.inflight.redis import RedisInflightStore

    assert isinstance(counters, RedisCounterStore)
    return RedisInflightStore(
        counters.client,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout,
        url=settings.redis_url,
        owns_client=False,  # the counter store closes it
    )


def build_notifier(settings: Settings, metrics: Metrics | None = None) -> WebhookNotifier | None:
    if settings.approval_webhook is None:
        return None
    # imported only when configured: it brings httpx (about 2.6 MiB of the sidecar's RSS)
    from authz.approvals.webhook import WebhookNotifier

    return WebhookNotifier(
        settings.approval_webhook,
        secret=settings.approval_webhook_secret,
        max_pending_per_grant=settings.approval_max_pending,  # a queue per grant, fair
        on_result=metrics.observe_webhook if metrics is not None else None,
    )


def build_tracer(settings: Settings) -> DecisionTracer | None:
    if settings.otlp_traces_url is None:
        return None
    # imported only when configured: tracing off costs nothing (authz/tracing.py)
    from authz.tracing import otlp_tracer

    return otlp_tracer(settings.otlp_traces_url, service_name=settings.service_name)


class _AdminServer(uvicorn.Server):
    """uvicorn inside our event loop: the sidecar owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Sidecar:
    """One sidecar process: gRPC server, the HTTP ext_authz server (with `--http-authz`),
    admin HTTP server and config reloader."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = ConfigSource.open(settings.config_dir, interval=settings.reload_interval)
        self.counters: CounterStore = build_counter_store(settings)
        self.metrics = Metrics(self.config)
        self.approvals: ApprovalStore = build_approval_store(settings, self.counters)
        self.inflight = build_inflight_store(settings, self.counters)
        self.store_health = StoreHealth(
            self.counters,
            shared=settings.redis_url is not None,
            on_change=self._store_changed,
            also=(self.approvals, self.inflight),
        )
        self.notifier = build_notifier(settings, self.metrics)
        self.tracer = build_tracer(settings)
        # The tool lock's memory of drifted tools: the response phase sees the listings,
        # the request phase denies calls of what drifted.
        self.drift = DriftWatch(self.config.current.pins)
        # OAuth access tokens: the trusted issuers' keys, fetched and kept (oauth.json)
        self.verifier = TokenVerifier()
        self.authorizer = Authorizer(
            self.config,
            self.counters,
            fail_open=settings.redis_fail_open,
            metrics=self.metrics,
            approvals=self.approvals,
            notify=self.notifier.notify if self.notifier is not None else None,
            inflight=self.inflight,
            drift=self.drift,
            verifier=self.verifier,
            tracer=self.tracer,
        )
        # The response phase (ext_proc): hidden tools filtered out of every answer, quota
        # given back for calls the server did not run, in-flight ids freed.
        self.responder = Responder(
            self.config,
            self.counters,
            metrics=self.metrics,
            inflight=self.inflight,
            drift=self.drift,
        )
        self.health = HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http_authz: asyncio.Server | None = None
        self.http_authz_port: int | None = None
        self._serving = True
        """What both health answers report: false while calls would fail closed, and from
        the start of a shutdown."""
        self._admin: uvicorn.Server | None = None
        self._admin_task: asyncio.Task[None] | None = None
        self.grpc_port: int | None = None

    async def _store_changed(self, ok: bool) -> None:
        """gRPC health follows readiness: NOT_SERVING while calls would fail closed."""
        self.metrics.store_up.set(1 if ok else 0)
        serving = ok or self.settings.redis_fail_open
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", AUTHZ_SERVICE):
            await self.health.set(service, status)

    async def start(self) -> None:
        s = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.grpc_max_message_bytes),
                ("grpc.max_send_message_length", s.grpc_max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        add_authorization_service(server, self.authorizer)
        add_processor_service(server, self.responder)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.grpc_port = server.add_insecure_port(s.grpc_address)
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC address {s.grpc_address}")
        await server.start()
        self._grpc = server
        for service in ("", AUTHZ_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if s.http_authz_host is not None and s.http_authz_port is not None:
            try:
                self._http_authz = await serve_http_authz(
                    self.authorizer,
                    s.http_authz_host,
                    s.http_authz_port,
                    serving=lambda: self._serving,
                )
            except OSError as exc:
                address = s.http_authz_address
                raise OSError(f"cannot bind HTTP ext_authz address {address}: {exc}") from exc
            self.http_authz_port = self._http_authz.sockets[0].getsockname()[1]

        admin = _AdminServer(
            # proxy headers off, a deadline per request, encoded slashes 404
            admin_config(
                admin_app(
                    self.config,
                    self.counters,
                    self.store_health,
                    s.redis_fail_open,
                    self.metrics,
                    approvals=self.approvals,
                    notifier=self.notifier,
                    approvals_remote=s.approvals_remote,
                ),
                host=s.admin_host,
                port=s.admin_port,
            )
        )
        self._admin = admin
        self._admin_task = asyncio.get_running_loop().create_task(admin.serve())
        self.config.start()
        self.store_health.start()
        if self.config.current.oauth is not None:
            self.verifier.prefetch(self.config.current.oauth)  # the first token need not wait
        log.info(
            "sidecar_started",
            grpc=f"{s.grpc_host}:{self.grpc_port}",
            http_authz=(
                f"{s.http_authz_host}:{self.http_authz_port}"
                if self.http_authz_port is not None
                else None
            ),
            admin=f"{s.admin_host}:{s.admin_port}",
            config=str(s.config_dir),
            grants=len(self.config.current.grants),
            policies=sorted(self.config.current.policies),
            counters=self.counters.describe(),
            on_store_failure="allow" if s.redis_fail_open else "deny",
            approvals=self.approvals.describe(),
            approvers=len(self.config.current.approvers),
            approval_webhook=self.notifier.describe() if self.notifier is not None else None,
            approval_digest_key="configured" if s.approval_digest_key else "per-process",
        )

    async def stop(self, grace: float = 2.0) -> None:
        self._serving = False
        await self.health.enter_graceful_shutdown()
        if self._http_authz is not None:
            self._http_authz.close()  # no new connections; checks in progress finish
        await self.config.stop()
        await self.store_health.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._admin is not None:
            self._admin.should_exit = True
        if self._admin_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._admin_task
        await self.responder.drain()  # give-backs of the last responses
        if self.notifier is not None:
            await self.notifier.drain()  # approval webhooks in flight
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # the last spans, exported
        await self.verifier.aclose()
        await self.approvals.close()
        await self.inflight.close()
        await self.counters.close()
        log.info("sidecar_stopped")


async def serve(settings: Settings) -> None:
    sidecar = Sidecar(settings)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    started = time.monotonic()
    await sidecar.stop()
    log.info("shutdown_complete", seconds=round(time.monotonic() - started, 3))
