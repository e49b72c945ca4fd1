//! The C ABI driven from Rust: every entry point's error cases (NULL,
//! wrong struct_size, too-small or misaligned arena, corrupt package,
//! unknown task, wrong input/output count, stale handles) give their
//! documented status and a last-error message naming the problem; the
//! success path is bit-identical to the Rust API.

mod common;

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

use taskpath_checkpoint::{random_checkpoint, random_inputs, Checkpoint, RandomSpec, SplitMix64};
use taskpath_ffi::*;
use taskpath_pack::{pack, pack_delta, PackOptions};
use taskpath_runtime::format::records::blob_kind;
use taskpath_runtime::{AlignedArena, Model, Session};

use common::{close, fails, last, ok, open};
use tp_status::*;

// ---------------------------------------------------------------- fixtures

struct Fixture {
    /// The whole two-stage model.
    full: Checkpoint,
    /// Package of the whole model.
    pkg: AlignedArena,
    /// Stage-0 base package and the stage-1 delta pack on top of it.
    base: AlignedArena,
    delta: AlignedArena,
}

fn fixture() -> Fixture {
    let full = random_checkpoint(&RandomSpec::small(16, 2, 4, 2, 2), 7);
    let opts = PackOptions::default();
    let pkg = AlignedArena::from_bytes(&pack(&full, &opts).unwrap());
    let s0 = full.stage_prefix(0).unwrap();
    let base = AlignedArena::from_bytes(&pack(&s0, &opts).unwrap());
    let m0 = Model::from_bytes(base.as_slice()).unwrap();
    let delta = AlignedArena::from_bytes(&pack_delta(&full, &m0, &opts).unwrap());
    Fixture {
        full,
        pkg,
        base,
        delta,
    }
}

