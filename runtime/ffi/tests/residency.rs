//! The C ABI's expert budget, tracer and prefetch hook: budgeted sessions
//! are bit-identical to unbudgeted ones and report the cache's counters;
//! tracer callbacks see the events the Rust `Tracer` sees; prefetch hints
//! are the Rust `Session::prefetch_plan` of each input, with the blobs'
//! package bytes; every new entry point's error cases (NULL, too-small arena
//! or budget, wrong struct_size, a session without a budget) give their
//! documented status and a last-error message.

mod common;

use std::ffi::c_void;
use std::ptr::{null, null_mut};

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_ffi::*;
use taskpath_pack::{pack, random_calibration, PackOptions};
use taskpath_runtime::format::{opcode, Op};
use taskpath_runtime::{AlignedArena, Model, ResidencyCache, Session, Tracer};

use common::{close, fails, ok, open};
use tp_status::*;

struct Fx {
    ck: taskpath_checkpoint::Checkpoint,
    pkg: AlignedArena,
}

fn fixture() -> Fx {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let pkg = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    Fx { ck, pkg }
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

/// A budgeted C session of task `t`, with its session memory and budget
/// (keep both alive while the session is).
fn budgeted(
    m: *const tp_model,
    t: u32,
    budget: usize,
) -> (AlignedArena, AlignedArena, *mut tp_session) {
    let (_, need, _) = sizes(m, t);
    let mut mem = AlignedArena::new(need);
    let mut bmem = AlignedArena::new(budget);
    let mut s = null_mut();
    // SAFETY: live model; memory and budget sized as asked, disjoint.
    ok(unsafe {
        tp_session_create_budgeted(
            m,
            t,
            mem.as_mut_slice().as_mut_ptr().cast(),
            need,
            null(),
            bmem.as_mut_slice().as_mut_ptr().cast(),
            budget,
            &mut s,
        )
    });
    (mem, bmem, s)
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
        let (_, _, min) = sizes(m, t as u32);
        assert_eq!(min, ResidencyCache::min_budget(&model));
        let (_mem, _bmem, mut s) = budgeted(m, t as u32, budget);
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
    close(m);
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
        close(m);
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
    fn op_begin(&mut self, i: u32, op: &Op) {
        self.ops.push((i, op.opcode().into(), true));
    }
    fn op_end(&mut self, i: u32, op: &Op) {
        self.ops.push((i, op.opcode().into(), false));
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
    let budget = model.expert_bytes() / 2;
    let (_mem, _bmem, mut s) = budgeted(m, t as u32, budget);
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
        close(m);
    }
}

/// A package whose task paths are narrowed by calibration (60% coverage, as
/// in tests/tests/prefetch.rs), so that the modalities' expert masks, hence
/// the inputs' prefetch plans, differ.
fn narrowed() -> Fx {
    let ck = random_checkpoint(&RandomSpec::wide_small(), 21);
    let opts = random_calibration(&ck, 24, 5, 0.6).unwrap();
    let pkg = AlignedArena::from_bytes(&pack(&ck, &opts).unwrap());
    Fx { ck, pkg }
}

/// A hint: blob, address and length of the bytes passed.
type Hint = (u32, usize, usize);

/// What the C callbacks saw, in order: `Some(hint)` from `will_need`,
/// `None` from the tracer's `op_begin` of each Encode op (one per input), so
/// that hints can be split by the input whose encoding sent them.
#[derive(Default, Debug)]
struct HintLog(Vec<Option<Hint>>);

impl HintLog {
    /// Hints per encoded input (those before the first Encode op, which
    /// must be none, dropped after the check).
    fn per_input(&self) -> Vec<Vec<Hint>> {
        let mut groups: Vec<Vec<Hint>> = vec![Vec::new()];
        for e in &self.0 {
            match e {
                Some(h) => groups.last_mut().unwrap().push(*h),
                None => groups.push(Vec::new()),
            }
        }
        assert!(
            groups[0].is_empty(),
            "hints before the first input: {groups:?}"
        );
        groups.remove(0);
        groups
    }
    fn hints(&self) -> Vec<Hint> {
        self.0.iter().flatten().copied().collect()
    }
}

fn hint_log(user: *mut c_void) -> &'static mut HintLog {
    // SAFETY: the tests pass a live, exclusively used `HintLog` as `user`.
    unsafe { &mut *user.cast::<HintLog>() }
}
unsafe extern "C" fn c_will_need(u: *mut c_void, blob: u32, bytes: *const u8, len: usize) {
    hint_log(u).0.push(Some((blob, bytes as usize, len)));
}
unsafe extern "C" fn c_encode_begin(u: *mut c_void, _i: u32, op: u32) {
    if op == u32::from(opcode::ENCODE) {
        hint_log(u).0.push(None);
    }
}

