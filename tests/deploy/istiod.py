"""What istiod makes of deploy/istio: the Envoy configuration of the MCP workload's inbound
listener, for the tests that validate and run it with the real Envoy.

No istiod runs here, so its two steps are ported, in the JSON form of Envoy's protos, from
istio/istio (pilot/pkg/security/authz/builder/: builder.go and extauthz.go; pilot/pkg/
networking/core/envoyfilter/listener_patch.go):

- an AuthorizationPolicy with `action: CUSTOM` and `rules: [{}]` becomes two HTTP filters: an
  RBAC filter whose shadow rules only mark the request (dynamic metadata
  `istio_ext_authz_shadow_effective_policy_id`), and the provider's ext_authz filter, enabled
  by that mark (`filter_enabled_metadata`). `http_ext_authz` and `grpc_ext_authz` build the
  one of an `envoyExtAuthzHttp` and an `envoyExtAuthzGrpc` provider as `generateHTTPConfig`
  and `generateGRPCConfig` do;
- EnvoyFilter patches: `HTTP_FILTER` MERGE and INSERT_BEFORE, `NETWORK_FILTER` MERGE of the
  HTTP connection manager. A MERGE is `proto.Merge` of the typed configs: messages merged
  field by field, repeated fields appended, scalars replaced, a oneof member replacing the
  other members (`merge`).

`inbound_listener` turns a layout rendered by authz.devstack.envoy_config (listener, sidecar
and upstream clusters at real addresses) into that listener: Istio's filters and a single
catch-all route instead of deploy/envoy-http.yaml's, no local_reply_config (Istio sets
none), and the sidecar's clusters under Istio's names without active health checks (istiod
builds none for them).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from authz.devstack.envoy_config import (
    AUTHZ_CLUSTER,
    HTTP_AUTHZ_CLUSTER,
    LISTENER_NAME,
    UPSTREAM_CLUSTER,
    EnvoyConfig,
)

__all__ = [
    "EXT_AUTHZ",
    "HCM",
    "RBAC",
    "ROUTER",
    "custom_filters",
    "grpc_ext_authz",
    "http_ext_authz",
    "inbound_listener",
    "istio_cluster",
    "merge",
]

Doc = dict[str, Any]

TYPE = "type.googleapis.com/envoy.extensions."
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
RBAC = "envoy.filters.http.rbac"
ROUTER = "envoy.filters.http.router"

_EXT_AUTHZ_PREFIX = "istio-ext-authz"
_SHADOW_PREFIX = "istio_ext_authz_"
_SHADOW_KEY = "shadow_effective_policy_id"
_ONEOFS = ({"grpc_service", "http_service"},)
"""ExtAuthz's `services` oneof: the only one the patches here can touch."""


def istio_cluster(service: str, port: int) -> str:
    """Istio's name for the outbound cluster of a Service port."""
    return f"outbound|{port}||{service}"


def _headers(names: Sequence[str]) -> Doc | None:
    """`generateHeaders`: exact, `prefix*` or `*suffix`, ignoring case."""
    if not names:
        return None
    patterns = []
    for name in names:
        if name.startswith("*"):
            patterns.append({"ignore_case": True, "suffix": name[1:]})
        elif name.endswith("*"):
            patterns.append({"ignore_case": True, "prefix": name[:-1]})
        else:
            patterns.append({"ignore_case": True, "exact": name})
    return {"patterns": patterns}


def _enabled_by(provider: str) -> Doc:
    """`generateFilterMatcherForProvider`: the filter runs when the RBAC shadow rules marked
    the request for this provider."""
    return {
        "filter": RBAC,
        "path": [{"key": _SHADOW_PREFIX + _SHADOW_KEY}],
        "value": {"string_match": {"prefix": f"{_EXT_AUTHZ_PREFIX}-{provider}"}},
    }


