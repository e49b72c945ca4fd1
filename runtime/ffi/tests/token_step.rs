//! The C ABI's language-model entry points (`tp_session_step`,
//! `tp_session_token_shape`, `tp_session_reset`) on a committed tiny model:
//! logits bit-identical to the Rust API's `Session::step`, and every
//! misuse a documented status with a message naming the problem.

mod common;

use std::path::Path;
use std::ptr::{null, null_mut};

use taskpath_ffi::*;
use taskpath_import::Checkpoint;
use taskpath_pack::llm::{pack_llm, LlmPackOptions};
use taskpath_runtime::{AlignedArena, Model, Session};

use common::{close, fails, ok, open};
use tp_status::*;

fn package() -> AlignedArena {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/llm-tiny/olmoe");
    let ck = Checkpoint::open(dir).unwrap();
    let opts = LlmPackOptions {
        context: 40,
        chunk: 8,
        ..Default::default()
    };
    AlignedArena::from_bytes(&pack_llm(&ck, &opts).unwrap())
}

fn session(m: *const tp_model, mem: &mut AlignedArena) -> *mut tp_session {
    let mut size = 0usize;
    // SAFETY: live model, writable size.
    ok(unsafe { tp_session_arena_size(m, 0, &mut size) });
    *mem = AlignedArena::new(size);
    let slice = mem.as_mut_slice();
    let mut s = null_mut();
    // SAFETY: live model, aligned writable memory kept for the session.
    ok(unsafe { tp_session_create(m, 0, slice.as_mut_ptr().cast(), slice.len(), null(), &mut s) });
    s
}

fn step(s: *mut tp_session, ids: &[u32], logits: &mut [f32]) -> tp_status {
    // SAFETY: live session; buffers of the stated lengths.
    unsafe {
        tp_session_step(
            s,
            ids.as_ptr(),
            ids.len(),
            logits.as_mut_ptr(),
            logits.len(),
        )
    }
}

fn shape(s: *mut tp_session) -> tp_token_shape {
    let mut t = tp_token_shape::default();
    // SAFETY: live session, writable shape.
    ok(unsafe { tp_session_token_shape(s, &mut t) });
    t
}

#[test]
fn steps_are_bit_identical_to_the_rust_api() {
    let pkg = package();
    let ids: Vec<u32> = (0..30).map(|i| (i * 37 + 5) % 512).collect();
    // The Rust API: a chunk of 8, then single tokens.
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    let mut mem = vec![0u8; model.task(0).unwrap().arena_bytes];
    let mut rs = Session::new(&model, 0, &mut mem).unwrap();
    let mut want = Vec::new();
    let mut l = vec![0f32; 512];
    rs.step(&ids[..8], &mut l).unwrap();
    want.push(l.clone());
    for &t in &ids[8..] {
        rs.step(&[t], &mut l).unwrap();
        want.push(l.clone());
    }

    let m = open(pkg.as_slice());
    let mut mem = AlignedArena::new(0);
    let s = session(m, &mut mem);
    let sh = shape(s);
    assert_eq!(
        (sh.chunk, sh.context, sh.vocab, sh.position),
        (8, 40, 512, 0)
    );
    for round in 0..2 {
        let mut got = vec![f32::NAN; 512];
        ok(step(s, &ids[..8], &mut got));
        assert_eq!(bits(&got), bits(&want[0]), "round {round}");
        for (i, &t) in ids[8..].iter().enumerate() {
            ok(step(s, &[t], &mut got));
            assert_eq!(bits(&got), bits(&want[i + 1]), "round {round}, token {i}");
        }
        assert_eq!(shape(s).position, 30);
        // SAFETY: live session.
        ok(unsafe { tp_session_reset(s) });
        assert_eq!(shape(s).position, 0);
    }
    let mut s = s;
    // SAFETY: live session.
    ok(unsafe { tp_session_destroy(&mut s) });
    close(m);
}

