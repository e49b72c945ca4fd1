//! The bundled trained model (models/reference, trained with candle by
//! taskpath-flame): the runtime agrees with candle on every test sample, and
//! the continual stages shipped as delta packs leave earlier tasks bit-identical.

use std::path::{Path, PathBuf};

use taskpath_checkpoint::{Checkpoint, Dataset};
use taskpath_pack::{pack, pack_delta, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference")
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

/// Runtime outputs of `task` over its test set.
fn run_test_set(model: &Model<'_>, task: &str) -> (Dataset, Vec<Vec<f32>>) {
    let ds = Dataset::load(&root().join(format!("data/{task}.test.json"))).unwrap();
    let t = model.task_index(task).unwrap();
    let info = model.task(t).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(model, t, arena.as_mut_slice()).unwrap();
    let outs = ds
        .samples
        .iter()
        .map(|x| {
            let refs: Vec<&[f32]> = x.inputs.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![0f32; info.outputs];
            s.run(&refs, &mut out).unwrap();
            out
        })
        .collect();
    (ds, outs)
}

/// Largest |a - b| / max(1, |b|), and the share of equal argmax.
fn compare(ours: &[Vec<f32>], ds: &Dataset) -> (f64, f64) {
    let mut worst = 0f64;
    let mut same = 0;
    for (o, s) in ours.iter().zip(&ds.samples) {
        let want = s.logits.as_ref().expect("test sets carry candle's logits");
        for (a, b) in o.iter().zip(want) {
            worst = taskpath_tests::nan_max(
                worst,
                f64::from((a - b).abs()) / f64::from(b.abs()).max(1.0),
            );
        }
        same += usize::from(argmax(o) == argmax(want));
    }
    (worst, same as f64 / ours.len() as f64)
}

#[test]
fn runtime_matches_candle_on_every_test_sample() {
    let ck = Checkpoint::load(&root().join("stage3")).unwrap();
    let bytes = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    for task in &ck.config.tasks {
        let (ds, outs) = run_test_set(&model, &task.name);
        let (err, agree) = compare(&outs, &ds);
        eprintln!(
            "{}: {} samples, max rel err {err:.2e}, predictions agree {agree}",
            task.name,
            outs.len()
        );
        assert!(
            err < 1e-5,
            "{}: max relative error {err:e} vs candle",
            task.name
        );
        assert_eq!(
            agree, 1.0,
            "{}: a prediction differs from candle's",
            task.name
        );
    }
}

#[test]
fn stage_deltas_leave_earlier_tasks_bit_identical() {
    let opts = PackOptions::default();
    let s1 = Checkpoint::load(&root().join("stage1")).unwrap();
    let s2 = Checkpoint::load(&root().join("stage2")).unwrap();
    let s3 = Checkpoint::load(&root().join("stage3")).unwrap();
    let base = AlignedArena::from_bytes(&pack(&s1, &opts).unwrap());
    let m1 = Model::from_bytes(base.as_slice()).unwrap();
    let d2 = AlignedArena::from_bytes(&pack_delta(&s2, &m1, &opts).unwrap());
    let m2 = m1.with_delta(d2.as_slice()).unwrap();
    let d3 = AlignedArena::from_bytes(&pack_delta(&s3, &m2, &opts).unwrap());
    let m3 = m2.with_delta(d3.as_slice()).unwrap();
    m3.verify().unwrap();
    for task in ["DIGIT-10", "WDBC"] {
        let (ds, alone) = run_test_set(&m1, task);
        let (_, after2) = run_test_set(&m2, task);
        let (_, after3) = run_test_set(&m3, task);
        assert_eq!(alone, after2, "{task} changed after the stage-2 delta");
        assert_eq!(alone, after3, "{task} changed after the stage-3 delta");
        // ...and the stage-1 package agrees with candle's logits (which the
        // trainer wrote from the final model: stage-1 tasks never change).
        let (err, agree) = compare(&alone, &ds);
        assert!(err < 1e-5 && agree == 1.0, "{task}: {err:e}, {agree}");
    }
    for task in ["DIGIT-PARITY", "DIAB", "GSE-MET"] {
        let (ds, outs) = run_test_set(&m3, task);
        let (err, agree) = compare(&outs, &ds);
        assert!(
            err < 1e-5 && agree == 1.0,
            "{task} through the delta chain: {err:e}, {agree}"
        );
    }
    eprintln!(
        "package sizes: stage-1 base {} bytes, stage-2 delta {} bytes, stage-3 delta {} bytes",
        base.as_slice().len(),
        d2.as_slice().len(),
        d3.as_slice().len()
    );
}
