//! Mixed precision under a byte budget: per expert component, measure how
//! much the model's outputs move when that component alone is stored in a
//! lower format (on calibration inputs, so each expert is judged on the
//! tokens it is actually routed), then lower the cheapest-per-byte components
//! first until the expert blobs fit the budget.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use taskpath_checkpoint::Checkpoint;
use taskpath_cpu::quant::WeightFormat;
use taskpath_runtime::{AlignedArena, Model, Session, SessionOptions};

use crate::{pack, PackOptions};

/// The precision ladder, highest first.
pub const LADDER: [WeightFormat; 5] = [
    WeightFormat::F32,
    WeightFormat::F16,
    WeightFormat::I8Row,
    WeightFormat::I4G32,
    WeightFormat::I2G32Z,
];

/// Sensitivity of one expert component at one format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensitivity {
    /// `(expert, component)`.
    pub component: (usize, usize),
    /// The format tried.
    pub format: WeightFormat,
    /// Mean squared logit change over the calibration inputs, relative to the
    /// mean squared f32 logit.
    pub loss: f64,
    /// Bytes of the component's blob in that format.
    pub bytes: usize,
}

/// The chosen formats, their measured sensitivities and the resulting bytes.
#[derive(Clone, Debug)]
pub struct MixedPlan {
    /// Format per `(expert, component)`.
    pub formats: BTreeMap<(usize, usize), WeightFormat>,
    /// Every measurement.
    pub table: Vec<Sensitivity>,
    /// Expert bytes of the plan.
    pub bytes: usize,
    /// Expert bytes at f32.
    pub f32_bytes: usize,
}

/// Runs every task over its calibration samples; returns all logits.
/// Bytes per `(expert, component)` blob.
type Sizes = BTreeMap<(usize, usize), usize>;

fn logits(
    ck: &Checkpoint,
    opts: &PackOptions,
    inputs: &[Vec<Vec<Vec<f32>>>],
) -> Result<(Vec<f32>, Sizes)> {
    let bytes = AlignedArena::from_bytes(&pack(ck, opts)?);
    let model = Model::from_bytes(bytes.as_slice())?;
    let sizes: Sizes = model
        .expert_blobs()
        .map(|b| {
            (
                (usize::from(b.rec.expert), usize::from(b.rec.component)),
                b.bytes.len(),
            )
        })
        .collect();
    let mut out = Vec::new();
    for (t, samples) in inputs.iter().enumerate() {
        let info = model.task(t)?;
        let mut arena = AlignedArena::new(info.arena_bytes);
        let so = SessionOptions {
            verify_path: false,
            ..Default::default()
        };
        let mut s = Session::with_options(&model, t, arena.as_mut_slice(), so)?;
        let mut y = vec![0f32; info.outputs];
        for x in samples {
            let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
            s.run(&refs, &mut y)?;
            out.extend_from_slice(&y);
        }
    }
    Ok((out, sizes))
}

/// Bytes of the expert blobs when every expert is f32.
pub fn f32_expert_bytes(ck: &Checkpoint, base: &PackOptions) -> Result<usize> {
    let mut opts = base.clone();
    opts.quant = None;
    opts.expert_formats.clear();
    Ok(logits(ck, &opts, &[])?.1.values().sum())
}

/// Measures every component at every lower format and picks formats whose
/// expert bytes fit `budget`, with the least summed measured loss (greedy by
/// loss per byte saved).
pub fn plan_mixed(
    ck: &Checkpoint,
    base: &PackOptions,
    inputs: &[Vec<Vec<Vec<f32>>>],
    budget: usize,
) -> Result<MixedPlan> {
    let (reference, f32_sizes) = logits(ck, base, inputs)?;
    let norm = reference
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .max(1e-30);
    let f32_bytes: usize = f32_sizes.values().sum();
    let mut table = Vec::new();
    let bar = indicatif::ProgressBar::new((f32_sizes.len() * (LADDER.len() - 1)) as u64)
        .with_message("sensitivity");
    for &comp in f32_sizes.keys() {
        table.push(Sensitivity {
            component: comp,
            format: WeightFormat::F32,
            loss: 0.0,
            bytes: f32_sizes[&comp],
        });
        for &fmt in &LADDER[1..] {
            let mut opts = base.clone();
            opts.expert_formats.insert(comp, fmt);
            let (y, sizes) = logits(ck, &opts, inputs)?;
            let loss = y
                .iter()
                .zip(&reference)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                / norm;
            table.push(Sensitivity {
                component: comp,
                format: fmt,
                loss,
                bytes: sizes[&comp],
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let at = |comp: (usize, usize), level: usize| {
        table
            .iter()
            .find(|s| s.component == comp && s.format == LADDER[level])
            .expect("measured")
    };
    let mut level: BTreeMap<(usize, usize), usize> = f32_sizes.keys().map(|&c| (c, 0)).collect();
    let mut bytes = f32_bytes;
    while bytes > budget {
        // The step (one component one rung down) with the least loss per byte saved.
        let step = level
            .iter()
            .filter(|(_, &l)| l + 1 < LADDER.len())
            .map(|(&c, &l)| {
                let (now, next) = (at(c, l), at(c, l + 1));
                let saved = now.bytes.saturating_sub(next.bytes).max(1) as f64;
                ((next.loss - now.loss).max(0.0) / saved, c)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some((_, c)) = step else {
            bail!(
                "budget {budget} bytes is below the expert bytes at the lowest precision ({bytes})"
            );
        };
        let l = level[&c];
        bytes = bytes - at(c, l).bytes + at(c, l + 1).bytes;
        level.insert(c, l + 1);
    }
    Ok(MixedPlan {
        formats: level.into_iter().map(|(c, l)| (c, LADDER[l])).collect(),
        table,
        bytes,
        f32_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};

    #[test]
    fn plan_fits_the_budget_prefers_insensitive_components_and_refuses_the_impossible() {
        let ck = random_checkpoint(&RandomSpec::small(32, 2, 4, 2, 2), 6);
        let mut rng = SplitMix64::new(1);
        let inputs: Vec<Vec<Vec<Vec<f32>>>> = (0..ck.config.tasks.len())
            .map(|t| {
                (0..6)
                    .map(|_| random_inputs(&ck.config, t, &mut rng))
                    .collect()
            })
            .collect();
        let base = PackOptions::default();
        let total = f32_expert_bytes(&ck, &base).unwrap();
        let plan = plan_mixed(&ck, &base, &inputs, total / 2).unwrap();
        assert_eq!(plan.f32_bytes, total);
        assert!(plan.bytes <= total / 2, "{} > {}", plan.bytes, total / 2);
        // Every measured format is smaller than f32 and f32 costs nothing.
        for s in &plan.table {
            let f32 = plan
                .table
                .iter()
                .find(|x| x.component == s.component && x.format == WeightFormat::F32)
                .unwrap();
            assert!(s.format == WeightFormat::F32 || s.bytes < f32.bytes);
            assert!(s.loss >= 0.0);
        }
        // Packing the plan gives exactly the planned expert bytes.
        let mut opts = base.clone();
        opts.expert_formats = plan.formats.clone();
        let bytes = taskpath_runtime::AlignedArena::from_bytes(&pack(&ck, &opts).unwrap());
        let model = Model::from_bytes(bytes.as_slice()).unwrap();
        assert_eq!(model.expert_bytes(), plan.bytes);
        assert!(plan_mixed(&ck, &base, &inputs, 16).is_err());
    }
}
