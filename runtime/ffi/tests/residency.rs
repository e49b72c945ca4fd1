//! The C ABI's expert budget and tracer: budgeted sessions are bit-identical
//! to unbudgeted ones and report the cache's counters; tracer callbacks see
//! the events the Rust `Tracer` sees; every new entry point's error cases
//! (NULL, too-small arena or budget, wrong struct_size, a session without a
//! budget) give their documented status and a last-error message.

mod common;

use std::ffi::c_void;
use std::ptr::{null, null_mut};

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_ffi::*;
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::format::Opcode;
use taskpath_runtime::{AlignedArena, Model, ResidencyCache, Session, Tracer};

use common::{fails, last};
use tp_status::*;

#[track_caller]
fn ok(got: tp_status) {
    assert_eq!(got, TP_OK, "{}", last());
}

struct Fx {
    ck: taskpath_checkpoint::Checkpoint,
    pkg: AlignedArena,
}

fn fixture() -> Fx {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let pkg = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    Fx { ck, pkg }
}

fn open(bytes: &[u8]) -> *mut tp_model {
    let mut m = null_mut();
    // SAFETY: valid bytes outliving the model.
    ok(unsafe { tp_model_open_memory(bytes.as_ptr(), bytes.len(), null(), &mut m) });
    m
}

fn sizes(m: *const tp_model, t: u32) -> (usize, usize, usize) {
    let (mut plain, mut budgeted, mut min) = (0, 0, 0);
    // SAFETY: live model, writable outs.
    unsafe {
        ok(tp_session_arena_size(m, t, &mut plain));
        ok(tp_session_arena_size_budgeted(m, t, &mut budgeted));
        ok(tp_model_min_expert_budget(m, &mut min));
    }
    (plain, budgeted, min)
}

fn run(s: *mut tp_session, xs: &[Vec<f32>], n: usize) -> Vec<f32> {
    let ptrs: Vec<*const f32> = xs.iter().map(|x| x.as_ptr()).collect();
    let mut out = vec![0f32; n];
    // SAFETY: live session; inputs and outputs sized for the task.
    ok(unsafe { tp_session_run(s, ptrs.as_ptr(), ptrs.len(), out.as_mut_ptr(), n) });
    out
}

fn cache_stats(s: *mut tp_session) -> tp_cache_stats {
    let mut st = tp_cache_stats {
        struct_size: std::mem::size_of::<tp_cache_stats>() as u32,
        ..Default::default()
    };
    // SAFETY: live session, writable stats.
    ok(unsafe { tp_session_cache_stats(s, &mut st) });
    st
}

#[test]
fn budgeted_sessions_are_bit_identical_and_count_like_the_rust_cache() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
    let budget = model.expert_bytes() / 4;
    let mut rng = SplitMix64::new(6);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let (_, need, min) = sizes(m, t as u32);
        assert_eq!(min, ResidencyCache::min_budget(&model));
        let mut mem = AlignedArena::new(need);
        let mut bmem = AlignedArena::new(budget);
        let mut s = null_mut();
        // SAFETY: live model; memory and budget sized as asked, disjoint.
        ok(unsafe {
            tp_session_create_budgeted(
                m,
                t as u32,
                mem.as_mut_slice().as_mut_ptr().cast(),
                need,
                null(),
                bmem.as_mut_slice().as_mut_ptr().cast(),
                budget,
                &mut s,
            )
        });
        // The Rust API with the same budget on the same inputs.
        let mut rmem = AlignedArena::new(budget);
        let mut cache = ResidencyCache::new(&model, rmem.as_mut_slice()).unwrap();
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut rs = Session::new(&model, t, arena.as_mut_slice())
            .unwrap()
            .with_blob_source(&mut cache)
            .unwrap();
        for _ in 0..3 {
            let xs = random_inputs(&f.ck.config, t, &mut rng);
            let got = run(s, &xs, info.outputs);
            let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            let mut want = vec![0f32; info.outputs];
            rs.run(&refs, &mut want).unwrap();
            let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(b(&got), b(&want), "task {}", info.name);
        }
        let _ = rs;
        let st = cache_stats(s);
        let want = cache.stats();
        assert_eq!(
            (
                st.hits,
                st.misses,
                st.evictions,
                st.bytes_copied,
                st.peak_resident_bytes
            ),
            (
                want.hits,
                want.misses,
                want.evictions,
                want.bytes_copied,
                want.peak_resident_bytes
            )
        );
        assert_eq!(st.budget_bytes as usize, budget);
        assert!(st.peak_resident_bytes as usize <= budget && st.misses > 0);
        // SAFETY: live session.
        ok(unsafe { tp_session_destroy(&mut s) });
    }
    let mut m = m;
    // SAFETY: live model without sessions.
    ok(unsafe { tp_model_close(&mut m) });
}

