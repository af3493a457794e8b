"""Every knob of the sidecar, parsed once into one typed object."""

from __future__ import annotations

import importlib.util
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_ADMIN",
    "DEFAULT_GRPC",
    "DIGEST_KEY_MIN",
    "Settings",
    "SettingsError",
    "check_webhook_url",
    "otlp_traces_url",
    "parse_hostport",
]


DEFAULT_GRPC = "127.0.0.1:9001"
DEFAULT_ADMIN = "127.0.0.1:9002"
DIGEST_KEY_MIN = 16
"""Characters an approval digest key needs at least."""


class SettingsError(ValueError):
    pass


def parse_hostport(value: str, *, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{option}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Settings:
    config_dir: Path
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 9001
    admin_host: str = "127.0.0.1"
    admin_port: int = 9002
    http_authz_host: str | None = None
    http_authz_port: int | None = None
    """Envoy's ext_authz over HTTP (`http_service`), beside gRPC; None: not served."""
    reload_interval: float = 1.0
    log_level: str = "info"
    grpc_max_message_bytes: int = 8 * 1024 * 1024
    redis_url: str | None = None
    """Shared counter store; None keeps the in-process memory store."""
    redis_cluster: bool = False
    redis_prefix: str = "mcp-authz"
    redis_timeout: float = 0.25
    """Seconds one Redis operation may take before the call fails closed (or open)."""
    approvals_remote: bool = False
    """Serve the approvals API to non-loopback clients too (default: loopback peers only)."""
    redis_fail_open: bool = False
    """Allow tool calls (logged as fail-open) when the counter store cannot answer."""
    approval_webhook: str | None = None
    """URL that is POSTed once per new pending approval (http:// or https://)."""
    approval_webhook_secret: str | None = field(default=None, repr=False)
    """The approval webhook's signing secret (environment only): a Standard Webhooks
    `whsec_<base64>` secret, or any other string, whose UTF-8 bytes are the key
    (`authz.approvals.webhook.webhook_key`)."""
    approval_digest_key: str | None = field(default=None, repr=False)
    """HMAC-SHA256 key of `arguments_hmac` in approvals, webhooks and audit events
    (environment only); None: a random key per process."""
    approval_max_pending: int = 100
    """Pending approvals one grant may have at once; past that, new held calls are denied."""
    approval_max_argument_bytes: int = 64 * 1024
    """Bytes of canonical arguments JSON a held call may carry; larger ones are denied."""
    otlp_traces_url: str | None = None
    """Where decision spans are exported (OTLP/HTTP); None: tracing is off."""
    service_name: str = "mcp-authz"
    """`service.name` of the spans (`OTEL_SERVICE_NAME`)."""

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def http_authz_address(self) -> str | None:
        if self.http_authz_host is None or self.http_authz_port is None:
            return None
        return f"{self.http_authz_host}:{self.http_authz_port}"

    @classmethod
    def build(
        cls,
        *,
        config: str | None,
        grpc: str | None,
        admin: str | None,
        reload_interval: float | None = None,
        log_level: str | None = None,
        redis_url: str | None = None,
        redis_cluster: bool | None = None,
        redis_prefix: str | None = None,
        redis_timeout: float | None = None,
        redis_fail_open: bool | None = None,
        approval_webhook: str | None = None,
        approvals_remote: bool | None = None,
        http_authz: str | None = None,
        otlp_endpoint: str | None = None,
    ) -> Settings:
        """Flags win over environment variables (MCP_AUTHZ_*), which win over defaults."""
        config_dir = config or os.environ.get("MCP_AUTHZ_CONFIG")
        if not config_dir:
            raise SettingsError("--config: a configuration directory is required")
        grpc_host, grpc_port = parse_hostport(
            grpc or os.environ.get("MCP_AUTHZ_GRPC", DEFAULT_GRPC), option="--grpc"
        )
        admin_host, admin_port = parse_hostport(
            admin or os.environ.get("MCP_AUTHZ_ADMIN", DEFAULT_ADMIN), option="--admin"
        )
        http_authz_host: str | None = None
        http_authz_port: int | None = None
        http_address = http_authz or os.environ.get("MCP_AUTHZ_HTTP_AUTHZ") or None
        if http_address is not None:
            http_authz_host, http_authz_port = parse_hostport(http_address, option="--http-authz")
        interval = reload_interval
        if interval is None:
            interval = float(os.environ.get("MCP_AUTHZ_RELOAD_INTERVAL", "1.0"))
        if interval <= 0:
            raise SettingsError("--reload-interval: must be positive")
        url = redis_url or os.environ.get("MCP_AUTHZ_REDIS_URL") or None
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"--redis-url: expected redis://, rediss:// or unix:// URL, got {url!r}"
            )
        timeout = redis_timeout
        if timeout is None:
            timeout = float(os.environ.get("MCP_AUTHZ_REDIS_TIMEOUT", "0.25"))
        if not 0 < timeout <= 10:
            raise SettingsError("--redis-timeout: must be between 0 and 10 seconds")
        prefix = redis_prefix or os.environ.get("MCP_AUTHZ_REDIS_PREFIX", "mcp-authz")
        if not prefix or any(c in prefix for c in "{} \t\r\n"):
            raise SettingsError("--redis-prefix: must be non-empty, without braces or spaces")
        webhook = approval_webhook or os.environ.get("MCP_AUTHZ_APPROVAL_WEBHOOK") or None
        if webhook is not None:
            check_webhook_url(webhook)
        # The secret comes from the environment only: command lines are visible to others.
        secret = os.environ.get("MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET") or None
        if secret is not None:
            # imported only when configured (httpx, standardwebhooks)
            from authz.approvals.webhook import webhook_key

            try:
                webhook_key(secret)
            except ValueError as exc:
                raise SettingsError(f"MCP_AUTHZ_APPROVAL_WEBHOOK_SECRET: {exc}") from None
        digest_key = os.environ.get("MCP_AUTHZ_APPROVAL_DIGEST_KEY") or None
        if digest_key is not None and len(digest_key) < DIGEST_KEY_MIN:
            raise SettingsError(
                f"MCP_AUTHZ_APPROVAL_DIGEST_KEY: at least {DIGEST_KEY_MIN} characters "
                "(e.g. openssl rand -hex 32)"
            )
        return cls(
            otlp_traces_url=otlp_traces_url(otlp_endpoint),
            service_name=os.environ.get("OTEL_SERVICE_NAME", "").strip() or "mcp-authz",
            approval_digest_key=digest_key,
            approval_max_pending=_positive_int(
                "MCP_AUTHZ_APPROVAL_MAX_PENDING", 100, maximum=100_000
            ),
            approval_max_argument_bytes=_positive_int(
                "MCP_AUTHZ_APPROVAL_MAX_ARGUMENT_BYTES", 64 * 1024, maximum=1024 * 1024
            ),
            approvals_remote=_flag(approvals_remote, "MCP_AUTHZ_APPROVALS_REMOTE"),
            approval_webhook=webhook,
            approval_webhook_secret=secret,
            redis_url=url,
            redis_cluster=_flag(redis_cluster, "MCP_AUTHZ_REDIS_CLUSTER"),
            redis_prefix=prefix,
            redis_timeout=timeout,
            redis_fail_open=_flag(redis_fail_open, "MCP_AUTHZ_REDIS_FAIL_OPEN"),
            config_dir=Path(config_dir),
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            admin_host=admin_host,
            admin_port=admin_port,
            http_authz_host=http_authz_host,
            http_authz_port=http_authz_port,
            reload_interval=interval,
            log_level=(log_level or os.environ.get("MCP_AUTHZ_LOG_LEVEL", "info")).lower(),
        )


