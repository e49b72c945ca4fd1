#!/usr/bin/env bash
# Miri (nightly) over the package reader and the unsafe code the runtime
# uses on hostile input (docs/RELIABILITY.md, "Miri").
#
#   scripts/miri.sh
#
# 1. taskpath-format: every unit test (the zero-copy reader: bytemuck casts
#    of package bytes to f32, every table and slice access).
# 2. taskpath-tests --test fuzz_regressions, tests named `miri_*`: a package
#    written directly (the packer is too slow to run under Miri), read from
#    an AlignedArena (runtime/core/src/mapped.rs, the runtime's only unsafe
#    besides mmap), a Model over it and a Session over a caller arena
#    created and run.
# 3. taskpath-runtime's pool tests: jobs borrowed across worker threads,
#    a worker panic, parking and waking.
# 4. taskpath-ffi --test miri: the C ABI on a tiny packed model (d=8): a
#    session in caller memory, a budgeted one (expert cache in the caller's
#    budget, evicting), tracer and prefetch hooks, runs, stats, destroy,
#    close; outputs equal the Rust API's.
# Not under Miri: memory-mapped files (`MappedModel`; memmap2's mmap is a
# foreign call Miri cannot execute), the packer-built packages of the other
# regression tests (minutes each under Miri) and the SIMD kernels of
# targets/cpu (their own proptests, far too slow under Miri).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    # rustup's own server may be unreachable (only package registries are):
    # fail with a clear message instead of hanging.
    timeout 600 rustup component add --toolchain nightly miri rust-src || {
        echo "scripts/miri.sh: Miri is not installed and 'rustup component add miri rust-src' failed" >&2
        exit 1
    }
fi
cargo +nightly miri setup >/dev/null

export CARGO_TARGET_DIR=${MIRI_TARGET_DIR:-target/miri}
echo "=== miri: taskpath-format"
cargo +nightly miri test -p taskpath-format

echo "=== miri: runtime (AlignedArena, Model, Session) via fuzz_regressions::miri_*"
cargo +nightly miri test -p taskpath-tests --test fuzz_regressions -- miri_

echo "=== miri: the session thread pool (runtime/core/src/pool.rs: lifetime-erased jobs, spin/park hand-off)"
cargo +nightly miri test -p taskpath-runtime --lib pool::

echo "=== miri: C ABI (taskpath-ffi --test miri)"
cargo +nightly miri test -p taskpath-ffi --test miri
