"""deploy/k8s: valid for Kubernetes 1.32 (strict), wired consistently, generated files current.

Validation uses kubernetes-validate (PyPI, offline JSON schemas) in strict mode, which also
rejects unknown fields. The pod-local Envoy config must be deploy/envoy.yaml rendered by
authz.devstack.envoy_config with only addresses changed, and must pass `envoy --mode validate`
(Envoy 1.40).

Two layouts, one per ext_authz transport: `kubectl apply -f deploy/k8s/` (gRPC), and the same
files with deploy/k8s/http/ in place of 40-gateway-envoy.yaml and 50-gateway.yaml (HTTP:
deploy/envoy-http.yaml, the sidecar's `--http-authz`). Every test that takes `docs` runs on
both.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from authz.devstack.envoy_config import (
    HTTP_AUTHZ_CLUSTER,
    TRANSPORTS,
    load_envoy_config,
    render_envoy_config,
    repo_envoy_config_path,
    write_envoy_config,
)
from authz.envoy.http_authz import HEALTH_PATH

from .support import (
    AUTHZ_CLUSTER,
    DEPLOY,
    ISTIO,
    K8S,
    UPSTREAM_CLUSTER,
    Doc,
    by_kind,
    envoy_binary,
    envoy_cluster_address,
    envoy_listener_address,
    envoy_validate,
    free_port,
    host_port,
    load_docs,
    one,
    option,
    walk,
)

KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "mcp-authz"
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
MANIFESTS = sorted(K8S.glob("*.yaml"))
HTTP_MANIFESTS = sorted((K8S / "http").glob("*.yaml"))
LAYOUTS = {
    "grpc": MANIFESTS,
    "http": sorted(
        [p for p in MANIFESTS if p.name not in {h.name for h in HTTP_MANIFESTS}] + HTTP_MANIFESTS,
        key=lambda p: p.name,
    ),
}
"""The files applied for each ext_authz transport, in order."""
GATEWAY_ENVOY_CONFIGMAP = {"grpc": "mcp-gateway-envoy", "http": "mcp-gateway-envoy-http"}
CORE_ISTIO_MANIFESTS = [ISTIO / "mcp-authz.yaml"]
"""Files under deploy/istio made only of core Kubernetes kinds (the rest are Istio CRDs)."""


def kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate as module  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        pytest.fail("kubernetes-validate is missing: install the dev extra (make venv)")
    found: ModuleType = module
    return found


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("k8s_generate", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def docs(transport: str) -> list[Doc]:
    return [doc for path in LAYOUTS[transport] for doc in load_docs(path)]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in by_kind(docs, "Deployment"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def container(docs: list[Doc], deployment: str, name: str) -> dict[str, Any]:
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    found: list[dict[str, Any]] = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"{deployment} must have one container {name}"
    return found[0]


def port_number(ctr: dict[str, Any], name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    found = [p["containerPort"] for p in ctr["ports"] if p["name"] == name_or_number]
    assert len(found) == 1, f"no port named {name_or_number}"
    return int(found[0])


def gateway_envoy_configmap(docs: list[Doc]) -> Doc:
    """The ConfigMap the gateway's Envoy mounts (by the Deployment's volume)."""
    volumes = one(docs, "Deployment", "mcp-gateway")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "envoy-config"]
    return one(docs, "ConfigMap", volume["configMap"]["name"])


def gateway_envoy(docs: list[Doc]) -> dict[str, Any]:
    cfg = yaml.safe_load(gateway_envoy_configmap(docs)["data"]["envoy.yaml"])
    assert isinstance(cfg, dict)
    return cfg


# -- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    MANIFESTS + HTTP_MANIFESTS + CORE_ISTIO_MANIFESTS,
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    kv = kubernetes_validate()
    documents = load_docs(path)
    assert documents, f"{path} has no documents"
    for doc in documents:
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(
                f"{path.name} {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}"
            )


def test_validator_rejects_unknown_fields(docs: list[Doc]) -> None:
    """Negative control: strict validation really runs (a misspelt field fails)."""
    kv = kubernetes_validate()
    deployment = json.loads(json.dumps(one(docs, "Deployment", "mcp-gateway")))
    deployment["spec"]["template"]["spec"]["containers"][1]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_resource_is_in_the_namespace(docs: list[Doc], transport: str) -> None:
    namespaces = by_kind(docs, "Namespace")
    assert [ns["metadata"]["name"] for ns in namespaces] == [NAMESPACE]
    assert LAYOUTS[transport][0].name == "00-namespace.yaml", "kubectl applies files in order"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


# -- generated files --------------------------------------------------------------------------


def test_generated_manifests_are_current() -> None:
    stale = generator().stale()
    assert stale == [], f"run `.venv/bin/python deploy/k8s/generate.py`: {stale} out of date"


def test_gateway_envoy_config_is_the_repo_config_with_pod_addresses(
    docs: list[Doc], transport: str
) -> None:
    gen = generator()
    upstream = one(docs, "Service", "imagegen")
    upstream_host = f"imagegen.{NAMESPACE}.svc.cluster.local"
    expected = render_envoy_config(
        listen_host="0.0.0.0",
        listen_port=10000,
        admin_port=9901,
        authz_host="127.0.0.1",
        authz_port=9001,
        upstream_host=upstream_host,
        upstream_port=upstream["spec"]["ports"][0]["port"],
        transport=transport,
        authz_http_port=9003,
    )
    assert gateway_envoy_configmap(docs)["metadata"]["name"] == GATEWAY_ENVOY_CONFIGMAP[transport]
    actual = gateway_envoy(docs)
    assert actual == expected == gen.gateway_envoy_config(transport)

    # Against deploy/envoy.yaml (envoy-http.yaml) itself: the cluster endpoints' hosts differ
    # (the sidecar's two or three: gRPC, HTTP, admin; the upstream's), nothing else.
    source = dict(walk(load_envoy_config(repo_envoy_config_path(transport))))
    rendered = dict(walk(actual))
    assert source.keys() == rendered.keys()
    changed = {
        path
        for path, value in rendered.items()
        if not isinstance(value, dict | list) and source[path] != value
    }
    assert {path[-1] for path in changed} == {"address"}
    sidecar = ["127.0.0.1"] * (3 if transport == "http" else 2)
    assert sorted(rendered[path] for path in changed) == [*sidecar, upstream_host]


@pytest.mark.processes
def test_gateway_envoy_config_passes_envoy_validate(docs: list[Doc], tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(gateway_envoy_configmap(docs)["data"]["envoy.yaml"])
    proc = envoy_validate(path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_http_gateway_is_the_grpc_gateway_but_for_the_transport() -> None:
    """deploy/k8s/http/50-gateway.yaml is deploy/k8s/50-gateway.yaml with exactly the sidecar's
    HTTP port (flag, container port, readiness on it) and Envoy's ConfigMap changed."""
    grpc = load_docs(K8S / "50-gateway.yaml")
    http = load_docs(K8S / "http" / "50-gateway.yaml")
    expected = json.loads(json.dumps(grpc))
    spec = one(expected, "Deployment", "mcp-gateway")["spec"]["template"]["spec"]
    (authz,) = [c for c in spec["containers"] if c["name"] == "authz"]
    at = authz["args"].index("--admin")
    authz["args"][at:at] = ["--http-authz", "0.0.0.0:9003"]
    authz["ports"].insert(1, {"name": "http-authz", "containerPort": 9003})
    probe = authz["readinessProbe"]
    del probe["grpc"]
    probe["httpGet"] = {"path": HEALTH_PATH, "port": "http-authz"}
    (volume,) = [v for v in spec["volumes"] if v["name"] == "envoy-config"]
    volume["configMap"]["name"] = GATEWAY_ENVOY_CONFIGMAP["http"]
    assert http == expected


