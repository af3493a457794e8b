"""deploy/envoy-http.yaml: ext_authz over HTTP, exactly the gRPC layout turned by
`http_transport`, accepted by the real Envoy 1.40, and the mesh layout's twin too.

What the layouts promise a client cannot undo: the headers only Envoy or the sidecar set are
removed from the client's request before ext_authz, in every layout; the two mappers that turn
the sidecar's 299 and 298 back match only the sidecar's own denials; and a failed check is a
503 denial, never one of those statuses. (tests/e2e/test_http_transport.py checks the same
against the running Envoy.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from authz.devstack.envoy_config import (
    HTTP_AUTHZ_CLUSTER,
    EnvoyConfig,
    http_transport,
    is_http_transport,
    load_envoy_config,
    render_envoy_config,
    write_envoy_config,
)
from authz.devstack.stack import LOOPBACK, free_port
from authz.envoy.http_authz import CONTEXT_HEADER, OUTCOME_HEADER, WIRE_STATUS
from tests.e2e.test_mesh_identity import make_mesh, use_mesh_files

from .support import DEPLOY, envoy_validate

GRPC = DEPLOY / "envoy.yaml"
HTTP = DEPLOY / "envoy-http.yaml"
MESH = DEPLOY / "envoy-mesh.yaml"
EXT_AUTHZ = "envoy.filters.http.ext_authz"

SIDECAR_ONLY = ("x-mcp-authz-", "x-mcp-grant", "x-envoy-auth-partial-body")
"""Names (the first a prefix) a client may never send past Envoy's first filter."""


def hcm(cfg: EnvoyConfig) -> dict[str, Any]:
    listener = cfg["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def filter_config(cfg: EnvoyConfig, name: str) -> dict[str, Any]:
    [found] = [f for f in hcm(cfg)["http_filters"] if f["name"] == name]
    typed: dict[str, Any] = found["typed_config"]
    return typed


def layouts() -> dict[str, EnvoyConfig]:
    return {
        "grpc": load_envoy_config(GRPC),
        "http": load_envoy_config(HTTP),
        "mesh": load_envoy_config(MESH),
        "mesh-http": http_transport(load_envoy_config(MESH)),
    }


def test_the_http_layout_is_the_grpc_layout_over_http() -> None:
    grpc = load_envoy_config(GRPC)
    assert not is_http_transport(grpc)
    assert is_http_transport(load_envoy_config(HTTP))
    assert load_envoy_config(HTTP) == http_transport(grpc)
    assert load_envoy_config(GRPC) == grpc  # http_transport leaves its argument alone


@pytest.mark.parametrize("name", ["grpc", "http", "mesh", "mesh-http"])
def test_client_headers_only_envoy_or_the_sidecar_set_are_removed_first(name: str) -> None:
    cfg = layouts()[name]
    filters = [f["name"] for f in hcm(cfg)["http_filters"]]
    assert filters[0] == "envoy.filters.http.header_mutation"
    assert filters.index(EXT_AUTHZ) > 0
    mutations = filter_config(cfg, "envoy.filters.http.header_mutation")["mutations"]
    assert mutations["request_mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": SIDECAR_ONLY[0]}}},
        *({"remove": header} for header in SIDECAR_ONLY[1:]),
    ]


@pytest.mark.parametrize("name", ["http", "mesh-http"])
def test_the_status_mappers_match_only_the_sidecars_denials(name: str) -> None:
    cfg = layouts()[name]
    mappers = hcm(cfg)["local_reply_config"]["mappers"]
    deny = {
        "metadata_filter": {
            "matcher": {
                "filter": EXT_AUTHZ,
                "path": [{"key": OUTCOME_HEADER}],
                "value": {"string_match": {"exact": "deny"}},
            },
            "match_if_key_not_found": False,
        }
    }
    for mapper, (status, wire) in zip(
        mappers[: len(WIRE_STATUS)], WIRE_STATUS.items(), strict=True
    ):
        assert mapper == {
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
                        deny,
                    ]
                }
            },
            "status_code": status,
        }
    # no other mapper sets a status, and a failed check is a denial Envoy makes itself
    assert [m for m in mappers[len(WIRE_STATUS) :] if "status_code" in m] == []
    ext_authz = filter_config(cfg, EXT_AUTHZ)
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    response = ext_authz["http_service"]["authorization_response"]
    assert CONTEXT_HEADER in [
        p["exact"] for p in response["dynamic_metadata_from_headers"]["patterns"]
    ]
    # what the sidecar tells Envoy about a decision never reaches the client or the upstream
    for kept in ("allowed_client_headers", "allowed_client_headers_on_success"):
        names = {p["exact"] for p in response[kept]["patterns"]}
        assert not names & {CONTEXT_HEADER, OUTCOME_HEADER, "x-mcp-grant"}, kept
    upstream = {p["exact"] for p in response["allowed_upstream_headers"]["patterns"]}
    assert upstream == {"x-mcp-grant", "x-mcp-authz-decision-id"}


@pytest.mark.processes
def test_the_http_layout_passes_envoy_validate() -> None:
    result = envoy_validate(HTTP)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.processes
def test_the_mesh_twin_renders_and_passes_envoy_validate(tmp_path: Path) -> None:
    """deploy/envoy-mesh.yaml over HTTP, as the mesh tests run it: rendered for loopback
    ports with generated certificates (the shipped placeholder paths do not exist here)."""
    mesh = make_mesh(tmp_path / "pki")
    http_port = free_port()
    cfg = render_envoy_config(
        listen_host=LOOPBACK,
        listen_port=free_port(),
        admin_port=free_port(),
        authz_host=LOOPBACK,
        authz_port=free_port(),
        upstream_host=LOOPBACK,
        upstream_port=free_port(),
        source=MESH,
        transport="http",
        authz_http_port=http_port,
    )
    use_mesh_files(cfg, mesh)
    assert is_http_transport(cfg)
    [cluster] = [c for c in cfg["static_resources"]["clusters"] if c["name"] == HTTP_AUTHZ_CLUSTER]
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": LOOPBACK,
        "port_value": http_port,
    }
    path = tmp_path / "envoy-mesh-http.yaml"
    write_envoy_config(cfg, path)
    assert yaml.safe_load(path.read_text()) == cfg
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
