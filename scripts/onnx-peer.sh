#!/usr/bin/env bash
# Whole-task peer benchmark against onnxruntime: builds the C ABI
# (libtaskpath_ffi.so), has scripts/onnx-check.sh --whole pack the bundled
# reference model as f32 and as i4g32 (--quant int4, calibrated), export every
# task as one dense graph with dumped test samples and check each graph, then
# runs scripts/onnx_peer.py in ONE
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

step() { printf '\n--- onnx-peer: %s\n' "$1" >&2; }

command -v taskset >/dev/null || { echo "onnx-peer: needs taskset (util-linux)" >&2; exit 1; }
if [ -z "${ONNX_PEER_NO_BUILD:-}" ]; then  # set it to use the binaries already built
    step "cargo build --release -p taskpath-cli -p taskpath-ffi"
    cargo build --release -p taskpath-cli -p taskpath-ffi >&2
fi
TD=${CARGO_TARGET_DIR:-$ROOT/target}
LIB=$TD/release/libtaskpath_ffi.so

# The venv, the f32 and i4g32 packages and their whole-task graphs with the
# dumped test samples, each graph checked against the runtime's logits.
step "pack, export-onnx --whole, check (scripts/onnx-check.sh --whole $SAMPLES)"
ONNX_CHECK_OUT=$OUT ONNX_VENV=$VENV scripts/onnx-check.sh --whole "$SAMPLES" >&2

step "benchmark on core $CORE ($ROUNDS rounds x $RUNS calls per engine)"
lscpu | grep 'Model name' || true
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (working tree differs)')"
taskset -c "$CORE" "$VENV/bin/python" scripts/onnx_peer.py "$LIB" "$ROUNDS" "$RUNS" "$OUT/f32" "$OUT/i4g32"
