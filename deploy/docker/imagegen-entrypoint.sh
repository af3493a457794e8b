#!/bin/sh
# Entrypoint of the ImageGen upstream image: picks the Gemini endpoint, then runs "$@".
#
# - GOOGLE_API_KEY set (non-empty): the real Gemini API (or GOOGLE_GEMINI_BASE_URL if that is
#   set too).
# - GOOGLE_API_KEY empty or unset and IMAGEGEN_OFFLINE_GEMINI_URL set: the offline,
#   Gemini-compatible endpoint at that URL (`imagegen-offline-gemini`, same image), with a
#   placeholder key. This is what `docker compose up` does without a key.
# - neither: the server starts; the Gemini tool answers that GOOGLE_API_KEY is not set.
#
# An empty GOOGLE_GEMINI_BASE_URL (compose passes unset variables as "") is removed, so that
# the SDK falls back to its default endpoint.
set -eu

if [ -z "${GOOGLE_API_KEY:-}" ] && [ -n "${IMAGEGEN_OFFLINE_GEMINI_URL:-}" ]; then
    GOOGLE_API_KEY=offline-demo-key
    GOOGLE_GEMINI_BASE_URL=$IMAGEGEN_OFFLINE_GEMINI_URL
    export GOOGLE_API_KEY GOOGLE_GEMINI_BASE_URL
    echo "imagegen-entrypoint: no GOOGLE_API_KEY; Gemini calls go to the offline endpoint" \
        "$GOOGLE_GEMINI_BASE_URL" >&2
fi
if [ -z "${GOOGLE_GEMINI_BASE_URL:-}" ]; then
    unset GOOGLE_GEMINI_BASE_URL
fi
if [ -z "${GOOGLE_API_KEY:-}" ]; then
    unset GOOGLE_API_KEY
fi

exec "$@"
