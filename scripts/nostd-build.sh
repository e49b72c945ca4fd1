#!/usr/bin/env bash
# The bare-metal proof: builds taskpath-format, taskpath-runtime and
# taskpath-cpu without std for thumbv7em-none-eabihf (Cortex-M4F), links the
# firmware/ image (the runtime opening a package from a static byte array
# and running two tasks from a static arena), prints its section sizes and
# what the runtime adds over the same image without it, and, where
# qemu-system-arm is installed, runs the image on an emulated MPS2-AN386 and
# compares its outputs with `taskpath run` on the host bit for bit.
#
# Toolchain: Debian's rustc-web 1.96 (it ships the standard library's source,
# so -Zbuild-std works; rustup cannot add targets here) and GNU ld from
# binutils-arm-none-eabi (rustc-web has no rust-lld). Both are installed with
# apt-get when missing. NOSTD_QEMU=1 installs qemu-system-arm too (large).
#
# usage: scripts/nostd-build.sh          (outputs in target-thumb/;
#        NOSTD_OPT=z for opt-level z instead of s)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TD=$ROOT/target-thumb
TARGET=thumbv7em-none-eabihf
FW=$TD/firmware
mkdir -p "$FW"

step() { printf '\n--- nostd: %s (%ds)\n' "$1" "$SECONDS"; }

step "toolchain"
pkgs=()
if [ ! -x /usr/bin/cargo ] || [ ! -x /usr/bin/rustc ] || [ ! -d /usr/lib/rustlib/src/rust/library/core ]; then
    pkgs+=(rustc-web cargo-web rust-web-src)
fi
command -v arm-none-eabi-ld >/dev/null && command -v arm-none-eabi-size >/dev/null ||
    pkgs+=(binutils-arm-none-eabi)
if [ "${NOSTD_QEMU:-0}" = 1 ] && ! command -v qemu-system-arm >/dev/null; then
    pkgs+=(qemu-system-arm)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
# Debian's cargo/rustc, by full path and first on PATH, with nightly flags.
dcargo() { PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 /usr/bin/cargo "$@"; }
dcargo --version
/usr/bin/rustc --version

step "no_std libraries: format + runtime + cpu for $TARGET (without and with quant)"
dcargo build -Zbuild-std=core,alloc --target "$TARGET" --release \
    -p taskpath-format -p taskpath-runtime -p taskpath-cpu --no-default-features \
    --target-dir "$TD"
dcargo build -Zbuild-std=core,alloc --target "$TARGET" --release \
    -p taskpath-format -p taskpath-runtime -p taskpath-cpu --no-default-features \
    --features taskpath-runtime/quant --target-dir "$TD"

step "a small package (host taskpath CLI)"
cargo build --release -p taskpath-cli
TP=${CARGO_TARGET_DIR:-$ROOT/target}/release/taskpath
rm -rf "$TD/model"
"$TP" gen-random "$TD/model/ck" --shape small --seed 3 --train-samples 8 --test-samples 2 >/dev/null
"$TP" pack "$TD/model/ck" -o "$TD/model/model.tpk"
PKG_BYTES=$(stat -c %s "$TD/model/model.tpk")
# The same package signed with the committed TEST-ONLY key (firmware/keys/),
# for the image that verifies its package (--features signed).
"$TP" pack "$TD/model/ck" -o "$TD/model/model-signed.tpk" --sign "$ROOT/firmware/keys/TEST-ONLY.key"
SIGNED_BYTES=$(stat -c %s "$TD/model/model-signed.tpk")

# opt-level of the firmware images: s (the profile's) unless NOSTD_OPT says.
OPT=${NOSTD_OPT:-s}
step "firmware image and baseline (firmware/, its own workspace, opt-level $OPT)"
build_fw() { # $1 = output name, rest = extra cargo args
    local name=$1
    shift
    (cd firmware && TASKPATH_FIRMWARE_PACKAGE="${FW_PACKAGE:-$TD/model/model.tpk}" \
        TASKPATH_FIRMWARE_PUBKEY="$ROOT/firmware/keys/TEST-ONLY.pub" \
        CARGO_PROFILE_RELEASE_OPT_LEVEL="$OPT" dcargo build -Zbuild-std=core,alloc --release --target-dir "$TD" "$@")
    cp "$TD/$TARGET/release/taskpath-firmware" "$FW/$name.elf"
}
build_fw taskpath-firmware
build_fw with-quant --features quant
build_fw baseline --features baseline
FW_PACKAGE="$TD/model/model-signed.tpk" build_fw signed --features signed

