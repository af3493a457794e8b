# The mcp-authz sidecar: Envoy ext_authz v3 and ext_proc over gRPC (and grpc.health.v1) on
# :9001, the admin HTTP endpoint (/healthz, /readyz, /metrics) on :9002. With
# `--http-authz 0.0.0.0:9003` (or MCP_AUTHZ_HTTP_AUTHZ=0.0.0.0:9003) it also answers Envoy's
# ext_authz over HTTP on :9003 (deploy/envoy-http.yaml), with GET /healthz there for Envoy's
# health check; the HTTP layouts (deploy/docker-compose.http.yaml, deploy/k8s/http/,
# deploy/istio/) pass it. Not by default, so :9003 is not in EXPOSE.
#
#   docker build -f deploy/docker/sidecar.Dockerfile -t mcp-authz-sidecar:0.1.0 .
#   docker run --rm -v "$PWD/deploy/config:/etc/mcp-authz:ro" -p 127.0.0.1:9001:9001 \
#       mcp-authz-sidecar:0.1.0
#
# Build context: the repository root (.dockerignore keeps it to what the build needs).
# The configuration directory (grants.json, policies/) is not in the image: mount it at
# /etc/mcp-authz (MCP_AUTHZ_CONFIG). The sidecar polls it, so edits apply without a restart.

# Python 3.11.15 on Debian slim, pinned by the multi-arch index digest. Where no registry is
# reachable, deploy/docker/offline-images.sh passes local/python:3.11 (Debian bookworm's).
ARG PYTHON_IMAGE=python:3.11.15-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

FROM ${PYTHON_IMAGE} AS build
# The sidecar without extras (no MCP SDK, google-genai or pillow: the ImageGen upstream's
# image has them), every runtime dependency and the build backend at the exact versions in
# constraints.txt
# (PIP_CONSTRAINT also reaches pip's isolated build environment); wheels only, no compiler.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/deploy/docker/constraints.txt
WORKDIR /src
COPY deploy/docker/constraints.txt deploy/docker/constraints.txt
COPY pyproject.toml README.md ./
COPY authz authz
COPY imagegen_upstream imagegen_upstream
RUN python -m venv /opt/mcp-authz \
    && /opt/mcp-authz/bin/pip install --only-binary=:all: /src \
    && /opt/mcp-authz/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcp-authz-sidecar" \
      org.opencontainers.image.description="Envoy ext_authz sidecar enforcing JSON policies on MCP requests" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mcp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mcp
COPY --from=build /opt/mcp-authz /opt/mcp-authz
COPY deploy/docker/healthcheck.py /opt/mcp-authz/healthcheck.py
ENV PATH=/opt/mcp-authz/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MCP_AUTHZ_CONFIG=/etc/mcp-authz \
    MCP_AUTHZ_GRPC=0.0.0.0:9001 \
    MCP_AUTHZ_ADMIN=127.0.0.1:9002
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 9001 9002
# The check Envoy's cluster makes: grpc.health.v1 for envoy.service.auth.v3.Authorization on
# the port of MCP_AUTHZ_GRPC. NOT_SERVING (e.g. Redis down in fail-closed mode) is unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/opt/mcp-authz/healthcheck.py", "grpc"]
ENTRYPOINT ["mcp-authz"]
CMD ["serve"]
