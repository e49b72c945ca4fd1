//! Puts memory.x on the linker's search path, links with cortex-m-rt's
//! link.x, and checks that the package to embed exists.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    std::fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg=-Tlink.x");
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=TASKPATH_FIRMWARE_PACKAGE");
    match std::env::var_os("TASKPATH_FIRMWARE_PACKAGE") {
        Some(p) if PathBuf::from(&p).is_file() => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(p).display());
        }
        _ => panic!(
            "set TASKPATH_FIRMWARE_PACKAGE to the absolute path of a .tpk to embed \
             (scripts/nostd-build.sh generates one)"
        ),
    }
}