fn prefetch_of(log: &mut HintLog) -> tp_prefetch {
    tp_prefetch {
        struct_size: std::mem::size_of::<tp_prefetch>() as u32,
        reserved: 0,
        user: (log as *mut HintLog).cast(),
        will_need: Some(c_will_need),
    }
}

/// The oracle: the Rust API's plan for each input of task `t`, as hints
/// (checked against the blob table's bytes on the way).
fn rust_plan(model: &Model<'_>, t: usize) -> Vec<Vec<Hint>> {
    let info = model.task(t).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let rs = Session::new(model, t, arena.as_mut_slice()).unwrap();
    (0..info.modality_mask.count_ones() as usize)
        .map(|i| {
            rs.prefetch_plan(i)
                .map(|b| {
                    let table = model.blob(b.index).unwrap().bytes;
                    assert_eq!(
                        (b.bytes.as_ptr(), b.bytes.len()),
                        (table.as_ptr(), table.len())
                    );
                    (b.index, b.bytes.as_ptr() as usize, b.bytes.len())
                })
                .collect()
        })
        .collect()
}

#[test]
fn prefetch_hints_are_the_rust_prefetch_plan_of_each_input() {
    let f = narrowed();
    let m = open(f.pkg.as_slice());
    let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
    let pkg = f.pkg.as_slice().as_ptr_range();
    let budget = model.expert_bytes() / 3;
    let mut rng = SplitMix64::new(8);
    let (mut multi, mut differing) = (0, 0);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let want = rust_plan(&model, t);
        let (_mem, _bmem, mut s) = budgeted(m, t as u32, budget);
        let mut log = HintLog::default();
        let pf = prefetch_of(&mut log);
        let tr = tp_tracer {
            struct_size: std::mem::size_of::<tp_tracer>() as u32,
            reserved: 0,
            user: (&mut log as *mut HintLog).cast(),
            op_begin: Some(c_encode_begin),
            op_end: None,
            blob_read: None,
            expert_fetch: None,
            route: None,
            cache_access: None,
        };
        // SAFETY: live session; `pf`, `tr` and `log` outlive the runs.
        unsafe {
            ok(tp_prefetch_attach(s, &pf));
            ok(tp_trace_attach(s, &tr));
        }
        for _ in 0..2 {
            log.0.clear();
            run(s, &random_inputs(&f.ck.config, t, &mut rng), info.outputs);
            let got = log.per_input();
            assert_eq!(got, want, "task {}: hints per input", info.name);
            for &(_, at, len) in got.iter().flatten() {
                assert!(
                    pkg.contains(&(at as *const u8)) && at + len <= pkg.end as usize,
                    "hinted bytes lie in the package the model was opened on"
                );
            }
        }
        assert!(
            want.last().unwrap().is_empty(),
            "no hints for the last input"
        );
        if want.len() > 1 {
            multi += 1;
            assert!(!want[0].is_empty(), "task {}: input 0 hints", info.name);
            differing += usize::from(want[..want.len() - 1].windows(2).any(|w| w[0] != w[1]));
        }

        // Detached: the session still encodes each input, but hints nothing.
        // SAFETY: live session.
        ok(unsafe { tp_prefetch_attach(s, null()) });
        log.0.clear();
        run(s, &random_inputs(&f.ck.config, t, &mut rng), info.outputs);
        assert_eq!(log.0.len(), want.len(), "only the Encode markers");
        assert!(log.hints().is_empty(), "hints after detach: {log:?}");
        // SAFETY: live session and model.
        unsafe {
            ok(tp_trace_attach(s, null()));
            ok(tp_session_destroy(&mut s));
        }
    }
    assert!(multi > 0, "a task with several inputs");
    assert!(differing > 0, "narrowed masks give inputs different plans");
    close(m);
}

