//! Seeded random-weight checkpoints of any shape, for tests and benchmarks.

use std::collections::BTreeMap;

use crate::checkpoint::{
    Checkpoint, Gating, ModalityConfig, ModelConfig, TaskConfig, Tensor, CHECKPOINT_FORMAT,
};

/// SplitMix64: tiny, seedable, and stable across crate versions (unlike `rand`'s
/// generators), so a seed names the same checkpoint forever.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What [`random_checkpoint`] builds.
#[derive(Clone, Debug)]
pub struct RandomSpec {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Expert pool size.
    pub experts: usize,
    /// Experts per (sample, modality).
    pub top_k: usize,
    /// FFN hidden width.
    pub ffn_hidden: usize,
    /// Stages.
    pub stages: usize,
    /// Rank of low-rank factors; 0 stores every matrix full.
    pub rank: usize,
    /// Gate function.
    pub gating: Gating,
    /// `(name, tokens, features)`.
    pub modalities: Vec<(String, usize, usize)>,
    /// `(name, modality names, stage, outputs)`.
    pub tasks: Vec<(String, Vec<String>, usize, usize)>,
}

impl RandomSpec {
    /// The reference tasks and modalities over a 16-expert pool at D=32
    /// (FFN 48, rank 8): wide enough that calibration narrows task paths,
    /// small enough for tests.
    pub fn wide_small() -> Self {
        Self {
            experts: 16,
            d_model: 32,
            ffn_hidden: 48,
            rank: 8,
            ..Self::reference()
        }
    }

    /// The reference model's shape (D=128, 4 heads, N=5, top-2) with the
    /// five bundled tasks' modalities, stages 0..=2 as in DESIGN.md.
    pub fn reference() -> Self {
        let m = |n: &str, l, f| (n.to_string(), l, f);
        let t = |n: &str, ms: &[&str], s, o| {
            (
                n.to_string(),
                ms.iter().map(|x| x.to_string()).collect(),
                s,
                o,
            )
        };
        Self {
            d_model: 128,
            heads: 4,
            experts: 5,
            top_k: 2,
            ffn_hidden: 128,
            stages: 3,
            rank: 32,
            gating: Gating::Laplace,
            modalities: vec![
                m("img_rows", 8, 8),
                m("img_cols", 8, 8),
                m("cell_mean", 1, 10),
                m("cell_se", 1, 10),
                m("cell_worst", 1, 10),
                m("demo", 1, 4),
                m("serum", 1, 6),
                m("clinical", 1, 4),
                m("genes", 4, 19),
            ],
            tasks: vec![
                t("DIGIT-10", &["img_rows", "img_cols"], 0, 10),
                t("WDBC", &["cell_mean", "cell_se", "cell_worst"], 0, 2),
                t("DIGIT-PARITY", &["img_rows"], 1, 2),
                t("DIAB", &["demo", "serum"], 1, 2),
                t("GSE-MET", &["clinical", "genes"], 2, 2),
            ],
        }
    }

    /// A small model: `d` wide, `n` experts, `stages` stages, two modalities and
    /// one task per stage (the last stage's task uses both modalities).
    pub fn small(d: usize, heads: usize, n: usize, k: usize, stages: usize) -> Self {
        let modalities = vec![("a".to_string(), 5, 3), ("b".to_string(), 3, 7)];
        let tasks = (0..stages)
            .map(|s| {
                let ms = if s % 2 == 0 {
                    vec!["a".to_string(), "b".to_string()]
                } else {
                    vec!["b".to_string()]
                };
                (format!("task{s}"), ms, s, 2 + s)
            })
            .collect();
        Self {
            d_model: d,
            heads,
            experts: n,
            top_k: k,
            ffn_hidden: d + d / 2,
            stages,
            rank: if stages > 1 { (d / 4).max(1) } else { 0 },
            gating: Gating::Laplace,
            modalities,
            tasks,
        }
    }

    /// The `model.json` this spec describes.
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            format: CHECKPOINT_FORMAT.to_string(),
            d_model: self.d_model,
            heads: self.heads,
            experts: self.experts,
            top_k: self.top_k,
            ffn_hidden: self.ffn_hidden,
            rank: self.rank,
            stages: self.stages,
            gating: self.gating,
            ln_eps: 1e-5,
            modalities: self
                .modalities
                .iter()
                .map(|(n, l, f)| ModalityConfig {
                    name: n.clone(),
                    tokens: *l,
                    features: *f,
                })
                .collect(),
            tasks: self
                .tasks
                .iter()
                .map(|(n, ms, s, o)| TaskConfig {
                    name: n.clone(),
                    modalities: ms.clone(),
                    stage: *s,
                    outputs: *o,
                })
                .collect(),
        }
    }
}

/// A checkpoint with seeded random weights. With `spec.rank > 0`, expert
/// components after the first (and encoders) are stored as low-rank pairs,
/// as a continual-stage checkpoint would be.
pub fn random_checkpoint(spec: &RandomSpec, seed: u64) -> Checkpoint {
    let config = spec.config();
    let mut rng = SplitMix64::new(seed);
    let mut tensors = BTreeMap::new();
    for (name, shape, lr) in config.expected_tensors() {
        let is_ln_gain = name.ends_with(".g");
        let is_bias = name.ends_with(".b") || name.ends_with(".pos");
        let component = name.split('.').nth(2);
        let low_rank = lr && spec.rank > 0 && (name.starts_with("enc.") || component != Some("0"));
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        let mut fill = |shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let data = (0..n).map(|_| offset + scale * rng.uniform()).collect();
            Tensor::new(shape, data)
        };
        if low_rank {
            let r = spec.rank.min(shape[0]).min(shape[1]).max(1);
            let u = fill(vec![shape[0], r], (3.0 / r as f32).sqrt(), 0.0);
            let v = fill(vec![r, shape[1]], (3.0 / fan_in).sqrt(), 0.0);
            tensors.insert(format!("{name}.u"), u);
            tensors.insert(format!("{name}.v"), v);
        } else if is_ln_gain {
            tensors.insert(name, fill(shape, 0.2, 1.0));
        } else if is_bias {
            tensors.insert(name, fill(shape, 0.1, 0.0));
        } else if name.ends_with(".query") || name.ends_with(".gate") {
            tensors.insert(name, fill(shape, 1.0, 0.0));
        } else {
            tensors.insert(name, fill(shape, (3.0 / fan_in).sqrt(), 0.0));
        }
    }
    let ck = Checkpoint { config, tensors };
    debug_assert!(ck.validate().is_ok());
    ck
}

/// Random task inputs: one `[tokens * features]` vector per task modality.
pub fn random_inputs(config: &ModelConfig, task: usize, rng: &mut SplitMix64) -> Vec<Vec<f32>> {
    config
        .task_modalities(&config.tasks[task])
        .into_iter()
        .map(|m| {
            let mc = &config.modalities[m];
            (0..mc.tokens * mc.features)
                .map(|_| 2.0 * rng.uniform())
                .collect()
        })
        .collect()
}
