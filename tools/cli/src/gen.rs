//! `taskpath gen-random`: a seeded random checkpoint plus random datasets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use taskpath_checkpoint::{
    random_checkpoint, random_inputs, Checkpoint, Dataset, Gating, RandomSpec, Sample, SplitMix64,
};

use crate::util::outln;

/// Model shapes `gen-random` starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The reference model: D=128, 4 heads, 5 experts, top-2, 3 stages, the five bundled tasks.
    Reference,
    /// A small model: two modalities, one task per stage (D=16, 4 experts, top-2, 2 stages).
    Small,
}

/// Router gate function for `--gating`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GatingArg {
    /// `-||p - w||`.
    Laplace,
    /// `w . p`.
    Softmax,
}

/// Arguments of `gen-random`.
#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Output directory (model.json, model.safetensors, data/).
    #[arg(value_name = "OUT_DIR")]
    pub out_dir: PathBuf,
    /// Seed of the weights and inputs; a seed always names the same files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Starting shape; the options below override its fields.
    #[arg(long, value_enum, default_value_t = Shape::Reference)]
    pub shape: Shape,
    /// Model width D (1..=4096).
    #[arg(long = "d", value_name = "D", value_parser = crate::util::within(1..=4096usize))]
    pub d_model: Option<usize>,
    /// Attention heads (must divide D; 1..=256).
    #[arg(long, value_parser = crate::util::within(1..=256usize))]
    pub heads: Option<usize>,
    /// Expert pool size N (1..=64).
    #[arg(long, value_parser = crate::util::within(1..=64usize))]
    pub experts: Option<usize>,
    /// Experts kept per (sample, modality) (1..=64, at most N).
    #[arg(long, value_parser = crate::util::within(1..=64usize))]
    pub top_k: Option<usize>,
    /// Continual stages (the small shape has one task per stage; 1..=255).
    #[arg(long, value_parser = crate::util::within(1..=255usize))]
    pub stages: Option<usize>,
    /// Hidden width of the expert FFN (1..=65536).
    #[arg(long, value_parser = crate::util::within(1..=65_536usize))]
    pub ffn_hidden: Option<usize>,
    /// Rank of low-rank factors (0: every matrix full-rank; at most 4096).
    #[arg(long, value_parser = crate::util::within(0..=4096usize))]
    pub rank: Option<usize>,
    /// Router gate function.
    #[arg(long, value_enum)]
    pub gating: Option<GatingArg>,
    /// Samples per task in `data/{TASK}.train.json` (calibration; 0..=100000).
    #[arg(long, default_value_t = 256, value_parser = crate::util::within(0..=MAX_SAMPLES))]
    pub train_samples: usize,
    /// Samples per task in `data/{TASK}.test.json` (0..=100000).
    #[arg(long, default_value_t = 64, value_parser = crate::util::within(0..=MAX_SAMPLES))]
    pub test_samples: usize,
    /// Also write `OUT_DIR/stage{S}/`: the checkpoint as exported after each
    /// stage S (stages 0..=S, tasks of those stages), for `pack` + `add-task`.
    #[arg(long)]
    pub per_stage: bool,
}

impl GenArgs {
    /// The spec the arguments describe.
    pub fn spec(&self) -> RandomSpec {
        let mut spec = match self.shape {
            Shape::Reference => RandomSpec::reference(),
            Shape::Small => RandomSpec::small(
                self.d_model.unwrap_or(16),
                self.heads.unwrap_or(2),
                self.experts.unwrap_or(4),
                self.top_k.unwrap_or(2),
                self.stages.unwrap_or(2),
            ),
        };
        if let Some(d) = self.d_model {
            spec.d_model = d;
        }
        if let Some(h) = self.heads {
            spec.heads = h;
        }
        if let Some(n) = self.experts {
            spec.experts = n;
        }
        if let Some(k) = self.top_k {
            spec.top_k = k;
        }
        if let Some(s) = self.stages {
            spec.stages = s;
        }
        if let Some(h) = self.ffn_hidden {
            spec.ffn_hidden = h;
        }
        if let Some(r) = self.rank {
            spec.rank = r;
        }
        if let Some(g) = self.gating {
            spec.gating = match g {
                GatingArg::Laplace => Gating::Laplace,
                GatingArg::Softmax => Gating::Softmax,
            };
        }
        spec
    }
}

/// The checkpoint as it was after stage `s` (see [`Checkpoint::stage_prefix`]).
pub fn stage_prefix(ck: &Checkpoint, s: usize) -> Result<Checkpoint> {
    ck.stage_prefix(s)
}

/// Random datasets of every task of `ck` into `dir` (`{TASK}.train.json`,
/// `{TASK}.test.json`), labels unknown.
pub fn write_datasets(
    ck: &Checkpoint,
    dir: &Path,
    seed: u64,
    train: usize,
    test: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let c = &ck.config;
    for (t, task) in c.tasks.iter().enumerate() {
        for (split, n, salt) in [("train", train, 0x7EA1u64), ("test", test, 0x7E57)] {
            let mut rng =
                SplitMix64::new(seed ^ (salt << 32) ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9));
            let ds = Dataset {
                task: task.name.clone(),
                modalities: task.modalities.clone(),
                samples: (0..n)
                    .map(|_| Sample {
                        inputs: random_inputs(c, t, &mut rng),
                        label: None,
                        logits: None,
                    })
                    .collect(),
            };
            ds.save(&dir.join(format!("{}.{split}.json", task.name)))?;
        }
    }
    Ok(())
}

/// Most samples per task and split: each is written as JSON.
pub const MAX_SAMPLES: usize = 100_000;

/// Most parameters a generated checkpoint may have (1 GiB of f32): each
/// option is bounded, but their product is what is allocated.
pub const MAX_PARAMETERS: usize = 1 << 28;

/// Runs `gen-random`.
pub fn main(a: &GenArgs) -> Result<()> {
    let spec = a.spec();
    let config = spec.config();
    config
        .validate()
        .context("the requested shape is not a valid model")?;
    let params = config
        .expected_tensors()
        .into_iter()
        .try_fold(0usize, |sum, (_, shape, _)| {
            shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .and_then(|n| sum.checked_add(n))
        })
        .unwrap_or(usize::MAX);
    crate::util::check_range("the shape's parameter count", params, 0..=MAX_PARAMETERS)
        .context("choose a smaller --d, --ffn-hidden, --experts or --stages")?;
    let ck = random_checkpoint(&spec, a.seed);
    ck.save(&a.out_dir)?;
    let params: usize = ck.tensors.values().map(|t| t.data.len()).sum();
    outln!(
        "wrote {}: D={} heads={} experts={} top_k={} stages={}, {} tasks, {} tensors, {} parameters (seed {})",
        a.out_dir.display(),
        spec.d_model,
        spec.heads,
        spec.experts,
        spec.top_k,
        spec.stages,
        ck.config.tasks.len(),
        ck.tensors.len(),
        params,
        a.seed
    );
    let data = a.out_dir.join("data");
    write_datasets(&ck, &data, a.seed, a.train_samples, a.test_samples)?;
    outln!(
        "wrote {}: {} train and {} test samples per task (random inputs, label null)",
        data.display(),
        a.train_samples,
        a.test_samples
    );
    if a.per_stage {
        for s in 0..spec.stages {
            let dir = a.out_dir.join(format!("stage{s}"));
            let sc = stage_prefix(&ck, s)?;
            sc.save(&dir)?;
            outln!(
                "wrote {}: stages 0..={s}, tasks {}",
                dir.display(),
                sc.config
                    .tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}