#[test]
fn budgeted_entry_points_report_their_errors() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let (plain, need, min) = sizes(m, 0);
    assert_eq!(need, plain + TP_CACHE_OVERHEAD);
    let mut mem = AlignedArena::new(need);
    let mut bmem = AlignedArena::new(min);
    let (mp, bp) = (
        mem.as_mut_slice().as_mut_ptr().cast::<c_void>(),
        bmem.as_mut_slice().as_mut_ptr().cast::<c_void>(),
    );
    let mut s = null_mut();
    // SAFETY (every call below): the library checks its arguments itself;
    // valid pointers are live and sized as passed.
    unsafe {
        fails(
            tp_session_create_budgeted(m, 0, mp, need, null(), null_mut(), min, &mut s),
            TP_ERR_NULL_ARGUMENT,
            "tp_session_create_budgeted",
            &["budget"],
        );
        fails(
            tp_session_create_budgeted(m, 0, mp, need, null(), bp, min - 1, &mut s),
            TP_ERR_BUDGET_TOO_SMALL,
            "tp_session_create_budgeted",
            &["expert budget too small", &min.to_string()],
        );
        fails(
            tp_session_create_budgeted(m, 0, mp, need - 1, null(), bp, min, &mut s),
            TP_ERR_ARENA_TOO_SMALL,
            "tp_session_create_budgeted",
            &["cache", &need.to_string()],
        );
        fails(
            tp_session_create_budgeted(
                m,
                0,
                mp,
                need,
                null(),
                bp.cast::<u8>().add(4).cast(),
                min - 4,
                &mut s,
            ),
            TP_ERR_BUDGET_TOO_SMALL,
            "tp_session_create_budgeted",
            &[],
        );
        assert!(s.is_null(), "a failed create leaves no handle");
        let mut big = AlignedArena::new(min + 64);
        fails(
            tp_session_create_budgeted(
                m,
                0,
                mp,
                need,
                null(),
                big.as_mut_slice().as_mut_ptr().add(4).cast(),
                min,
                &mut s,
            ),
            TP_ERR_ARENA_MISALIGNED,
            "tp_session_create_budgeted",
            &[],
        );
        fails(
            tp_session_create_budgeted(null(), 0, mp, need, null(), bp, min, &mut s),
            TP_ERR_NULL_ARGUMENT,
            "tp_session_create_budgeted",
            &["model"],
        );
        fails(
            tp_session_create_budgeted(m, 0, mp, need, null(), bp, min, null_mut()),
            TP_ERR_NULL_ARGUMENT,
            "tp_session_create_budgeted",
            &[],
        );
        let mut n = 0usize;
        fails(
            tp_session_arena_size_budgeted(m, 999, &mut n),
            TP_ERR_UNKNOWN_TASK,
            "tp_session_arena_size_budgeted",
            &["999"],
        );
        fails(
            tp_session_arena_size_budgeted(m, 0, null_mut()),
            TP_ERR_NULL_ARGUMENT,
            "tp_session_arena_size_budgeted",
            &["size"],
        );
        fails(
            tp_model_min_expert_budget(null(), &mut n),
            TP_ERR_NULL_ARGUMENT,
            "tp_model_min_expert_budget",
            &["model"],
        );
        fails(
            tp_model_min_expert_budget(m, null_mut()),
            TP_ERR_NULL_ARGUMENT,
            "tp_model_min_expert_budget",
            &["size"],
        );

        // Stats: NULL, wrong struct_size, no budget.
        ok(tp_session_create_budgeted(
            m,
            0,
            mp,
            need,
            null(),
            bp,
            min,
            &mut s,
        ));
        let mut st = tp_cache_stats::default();
        fails(
            tp_session_cache_stats(s, &mut st),
            TP_ERR_STRUCT_SIZE,
            "tp_session_cache_stats",
            &["tp_cache_stats.struct_size is 0"],
        );
        fails(
            tp_session_cache_stats(s, null_mut()),
            TP_ERR_NULL_ARGUMENT,
            "tp_session_cache_stats",
            &["stats"],
        );
        fails(
            tp_session_cache_stats(null_mut(), &mut st),
            TP_ERR_NULL_ARGUMENT,
            "tp_session_cache_stats",
            &["session"],
        );
        ok(tp_session_destroy(&mut s));
        ok(tp_session_create(m, 0, mp, plain, null(), &mut s));
        st.struct_size = std::mem::size_of::<tp_cache_stats>() as u32;
        fails(
            tp_session_cache_stats(s, &mut st),
            TP_ERR_INVALID_ARGUMENT,
            "tp_session_cache_stats",
            &["no expert budget"],
        );

        // Tracer: NULL session, wrong struct_size; NULL detaches.
        let mut tr: tp_tracer = std::mem::zeroed();
        fails(
            tp_trace_attach(s, &tr),
            TP_ERR_STRUCT_SIZE,
            "tp_trace_attach",
            &["tp_tracer.struct_size is 0"],
        );
        tr.struct_size = std::mem::size_of::<tp_tracer>() as u32;
        fails(
            tp_trace_attach(null_mut(), &tr),
            TP_ERR_NULL_ARGUMENT,
            "tp_trace_attach",
            &["session"],
        );
        ok(tp_trace_attach(s, &tr));
        ok(tp_trace_attach(s, null()));
        ok(tp_session_destroy(&mut s));
        let mut m = m;
        ok(tp_model_close(&mut m));
    }
}