/// A budgeted language-model session (the expert budget for LLM sessions
/// from C): the same logits bit for bit as an unbudgeted one at two
/// budgets, the cache never above its budget, and misses counted.
#[test]
fn budgeted_steps_are_bit_identical() {
    let pkg = package();
    let ids: Vec<u32> = (0..24).map(|i| (i * 53 + 11) % 512).collect();
    let m = open(pkg.as_slice());
    let run = |budget: Option<usize>| -> (Vec<Vec<u32>>, Option<tp_cache_stats>) {
        let mut mem = AlignedArena::new(0);
        let mut cache = AlignedArena::new(budget.unwrap_or(0));
        let s = match budget {
            None => session(m, &mut mem),
            Some(_) => {
                let (st, s) = create_budgeted(m, &mut mem, &mut cache);
                ok(st);
                s
            }
        };
        let mut out = Vec::new();
        let mut l = vec![0f32; 512];
        ok(step(s, &ids[..8], &mut l));
        out.push(bits(&l));
        for &t in &ids[8..] {
            ok(step(s, &[t], &mut l));
            out.push(bits(&l));
        }
        let stats = budget.map(|_| {
            let mut st = tp_cache_stats {
                struct_size: std::mem::size_of::<tp_cache_stats>() as u32,
                ..Default::default()
            };
            // SAFETY: live session, writable stats of the stated size.
            ok(unsafe { tp_session_cache_stats(s, &mut st) });
            st
        });
        let mut s = s;
        // SAFETY: live session.
        ok(unsafe { tp_session_destroy(&mut s) });
        (out, stats)
    };
    let (want, _) = run(None);
    let mut min = 0usize;
    // SAFETY: live model, writable size.
    ok(unsafe { tp_task_min_expert_budget(m, 0, &mut min) });
    let mut largest = 0usize;
    // SAFETY: live model, writable size.
    ok(unsafe { tp_model_min_expert_budget(m, &mut largest) });
    assert!(min > largest, "a layer's active experts exceed one blob");
    // One byte short of a layer's active experts: refused at creation.
    let (mut mem, mut cache) = (AlignedArena::new(0), AlignedArena::new(min - 1));
    fails(
        create_budgeted(m, &mut mem, &mut cache).0,
        TP_ERR_BUDGET_TOO_SMALL,
        "tp_session_create_budgeted",
        &[&min.to_string()],
    );
    for budget in [min, 3 * min] {
        let (got, st) = run(Some(budget));
        assert_eq!(got, want, "budget {budget}");
        let st = st.unwrap();
        assert!(st.peak_resident_bytes <= budget as u64, "{st:?}");
        assert!(st.misses > 0 && st.bytes_copied > 0, "{st:?}");
    }
    close(m);
}

/// Task 0 of `m` with the expert budget `cache`; `mem` is replaced by an
/// arena of `tp_session_arena_size_budgeted` bytes. The status and session.
fn create_budgeted(
    m: *const tp_model,
    mem: &mut AlignedArena,
    cache: &mut AlignedArena,
) -> (tp_status, *mut tp_session) {
    let mut size = 0usize;
    // SAFETY: live model, writable size.
    ok(unsafe { tp_session_arena_size_budgeted(m, 0, &mut size) });
    *mem = AlignedArena::new(size);
    let (a, c) = (mem.as_mut_slice(), cache.as_mut_slice());
    let mut s = null_mut();
    // SAFETY: live model; disjoint aligned memories the caller keeps for the session.
    let st = unsafe {
        tp_session_create_budgeted(
            m,
            0,
            a.as_mut_ptr().cast(),
            a.len(),
            null(),
            c.as_mut_ptr().cast(),
            c.len(),
            &mut s,
        )
    };
    (st, s)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn step_misuse_gets_its_status() {
    let pkg = package();
    let m = open(pkg.as_slice());
    let mut mem = AlignedArena::new(0);
    let s = session(m, &mut mem);
    let mut l = vec![0f32; 512];
    fails(
        step(s, &[600], &mut l),
        TP_ERR_TOKEN_OUT_OF_RANGE,
        "tp_session_step",
        &["600", "512"],
    );
    fails(
        step(s, &[1; 9], &mut l),
        TP_ERR_CONTEXT_FULL,
        "tp_session_step",
        &["n_tokens = 9", "1..=8"],
    );
    fails(
        step(s, &[], &mut l),
        TP_ERR_CONTEXT_FULL,
        "tp_session_step",
        &["n_tokens = 0"],
    );
    fails(
        step(s, &[1], &mut l[..10]),
        TP_ERR_OUTPUT_SHAPE,
        "tp_session_step",
        &["512", "n_logits = 10"],
    );
    // SAFETY: NULL buffers are checked before use.
    let st = unsafe { tp_session_step(s, null(), 1, l.as_mut_ptr(), 512) };
    fails(st, TP_ERR_NULL_ARGUMENT, "tp_session_step", &["tokens"]);
    for _ in 0..5 {
        ok(step(s, &[1; 8], &mut l));
    }
    fails(
        step(s, &[1], &mut l),
        TP_ERR_CONTEXT_FULL,
        "tp_session_step",
        &["41", "40"],
    );
    // A failed step leaves the position alone.
    let mut t = tp_token_shape::default();
    // SAFETY: live session, writable shape.
    ok(unsafe { tp_session_token_shape(s, &mut t) });
    assert_eq!(t.position, 40);
    // tp_session_run on a language-model task.
    let x = [0f32; 8];
    let xs = [x.as_ptr()];
    // SAFETY: live session; one input of 8 floats (the token modality).
    let st = unsafe { tp_session_run(s, xs.as_ptr(), 1, l.as_mut_ptr(), 512) };
    fails(st, TP_ERR_TASK_KIND, "tp_session_run", &["Session::step"]);
    let mut s = s;
    // SAFETY: live session.
    ok(unsafe { tp_session_destroy(&mut s) });
    close(m);
}
