//! Mixed precision under a byte budget: per expert component, measure how
//! much the model's outputs move when that component alone is stored in a
//! lower format (on calibration inputs, so each expert is judged on the
//! tokens it is actually routed), then lower the cheapest-per-byte components
//! first until the expert blobs fit the budget. [`plan_mixed`] does it for
//! FLAME's expert components, [`plan_mixed_llm`] for a language model's
//! `(layer, expert)` blobs on calibration text; both share
//! [`measure_ladder`] and [`choose_formats`].

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use taskpath_checkpoint::Checkpoint;
use taskpath_cpu::quant::WeightFormat;
use taskpath_runtime::{AlignedArena, Model, Session, SessionOptions};

use crate::llm::{pack_llm, LlmPackOptions};
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

/// Bytes per component blob: `(expert, component)` for FLAME, `(layer,
/// expert)` for a language model.
pub type Sizes = BTreeMap<(usize, usize), usize>;

/// Runs every task over its calibration samples; returns all logits.
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
    let table = measure_ladder(&f32_sizes, &mut |comp, fmt| {
        let mut opts = base.clone();
        opts.expert_formats.insert(comp, fmt);
        let (y, sizes) = logits(ck, &opts, inputs)?;
        let loss = y
            .iter()
            .zip(&reference)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / norm;
        Ok((loss, sizes[&comp]))
    })?;
    choose_formats(table, budget)
}

