#!/usr/bin/env bash
# The C example end to end: builds the Rust staticlib (taskpath-ffi) and the
# `taskpath` CLI, packs a small seeded model, embeds it in
# examples/firmware-c as a 16-byte aligned byte array (xxd -i), builds the C
# program with plain cc, runs it normally and under AddressSanitizer +
# UndefinedBehaviorSanitizer (LeakSanitizer on), and checks that its outputs
# equal `taskpath run` (the Rust API) on the same inputs, bit for bit.
#
# usage: scripts/c-example.sh            (work files in target/c-example)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${C_EXAMPLE_OUT:-$ROOT/target/c-example}
EX=$ROOT/examples/firmware-c

step() { printf '\n--- c-example: %s\n' "$1"; }

for tool in cc make xxd python3; do
    command -v "$tool" >/dev/null || { echo "c-example: needs $tool" >&2; exit 1; }
done

step "cargo build --release -p taskpath-ffi -p taskpath-cli"
cargo build --release -p taskpath-ffi -p taskpath-cli
TD=${CARGO_TARGET_DIR:-$ROOT/target}
TP=$TD/release/taskpath

step "a small packed model"
rm -rf "$OUT"
mkdir -p "$OUT/inputs"
"$TP" gen-random "$OUT/ck" --shape small --seed 3 --train-samples 8 --test-samples 2 >/dev/null
"$TP" pack "$OUT/ck" -o "$OUT/model.tpk"

step "cc (plain and -fsanitize=address,undefined)"
make -C "$EX" --no-print-directory MODEL="$OUT/model.tpk" BUILD="$OUT/build" TARGET_DIR="$TD"

step "run"
"$OUT/build/firmware_c" --file "$OUT/model.tpk" --write-inputs "$OUT/inputs" | tee "$OUT/c.txt"

step "run under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$OUT/build/firmware_c_san" --file "$OUT/model.tpk" >"$OUT/c-san.txt" 2>"$OUT/c-san.err" || {
    cat "$OUT/c-san.txt" "$OUT/c-san.err" >&2
    echo "c-example: the sanitizer build failed" >&2
    exit 1
}
if [ -s "$OUT/c-san.err" ]; then
    cat "$OUT/c-san.err" >&2
    echo "c-example: the sanitizers reported something" >&2
    exit 1
fi
# Timings and addresses differ between runs; everything else must not.
strip_times() { grep -v '^stats ' "$1" | sed -E 's/0x[0-9a-f]{9,}/ADDR/g'; }
diff <(strip_times "$OUT/c.txt") <(strip_times "$OUT/c-san.txt")
echo "sanitizer run: clean, same output"

step "taskpath run (Rust API) on the same inputs"
for task in $(awk '$1 == "out" && $2 == "memory" { print $3 }' "$OUT/c.txt" | sort -u); do
    args=()
    for f in $(ls "$OUT/inputs/$task".*.npy | sort -V); do args+=(--input "$f"); done
    "$TP" run "$OUT/model.tpk" --task "$task" "${args[@]}" --json >"$OUT/rust-$task.json"
done

python3 - "$OUT" <<'EOF'
import json, struct, sys, pathlib
out = pathlib.Path(sys.argv[1])
c = {}
for line in (out / "c.txt").read_text().splitlines():
    f = line.split()
    if f and f[0] == "out":
        c.setdefault((f[1], f[2]), {})[int(f[3])] = int(f[5], 16)
passed = failed = 0
for (source, task), got in sorted(c.items()):
    rust = json.loads((out / f"rust-{task}.json").read_text())["outputs"][0]
    # serde_json prints an f32 as the shortest decimal that parses back to it.
    want = [struct.unpack("<I", struct.pack("<f", float(x)))[0] for x in rust]
    for k, w in enumerate(want):
        if got.get(k) == w:
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH {source} {task}[{k}]: C 0x{got.get(k, 0):08x}, Rust 0x{w:08x}")
    if len(got) != len(want):
        failed += 1
        print(f"MISMATCH {source} {task}: C printed {len(got)} outputs, Rust {len(want)}")
print("C outputs (memory and file) vs taskpath run, f32 bits:")
print(f"c-example: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
EOF
