#!/usr/bin/env bash
# The CUDA device check: on a machine with an NVIDIA GPU, every task of the
# bundled model (models/reference/stage3, packed in f32, f16, i8row and
# i4g32) runs on its test set through the CPU path and the CUDA backend; the
# largest output difference (must be <= 1e-4 relative) and the per-task
# latency of both are printed. Then the crate's device tests run.
#
#   scripts/cuda-device-check.sh                 # build, pack and run here (needs cargo)
#   scripts/cuda-device-check.sh --prepare DIR   # build + pack only (no GPU needed)
#   scripts/cuda-device-check.sh --run DIR       # run a prepared DIR (no cargo needed)
#
# The split serves GPU machines without a Rust toolchain: prepare on the
# build machine, copy DIR over, run there. NVRTC is looked up on the library
# path, in /usr/local/cuda and in pip's nvidia-cuda-nvrtc packages; without
# one, the kernels are loaded from the PTX that --prepare wrote
# (TASKPATH_CUDA_PTX, JIT-compiled by the driver).
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    local dir=$1
    local target=${CARGO_TARGET_DIR:-target}
    mkdir -p "$dir"
    echo "== building (release)"
    cargo build --quiet --release -p taskpath-cli -p taskpath-cuda --bins
    local tests
    tests=$(cargo test --release -p taskpath-cuda --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        print(m["executable"])')
    rm -rf "$dir/tests" && mkdir -p "$dir/tests"
    for t in $tests; do cp "$t" "$dir/tests/$(basename "$t" | sed 's/-[0-9a-f]*$//')"; done
    cp "$target/release/taskpath-cuda-compare" "$dir/"
    # Stripped: the directory may have to travel to the GPU machine.
    strip "$dir/taskpath-cuda-compare" "$dir"/tests/* 2>/dev/null || true
    echo "== packing models/reference/stage3 (paths calibrated on models/reference/data)"
    for q in f32 f16 i8row i4g32; do
        local quant=()
        [ "$q" = f32 ] || quant=(--quant "$q")
        "$target/release/taskpath" pack models/reference/stage3 -o "$dir/reference-$q.tpk" \
            --calibration models/reference/data --path-coverage 0.99 "${quant[@]}" >/dev/null
    done
    # PTX for machines without NVRTC: compute_72 PTX is JIT-compiled by any newer driver.
    if [ -x scripts/cuda-check.sh ] && [ -d .venv-cuda ]; then
        local lib
        lib=$(find .venv-cuda -path '*nvidia/cuda_nvrtc/lib' -type d | head -n1)
        LD_LIBRARY_PATH="$lib" "$target/release/taskpath-cuda-ptx" "$dir" compute_72 >/dev/null
    fi
    ls -la "$dir" "$dir/tests"
}

run() {
    local dir=$1
    # cudarc looks for libnvrtc.so (or .so.12 ...): link whichever NVRTC this
    # machine has (a CUDA 13 toolkit ships libnvrtc.so.13) under that name.
    local found
    found=$( (ldconfig -p 2>/dev/null | awk '/libnvrtc\.so/ {print $NF}';
        find /usr/local /opt /usr/lib -name 'libnvrtc.so*' 2>/dev/null) |
        grep -v builtins | grep -v '\.alt\.' | sort | head -n1 || true)
    if [ -n "$found" ]; then
        mkdir -p /tmp/taskpath-nvrtc
        ln -sf "$found" /tmp/taskpath-nvrtc/libnvrtc.so
        export LD_LIBRARY_PATH="/tmp/taskpath-nvrtc:$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "NVRTC: $found"
    else
        echo "no NVRTC found: loading the prepared PTX (driver JIT)"
        export TASKPATH_CUDA_PTX="$dir/taskpath-compute_72.ptx"
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    local fail=0
    for q in f32 f16 i8row i4g32; do
        echo
        echo "== $q experts"
        "$dir/taskpath-cuda-compare" "$dir/reference-$q.tpk" models/reference/data --repeat 5 || fail=1
    done
    echo
    echo "== i4g32 experts, mapped package memory (the Jetson path, here over PCIe)"
    # Exit 1 = outputs differ (a failure); 2 = the driver refused to register
    # the package pages (some sandboxes do), reported but not a failure.
    local rc=0
    "$dir/taskpath-cuda-compare" "$dir/reference-i4g32.tpk" models/reference/data --residency mapped --repeat 5 || rc=$?
    [ $rc -eq 1 ] && fail=1
    echo
    echo "== device tests"
    for t in "$dir"/tests/*; do
        echo "-- $(basename "$t")"
        "$t" --test-threads=1 --nocapture 2>&1 | grep -Ev '^$' || fail=1
    done
    [ $fail -eq 0 ] && echo "DEVICE CHECK PASSED" || { echo "DEVICE CHECK FAILED"; exit 1; }
}

case "${1:-}" in
    --prepare) prepare "${2:?--prepare DIR}" ;;
    --run) run "${2:?--run DIR}" ;;
    "") d=${CARGO_TARGET_DIR:-target}/cuda-device; prepare "$d"; run "$d" ;;
    *) echo "usage: $0 [--prepare DIR | --run DIR]" >&2; exit 2 ;;
esac
