"""deploy/istio: structure of the Istio resources, and what Envoy makes of them.

No Istio schema package is a dependency, so the Istio resources are checked here against the
fields of Istio's API (MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider and
EnvoyExternalAuthorizationHttpProvider, AuthorizationPolicy, PeerAuthentication,
EnvoyFilter, VirtualService), rejecting unknown fields. The VirtualService of oauth.yaml is
followed path by path: the OAuth protected resource metadata goes to the sidecar's admin port,
where `mcp-authz-callers` lets it in and the admin app serves it, and nothing else is let
in. What reaches Envoy is checked with the real Envoy 1.40: the ext_authz filters that
istiod builds from the providers (as pilot/pkg/security/authz/builder/extauthz.go does;
tests/deploy/istiod.py for the HTTP one) and the EnvoyFilters'
patches pass `envoy --mode validate`. The gRPC provider must match deploy/envoy.yaml's
ext_authz, the HTTP provider (with its optional EnvoyFilter) deploy/envoy-http.yaml's, but
for what Istio cannot express, listed in `HTTP_CONTRACT_GAPS`. tests/e2e/test_istio_http.py
runs the HTTP one in front of the real sidecar. (The CRD schemas themselves were checked once
with @kubernetes-models/istio: see docs/deploy.md and tests/deploy/istio_crd_check.mjs.)
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authz._pb.envoy.type.v3 import http_status_pb2
from authz.config.source import ConfigSource
from authz.devstack.envoy_config import (
    AUTHZ_CLUSTER,
    HTTP_AUTHZ_CLUSTER,
    load_envoy_config,
    render_envoy_config,
    repo_envoy_config_path,
)
from authz.envoy.http_authz import (
    CHECK_PREFIX,
    GRANT_HEADER,
    JWT_HEADER,
    PEER_HEADER,
    SIDECAR_ONLY_PREFIX,
    WIRE_STATUS,
    http_request,
)
from authz.oauth.config import PRM_PATH
from authz.pipeline.request import HttpRequest
from authz.server import metadata_routes
from tests.unit.calls import seed_authorizer_at, tool_call
from tests.unit.oauth.keys import oauth_json

from . import istiod
from .support import (
    ISTIO,
    K8S,
    Doc,
    envoy_ext_authz,
    envoy_validate,
    host_port,
    load_docs,
    one,
    option,
)

PROVIDER = "mcp-authz"
HTTP_PROVIDER = "mcp-authz-http"
TYPE = "type.googleapis.com/envoy.extensions."
HCM_TYPE = TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager"
HTTP_OPTIONS_TYPE = TYPE + "upstreams.http.v3.HttpProtocolOptions"
OPERATOR = ISTIO / "install" / "istio-operator.yaml"
HELM_VALUES = ISTIO / "install" / "istiod-values.yaml"
SECURITY = ISTIO / "security.yaml"
AUTHZ = ISTIO / "mcp-authz.yaml"
EXT_PROC = ISTIO / "optional" / "ext-proc-envoyfilter.yaml"
HTTP_POLICY = ISTIO / "http" / "imagegen-mcp-authz.yaml"
HTTP_ENVOY_FILTER = ISTIO / "http" / "optional" / "authz-http-envoyfilter.yaml"
OAUTH = ISTIO / "oauth.yaml"

# Fields of Istio's API (istio.io/api), by message.
GRPC_PROVIDER_FIELDS = {
    "service",
    "port",
    "timeout",
    "failOpen",
    "statusOnError",
    "includeRequestBodyInCheck",
}
HTTP_PROVIDER_FIELDS = {
    "service",
    "port",
    "timeout",
    "pathPrefix",
    "failOpen",
    "clearRouteCache",
    "statusOnError",
    "includeHeadersInCheck",
    "includeRequestHeadersInCheck",
    "includeAdditionalHeadersInCheck",
    "includeRequestBodyInCheck",
    "headersToUpstreamOnAllow",
    "headersToDownstreamOnDeny",
    "headersToDownstreamOnAllow",
}
REQUEST_BODY_FIELDS = {"maxRequestBytes", "allowPartialMessage", "packAsBytes"}
AUTHZ_POLICY_FIELDS = {"selector", "targetRef", "targetRefs", "rules", "action", "provider"}
AUTHZ_ACTIONS = {"ALLOW", "DENY", "AUDIT", "CUSTOM"}
RULE_FIELDS = {"from", "to", "when"}
SOURCE_FIELDS = {
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
}
OPERATION_FIELDS = {
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
}
PEER_AUTHN_FIELDS = {"selector", "mtls", "portLevelMtls"}
MTLS_MODES = {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}
ENVOY_FILTER_FIELDS = {"workloadSelector", "targetRefs", "configPatches", "priority"}
PATCH_FIELDS = {"applyTo", "match", "patch"}
APPLY_TO = {
    "INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER",
}  # fmt: skip
MATCH_FIELDS = {"context", "proxy", "listener", "routeConfiguration", "cluster"}
CONTEXTS = {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"}
LISTENER_MATCH_FIELDS = {"portNumber", "filterChain", "listenerFilter", "name"}
FILTER_CHAIN_FIELDS = {
    "name",
    "sni",
    "transportProtocol",
    "applicationProtocols",
    "filter",
    "destinationPort",
}
OPERATIONS = {
    "INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST",
    "REPLACE",
}  # fmt: skip


def unknown(node: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(node) - allowed
    assert not extra, f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}"


def providers(values: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = values["meshConfig"]["extensionProviders"]
    return found


def mcp_provider(values: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [p for p in providers(values) if p["name"] == PROVIDER]
    assert set(entry) == {"name", "envoyExtAuthzGrpc"}
    grpc: dict[str, Any] = entry["envoyExtAuthzGrpc"]
    return grpc


def mcp_http_provider(values: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [p for p in providers(values) if p["name"] == HTTP_PROVIDER]
    assert set(entry) == {"name", "envoyExtAuthzHttp"}
    http: dict[str, Any] = entry["envoyExtAuthzHttp"]
    return http


@pytest.fixture(scope="module")
def operator() -> Doc:
    (doc,) = load_docs(OPERATOR)
    assert doc["apiVersion"] == "install.istio.io/v1alpha1"
    assert doc["kind"] == "IstioOperator"
    return doc


@pytest.fixture(scope="module")
def provider(operator: Doc) -> dict[str, Any]:
    return mcp_provider(operator["spec"])


@pytest.fixture(scope="module")
def http_provider(operator: Doc) -> dict[str, Any]:
    return mcp_http_provider(operator["spec"])


def k8s_docs() -> list[Doc]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_docs(path)]


# -- structure --------------------------------------------------------------------------------


def test_every_document_names_its_kind() -> None:
    for path in sorted(ISTIO.rglob("*.yaml")):
        if path == HELM_VALUES:
            continue
        for doc in load_docs(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"].get("name"), path


def test_extension_provider_fields(provider: dict[str, Any]) -> None:
    unknown(provider, GRPC_PROVIDER_FIELDS, "envoyExtAuthzGrpc")
    assert {"service", "port"} <= set(provider), "service and port are required"
    unknown(provider["includeRequestBodyInCheck"], REQUEST_BODY_FIELDS, "includeRequestBodyInCheck")
    assert isinstance(provider["statusOnError"], str), 'statusOnError is a string, e.g. "503"'
    assert isinstance(provider["port"], int) and 1 <= provider["port"] <= 65535


def test_helm_values_register_the_same_provider(operator: Doc) -> None:
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert providers(values) == providers(operator["spec"])


def test_provider_matches_the_envoy_yaml_ext_authz(provider: dict[str, Any]) -> None:
    """Istio's ext_authz must behave like the standalone gateway's: same limits, fail closed."""
    ext_authz = envoy_ext_authz(load_envoy_config())
    assert provider["timeout"] == ext_authz["grpc_service"]["timeout"]
    assert provider["failOpen"] is ext_authz["failure_mode_allow"] is False
    status = http_status_pb2.StatusCode.Value(ext_authz["status_on_error"]["code"])
    assert int(provider["statusOnError"]) == status == 503
    body = ext_authz["with_request_body"]
    assert provider["includeRequestBodyInCheck"] == {
        "maxRequestBytes": body["max_request_bytes"],
        "allowPartialMessage": body["allow_partial_message"],
        "packAsBytes": body["pack_as_bytes"],
    }


def test_provider_points_at_the_sidecar_service(provider: dict[str, Any]) -> None:
    docs = load_docs(AUTHZ)
    name, namespace, *rest = provider["service"].split(".")
    assert rest == ["svc", "cluster", "local"]
    service = one(docs, "Service", name)
    assert service["metadata"]["namespace"] == namespace
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["port"] == provider["port"]]
    assert grpc_port["appProtocol"] == "grpc", "Istio must speak HTTP/2 to an ext_authz server"
    spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
    (authz,) = spec["containers"]
    (container_port,) = [p for p in authz["ports"] if p["name"] == grpc_port["targetPort"]]
    _, listen_port = host_port(option(authz["args"], "--grpc"))
    assert container_port["containerPort"] == listen_port


def test_authorization_policies(provider: dict[str, Any]) -> None:
    docs = load_docs(SECURITY)
    for policy in [d for d in docs if d["kind"] == "AuthorizationPolicy"]:
        assert policy["apiVersion"] == "security.istio.io/v1"
        spec = policy["spec"]
        where = f"AuthorizationPolicy/{policy['metadata']['name']}"
        unknown(spec, AUTHZ_POLICY_FIELDS, where)
        assert spec["action"] in AUTHZ_ACTIONS
        for rule in spec.get("rules", []):
            unknown(rule, RULE_FIELDS, where)
            for peer in rule.get("from", []):
                unknown(peer, {"source"}, where)
                unknown(peer["source"], SOURCE_FIELDS, where)
            for target in rule.get("to", []):
                unknown(target, {"operation"}, where)
                unknown(target["operation"], OPERATION_FIELDS, where)

    custom = one(docs, "AuthorizationPolicy", "imagegen-mcp-authz")["spec"]
    assert custom["action"] == "CUSTOM"
    assert custom["provider"] == {"name": PROVIDER}
    assert custom["rules"] == [{}], "every request to the MCP workload is checked"
    imagegen = one(k8s_docs(), "Deployment", "imagegen")["spec"]["template"]
    assert custom["selector"]["matchLabels"].items() <= imagegen["metadata"]["labels"].items()

    callers = one(docs, "AuthorizationPolicy", "mcp-authz-callers")["spec"]
    assert callers["action"] == "ALLOW"
    sidecar = one(load_docs(AUTHZ), "Deployment", "mcp-authz")["spec"]["template"]
    assert callers["selector"]["matchLabels"].items() <= sidecar["metadata"]["labels"].items()
    check_rule = callers["rules"][0]
    account = imagegen["spec"]["serviceAccountName"]
    namespace = one(k8s_docs(), "Deployment", "imagegen")["metadata"]["namespace"]
    assert check_rule["from"] == [
        {"source": {"principals": [f"cluster.local/ns/{namespace}/sa/{account}"]}}
    ]
    # the check ports of both providers, for the MCP workload's proxy only
    http_port = mcp_http_provider(yaml.safe_load(OPERATOR.read_text())["spec"])["port"]
    assert check_rule["to"] == [{"operation": {"ports": [str(provider["port"]), str(http_port)]}}]
    # the admin port is open in the mesh for probes and /metrics, never for /approvals in any
    # spelling: the proxy forwards from 127.0.0.6, which the sidecar's loopback-only check
    # cannot tell apart
    admin_rules = [r for r in callers["rules"] if "9002" in r["to"][0]["operation"]["ports"]]
    assert admin_rules
    for path in ("/healthz", "/readyz", "/metrics"):
        assert any(_operation_allows(r["to"][0]["operation"], path) for r in admin_rules), path
    approvals = "/approvals/apr_000000000000000000000000"
    for path in (
        "/approvals",
        "/approvals/",
        approvals,
        f"{approvals}/approve",
        f"{approvals}/deny",
        "/approvals%2Fapr_000000000000000000000000%2Fapprove",
        "/approvals%2fapr_000000000000000000000000%2fapprove",
        f"{approvals}%2Fapprove",
        "/approvals%5Capr_000000000000000000000000",
        "/approvals;x=1",
        "/%2Fapprovals",
        "/healthz%2F..%2Fapprovals",
        "/healthz/../approvals",
        "/metrics%2F..%2Fapprovals",
        "/unknown",
    ):
        assert not any(_operation_allows(r["to"][0]["operation"], path) for r in admin_rules), path


def _istio_path_matches(pattern: str, path: str) -> bool:
    """Istio's AuthorizationPolicy path match: exact, `prefix*`, `*suffix` or `*`."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


