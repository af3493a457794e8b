#!/bin/sh
# Entrypoint of the local Redis image (deploy/docker/offline/redis.Dockerfile).
#
# Debian's redis-server starts in protected mode: without a password it accepts clients on
# loopback only, so the sidecar's connections from its own container are refused (its health
# turns NOT_SERVING and `up` stops at Envoy's dependency), while the healthcheck, which pings
# on loopback, still passes. The official redis image is built with protected mode off for
# the same reason; this does the same for `redis-server` commands, as the last option, so it
# wins. Redis is reachable on the compose network only: the compose file publishes no port
# of it.
set -e
if [ "${1:-}" = "redis-server" ]; then
    exec "$@" --protected-mode no
fi
exec "$@"
