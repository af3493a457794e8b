# The ImageGen MCP server (Streamable HTTP at /mcp, plain GET /healthz) on :8000; the same
# image runs the offline Gemini-compatible endpoint with another command:
#
#   docker build -f deploy/docker/upstream.Dockerfile -t mcp-authz-imagegen:0.1.0 .
#   docker run --rm mcp-authz-imagegen:0.1.0 imagegen-offline-gemini --host 0.0.0.0 --port 8090
#
# Build context: the repository root (.dockerignore keeps it to what the build needs).
# The entrypoint (imagegen-entrypoint.sh) uses the offline endpoint at
# IMAGEGEN_OFFLINE_GEMINI_URL when no GOOGLE_API_KEY is given. Images are written to
# /data/outputs (IMAGEGEN_OUTPUTS); mount a volume there to keep them.

# Python 3.11.15 on Debian slim, pinned by the multi-arch index digest. Where no registry is
# reachable, deploy/docker/offline-images.sh passes local/python:3.11 (Debian bookworm's).
ARG PYTHON_IMAGE=python:3.11.15-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

FROM ${PYTHON_IMAGE} AS build
# The project with its imagegen extra (the MCP SDK, google-genai, pillow), every runtime
# dependency and the build backend at the exact versions in constraints.txt
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
    && /opt/mcp-authz/bin/pip install --only-binary=:all: '/src[imagegen]' \
    && /opt/mcp-authz/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcp-authz-imagegen" \
      org.opencontainers.image.description="ImageGen MCP server and offline Gemini endpoint (mcp-authz demo upstream)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mcp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mcp \
    && mkdir -p /data/outputs \
    && chown 10001:10001 /data/outputs
COPY --from=build /opt/mcp-authz /opt/mcp-authz
COPY deploy/docker/healthcheck.py /opt/mcp-authz/healthcheck.py
COPY deploy/docker/imagegen-entrypoint.sh /usr/local/bin/imagegen-entrypoint
ENV PATH=/opt/mcp-authz/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMAGEGEN_OUTPUTS=/data/outputs
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
VOLUME ["/data/outputs"]
EXPOSE 8000
# GET /healthz on the port of the default command; override it for another port or for
# imagegen-offline-gemini (its /healthz is on 8090 by default).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/opt/mcp-authz/healthcheck.py", "http", "http://127.0.0.1:8000/healthz"]
# Run through sh: works whatever file mode the checkout gave the script.
ENTRYPOINT ["/bin/sh", "/usr/local/bin/imagegen-entrypoint"]
CMD ["imagegen-upstream", "--host", "0.0.0.0", "--port", "8000", "--outputs", "/data/outputs"]