def _operation_allows(operation: dict[str, Any], path: str) -> bool:
    """Whether an ALLOW rule's operation matches a request for `path` (Istio's default
    `pathNormalization: BASE` leaves %2F and %5C encoded, so they are compared as sent)."""
    paths = operation.get("paths")
    if paths is not None and not any(_istio_path_matches(p, path) for p in paths):
        return False
    not_paths = operation.get("notPaths", [])
    return not any(_istio_path_matches(p, path) for p in not_paths)


def test_peer_authentication_is_strict() -> None:
    (peer,) = [d for d in load_docs(SECURITY) if d["kind"] == "PeerAuthentication"]
    unknown(peer["spec"], PEER_AUTHN_FIELDS, "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] in MTLS_MODES
    assert peer["spec"]["mtls"]["mode"] == "STRICT"


def test_plain_apply_of_the_folder_skips_install_and_optional_files() -> None:
    """`kubectl apply -f deploy/istio/` is not recursive: only cluster resources at the top."""
    docs = [doc for path in sorted(ISTIO.glob("*.yaml")) for doc in load_docs(path)]
    kinds = {doc["kind"] for doc in docs}
    assert "IstioOperator" not in kinds and "EnvoyFilter" not in kinds
    assert OPERATOR.parent != ISTIO and EXT_PROC.parent != ISTIO
    # the OAuth metadata route comes with the folder, once
    assert OAUTH.parent == ISTIO
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "VirtualService"] == ["imagegen"]


