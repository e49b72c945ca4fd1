#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed time, one after the other, each on
# one process (docs/RELIABILITY.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # default 60 s per target, all targets
#   scripts/fuzz.sh --seeds-only            # only build the seed packages
#   scripts/fuzz.sh --payload               # build all targets and pack them,
#       the seed packages and the corpora into fuzz/device/payload.tar.xz for
#       fuzz/device-run.sh on a bigger machine without a toolchain
#
# Installs cargo-fuzz if missing, builds the seed packages with the taskpath
# CLI (reference model: f32, int4, mixed precision, a stage 1 base with two
# delta packs; a small generated model: f32, int4, base + delta) into
# fuzz/packages/, seeds each target's corpus (fuzz/corpus/TARGET) with them
# and with the kept regression inputs (tests/data/fuzz/TARGET/), then fuzzes.
# The importer's targets (gguf_reader, safetensors_reader) are seeded with the
# tiny models' files in models/llm-tiny/ instead; run alone, they need no CLI.
# Exits non-zero on any crash, timeout or out-of-memory; the input is left in
# fuzz/artifacts/TARGET/ and the log in fuzz/logs/TARGET.log.
# Environment: FUZZ_NICE (default 10), FUZZ_RSS_MB (default 2048),
# FUZZ_TIMEOUT (seconds per input, default 10), TASKPATH_BIN (an already
# built taskpath CLI; else it is built), CARGO_TARGET_DIR (fuzz builds go to
# fuzz/target regardless; the CLI build honours it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER=60
SEEDS_ONLY=0
PAYLOAD=0
if [[ "${1:-}" == "--seeds-only" ]]; then
    SEEDS_ONLY=1
    shift
elif [[ "${1:-}" == "--payload" ]]; then
    PAYLOAD=1
    SECONDS_PER=0
    shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    SECONDS_PER=$1
    shift
fi
ALL_TARGETS=(open_bytes mutate_package delta_chain c_abi gguf_reader safetensors_reader)
TARGETS=("${@:-${ALL_TARGETS[@]}}")
# The importer's readers (feature `import`) are seeded from models/llm-tiny/
# and need no packages (nor the taskpath CLI).
IMPORT_TARGETS=" gguf_reader safetensors_reader "
NEED_PKGS=0
for t in "${TARGETS[@]}"; do
    [[ $IMPORT_TARGETS == *" $t "* ]] || NEED_PKGS=1