def test_http_layout_is_not_applied_with_the_folder() -> None:
    """`kubectl apply -f deploy/k8s/` is not recursive: the gRPC layout stays the default, and
    the HTTP files replace exactly the two gateway files (same resources but Envoy's
    ConfigMap, which has its own name)."""
    assert [p.name for p in HTTP_MANIFESTS] == ["40-gateway-envoy.yaml", "50-gateway.yaml"]
    assert all(p.parent != K8S for p in HTTP_MANIFESTS)

    def kinds(paths: list[Path]) -> list[tuple[str, str]]:
        return sorted((d["kind"], d["metadata"]["name"]) for p in paths for d in load_docs(p))

    grpc = kinds([K8S / p.name for p in HTTP_MANIFESTS])
    http = kinds(HTTP_MANIFESTS)
    assert set(grpc) ^ set(http) == {
        ("ConfigMap", GATEWAY_ENVOY_CONFIGMAP["grpc"]),
        ("ConfigMap", GATEWAY_ENVOY_CONFIGMAP["http"]),
    }


def test_policies_and_grants_are_copies_of_deploy_config(docs: list[Doc]) -> None:
    policies = one(docs, "ConfigMap", "mcp-authz-policies")["data"]
    files = {p.name: p.read_text() for p in sorted((DEPLOY / "config" / "policies").glob("*.json"))}
    assert policies == files
    grants = one(docs, "Secret", "mcp-authz-grants")["stringData"]
    assert grants == {
        name: (DEPLOY / "config" / name).read_text() for name in ("grants.json", "approvers.json")
    }
    lock = one(docs, "ConfigMap", "mcp-authz-tool-lock")["data"]
    assert lock == {"tools.lock.json": (DEPLOY / "config" / "tools.lock.json").read_text()}


