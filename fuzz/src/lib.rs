//! Shared code of the fuzz targets: the seed packages built by
//! `scripts/fuzz.sh` (with the `taskpath` CLI), the structure-aware mutator
//! and the "open every task and run it" exercise.
#![warn(missing_docs)]

pub mod exercise;
pub mod mutate;

use std::path::PathBuf;

use taskpath_runtime::AlignedArena;

/// Where the seed packages are: `$TASKPATH_FUZZ_PACKAGES`, else
/// `fuzz/packages/` (written by `scripts/fuzz.sh`).
pub fn packages_dir() -> PathBuf {
    std::env::var_os("TASKPATH_FUZZ_PACKAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/packages")))
}

/// A seed package with its mutable fields.
#[derive(Debug)]
pub struct Seed {
    /// File name under [`packages_dir`].
    pub name: &'static str,
    /// The bytes, 64-byte aligned.
    pub bytes: AlignedArena,
    /// Its fields for [`mutate::apply`].
    pub fields: Vec<mutate::Field>,
}

/// Loads seed package `name`; a missing file is a setup error with the
/// command that makes it, not a finding.
pub fn load(name: &'static str) -> Seed {
    let path = packages_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fuzz seed package {} is missing ({e}); run scripts/fuzz.sh (or scripts/fuzz.sh --seeds-only) first",
            path.display()
        )
    });
    let fields = mutate::fields(&bytes);
    Seed {
        name,
        bytes: AlignedArena::from_bytes(&bytes),
        fields,
    }
}

/// Base packages the structure-aware targets mutate: small ones first
/// (fast executions), then the bundled reference model in f32, int4 and
/// mixed precision.
pub const BASES: [&str; 5] = [
    "small.tpk",
    "small-int4.tpk",
    "ref-f32.tpk",
    "ref-int4.tpk",
    "ref-mixed.tpk",
];

/// Delta chains: a base and its delta packs, in order.
pub const CHAINS: [&[&str]; 2] = [
    &["small-s0.tpk", "small-s1.tpkd"],
    &["ref-s1.tpk", "ref-s2.tpkd", "ref-s3.tpkd"],
];
