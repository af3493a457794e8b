"""Every server knob in one typed object, parsed once (CLI flags over environment)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mcp.server.transport_security import TransportSecuritySettings

LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]")
"""Always accepted in the Host header, with or without a port."""

ENV_ALLOWED_HOSTS = "IMAGEGEN_ALLOWED_HOSTS"
ENV_RECORD_FILE = "IMAGEGEN_RECORD_FILE"
ENV_OUTPUTS = "IMAGEGEN_OUTPUTS"
ENV_EVENT_STORE = "IMAGEGEN_EVENT_STORE"
ENV_DRIFT = "IMAGEGEN_DRIFT"
EVENT_STORES = ("none", "memory")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    outputs: Path = Path("outputs")
    json_response: bool = False
    stateless_http: bool = False
    allowed_hosts: tuple[str, ...] = ()
    """Extra Host values (beyond loopback) to accept; `*` disables the Host check."""
    record_file: Path | None = None
    log_level: str = "INFO"
    path: str = "/mcp"
    event_store: str = "none"
    """`memory`: keep sent SSE events so clients can resume (`Last-Event-ID`); `none`."""
    drift: str | None = None
    """A tool whose description gains an instruction aimed at the model (a "rug pull"), to
    show tool pinning at work; None: the descriptions as published."""

    def __post_init__(self) -> None:
        if self.event_store not in EVENT_STORES:
            raise ValueError(f"event store must be one of {EVENT_STORES}: {self.event_store!r}")

    @property
    def host_check_disabled(self) -> bool:
        return "*" in self.allowed_hosts

    def transport_security(self) -> TransportSecuritySettings:
        """DNS-rebinding protection settings for the Host Envoy (or a client) will send."""
        if self.host_check_disabled:
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        hosts = expand_host_patterns((*LOOPBACK_HOSTS, *self.allowed_hosts))
        origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
        )


def split_csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def expand_host_patterns(hosts: Iterable[str]) -> list[str]:
    """`name` → `name` and `name:*`; `name:port` and `name:*` are kept as given."""
    out: list[str] = []
    for host in hosts:
        has_port = ":" in host.rsplit("]", 1)[-1]
        for item in (host,) if has_port else (host, f"{host}:*"):
            if item not in out:
                out.append(item)
    return out


def from_env(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from the environment, then apply explicit (CLI) overrides."""
    env = os.environ if env is None else env
    record = env.get(ENV_RECORD_FILE)
    outputs = env.get(ENV_OUTPUTS) or env.get("OUTPUT_DIR") or "outputs"
    values: dict[str, object] = {
        "outputs": Path(outputs),
        "allowed_hosts": split_csv(env.get(ENV_ALLOWED_HOSTS)),
        "record_file": Path(record) if record else None,
        "event_store": env.get(ENV_EVENT_STORE) or "none",
        "drift": env.get(ENV_DRIFT) or None,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]
