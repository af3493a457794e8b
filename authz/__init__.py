"""mcp-authz: the policy sidecar that Envoy asks about every MCP request and response.

The pure core and its vocabulary: `model` (domain types), `mcp` (strict parsing of one MCP
message), `engine` (the decision), `strictjson` (the one JSON reader), `audit`, `metrics`.
Around it: `policy/` (the policy language), `pipeline/` (one request and its response
through the stores), `response/` (the response phase, pure), `envoy/` (Envoy's protocols;
protobuf stops there), the stores `counters/`, `approvals/` and `inflight/`, `config/`,
`server.py` (process wiring), `cli/` and `devstack/` (the whole layout on one machine).
docs/architecture.md has the map.
"""

__all__: list[str] = []