def http_ext_authz(name: str, provider: Doc) -> Doc:
    """The ext_authz filter istiod builds for an `envoyExtAuthzHttp` provider (the typed config
    of `generateHTTPConfig`, with the provider-specific matcher of `buildHTTP`)."""
    cluster = istio_cluster(provider["service"], provider["port"])
    service: Doc = {
        "path_prefix": provider.get("pathPrefix", ""),
        "server_uri": {
            "timeout": provider.get("timeout", "600s"),
            "uri": f"http://{provider['service']}",
            "cluster": cluster,
        },
    }
    additional = provider.get("includeAdditionalHeadersInCheck", {})
    if additional:
        service["authorization_request"] = {
            "headers_to_add": [{"key": k, "value": additional[k]} for k in sorted(additional)]
        }
    response = {
        "allowed_upstream_headers": _headers(provider.get("headersToUpstreamOnAllow", [])),
        "allowed_client_headers": _headers(provider.get("headersToDownstreamOnDeny", [])),
        "allowed_client_headers_on_success": _headers(
            provider.get("headersToDownstreamOnAllow", [])
        ),
    }
    if any(response.values()):
        service["authorization_response"] = {k: v for k, v in response.items() if v}
    config: Doc = {
        "@type": TYPE + "filters.http.ext_authz.v3.ExtAuthz",
        "failure_mode_allow": provider.get("failOpen", False),
        "transport_api_version": "V3",
        "http_service": service,
        "filter_enabled_metadata": _enabled_by(name),
    }
    if "statusOnError" in provider:
        config["status_on_error"] = {"code": int(provider["statusOnError"])}
    body = provider.get("includeRequestBodyInCheck")
    if body is not None:
        config["with_request_body"] = {
            "max_request_bytes": body.get("maxRequestBytes", 0),
            "allow_partial_message": body.get("allowPartialMessage", False),
            "pack_as_bytes": body.get("packAsBytes", False),
        }
    allowed = _headers(provider.get("includeRequestHeadersInCheck", []))
    if allowed is not None:
        config["allowed_headers"] = allowed
    return {"name": EXT_AUTHZ, "typed_config": config}


def grpc_ext_authz(name: str, provider: Doc) -> Doc:
    """The ext_authz filter istiod builds for an `envoyExtAuthzGrpc` provider
    (`generateGRPCConfig`, with the provider-specific matcher of `buildHTTP`)."""
    config: Doc = {
        "@type": TYPE + "filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {
            "envoy_grpc": {
                "cluster_name": istio_cluster(provider["service"], provider["port"]),
                "authority": provider["service"],
            },
            "timeout": provider.get("timeout", "600s"),
        },
        "failure_mode_allow": provider.get("failOpen", False),
        "filter_enabled_metadata": _enabled_by(name),
        "transport_api_version": "V3",
    }
    if "statusOnError" in provider:
        config["status_on_error"] = {"code": int(provider["statusOnError"])}
    body = provider.get("includeRequestBodyInCheck")
    if body is not None:
        config["with_request_body"] = {
            "max_request_bytes": body.get("maxRequestBytes", 0),
            "allow_partial_message": body.get("allowPartialMessage", False),
            "pack_as_bytes": body.get("packAsBytes", False),
        }
    return {"name": EXT_AUTHZ, "typed_config": config}


def custom_filters(name: str, provider: Doc, policy: Doc, *, grpc: bool = False) -> list[Doc]:
    """The HTTP filters of one CUSTOM AuthorizationPolicy whose rules are all `{}` (match every
    request): the RBAC filter that marks requests for `name`, then the ext_authz filter of its
    provider (`envoyExtAuthzGrpc` when `grpc`, else `envoyExtAuthzHttp`)."""
    spec = policy["spec"]
    assert spec["action"] == "CUSTOM" and spec["provider"]["name"] == name
    assert spec["rules"] and all(rule == {} for rule in spec["rules"]), "only `{}` rules"
    meta = policy["metadata"]
    policies = {
        f"{_EXT_AUTHZ_PREFIX}-{name}-ns[{meta['namespace']}]-policy[{meta['name']}]-rule[{i}]": {
            "permissions": [{"any": True}],
            "principals": [{"any": True}],
        }
        for i in range(len(spec["rules"]))
    }
    rbac = {
        "name": RBAC,
        "typed_config": {
            "@type": TYPE + "filters.http.rbac.v3.RBAC",
            "shadow_rules": {"action": "DENY", "policies": policies},
            "shadow_rules_stat_prefix": _SHADOW_PREFIX,
        },
    }
    build = grpc_ext_authz if grpc else http_ext_authz
    return [rbac, build(name, provider)]