fn tmp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("taskpath-ffi");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn cpath(p: &std::path::Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn info(m: *const tp_model, t: u32) -> tp_task_info {
    // SAFETY: tp_task_info is plain data; all-zero is a valid value.
    let mut i: tp_task_info = unsafe { std::mem::zeroed() };
    i.struct_size = std::mem::size_of::<tp_task_info>() as u32;
    // SAFETY: live model, writable info.
    ok(unsafe { tp_model_task_info(m, t, &mut i) });
    i
}

fn model_config() -> tp_model_config {
    tp_model_config {
        struct_size: std::mem::size_of::<tp_model_config>() as u32,
        flags: 0,
        deltas: null(),
        delta_count: 0,
        delta_paths: null(),
        delta_path_count: 0,
    }
}

/// Session memory: `TP_ARENA_ALIGN`-aligned, `len` bytes.
fn arena(len: usize) -> AlignedArena {
    AlignedArena::new(len)
}

fn create(m: *const tp_model, t: u32, mem: &mut AlignedArena) -> *mut tp_session {
    let mut s = null_mut();
    let slice = mem.as_mut_slice();
    // SAFETY: live model, aligned writable memory kept for the session.
    ok(unsafe { tp_session_create(m, t, slice.as_mut_ptr().cast(), slice.len(), null(), &mut s) });
    assert_eq!(
        s.cast::<u8>(),
        slice.as_mut_ptr(),
        "the handle is the arena's address"
    );
    s
}

fn destroy(mut s: *mut tp_session) {
    // SAFETY: a live handle from `create`.
    ok(unsafe { tp_session_destroy(&mut s) });
    assert!(s.is_null());
}

/// Deterministic inputs of model-task `t` (index into the checkpoint's tasks).
fn inputs(ck: &Checkpoint, t: usize, seed: u64) -> Vec<Vec<f32>> {
    random_inputs(&ck.config, t, &mut SplitMix64::new(seed))
}

fn run(s: *mut tp_session, xs: &[Vec<f32>], n_out: usize) -> Vec<f32> {
    let ptrs: Vec<*const f32> = xs.iter().map(|x| x.as_ptr()).collect();
    let mut out = vec![f32::NAN; n_out];
    // SAFETY: live session; each input holds its modality's values.
    ok(unsafe { tp_session_run(s, ptrs.as_ptr(), ptrs.len(), out.as_mut_ptr(), out.len()) });
    out
}

/// The Rust API's outputs for the same task and inputs.
fn rust_outputs(bytes: &[u8], deltas: &[&[u8]], t: usize, xs: &[Vec<f32>]) -> Vec<f32> {
    let mut model = Model::from_bytes(bytes).unwrap();
    for d in deltas {
        model = model.with_delta(d).unwrap();
    }
    let info = model.task(t).unwrap();
    let mut a = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(&model, t, a.as_mut_slice()).unwrap();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let mut out = vec![0f32; info.outputs];
    s.run(&refs, &mut out).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ------------------------------------------------------------- success path

#[test]
fn memory_and_file_sessions_are_bit_identical_to_the_rust_api() {
    let f = fixture();
    let file = tmp_file("full.tpk", f.pkg.as_slice());
    let mut from_file = null_mut();
    // SAFETY: NUL-terminated path, writable out.
    ok(unsafe { tp_model_open_file(cpath(&file).as_ptr(), null(), &mut from_file) });
    let mut copied = null_mut();
    let mut cfg = model_config();
    cfg.flags = TP_MODEL_COPY | TP_MODEL_VERIFY;
    // Unaligned source bytes are fine with TP_MODEL_COPY.
    let mut shifted = vec![0u8; f.pkg.as_slice().len() + 1];
    shifted[1..].copy_from_slice(f.pkg.as_slice());
    // SAFETY: valid bytes; copied, so they may be dropped after the call.
    ok(unsafe {
        tp_model_open_memory(shifted[1..].as_ptr(), shifted.len() - 1, &cfg, &mut copied)
    });
    drop(shifted);
    let from_memory = open(f.pkg.as_slice());

    for m in [from_memory, from_file, copied] {
        let mut n = 0;
        // SAFETY: live model.
        ok(unsafe { tp_model_task_count(m, &mut n) });
        assert_eq!(n, 2);
        for t in 0..n {
            let i = info(m, t);
            let xs = inputs(&f.full, t as usize, 40 + u64::from(t));
            let mut mem = arena(i.session_bytes);
            let s = create(m, t, &mut mem);
            let a = run(s, &xs, i.outputs as usize);
            let b = run(s, &xs, i.outputs as usize);
            let want = rust_outputs(f.pkg.as_slice(), &[], t as usize, &xs);
            assert_eq!(bits(&a), bits(&want), "task {t}: C ABI vs Rust API");
            assert_eq!(bits(&b), bits(&want), "task {t}: a second run");
            destroy(s);
        }
        close(m);
    }
    std::fs::remove_file(file).ok();
}

#[test]
fn task_info_find_task_and_arena_size_agree_with_the_rust_api() {
    let f = fixture();
    let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
    let m = open(f.pkg.as_slice());
    for t in 0..model.task_count() {
        let want = model.task(t).unwrap();
        let i = info(m, t as u32);
        // SAFETY: name is NUL-terminated and lives as long as the model.
        let name = unsafe { CStr::from_ptr(i.name) }.to_str().unwrap();
        assert_eq!(name, want.name);
        assert_eq!(i.struct_size as usize, std::mem::size_of::<tp_task_info>());
        assert_eq!(i.index as usize, t);
        assert_eq!(i.stage as usize, want.stage);
        assert_eq!(i.outputs as usize, want.outputs);
        assert_eq!(i.modality_mask, want.modality_mask);
        assert_eq!(i.modality_count, want.modality_mask.count_ones());
        for (k, mi) in want.modalities().enumerate() {
            let (_, l, feat) = model.modality(mi).unwrap();
            assert_eq!(
                (
                    i.modality[k] as usize,
                    i.tokens[k] as usize,
                    i.features[k] as usize
                ),
                (mi, l, feat)
            );
        }
        assert_eq!(i.arena_bytes, want.arena_bytes);
        assert_eq!(i.session_bytes, TP_SESSION_OVERHEAD + want.arena_bytes);
        let mut size = 0;
        // SAFETY: live model, writable size.
        ok(unsafe { tp_session_arena_size(m, t as u32, &mut size) });
        assert_eq!(size, i.session_bytes);
        let mut found = u32::MAX;
        let cname = CString::new(want.name).unwrap();
        // SAFETY: live model, NUL-terminated name.
        ok(unsafe { tp_model_find_task(m, cname.as_ptr(), &mut found) });
        assert_eq!(found as usize, t);
    }
    close(m);
}

#[test]
fn delta_packs_from_memory_and_from_files_extend_the_base() {
    let f = fixture();
    let deltas = [tp_bytes {
        data: f.delta.as_slice().as_ptr(),
        len: f.delta.as_slice().len(),
    }];
    let mut cfg = model_config();
    cfg.deltas = deltas.as_ptr();
    cfg.delta_count = 1;
    let mut from_memory = null_mut();
    let base = f.base.as_slice();
    // SAFETY: valid base and delta bytes that outlive the model.
    ok(unsafe { tp_model_open_memory(base.as_ptr(), base.len(), &cfg, &mut from_memory) });

    let (bf, df) = (
        tmp_file("base.tpk", base),
        tmp_file("d1.tpkd", f.delta.as_slice()),
    );
    let (bc, dc) = (cpath(&bf), cpath(&df));
    let paths = [dc.as_ptr()];
    let mut fcfg = model_config();
    fcfg.delta_paths = paths.as_ptr();
    fcfg.delta_path_count = 1;
    let mut from_file = null_mut();
    // SAFETY: NUL-terminated paths.
    ok(unsafe { tp_model_open_file(bc.as_ptr(), &fcfg, &mut from_file) });

    for m in [from_memory, from_file] {
        let mut n = 0;
        // SAFETY: live model.
        ok(unsafe { tp_model_task_count(m, &mut n) });
        assert_eq!(n, 2, "base task + the delta's task");
        let i = info(m, 1);
        assert_eq!(i.stage, 1);
        let xs = inputs(&f.full, 1, 5);
        let mut mem = arena(i.session_bytes);
        let s = create(m, 1, &mut mem);
        let got = run(s, &xs, i.outputs as usize);
        let want = rust_outputs(base, &[f.delta.as_slice()], 1, &xs);
        assert_eq!(bits(&got), bits(&want));
        destroy(s);
        close(m);
    }
    std::fs::remove_file(bf).ok();
    std::fs::remove_file(df).ok();
}

#[test]
fn stats_count_runs_and_match_the_rust_run_stats() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let i = info(m, 0);
    let mut mem = arena(i.session_bytes);
    let s = create(m, 0, &mut mem);
    let mut st = tp_run_stats {
        struct_size: std::mem::size_of::<tp_run_stats>() as u32,
        ..Default::default()
    };
    // SAFETY: live session, writable stats.
    ok(unsafe { tp_session_stats(s, &mut st) });
    assert_eq!((st.runs, st.ops), (0, 0), "zero before the first run");
    let xs = inputs(&f.full, 0, 3);
    run(s, &xs, i.outputs as usize);
    run(s, &xs, i.outputs as usize);
    // SAFETY: as above.
    ok(unsafe { tp_session_stats(s, &mut st) });

    let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
    let mut a = AlignedArena::new(i.arena_bytes);
    let mut rs = Session::new(&model, 0, a.as_mut_slice()).unwrap();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let want = rs.run(&refs, &mut vec![0.0; i.outputs as usize]).unwrap();
    assert_eq!(st.runs, 2);
    assert_eq!(st.ops, want.ops);
    assert_eq!(st.expert_components, want.expert_components);
    assert_eq!(st.weight_bytes, want.weight_bytes as u64);
    assert!(st.total_run_ns >= st.last_run_ns);
    assert_eq!(st.struct_size as usize, std::mem::size_of::<tp_run_stats>());
    destroy(s);
    close(m);
}

// ------------------------------------------------------ tp_model_open_memory

#[test]
fn open_memory_null_arguments() {
    let f = fixture();
    let b = f.pkg.as_slice();
    let mut m = null_mut();
    // SAFETY: the library must check NULLs itself.
    let s = unsafe { tp_model_open_memory(null(), b.len(), null(), &mut m) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_memory",
        &["`data` is NULL"],
    );
    assert!(m.is_null());
    // SAFETY: as above.
    let s = unsafe { tp_model_open_memory(b.as_ptr(), b.len(), null(), null_mut()) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_memory",
        &["`out` is NULL"],
    );
    let mut cfg = model_config();
    cfg.delta_count = 1;
    // SAFETY: as above.
    let s = unsafe { tp_model_open_memory(b.as_ptr(), b.len(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_memory",
        &["tp_model_config.deltas"],
    );
    let d = [tp_bytes {
        data: null(),
        len: 4,
    }];
    cfg.deltas = d.as_ptr();
    // SAFETY: as above.
    let s = unsafe { tp_model_open_memory(b.as_ptr(), b.len(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_memory",
        &["deltas[0].data"],
    );
    assert!(m.is_null());
}

#[test]
fn open_memory_wrong_struct_size_and_bad_options() {
    let f = fixture();
    let b = f.pkg.as_slice();
    let mut m = null_mut();
    for size in [0u32, 8, std::mem::size_of::<tp_model_config>() as u32 + 8] {
        let mut cfg = model_config();
        cfg.struct_size = size;
        // SAFETY: a readable config whose struct_size is wrong.
        let s = unsafe { tp_model_open_memory(b.as_ptr(), b.len(), &cfg, &mut m) };
        fails(
            s,
            TP_ERR_STRUCT_SIZE,
            "tp_model_open_memory",
            &[&format!("tp_model_config.struct_size is {size}")],
        );
        assert!(m.is_null());
    }
    let mut cfg = model_config();
    cfg.flags = 0x80;
    // SAFETY: valid arguments but unknown flag bits.
    let s = unsafe { tp_model_open_memory(b.as_ptr(), b.len(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_INVALID_ARGUMENT,
        "tp_model_open_memory",
        &["unknown bits 0x80"],
    );
    let mut cfg = model_config();
    let p = c"x.tpkd";
    let paths = [p.as_ptr()];
    cfg.delta_paths = paths.as_ptr();
    cfg.delta_path_count = 1;
    // SAFETY: valid arguments; delta_paths is for files.
    let s = unsafe { tp_model_open_memory(b.as_ptr(), b.len(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_INVALID_ARGUMENT,
        "tp_model_open_memory",
        &["delta_paths"],
    );
}

#[test]
fn open_memory_misaligned_bytes_are_refused_without_copy() {
    let f = fixture();
    let mut shifted = vec![0u8; f.pkg.as_slice().len() + 16];
    let off = (16 - shifted.as_ptr() as usize % 16) % 16 + 4;
    shifted[off..off + f.pkg.as_slice().len()].copy_from_slice(f.pkg.as_slice());
    let mut m = null_mut();
    // SAFETY: readable bytes, 4 bytes off a 16-byte boundary.
    let s = unsafe {
        tp_model_open_memory(
            shifted[off..].as_ptr(),
            f.pkg.as_slice().len(),
            null(),
            &mut m,
        )
    };
    fails(
        s,
        TP_ERR_PACKAGE_MISALIGNED,
        "tp_model_open_memory",
        &["not 16-byte aligned", "TP_MODEL_COPY"],
    );
    assert!(m.is_null());
}

#[test]
fn open_memory_corrupt_packages() {
    let f = fixture();
    let good = f.pkg.as_slice();
    let mut m = null_mut();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("truncated header", good[..64].to_vec(), "truncated"),
        (
            "bad magic",
            {
                let mut v = good.to_vec();
                v[0] ^= 0xFF;
                v
            },
            "magic",
        ),
        (
            "flipped header byte",
            {
                let mut v = good.to_vec();
                v[40] ^= 0x01;
                v
            },
            "corrupt package",
        ),
        (
            "truncated file",
            good[..good.len() / 2].to_vec(),
            "corrupt package",
        ),
        (
            "garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
            "corrupt package",
        ),
    ];
    for (what, bytes, needle) in cases {
        let a = AlignedArena::from_bytes(&bytes);
        let p = if bytes.is_empty() {
            good.as_ptr()
        } else {
            a.as_slice().as_ptr()
        };
        // SAFETY: `bytes.len()` readable bytes at p.
        let s = unsafe { tp_model_open_memory(p, bytes.len(), null(), &mut m) };
        assert_eq!(s, TP_ERR_FORMAT, "{what}: {}", last());
        fails(s, TP_ERR_FORMAT, "tp_model_open_memory", &[needle]);
        assert!(m.is_null(), "{what}");
    }
}

#[test]
fn open_memory_delta_errors() {
    let f = fixture();
    let mut m = null_mut();
    // A delta pack alone is not a model.
    let d = f.delta.as_slice();
    // SAFETY: valid bytes.
    let s = unsafe { tp_model_open_memory(d.as_ptr(), d.len(), null(), &mut m) };
    fails(
        s,
        TP_ERR_DELTA_MISMATCH,
        "tp_model_open_memory",
        &["without its base"],
    );
    // A delta on the wrong base (the full package).
    let deltas = [tp_bytes {
        data: d.as_ptr(),
        len: d.len(),
    }];
    let mut cfg = model_config();
    cfg.deltas = deltas.as_ptr();
    cfg.delta_count = 1;
    let b = f.pkg.as_slice();
    // SAFETY: valid bytes.
    let s = unsafe { tp_model_open_memory(b.as_ptr(), b.len(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_DELTA_MISMATCH,
        "tp_model_open_memory",
        &["delta pack 0"],
    );
    // A corrupt delta.
    let mut bad = d.to_vec();
    bad[0] ^= 0xFF;
    let bad = AlignedArena::from_bytes(&bad);
    let deltas = [tp_bytes {
        data: bad.as_slice().as_ptr(),
        len: d.len(),
    }];
    cfg.deltas = deltas.as_ptr();
    let base = f.base.as_slice();
    // SAFETY: valid bytes.
    let s = unsafe { tp_model_open_memory(base.as_ptr(), base.len(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_FORMAT,
        "tp_model_open_memory",
        &["magic", "delta pack 0"],
    );
    assert!(m.is_null());
}

// -------------------------------------------------------- tp_model_open_file

#[test]
fn open_file_errors() {
    let f = fixture();
    let mut m = null_mut();
    // SAFETY: the library checks NULLs.
    let s = unsafe { tp_model_open_file(null(), null(), &mut m) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_file",
        &["`path` is NULL"],
    );
    let good = tmp_file("open-file.tpk", f.pkg.as_slice());
    let gp = cpath(&good);
    // SAFETY: as above.
    let s = unsafe { tp_model_open_file(gp.as_ptr(), null(), null_mut()) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_file",
        &["`out` is NULL"],
    );

    let missing = c"/nonexistent/dir/model.tpk";
    // SAFETY: NUL-terminated path.
    let s = unsafe { tp_model_open_file(missing.as_ptr(), null(), &mut m) };
    fails(
        s,
        TP_ERR_IO,
        "tp_model_open_file",
        &["cannot open", "/nonexistent/dir/model.tpk"],
    );

    let mut corrupt = f.pkg.as_slice().to_vec();
    corrupt[0] ^= 0xFF;
    let cf = tmp_file("corrupt.tpk", &corrupt);
    // SAFETY: NUL-terminated path.
    let s = unsafe { tp_model_open_file(cpath(&cf).as_ptr(), null(), &mut m) };
    fails(
        s,
        TP_ERR_FORMAT,
        "tp_model_open_file",
        &["magic", "corrupt.tpk"],
    );

    let mut cfg = model_config();
    cfg.struct_size = 4;
    // SAFETY: readable config with a wrong struct_size.
    let s = unsafe { tp_model_open_file(gp.as_ptr(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_STRUCT_SIZE,
        "tp_model_open_file",
        &["tp_model_config.struct_size is 4"],
    );

    let mut cfg = model_config();
    let d = [tp_bytes {
        data: f.delta.as_slice().as_ptr(),
        len: 1,
    }];
    cfg.deltas = d.as_ptr();
    cfg.delta_count = 1;
    // SAFETY: valid config; in-memory deltas do not go with files.
    let s = unsafe { tp_model_open_file(gp.as_ptr(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_INVALID_ARGUMENT,
        "tp_model_open_file",
        &["tp_model_config.deltas"],
    );

    let mut cfg = model_config();
    let paths = [null()];
    cfg.delta_paths = paths.as_ptr();
    cfg.delta_path_count = 1;
    // SAFETY: valid config holding a NULL entry.
    let s = unsafe { tp_model_open_file(gp.as_ptr(), &cfg, &mut m) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_file",
        &["delta_paths[0]"],
    );
    assert!(m.is_null());
    for p in [good, cf] {
        std::fs::remove_file(p).ok();
    }
}

// ------------------------------------------------------------ tp_model_close

#[test]
fn close_null_twice_and_busy() {
    let f = fixture();
    // SAFETY: the library checks NULLs.
    let s = unsafe { tp_model_close(null_mut()) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_close",
        &["`model` is NULL"],
    );
    let mut m: *mut tp_model = null_mut();
    // SAFETY: *model == NULL is a documented no-op.
    ok(unsafe { tp_model_close(&mut m) });

    let mut m = open(f.pkg.as_slice());
    let i = info(m, 0);
    let mut mem = arena(i.session_bytes);
    let s = create(m, 0, &mut mem);
    // SAFETY: live model with a live session.
    let st = unsafe { tp_model_close(&mut m) };
    fails(st, TP_ERR_BUSY, "tp_model_close", &["1 live session"]);
    assert!(!m.is_null(), "a busy model is not closed");
    destroy(s);
    close(m);
}

#[test]
fn a_fake_handle_is_refused() {
    #[repr(C, align(16))]
    struct Junk([u64; 128]);
    let junk = Junk([0x5A5A_5A5A_5A5A_5A5A; 128]);
    let fake = (&junk as *const Junk).cast::<tp_model>();
    let mut n = 0;
    // SAFETY: readable memory that is not a model: the tag check refuses it.
    let s = unsafe { tp_model_task_count(fake, &mut n) };
    fails(
        s,
        TP_ERR_INVALID_HANDLE,
        "tp_model_task_count",
        &["not a live tp_model"],
    );
    let mut sj = Junk([0; 128]);
    let fake_s = (&mut sj as *mut Junk).cast::<tp_session>();
    let mut st = tp_run_stats {
        struct_size: std::mem::size_of::<tp_run_stats>() as u32,
        ..Default::default()
    };
    // SAFETY: readable memory that is not a session.
    let s = unsafe { tp_session_stats(fake_s, &mut st) };
    fails(
        s,
        TP_ERR_INVALID_HANDLE,
        "tp_session_stats",
        &["not a live tp_session"],
    );
}

// --------------------------------------------------- task count, info, find

#[test]
fn task_count_info_find_and_arena_size_errors() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let mut n = 0u32;
    // SAFETY: the library checks NULLs.
    let s = unsafe { tp_model_task_count(null(), &mut n) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_task_count",
        &["`model` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_model_task_count(m, null_mut()) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_task_count",
        &["`count` is NULL"],
    );

    // SAFETY: tp_task_info is plain data.
    let mut i: tp_task_info = unsafe { std::mem::zeroed() };
    i.struct_size = std::mem::size_of::<tp_task_info>() as u32;
    // SAFETY: NULL model / NULL info / wrong size / unknown task.
    let s = unsafe { tp_model_task_info(null(), 0, &mut i) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_task_info",
        &["`model` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_model_task_info(m, 0, null_mut()) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_task_info",
        &["`info` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_model_task_info(m, 2, &mut i) };
    fails(
        s,
        TP_ERR_UNKNOWN_TASK,
        "tp_model_task_info",
        &["unknown task index 2", "task0, task1"],
    );
    i.struct_size = 16;
    // SAFETY: as above.
    let s = unsafe { tp_model_task_info(m, 0, &mut i) };
    fails(
        s,
        TP_ERR_STRUCT_SIZE,
        "tp_model_task_info",
        &["tp_task_info.struct_size is 16"],
    );
    assert!(i.name.is_null(), "nothing written on failure");

    let mut idx = 7u32;
    let name = c"task1";
    // SAFETY: as above.
    let s = unsafe { tp_model_find_task(null(), name.as_ptr(), &mut idx) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_find_task",
        &["`model` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_model_find_task(m, null(), &mut idx) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_find_task",
        &["`name` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_model_find_task(m, name.as_ptr(), null_mut()) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_find_task",
        &["`index` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_model_find_task(m, c"WDBC".as_ptr(), &mut idx) };
    fails(
        s,
        TP_ERR_UNKNOWN_TASK,
        "tp_model_find_task",
        &["\"WDBC\"", "task0, task1"],
    );
    assert_eq!(idx, 7, "nothing written on failure");

    let mut size = 0usize;
    // SAFETY: as above.
    let s = unsafe { tp_session_arena_size(null(), 0, &mut size) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_session_arena_size",
        &["`model` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_session_arena_size(m, 0, null_mut()) };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_session_arena_size",
        &["`size` is NULL"],
    );
    // SAFETY: as above.
    let s = unsafe { tp_session_arena_size(m, 9, &mut size) };
    fails(
        s,
        TP_ERR_UNKNOWN_TASK,
        "tp_session_arena_size",
        &["unknown task index 9"],
    );
    close(m);
}

// --------------------------------------------------------- tp_session_create

#[test]
fn session_create_errors() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let i = info(m, 0);
    let mut mem = arena(i.session_bytes + 64);
    let base = mem.as_mut_slice().as_mut_ptr();
    let len = i.session_bytes;
    let mut s = null_mut();
    let call = |model: *const tp_model,
                task: u32,
                at: *mut u8,
                len: usize,
                cfg: *const tp_session_config,
                out: *mut *mut tp_session| {
        // SAFETY: `at` is NULL or inside `mem` with `len` bytes available.
        unsafe { tp_session_create(model, task, at.cast(), len, cfg, out) }
    };
    let f_ = "tp_session_create";
    fails(
        call(null(), 0, base, len, null(), &mut s),
        TP_ERR_NULL_ARGUMENT,
        f_,
        &["`model` is NULL"],
    );
    fails(
        call(m, 0, null_mut(), len, null(), &mut s),
        TP_ERR_NULL_ARGUMENT,
        f_,
        &["`arena` is NULL"],
    );
    fails(
        call(m, 0, base, len, null(), null_mut()),
        TP_ERR_NULL_ARGUMENT,
        f_,
        &["`out` is NULL"],
    );
    fails(
        call(m, 5, base, len, null(), &mut s),
        TP_ERR_UNKNOWN_TASK,
        f_,
        &["unknown task index 5"],
    );
    fails(
        call(m, 0, base, len - 1, null(), &mut s),
        TP_ERR_ARENA_TOO_SMALL,
        f_,
        &[
            "arena too small",
            &format!("needs {len} bytes"),
            &format!("got {}", len - 1),
        ],
    );
    fails(
        call(m, 0, base, 0, null(), &mut s),
        TP_ERR_ARENA_TOO_SMALL,
        f_,
        &["got 0"],
    );
    // SAFETY: 4 bytes into the same allocation, still len bytes available.
    let off = unsafe { base.add(4) };
    fails(
        call(m, 0, off, len, null(), &mut s),
        TP_ERR_ARENA_MISALIGNED,
        f_,
        &["16-byte aligned"],
    );
    let cfg = tp_session_config {
        struct_size: 3,
        flags: 0,
    };
    fails(
        call(m, 0, base, len, &cfg, &mut s),
        TP_ERR_STRUCT_SIZE,
        f_,
        &["tp_session_config.struct_size is 3"],
    );
    let cfg = tp_session_config {
        struct_size: std::mem::size_of::<tp_session_config>() as u32,
        flags: 0x10,
    };
    fails(
        call(m, 0, base, len, &cfg, &mut s),
        TP_ERR_INVALID_ARGUMENT,
        f_,
        &["unknown bits 0x10"],
    );
    assert!(s.is_null(), "out stays NULL on failure");
    // No session is left behind by the failures: the model closes.
    close(m);
}

#[test]
fn session_create_on_a_corrupt_blob_fails_and_no_verify_skips_the_check() {
    let f = fixture();
    let mut bytes = f.pkg.as_slice().to_vec();
    // Flip a byte in task 1's head blob (on no other task's path): the
    // header and tables still validate, so the model opens.
    let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
    let head = (0..model.blob_count() as u32)
        .filter_map(|b| model.blob(b))
        .find(|b| b.rec.kind == blob_kind::HEAD && b.rec.owner == 1)
        .unwrap();
    let off = head.bytes.as_ptr() as usize - f.pkg.as_slice().as_ptr() as usize;
    bytes[off] ^= 0x40;
    let bad = AlignedArena::from_bytes(&bytes);
    let m = open(bad.as_slice());
    let mut failures = 0;
    for t in 0..2 {
        let i = info(m, t);
        let mut mem = arena(i.session_bytes);
        let p = mem.as_mut_slice();
        let mut s = null_mut();
        // SAFETY: live model, aligned writable memory.
        let st = unsafe { tp_session_create(m, t, p.as_mut_ptr().cast(), p.len(), null(), &mut s) };
        if st != TP_OK {
            fails(
                st,
                TP_ERR_FORMAT,
                "tp_session_create",
                &["checksum mismatch"],
            );
            failures += 1;
            let cfg = tp_session_config {
                struct_size: std::mem::size_of::<tp_session_config>() as u32,
                flags: TP_SESSION_NO_VERIFY,
            };
            // SAFETY: as above.
            ok(unsafe { tp_session_create(m, t, p.as_mut_ptr().cast(), p.len(), &cfg, &mut s) });
        }
        destroy(s);
    }
    assert_eq!(failures, 1, "exactly task 1, whose head was corrupted");
    let mut m2 = null_mut();
    let mut cfg = model_config();
    cfg.flags = TP_MODEL_VERIFY;
    // SAFETY: valid bytes.
    let st = unsafe { tp_model_open_memory(bad.as_slice().as_ptr(), bytes.len(), &cfg, &mut m2) };
    fails(
        st,
        TP_ERR_FORMAT,
        "tp_model_open_memory",
        &["checksum mismatch", "TP_MODEL_VERIFY"],
    );
    close(m);
}

// ------------------------------------------------------------ tp_session_run

#[test]
fn session_run_errors() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let i = info(m, 0);
    assert_eq!(i.modality_count, 2);
    let mut mem = arena(i.session_bytes);
    let s = create(m, 0, &mut mem);
    let xs = inputs(&f.full, 0, 1);
    let ptrs = [xs[0].as_ptr(), xs[1].as_ptr()];
    let n_out = i.outputs as usize;
    let mut out = vec![0f32; n_out + 1];
    let call = |s: *mut tp_session, p: *const *const f32, n: usize, o: *mut f32, no: usize| {
        // SAFETY: each pointer is NULL or valid for the lengths the task states.
        unsafe { tp_session_run(s, p, n, o, no) }
    };
    let f_ = "tp_session_run";
    let o = out.as_mut_ptr();
    fails(
        call(null_mut(), ptrs.as_ptr(), 2, o, n_out),
        TP_ERR_NULL_ARGUMENT,
        f_,
        &["`session` is NULL"],
    );
    fails(
        call(s, null(), 2, o, n_out),
        TP_ERR_NULL_ARGUMENT,
        f_,
        &["`inputs` is NULL"],
    );
    fails(
        call(s, ptrs.as_ptr(), 2, null_mut(), n_out),
        TP_ERR_NULL_ARGUMENT,
        f_,
        &["`outputs` is NULL"],
    );
    let with_null = [xs[0].as_ptr(), null()];
    fails(
        call(s, with_null.as_ptr(), 2, o, n_out),
        TP_ERR_NULL_ARGUMENT,
        f_,
        &["`inputs[1]` is NULL"],
    );
    fails(
        call(s, ptrs.as_ptr(), 1, o, n_out),
        TP_ERR_INPUT_COUNT,
        f_,
        &["wrong number of inputs", "takes 2, got n_inputs = 1"],
    );
    fails(
        call(s, ptrs.as_ptr(), 3, o, n_out),
        TP_ERR_INPUT_COUNT,
        f_,
        &["got n_inputs = 3"],
    );
    fails(
        call(s, ptrs.as_ptr(), 2, o, n_out + 1),
        TP_ERR_OUTPUT_SHAPE,
        f_,
        &[&format!(
            "has {n_out} outputs, got n_outputs = {}",
            n_out + 1
        )],
    );
    let bytes: Vec<u8> = vec![0; xs[0].len() * 4 + 8];
    let odd = (bytes.as_ptr() as usize % 4 == 0) as usize + bytes.as_ptr() as usize;
    let misaligned = [odd as *const f32, xs[1].as_ptr()];
    fails(
        call(s, misaligned.as_ptr(), 2, o, n_out),
        TP_ERR_INVALID_ARGUMENT,
        f_,
        &["inputs[0] is not aligned"],
    );
    // Non-finite input values, each named with its input and position.
    for (bad, shown) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let mut x1 = xs[1].clone();
        let at = x1.len() - 1;
        x1[at] = bad;
        let p = [xs[0].as_ptr(), x1.as_ptr()];
        fails(
            call(s, p.as_ptr(), 2, o, n_out),
            TP_ERR_NON_FINITE,
            f_,
            &[&format!("inputs[1] value {at} is {shown}")],
        );
    }
    assert!(
        out.iter().all(|&v| v == 0.0),
        "outputs untouched by failed runs"
    );
    // Finite inputs near f32::MAX overflow inside the task: its outputs are
    // refused, not returned as TP_OK.
    let huge: Vec<Vec<f32>> = xs.iter().map(|x| vec![f32::MAX; x.len()]).collect();
    let p = [huge[0].as_ptr(), huge[1].as_ptr()];
    fails(
        call(s, p.as_ptr(), 2, o, n_out),
        TP_ERR_NON_FINITE,
        f_,
        &["output ", "not a finite number"],
    );
    // The session still works after all those errors.
    ok(call(s, ptrs.as_ptr(), 2, o, n_out));
    // A destroyed session is recognised (its memory is still ours).
    let stale = s;
    destroy(s);
    fails(
        call(stale, ptrs.as_ptr(), 2, o, n_out),
        TP_ERR_INVALID_HANDLE,
        f_,
        &["not a live tp_session"],
    );
    close(m);
}

// ---------------------------------------------------- stats and destroy

#[test]
fn session_stats_and_destroy_errors() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let i = info(m, 1);
    let mut mem = arena(i.session_bytes);
    let s = create(m, 1, &mut mem);
    let mut st = tp_run_stats {
        struct_size: std::mem::size_of::<tp_run_stats>() as u32,
        ..Default::default()
    };
    // SAFETY: the library checks NULLs and sizes.
    let r = unsafe { tp_session_stats(null_mut(), &mut st) };
    fails(
        r,
        TP_ERR_NULL_ARGUMENT,
        "tp_session_stats",
        &["`session` is NULL"],
    );
    // SAFETY: as above.
    let r = unsafe { tp_session_stats(s, null_mut()) };
    fails(
        r,
        TP_ERR_NULL_ARGUMENT,
        "tp_session_stats",
        &["`stats` is NULL"],
    );
    st.struct_size = 8;
    // SAFETY: as above.
    let r = unsafe { tp_session_stats(s, &mut st) };
    fails(
        r,
        TP_ERR_STRUCT_SIZE,
        "tp_session_stats",
        &["tp_run_stats.struct_size is 8"],
    );

    // SAFETY: as above.
    let r = unsafe { tp_session_destroy(null_mut()) };
    fails(
        r,
        TP_ERR_NULL_ARGUMENT,
        "tp_session_destroy",
        &["`session` is NULL"],
    );
    let mut none: *mut tp_session = null_mut();
    // SAFETY: *session == NULL is a documented no-op.
    ok(unsafe { tp_session_destroy(&mut none) });
    let mut copy = s;
    destroy(s);
    // SAFETY: a stale copy of a destroyed handle whose memory is still ours.
    let r = unsafe { tp_session_destroy(&mut copy) };
    fails(
        r,
        TP_ERR_INVALID_HANDLE,
        "tp_session_destroy",
        &["not a live tp_session"],
    );
    close(m);
}

// ------------------------------------------------------------- threads

struct Send_<T>(T);
// SAFETY: test-only wrapper: the model is documented as usable from any
// thread, and each session is used by one thread at a time.
unsafe impl<T> Send for Send_<T> {}
// SAFETY: as above (shared references to the wrapper only read the pointer).
unsafe impl<T> Sync for Send_<T> {}

#[test]
fn sessions_run_on_several_threads_and_last_error_is_per_thread() {
    let f = fixture();
    let m = Send_(open(f.pkg.as_slice()));
    let full = &f.full;
    let pkg = f.pkg.as_slice();
    std::thread::scope(|sc| {
        for t in 0..2u32 {
            let m = &m;
            sc.spawn(move || {
                let i = info(m.0, t);
                let mut mem = arena(i.session_bytes);
                let s = create(m.0, t, &mut mem);
                for k in 0..5 {
                    let xs = inputs(full, t as usize, 100 + k);
                    let got = run(s, &xs, i.outputs as usize);
                    assert_eq!(bits(&got), bits(&rust_outputs(pkg, &[], t as usize, &xs)));
                }
                destroy(s);
            });
        }
        sc.spawn(|| {
            let mut n = 0;
            // SAFETY: the library checks NULLs.
            let s = unsafe { tp_model_task_count(null(), &mut n) };
            assert_eq!(s, TP_ERR_NULL_ARGUMENT);
            assert!(last().contains("`model` is NULL"));
        });
    });
    assert_eq!(last(), "", "another thread's error is not this thread's");
    close(m.0);
}

#[test]
fn last_error_is_never_null_and_status_names_are_static() {
    assert!(!tp_last_error().is_null());
    let name = |s: tp_status| {
        // SAFETY: static NUL-terminated string.
        unsafe { CStr::from_ptr(tp_status_name(s as u32)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(TP_ERR_ARENA_TOO_SMALL), "TP_ERR_ARENA_TOO_SMALL");
    let _: *const c_char = tp_status_name(1234);
}

// ---------------------------------------------------------------- signatures

/// Test keys (fixed seeds: tests only; `taskpath keygen` uses OS randomness).
const SIGNER: [u8; 32] = [0x11; 32];
const OTHER: [u8; 32] = [0x22; 32];

fn signed(bytes: &[u8], secret: &[u8; 32]) -> AlignedArena {
    AlignedArena::from_bytes(
        &taskpath_runtime::format::signature::sign_package(bytes, secret).unwrap(),
    )
}

#[test]
fn open_verified_accepts_its_signer_and_refuses_each_other_case_with_its_own_status() {
    use taskpath_runtime::format::signature::public_key;
    let f = fixture();
    let key = public_key(&SIGNER);
    let base = signed(f.base.as_slice(), &SIGNER);
    let delta = signed(f.delta.as_slice(), &SIGNER);
    let other_delta = signed(f.delta.as_slice(), &OTHER);
    let open = |pkg: &[u8], delta: Option<&[u8]>, key: &[u8; 32]| {
        let d = delta.map(|d| tp_bytes {
            data: d.as_ptr(),
            len: d.len(),
        });
        let mut cfg = model_config();
        if let Some(d) = &d {
            cfg.deltas = d;
            cfg.delta_count = 1;
        }
        let mut m = null_mut();
        // SAFETY: valid bytes, key and config that outlive the call.
        let s =
            unsafe { tp_model_open_verified(pkg.as_ptr(), pkg.len(), key.as_ptr(), &cfg, &mut m) };
        (s, m)
    };
    // Signed base + signed delta: opens, runs as the unsigned chain does.
    let (s, m) = open(base.as_slice(), Some(delta.as_slice()), &key);
    ok(s);
    let i = info(m, 1);
    let xs = inputs(&f.full, 1, 5);
    let mut mem = arena(i.session_bytes);
    let sess = create(m, 1, &mut mem);
    let got = run(sess, &xs, i.outputs as usize);
    let want = rust_outputs(f.base.as_slice(), &[f.delta.as_slice()], 1, &xs);
    assert_eq!(bits(&got), bits(&want));
    destroy(sess);
    close(m);
    // A signed package still opens without a key (the record is invisible).
    close(common::open(base.as_slice()));

    type Case<'a> = (&'a [u8], Option<&'a [u8]>, [u8; 32], tp_status, &'a str);
    let cases: [Case<'_>; 4] = [
        (
            f.base.as_slice(),
            None,
            key,
            TP_ERR_UNSIGNED,
            "unsigned package",
        ),
        (
            base.as_slice(),
            None,
            public_key(&OTHER),
            TP_ERR_KEY_MISMATCH,
            "signed by another key",
        ),
        (
            base.as_slice(),
            Some(other_delta.as_slice()),
            key,
            TP_ERR_KEY_MISMATCH,
            "adding delta pack 0",
        ),
        (
            base.as_slice(),
            Some(f.delta.as_slice()),
            key,
            TP_ERR_UNSIGNED,
            "adding delta pack 0",
        ),
    ];
    for (pkg, d, k, want, needle) in cases {
        let (s, m) = open(pkg, d, &k);
        fails(s, want, "tp_model_open_verified", &[needle]);
        assert!(m.is_null());
    }
    // A re-sealed edit of base_id (checksums recomputed by the packer's own
    // header encoder): checksums pass, the signature does not.
    let mut edited = delta.as_slice().to_vec();
    let mut h = taskpath_runtime::format::Header::decode(edited[..128].try_into().unwrap());
    h.base_id ^= 1;
    edited[..128].copy_from_slice(&h.encode());
    let edited = AlignedArena::from_bytes(&edited);
    let (s, m) = open(base.as_slice(), Some(edited.as_slice()), &key);
    fails(
        s,
        TP_ERR_BAD_SIGNATURE,
        "tp_model_open_verified",
        &["modified after it was signed"],
    );
    assert!(m.is_null());
    // A NULL key, and a key that is no curve point.
    let mut m = null_mut();
    // SAFETY: the library checks NULLs.
    let s = unsafe {
        tp_model_open_verified(
            base.as_slice().as_ptr(),
            base.as_slice().len(),
            null(),
            null(),
            &mut m,
        )
    };
    fails(
        s,
        TP_ERR_NULL_ARGUMENT,
        "tp_model_open_verified",
        &["`public_key` is NULL"],
    );
    let mut bad = [0u8; 32];
    bad[0] = 2;
    bad[31] = 0x80;
    let (s, m) = open(base.as_slice(), None, &bad);
    fails(
        s,
        TP_ERR_INVALID_KEY,
        "tp_model_open_verified",
        &["not a valid ed25519 key"],
    );
    assert!(m.is_null());

    // From files: the same checks, through the mapping.
    let (bf, df, of) = (
        tmp_file("signed.tpk", base.as_slice()),
        tmp_file("signed.tpkd", delta.as_slice()),
        tmp_file("other.tpkd", other_delta.as_slice()),
    );
    let (bc, dc, oc) = (cpath(&bf), cpath(&df), cpath(&of));
    for (d, want) in [(&dc, TP_OK), (&oc, TP_ERR_KEY_MISMATCH)] {
        let paths = [d.as_ptr()];
        let mut cfg = model_config();
        cfg.delta_paths = paths.as_ptr();
        cfg.delta_path_count = 1;
        let mut m = null_mut();
        // SAFETY: NUL-terminated paths, a 32-byte key.
        let s = unsafe { tp_model_open_file_verified(bc.as_ptr(), key.as_ptr(), &cfg, &mut m) };
        if want == TP_OK {
            ok(s);
            close(m);
        } else {
            fails(
                s,
                want,
                "tp_model_open_file_verified",
                &["signed by another key"],
            );
            assert!(m.is_null());
        }
    }
    for p in [bf, df, of] {
        std::fs::remove_file(p).ok();
    }
}
