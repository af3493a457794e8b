"""deploy/docker-compose.yaml: the real docker-compose resolves it, and it matches envoy.yaml;
with the override deploy/docker-compose.http.yaml, it matches envoy-http.yaml.

`docker-compose config` (Debian's docker-compose 1.29, installed by `make system-deps`)
validates the files against its schema, merges the override, interpolates variables and
resolves paths without a Docker engine. Both the short syntax it prints and Compose v2's long
syntax are understood here, so the tests also hold if `docker-compose` is a v2 binary. Every
test that takes `resolved` runs once per transport: the gRPC layout (the compose file alone)
and the HTTP one (the compose file and its override).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from authz.devstack.envoy_config import (
    HTTP_AUTHZ_CLUSTER,
    TRANSPORTS,
    load_envoy_config,
    repo_envoy_config_path,
)
from authz.envoy.http_authz import HEALTH_PATH

from .support import (
    AUTHZ_CLUSTER,
    DEPLOY,
    REPO,
    UPSTREAM_CLUSTER,
    envoy_cluster_address,
    envoy_listener_address,
    host_port,
    option,
)

COMPOSE_FILE = DEPLOY / "docker-compose.yaml"
HTTP_OVERRIDE = DEPLOY / "docker-compose.http.yaml"
COMPOSE_FILES = {"grpc": (COMPOSE_FILE,), "http": (COMPOSE_FILE, HTTP_OVERRIDE)}
"""The files `docker compose -f ... -f ...` is given for each ext_authz transport."""
SERVICES = {"envoy", "authz", "imagegen", "gemini", "redis"}
PASSED_THROUGH = (
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "IMAGEGEN_ALLOWED_HOSTS",
    "OPENAI_API_KEY",
    "REPLICATE_API_TOKEN",
    "MCP_AUTHZ_BIND",
    "MCP_AUTHZ_PORT",
)


COMPOSE_PLUGIN = Path("/usr/libexec/docker/cli-plugins/docker-compose")
"""Where Debian's Compose v2 package puts the binary (it also runs standalone)."""


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None and os.access(COMPOSE_PLUGIN, os.X_OK):
        found = str(COMPOSE_PLUGIN)
    if found is None:
        pytest.fail(
            "docker-compose not found: `make system-deps` installs Debian's docker-compose "
            "(apt-get install docker-compose)"
        )
    return found