# -- OAuth discovery: the protected resource metadata routed to the sidecar -------------------

# Fields of Istio's API (networking/v1alpha3/virtual_service.proto), by message.
VIRTUAL_SERVICE_FIELDS = {"hosts", "gateways", "http", "tls", "tcp", "exportTo"}
HTTP_ROUTE_FIELDS = {
    "name", "match", "route", "redirect", "directResponse", "delegate", "rewrite", "timeout",
    "retries", "fault", "mirror", "mirrors", "mirrorPercentage", "corsPolicy", "headers",
}  # fmt: skip
HTTP_MATCH_FIELDS = {
    "name", "uri", "scheme", "method", "authority", "headers", "port", "sourceLabels",
    "gateways", "queryParams", "ignoreUriCase", "withoutHeaders", "sourceNamespace",
    "statPrefix",
}  # fmt: skip
STRING_MATCH_FIELDS = {"exact", "prefix", "regex"}
ROUTE_DESTINATION_FIELDS = {"destination", "weight", "headers"}
DESTINATION_FIELDS = {"host", "subset", "port"}


def virtual_service() -> Doc:
    (doc,) = load_docs(OAUTH)
    assert doc["apiVersion"] == "networking.istio.io/v1" and doc["kind"] == "VirtualService"
    return doc


def service_host(name: str, docs: list[Doc]) -> str:
    """The cluster-local name of the Service `name` among `docs`."""
    service = one(docs, "Service", name)
    return f"{name}.{service['metadata']['namespace']}.svc.cluster.local"


def sidecar_admin_port() -> int:
    """The `mcp-authz` Service port that reaches the sidecar's `--admin` listener."""
    docs = load_docs(AUTHZ)
    (authz,) = one(docs, "Deployment", "mcp-authz")["spec"]["template"]["spec"]["containers"]
    _, listen_port = host_port(option(authz["args"], "--admin"))
    (name,) = [p["name"] for p in authz["ports"] if p["containerPort"] == listen_port]
    (port,) = [
        p for p in one(docs, "Service", "mcp-authz")["spec"]["ports"] if p["targetPort"] == name
    ]
    assert port["appProtocol"] == "http", "the caller's proxy must route it as HTTP"
    number: int = port["port"]
    return number


def imagegen_port() -> int:
    (port,) = one(k8s_docs(), "Service", "imagegen")["spec"]["ports"]
    number: int = port["port"]
    return number


def routed_to(vs: Doc, path: str) -> tuple[str, int]:
    """Where Istio sends a request for `path` to the VirtualService's host: the first HTTP
    route with no match or a matching `uri` (exact or prefix), as Envoy takes routes in order."""
    for route in vs["spec"]["http"]:
        matches = route.get("match")
        if matches is None or any(
            path == m["uri"].get("exact") or path.startswith(m["uri"].get("prefix", "\0"))
            for m in matches
        ):
            (target,) = route["route"]
            return target["destination"]["host"], target["destination"]["port"]["number"]
    raise AssertionError(f"no route for {path}")


