//! Inputs the fuzz targets (fuzz/, docs/RELIABILITY.md) found crashing,
//! hanging or exhausting memory, kept after the fix as plain tests (stable,
//! no nightly, no libFuzzer). Each replays the same code path the target
//! ran — the structure-aware mutator and the "open every task and run it"
//! exercise are the fuzz crate's own files, included by path — and asserts
//! the documented outcome: an error naming the bad field, never a panic.
//!
//! `tests/data/fuzz/packages/` holds each finding as the exact package bytes
//! that failed (minimised, on the small seed model); every file there is
//! replayed by `every_kept_package_is_refused_or_runs`. The raw libFuzzer
//! inputs sit in `tests/data/fuzz/TARGET/`, which `scripts/fuzz.sh` adds to
//! each target's corpus so the fuzzers keep re-checking them.
//!
//! Tests named `miri_*` are small enough for Miri (`scripts/miri.sh`).

#[path = "../../fuzz/src/exercise.rs"]
#[allow(dead_code)]
mod exercise;
#[path = "../../fuzz/src/mutate.rs"]
#[allow(dead_code)]
mod mutate;

use std::path::{Path, PathBuf};

use taskpath_checkpoint::{random_checkpoint, RandomSpec};
use taskpath_format::Package;
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fuzz")
}

/// The small model of the fuzz seeds (scripts/fuzz.sh's `small.tpk` is the
/// CLI's `gen-random --shape small --seed 7`; this is the same spec).
fn small() -> Vec<u8> {
    pack(
        &random_checkpoint(&RandomSpec::small(16, 2, 4, 2, 2), 7),
        &PackOptions::default(),
    )
    .unwrap()
}

/// Parses, opens and runs `bytes` the way the fuzz targets do; returns the
/// reader's error, if any.
fn replay(bytes: &[u8]) -> Result<usize, String> {
    let a = AlignedArena::from_bytes(bytes);
    if let Ok(p) = Package::parse(a.as_slice()) {
        let _ = p.verify_all();
        for t in p.tensors().iter() {
            let _ = p.tensor_f32(&t);
        }
    }
    let m = Model::from_bytes(a.as_slice()).map_err(|e| e.to_string())?;
    let _ = m.verify();
    Ok(exercise::exercise(&m, true) + exercise::exercise(&m, false))
}

#[test]
fn miri_pristine_small_package_runs_every_task() {
    let bytes = small();
    let ran = replay(&bytes).unwrap();
    let a = AlignedArena::from_bytes(&bytes);
    let m = Model::from_bytes(a.as_slice()).unwrap();
    assert_eq!(
        ran,
        2 * m.task_count(),
        "every task runs, with and without path checks"
    );
}

#[test]
fn every_kept_package_is_refused_or_runs() {
    let dir = data_dir().join("packages");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        // The assertion is that this returns: no panic, no hang, no abort.
        let _ = replay(&bytes);
        n += 1;
    }
    println!("replayed {n} kept packages from {}", dir.display());
}
