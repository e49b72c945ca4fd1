//! The C ABI's unsafe paths on a model small enough for Miri
//! (`scripts/miri.sh` runs this file under Stacked Borrows): a session in
//! caller memory, a budgeted one whose expert cache lives in the caller's
//! budget and evicts, a tracer and a prefetch hook attached, runs, stats,
//! destroy and close. The oracle is the Rust API on the same package.

mod common;

use std::ffi::c_void;
use std::ptr::{null, null_mut};

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_ffi::*;
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model, ResidencyCache, Session};

use common::{close, fails, ok, open};
use tp_status::*;

#[derive(Default)]
struct Seen {
    ops: u32,
    hints: Vec<(u32, usize)>,
}

/// # Safety
/// `u` is the `Seen` the test attached.
unsafe fn seen<'a>(u: *mut c_void) -> &'a mut Seen {
    // SAFETY: per the contract above; the test holds no other reference
    // to it while the library calls back.
    unsafe { &mut *u.cast::<Seen>() }
}
unsafe extern "C" fn c_op_end(u: *mut c_void, _index: u32, _opcode: u32) {
    // SAFETY: attached with a live `Seen`.
    unsafe { seen(u) }.ops += 1;
}
unsafe extern "C" fn c_will_need(u: *mut c_void, blob: u32, _bytes: *const u8, len: usize) {
    // SAFETY: attached with a live `Seen`.
    unsafe { seen(u) }.hints.push((blob, len));
}

fn run(s: *mut tp_session, xs: &[Vec<f32>], n: usize) -> Vec<f32> {
    let ptrs: Vec<*const f32> = xs.iter().map(|x| x.as_ptr()).collect();
    let mut out = vec![f32::NAN; n];
    // SAFETY: live session; inputs sized per the task; `out` holds n floats.
    ok(unsafe { tp_session_run(s, ptrs.as_ptr(), ptrs.len(), out.as_mut_ptr(), n) });
    out
}

#[test]
fn miri_sessions_in_caller_memory_with_budget_tracer_and_prefetch() {
    // d=8, 2 heads, 3 experts, top-2, 2 stages: packing and running it
    // takes seconds under Miri.
    let ck = random_checkpoint(&RandomSpec::small(8, 2, 3, 2, 2), 11);
    let pkg = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();

    let m = open(pkg.as_slice());
    let mut min = 0;
    // SAFETY: live model, writable out.
    ok(unsafe { tp_model_min_expert_budget(m, &mut min) });
    assert_eq!(min, ResidencyCache::min_budget(&model));

    let mut rng = SplitMix64::new(3);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let (mut plain, mut need) = (0, 0);
        // SAFETY: live model, writable outs.
        unsafe {
            ok(tp_session_arena_size(m, t as u32, &mut plain));
            ok(tp_session_arena_size_budgeted(m, t as u32, &mut need));
        }
        let mut mem = AlignedArena::new(plain);
        let mut bmem = AlignedArena::new(need);
        let mut budget = AlignedArena::new(min);
        let (mut s, mut b) = (null_mut(), null_mut());
        // SAFETY: live model; three disjoint regions sized as asked.
        unsafe {
            ok(tp_session_create(
                m,
                t as u32,
                mem.as_mut_slice().as_mut_ptr().cast(),
                plain,
                null(),
                &mut s,
            ));
            ok(tp_session_create_budgeted(
                m,
                t as u32,
                bmem.as_mut_slice().as_mut_ptr().cast(),
                need,
                null(),
                budget.as_mut_slice().as_mut_ptr().cast(),
                min,
                &mut b,
            ));
        }
        let mut trace_seen = Seen::default();
        let mut hint_seen = Seen::default();
        let tracer = tp_tracer {
            struct_size: std::mem::size_of::<tp_tracer>() as u32,
            reserved: 0,
            user: (&raw mut trace_seen).cast(),
            op_begin: None,
            op_end: Some(c_op_end),
            blob_read: None,
            expert_fetch: None,
            route: None,
            cache_access: None,
        };
        let prefetch = tp_prefetch {
            struct_size: std::mem::size_of::<tp_prefetch>() as u32,
            reserved: 0,
            user: (&raw mut hint_seen).cast(),
            will_need: Some(c_will_need),
        };
        // SAFETY: live session; both structs outlive it (detached below).
        unsafe {
            ok(tp_trace_attach(b, &tracer));
            ok(tp_prefetch_attach(b, &prefetch));
            fails(
                tp_prefetch_attach(null_mut(), &prefetch),
                TP_ERR_NULL_ARGUMENT,
                "tp_prefetch_attach",
                &["session"],
            );
        }

        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut rs = Session::new(&model, t, arena.as_mut_slice()).unwrap();
        let xs = random_inputs(&ck.config, t, &mut rng);
        let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let mut want = vec![0f32; info.outputs];
        rs.run(&refs, &mut want).unwrap();
        let plan: Vec<(u32, usize)> = (0..refs.len())
            .flat_map(|i| rs.prefetch_plan(i).collect::<Vec<_>>())
            .map(|bv| (bv.index, bv.bytes.len()))
            .collect();

        for _ in 0..2 {
            assert_eq!(bits(&run(s, &xs, info.outputs)), bits(&want));
            assert_eq!(bits(&run(b, &xs, info.outputs)), bits(&want));
        }
        let mut st = tp_run_stats {
            struct_size: std::mem::size_of::<tp_run_stats>() as u32,
            ..Default::default()
        };
        let mut cs = tp_cache_stats {
            struct_size: std::mem::size_of::<tp_cache_stats>() as u32,
            ..Default::default()
        };
        // SAFETY: live sessions, writable structs with struct_size set.
        unsafe {
            ok(tp_session_stats(b, &mut st));
            ok(tp_session_cache_stats(b, &mut cs));
            ok(tp_trace_attach(b, null()));
            ok(tp_prefetch_attach(b, null()));
        }
        assert_eq!(st.runs, 2);
        assert_eq!(trace_seen.ops, 2 * st.ops, "{}", info.name);
        assert_eq!(hint_seen.hints, [plan.clone(), plan].concat());
        assert!(cs.peak_resident_bytes <= min as u64);
        assert_eq!(cs.hits + cs.misses, 2 * u64::from(st.expert_components));
        // SAFETY: live handles, destroyed once.
        unsafe {
            ok(tp_session_destroy(&mut s));
            ok(tp_session_destroy(&mut b));
        }
        assert!(s.is_null() && b.is_null());
    }
    close(m);
}