def compose_config(transport: str = "grpc", **env: str) -> dict[str, Any]:
    """`docker-compose -f deploy/docker-compose.yaml [-f the override] config`, parsed;
    fails on exit != 0."""
    clean = {k: v for k, v in os.environ.items() if k not in PASSED_THROUGH}
    clean.pop("COMPOSE_FILE", None)
    clean.pop("COMPOSE_PROJECT_NAME", None)
    files = [arg for path in COMPOSE_FILES[transport] for arg in ("-f", str(path))]
    proc = subprocess.run(
        [docker_compose(), *files, "config"],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    resolved = yaml.safe_load(proc.stdout)
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def resolved(transport: str) -> dict[str, Any]:
    return compose_config(transport)


@dataclass(frozen=True)
class Port:
    host_ip: str
    published: int
    target: int


def ports(service: dict[str, Any]) -> list[Port]:
    out = []
    for item in service.get("ports", []):
        if isinstance(item, dict):  # Compose v2 long syntax
            out.append(Port(item.get("host_ip", ""), int(item["published"]), int(item["target"])))
        else:  # "HOST_IP:PUBLISHED:TARGET[/PROTO]"
            spec = str(item).split("/", 1)[0]
            parts = spec.rsplit(":", 2)
            host_ip = parts[0] if len(parts) == 3 else ""
            out.append(Port(host_ip, int(parts[-2]), int(parts[-1])))
    return out


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            out.append(Mount(item["source"], item["target"], bool(item.get("read_only"))))
        else:
            parts = str(item).split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            out.append(Mount(parts[0], parts[1], "ro" in mode.split(",")))
    return out


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    assert isinstance(cmd, list), "commands are written in exec form (a list)"
    return [str(arg) for arg in cmd]


def test_config_resolves_to_the_five_services(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == SERVICES


def test_only_envoy_is_published_on_10000(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert ports(services["envoy"]) == [Port("127.0.0.1", 10000, 10000)]
    for name in SERVICES - {"envoy"}:
        assert ports(services[name]) == [], f"{name} must not be published"


@pytest.mark.processes
def test_published_port_can_be_moved() -> None:
    """MCP_AUTHZ_PORT publishes Envoy on another host port (0: one Docker picks); Envoy
    still listens on 10000 inside its container."""
    moved = compose_config(MCP_AUTHZ_PORT="18080")
    assert ports(moved["services"]["envoy"]) == [Port("127.0.0.1", 18080, 10000)]


@pytest.mark.processes
def test_bind_address_can_be_opened_up() -> None:
    opened = compose_config(MCP_AUTHZ_BIND="0.0.0.0", GOOGLE_API_KEY="real-key")
    assert ports(opened["services"]["envoy"]) == [Port("0.0.0.0", 10000, 10000)]
    # A key passed in reaches the upstream (whose entrypoint then skips the offline endpoint).
    assert opened["services"]["imagegen"]["environment"]["GOOGLE_API_KEY"] == "real-key"


def test_envoy_and_compose_addresses_agree(resolved: dict[str, Any], transport: str) -> None:
    """deploy/envoy.yaml (envoy-http.yaml), unchanged, must find the services where compose
    puts them. ext_proc calls the gRPC port in both layouts."""
    services = resolved["services"]
    envoy = load_envoy_config(repo_envoy_config_path(transport))

    authz_host, authz_port = envoy_cluster_address(envoy, AUTHZ_CLUSTER)
    assert authz_host == "authz" and authz_host in services
    grpc_host, grpc_port = host_port(option(command(services["authz"]), "--grpc"))
    assert grpc_port == authz_port
    assert grpc_host in ("0.0.0.0", "authz"), "the sidecar must listen on the compose network"

    upstream_host, upstream_port = envoy_cluster_address(envoy, UPSTREAM_CLUSTER)
    assert upstream_host == "imagegen" and upstream_host in services
    imagegen = command(services["imagegen"])
    assert int(option(imagegen, "--port")) == upstream_port
    assert option(imagegen, "--host") == "0.0.0.0"

    listen_host, listen_port = envoy_listener_address(envoy)
    assert listen_host == "0.0.0.0"
    assert [p.target for p in ports(services["envoy"])] == [listen_port]
    assert [p.published for p in ports(services["envoy"])] == [10000]

    args = command(services["authz"])
    if transport == "grpc":
        assert "--http-authz" not in args, "the gRPC layout serves no HTTP ext_authz"
        return
    http_host, http_port = envoy_cluster_address(envoy, HTTP_AUTHZ_CLUSTER)
    assert http_host == authz_host
    listen_http_host, listen_http_port = host_port(option(args, "--http-authz"))
    assert listen_http_port == http_port
    assert listen_http_host == "0.0.0.0", "the sidecar must listen on the compose network"
    assert str(http_port) in [str(port) for port in services["authz"]["expose"]]


def test_envoy_runs_the_repository_config_unchanged(
    resolved: dict[str, Any], transport: str
) -> None:
    envoy = resolved["services"]["envoy"]
    assert envoy["image"] == "envoyproxy/envoy:v1.40.0"
    config_mounts = [m for m in mounts(envoy) if m.target == "/etc/envoy/envoy.yaml"]
    assert len(config_mounts) == 1
    assert Path(config_mounts[0].source) == repo_envoy_config_path(transport)
    assert config_mounts[0].read_only
    assert option(command(envoy), "-c") == "/etc/envoy/envoy.yaml"


def test_policies_and_grants_are_mounted_read_only(resolved: dict[str, Any]) -> None:
    authz = resolved["services"]["authz"]
    assert mounts(authz) == [Mount(str(DEPLOY / "config"), "/etc/mcp-authz", True)]
    args = command(authz)
    assert args[0] == "serve"
    assert option(args, "--config") == "/etc/mcp-authz"
    assert (DEPLOY / "config" / "grants.json").is_file()
    assert sorted((DEPLOY / "config" / "policies").glob("*.json"))


def test_sidecar_uses_the_redis_service(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    url = option(command(services["authz"]), "--redis-url")
    assert url == "redis://redis:6379/0"
    redis = command(services["redis"])
    assert redis[0] == "redis-server"
    assert option(redis, "--maxmemory-policy") == "noeviction"


def test_upstream_accepts_the_host_envoy_forwards(resolved: dict[str, Any]) -> None:
    args = command(resolved["services"]["imagegen"])
    assert option(args, "--allowed-host") == "envoy"


def test_offline_gemini_by_default(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    env = services["imagegen"]["environment"]
    assert env["GOOGLE_API_KEY"] == ""  # empty: the entrypoint picks the offline endpoint
    offline = env["IMAGEGEN_OFFLINE_GEMINI_URL"]
    assert offline.startswith("http://")
    host, port = host_port(offline.removeprefix("http://"))
    assert host == "gemini" and host in services
    gemini = command(services["gemini"])
    assert gemini[0] == "imagegen-offline-gemini"
    assert int(option(gemini, "--port")) == port


def test_start_order_waits_for_health(resolved: dict[str, Any]) -> None:
    services = resolved["services"]

    def healthy_deps(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form"
        return {dep: spec["condition"] for dep, spec in deps.items()}

    assert healthy_deps("envoy") == {"authz": "service_healthy", "imagegen": "service_healthy"}
    assert healthy_deps("authz") == {"redis": "service_healthy"}
    assert healthy_deps("imagegen") == {"gemini": "service_healthy"}
    for name in SERVICES:
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: healthcheck must be exec form"


def test_healthchecks_probe_the_ports_the_services_listen_on(
    resolved: dict[str, Any], transport: str
) -> None:
    """The sidecar's healthcheck is the check Envoy's ext_authz cluster makes: gRPC health on
    the gRPC port, or GET /healthz on the HTTP ext_authz port."""
    services = resolved["services"]
    authz = services["authz"]["healthcheck"]["test"]
    if transport == "grpc":
        assert authz[2:4] == ["/opt/mcp-authz/healthcheck.py", "grpc"]
        _, grpc_port = host_port(option(command(services["authz"]), "--grpc"))
        assert host_port(authz[4]) == ("127.0.0.1", grpc_port)
    else:
        _, http_port = host_port(option(command(services["authz"]), "--http-authz"))
        url = f"http://127.0.0.1:{http_port}{HEALTH_PATH}"
        assert authz[2:] == ["/opt/mcp-authz/healthcheck.py", "http", url]
        envoy = load_envoy_config(repo_envoy_config_path(transport))
        (cluster,) = [
            c for c in envoy["static_resources"]["clusters"] if c["name"] == HTTP_AUTHZ_CLUSTER
        ]
        assert [c["http_health_check"]["path"] for c in cluster["health_checks"]] == [HEALTH_PATH]
    for name in ("imagegen", "gemini"):
        test = services[name]["healthcheck"]["test"]
        port = int(option(command(services[name]), "--port"))
        url = f"http://127.0.0.1:{port}/healthz"
        assert test[2:] == ["/opt/mcp-authz/healthcheck.py", "http", url]
    admin = load_envoy_config()["admin"]["address"]["socket_address"]
    probe = services["envoy"]["healthcheck"]["test"][-1]
    assert f"/dev/tcp/{admin['address']}/{admin['port_value']}" in probe


def test_images_are_built_from_this_repository(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    expected = {
        "authz": ("deploy/docker/sidecar.Dockerfile", "mcp-authz-sidecar:0.1.0"),
        "imagegen": ("deploy/docker/upstream.Dockerfile", "mcp-authz-imagegen:0.1.0"),
        "gemini": ("deploy/docker/upstream.Dockerfile", "mcp-authz-imagegen:0.1.0"),
    }
    for name, (dockerfile, image) in expected.items():
        build = services[name]["build"]
        assert Path(build["context"]) == REPO
        assert build["dockerfile"] == dockerfile and (REPO / dockerfile).is_file()
        assert services[name]["image"] == image
    assert "@sha256:" in services["redis"]["image"]


def test_containers_are_hardened(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    users = {name: s.get("user") for name, s in resolved["services"].items()}
    # The built images run as uid 10001 (their USER); the others are set here.
    assert users == {
        "envoy": "101:101",
        "redis": "999:1000",
        "authz": None,
        "imagegen": None,
        "gemini": None,
    }


@pytest.mark.processes
def test_http_override_changes_only_the_transport() -> None:
    """The HTTP layout is the gRPC one with exactly the override's three changes: Envoy's
    config file, the sidecar's --http-authz port (exposed), and its healthcheck."""
    grpc = compose_config("grpc")
    http = compose_config("http")
    expected = copy.deepcopy(grpc)
    envoy, authz = expected["services"]["envoy"], expected["services"]["authz"]
    envoy["volumes"] = copy.deepcopy(http["services"]["envoy"]["volumes"])
    authz["command"] = copy.deepcopy(http["services"]["authz"]["command"])
    authz["expose"] = copy.deepcopy(http["services"]["authz"]["expose"])
    authz["healthcheck"]["test"] = copy.deepcopy(http["services"]["authz"]["healthcheck"]["test"])
    assert http == expected

    assert [m.source for m in mounts(http["services"]["envoy"])] == [
        str(repo_envoy_config_path("http"))
    ]
    args = command(grpc["services"]["authz"])
    at = args.index("--admin")
    http_args = command(http["services"]["authz"])
    assert http_args == [*args[:at], "--http-authz", option(http_args, "--http-authz"), *args[at:]]
    grpc_expose = [str(p) for p in grpc["services"]["authz"]["expose"]]
    _, http_port = host_port(option(http_args, "--http-authz"))
    assert [str(p) for p in http["services"]["authz"]["expose"]] == [*grpc_expose, str(http_port)]


def test_http_override_command_line_is_documented() -> None:
    """The command in the override's header (and in docs/deploy.md and the README) names both
    files, base first: an override alone is not a layout."""
    command_line = (
        "docker compose -p mcp-authz -f deploy/docker-compose.yaml "
        "-f deploy/docker-compose.http.yaml up --build"
    )
    assert command_line in HTTP_OVERRIDE.read_text()
    assert command_line in (REPO / "docs" / "deploy.md").read_text()
    assert command_line in (REPO / "README.md").read_text()