def callers_allow(port: int, method: str, path: str, principal: str) -> bool:
    """Whether `mcp-authz-callers` lets a mesh caller with SPIFFE ID `principal` send
    `method path` to the sidecar's `port` (Istio's ALLOW: any rule whose `from` and `to`
    both match; paths compared as sent, see `_operation_allows`)."""
    spec = one(load_docs(SECURITY), "AuthorizationPolicy", "mcp-authz-callers")["spec"]
    for rule in spec["rules"]:
        sources = [peer["source"] for peer in rule.get("from", [])]
        if sources and not any(principal in s.get("principals", []) for s in sources):
            continue
        for target in rule.get("to", []):
            operation = target["operation"]
            if str(port) not in operation.get("ports", [str(port)]):
                continue
            if method not in operation.get("methods", [method]):
                continue
            if _operation_allows(operation, path):
                return True
    return False


ANY_CALLER = "cluster.local/ns/elsewhere/sa/default"


def test_virtual_service_fields() -> None:
    doc = virtual_service()
    spec = doc["spec"]
    unknown(spec, VIRTUAL_SERVICE_FIELDS, "VirtualService")
    assert "gateways" not in spec, "mesh only: the layout has no ingress gateway"
    for route in spec["http"]:
        unknown(route, HTTP_ROUTE_FIELDS, "VirtualService http")
        for match in route.get("match", []):
            unknown(match, HTTP_MATCH_FIELDS, "HTTPMatchRequest")
            unknown(match["uri"], STRING_MATCH_FIELDS, "HTTPMatchRequest.uri")
        for target in route["route"]:
            unknown(target, ROUTE_DESTINATION_FIELDS, "HTTPRouteDestination")
            unknown(target["destination"], DESTINATION_FIELDS, "Destination")
            unknown(target["destination"]["port"], {"number"}, "PortSelector")


def test_virtual_service_routes_the_metadata_prefix_to_the_sidecar_admin_port() -> None:
    """Like deploy/envoy*.yaml's route: the prefix (no rewrite: the same paths) to the
    sidecar's admin port, everything else of the MCP host to imagegen as before."""
    doc = virtual_service()
    imagegen = service_host("imagegen", k8s_docs())
    assert (
        doc["metadata"]["namespace"]
        == one(k8s_docs(), "Service", "imagegen")["metadata"]["namespace"]
    )
    assert doc["spec"]["hosts"] == [imagegen]
    metadata, rest = doc["spec"]["http"]
    assert metadata["match"] == [{"uri": {"prefix": PRM_PATH}}]
    assert set(metadata) == {"name", "match", "route"}, "no rewrite, no retries, no mirror"
    assert metadata["route"] == [
        {
            "destination": {
                "host": service_host("mcp-authz", load_docs(AUTHZ)),
                "port": {"number": sidecar_admin_port()},
            }
        }
    ]
    assert "match" not in rest
    assert rest["route"] == [
        {"destination": {"host": imagegen, "port": {"number": imagegen_port()}}}
    ]


def test_metadata_is_routed_to_the_sidecar_allowed_and_served(tmp_path: Path) -> None:
    """A mesh client's GET of either metadata path of the Istio MCP URL goes to the sidecar's
    admin port, where `mcp-authz-callers` lets any caller in and the admin app serves the
    document; the rest of the MCP host still goes to imagegen, whose CUSTOM policy therefore
    never sees the metadata requests."""
    vs = virtual_service()
    resource = f"http://{service_host('imagegen', k8s_docs())}:{imagegen_port()}/mcp"
    (tmp_path / "grants.json").write_text(json.dumps({"version": "1", "grants": []}))
    (tmp_path / "oauth.json").write_bytes(oauth_json(resource=resource))
    source = ConfigSource.open(tmp_path)
    oauth = source.current.oauth
    assert oauth is not None
    sidecar = (service_host("mcp-authz", load_docs(AUTHZ)), sidecar_admin_port())
    app = Starlette(routes=metadata_routes(source))
    with TestClient(app) as client:
        for path in oauth.metadata_paths:
            assert routed_to(vs, path) == sidecar, path
            assert callers_allow(sidecar[1], "GET", path, ANY_CALLER), path
            got = client.get(path)
            assert got.status_code == 200 and got.json()["resource"] == resource, path
    assert oauth.metadata_url.startswith(resource.removesuffix("/mcp") + PRM_PATH)
    assert routed_to(vs, urllib.parse.urlsplit(oauth.metadata_url).path) == sidecar
    assert routed_to(vs, "/mcp") == (service_host("imagegen", k8s_docs()), imagegen_port())

    custom = one(load_docs(SECURITY), "AuthorizationPolicy", "imagegen-mcp-authz")["spec"]
    pod = one(load_docs(AUTHZ), "Deployment", "mcp-authz")["spec"]["template"]["metadata"]
    assert not custom["selector"]["matchLabels"].items() <= pod["labels"].items()


def test_only_the_metadata_is_new_on_the_admin_port(
    provider: dict[str, Any], http_provider: dict[str, Any]
) -> None:
    """The ALLOW rule for the metadata is GET of exactly the paths the sidecar serves it at:
    other paths under the routed prefix, other methods and the approvals API stay refused."""
    admin = sidecar_admin_port()
    paths = [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ]
    spec = one(load_docs(SECURITY), "AuthorizationPolicy", "mcp-authz-callers")["spec"]
    (rule,) = [r for r in spec["rules"] if PRM_PATH in r["to"][0]["operation"].get("paths", [])]
    assert "from" not in rule and "when" not in rule, "any mesh caller"
    assert rule["to"] == [
        {"operation": {"ports": [str(admin)], "methods": ["GET"], "paths": paths}}
    ]
    for path in paths:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert not callers_allow(admin, method, path, ANY_CALLER), (method, path)
    for path in (
        PRM_PATH + "/",
        PRM_PATH + "/other",
        PRM_PATH + "x",
        PRM_PATH + "/mcp/",
        PRM_PATH + "%2Fmcp",
        PRM_PATH + "/..%2F..%2Fapprovals",
        PRM_PATH + "%2F..%2F..%2Fapprovals",
        PRM_PATH + "/../../approvals",
        "/approvals",
        "/approvals/apr_000000000000000000000000/approve",
        "/.well-known/oauth-authorization-server",
    ):
        assert not callers_allow(admin, "GET", path, ANY_CALLER), path
    # the check ports stay the MCP workload's proxy's alone
    for port in (provider["port"], http_provider["port"]):
        assert not callers_allow(port, "GET", paths[1], ANY_CALLER), port


