"""The Envoy configuration: one source of truth, rendered for other addresses and for the
HTTP ext_authz transport.

``deploy/envoy.yaml`` is written for the docker-compose layout (listener ``0.0.0.0:10000``,
clusters ``authz:9001`` and ``imagegen:8000``, admin ``127.0.0.1:9901``). The local demo and the
end-to-end tests run the same configuration on loopback ports: :func:`render_envoy_config`
rewrites only those addresses and ports, found by structure (the listener and the clusters by
name), and leaves every other setting exactly as in the file.

``deploy/envoy-http.yaml`` is the same layout with ext_authz over HTTP (``http_service``) to the
sidecar's HTTP port (cluster ``mcp_authz_http``, ``authz:9003``); ext_proc stays on gRPC. It is
exactly :func:`http_transport` of ``deploy/envoy.yaml`` (tests/deploy/test_envoy_http.py fails
when the two differ), and :func:`http_transport` turns any gRPC layout into its HTTP twin
(``deploy/envoy-mesh.yaml`` too, for the tests).
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

from authz.devstack.assets import asset_path
from authz.envoy.denial import APPROVAL_HEADER, DECISION_HEADER
from authz.envoy.http_authz import (
    CHECK_PREFIX,
    CONTEXT_HEADER,
    FAIL_OPEN_HEADER,
    GRANT_HEADER,
    HEALTH_PATH,
    HIDES_HEADER,
    JWT_HEADER,
    OUTCOME_HEADER,
    PEER_HEADER,
    WIRE_STATUS,
)

__all__ = [
    "AUTHZ_ADMIN_CLUSTER",
    "AUTHZ_CLUSTER",
    "HTTP_AUTHZ_CLUSTER",
    "LISTENER_NAME",
    "TRANSPORTS",
    "UPSTREAM_CLUSTER",
    "EnvoyConfig",
    "EnvoyConfigError",
    "http_transport",
    "is_http_transport",
    "load_envoy_config",
    "render_envoy_config",
    "repo_envoy_config_path",
    "write_envoy_config",
]


LISTENER_NAME = "mcp_ingress"
AUTHZ_CLUSTER = "mcp_authz"
AUTHZ_ADMIN_CLUSTER = "mcp_authz_admin"
"""The sidecar's admin HTTP port: Envoy routes the protected resource metadata there."""
HTTP_AUTHZ_CLUSTER = "mcp_authz_http"
"""The sidecar's HTTP ext_authz port (``--http-authz``) in deploy/envoy-http.yaml."""
UPSTREAM_CLUSTER = "imagegen_upstream"
TRANSPORTS = ("grpc", "http")
"""How Envoy asks the sidecar for a decision: ext_authz over gRPC or over HTTP."""
HTTP_AUTHZ_PORT = 9003
"""The sidecar's HTTP ext_authz port in the compose, Kubernetes and Istio layouts."""

EXT_AUTHZ = "envoy.filters.http.ext_authz"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
_TYPE = "type.googleapis.com/envoy.extensions."
_METADATA_KEYS = {"decision_id": DECISION_HEADER, "decision": OUTCOME_HEADER, "hides": HIDES_HEADER}
"""ext_authz metadata keys over gRPC (the sidecar's Struct) → over HTTP (the header the
sidecar answers with, `dynamic_metadata_from_headers`; the value is always a string)."""

EnvoyConfig = dict[str, Any]


class EnvoyConfigError(ValueError):
    """The Envoy configuration does not have the expected shape, or an argument is invalid."""