/// Events as the Rust `Tracer` and the C callbacks report them.
#[derive(Default, Debug, PartialEq)]
struct Events {
    ops: Vec<(u32, u32, bool)>,
    reads: Vec<(u32, usize)>,
    fetches: Vec<u32>,
    routes: Vec<(u32, Vec<u32>, Vec<u32>)>,
    cache: Vec<(u32, bool)>,
}

impl Tracer for Events {
    fn op_begin(&mut self, i: u32, op: Opcode) {
        self.ops.push((i, op as u32, true));
    }
    fn op_end(&mut self, i: u32, op: Opcode) {
        self.ops.push((i, op as u32, false));
    }
    fn blob_read(&mut self, b: u32, n: usize) {
        self.reads.push((b, n));
    }
    fn expert_fetch(&mut self, b: u32) {
        self.fetches.push(b);
    }
    fn route(&mut self, m: u32, e: &[u32], g: &[f32]) {
        self.routes
            .push((m, e.to_vec(), g.iter().map(|x| x.to_bits()).collect()));
    }
    fn cache_access(&mut self, b: u32, hit: bool) {
        self.cache.push((b, hit));
    }
}

fn ev(user: *mut c_void) -> &'static mut Events {
    // SAFETY: the tests pass a live, exclusively used `Events` as `user`.
    unsafe { &mut *user.cast::<Events>() }
}
unsafe extern "C" fn c_op_begin(u: *mut c_void, i: u32, op: u32) {
    ev(u).ops.push((i, op, true));
}
unsafe extern "C" fn c_op_end(u: *mut c_void, i: u32, op: u32) {
    ev(u).ops.push((i, op, false));
}
unsafe extern "C" fn c_read(u: *mut c_void, b: u32, n: usize) {
    ev(u).reads.push((b, n));
}
unsafe extern "C" fn c_fetch(u: *mut c_void, b: u32) {
    ev(u).fetches.push(b);
}
unsafe extern "C" fn c_route(u: *mut c_void, m: u32, e: *const u32, g: *const f32, n: usize) {
    // SAFETY: the library passes n experts and n gates.
    let (e, g) = unsafe {
        (
            std::slice::from_raw_parts(e, n),
            std::slice::from_raw_parts(g, n),
        )
    };
    ev(u)
        .routes
        .push((m, e.to_vec(), g.iter().map(|x| x.to_bits()).collect()));
}
unsafe extern "C" fn c_cache(u: *mut c_void, b: u32, hit: u32) {
    ev(u).cache.push((b, hit != 0));
}

#[test]
fn tracer_callbacks_see_what_the_rust_tracer_sees() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
    let t = 1; // WDBC: three modalities
    let info = model.task(t).unwrap();
    let (_, need, _) = sizes(m, t as u32);
    let budget = model.expert_bytes() / 2;
    let mut mem = AlignedArena::new(need);
    let mut bmem = AlignedArena::new(budget);
    let mut s = null_mut();
    // SAFETY: sized as asked, disjoint.
    ok(unsafe {
        tp_session_create_budgeted(
            m,
            t as u32,
            mem.as_mut_slice().as_mut_ptr().cast(),
            need,
            null(),
            bmem.as_mut_slice().as_mut_ptr().cast(),
            budget,
            &mut s,
        )
    });
    let mut got = Events::default();
    let tr = tp_tracer {
        struct_size: std::mem::size_of::<tp_tracer>() as u32,
        reserved: 0,
        user: (&mut got as *mut Events).cast(),
        op_begin: Some(c_op_begin),
        op_end: Some(c_op_end),
        blob_read: Some(c_read),
        expert_fetch: Some(c_fetch),
        route: Some(c_route),
        cache_access: Some(c_cache),
    };
    // SAFETY: live session; `tr` and `got` outlive the runs below.
    ok(unsafe { tp_trace_attach(s, &tr) });
    let mut rmem = AlignedArena::new(budget);
    let mut cache = ResidencyCache::new(&model, rmem.as_mut_slice()).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut rs = Session::new(&model, t, arena.as_mut_slice())
        .unwrap()
        .with_blob_source(&mut cache)
        .unwrap();
    let mut want = Events::default();
    let mut rng = SplitMix64::new(2);
    for _ in 0..2 {
        let xs = random_inputs(&f.ck.config, t, &mut rng);
        run(s, &xs, info.outputs);
        let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        rs.run_traced(&refs, &mut vec![0f32; info.outputs], &mut want)
            .unwrap();
    }
    // SAFETY: live session; detaching, then destroying.
    ok(unsafe { tp_trace_attach(s, null()) });
    assert!(!want.ops.is_empty() && !want.routes.is_empty() && !want.cache.is_empty());
    assert!(want.cache.iter().any(|c| c.1), "second run hits");
    assert_eq!(got, want);
    // SAFETY: live session and model.
    unsafe {
        ok(tp_session_destroy(&mut s));
        let mut m = m;
        ok(tp_model_close(&mut m));
    }
}