# -- wiring -----------------------------------------------------------------------------------


def test_envoy_reaches_the_sidecar_over_the_pod_loopback(docs: list[Doc], transport: str) -> None:
    cfg = gateway_envoy(docs)
    authz = container(docs, "mcp-gateway", "authz")
    host, port = envoy_cluster_address(cfg, AUTHZ_CLUSTER)
    assert host == "127.0.0.1"
    grpc_host, grpc_port = host_port(option(authz["args"], "--grpc"))
    assert grpc_port == port == port_number(authz, "grpc")
    # The kubelet's gRPC probe dials the pod IP, so the sidecar listens on all addresses.
    assert grpc_host == "0.0.0.0"
    if transport == "grpc":
        assert "--http-authz" not in authz["args"]
        return
    host, port = envoy_cluster_address(cfg, HTTP_AUTHZ_CLUSTER)
    assert host == "127.0.0.1"
    http_host, http_port = host_port(option(authz["args"], "--http-authz"))
    assert http_port == port == port_number(authz, "http-authz")
    assert http_host == "0.0.0.0"  # the readiness probe dials the pod IP too


def test_envoy_reaches_the_upstream_service(docs: list[Doc]) -> None:
    cfg = gateway_envoy(docs)
    host, port = envoy_cluster_address(cfg, UPSTREAM_CLUSTER)
    name, namespace, *_ = host.split(".")
    service = one(docs, "Service", name)
    assert namespace == service["metadata"]["namespace"]
    assert host == f"{name}.{namespace}.svc.cluster.local"
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == port
    imagegen = container(docs, "imagegen", "imagegen")
    target = port_number(imagegen, svc_port["targetPort"])
    assert int(option(imagegen["args"], "--port")) == target
    assert option(imagegen["args"], "--host") == "0.0.0.0"


def test_gateway_service_targets_the_envoy_listener(docs: list[Doc], transport: str) -> None:
    cfg = gateway_envoy(docs)
    _, listen_port = envoy_listener_address(cfg)
    envoy = container(docs, "mcp-gateway", "envoy")
    (svc_port,) = one(docs, "Service", "mcp-gateway")["spec"]["ports"]
    assert svc_port["port"] == 10000
    assert port_number(envoy, svc_port["targetPort"]) == listen_port
    assert envoy["image"] == "envoyproxy/envoy:v1.40.0"
    assert option(envoy["args"], "-c") == "/etc/envoy/envoy.yaml"
    mounts = {m["name"]: m["mountPath"] for m in envoy["volumeMounts"]}
    assert mounts == {"envoy-config": "/etc/envoy"}
    volumes = one(docs, "Deployment", "mcp-gateway")["spec"]["template"]["spec"]["volumes"]
    (envoy_volume,) = [v for v in volumes if v["name"] == "envoy-config"]
    assert envoy_volume["configMap"]["name"] == GATEWAY_ENVOY_CONFIGMAP[transport]


