#!/usr/bin/env bash
# The base image for deploy/Dockerfile: prints the name to pass as BASE_IMAGE.
#
#   scripts/base-image.sh            python:3.11-slim if present or pullable, else a local
#                                    Debian bookworm image built with mmdebstrap (DESIGN §9)
#   scripts/base-image.sh --local    always the local mmdebstrap image
#
# The local image (FEDMKT_LOCAL_BASE, default fedmkt-base:bookworm) is Debian bookworm's
# python3 (3.11) + python3-venv + ca-certificates from the Debian mirror apt is configured with
# (FEDMKT_DEBIAN_MIRROR overrides it); about 80 s and 170 MB. Built once: an existing image of
# that name is reused. Needs root (mmdebstrap) and a running engine (docker import).
set -euo pipefail

UPSTREAM="${FEDMKT_BASE_IMAGE:-python:3.11-slim}"
LOCAL="${FEDMKT_LOCAL_BASE:-fedmkt-base:bookworm}"
DOCKER="${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || command -v docker )}"

say() { echo "[base-image] $*" >&2; }

mirror() {
    if [ -n "${FEDMKT_DEBIAN_MIRROR:-}" ]; then echo "$FEDMKT_DEBIAN_MIRROR"; return; fi
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        # deb822: the first URIs line of a stanza whose Suites name bookworm (not -security)
        uri="$(awk '/^URIs:/{u=$2} /^Suites:/{if ($0 ~ /bookworm( |$)/) {print u; exit}}' \
            /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if [ "${1:-}" != "--local" ]; then
    if "$DOCKER" image inspect "$UPSTREAM" >/dev/null 2>&1; then
        echo "$UPSTREAM"; exit 0
    fi
    if timeout 120 "$DOCKER" pull -q "$UPSTREAM" >/dev/null 2>&1; then
        say "pulled $UPSTREAM"
        echo "$UPSTREAM"; exit 0
    fi
    say "$UPSTREAM cannot be pulled: using a local Debian bookworm base ($LOCAL)"
fi

if "$DOCKER" image inspect "$LOCAL" >/dev/null 2>&1; then
    say "$LOCAL exists"
    echo "$LOCAL"; exit 0
fi
command -v mmdebstrap >/dev/null || { say "mmdebstrap missing (apt-get install mmdebstrap)"; exit 1; }
MIRROR="$(mirror)"
say "mmdebstrap bookworm from $MIRROR -> docker import $LOCAL"
started=$(date +%s)
mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm - "$MIRROR" \
    | "$DOCKER" import --change 'CMD ["/usr/bin/python3"]' \
        --change 'ENV LANG=C.UTF-8' - "$LOCAL" >/dev/null
say "$LOCAL built in $(( $(date +%s) - started )) s ($("$DOCKER" image inspect "$LOCAL" \
    --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$LOCAL"
