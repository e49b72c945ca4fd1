//! Shared by the NPU tests: the bundled reference model packed in memory, and
//! its test sets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use taskpath_checkpoint::{Checkpoint, Dataset};
use taskpath_cpu::quant::WeightFormat;
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The bundled trained checkpoint (stage 3, all five tasks).
pub fn checkpoint() -> Checkpoint {
    Checkpoint::load(&root().join("models/reference/stage3")).expect("bundled checkpoint")
}

/// Packs `ck` with `quant` experts and, when `narrow`, a two-or-three-expert
/// path per (task, modality) so that routing is restricted by the path.
pub fn package(ck: &Checkpoint, quant: Option<WeightFormat>, narrow: bool) -> AlignedArena {
    let mut masks = BTreeMap::new();
    if narrow {
        for (t, task) in ck.config.tasks.iter().enumerate() {
            for (i, m) in ck.config.task_modalities(task).into_iter().enumerate() {
                let mask = [0b00111u64, 0b11010, 0b01101][(t + i) % 3];
                masks.insert((t, m), mask);
            }
        }
    }
    let opts = PackOptions {
        quant,
        masks,
        ..PackOptions::default()
    };
    AlignedArena::from_bytes(&pack(ck, &opts).expect("pack"))
}

/// The test set of task `name`.
pub fn test_set(name: &str) -> Dataset {
    Dataset::load(&root().join(format!("models/reference/data/{name}.test.json")))
        .expect("test set")
}

/// The CPU session's logits for every sample of `ds`.
pub fn session_outputs(model: &Model<'_>, task: usize, ds: &Dataset) -> Vec<Vec<f32>> {
    let info = model.task(task).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(model, task, arena.as_mut_slice()).unwrap();
    ds.samples
        .iter()
        .map(|x| {
            let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
            let mut out = vec![0f32; info.outputs];
            s.run(&refs, &mut out).unwrap();
            out
        })
        .collect()
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}