def test_sidecar_reads_a_live_projected_config_volume(docs: list[Doc]) -> None:
    """Secret grants.json and approvers.json + ConfigMap policies/*.json in one projected
    volume, no subPath."""
    authz = container(docs, "mcp-gateway", "authz")
    config_dir = option(authz["args"], "--config")
    (mount,) = [m for m in authz["volumeMounts"] if m["mountPath"] == config_dir]
    assert mount.get("readOnly") is True
    volumes = one(docs, "Deployment", "mcp-gateway")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"]
    secrets = [s["secret"] for s in sources if "secret" in s]
    configmaps = [s["configMap"] for s in sources if "configMap" in s]
    files = [{"key": name, "path": name} for name in ("grants.json", "approvers.json")]
    assert secrets == [{"name": "mcp-authz-grants", "items": files}]
    assert [c["name"] for c in configmaps] == ["mcp-authz-policies", "mcp-authz-tool-lock"]
    keys = set(one(docs, "ConfigMap", "mcp-authz-policies")["data"])
    items = configmaps[0]["items"]
    assert {item["key"] for item in items} == keys, "every policy key needs a projected item"
    assert all(item["path"] == f"policies/{item['key']}" for item in items)
    # the tool lock sits at the top of the config directory, where the sidecar reads it
    assert configmaps[1]["items"] == [{"key": "tools.lock.json", "path": "tools.lock.json"}]


