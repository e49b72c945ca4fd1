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

    // Any alignment: the stated arena includes the padding a plan needs.
    let mut big = AlignedArena::new(info.arena_bytes + 8);
    Session::new(&model, t, &mut big.as_mut_slice()[1..info.arena_bytes + 1]).unwrap();

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

/// A hand-written package whose task keeps state across runs: op 0 copies
/// the state slot to the output, op 1 encodes the input (`x = 2 in + 0.5`),
/// op 2 copies `x` into the state. `scratch_on_state` places the scratch
/// slot over the state slot's bytes (refused by the plan).
fn stateful(scratch_on_state: bool) -> Vec<u8> {
    use taskpath_format::records::*;
    use taskpath_format::writer::PackageWriter;
    use taskpath_format::{Op, SlotId, TensorId};
    let mut w = PackageWriter::default();
    w.arch("test");
    let (mo, ml) = w.string("m");
    w.modalities.push(ModalityRec {
        name_off: mo,
        name_len: ml,
        tokens: 1,
        features: 1,
        ..Default::default()
    });
    let mut blob = Vec::new();
    for (i, (name, v)) in [("w", 2.0f32), ("b", 0.5), ("pos", 0.0)].iter().enumerate() {
        blob.extend_from_slice(&v.to_le_bytes());
        blob.extend_from_slice(&[0u8; 12]);
        let (no, nl) = w.string(name);
        w.tensors.push(TensorRec {
            name_off: no,
            name_len: nl,
            blob: 0,
            format: format::F32,
            layout: layout::DENSE,
            offset: 16 * i as u32,
            rows: 1,
            cols: 1,
            bytes: 4,
            ..Default::default()
        });
    }
    w.blobs.push((
        BlobRec {
            kind: blob_kind::SHARED,
            format: 1,
            group: NONE16,
            expert: NONE16,
            component: NONE16,
            owner: 0,
            ..Default::default()
        },
        blob,
    ));
    let slot = |offset, kind| SlotRec {
        offset,
        len: 4,
        kind,
    };
    w.slots.push(slot(0, slot_kind::STATE));
    w.slots.push(slot(4, slot_kind::SCRATCH));
    w.slots.push(slot(
        if scratch_on_state { 0 } else { 8 },
        slot_kind::SCRATCH,
    ));
    let (state, out, x) = (SlotId(0), SlotId(1), SlotId(2));
    let copy = |src, dst| Op::Copy {
        src,
        src_offset: 0,
        dst,
        dst_offset: 0,
        len: 1,
    };
    for op in [
        copy(state, out),
        Op::Encode {
            input: 0,
            out: x,
            w: TensorId(0),
            b: TensorId(1),
            pos: TensorId(2),
            tmp: None,
        },
        copy(x, state),
    ] {
        w.program.push(op.encode());
    }
    let (no, nl) = w.string("count");
    w.tasks.push(TaskRec {
        name_off: no,
        name_len: nl,
        outputs: 1,
        modality_mask: 1,
        program_len: 3,
        slot_count: 3,
        output_slot: 1,
        plan_tensors: 3,
        slot_bytes: 48,
        ..Default::default()
    });
    w.finish(12, 0)
}

/// State slots persist across runs in the caller's arena, `reset` clears
/// them, and a scratch slot over the state's bytes is refused at creation.
#[test]
fn state_slots_persist_across_runs_until_reset() {
    let bytes = AlignedArena::from_bytes(&stateful(false));
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(&model, 0, arena.as_mut_slice()).unwrap();
    assert_eq!(s.plan().state().len(), 4);
    let mut out = [f32::NAN];
    let mut step = |s: &mut Session<'_, '_>, x: f32| {
        s.run(&[&[x]], &mut out).unwrap();
        out[0]
    };
    assert_eq!(step(&mut s, 1.0), 0.0, "state starts zeroed");
    assert_eq!(step(&mut s, 3.0), 2.5, "the previous run's 2 * 1 + 0.5");
    assert_eq!(step(&mut s, 0.0), 6.5);
    s.reset();
    assert_eq!(step(&mut s, 1.0), 0.0, "reset clears the state");

    let bad = AlignedArena::from_bytes(&stateful(true));
    let model = Model::from_bytes(bad.as_slice()).unwrap();
    let mut arena = AlignedArena::new(model.task(0).unwrap().arena_bytes);
    let e = Session::new(&model, 0, arena.as_mut_slice()).unwrap_err();
    assert!(
        e.to_string().contains("scratch slot overlaps the state"),
        "{e}"
    );
}
