#!/usr/bin/env bash
# Whole-task peer benchmark against onnxruntime: packs the bundled reference
# model as f32 and as i4g32 (--quant int4, calibrated), exports every task as
# one dense graph (`export-onnx --whole`, with dumped test samples), builds
# the C ABI (libtaskpath_ffi.so), then runs scripts/onnx_peer.py in ONE
# python process pinned to one core: per round, Taskpath calls (ctypes,
# tp_session_run) and onnxruntime calls (1 intra-op / 1 inter-op thread,
# sequential, all graph optimizations) on the same inputs, interleaved.
# Prints the table of docs/BENCHMARKS.md ("Whole-task ONNX peer").
#
# usage: scripts/onnx-peer.sh [ROUNDS [RUNS [CORE]]]   (default 31 200 1;
#        work files in target/onnx-peer; the venv in .venv-onnx, as
#        scripts/onnx-check.sh; ONNX_VENV overrides it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${ONNX_PEER_OUT:-$ROOT/target/onnx-peer}
VENV=${ONNX_VENV:-$ROOT/.venv-onnx}
ROUNDS=${1:-31}
RUNS=${2:-200}
CORE=${3:-1}
SAMPLES=16
DATA=$ROOT/models/reference/data

step() { printf '\n--- onnx-peer: %s\n' "$1" >&2; }

command -v taskset >/dev/null || { echo "onnx-peer: needs taskset (util-linux)" >&2; exit 1; }
step "python venv with onnxruntime, onnx, numpy ($VENV)"
if ! "$VENV/bin/python" -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check onnxruntime onnx numpy
fi

if [ -z "${ONNX_PEER_NO_BUILD:-}" ]; then  # set it to use the binaries already built
    step "cargo build --release -p taskpath-cli -p taskpath-ffi"
    cargo build --release -p taskpath-cli -p taskpath-ffi >&2
fi
TD=${CARGO_TARGET_DIR:-$ROOT/target}
TP=$TD/release/taskpath
LIB=$TD/release/libtaskpath_ffi.so

rm -rf "$OUT"
for q in f32:f32 i4g32:int4; do
    name=${q%%:*}
    step "pack ($name) and export-onnx --whole"
    mkdir -p "$OUT/$name"
    "$TP" pack models/reference/stage3 -o "$OUT/$name/model.tpk" --calibration "$DATA" \
        --quant "${q#*:}" >/dev/null
    TASKS=$("$TP" inspect "$OUT/$name/model.tpk" --json | "$VENV/bin/python" -c \
        "import json,sys; print(' '.join(t['name'] for t in json.load(sys.stdin)['tasks']))")
    for t in $TASKS; do
        "$TP" export-onnx "$OUT/$name/model.tpk" --task "$t" -o "$OUT/$name/$t" --whole \
            --dump-reference "$DATA" --dump-samples "$SAMPLES" >&2
    done
done

step "benchmark on core $CORE ($ROUNDS rounds x $RUNS calls per engine)"
lscpu | grep 'Model name' || true
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (working tree differs)')"
taskset -c "$CORE" "$VENV/bin/python" scripts/onnx_peer.py "$LIB" "$ROUNDS" "$RUNS" "$OUT/f32" "$OUT/i4g32"
