#!/usr/bin/env bash
# CUDA compile check without a GPU, then the taskpath-cuda test suite.
#
# 1. Installs NVIDIA's NVRTC and ptxas from PyPI (nvidia-cuda-nvrtc-cu12,
#    nvidia-cuda-nvcc-cu12) into .venv-cuda (gitignored), once.
# 2. Compiles every kernel of targets/cuda/src/kernels.cu to PTX with NVRTC
#    (through the crate's own cudarc path: taskpath-cuda-ptx) for sm_72
#    (Xavier), sm_87 (Orin) and sm_89 (Ada), and assembles each with ptxas.
# 3. Runs `cargo test -p taskpath-cuda`: host tests run, device tests print
#    why they skip when there is no GPU.
#
# Env: CUDA_CHECK_ARCHES="72 87 89" (override), TASKPATH_CUDA_VENV (venv path),
#      CARGO_TARGET_DIR (as usual; PTX/cubins go to $CARGO_TARGET_DIR/cuda-ptx).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${TASKPATH_CUDA_VENV:-.venv-cuda}
arches=${CUDA_CHECK_ARCHES:-72 87 89}
target=${CARGO_TARGET_DIR:-target}
out="$target/cuda-ptx"

# `|| true`: on a clean clone the venv is absent, find fails, and under
# pipefail that failure would end the script before the install below.
find_tools() {
    nvrtc_lib=$(find "$venv" -path '*nvidia/cuda_nvrtc/lib' -type d 2>/dev/null | head -n1 || true)
    ptxas=$(find "$venv" -path '*nvidia/cuda_nvcc/bin/ptxas' -type f 2>/dev/null | head -n1 || true)
}
find_tools
if [ -z "$nvrtc_lib" ] || [ -z "$ptxas" ]; then
    echo "== installing NVRTC and ptxas into $venv (PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvcc-cu12
    find_tools
fi
[ -n "$nvrtc_lib" ] && [ -n "$ptxas" ] || { echo "NVRTC or ptxas missing from $venv" >&2; exit 1; }
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "== NVRTC: $nvrtc_lib"
echo "== ptxas: $("$ptxas" --version | tail -n1)"

cargo build --quiet -p taskpath-cuda --bin taskpath-cuda-ptx
compute=()
for a in $arches; do compute+=("compute_$a"); done
"$target/debug/taskpath-cuda-ptx" "$out" "${compute[@]}"
for a in $arches; do
    "$ptxas" -arch="sm_$a" --warn-on-spills "$out/taskpath-compute_$a.ptx" -o "$out/taskpath-sm_$a.cubin"
    echo "sm_$a: ptxas OK, cubin $(wc -c <"$out/taskpath-sm_$a.cubin") bytes"
done

echo "== cargo test -p taskpath-cuda"
cargo test -p taskpath-cuda -- --nocapture
