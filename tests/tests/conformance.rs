//! The runtime's f32 outputs against the independent scalar reference
//! (tests/src/reference.rs), for random checkpoints of several shapes.

use taskpath_checkpoint::{
    random_checkpoint, random_inputs, Checkpoint, Gating, RandomSpec, SplitMix64,
};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session};
use taskpath_tests::reference;

/// Largest |runtime - reference| / max(1, |reference|) over all outputs.
fn check(ck: &Checkpoint, samples: usize, seed: u64) -> f64 {
    let bytes = AlignedArena::from_bytes(&pack(ck, &PackOptions::default()).expect("pack"));
    let model = Model::from_bytes(bytes.as_slice()).expect("open");
    let mut rng = SplitMix64::new(seed);
    let mut worst = 0f64;
    for t in 0..ck.config.tasks.len() {
        let info = model.task(t).unwrap();
        assert_eq!(info.name, ck.config.tasks[t].name);
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s = Session::new(&model, t, arena.as_mut_slice()).expect("session");
        for _ in 0..samples {
            let x = random_inputs(&ck.config, t, &mut rng);
            let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![0f32; info.outputs];
            s.run(&refs, &mut out).expect("run");
            let want = reference::forward(ck, t, &x, None).expect("reference");
            for (a, b) in out.iter().zip(&want.logits) {
                let err = (f64::from(*a) - f64::from(*b)).abs() / f64::from(b.abs()).max(1.0);
                worst = taskpath_tests::nan_max(worst, err);
            }
        }
    }
    worst
}

#[test]
fn reference_shape_n5_top2_three_stages() {
    let ck = random_checkpoint(&RandomSpec::reference(), 1);
    let err = check(&ck, 8, 11);
    eprintln!("reference shape: max rel err {err:e}");
    assert!(err < 1e-5, "max relative error {err:e}");
}

#[test]
fn small_two_stages_low_rank_components() {
    let ck = random_checkpoint(&RandomSpec::small(16, 2, 5, 2, 2), 2);
    assert!(
        ck.tensors.keys().any(|k| k.ends_with(".u")),
        "spec must exercise low-rank factors"
    );
    let err = check(&ck, 16, 12);
    assert!(err < 1e-5, "max relative error {err:e}");
}

#[test]
fn wide_pool_top3_softmax_gating_single_stage() {
    let mut spec = RandomSpec::small(32, 4, 16, 3, 1);
    spec.gating = Gating::Softmax;
    let ck = random_checkpoint(&spec, 3);
    let err = check(&ck, 16, 13);
    assert!(err < 1e-5, "max relative error {err:e}");
}

#[test]
fn odd_sizes_one_head_top1() {
    let mut spec = RandomSpec::small(12, 1, 3, 1, 3);
    spec.ffn_hidden = 7;
    spec.rank = 5;
    let ck = random_checkpoint(&spec, 4);
    let err = check(&ck, 16, 14);
    assert!(err < 1e-5, "max relative error {err:e}");
}