def all_pod_specs(docs: list[Doc]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from pod_specs(docs)
    for path in CORE_ISTIO_MANIFESTS:
        yield from pod_specs(load_docs(path))


def test_no_subpath_mounts(docs: list[Doc]) -> None:
    """subPath mounts never receive ConfigMap/Secret updates."""
    for name, spec in all_pod_specs(docs):
        for ctr in spec["containers"]:
            for mount in ctr.get("volumeMounts", []):
                assert "subPath" not in mount and "subPathExpr" not in mount, (name, mount)


def test_sidecar_probes(docs: list[Doc], transport: str) -> None:
    """Readiness is the check Envoy's ext_authz cluster makes: gRPC health, or GET /healthz on
    the HTTP ext_authz port (which opens after the gRPC one and reports the same status)."""
    authz = container(docs, "mcp-gateway", "authz")
    _, grpc_port = host_port(option(authz["args"], "--grpc"))
    _, admin_port = host_port(option(authz["args"], "--admin"))
    if transport == "grpc":
        assert authz["readinessProbe"]["grpc"] == {"port": grpc_port, "service": AUTHZ_SERVICE}
    else:
        get = authz["readinessProbe"]["httpGet"]
        _, http_port = host_port(option(authz["args"], "--http-authz"))
        assert get["path"] == HEALTH_PATH and port_number(authz, get["port"]) == http_port
        (cluster,) = [
            c
            for c in gateway_envoy(docs)["static_resources"]["clusters"]
            if c["name"] == HTTP_AUTHZ_CLUSTER
        ]
        assert [c["http_health_check"]["path"] for c in cluster["health_checks"]] == [HEALTH_PATH]
    for probe in ("startupProbe", "livenessProbe"):
        get = authz[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert port_number(authz, get["port"]) == admin_port


def test_envoy_readiness_asks_its_admin_endpoint(docs: list[Doc]) -> None:
    admin = gateway_envoy(docs)["admin"]["address"]["socket_address"]
    envoy = container(docs, "mcp-gateway", "envoy")
    command = envoy["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["bash", "-c"]
    assert f"/dev/tcp/{admin['address']}/{admin['port_value']}" in command[2]
    assert "GET /ready" in command[2]


@pytest.mark.processes
def test_envoy_readiness_command_works_against_a_real_envoy(
    docs: list[Doc], tmp_path: Path
) -> None:
    """Run the probe (the same command as compose's Envoy healthcheck) with bash."""
    command = container(docs, "mcp-gateway", "envoy")["readinessProbe"]["exec"]["command"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]
    assert compose["envoy"]["healthcheck"]["test"][1:] == command
    bash = shutil.which("bash")
    assert bash is not None
    admin_port = free_port()
    probe = command[2].replace("/127.0.0.1/9901", f"/127.0.0.1/{admin_port}")
    assert probe != command[2]
    config = tmp_path / "envoy.yaml"
    write_envoy_config(
        render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=free_port(),
            admin_port=admin_port,
            authz_host="127.0.0.1",
            authz_port=free_port(),
            upstream_host="127.0.0.1",
            upstream_port=free_port(),
        ),
        config,
    )

    def ready() -> bool:
        return subprocess.run([bash, "-c", probe], capture_output=True, check=False).returncode == 0

    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--base-id", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready():
            assert envoy.poll() is None, "envoy exited"
            assert time.monotonic() < deadline, "the probe never passed"
            time.sleep(0.2)
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
    assert not ready()


def test_sidecars_use_the_redis_service(docs: list[Doc]) -> None:
    (svc_port,) = one(docs, "Service", "redis")["spec"]["ports"]
    for path, deployment in ((None, "mcp-gateway"), (ISTIO / "mcp-authz.yaml", "mcp-authz")):
        source = docs if path is None else load_docs(path)
        args = container(source, deployment, "authz")["args"]
        assert option(args, "--redis-url") == f"redis://redis:{svc_port['port']}/0"


def test_services_and_deployments_select_their_pods(docs: list[Doc]) -> None:
    every = docs + [doc for path in CORE_ISTIO_MANIFESTS for doc in load_docs(path)]
    pod_labels = {
        doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
        for doc in by_kind(every, "Deployment")
    }
    for doc in by_kind(every, "Deployment"):
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels[doc["metadata"]["name"]].items()
    for doc in by_kind(every, "Service"):
        selector = doc["spec"]["selector"]
        matched = [
            name for name, labels in pod_labels.items() if selector.items() <= labels.items()
        ]
        assert len(matched) == 1, f"Service {doc['metadata']['name']} selects {matched}"


def test_pods_run_restricted(docs: list[Doc]) -> None:
    """Non-root, no escalation, no capabilities, read-only root, RuntimeDefault seccomp."""
    for name, spec in all_pod_specs(docs):
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, name
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for ctr in spec["containers"]:
            ctx = ctr["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, (name, ctr["name"])
            assert ctx["readOnlyRootFilesystem"] is True, (name, ctr["name"])
            assert ctx["capabilities"] == {"drop": ["ALL"]}, (name, ctr["name"])
            uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, (name, ctr["name"])
            for kind in ("requests", "limits"):
                assert set(ctr["resources"][kind]) == {"cpu", "memory"}, (name, ctr["name"])


def test_network_policies_keep_the_check_api_and_the_upstream_private(docs: list[Doc]) -> None:
    authz = container(docs, "mcp-gateway", "authz")
    check_ports = {host_port(option(authz["args"], "--grpc"))[1]}
    if "--http-authz" in authz["args"]:
        check_ports.add(host_port(option(authz["args"], "--http-authz"))[1])
    gateway = one(docs, "NetworkPolicy", "mcp-gateway")
    opened = {p["port"] for rule in gateway["spec"]["ingress"] for p in rule["ports"]}
    assert not check_ports & opened
    assert opened == {10000, 9002}

    upstream = one(docs, "NetworkPolicy", "imagegen-from-gateway")
    assert upstream["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "imagegen"
    (rule,) = upstream["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "mcp-gateway",
                "app.kubernetes.io/part-of": "mcp-authz",
            }
        }
    }


def test_images_match_the_compose_file(docs: list[Doc]) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]
    images = {
        "mcp-gateway/envoy": compose["envoy"]["image"],
        "mcp-gateway/authz": compose["authz"]["image"],
        "imagegen/imagegen": compose["imagegen"]["image"],
        "imagegen/gemini": compose["gemini"]["image"],
        "redis/redis": compose["redis"]["image"],
    }
    for key, image in images.items():
        deployment, name = key.split("/")
        assert container(docs, deployment, name)["image"] == image, key


def test_every_sidecar_config_volume_carries_grants_and_approvers(docs: list[Doc]) -> None:
    """Without approvers.json nobody can approve a held call: every sidecar, in the gateway
    layout and under Istio, gets it from the grants Secret next to grants.json."""
    found = 0
    for name, spec in all_pod_specs(docs):
        for volume in spec.get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                secret = source.get("secret")
                if secret is None or secret["name"] != "mcp-authz-grants":
                    continue
                found += 1
                keys = {item["key"] for item in secret["items"]}
                assert keys == {"grants.json", "approvers.json"}, (name, keys)
    assert found == 2