done
[[ $SEEDS_ONLY == 1 || $PAYLOAD == 1 ]] && NEED_PKGS=1
NICE=${FUZZ_NICE:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
TIMEOUT=${FUZZ_TIMEOUT:-10}

PKG=fuzz/packages
mkdir -p "$PKG" fuzz/logs

# --- seed packages, built with the CLI (skipped when already there) --------
if [[ -n "${TASKPATH_BIN:-}" ]]; then
    TP=$TASKPATH_BIN
elif [[ $NEED_PKGS == 1 ]]; then
    cargo build --release -q -p taskpath-cli
    TP="${CARGO_TARGET_DIR:-$ROOT/target}/release/taskpath"
fi
tp() { "$TP" "$@" >>fuzz/logs/seeds.log 2>&1; }
REF=models/reference
if [[ $NEED_PKGS == 1 && ! -f $PKG/ref-s3.tpkd ]]; then
    echo "building seed packages into $PKG"
    : >fuzz/logs/seeds.log
    tp gen-random "$PKG/small-model" --shape small --seed 7 --per-stage \
        --train-samples 16 --test-samples 4
    tp pack "$PKG/small-model" -o "$PKG/small.tpk"
    tp pack "$PKG/small-model" -o "$PKG/small-int4.tpk" --quant int4
    tp pack "$PKG/small-model/stage0" -o "$PKG/small-s0.tpk"
    tp add-task "$PKG/small-s0.tpk" "$PKG/small-model/stage1" -o "$PKG/small-s1.tpkd"
    tp pack $REF/stage3 -o "$PKG/ref-f32.tpk"
    tp pack $REF/stage3 -o "$PKG/ref-int4.tpk" --quant int4
    tp pack $REF/stage3 -o "$PKG/ref-mixed.tpk" --calibration $REF/data --budget 40%
    tp pack $REF/stage1 -o "$PKG/ref-s1.tpk"
    tp add-task "$PKG/ref-s1.tpk" $REF/stage2 -o "$PKG/ref-s2.tpkd"
    tp add-task "$PKG/ref-s1.tpk" $REF/stage3 --deltas "$PKG/ref-s2.tpkd" -o "$PKG/ref-s3.tpkd"
    ls -l "$PKG"/*.tpk*
fi
[[ $SEEDS_ONLY == 1 ]] && exit 0

# --- cargo-fuzz (idempotent install) and nightly ---------------------------
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo +nightly --version >/dev/null

# --- seed corpora ----------------------------------------------------------
seed() { # seed TARGET NAME BYTES-FILE
    mkdir -p "fuzz/corpus/$1"
    cp "$3" "fuzz/corpus/$1/$2"
}
for t in "${ALL_TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    if [[ -d tests/data/fuzz/$t ]]; then
        cp tests/data/fuzz/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
    fi
done
if [[ $NEED_PKGS == 1 ]]; then
    for f in "$PKG"/*.tpk "$PKG"/*.tpkd; do
        seed open_bytes "seed-$(basename "$f")" "$f"
    done
    # c_abi raw mode: mode 0, flags COPY, neutral knobs, then a small package.
    for f in "$PKG"/small*.tpk; do
        { printf '\x00\x01\x00\x00\x00\x00'; cat "$f"; } >"fuzz/corpus/c_abi/seed-raw-$(basename "$f")"
    done
fi
# The importer: every tiny GGUF / safetensors file whole, and its first 16 KiB
# (header and metadata, data cut short: the truncation paths).
LLM=models/llm-tiny
for f in "$LLM"/gguf/*.gguf; do
    seed gguf_reader "seed-$(basename "$f")" "$f"
    head -c 16384 "$f" >"fuzz/corpus/gguf_reader/seed-head-$(basename "$f")"
done
for f in "$LLM"/*/*.safetensors; do
    n="$(basename "$(dirname "$f")")-$(basename "$f")"
    seed safetensors_reader "seed-$n" "$f"
    head -c 16384 "$f" >"fuzz/corpus/safetensors_reader/seed-head-$n"
done
# Structure-aware targets: one near-no-op edit program per base / chain / mode.
for s in 0 1 2 3 4 5 6 7; do
    printf "\\x$s\\x00\\x00\\x00\\x00\\x00\\x03" >"fuzz/corpus/mutate_package/seed-$s"
    printf "\\x$s\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x03" >"fuzz/corpus/delta_chain/seed-$s"
done
printf '\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03' >fuzz/corpus/c_abi/seed-mutate
printf '\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03' >fuzz/corpus/c_abi/seed-delta

if [[ $PAYLOAD == 1 ]]; then
    (cd fuzz && CARGO_TARGET_DIR=target cargo +nightly fuzz build -a)
    rm -rf fuzz/device/stage && mkdir -p fuzz/device/stage/bins fuzz/device/stage/corpus
    for t in "${ALL_TARGETS[@]}"; do
        cp "fuzz/target/x86_64-unknown-linux-gnu/release/$t" fuzz/device/stage/bins/
        # open_bytes is re-seeded from the packages there.
        mkdir -p "fuzz/device/stage/corpus/$t"
        find "fuzz/corpus/$t" -type f ! -name 'seed-*.tpk*' -exec cp {} "fuzz/device/stage/corpus/$t/" \;
    done
    cp "$PKG"/*.tpk "$PKG"/*.tpkd fuzz/device/stage/ 2>/dev/null
    mkdir -p fuzz/device/stage/packages && mv fuzz/device/stage/*.tpk* fuzz/device/stage/packages/
    tar cJf fuzz/device/payload.tar.xz -C fuzz/device/stage bins packages corpus
    rm -rf fuzz/device/stage
    ls -l fuzz/device/payload.tar.xz
    exit 0
fi

# --- fuzz, one target at a time --------------------------------------------
export TASKPATH_FUZZ_PACKAGES=$ROOT/$PKG
fail=0
SUMMARY=fuzz/logs/summary.txt
: >"$SUMMARY"
for t in "${TARGETS[@]}"; do
    echo "=== fuzz $t for ${SECONDS_PER}s"
    mkdir -p "fuzz/artifacts/$t"
    # Only c_abi needs the C ABI crate (feature `ffi`), only the importer's
    # readers the importer (feature `import`).
    feat=(--no-default-features)
    [[ $t == c_abi ]] && feat=(--no-default-features --features ffi)
    [[ $IMPORT_TARGETS == *" $t "* ]] && feat=(--no-default-features --features import)
    # Build first (not counted in the fuzzing time).
    (cd fuzz && CARGO_TARGET_DIR=target cargo +nightly fuzz build -a "${feat[@]}" "$t" >/dev/null 2>"$ROOT/fuzz/logs/$t.build.log") || {
        cat "fuzz/logs/$t.build.log"
        exit 1
    }
    rc=0
    (cd fuzz && CARGO_TARGET_DIR=target nice -n "$NICE" cargo +nightly fuzz run -a "${feat[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" \
        -malloc_limit_mb="$RSS_MB" -print_final_stats=1 \
        -artifact_prefix="$ROOT/fuzz/artifacts/$t/") >"fuzz/logs/$t.log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "fuzz/logs/$t.log" | tail -1)
    corp=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "fuzz/logs/$t.log" | tail -1)
    line="$t: ${execs:-?} executions, $cov, $corp, ${SECONDS_PER}s, exit $rc"
    echo "$line" | tee -a "$SUMMARY"
    if [[ $rc != 0 ]]; then
        tail -n 60 "fuzz/logs/$t.log"
        ls -l "fuzz/artifacts/$t/"
        fail=1
    fi
done
cat "$SUMMARY"
exit $fail