def repo_envoy_config_path(transport: str = "grpc") -> Path:
    """``deploy/envoy.yaml`` (``deploy/envoy-http.yaml`` for "http") as installed: the file
    in ``deploy/`` in a checkout, its copy in the package data of a wheel
    (:mod:`authz.devstack.assets`)."""
    return asset_path("envoy-http.yaml" if transport == "http" else "envoy.yaml")


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
    transport: str = "grpc",
    authz_http_port: int | None = None,
    extra_authz_http_ports: Sequence[int] = (),
    authz_admin_port: int | None = None,
) -> EnvoyConfig:
    """Load ``source`` (default: :func:`repo_envoy_config_path` of ``transport``) and
    retarget it.

    Changes exactly these values and nothing else:

    - ``admin.address.socket_address.port_value`` (the admin host stays loopback);
    - the ``mcp_ingress`` listener's address and port;
    - the single endpoint of the ``mcp_authz`` and ``imagegen_upstream`` clusters, and of
      ``mcp_authz_http`` (at ``authz_http_port``) when ext_authz speaks HTTP;
    - the host of the ``mcp_authz_admin`` cluster's endpoint (the sidecar's admin port,
      where the protected resource metadata is served), when the layout has one: the
      ``authz_host``, at ``authz_admin_port`` (the file's port when None);
    - with ``extra_authz_ports`` (and ``extra_authz_http_ports``), further endpoints of
      those clusters on ``authz_host`` (several sidecar replicas behind one Envoy), copies
      of the first one but for the port.

    With ``transport="http"`` a gRPC layout (``source`` such as deploy/envoy-mesh.yaml) is
    first turned into its HTTP twin (:func:`http_transport`); a layout that already speaks
    HTTP is used as it is.
    """
    if transport not in TRANSPORTS:
        raise EnvoyConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
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
        *(("authz_http_port", p) for p in (authz_http_port,) if transport == "http"),
        *(("extra_authz_http_ports", extra) for extra in extra_authz_http_ports),
        *(("authz_admin_port", p) for p in (authz_admin_port,) if p is not None),
    ):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise EnvoyConfigError(f"{name} must be a TCP port (1-65535), got {port!r}")
    if len(extra_authz_http_ports) != (len(extra_authz_ports) if transport == "http" else 0):
        raise EnvoyConfigError("extra_authz_http_ports: one per extra replica, HTTP only")

    cfg = load_envoy_config(source if source is not None else repo_envoy_config_path(transport))
    if transport == "http" and not is_http_transport(cfg):
        cfg = http_transport(cfg)
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
    if any(isinstance(c, dict) and c.get("name") == AUTHZ_ADMIN_CLUSTER for c in clusters):
        admin_cluster = _named(clusters, AUTHZ_ADMIN_CLUSTER, "cluster")
        admin_sock = _single_endpoint(admin_cluster, AUTHZ_ADMIN_CLUSTER)
        port = authz_admin_port if authz_admin_port is not None else admin_sock["port_value"]
        _retarget(admin_sock, authz_host, port)
    if transport == "http":
        assert authz_http_port is not None
        http_cluster = _named(clusters, HTTP_AUTHZ_CLUSTER, "cluster")
        _retarget(_single_endpoint(http_cluster, HTTP_AUTHZ_CLUSTER), authz_host, authz_http_port)
        if extra_authz_http_ports:
            _add_endpoints(http_cluster, extra_authz_http_ports)
    elif is_http_transport(cfg):
        raise EnvoyConfigError(f"{source}: ext_authz speaks HTTP; render it with transport='http'")
    return cfg


# -- the HTTP transport ---------------------------------------------------------------------


def _ext_authz(cfg: EnvoyConfig) -> dict[str, Any]:
    listener = _named(_get(cfg, "static_resources", "listeners"), LISTENER_NAME, "listener")
    hcm = _get(listener["filter_chains"][0]["filters"][0], "typed_config")
    found = [f for f in _get(hcm, "http_filters") if f.get("name") == EXT_AUTHZ]
    if len(found) != 1:
        raise EnvoyConfigError(f"listener {LISTENER_NAME!r} must have one {EXT_AUTHZ} filter")
    config: dict[str, Any] = found[0]["typed_config"]
    return config


def is_http_transport(cfg: EnvoyConfig) -> bool:
    """Whether the listener's ext_authz filter speaks HTTP (``http_service``)."""
    return "http_service" in _ext_authz(cfg)


def _exact(*names: str) -> dict[str, Any]:
    return {"patterns": [{"exact": name} for name in names]}


