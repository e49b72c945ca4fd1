#!/usr/bin/env bash
# The long fuzz run of docs/RELIABILITY.md on a many-core machine without a
# Rust toolchain: unpacks prebuilt fuzz binaries, seed packages and corpora
# (fuzz/device/payload.tar.xz, made by `scripts/fuzz.sh --payload`), runs the
# four targets side by side, WORKERS processes each, for SECONDS, and leaves
# the libFuzzer logs, any crash inputs and a corpus-coverage replay in OUT.
#
#   fuzz/device-run.sh SECONDS WORKERS OUT
set -u
SECS=${1:-400}
W=${2:-4}
OUT=${3:-/tmp/fuzz-out}
D=$(cd "$(dirname "$0")/device" && pwd)
cd "$D" && tar xJf payload.tar.xz
export TASKPATH_FUZZ_PACKAGES=$D/packages
mkdir -p corpus/open_bytes
cp packages/*.tpk packages/*.tpkd corpus/open_bytes/
{ nproc; grep -m1 'model name' /proc/cpuinfo; } >"$OUT/machine.txt"
TARGETS=$(ls bins)
for t in $TARGETS; do
    mkdir -p "$OUT/$t" "corpus/$t"
    (cd "$OUT/$t" && "$D/bins/$t" "$D/corpus/$t" -jobs="$W" -workers="$W" \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$OUT/$t/" >driver.log 2>&1) &
done
wait
for t in $TARGETS; do
    # Coverage of the whole final corpus (edges and features), one process.
    "$D/bins/$t" "$D/corpus/$t" -runs=0 -rss_limit_mb=4096 2>&1 | grep -E 'Loaded 1 modules|INITED' >"$OUT/$t/corpus-coverage.txt"
    execs=$(cat "$OUT/$t"/fuzz-*.log | grep -o 'stat::number_of_executed_units: *[0-9]*' | awk '{s+=$2} END {print s}')
    crashes=$(ls "$OUT/$t" | grep -cE '^(crash|timeout|oom|leak)-')
    echo "$t: executions $execs, crash/timeout/oom files $crashes, $(tail -1 "$OUT/$t/corpus-coverage.txt")" | tee -a "$OUT/summary.txt"
done