step "section sizes (arm-none-eabi-size -A)"
for elf in taskpath-firmware with-quant signed; do
    echo "$elf.elf:"
    arm-none-eabi-size -A "$FW/$elf.elf" | grep -E '^(section|\.vector_table|\.text|\.rodata|\.data|\.bss) '
done
python3 - "$FW" "$PKG_BYTES" "$OPT" "$SIGNED_BYTES" <<'EOF' | tee "$FW/sizes.md"
import subprocess, sys, collections
fw, pkg, opt, signed_pkg = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
print(f"opt-level {opt}, package {pkg} bytes\n")
def sections(elf):
    out = subprocess.run(["arm-none-eabi-size", "-A", elf], capture_output=True, text=True, check=True).stdout
    s = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0].startswith(".") and f[1].isdigit():
            s[f[0]] = int(f[1])
    return s
full, quant, base = (sections(f"{fw}/{n}.elf") for n in ("taskpath-firmware", "with-quant", "baseline"))
names = [".vector_table", ".text", ".rodata", ".data", ".bss"]
print("| section | image (f32 only) | image with `quant` | baseline (no runtime) | runtime adds (f32 only) | runtime adds (with `quant`) |")
print("|---|---:|---:|---:|---:|---:|")
for n in names:
    a, q, b = full.get(n, 0), quant.get(n, 0), base.get(n, 0)
    print(f"| {n} | {a} | {q} | {b} | {a - b} | {q - b} |")
flash = lambda s: sum(s.get(n, 0) for n in [".vector_table", ".text", ".rodata", ".data"])
own = lambda s, p=pkg: (s[".text"] - base[".text"]) + (s[".rodata"] - p - base[".rodata"]) + (s.get(".data", 0) - base.get(".data", 0))
code, qcode = own(full), own(quant)
signed = sections(f"{fw}/signed.elf")
scode = own(signed, signed_pkg)
print()
print(f"- package (weights + tables) in .rodata: {pkg} bytes")
print(f"- flash, whole image: {flash(full)} bytes f32 only, {flash(quant)} with `quant`; baseline: {flash(base)} bytes")
print(f"- runtime's own flash (code + constants, without the package), f32 only: {code} bytes = {code / 1024:.1f} KiB (goal: < 64 KiB)")
print(f"- runtime's own flash with the quantized kernels (`--features quant`): {qcode} bytes = {qcode / 1024:.1f} KiB")
print(f"- runtime's own flash with the signature check (`--features signed`, f32 only; package {signed_pkg} bytes with its 112-byte signature record): {scode} bytes = {scode / 1024:.1f} KiB; the check (SHA-512 + ed25519 verify + SysTick timing) adds {scode - code} bytes")
print(f"- RAM (.data + .bss): {full.get('.data', 0) + full.get('.bss', 0)} bytes (16 KiB arena: plan + slots, + 4 KiB inputs, static)")

# Where the image's code goes, by crate (symbol sizes; LTO inlines across
# crates, so this is indicative only).
nm = subprocess.run(["arm-none-eabi-nm", "-S", "-C", "--size-sort", f"{fw}/taskpath-firmware.elf"],
                    capture_output=True, text=True, check=True).stdout
by = collections.Counter()
for line in nm.splitlines():
    f = line.split(maxsplit=3)
    if len(f) < 4 or f[2].lower() not in "tr":
        continue
    name = f[3]
    if name.startswith("<") and " as " in name:  # <T as crate::Trait>::f
        name = name.split(" as ", 1)[1]
    name = name.lstrip("<&*").removeprefix("mut ").removeprefix("dyn ").split("<")[0]
    crate = name.split("::")[0] if "::" in name else ("compiler_builtins/libm C symbols" if not name.startswith("_ZN") else name)
    if f[3] == "PACKAGE" or name.endswith("PACKAGE"):
        crate = "(package bytes)"
    by[crate] += int(f[1], 16)
print()
print("| crate (symbols in .text/.rodata, indicative) | bytes |")
print("|---|---:|")
for crate, n in by.most_common(12):
    print(f"| {crate} | {n} |")
if own(full) >= 64 * 1024:
    sys.exit("nostd: the runtime's own flash (f32 only) is over the 64 KiB goal")
