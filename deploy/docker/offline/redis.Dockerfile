# Redis for deploy/docker/offline-images.sh: Debian bookworm's redis-server on the local Debian
# base image, where the official redis image cannot be pulled.
#
#   docker build -f deploy/docker/offline/redis.Dockerfile -t local/redis:bookworm \
#       deploy/docker/offline
#
# The compose file runs it as it runs the official image: `redis-server <options>` as uid 999,
# healthchecked with `redis-cli ping`. The entrypoint turns protected mode off (see
# redis-entrypoint.sh).
ARG BASE_IMAGE=local/python:3.11
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && redis-server --version
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint
EXPOSE 6379
# Run through sh: works whatever file mode the checkout gave the script.
ENTRYPOINT ["/bin/sh", "/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]
