#!/usr/bin/env bash
# Build and run taskpath-cpu's tests for aarch64 under qemu-user, so the NEON
# kernels run the same property tests as the x86-64 ones (and the suite checks
# that Kernels::best() picks them there), then the runtime's primitive
# conformance suite (runtime/core/tests/primitives.rs), so the CPU primitives
# on the NEON kernel table are checked bit for bit against the reference.
#
# Uses Debian's rustc-web / cargo-web 1.96 with the standard library's source
# (-Zbuild-std; rustup cannot add targets here), the aarch64 cross linker and
# qemu-aarch64, installing them with apt-get only if missing. Writes nothing
# outside the repository except target-aarch64/ (and the packages and cargo's
# download cache it installs). Extra arguments go to `cargo test`, e.g.
#   scripts/aarch64-test.sh -- --test-threads 2
# PROPTEST_CASES (default 64 per property) is passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(rustc-web cargo-web rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

# The linker and runner come from .cargo/config.toml ([target.aarch64-unknown-linux-gnu]).
export PATH="/usr/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
/usr/bin/cargo --version
cross_test() {
    /usr/bin/cargo test -Zbuild-std --target aarch64-unknown-linux-gnu \
        --target-dir target-aarch64 "$@"
}
cross_test -p taskpath-cpu "$@"
cross_test -p taskpath-runtime --features conformance --test primitives "$@"