EOF

if command -v qemu-system-arm >/dev/null; then
    step "run on qemu-system-arm -M mps2-an386 (Cortex-M4F, semihosting)"
    timeout 120 qemu-system-arm -M mps2-an386 -nographic \
        -semihosting-config enable=on,target=native -kernel "$FW/taskpath-firmware.elf" |
        tee "$FW/qemu.txt"
    grep -qx ok "$FW/qemu.txt" || { echo "nostd: the firmware did not finish with ok" >&2; exit 1; }

    step "signed image: verify the embedded package's signature (qemu -icount shift=0)"
    # -icount shift=0: virtual time advances 1 ns per instruction, so
    # SysTick on the board's 1 MHz reference clock ticks once per 1000
    # instructions: ticks x 1000 is the instruction count of the check (not
    # real-hardware cycles: qemu models no pipeline, flash wait states or
    # caches).
    start=$(date +%s.%N)
    timeout 300 qemu-system-arm -M mps2-an386 -nographic -icount shift=0 \
        -semihosting-config enable=on,target=native -kernel "$FW/signed.elf" >"$FW/qemu-signed.txt"
    end=$(date +%s.%N)
    grep -E '^(verify|package|ok|FAILED)' "$FW/qemu-signed.txt"
    grep -qx ok "$FW/qemu-signed.txt" || { echo "nostd: the signed firmware did not finish with ok" >&2; exit 1; }
    ticks=$(sed -n 's/^verify firmware: signature ok, \([0-9]*\) ticks$/\1/p' "$FW/qemu-signed.txt")
    [ -n "$ticks" ] && [ "$ticks" -gt 0 ] || { echo "nostd: the signed firmware printed no verify time" >&2; exit 1; }
    python3 - "$ticks" "$start" "$end" "$SIGNED_BYTES" <<'EOF' | tee -a "$FW/sizes.md"
import sys
t, a, b, n = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(f"- signature check of the {n}-byte signed package on qemu mps2-an386 (-icount shift=0): "
      f"{t} SysTick reference-clock ticks = about {t * 1000 / 1e6:.1f} M instructions "
      f"(about {t * 1000 / 25e6 * 1e3:.0f} ms at 25 MHz, {t * 1000 / 168e6 * 1e3:.0f} ms at 168 MHz, if each took one cycle; not a hardware measurement); "
      f"whole qemu run {b - a:.1f} s wall")
EOF

    step "firmware outputs vs taskpath run on the host (same inputs)"
    python3 - "$FW" "$TD/model/model.tpk" "$TP" <<'EOF'
import json, struct, subprocess, sys, pathlib
fw, model, tp = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lines = [l.split() for l in (fw / "qemu.txt").read_text().splitlines()]
tasks = [l[2] for l in lines if l[:2] == ["inputs", "firmware"]]
passed = failed = 0
for t, name in enumerate(tasks):
    lens = next(list(map(int, l[3:])) for l in lines if l[:3] == ["inputs", "firmware", name])
    args = []
    for i, n in enumerate(lens):
        # Same formula as firmware/src/main.rs and examples/firmware-c/main.c.
        xs = [(((j * 7 + i * 13 + t * 5) % 17) - 8) * 0.125 for j in range(n)]
        head = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % n
        head += " " * ((64 - (10 + len(head) + 1) % 64) % 64) + "\n"
        p = fw / f"{name}.{i}.npy"
        p.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode()
                      + struct.pack(f"<{n}f", *xs))
        args += ["--input", str(p)]
    rust = json.loads(subprocess.run([tp, "run", model, "--task", name, *args, "--json"],
                                     capture_output=True, text=True, check=True).stdout)["outputs"][0]
    got = {int(l[3]): int(l[4], 16) for l in lines if l[:3] == ["out", "firmware", name]}
    for k, x in enumerate(rust):
        want = struct.unpack("<I", struct.pack("<f", float(x)))[0]
        if got.get(k) == want:
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH {name}[{k}]: firmware 0x{got.get(k, 0):08x}, host 0x{want:08x}")
print("firmware (Cortex-M4F, qemu) vs host x86-64 taskpath run, f32 bits:")
print(f"nostd: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
EOF
else
    echo "qemu-system-arm not installed: image linked, not run (NOSTD_QEMU=1 installs it)"
fi
step "done: $FW/taskpath-firmware.elf, sizes in $FW/sizes.md"
