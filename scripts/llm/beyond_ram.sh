#!/usr/bin/env bash
# Issue 15 "beyond RAM": taskpath (pread and mmap readers, prefetch off and
# on) and llama.cpp on the same model under one cgroup-v1 memory limit of
# half the package (page cache counted; scripts/llm/memlimit.sh, root), each
# from a cold page cache (sync + POSIX_FADV_DONTNEED on both files), 1 thread.
# Checks every limited run's greedy text against an unlimited run.
# usage: beyond_ram.sh PKG.tpk MODEL.gguf [N=128] [BUDGET=40%] [K=2]
#   env: TASKPATH (target/release/taskpath), LLM_PY (.venv-llm/bin/python)
set -u
here=$(cd "$(dirname "$0")" && pwd)
T=${TASKPATH:-target/release/taskpath}
PY=${LLM_PY:-.venv-llm/bin/python}
tpk=$1 gguf=$2 n=${3:-128} budget=${4:-40%} k=${5:-2}
limit=$(($(stat -c %s "$tpk") / 2))
out=$(mktemp -d)
cold() {
    sync
    python3 -c 'import os,sys
for p in sys.argv[1:]:
    fd=os.open(p,os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)' "$tpk" "$gguf"
}
gen() { "$T" generate "$tpk" -p "Hello world, this is a test" -n "$n" --temp 0 --ignore-eos -t 1 "$@"; }
text() { sed '/^prompt: /,$d' "$1"; }
echo "== uptime: $(uptime)"
echo "== limit $limit bytes (half of $tpk), $n tokens, budget $budget"
echo "== unlimited reference (no budget, warm)"
gen >"$out/ref" && cat "$out/ref"
for reader in pread mmap; do
    for kk in 0 "$k"; do
        echo "== taskpath --reader $reader --prefetch-topk $kk --expert-budget $budget, limit $limit, cold"
        cold
        "$here/memlimit.sh" "$limit" "$T" generate "$tpk" -p "Hello world, this is a test" -n "$n" \
            --temp 0 --ignore-eos -t 1 --expert-budget "$budget" --reader "$reader" --prefetch-topk "$kk" \
            >"$out/run" 2>&1
        sed -n '1,/^prompt: /{/fallback/p};/^prompt: /,$p' "$out/run"
        if cmp -s <(text "$out/ref") <(text "$out/run"); then echo "tokens: identical to the unlimited run"; else
            echo "tokens: DIFFER from the unlimited run"; diff <(text "$out/ref") <(text "$out/run") | head -5; fi
    done
done
echo "== llama.cpp (llama-cpp-python), --no-repack, limit $limit, cold"
cold
"$here/memlimit.sh" "$limit" "$PY" "$here/llamacpp_bench.py" "$gguf" --threads 1 --pp 8 --tg "$n" --reps 1 --no-repack
echo "== uptime: $(uptime)"
rm -r "$out"
