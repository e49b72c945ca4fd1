#!/usr/bin/env bash
# Miri (nightly) over the package reader and the unsafe code the runtime
# uses on hostile input (docs/RELIABILITY.md, "Miri").
#
#   scripts/miri.sh
#
# 1. taskpath-format: every unit test (the zero-copy reader: bytemuck casts
#    of package bytes to f32, every table and slice access).
# 2. taskpath-tests --test fuzz_regressions, tests named `miri_*`: a tiny
#    package opened from an AlignedArena (runtime/core/src/mapped.rs, the
#    crate's unsafe), every task's session created and run with the generic
#    kernels and with the x86-64 SIMD kernels (targets/cpu, unsafe
#    intrinsics; Miri implements the SSE/AVX2/FMA intrinsics they use when
#    the features are enabled at compile time), and every kept fuzz
#    regression package.
# Not under Miri (gated with cfg(miri)): memory-mapped files
# (`MappedModel`, memmap2's mmap is a foreign call Miri cannot execute) and
# the timing ratios of resource_bounds.rs (Miri's clock is virtual).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add --toolchain nightly miri rust-src
fi
cargo +nightly miri setup >/dev/null

export CARGO_TARGET_DIR=${MIRI_TARGET_DIR:-target/miri}
echo "=== miri: taskpath-format"
cargo +nightly miri test -p taskpath-format

echo "=== miri: runtime unsafe (AlignedArena, kernels) via fuzz_regressions::miri_*"
MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-disable-isolation" \
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+avx2,+fma" \
    cargo +nightly miri test -p taskpath-tests --test fuzz_regressions -- miri_