/// Every component of `f32_sizes` at f32 (loss 0) and, through `measure`
/// (the loss and the component's bytes with only it lowered), at every
/// lower rung of [`LADDER`].
pub fn measure_ladder(
    f32_sizes: &Sizes,
    measure: &mut dyn FnMut((usize, usize), WeightFormat) -> Result<(f64, usize)>,
) -> Result<Vec<Sensitivity>> {
    let mut table = Vec::new();
    let bar = indicatif::ProgressBar::new((f32_sizes.len() * (LADDER.len() - 1)) as u64)
        .with_message("sensitivity");
    for (&comp, &bytes) in f32_sizes {
        table.push(Sensitivity {
            component: comp,
            format: WeightFormat::F32,
            loss: 0.0,
            bytes,
        });
        for &fmt in &LADDER[1..] {
            let (loss, bytes) = measure(comp, fmt)?;
            table.push(Sensitivity {
                component: comp,
                format: fmt,
                loss,
                bytes,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(table)
}

/// From a [`measure_ladder`] table, the formats whose expert bytes fit
/// `budget` with the least summed loss: starting from f32, repeatedly move
/// the component whose next rung costs the least loss per byte saved.
pub fn choose_formats(table: Vec<Sensitivity>, budget: usize) -> Result<MixedPlan> {
    let at = |comp: (usize, usize), level: usize| {
        table
            .iter()
            .find(|s| s.component == comp && s.format == LADDER[level])
            .with_context(|| format!("no measurement of {comp:?} at {}", LADDER[level]))
    };
    let mut level: BTreeMap<(usize, usize), usize> = table
        .iter()
        .filter(|s| s.format == WeightFormat::F32)
        .map(|s| (s.component, 0))
        .collect();
    let f32_bytes: usize = table
        .iter()
        .filter(|s| s.format == WeightFormat::F32)
        .map(|s| s.bytes)
        .sum();
    let mut bytes = f32_bytes;
    while bytes > budget {
        // The step (one component one rung down) with the least loss per byte saved.
        let mut best: Option<(f64, (usize, usize))> = None;
        for (&c, &l) in level.iter().filter(|(_, &l)| l + 1 < LADDER.len()) {
            let (now, next) = (at(c, l)?, at(c, l + 1)?);
            let saved = now.bytes.saturating_sub(next.bytes).max(1) as f64;
            let cost = ((next.loss - now.loss).max(0.0) / saved, c);
            if best.is_none_or(|b| cost.0.total_cmp(&b.0).then(cost.1.cmp(&b.1)).is_lt()) {
                best = Some(cost);
            }
        }
        let Some((_, c)) = best else {
            bail!(
                "budget {budget} bytes is below the expert bytes at the lowest precision ({bytes})"
            );
        };
        let l = level[&c];
        bytes = bytes - at(c, l)?.bytes + at(c, l + 1)?.bytes;
        level.insert(c, l + 1);
    }
    Ok(MixedPlan {
        formats: level.into_iter().map(|(c, l)| (c, LADDER[l])).collect(),
        table,
        bytes,
        f32_bytes,
    })
}

/// Mixed precision for a language model: per `(layer, expert)`, the mean
/// KL divergence of the next-token distribution from the all-f32 model's
/// when that expert alone is lowered, measured at the end of every prefill
/// chunk of the calibration `tokens` (per domain, in windows of `window`);
/// then [`choose_formats`] under `budget` expert bytes. The dense matrices
/// keep `base`'s formats.
pub fn plan_mixed_llm(
    ck: &taskpath_import::Checkpoint,
    base: &LlmPackOptions,
    tokens: &[Vec<u32>],
    window: usize,
    budget: usize,
) -> Result<MixedPlan> {
    let mut f32_opts = LlmPackOptions {
        context: window,
        chunk: base.chunk.min(window).min(LLM_CHUNK),
        tasks: Vec::new(),
        stats: None,
        quant: None,
        expert_formats: BTreeMap::new(),
        ..base.clone()
    };
    let (reference, f32_sizes) = llm_logits(ck, &f32_opts, tokens, window)?;
    let vocab = ck.config().vocab_size;
    let reference: Vec<Vec<f64>> = reference.chunks(vocab).map(log_softmax).collect();
    let table = measure_ladder(&f32_sizes, &mut |comp, fmt| {
        f32_opts.expert_formats.clear();
        f32_opts.expert_formats.insert(comp, fmt);
        let (y, sizes) = llm_logits(ck, &f32_opts, tokens, window)?;
        let kl: f64 = y
            .chunks(vocab)
            .zip(&reference)
            .map(|(q, p)| {
                let q = log_softmax(q);
                p.iter()
                    .zip(&q)
                    .map(|(lp, lq)| lp.exp() * (lp - lq))
                    .sum::<f64>()
            })
            .sum();
        Ok((kl / reference.len().max(1) as f64, sizes[&comp]))
    })?;
    choose_formats(table, budget)
}

/// Bytes of a language model's expert blobs when every expert is f32.
pub fn llm_f32_expert_bytes(
    ck: &taskpath_import::Checkpoint,
    base: &LlmPackOptions,
) -> Result<usize> {
    let opts = LlmPackOptions {
        tasks: Vec::new(),
        stats: None,
        quant: None,
        expert_formats: BTreeMap::new(),
        ..base.clone()
    };
    Ok(llm_logits(ck, &opts, &[], 2)?.1.values().sum())
}

/// Tokens per prefill chunk of the sensitivity runs (a logits row each).
const LLM_CHUNK: usize = 16;

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = f64::from(x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let lse = max
        + x.iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln();
    x.iter().map(|&v| f64::from(v) - lse).collect()
}

/// The logits rows of every token sequence and the bytes of each
/// `(layer, expert)` blob of the package `opts` describes.
fn llm_logits(
    ck: &taskpath_import::Checkpoint,
    opts: &LlmPackOptions,
    tokens: &[Vec<u32>],
    window: usize,
) -> Result<(Vec<f32>, Sizes)> {
    let bytes = AlignedArena::from_bytes(&pack_llm(ck, opts)?);
    let model = Model::from_bytes(bytes.as_slice())?;
    let c = ck.config();
    let moe_layers: Vec<usize> = (0..c.num_layers)
        .filter(|&l| !c.is_dense_layer(l))
        .collect();
    let sizes: Sizes = model
        .expert_blobs()
        .filter_map(|b| {
            let layer = *moe_layers.get(usize::from(b.rec.group))?;
            Some(((layer, usize::from(b.rec.expert)), b.bytes.len()))
        })
        .collect();
    let info = model.task(0)?;
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = crate::domains::session(&model, 0, &mut arena)?;
    let mut out = Vec::new();
    for t in tokens {
        out.extend(crate::domains::chunk_logits(&mut s, t, window, opts.chunk)?);
    }
    Ok((out, sizes))
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

    #[test]
    fn language_model_plans_fit_the_budget_and_pack_to_the_planned_bytes() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/llm-tiny/olmoe");
        let ck = taskpath_import::Checkpoint::open(&dir).unwrap();
        let base = LlmPackOptions {
            context: 32,
            chunk: 16,
            ..Default::default()
        };
        let tokens: Vec<Vec<u32>> = vec![(0..48).collect(), (100..148).collect()];
        let total = llm_f32_expert_bytes(&ck, &base).unwrap();
        // 2 layers x 8 experts x 3 matrices of 64 x 96 f32.
        assert_eq!(total, 2 * 8 * 3 * 64 * 96 * 4);
        let plan = plan_mixed_llm(&ck, &base, &tokens, 32, total * 3 / 10).unwrap();
        assert_eq!(plan.f32_bytes, total);
        assert!(plan.bytes <= total * 3 / 10);
        assert_eq!(plan.formats.len(), 16);
        assert!(plan.formats.keys().all(|&(l, e)| l < 2 && e < 8));
        assert!(plan
            .table
            .iter()
            .all(|s| s.loss >= 0.0 && s.loss.is_finite()));
        let opts = LlmPackOptions {
            expert_formats: plan.formats.clone(),
            ..base.clone()
        };
        let bytes = AlignedArena::from_bytes(&pack_llm(&ck, &opts).unwrap());
        let model = Model::from_bytes(bytes.as_slice()).unwrap();
        assert_eq!(model.expert_bytes(), plan.bytes);
        assert!(plan_mixed_llm(&ck, &base, &tokens, 32, 1000).is_err());
    }
}
