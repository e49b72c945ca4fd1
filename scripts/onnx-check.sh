#!/usr/bin/env bash
# The exported ONNX graphs checked by an independent engine: packs the bundled
# reference model, exports every task (f32 and int8 QDQ graphs) with
# `taskpath export-onnx`, dumps the CPU runtime's inputs and outputs of every
# graph on test samples (the hidden --dump-reference flag), then in a venv
# with onnxruntime + onnx runs scripts/onnx_check.py: onnx.checker on every
# graph, and every graph on every dumped input, within the manifest's bounds
# (f32: 1e-5 relative, int8: the bound documented in docs/NPU.md).
#
# With --whole it checks the whole-task graphs instead (`export-onnx --whole`):
# the model packed as f32 and as i4g32 (--quant int4), every task exported as
# one graph, onnx.checker on each and its logits on the dumped test samples
# within 1e-4 of the runtime's, relative to their max magnitude (0.25 for the
# i4g32 package, whose LUT kernels also quantize activations; docs/NPU.md).
#
# usage: scripts/onnx-check.sh [--whole] [SAMPLES]   (work files in
#        target/onnx-check; the venv in .venv-onnx, reused when present;
#        ONNX_VENV overrides it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${ONNX_CHECK_OUT:-$ROOT/target/onnx-check}
VENV=${ONNX_VENV:-$ROOT/.venv-onnx}
WHOLE=0
if [ "${1:-}" = --whole ]; then WHOLE=1; shift; fi
SAMPLES=${1:-8}
DATA=$ROOT/models/reference/data

step() { printf '\n--- onnx-check: %s\n' "$1"; }

step "python venv with onnxruntime, onnx, numpy ($VENV)"
if ! "$VENV/bin/python" -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check onnxruntime onnx numpy
fi
"$VENV/bin/python" -c "import onnxruntime, onnx; print('onnxruntime', onnxruntime.__version__, '/ onnx', onnx.__version__)"

step "cargo build --release -p taskpath-cli"
cargo build --release -p taskpath-cli
TP=${CARGO_TARGET_DIR:-$ROOT/target}/release/taskpath

step "pack the bundled model"
rm -rf "$OUT"
mkdir -p "$OUT"
if [ $WHOLE = 1 ]; then
    for q in f32:f32 i4g32:int4; do
        name=${q%%:*}
        q=${q#*:}
        "$TP" pack models/reference/stage3 -o "$OUT/$name/model.tpk" --calibration "$DATA" --quant $q >/dev/null
        TASKS=$("$TP" inspect "$OUT/$name/model.tpk" --json | "$VENV/bin/python" -c \
            "import json,sys; print(' '.join(t['name'] for t in json.load(sys.stdin)['tasks']))")
        for t in $TASKS; do
            step "export-onnx --whole --task $t ($name package)"
            "$TP" export-onnx "$OUT/$name/model.tpk" --task "$t" -o "$OUT/$name/$t" --whole \
                --dump-reference "$DATA" --dump-samples "$SAMPLES"
        done
    done
    step "onnxruntime + onnx.checker (whole graphs)"
    exec "$VENV/bin/python" scripts/onnx_check.py --whole "$OUT"/*/*/*.whole.onnx
fi
"$TP" pack models/reference/stage3 -o "$OUT/model.tpk" --calibration "$DATA" >/dev/null

TASKS=$("$TP" inspect "$OUT/model.tpk" --json | "$VENV/bin/python" -c \
    "import json,sys; print(' '.join(t['name'] for t in json.load(sys.stdin)['tasks']))")
for t in $TASKS; do
    step "export-onnx --task $t --int8"
    "$TP" export-onnx "$OUT/model.tpk" --task "$t" -o "$OUT/$t" --int8 \
        --dump-reference "$DATA" --dump-samples "$SAMPLES"
done

step "onnxruntime + onnx.checker"
"$VENV/bin/python" scripts/onnx_check.py "$OUT"/*/manifest.json