def http_transport(grpc_cfg: EnvoyConfig) -> EnvoyConfig:
    """The HTTP ext_authz twin of a gRPC layout (a new config; ``grpc_cfg`` is unchanged).

    Exactly these changes (deploy/envoy-http.yaml explains each):

    - ext_authz: ``http_service`` to the ``mcp_authz_http`` cluster instead of
      ``grpc_service`` (same timeout), the check's path under ``/check``, every client header
      sent, the identity Envoy established added as headers (the peer certificate's URI SANs,
      the jwt_authn metadata), the answer's headers routed to the upstream, the client and the
      dynamic metadata; ``metadata_context_namespaces`` and
      ``route_metadata_context_namespaces`` (gRPC only) dropped;
    - the metadata keys the local-reply mappers and the ``hides`` route match become the
      sidecar's header names (string values), and two mappers first turn the sidecar's 299 and
      298 back into 200 and 503;
    - a cluster ``mcp_authz_http`` beside ``mcp_authz`` (which ext_proc still uses): HTTP/1.1,
      the same endpoint host on port 9003, an HTTP health check of ``/healthz``.
    """
    if is_http_transport(grpc_cfg):
        raise EnvoyConfigError("ext_authz already speaks HTTP")
    cfg = copy.deepcopy(grpc_cfg)
    ext_authz = _ext_authz(cfg)
    grpc_service = ext_authz.pop("grpc_service")
    ext_authz.pop("metadata_context_namespaces", None)
    ext_authz.pop("route_metadata_context_namespaces", None)
    services = {
        "http_service": {
            "server_uri": {
                "uri": f"http://{HTTP_AUTHZ_CLUSTER}",
                "cluster": HTTP_AUTHZ_CLUSTER,
                "timeout": grpc_service["timeout"],
            },
            "path_prefix": CHECK_PREFIX,
            "authorization_request": {
                "headers_to_add": [
                    {"key": PEER_HEADER, "value": "%DOWNSTREAM_PEER_URI_SAN%"},
                    {
                        "key": JWT_HEADER,
                        "value": "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn)%",
                    },
                ],
            },
            "authorization_response": {
                "allowed_upstream_headers": _exact(GRANT_HEADER, DECISION_HEADER),
                "allowed_client_headers": _exact(
                    "content-type",
                    DECISION_HEADER,
                    APPROVAL_HEADER,
                    "www-authenticate",
                    "retry-after",
                    "allow",
                ),
                "allowed_client_headers_on_success": _exact(DECISION_HEADER, FAIL_OPEN_HEADER),
                "dynamic_metadata_from_headers": _exact(*_METADATA_KEYS.values(), CONTEXT_HEADER),
            },
        },
        "allowed_headers": {"patterns": [{"safe_regex": {"regex": ".*"}}]},
    }
    # the services right after transport_api_version, where grpc_service was
    rebuilt: dict[str, Any] = {}
    for key, value in ext_authz.items():
        rebuilt[key] = value
        if key == "transport_api_version":
            rebuilt.update(services)
    ext_authz.clear()
    ext_authz.update(rebuilt)

    listener = _named(_get(cfg, "static_resources", "listeners"), LISTENER_NAME, "listener")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    mappers = _get(hcm, "local_reply_config", "mappers")
    _rename_metadata_keys(mappers)
    _rename_metadata_keys(_get(hcm, "route_config"))
    deny = {
        "metadata_filter": {
            "matcher": {
                "filter": EXT_AUTHZ,
                "path": [{"key": _METADATA_KEYS["decision"]}],
                "value": {"string_match": {"exact": "deny"}},
            },
            "match_if_key_not_found": False,
        }
    }
    mappers[:0] = [
        {
            "filter": {
                "and_filter": {
                    "filters": [
                        {
                            "status_code_filter": {
                                "comparison": {
                                    "op": "EQ",
                                    "value": {
                                        "default_value": wire,
                                        "runtime_key": f"mcp_authz.local_reply.status_{wire}",
                                    },
                                }
                            }
                        },
                        copy.deepcopy(deny),
                    ]
                }
            },
            "status_code": status,
        }
        for status, wire in WIRE_STATUS.items()
    ]

    clusters = _get(cfg, "static_resources", "clusters")
    grpc_cluster = _named(clusters, AUTHZ_CLUSTER, "cluster")
    http_cluster = copy.deepcopy(grpc_cluster)
    http_cluster["name"] = HTTP_AUTHZ_CLUSTER
    http_cluster["load_assignment"]["cluster_name"] = HTTP_AUTHZ_CLUSTER
    http_cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPE + "upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }
    for check in http_cluster.get("health_checks", []):
        check.pop("grpc_health_check", None)
        check["http_health_check"] = {"path": HEALTH_PATH}
    for group in http_cluster["load_assignment"]["endpoints"]:
        for endpoint in group.get("lb_endpoints", []):
            endpoint["endpoint"]["address"]["socket_address"]["port_value"] = HTTP_AUTHZ_PORT
    clusters.insert(clusters.index(grpc_cluster) + 1, http_cluster)
    return cfg


def _rename_metadata_keys(node: Any) -> None:
    """Every ext_authz metadata path in `node` with a gRPC key: the HTTP key, and a
    `bool_match: true` (the `hides` route) the string "true"."""
    if isinstance(node, list):
        for item in node:
            _rename_metadata_keys(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("filter") == EXT_AUTHZ and isinstance(node.get("path"), list):
        for segment in node["path"]:
            if segment.get("key") in _METADATA_KEYS:
                segment["key"] = _METADATA_KEYS[segment["key"]]
        if node.get("value") == {"bool_match": True}:
            node["value"] = {"string_match": {"exact": "true"}}
    for value in node.values():
        _rename_metadata_keys(value)


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
