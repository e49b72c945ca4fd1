//! Continual stages as delta packs: earlier tasks stay bit-identical, a chain
//! equals the full package, and wrong bases or orders are refused.

use taskpath_checkpoint::{random_checkpoint, random_inputs, Checkpoint, RandomSpec, SplitMix64};
use taskpath_pack::{pack, pack_delta, PackOptions};
use taskpath_runtime::{AlignedArena, Error, Model, Session};

fn spec() -> RandomSpec {
    let mut s = RandomSpec::reference();
    s.d_model = 32;
    s.ffn_hidden = 32;
    s.rank = 8;
    s
}

fn outputs(model: &Model<'_>, ck: &Checkpoint, task: &str, n: usize) -> Vec<Vec<f32>> {
    let t = model.task_index(task).unwrap();
    let info = model.task(t).unwrap();
    let ct = ck.config.tasks.iter().position(|x| x.name == task).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(model, t, arena.as_mut_slice()).unwrap();
    let mut rng = SplitMix64::new(99);
    (0..n)
        .map(|_| {
            let x = random_inputs(&ck.config, ct, &mut rng);
            let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![0f32; info.outputs];
            s.run(&refs, &mut out).unwrap();
            out
        })
        .collect()
}

struct Chain {
    full: Checkpoint,
    base: AlignedArena,
    d1: AlignedArena,
    d2: AlignedArena,
}

fn chain(seed: u64) -> Chain {
    let full = random_checkpoint(&spec(), seed);
    let s0 = full.stage_prefix(0).unwrap();
    let s1 = full.stage_prefix(1).unwrap();
    let opts = PackOptions::default();
    let base = AlignedArena::from_bytes(&pack(&s0, &opts).unwrap());
    let m0 = Model::from_bytes(base.as_slice()).unwrap();
    let d1 = AlignedArena::from_bytes(&pack_delta(&s1, &m0, &opts).unwrap());
    let m1 = m0.with_delta(d1.as_slice()).unwrap();
    let d2 = AlignedArena::from_bytes(&pack_delta(&full, &m1, &opts).unwrap());
    Chain { full, base, d1, d2 }
}

#[test]
fn earlier_tasks_are_bit_identical_after_two_deltas_and_the_chain_equals_the_full_package() {
    let c = chain(1);
    let base = Model::from_bytes(c.base.as_slice()).unwrap();
    let chained = base
        .with_delta(c.d1.as_slice())
        .unwrap()
        .with_delta(c.d2.as_slice())
        .unwrap();
    assert_eq!(base.task_count(), 2);
    assert_eq!(chained.task_count(), 5);
    let full_bytes = AlignedArena::from_bytes(&pack(&c.full, &PackOptions::default()).unwrap());
    let full = Model::from_bytes(full_bytes.as_slice()).unwrap();
    for task in ["DIGIT-10", "WDBC"] {
        let alone = outputs(&base, &c.full, task, 64);
        assert_eq!(
            alone,
            outputs(&chained, &c.full, task, 64),
            "{task} changed after deltas"
        );
        assert_eq!(
            alone,
            outputs(&full, &c.full, task, 64),
            "{task} differs from the full package"
        );
    }
    for task in ["DIGIT-PARITY", "DIAB", "GSE-MET"] {
        assert_eq!(
            outputs(&chained, &c.full, task, 32),
            outputs(&full, &c.full, task, 32),
            "{task}"
        );
    }
    // A delta holds only what its stage adds: stage-1 components, router heads
    // of stage 1 (and of the modalities it brings), the new trunks and heads.
    let d1 = chained.part(1).unwrap();
    for b in d1.blobs().iter() {
        use taskpath_format::records::blob_kind;
        match b.kind {
            blob_kind::EXPERT => assert_eq!(b.component, 1),
            blob_kind::SHARED => assert!(b.owner >= 5, "trunk of base modality {}", b.owner),
            blob_kind::ROUTER => assert!(b.component == 1 || b.owner >= 5),
            _ => assert!(b.owner == 2 || b.owner == 3),
        }
    }
    let (lb, l1, lf) = (
        c.base.as_slice().len(),
        c.d1.as_slice().len(),
        full_bytes.as_slice().len(),
    );
    assert!(l1 < lf - lb, "delta 1 is {l1} bytes; full {lf} - base {lb}");
    chained.verify().unwrap();
}

#[test]
fn wrong_base_and_wrong_order_are_refused() {
    let a = chain(1);
    let b = chain(2);
    let base_a = Model::from_bytes(a.base.as_slice()).unwrap();
    let base_b = Model::from_bytes(b.base.as_slice()).unwrap();
    // A delta on another base.
    let e = base_b.with_delta(a.d1.as_slice()).unwrap_err();
    assert!(matches!(e, Error::DeltaMismatch { .. }), "{e}");
    assert!(e.to_string().contains("base"), "{e}");
    // Out of order: stage 3 straight onto stage 1, and the same delta twice.
    assert!(matches!(
        base_a.with_delta(a.d2.as_slice()),
        Err(Error::DeltaMismatch { .. })
    ));
    let m1 = base_a.with_delta(a.d1.as_slice()).unwrap();
    assert!(matches!(
        m1.with_delta(a.d1.as_slice()),
        Err(Error::DeltaMismatch { .. })
    ));
    // A delta alone, or a base used as a delta.
    assert!(matches!(
        Model::from_bytes(a.d1.as_slice()),
        Err(Error::DeltaMismatch { .. })
    ));
    assert!(matches!(
        base_a.with_delta(b.base.as_slice()),
        Err(Error::DeltaMismatch { .. })
    ));
    // The packer refuses to build a delta for a base whose weights differ.
    let e = pack_delta(
        &a.full.stage_prefix(1).unwrap(),
        &base_b,
        &PackOptions::default(),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("differs from the checkpoint"),
        "{e:#}"
    );
    // And a checkpoint that adds nothing.
    let e = pack_delta(
        &a.full.stage_prefix(0).unwrap(),
        &base_a,
        &PackOptions::default(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("nothing to add"), "{e:#}");
}

#[test]
fn checkpoint_shapes_that_disagree_with_model_json_are_named() {
    let mut ck = random_checkpoint(&spec(), 3);
    let t = ck.tensors.get_mut("blk.demo.attn.q.w").unwrap();
    t.shape = vec![16, 64];
    let e = ck.validate().unwrap_err().to_string();
    assert!(
        e.contains("blk.demo.attn.q.w") && e.contains("[16, 64]"),
        "{e}"
    );
    let mut ck = random_checkpoint(&spec(), 3);
    ck.tensors.remove("expert.2.1.fc1.b");
    let e = ck.validate().unwrap_err().to_string();
    assert!(e.contains("missing tensor expert.2.1.fc1.b"), "{e}");
}
