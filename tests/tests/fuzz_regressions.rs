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

mod common;

use std::path::{Path, PathBuf};

use taskpath_checkpoint::{random_checkpoint, RandomSpec};
use taskpath_format::records::*;
use taskpath_format::Package;
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session};

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
fn pristine_small_package_runs_every_task() {
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

/// Every kept input of `TARGET` (`tests/data/fuzz/TARGET/*`), in name order.
fn kept(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(data_dir().join(target))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// `open_bytes` inputs are packages: replayed as given and re-sealed, as
/// the target does. The assertion is that this returns (no panic, hang or
/// abort); each finding also has a named test below with its exact error.
#[test]
fn every_kept_open_bytes_input_is_refused_or_runs() {
    let inputs = kept("open_bytes");
    assert!(!inputs.is_empty(), "tests/data/fuzz/open_bytes is empty");
    for (_, bytes) in &inputs {
        let _ = replay(bytes);
        let mut v = bytes.clone();
        mutate::reseal(&mut v);
        let _ = replay(&v);
    }
}

/// Packages materialised from structure-aware findings (the mutated base
/// or delta the target built), replayed the same way.
#[test]
fn every_kept_package_is_refused_or_runs() {
    for (_, bytes) in kept("packages") {
        let _ = replay(&bytes);
    }
}

/// Offset of the first record of section `kind`.
fn section(b: &[u8], kind: u32) -> usize {
    let rd = |at: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[at..at + n]);
        u64::from_le_bytes(v) as usize
    };
    (0..rd(40, 4))
        .map(|i| rd(32, 8) + 24 * i)
        .find(|&e| rd(e, 4) == kind as usize)
        .map(|e| rd(e + 8, 8))
        .unwrap()
}

fn reader_error(bytes: &[u8]) -> taskpath_format::FormatError {
    let a = AlignedArena::from_bytes(bytes);
    Package::parse(a.as_slice()).expect_err("the edit was accepted")
}

/// open_bytes, crash-2f29b566…: an f32 tensor of `u32::MAX x u32::MAX`
/// elements made the size check `rows * cols * 4` overflow u64 (a panic in
/// debug builds, a wrong comparison in release). Now: refused as a size
/// mismatch naming `tensors.bytes`.
#[test]
fn f32_tensor_size_overflow_is_an_error() {
    let mut b = small();
    let tensors = section(&b, taskpath_format::records::section::TENSORS);
    // The first dense f32 tensor (format u16 at +12 = 1, layout at +14 = 0);
    // rows at +20, cols at +24.
    let t = (tensors..)
        .step_by(48)
        .find(|&t| b[t + 12..t + 16] == [1, 0, 0, 0])
        .unwrap();
    b[t + 20..t + 28].copy_from_slice(&[0xFF; 8]);
    mutate::reseal(&mut b);
    let e = reader_error(&b);
    assert_eq!(e.field(), "tensors.bytes", "{e}");
}

/// For Miri without the packer (which is too slow to run there): a package
/// written directly, read from an `AlignedArena` (the runtime's `unsafe`
/// byte view, runtime/core/src/mapped.rs) with f32 data borrowed in place,
/// and a session over a caller arena running a one-op program (`Copy`) that
/// reads a slot nothing writes (which `check_all`, run by `verify`, refuses).
#[test]
fn miri_aligned_arena_model_and_session_on_a_written_package() {
    let mut w = common::one_head_writer();
    common::one_task(&mut w, 1, 2, 32);
    w.slots.push(SlotRec {
        offset: 0,
        len: 4,
        kind: 0,
    });
    w.slots.push(SlotRec {
        offset: 4,
        len: 4,
        kind: 0,
    });
    // Copy 2 values from slot 0 (offset 0) to slot 1 (offset 0).
    w.program.push(
        taskpath_format::Op::Copy {
            src: taskpath_format::SlotId(0),
            src_offset: 0,
            dst: taskpath_format::SlotId(1),
            dst_offset: 0,
            len: 2,
        }
        .encode(),
    );
    let bytes = w.finish(12, 0);
    let a = AlignedArena::from_bytes(&bytes);
    assert_eq!(a.as_slice(), &bytes[..]);
    assert_eq!(a.as_slice().as_ptr() as usize % 64, 0);
    let m = Model::from_bytes(a.as_slice()).unwrap();
    m.verify().unwrap();
    let mut arena = AlignedArena::new(m.task(0).unwrap().arena_bytes);
    let mut s = Session::new(&m, 0, arena.as_mut_slice()).unwrap();
    let mut out = [7f32; 2];
    s.run(&[&[1.0]], &mut out).unwrap();
    // Slot 0 is never written by this program: the arena starts zeroed.
    assert_eq!(out, [0.0, 0.0]);
    // Sessions rely on the meaning check, which refuses exactly that.
    let e = taskpath_runtime::plan::check_all(&m).unwrap_err();
    assert!(
        e.to_string().contains("reads a slot no earlier op wrote"),
        "{e}"
    );
}

/// The tables format 2.0 added — the metadata table, the expert groups, the
/// `(group, expert, component)` index (component and expert records) and
/// the op records — each field set to hostile values and re-sealed: the
/// reader refuses the package or every task still opens, runs or fails with
/// an error; never a panic. Also through a delta chain, where the chain-level
/// checks (groups defined earlier, blocks defined once) must hold.
#[test]
fn new_tables_survive_every_hostile_field_value() {
    const HOSTILE: [u64; 7] = [0, 1, 2, 3, 0xFF, 0xFFFF, u64::MAX];
    let base = small();
    let mut tried = 0;
    for f in mutate::fields(&base) {
        if ![5, 7, 9, 13, 14].contains(&f.table) {
            continue;
        }
        for v in HOSTILE {
            let mut b = base.clone();
            let bytes = v.to_le_bytes();
            b[f.at..f.at + f.width].copy_from_slice(&bytes[..f.width]);
            mutate::reseal(&mut b);
            let _ = replay(&b);
            tried += 1;
        }
    }
    assert!(tried > 1000, "only {tried} mutations");

    // A delta chain: stage 0 base + stage 1 delta; mutate the delta's new tables.
    let ck = random_checkpoint(&RandomSpec::small(16, 2, 4, 2, 2), 7);
    let opts = PackOptions::default();
    let b0 = AlignedArena::from_bytes(&pack(&ck.stage_prefix(0).unwrap(), &opts).unwrap());
    let m0 = Model::from_bytes(b0.as_slice()).unwrap();
    let delta = taskpath_pack::pack_delta(&ck, &m0, &opts).unwrap();
    let mut delta_tried = 0;
    for f in mutate::fields(&delta) {
        if ![2, 5, 7, 13, 14].contains(&f.table) {
            continue;
        }
        for v in HOSTILE {
            let mut d = delta.clone();
            let bytes = v.to_le_bytes();
            d[f.at..f.at + f.width].copy_from_slice(&bytes[..f.width]);
            mutate::reseal(&mut d);
            let a = AlignedArena::from_bytes(&d);
            if let Ok(m) = m0.with_delta(a.as_slice()) {
                let _ = exercise::exercise(&m, true);
            }
            delta_tried += 1;
        }
    }
    assert!(delta_tried > 200, "only {delta_tried} delta mutations");
}