#[test]
fn prefetch_hints_reach_unbudgeted_sessions_and_the_latest_hook() {
    let f = narrowed();
    let m = open(f.pkg.as_slice());
    let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
    let t = (0..model.task_count())
        .find(|&t| model.task(t).unwrap().modality_mask.count_ones() > 1)
        .expect("a multi-input task");
    let info = model.task(t).unwrap();
    let want: Vec<Hint> = rust_plan(&model, t).into_iter().flatten().collect();
    assert!(!want.is_empty());
    // The Rust API's own hints, for an unbudgeted session: the same.
    #[derive(Default)]
    struct Rec(Vec<Hint>);
    impl taskpath_runtime::Prefetch for Rec {
        fn will_need(&mut self, blob: u32, bytes: &[u8]) {
            self.0.push((blob, bytes.as_ptr() as usize, bytes.len()));
        }
    }
    let mut rec = Rec::default();
    let mut rarena = AlignedArena::new(info.arena_bytes);
    let xs = random_inputs(&f.ck.config, t, &mut SplitMix64::new(4));
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    Session::new(&model, t, rarena.as_mut_slice())
        .unwrap()
        .with_prefetch(&mut rec)
        .run(&refs, &mut vec![0f32; info.outputs])
        .unwrap();
    assert_eq!(rec.0, want, "the Rust session hints without a budget too");

    let (plain, _, _) = sizes(m, t as u32);
    let mut mem = AlignedArena::new(plain);
    let mut s = null_mut();
    // SAFETY: live model; memory sized as asked.
    ok(unsafe {
        tp_session_create(
            m,
            t as u32,
            mem.as_mut_slice().as_mut_ptr().cast(),
            plain,
            null(),
            &mut s,
        )
    });
    let (mut first, mut second) = (HintLog::default(), HintLog::default());
    let (pf1, pf2) = (prefetch_of(&mut first), prefetch_of(&mut second));
    // SAFETY: live session; the structs and logs outlive the runs.
    ok(unsafe { tp_prefetch_attach(s, &pf1) });
    let plain_out = run(s, &xs, info.outputs);
    assert_eq!(first.hints(), want, "unbudgeted C session");
    // Replacing: the new hook gets the hints, the old one nothing more.
    // SAFETY: as above.
    ok(unsafe { tp_prefetch_attach(s, &pf2) });
    let again = run(s, &xs, info.outputs);
    assert_eq!(first.hints().len(), want.len());
    assert_eq!(second.hints(), want);
    let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b(&again), b(&plain_out), "hints change no output");
    // A hook without a callback reports nothing and runs fine.
    let silent = tp_prefetch {
        will_need: None,
        ..pf2
    };
    // SAFETY: as above.
    ok(unsafe { tp_prefetch_attach(s, &silent) });
    run(s, &xs, info.outputs);
    assert_eq!(second.hints().len(), want.len());
    // SAFETY: live session and model; destroying with a hook attached.
    unsafe {
        ok(tp_prefetch_attach(s, &pf2));
        ok(tp_session_destroy(&mut s));
        close(m);
    }
}

#[test]
fn prefetch_attach_reports_its_errors() {
    let f = fixture();
    let m = open(f.pkg.as_slice());
    let (_, need, min) = sizes(m, 1);
    let mut mem = AlignedArena::new(need);
    let mut bmem = AlignedArena::new(min);
    let mut s = null_mut();
    let mut log = HintLog::default();
    let good = prefetch_of(&mut log);
    let bad = tp_prefetch {
        struct_size: 8,
        ..good
    };
    // SAFETY (every call below): the library checks its arguments itself;
    // valid pointers are live and sized as passed.
    unsafe {
        ok(tp_session_create_budgeted(
            m,
            1,
            mem.as_mut_slice().as_mut_ptr().cast(),
            need,
            null(),
            bmem.as_mut_slice().as_mut_ptr().cast(),
            min,
            &mut s,
        ));
        fails(
            tp_prefetch_attach(null_mut(), &good),
            TP_ERR_NULL_ARGUMENT,
            "tp_prefetch_attach",
            &["session"],
        );
        ok(tp_prefetch_attach(s, &good));
        fails(
            tp_prefetch_attach(s, &bad),
            TP_ERR_STRUCT_SIZE,
            "tp_prefetch_attach",
            &[
                "tp_prefetch.struct_size is 8",
                &std::mem::size_of::<tp_prefetch>().to_string(),
            ],
        );
        let zeroed: tp_prefetch = std::mem::zeroed();
        fails(
            tp_prefetch_attach(s, &zeroed),
            TP_ERR_STRUCT_SIZE,
            "tp_prefetch_attach",
            &["tp_prefetch.struct_size is 0"],
        );
        // A failed attach leaves the hook installed before.
        let xs = random_inputs(&f.ck.config, 1, &mut SplitMix64::new(1));
        let model = Model::from_bytes(f.pkg.as_slice()).unwrap();
        run(s, &xs, model.task(1).unwrap().outputs);
        assert!(!log.hints().is_empty(), "the good hook still hints");
        ok(tp_prefetch_attach(s, null()));
        ok(tp_prefetch_attach(s, null()));
        let live = s;
        ok(tp_session_destroy(&mut s));
        fails(
            tp_prefetch_attach(live, &good),
            TP_ERR_INVALID_HANDLE,
            "tp_prefetch_attach",
            &["session"],
        );
        close(m);
    }
}