def merge(dst: Any, src: Any) -> Any:
    """`proto.Merge(dst, src)` on the JSON form: a new value, the inputs unchanged."""
    if isinstance(dst, dict) and isinstance(src, dict):
        out = copy.deepcopy(dst)
        for key, value in src.items():
            for oneof in _ONEOFS:
                if key in oneof:
                    for other in oneof - {key}:
                        out.pop(other, None)
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(dst, list) and isinstance(src, list):
        return [*copy.deepcopy(dst), *copy.deepcopy(src)]
    return copy.deepcopy(src)


def _same_type(dst: Doc, src: Doc) -> None:
    assert dst["typed_config"]["@type"] == src["typed_config"]["@type"], "MERGE of another type"


def _apply(hcm: Doc, envoy_filter: Doc, port: int) -> Doc:
    """One EnvoyFilter's patches on the HTTP connection manager of `port`'s inbound chain."""
    for patch in envoy_filter["spec"]["configPatches"]:
        match = patch["match"]
        assert match["context"] == "SIDECAR_INBOUND" and match["listener"]["portNumber"] == port
        chain = match["listener"]["filterChain"]["filter"]
        assert chain["name"] == HCM
        operation, value = patch["patch"]["operation"], patch["patch"]["value"]
        if patch["applyTo"] == "NETWORK_FILTER":
            assert operation == "MERGE" and "subFilter" not in chain
            _same_type({"typed_config": hcm}, value)
            hcm = merge({"typed_config": hcm}, value)["typed_config"]
            continue
        assert patch["applyTo"] == "HTTP_FILTER", patch["applyTo"]
        filters = hcm["http_filters"]
        names = [f["name"] for f in filters]
        target = names.index(chain["subFilter"]["name"])
        if operation == "MERGE":
            _same_type(filters[target], value)
            filters[target] = merge(filters[target], value)
        elif operation == "INSERT_BEFORE":
            filters.insert(target, copy.deepcopy(value))
        else:
            raise AssertionError(f"patch operation {operation} is not ported here")
    return hcm


def inbound_listener(
    cfg: EnvoyConfig,
    filters: Sequence[Doc],
    *,
    envoy_filters: Sequence[Doc] = (),
    service: str,
    ports: dict[str, int],
    inbound_port: int,
) -> None:
    """Make `cfg`'s listener the MCP workload's inbound listener under Istio, in place.

    `filters`: the CUSTOM policy's filters (`custom_filters`); `envoy_filters`: EnvoyFilter
    documents whose patches are applied in order; `service` and `ports`: the sidecar's Service
    host name and its port for each of the rendered sidecar clusters (`mcp_authz`,
    `mcp_authz_http`), which take Istio's names; `inbound_port`: the workload port the
    EnvoyFilters match (`portNumber`).
    """
    listener = next(
        lst for lst in cfg["static_resources"]["listeners"] if lst["name"] == LISTENER_NAME
    )
    hcm: Doc = {
        "@type": HCM_TYPE,
        "stat_prefix": f"inbound_0.0.0.0_{inbound_port}",
        "codec_type": "AUTO",
        "route_config": {
            "name": f"inbound|{inbound_port}||",
            "virtual_hosts": [
                {
                    "name": f"inbound|http|{inbound_port}",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": UPSTREAM_CLUSTER, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            *copy.deepcopy(list(filters)),
            {"name": ROUTER, "typed_config": {"@type": TYPE + "filters.http.router.v3.Router"}},
        ],
    }
    for envoy_filter in envoy_filters:
        hcm = _apply(hcm, envoy_filter, inbound_port)
    listener["filter_chains"][0]["filters"][0] = {"name": HCM, "typed_config": hcm}

    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] in (AUTHZ_CLUSTER, HTTP_AUTHZ_CLUSTER):
            name = istio_cluster(service, ports[cluster["name"]])
            cluster["name"] = name
            cluster["load_assignment"]["cluster_name"] = name
            cluster.pop("health_checks", None)
