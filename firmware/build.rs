//! Puts memory.x on the linker's search path, links with cortex-m-rt's
//! link.x, and checks that the package to embed exists. With the `signed`
//! feature, turns the public key file in $TASKPATH_FIRMWARE_PUBKEY into
//! `$OUT_DIR/public_key.rs`.

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
    if std::env::var_os("CARGO_FEATURE_SIGNED").is_some() {
        println!("cargo:rerun-if-env-changed=TASKPATH_FIRMWARE_PUBKEY");
        let path = std::env::var_os("TASKPATH_FIRMWARE_PUBKEY").map(PathBuf::from);
        let Some(path) = path.filter(|p| p.is_file()) else {
            panic!(
                "the `signed` feature needs TASKPATH_FIRMWARE_PUBKEY: the absolute path of a \
                 `taskpath keygen` .pub file (scripts/nostd-build.sh uses firmware/keys/)"
            );
        };
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path).expect("reading the public key file");
        let mut lines = text.lines();
        assert_eq!(
            lines.next().map(str::trim),
            Some("taskpath-ed25519-public-key"),
            "{} is not a taskpath public key file",
            path.display()
        );
        let hex = lines.next().unwrap_or("").trim();
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: the key line must be 64 hex digits",
            path.display()
        );
        let bytes: Vec<String> = (0..32)
            .map(|i| format!("0x{}", &hex[2 * i..2 * i + 2]))
            .collect();
        std::fs::write(
            out.join("public_key.rs"),
            format!("[{}]\n", bytes.join(", ")),
        )
        .unwrap();
    }
}
