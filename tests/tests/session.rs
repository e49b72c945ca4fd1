//! Session-level guarantees: clear errors for bad calls, the arena the
//! package states is the arena a session uses, and `run` never allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Error, Model, Session};

/// Counts allocations made by the current test thread while armed.
struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local!(static ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ARMED.try_with(|a| a.get()).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

fn model_bytes() -> AlignedArena {
    AlignedArena::from_bytes(
        &pack(
            &random_checkpoint(&RandomSpec::reference(), 9),
            &PackOptions::default(),
        )
        .unwrap(),
    )
}

#[test]
fn bad_calls_get_their_own_errors() {
    let bytes = model_bytes();
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    assert_eq!(model.task_index("NO-SUCH-TASK"), Err(Error::UnknownTask));
    assert!(matches!(model.task(99), Err(Error::UnknownTask)));
    let t = model.task_index("DIAB").unwrap();
    let info = model.task(t).unwrap();

    let mut small = AlignedArena::new(info.arena_bytes - 4);
    let e = Session::new(&model, t, small.as_mut_slice()).unwrap_err();
    assert_eq!(
        e,
        Error::ArenaTooSmall {
            need: info.arena_bytes,
            have: info.arena_bytes - 4
        }
    );
    assert!(e.to_string().contains("arena too small"));

    let mut big = AlignedArena::new(info.arena_bytes + 8);
    let e = Session::new(&model, t, &mut big.as_mut_slice()[1..info.arena_bytes + 1]).unwrap_err();
    assert_eq!(e, Error::ArenaMisaligned);

    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(&model, t, arena.as_mut_slice()).unwrap();
    let ck = random_checkpoint(&RandomSpec::reference(), 9);
    let x = random_inputs(&ck.config, t, &mut SplitMix64::new(1));
    let mut out = vec![0f32; info.outputs];
    let e = s.run(&[&x[0]], &mut out).unwrap_err();
    assert_eq!(
        e,
        Error::InputCount {
            expected: 2,
            got: 1
        }
    );
    let e = s.run(&[&x[0], &x[1][1..]], &mut out).unwrap_err();
    assert_eq!(
        e,
        Error::InputShape {
            index: 1,
            expected: 6,
            got: 5
        }
    );
    assert!(e.to_string().contains("input 1 needs 6 values"), "{e}");
    let e = s.run(&[&x[0], &x[1]], &mut out[..1]).unwrap_err();
    assert_eq!(
        e,
        Error::OutputShape {
            expected: 2,
            got: 1
        }
    );
    s.run(&[&x[0], &x[1]], &mut out).unwrap();
}

#[test]
fn stated_arena_is_exactly_what_a_session_needs_and_nothing_allocates() {
    let bytes = model_bytes();
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let ck = random_checkpoint(&RandomSpec::reference(), 9);
    let mut rng = SplitMix64::new(3);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        // One byte less fails, the stated size works, and that is what the session holds.
        let mut less = AlignedArena::new(info.arena_bytes - 1);
        assert!(matches!(
            Session::new(&model, t, less.as_mut_slice()),
            Err(Error::ArenaTooSmall { .. })
        ));
        let mut arena = AlignedArena::new(info.arena_bytes + 4096);
        let x = random_inputs(&ck.config, t, &mut rng);
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0f32; info.outputs];
        ALLOCS.store(0, Ordering::Relaxed);
        ARMED.with(|a| a.set(true));
        let s = Session::new(&model, t, arena.as_mut_slice());
        ARMED.with(|a| a.set(false));
        let mut s = s.unwrap();
        assert_eq!(
            ALLOCS.load(Ordering::Relaxed),
            0,
            "session creation allocated"
        );
        assert_eq!(s.arena_bytes(), info.arena_bytes);
        s.run(&refs, &mut out).unwrap();
        let before = out.clone();
        ALLOCS.store(0, Ordering::Relaxed);
        ARMED.with(|a| a.set(true));
        let r = s.run(&refs, &mut out);
        ARMED.with(|a| a.set(false));
        r.unwrap();
        assert_eq!(ALLOCS.load(Ordering::Relaxed), 0, "run allocated");
        assert_eq!(before, out, "runs are deterministic");
        // Bytes past the stated arena are never written.
        assert!(arena.as_slice()[info.arena_bytes..].iter().all(|&b| b == 0));
    }
}