def otlp_traces_url(flag: str | None) -> str | None:
    """The OTLP/HTTP traces URL tracing exports to, or None (tracing off).

    In order: `--otlp-endpoint` or `MCP_AUTHZ_OTLP_ENDPOINT` (a collector's base URL,
    `/v1/traces` appended unless present), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the traces
    URL as it is), `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL). `OTEL_SDK_DISABLED=true` or
    `OTEL_TRACES_EXPORTER=none` turn tracing off whatever is set.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    base = flag or os.environ.get("MCP_AUTHZ_OTLP_ENDPOINT") or None
    option = "--otlp-endpoint"
    url: str | None = None
    if base is None:
        url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip() or None
        option = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        if url is None:
            base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None
            option = "OTEL_EXPORTER_OTLP_ENDPOINT"
    if base is not None:
        base = base.strip()
        url = base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{option}: expected an http:// or https:// URL, got {url!r}")
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        raise SettingsError(
            f"{option}: tracing needs the OpenTelemetry SDK: pip install 'mcp-authz-sidecar[otel]'"
        )
    return url


def check_webhook_url(url: str) -> None:
    """Raise SettingsError unless `url` is an absolute http:// or https:// URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise SettingsError(f"--approval-webhook: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"--approval-webhook: expected an http:// or https:// URL with a host, got {url!r}"
        )
    if any(c.isspace() or ord(c) < 0x20 for c in url) or parts.fragment:
        raise SettingsError("--approval-webhook: no whitespace, control characters or #fragment")


def _positive_int(env: str, default: int, *, maximum: int) -> int:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise SettingsError(f"{env}: expected a whole number from 1 to {maximum}, got {raw!r}")
    return int(raw)


def _flag(value: bool | None, env: str) -> bool:
    if value is not None:
        return value
    return os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")
