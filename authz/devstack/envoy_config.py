"""The Envoy configuration: one source of truth, rendered for other addresses.

``deploy/envoy.yaml`` is written for the docker-compose layout (listener ``0.0.0.0:10000``,
clusters ``authz:9001`` and ``imagegen:8000``, admin ``127.0.0.1:9901``). The local demo and the
end-to-end tests run the same configuration on loopback ports: :func:`render_envoy_config`
rewrites only those addresses and ports, found by structure (the listener and the clusters by
name), and leaves every other setting exactly as in the file.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "AUTHZ_CLUSTER",
    "LISTENER_NAME",
    "UPSTREAM_CLUSTER",
    "EnvoyConfig",
    "EnvoyConfigError",
    "load_envoy_config",
    "render_envoy_config",
    "repo_envoy_config_path",
    "write_envoy_config",
]


LISTENER_NAME = "mcp_ingress"
AUTHZ_CLUSTER = "mcp_authz"
UPSTREAM_CLUSTER = "imagegen_upstream"

EnvoyConfig = dict[str, Any]


class EnvoyConfigError(ValueError):
    """The Envoy configuration does not have the expected shape, or an argument is invalid."""


def repo_envoy_config_path() -> Path:
    """``deploy/envoy.yaml`` of this repository."""
    return Path(__file__).resolve().parents[2] / "deploy" / "envoy.yaml"


def load_envoy_config(source: Path | None = None) -> EnvoyConfig:
    """Parse an Envoy YAML (or JSON) bootstrap file into plain dicts and lists."""
    path = source if source is not None else repo_envoy_config_path()
    with path.open(encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise EnvoyConfigError(f"{path}: expected a mapping at the top level")
    return cfg


def render_envoy_config(
    *,
    listen_host: str,
    listen_port: int,
    admin_port: int,
    authz_host: str,
    authz_port: int,
    upstream_host: str,
    upstream_port: int,
    extra_authz_ports: Sequence[int] = (),
    source: Path | None = None,
) -> EnvoyConfig:
    """Load ``source`` (default: :func:`repo_envoy_config_path`) and retarget it.

    Changes exactly these values and nothing else:

    - ``admin.address.socket_address.port_value`` (the admin host stays loopback);
    - the ``mcp_ingress`` listener's address and port;
    - the single endpoint of the ``mcp_authz`` and ``imagegen_upstream`` clusters;
    - with ``extra_authz_ports``, further ``mcp_authz`` endpoints on ``authz_host`` (several
      sidecar replicas behind one Envoy), copies of the first one but for the port.
    """
    for name, host in (
        ("listen_host", listen_host),
        ("authz_host", authz_host),
        ("upstream_host", upstream_host),
    ):
        if not host:
            raise EnvoyConfigError(f"{name} must not be empty")
    for name, port in (
        ("listen_port", listen_port),
        ("admin_port", admin_port),
        ("authz_port", authz_port),
        ("upstream_port", upstream_port),
        *(("extra_authz_ports", extra) for extra in extra_authz_ports),
    ):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise EnvoyConfigError(f"{name} must be a TCP port (1-65535), got {port!r}")

    cfg = load_envoy_config(source)
    admin_addr = _socket_address(_get(cfg, "admin", "address"), "admin.address")
    admin_addr["port_value"] = admin_port

    resources = _get(cfg, "static_resources")
    listener = _named(_get(resources, "listeners"), LISTENER_NAME, "listener")
    _retarget(
        _socket_address(_get(listener, "address"), f"listener {LISTENER_NAME}"),
        listen_host,
        listen_port,
    )

    clusters = _get(resources, "clusters")
    for cluster_name, host, port in (
        (AUTHZ_CLUSTER, authz_host, authz_port),
        (UPSTREAM_CLUSTER, upstream_host, upstream_port),
    ):
        cluster = _named(clusters, cluster_name, "cluster")
        _retarget(_single_endpoint(cluster, cluster_name), host, port)
    if extra_authz_ports:
        _add_endpoints(_named(clusters, AUTHZ_CLUSTER, "cluster"), extra_authz_ports)
    return cfg


def _add_endpoints(cluster: dict[str, Any], ports: Sequence[int]) -> None:
    group = next(g for g in cluster["load_assignment"]["endpoints"] if g.get("lb_endpoints"))
    template = group["lb_endpoints"][0]
    for port in ports:
        endpoint = copy.deepcopy(template)
        endpoint["endpoint"]["address"]["socket_address"]["port_value"] = port
        group["lb_endpoints"].append(endpoint)


def write_envoy_config(cfg: EnvoyConfig, path: Path) -> None:
    """Write ``cfg`` atomically; JSON for a ``.json`` path, YAML otherwise.

    Envoy picks the parser by file extension, so the extension must match the format.
    """
    if path.suffix == ".json":
        text = json.dumps(cfg, indent=2) + "\n"
    else:
        text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _get(node: Any, *keys: str) -> Any:
    where = ""
    for key in keys:
        where = f"{where}.{key}" if where else key
        if not isinstance(node, dict) or key not in node:
            raise EnvoyConfigError(f"Envoy config has no {where!r}")
        node = node[key]
    return node


def _named(items: Any, name: str, kind: str) -> dict[str, Any]:
    if not isinstance(items, list):
        raise EnvoyConfigError(f"Envoy config: expected a list of {kind}s")
    found = [item for item in items if isinstance(item, dict) and item.get("name") == name]
    if len(found) != 1:
        raise EnvoyConfigError(f"Envoy config must have exactly one {kind} named {name!r}")
    return found[0]


def _socket_address(address: Any, where: str) -> dict[str, Any]:
    sock = _get(address, "socket_address") if isinstance(address, dict) else None
    if not isinstance(sock, dict):
        raise EnvoyConfigError(f"{where}: expected a socket_address")
    return sock


def _single_endpoint(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    groups = _get(cluster, "load_assignment", "endpoints")
    lb_endpoints = [
        lb for group in groups if isinstance(group, dict) for lb in group.get("lb_endpoints", [])
    ]
    if len(lb_endpoints) != 1:
        raise EnvoyConfigError(f"cluster {name!r} must have exactly one endpoint")
    return _socket_address(_get(lb_endpoints[0], "endpoint", "address"), f"cluster {name}")


def _retarget(sock: dict[str, Any], host: str, port: int) -> None:
    sock["address"] = host
    sock["port_value"] = port