# -- the EnvoyFilter (optional) ---------------------------------------------------------------


def ext_proc_filter() -> Doc:
    (doc,) = load_docs(EXT_PROC)
    return doc


def test_ext_proc_envoy_filter_structure() -> None:
    doc = ext_proc_filter()
    assert doc["apiVersion"] == "networking.istio.io/v1alpha3" and doc["kind"] == "EnvoyFilter"
    assert "EnvoyFilter" in doc["metadata"]["annotations"]["mcp-authz/status"]
    text = EXT_PROC.read_text()
    assert "ENVOYFILTER" in text and "NOT APPLIED BY DEFAULT" in text
    spec = doc["spec"]
    unknown(spec, ENVOY_FILTER_FIELDS, "EnvoyFilter")
    imagegen_docs = k8s_docs()
    imagegen = one(imagegen_docs, "Deployment", "imagegen")["spec"]["template"]
    assert spec["workloadSelector"]["labels"].items() <= imagegen["metadata"]["labels"].items()
    (patch,) = spec["configPatches"]
    unknown(patch, PATCH_FIELDS, "configPatch")
    assert patch["applyTo"] in APPLY_TO and patch["applyTo"] == "HTTP_FILTER"
    match = patch["match"]
    unknown(match, MATCH_FIELDS, "match")
    assert match["context"] in CONTEXTS and match["context"] == "SIDECAR_INBOUND"
    unknown(match["listener"], LISTENER_MATCH_FIELDS, "match.listener")
    unknown(match["listener"]["filterChain"], FILTER_CHAIN_FIELDS, "match.listener.filterChain")
    (upstream,) = [c for c in imagegen["spec"]["containers"] if c["name"] == "imagegen"]
    assert match["listener"]["portNumber"] == int(option(upstream["args"], "--port"))
    assert match["listener"]["filterChain"]["filter"]["subFilter"] == {
        "name": "envoy.filters.http.router"
    }
    assert patch["patch"]["operation"] in OPERATIONS
    assert patch["patch"]["operation"] == "INSERT_BEFORE"  # after ext_authz, before the router
    config = patch["patch"]["value"]["typed_config"]
    modes = [config["processing_mode"], *config.get("allowed_override_modes", [])]
    assert all(m["response_body_mode"] != "BUFFERED" for m in modes), "SSE must stream"


def envoy_yaml_ext_proc() -> dict[str, Any]:
    """The ext_proc HTTP filter of deploy/envoy.yaml's MCP listener."""
    listener = load_envoy_config()["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert "envoy.filters.http.ext_proc" in names, "deploy/envoy.yaml has no ext_proc filter"
    # Same place as the EnvoyFilter puts it: after ext_authz, right before the router.
    assert names[-2:] == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]
    assert names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.ext_proc")
    found: dict[str, Any] = hcm["http_filters"][names.index("envoy.filters.http.ext_proc")]
    return found


def envoy_yaml_mcp_route_ext_proc_mode() -> dict[str, Any]:
    """The processing mode deploy/envoy.yaml's /mcp route switches the filter on with."""
    listener = load_envoy_config()["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for host in hcm["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            per_filter = route.get("typed_per_filter_config", {})
            if "envoy.filters.http.ext_proc" in per_filter:
                mode: dict[str, Any] = per_filter["envoy.filters.http.ext_proc"]["overrides"][
                    "processing_mode"
                ]
                return mode
    raise AssertionError("deploy/envoy.yaml: no route enables ext_proc")


def test_ext_proc_envoy_filter_is_the_envoy_yaml_filter(provider: dict[str, Any]) -> None:
    """The EnvoyFilter's value is deploy/envoy.yaml's ext_proc filter, but for the gRPC target,
    and switched on for the whole inbound listener with the mode deploy/envoy.yaml's /mcp
    route uses (the workload serves only MCP; Istio has no route of ours to attach it to)."""
    expected = copy.deepcopy(envoy_yaml_ext_proc())
    cluster = istio_cluster(provider)
    expected["typed_config"]["grpc_service"]["envoy_grpc"] = {
        "cluster_name": cluster,
        "authority": cluster.replace("|", "_."),
    }
    expected["typed_config"]["processing_mode"] = envoy_yaml_mcp_route_ext_proc_mode()
    patch = ext_proc_filter()["spec"]["configPatches"][0]["patch"]
    assert patch["value"] == expected


def istio_cluster(provider: dict[str, Any]) -> str:
    """Istio's name for the outbound cluster of a Service port."""
    return f"outbound|{provider['port']}||{provider['service']}"


def test_ext_proc_targets_the_sidecar_cluster(provider: dict[str, Any]) -> None:
    config = ext_proc_filter()["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
    grpc = config["grpc_service"]["envoy_grpc"]
    assert grpc["cluster_name"] == istio_cluster(provider)
    assert grpc["authority"] == istio_cluster(provider).replace("|", "_.")


def bootstrap(http_filters: list[dict[str, Any]], grpc_cluster: str) -> dict[str, Any]:
    """A minimal Envoy bootstrap around `http_filters`, with `grpc_cluster` as an HTTP/2
    cluster (standing in for Istio's outbound cluster of the sidecar)."""

    def cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if http2:
            out["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_OPTIONS_TYPE,
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return out

    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": TYPE + "filters.http.router.v3.Router"},
    }
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "inbound",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "inbound",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ]
        },
        "http_filters": [*http_filters, router],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster(grpc_cluster, 9001, True), cluster("app", 8000, False)],
        }
    }


def istio_ext_authz(provider: dict[str, Any]) -> dict[str, Any]:
    """The ext_authz filter istiod generates for the envoyExtAuthzGrpc provider."""
    return istiod.grpc_ext_authz(PROVIDER, provider)


def validate(config: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    proc = envoy_validate(path)
    return proc.returncode, proc.stderr[-2000:]


@pytest.mark.processes
def test_istio_ext_authz_and_ext_proc_pass_envoy_validate(
    provider: dict[str, Any], tmp_path: Path
) -> None:
    ext_proc = ext_proc_filter()["spec"]["configPatches"][0]["patch"]["value"]
    config = bootstrap([istio_ext_authz(provider), ext_proc], istio_cluster(provider))
    code, stderr = validate(config, tmp_path)
    assert code == 0, stderr


@pytest.mark.processes
def test_envoy_validate_rejects_a_misspelt_ext_proc_field(
    provider: dict[str, Any], tmp_path: Path
) -> None:
    """Negative control: the check above would catch a bad patch."""
    ext_proc = copy.deepcopy(ext_proc_filter()["spec"]["configPatches"][0]["patch"]["value"])
    ext_proc["typed_config"]["processing_mode"]["response_body_mod"] = "STREAMED"
    code, _ = validate(bootstrap([ext_proc], istio_cluster(provider)), tmp_path)
    assert code != 0


# -- ext_authz over HTTP (provider `mcp-authz-http`) ------------------------------------------

HTTP_CONTRACT_GAPS = {
    "allowed_headers": "every client header (`.*`) after a header_mutation filter removed the "
    "client's x-mcp-authz-* and x-mcp-grant; Istio has no such filter and refuses a lone `*`: "
    "the provider lists the headers the sidecar reads",
    JWT_HEADER: "Istio's RequestAuthentication stores a verified JWT's claims under `payload`, "
    "the sidecar reads `jwt_payload`: every JWT would be a 401; claims do not reach the sidecar "
    "(as with the gRPC provider)",
    "clear_route_cache": "for deploy/envoy-http.yaml's `hides` route; Istio's routes are its own",
    "dynamic_metadata_from_headers": "no provider field: http/optional/authz-http-envoyfilter.yaml",
    "local_reply_config": "no provider field: http/optional/authz-http-envoyfilter.yaml "
    "(the 299/298 mappers; the others map Envoy's own errors, as under the gRPC provider)",
}
"""What deploy/envoy-http.yaml's ext_authz does that the `envoyExtAuthzHttp` provider cannot say,
and why (docs/deploy.md, "Istio", says the same)."""


def standalone_http_ext_authz() -> dict[str, Any]:
    return envoy_ext_authz(load_envoy_config(repo_envoy_config_path("http")))


def exact_names(matcher: dict[str, Any]) -> list[str]:
    """The header names of a ListStringMatcher made only of exact patterns."""
    assert all(set(p) <= {"exact", "ignore_case"} for p in matcher["patterns"]), matcher
    return [p["exact"] for p in matcher["patterns"]]


def http_envoy_filter() -> Doc:
    (doc,) = load_docs(HTTP_ENVOY_FILTER)
    return doc


def envoy_filter_patch(doc: Doc, apply_to: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        p for p in doc["spec"]["configPatches"] if p["applyTo"] == apply_to
    ]
    (patch,) = found
    return patch


def test_both_providers_are_registered(operator: Doc) -> None:
    names = [p["name"] for p in providers(operator["spec"])]
    assert names == [PROVIDER, HTTP_PROVIDER]


def test_http_provider_fields(http_provider: dict[str, Any]) -> None:
    unknown(http_provider, HTTP_PROVIDER_FIELDS, "envoyExtAuthzHttp")
    assert {"service", "port"} <= set(http_provider), "service and port are required"
    assert "includeHeadersInCheck" not in http_provider, "deprecated: includeRequestHeaders..."
    body = http_provider["includeRequestBodyInCheck"]
    unknown(body, REQUEST_BODY_FIELDS, "includeRequestBodyInCheck")
    assert isinstance(http_provider["statusOnError"], str), 'statusOnError is a string: "503"'
    assert http_provider["pathPrefix"].startswith("/"), "istiod requires a leading /"
    for field in (
        "includeRequestHeadersInCheck",
        "headersToUpstreamOnAllow",
        "headersToDownstreamOnDeny",
        "headersToDownstreamOnAllow",
    ):
        # istiod refuses the provider (and denies every request) on a lone "*"
        assert "*" not in http_provider[field], field
    assert all(
        isinstance(v, str) for v in http_provider["includeAdditionalHeadersInCheck"].values()
    )


def test_http_provider_matches_the_envoy_http_yaml_ext_authz(
    http_provider: dict[str, Any],
) -> None:
    """The filter istiod builds from the provider has deploy/envoy-http.yaml's limits, statuses,
    check path and answer routing; the differences are exactly HTTP_CONTRACT_GAPS."""
    standalone = standalone_http_ext_authz()
    built = istiod.http_ext_authz(HTTP_PROVIDER, http_provider)["typed_config"]
    ours, theirs = built["http_service"], standalone["http_service"]
    assert ours["server_uri"]["timeout"] == theirs["server_uri"]["timeout"]
    assert ours["path_prefix"] == theirs["path_prefix"] == CHECK_PREFIX
    assert built["failure_mode_allow"] is standalone["failure_mode_allow"] is False
    status = http_status_pb2.StatusCode.Value(standalone["status_on_error"]["code"])
    assert built["status_on_error"] == {"code": status} and status == 503
    assert built["with_request_body"] == standalone["with_request_body"]
    answers = theirs["authorization_response"]
    for key in (
        "allowed_upstream_headers",
        "allowed_client_headers",
        "allowed_client_headers_on_success",
    ):
        assert exact_names(ours["authorization_response"][key]) == exact_names(answers[key]), key
    added = {h["key"]: h["value"] for h in ours["authorization_request"]["headers_to_add"]}
    standalone_added = {
        h["key"]: h["value"] for h in theirs["authorization_request"]["headers_to_add"]
    }
    assert added == {k: v for k, v in standalone_added.items() if k != JWT_HEADER}
    assert set(standalone_added) - set(added) == {JWT_HEADER} <= set(HTTP_CONTRACT_GAPS)

    rest = set(standalone) - set(built) - {"grpc_service", "http_service"}
    assert rest <= set(HTTP_CONTRACT_GAPS), rest
    assert set(answers) - set(ours["authorization_response"]) <= set(HTTP_CONTRACT_GAPS)


def test_http_envoy_filter_completes_the_contract(http_provider: dict[str, Any]) -> None:
    """Merged into the filter istiod builds, the EnvoyFilter's ext_authz patch gives it
    deploy/envoy-http.yaml's whole answer routing, and its connection-manager patch carries
    deploy/envoy-http.yaml's two mappers that turn the sidecar's wire statuses back."""
    doc = http_envoy_filter()
    built = istiod.http_ext_authz(HTTP_PROVIDER, http_provider)
    merged = istiod.merge(built, envoy_filter_patch(doc, "HTTP_FILTER")["patch"]["value"])
    answers = merged["typed_config"]["http_service"]["authorization_response"]
    standalone = standalone_http_ext_authz()["http_service"]["authorization_response"]
    assert {k: exact_names(v) for k, v in answers.items()} == {
        k: exact_names(v) for k, v in standalone.items()
    }

    listener = load_envoy_config(repo_envoy_config_path("http"))["static_resources"]["listeners"][0]
    standalone_mappers = listener["filter_chains"][0]["filters"][0]["typed_config"][
        "local_reply_config"
    ]["mappers"]
    hcm = envoy_filter_patch(doc, "NETWORK_FILTER")["patch"]["value"]["typed_config"]
    assert hcm["@type"] == istiod.HCM_TYPE
    assert hcm == {
        "@type": istiod.HCM_TYPE,
        "local_reply_config": {"mappers": standalone_mappers[:2]},
    }
    wire = {
        m["filter"]["and_filter"]["filters"][0]["status_code_filter"]["comparison"]["value"][
            "default_value"
        ]: m["status_code"]
        for m in hcm["local_reply_config"]["mappers"]
    }
    assert wire == {wire_status: status for status, wire_status in WIRE_STATUS.items()}


def test_http_envoy_filter_structure() -> None:
    doc = http_envoy_filter()
    assert doc["apiVersion"] == "networking.istio.io/v1alpha3" and doc["kind"] == "EnvoyFilter"
    assert "EnvoyFilter" in doc["metadata"]["annotations"]["mcp-authz/status"]
    text = HTTP_ENVOY_FILTER.read_text()
    assert "ENVOYFILTER" in text and "NOT APPLIED BY DEFAULT" in text
    assert "ONLY WITH THE HTTP PROVIDER" in text
    assert doc["metadata"]["name"] != ext_proc_filter()["metadata"]["name"], "both may apply"
    spec = doc["spec"]
    unknown(spec, ENVOY_FILTER_FIELDS, "EnvoyFilter")
    assert spec["workloadSelector"] == ext_proc_filter()["spec"]["workloadSelector"]
    port = ext_proc_filter()["spec"]["configPatches"][0]["match"]["listener"]["portNumber"]
    for patch in spec["configPatches"]:
        unknown(patch, PATCH_FIELDS, "configPatch")
        assert patch["applyTo"] in APPLY_TO and patch["patch"]["operation"] in OPERATIONS
        match = patch["match"]
        unknown(match, MATCH_FIELDS, "match")
        assert match["context"] == "SIDECAR_INBOUND" and match["listener"]["portNumber"] == port
        unknown(match["listener"], LISTENER_MATCH_FIELDS, "match.listener")
        unknown(match["listener"]["filterChain"], FILTER_CHAIN_FIELDS, "match.listener.filterChain")
        assert patch["patch"]["operation"] == "MERGE"
    ext_authz = envoy_filter_patch(doc, "HTTP_FILTER")["match"]["listener"]["filterChain"]
    assert ext_authz["filter"]["subFilter"] == {"name": istiod.EXT_AUTHZ}


def test_http_policy_is_security_yaml_but_for_the_provider() -> None:
    (http_policy,) = load_docs(HTTP_POLICY)
    grpc_policy = one(load_docs(SECURITY), "AuthorizationPolicy", "imagegen-mcp-authz")
    assert http_policy["spec"]["provider"] == {"name": HTTP_PROVIDER}
    expected = copy.deepcopy(grpc_policy)
    expected["spec"]["provider"] = {"name": HTTP_PROVIDER}
    assert http_policy == expected, "same name and selector: it replaces the gRPC policy"


def test_plain_apply_of_the_http_folder_is_the_policy_only() -> None:
    """`kubectl apply -f deploy/istio/http/` (not recursive) applies the policy, never the
    EnvoyFilter under optional/."""
    kinds = [doc["kind"] for path in (ISTIO / "http").glob("*.yaml") for doc in load_docs(path)]
    assert kinds == ["AuthorizationPolicy"]
    assert HTTP_ENVOY_FILTER.parent != ISTIO / "http"


def test_http_provider_points_at_the_sidecar_service(http_provider: dict[str, Any]) -> None:
    docs = load_docs(AUTHZ)
    name, namespace, *rest = http_provider["service"].split(".")
    assert rest == ["svc", "cluster", "local"]
    service = one(docs, "Service", name)
    assert service["metadata"]["namespace"] == namespace
    (http_port,) = [p for p in service["spec"]["ports"] if p["port"] == http_provider["port"]]
    assert http_port["appProtocol"] == "http", "the sidecar's HTTP ext_authz speaks HTTP/1.1"
    spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
    (authz,) = spec["containers"]
    (container_port,) = [p for p in authz["ports"] if p["name"] == http_port["targetPort"]]
    listen_host, listen_port = host_port(option(authz["args"], "--http-authz"))
    assert container_port["containerPort"] == listen_port and listen_host == "0.0.0.0"
    # the same sidecar serves the gRPC provider: one Deployment for both transports
    _, grpc_port = host_port(option(authz["args"], "--grpc"))
    provider = mcp_provider(yaml.safe_load(OPERATOR.read_text())["spec"])
    assert {p["port"] for p in service["spec"]["ports"]} >= {provider["port"], listen_port}
    assert grpc_port == provider["port"]


class _Reads(dict[str, str]):
    """Request headers that remember which names were looked up."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(headers)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def _istio_matches(pattern: str, name: str) -> bool:
    """An Istio header pattern (exact, `prefix*`, `*suffix`), matched ignoring case."""
    pattern, name = pattern.lower(), name.lower()
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


async def test_http_provider_sends_every_header_the_sidecar_reads(
    http_provider: dict[str, Any], tmp_path: Path
) -> None:
    """Every request header the HTTP edge and the pipeline look at, over a spread of requests
    (allowed and denied calls, mirrored headers, a session, bodyless methods, a truncated
    body, no credential), is in `includeRequestHeadersInCheck`; the identity headers Envoy
    adds and the grant header are not, so a client cannot send them."""
    allowed = http_provider["includeRequestHeadersInCheck"]
    authorizer = seed_authorizer_at(tmp_path)
    json_headers = {"content-type": "application/json", "authorization": "Bearer tok"}
    requests = [
        ("POST", json_headers, tool_call()),
        ("POST", json_headers, tool_call("image.generate.openai")),
        ("POST", {**json_headers, "mcp-method": "tools/call", "mcp-name": "x"}, tool_call()),
        ("POST", {**json_headers, "mcp-session-id": "s-1", "x-request-id": "r-1"}, tool_call()),
        ("POST", {**json_headers, "x-envoy-auth-partial-body": "true"}, tool_call()[:20]),
        ("POST", {**json_headers, "content-encoding": "gzip"}, b"\x1f\x8b"),
        ("POST", {**json_headers, "x-http-method-override": "GET"}, tool_call()),
        ("POST", {"content-type": "application/json"}, tool_call()),
        ("GET", {"authorization": "Bearer tok", "accept": "text/event-stream"}, b""),
        ("DELETE", {"authorization": "Bearer tok", "mcp-session-id": "s-1"}, b""),
    ]
    read: set[str] = set()
    for method, headers, body in requests:
        recorded = _Reads(headers)
        http = http_request(method, CHECK_PREFIX + "/mcp", recorded, body)
        assert isinstance(http, HttpRequest) and http.headers is recorded
        await authorizer.check(http)
        read |= recorded.read
    assert {"authorization", "content-type", "mcp-session-id", "mcp-method"} <= read
    missing = sorted(name for name in read if not any(_istio_matches(p, name) for p in allowed))
    assert missing == [], f"the sidecar reads headers Istio would not send: {missing}"
    for forged in (PEER_HEADER, JWT_HEADER, GRANT_HEADER, SIDECAR_ONLY_PREFIX + "decision"):
        assert not any(_istio_matches(p, forged) for p in allowed), forged
    assert set(http_provider["includeAdditionalHeadersInCheck"]) == {PEER_HEADER}


# -- the HTTP provider in the real Envoy ------------------------------------------------------


def istio_http_config(
    provider: dict[str, Any], http_provider: dict[str, Any], envoy_filters: list[Doc]
) -> dict[str, Any]:
    """The gateway layout's addresses, with the MCP listener as Istio builds it for the HTTP
    provider and `envoy_filters` (tests/deploy/istiod.py)."""
    cfg = render_envoy_config(
        listen_host="127.0.0.1",
        listen_port=15006,
        admin_port=15000,
        authz_host="127.0.0.1",
        authz_port=provider["port"],
        upstream_host="127.0.0.1",
        upstream_port=8000,
        transport="http",
        authz_http_port=http_provider["port"],
    )
    (policy,) = load_docs(HTTP_POLICY)
    istiod.inbound_listener(
        cfg,
        istiod.custom_filters(HTTP_PROVIDER, http_provider, policy),
        envoy_filters=envoy_filters,
        service=http_provider["service"],
        ports={AUTHZ_CLUSTER: provider["port"], HTTP_AUTHZ_CLUSTER: http_provider["port"]},
        inbound_port=8000,
    )
    return cfg


@pytest.mark.processes
@pytest.mark.parametrize("with_filters", [False, True], ids=["provider", "envoyfilters"])
def test_istio_http_ext_authz_passes_envoy_validate(
    provider: dict[str, Any], http_provider: dict[str, Any], tmp_path: Path, with_filters: bool
) -> None:
    """The HTTP provider's filter alone, and with both optional EnvoyFilters (this transport's
    and the ext_proc one) patched in, are configurations Envoy 1.40 accepts."""
    filters = [http_envoy_filter(), ext_proc_filter()] if with_filters else []
    code, stderr = validate(istio_http_config(provider, http_provider, filters), tmp_path)
    assert code == 0, stderr


@pytest.mark.processes
def test_http_envoy_filter_leaves_the_grpc_provider_without_a_server(
    provider: dict[str, Any], tmp_path: Path
) -> None:
    """Why the HTTP EnvoyFilter must not be applied with the gRPC provider: merged into that
    provider's filter, its ext_authz patch replaces grpc_service (one oneof) with an
    http_service that names no server. Envoy accepts the result, so nothing warns: every
    check then fails, closed (tests/e2e/test_istio_http.py sees the 503s)."""
    patch = envoy_filter_patch(http_envoy_filter(), "HTTP_FILTER")["patch"]["value"]
    broken = istiod.merge(istio_ext_authz(provider), patch)["typed_config"]
    assert "grpc_service" not in broken and "server_uri" not in broken["http_service"]
    code, stderr = validate(
        bootstrap([{"name": istiod.EXT_AUTHZ, "typed_config": broken}], istio_cluster(provider)),
        tmp_path,
    )
    assert code == 0, stderr
