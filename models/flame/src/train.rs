//! Building the model stage by stage, multitask training, SVD truncation,
//! evaluation, and the comparison baselines.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Serialize;
use taskpath_checkpoint::{Gating, ModelConfig, TaskConfig, CHECKPOINT_FORMAT};

use crate::data::{self, TaskData, TaskSplit};
use crate::model::{Model, Normal, Param, Params};
use crate::svd;

/// Hyper-parameters of the architecture and of training.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    /// Seed of initialisation and batch order.
    pub seed: u64,
    /// D.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Expert pool size N.
    pub experts: usize,
    /// Experts kept per (sample, modality).
    pub top_k: usize,
    /// Expert FFN width H.
    pub ffn_hidden: usize,
    /// Truncation rank r.
    pub rank: usize,
    /// Router gate function.
    pub gating: Gating,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Samples per optimisation step (all tasks of the stage mixed).
    pub batch: usize,
    /// Epoch limit.
    pub max_epochs: usize,
    /// Early-stopping patience (epochs without a better validation loss).
    pub patience: usize,
    /// Lower bounds on the epoch limit and the patience, in optimiser steps:
    /// a stage of only 139 samples (GSE-MET) makes 3 steps an epoch, so a
    /// limit counted in epochs alone would stop it after a few dozen steps.
    pub min_steps: usize,
    /// Patience lower bound in optimiser steps (see `min_steps`).
    pub patience_steps: usize,
    /// Weight of the router load-balancing loss.
    pub aux_coef: f64,
    /// Epoch limit of the recovery fine-tuning after truncation (0: none).
    pub recover_epochs: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 20261126,
            d_model: 128,
            heads: 4,
            experts: 5,
            top_k: 2,
            ffn_hidden: 128,
            rank: 32,
            gating: Gating::Laplace,
            lr: 1e-3,
            weight_decay: 1e-4,
            batch: 64,
            max_epochs: 60,
            patience: 8,
            min_steps: 1500,
            patience_steps: 200,
            aux_coef: 0.01,
            recover_epochs: 20,
        }
    }
}

impl TrainConfig {
    /// A tiny configuration for tests.
    pub fn tiny() -> Self {
        Self {
            d_model: 16,
            heads: 2,
            experts: 3,
            top_k: 2,
            ffn_hidden: 16,
            rank: 4,
            max_epochs: 2,
            patience: 2,
            min_steps: 0,
            patience_steps: 0,
            batch: 32,
            recover_epochs: 1,
            ..Self::default()
        }
    }

    /// An empty model config (no modalities, tasks or stages yet).
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig {
            format: CHECKPOINT_FORMAT.into(),
            d_model: self.d_model,
            heads: self.heads,
            experts: self.experts,
            top_k: self.top_k,
            ffn_hidden: self.ffn_hidden,
            rank: self.rank,
            stages: 0,
            gating: self.gating,
            ln_eps: 1e-5,
            modalities: vec![],
            tasks: vec![],
        }
    }
}

/// Test metrics of one task.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    /// Task.
    pub task: String,
    /// Plain accuracy.
    pub accuracy: f64,
    /// Mean per-class recall.
    pub balanced_accuracy: f64,
    /// Samples.
    pub n: usize,
}

impl Metrics {
    /// The headline metric: balanced accuracy for the binary clinical tasks whose
    /// classes are skewed or median-split (WDBC, DIAB, GSE-MET), accuracy otherwise.
    pub fn headline(&self) -> f64 {
        if uses_balanced(&self.task) {
            self.balanced_accuracy
        } else {
            self.accuracy
        }
    }
}

/// Whether the task's headline metric is balanced accuracy.
pub fn uses_balanced(task: &str) -> bool {
    matches!(task, "WDBC" | "DIAB" | "GSE-MET")
}

fn normal_for(seed: u64, what: &str) -> Normal {
    // a stable per-parameter-group stream
    let h = what.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    Normal::new(seed ^ h)
}

/// Adds encoder, attention block and router heads `0..heads` of a modality.
pub fn add_modality(params: &mut Params, tc: &TrainConfig, m: &str, heads: usize) -> Result<()> {
    let mc = data::modality_config(m);
    let d = tc.d_model;
    let mut r = normal_for(tc.seed, &format!("modality {m}"));
    let f = mc.features;
    params.insert(
        &format!("enc.{m}.w"),
        &[d, f],
        r.sample(d * f, 1.0 / (f as f32).sqrt()),
        true,
    )?;
    params.insert(&format!("enc.{m}.b"), &[d], vec![0.0; d], true)?;
    params.insert(
        &format!("enc.{m}.pos"),
        &[mc.tokens, d],
        r.sample(mc.tokens * d, 0.2),
        true,
    )?;
    for ln in ["ln0", "ln1", "ln2", "lnf"] {
        params.insert(&format!("blk.{m}.{ln}.g"), &[d], vec![1.0; d], true)?;
        params.insert(&format!("blk.{m}.{ln}.b"), &[d], vec![0.0; d], true)?;
    }
    for p in ["q", "k", "v", "o"] {
        let w = r.sample(d * d, 1.0 / (d as f32).sqrt());
        params.insert(&format!("blk.{m}.attn.{p}.w"), &[d, d], w, true)?;
        params.insert(&format!("blk.{m}.attn.{p}.b"), &[d], vec![0.0; d], true)?;
    }
    for h in 0..heads {
        add_random_router_head(params, tc, m, h, &mut r)?;
    }
    Ok(())
}

fn add_random_router_head(
    params: &mut Params,
    tc: &TrainConfig,
    m: &str,
    h: usize,
    r: &mut Normal,
) -> Result<()> {
    let d = tc.d_model;
    params.insert(
        &format!("router.{m}.{h}.query"),
        &[d],
        r.sample(d, 0.02),
        true,
    )?;
    let gate_std = match tc.gating {
        Gating::Laplace => 1.0,
        Gating::Softmax => 1.0 / (d as f32).sqrt(),
    };
    params.insert(
        &format!("router.{m}.{h}.gate"),
        &[tc.experts, d],
        r.sample(tc.experts * d, gate_std),
        true,
    )
}

/// Adds router head `h` of an existing modality as a copy of head `h - 1` (so the
/// averaged logits start where the previous stage's routing was).
pub fn add_copied_router_head(params: &mut Params, m: &str, h: usize, train: bool) -> Result<()> {
    for p in ["query", "gate"] {
        let prev = params.get(&format!("router.{m}.{}.{p}", h - 1))?;
        let shape = prev.dims().to_vec();
        let vals = prev.flatten_all()?.to_vec1::<f32>()?;
        params.insert(&format!("router.{m}.{h}.{p}"), &shape, vals, train)?;
    }
    Ok(())
}

/// Adds component `c` to every expert slot (full matrices, trainable). With
/// `zero_out` the fc2 weight and bias start at 0, so the component adds nothing.
pub fn add_component(
    params: &mut Params,
    tc: &TrainConfig,
    c: usize,
    zero_out: bool,
) -> Result<()> {
    let (d, h) = (tc.d_model, tc.ffn_hidden);
    for e in 0..tc.experts {
        let p = format!("expert.{e}.{c}");
        let mut r = normal_for(tc.seed, &p);
        let conv = r.sample(d * 3 * d, 1.0 / ((3 * d) as f32).sqrt());
        params.insert(&format!("{p}.conv.w"), &[d, 3 * d], conv, true)?;
        params.insert(&format!("{p}.conv.b"), &[d], vec![0.0; d], true)?;
        params.insert(&format!("{p}.ln.g"), &[d], vec![1.0; d], true)?;
        params.insert(&format!("{p}.ln.b"), &[d], vec![0.0; d], true)?;
        params.insert(
            &format!("{p}.fc1.w"),
            &[h, d],
            r.sample(h * d, 1.0 / (d as f32).sqrt()),
            true,
        )?;
        params.insert(&format!("{p}.fc1.b"), &[h], vec![0.0; h], true)?;
        let fc2 = if zero_out {
            vec![0.0; d * h]
        } else {
            r.sample(d * h, 1.0 / (h as f32).sqrt())
        };
        params.insert(&format!("{p}.fc2.w"), &[d, h], fc2, true)?;
        params.insert(&format!("{p}.fc2.b"), &[d], vec![0.0; d], true)?;
    }
    Ok(())
}

/// Adds a task's head (fusion LayerNorm + linear).
pub fn add_task_head(params: &mut Params, tc: &TrainConfig, t: &TaskConfig) -> Result<()> {
    let z = t.modalities.len() * tc.d_model;
    let n = &t.name;
    let mut r = normal_for(tc.seed, &format!("head {n}"));
    params.insert(&format!("head.{n}.ln.g"), &[z], vec![1.0; z], true)?;
    params.insert(&format!("head.{n}.ln.b"), &[z], vec![0.0; z], true)?;
    let w = r.sample(t.outputs * z, 1.0 / (z as f32).sqrt());
    params.insert(&format!("head.{n}.w"), &[t.outputs, z], w, true)?;
    params.insert(
        &format!("head.{n}.b"),
        &[t.outputs],
        vec![0.0; t.outputs],
        true,
    )?;
    Ok(())
}

/// The checkpoint task entry of a task.
pub fn task_config(t: &TaskData, stage: usize) -> TaskConfig {
    TaskConfig {
        name: t.name.clone(),
        modalities: t.modalities.iter().map(|m| m.name.clone()).collect(),
        stage,
        outputs: t.outputs,
    }
}

/// Inserts the modalities of `tasks` that `cfg` lacks, keeping fusion order.
/// Returns the names of the new ones.
pub fn extend_modalities(cfg: &mut ModelConfig, tasks: &[&TaskData]) -> Vec<String> {
    let mut new = Vec::new();
    for t in tasks {
        for m in &t.modalities {
            if cfg.modality_index(&m.name).is_none() && !new.contains(&m.name) {
                new.push(m.name.clone());
            }
        }
    }
    let mut all: Vec<_> = cfg.modalities.iter().map(|m| m.name.clone()).collect();
    all.extend(new.iter().cloned());
    cfg.modalities = data::MODALITIES
        .iter()
        .filter(|m| all.iter().any(|a| a == m.0))
        .map(|m| data::modality_config(m.0))
        .collect();
    new
}

/// Truncates a full matrix parameter to a rank-r factor pair (`.u`, `.v`),
/// trainable when `train` (recovery fine-tuning), else frozen. When
/// `r >= min(out, in)` the pair would not be smaller and the matrix is already
/// of rank <= r, so the full matrix is kept unchanged. Returns the discarded
/// Frobenius norm (`sqrt` of the sum of the squared tail singular values).
pub fn truncate_param(params: &mut Params, name: &str, r: usize, train: bool) -> Result<f64> {
    let t = params.get(name)?.clone();
    let (m, n) = t.dims2()?;
    if r >= m.min(n) {
        return Ok(0.0);
    }
    let vals = t.flatten_all()?.to_vec1::<f32>()?;
    let lr = svd::truncate(&vals, m, n, r);
    let tail = lr.singular_values[r..]
        .iter()
        .map(|s| s * s)
        .sum::<f64>()
        .sqrt();
    params.map.remove(name);
    params.insert(&format!("{name}.u"), &[m, lr.r], lr.u, train)?;
    params.insert(&format!("{name}.v"), &[lr.r, n], lr.v, train)?;
    Ok(tail)
}

/// Builds the `[b, L*F]` input tensors of the given samples of a split.
pub fn batch_inputs(split: &TaskSplit, task: &TaskData, idx: &[usize]) -> Result<Vec<Tensor>> {
    task.modalities
        .iter()
        .zip(&split.inputs)
        .map(|(m, flat)| {
            let w = m.tokens * m.features;
            let mut v = Vec::with_capacity(idx.len() * w);
            for &i in idx {
                v.extend_from_slice(&flat[i * w..(i + 1) * w]);
            }
            Ok(Tensor::from_vec(v, (idx.len(), w), &Device::Cpu)?)
        })
        .collect()
}

/// Inverse-frequency class weights from the training labels (n / (K n_c)).
pub fn class_weights(task: &TaskData) -> Vec<f32> {
    let mut counts = vec![0usize; task.outputs];
    for &l in &task.train.labels {
        counts[l as usize] += 1;
    }
    let n = task.train.len() as f32;
    counts
        .iter()
        .map(|&c| n / (task.outputs as f32 * c.max(1) as f32))
        .collect()
}

/// Class-weighted cross-entropy: `sum_i w_{y_i} CE_i / sum_i w_{y_i}`.
pub fn weighted_ce(logits: &Tensor, labels: &[u32], weights: &[f32]) -> Result<Tensor> {
    let b = labels.len();
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let lab = Tensor::from_vec(labels.to_vec(), (b, 1), &Device::Cpu)?;
    let picked = lsm.gather(&lab, 1)?.squeeze(1)?;
    let w: Vec<f32> = labels.iter().map(|&l| weights[l as usize]).collect();
    let wsum: f32 = w.iter().sum();
    let w = Tensor::from_vec(w, b, &Device::Cpu)?;
    Ok(((picked * w)?.sum_all()?.neg()? / f64::from(wsum))?)
}

/// Logits of every sample of a split, in batches.
pub fn predict(model: &Model, task: &TaskData, split: &TaskSplit) -> Result<Vec<Vec<f32>>> {
    let tcfg = model.task(&task.name)?.clone();
    let mut out = Vec::with_capacity(split.len());
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(256) {
        let x = batch_inputs(split, task, chunk)?;
        let o = model.forward(&tcfg, &x)?;
        out.extend(o.logits.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Accuracy and balanced accuracy of logits against labels.
pub fn metrics(task: &str, logits: &[Vec<f32>], labels: &[u32], outputs: usize) -> Metrics {
    let mut correct = 0usize;
    let mut per_class = vec![(0usize, 0usize); outputs];
    for (l, &y) in logits.iter().zip(labels) {
        let pred = argmax(l);
        let hit = pred == y as usize;
        correct += usize::from(hit);
        per_class[y as usize].0 += usize::from(hit);
        per_class[y as usize].1 += 1;
    }
    let present: Vec<_> = per_class.iter().filter(|c| c.1 > 0).collect();
    let bal = present.iter().map(|c| c.0 as f64 / c.1 as f64).sum::<f64>() / present.len() as f64;
    Metrics {
        task: task.to_string(),
        accuracy: correct as f64 / labels.len() as f64,
        balanced_accuracy: bal,
        n: labels.len(),
    }
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

/// Test metrics of every task of the model found in `tasks`.
pub fn evaluate(model: &Model, tasks: &[TaskData]) -> Result<Vec<Metrics>> {
    let mut out = Vec::new();
    for tc in &model.cfg.tasks {
        let t = tasks
            .iter()
            .find(|t| t.name == tc.name)
            .with_context(|| format!("no data for task {}", tc.name))?;
        let logits = predict(model, t, &t.test)?;
        out.push(metrics(&t.name, &logits, &t.test.labels, t.outputs));
    }
    Ok(out)
}

/// What training one stage did.
#[derive(Clone, Debug, Serialize)]
pub struct StageLog {
    /// Epochs run.
    pub epochs: usize,
    /// Epoch whose parameters were kept (1-based).
    pub best_epoch: usize,
    /// Its mean validation error (1 - headline metric).
    pub best_val_error: f64,
    /// Its mean validation loss.
    pub best_val_loss: f64,
    /// Trainable scalars.
    pub trainable: usize,
    /// Seconds.
    pub seconds: f64,
}

fn task_loss(
    model: &Model,
    t: &TaskData,
    split: &TaskSplit,
    idx: &[usize],
    weights: &[f32],
) -> Result<(Tensor, Tensor)> {
    let tcfg = model.task(&t.name)?.clone();
    let x = batch_inputs(split, t, idx)?;
    let labels: Vec<u32> = idx.iter().map(|&i| split.labels[i]).collect();
    let o = model.forward(&tcfg, &x)?;
    Ok((weighted_ce(&o.logits, &labels, weights)?, o.aux))
}

/// Validation score of a stage: the mean over its tasks of the validation error
/// (1 - headline metric: balanced accuracy for WDBC, DIAB, GSE-MET, accuracy
/// otherwise) and of the class-weighted validation cross-entropy.
pub fn val_score(model: &Model, tasks: &[&TaskData]) -> Result<(f64, f64)> {
    let (mut err, mut loss) = (0.0, 0.0);
    for t in tasks {
        let w = class_weights(t);
        let logits = predict(model, t, &t.val)?;
        err += 1.0 - metrics(&t.name, &logits, &t.val.labels, t.outputs).headline();
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (l, &y) in logits.iter().zip(&t.val.labels) {
            let mx = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = l.iter().map(|&x| f64::from(x - mx).exp()).sum::<f64>().ln();
            let wy = f64::from(w[y as usize]);
            num += wy * (lse - f64::from(l[y as usize] - mx));
            den += wy;
        }
        loss += num / den;
    }
    let n = tasks.len() as f64;
    Ok((err / n, loss / n))
}

/// Trains the model's trainable parameters on `tasks` jointly: each epoch
/// shuffles all (task, sample) pairs of the stage and cuts them into mixed
/// batches; a batch's loss is the sample-weighted mean of the per-task
/// class-weighted cross-entropies plus `aux_coef` times the mean load-balancing
/// loss. Early stopping keeps the epoch with the lowest mean validation error
/// (ties: lowest mean validation loss), the starting point included.
pub fn train_stage(
    model: &Model,
    tasks: &[&TaskData],
    tc: &TrainConfig,
    stage_seed: u64,
    verbose: bool,
) -> Result<StageLog> {
    let start = Instant::now();
    let vars = model.params.trainable();
    let trainable = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: tc.lr,
            weight_decay: tc.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let weights: Vec<Vec<f32>> = tasks.iter().map(|t| class_weights(t)).collect();
    let mut rng = taskpath_checkpoint::SplitMix64::new(stage_seed);
    // epoch 0 (the starting point) competes too
    let (e0, l0) = val_score(model, tasks)?;
    let mut best = (e0, l0, 0usize);
    if verbose {
        eprintln!("    epoch   0  val error {e0:.4} loss {l0:.4}");
    }
    let mut snap = model.params.snapshot()?;
    let mut epochs = 0;
    let samples: usize = tasks.iter().map(|t| t.train.len()).sum();
    let steps_per_epoch = samples.div_ceil(tc.batch).max(1);
    let max_epochs = tc.max_epochs.max(tc.min_steps.div_ceil(steps_per_epoch));
    let patience = tc.patience.max(tc.patience_steps.div_ceil(steps_per_epoch));
    for epoch in 1..=max_epochs {
        epochs = epoch;
        let mut pairs: Vec<(usize, usize)> = tasks
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| (0..t.train.len()).map(move |i| (ti, i)))
            .collect();
        data::shuffle(&mut pairs, &mut rng);
        let mut train_loss = 0.0;
        let mut steps = 0;
        for chunk in pairs.chunks(tc.batch) {
            let mut loss: Option<Tensor> = None;
            let mut aux: Option<Tensor> = None;
            let mut ntasks = 0;
            for (ti, t) in tasks.iter().enumerate() {
                let idx: Vec<usize> = chunk.iter().filter(|p| p.0 == ti).map(|p| p.1).collect();
                if idx.is_empty() {
                    continue;
                }
                let (l, a) = task_loss(model, t, &t.train, &idx, &weights[ti])?;
                let l = (l * (idx.len() as f64 / chunk.len() as f64))?;
                loss = Some(match loss {
                    None => l,
                    Some(s) => (s + l)?,
                });
                aux = Some(match aux {
                    None => a,
                    Some(s) => (s + a)?,
                });
                ntasks += t.modalities.len();
            }
            let (Some(loss), Some(aux)) = (loss, aux) else {
                continue;
            };
            train_loss += f64::from(loss.to_scalar::<f32>()?);
            steps += 1;
            let total = (loss + (aux * (tc.aux_coef / ntasks as f64))?)?;
            opt.backward_step(&total)?;
        }
        let (ve, vl) = val_score(model, tasks)?;
        if verbose {
            eprintln!(
                "    epoch {epoch:3}  train {:.4}  val error {ve:.4} loss {vl:.4}  ({:.1}s)",
                train_loss / steps.max(1) as f64,
                start.elapsed().as_secs_f64()
            );
        }
        // lower validation error first, validation loss breaks ties
        let better = ve < best.0 - 1e-9 || (ve <= best.0 + 1e-9 && vl < best.1 - 1e-5);
        if better {
            best = (ve, vl, epoch);
            snap = model.params.snapshot()?;
        } else if epoch - best.2 >= patience {
            break;
        }
    }
    model.params.restore(&snap)?;
    Ok(StageLog {
        epochs,
        best_epoch: best.2,
        best_val_error: best.0,
        best_val_loss: best.1,
        trainable,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Stage-specific seed.
pub fn stage_seed(seed: u64, stage: usize) -> u64 {
    seed.wrapping_mul(6364136223846793005)
        .wrapping_add(stage as u64 + 1)
}

/// Grows `model` by one continual stage for `tasks` (all of stage `s`): new
/// modalities (encoder, block, router heads `0..=s`), router head `s` of the
/// existing modalities, component `s` of every expert (fc2 zero when `s > 0`),
/// the tasks' heads. Everything already in the model must be frozen.
pub fn grow_stage(
    model: &mut Model,
    tasks: &[&TaskData],
    tc: &TrainConfig,
    s: usize,
) -> Result<()> {
    let old: Vec<String> = model
        .cfg
        .modalities
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let new = extend_modalities(&mut model.cfg, tasks);
    model.cfg.stages = s + 1;
    for m in &new {
        add_modality(&mut model.params, tc, m, s + 1)?;
    }
    for m in &old {
        let used = tasks
            .iter()
            .any(|t| t.modalities.iter().any(|x| &x.name == m));
        add_copied_router_head(&mut model.params, m, s, used)?;
    }
    add_component(&mut model.params, tc, s, s > 0)?;
    for t in tasks {
        let cfg = task_config(t, s);
        add_task_head(&mut model.params, tc, &cfg)?;
        model.cfg.tasks.push(cfg);
    }
    Ok(())
}

/// After a stage: truncate component `s` of every expert (conv as D x 3D, fc1,
/// fc2) and the encoders of the modalities new in this stage to rank `r`; the
/// factors stay trainable when `train`. Returns the largest relative discarded
/// Frobenius norm.
pub fn truncate_stage(
    model: &mut Model,
    tc: &TrainConfig,
    s: usize,
    new_modalities: &[String],
    train: bool,
) -> Result<f64> {
    let mut worst = 0f64;
    for e in 0..tc.experts {
        for w in ["conv", "fc1", "fc2"] {
            let name = format!("expert.{e}.{s}.{w}.w");
            let norm = frob(model.params.get(&name)?)?;
            let tail = truncate_param(&mut model.params, &name, tc.rank, train)?;
            if norm > 0.0 {
                worst = worst.max(tail / norm);
            }
        }
    }
    for m in new_modalities {
        truncate_param(&mut model.params, &format!("enc.{m}.w"), tc.rank, train)?;
    }
    Ok(worst)
}

fn frob(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt())
}

/// How much a task's test outputs moved since the end of its own stage.
#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    /// Task.
    pub task: String,
    /// Largest absolute change of a test logit.
    pub max_abs_logit_change: f64,
    /// Fraction of test samples whose predicted class changed.
    pub changed_predictions: f64,
}

/// Drift of every task in `reference` (logits recorded after its own stage).
pub fn drift(
    model: &Model,
    tasks: &[TaskData],
    reference: &std::collections::BTreeMap<String, Vec<Vec<f32>>>,
) -> Result<Vec<Drift>> {
    let mut out = Vec::new();
    for t in tasks {
        let Some(r) = reference.get(&t.name) else {
            continue;
        };
        let now = predict(model, t, &t.test)?;
        let mut max = 0f64;
        let mut changed = 0usize;
        for (a, b) in r.iter().zip(&now) {
            for (x, y) in a.iter().zip(b) {
                max = max.max(f64::from((x - y).abs()));
            }
            changed += usize::from(argmax(a) != argmax(b));
        }
        out.push(Drift {
            task: t.name.clone(),
            max_abs_logit_change: max,
            changed_predictions: changed as f64 / now.len().max(1) as f64,
        });
    }
    Ok(out)
}

/// Per-stage record of the continual run.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    /// 1-based stage.
    pub stage: usize,
    /// Tasks trained in the stage.
    pub tasks: Vec<String>,
    /// Training log.
    pub log: StageLog,
    /// Test metrics of the stage's tasks before truncation.
    pub before_truncation: Vec<Metrics>,
    /// Test metrics of the stage's tasks right after truncation.
    pub truncated: Vec<Metrics>,
    /// The recovery fine-tuning of the truncated stage.
    pub recovery: Option<StageLog>,
    /// Largest relative Frobenius error of a truncated expert matrix.
    pub max_truncation_error: f64,
    /// Test metrics of every task so far, from the exported weights.
    pub after: Vec<Metrics>,
    /// Output drift of the tasks of earlier stages (exactly 0 by construction).
    pub drift: Vec<Drift>,
}

/// Runs the continual stages. `on_stage` gets each stage's frozen, truncated model.
pub fn train_continual(
    tasks: &[TaskData],
    tc: &TrainConfig,
    verbose: bool,
    mut on_stage: impl FnMut(usize, &Model) -> Result<()>,
) -> Result<(Model, Vec<StageReport>)> {
    let mut model = Model {
        cfg: tc.model_config(),
        params: Params::default(),
    };
    let nstages = tasks.iter().map(|t| t.stage).max().unwrap_or(0) + 1;
    let mut reports = Vec::new();
    let mut reference = std::collections::BTreeMap::new();
    for s in 0..nstages {
        let st: Vec<&TaskData> = tasks.iter().filter(|t| t.stage == s).collect();
        let before: Vec<String> = model
            .cfg
            .modalities
            .iter()
            .map(|m| m.name.clone())
            .collect();
        grow_stage(&mut model, &st, tc, s)?;
        let new: Vec<String> = model
            .cfg
            .modalities
            .iter()
            .map(|m| m.name.clone())
            .filter(|m| !before.contains(m))
            .collect();
        if verbose {
            eprintln!(
                "stage {} ({}): {} trainable parameters",
                s + 1,
                st.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                model
                    .params
                    .trainable()
                    .iter()
                    .map(|v| v.elem_count())
                    .sum::<usize>()
            );
        }
        let log = train_stage(&model, &st, tc, stage_seed(tc.seed, s), verbose)?;
        let test_of = |model: &Model| -> Result<Vec<Metrics>> {
            st.iter()
                .map(|t| {
                    let l = predict(model, t, &t.test)?;
                    Ok(metrics(&t.name, &l, &t.test.labels, t.outputs))
                })
                .collect()
        };
        let before_trunc = test_of(&model)?;
        let recover = tc.recover_epochs > 0;
        let err = truncate_stage(&mut model, tc, s, &new, recover)?;
        let truncated = test_of(&model)?;
        let recovery = if recover {
            if verbose {
                eprintln!("  recovery fine-tuning of the truncated stage");
            }
            let rtc = TrainConfig {
                max_epochs: tc.recover_epochs,
                // the same steps-to-epochs scaling as the stage's own limit
                min_steps: tc.min_steps * tc.recover_epochs / tc.max_epochs.max(1),
                ..tc.clone()
            };
            Some(train_stage(
                &model,
                &st,
                &rtc,
                stage_seed(tc.seed, 50 + s),
                verbose,
            )?)
        } else {
            None
        };
        model.params.freeze_all();
        // evaluate what is exported: the model rebuilt from its checkpoint
        let exported = Model::from_checkpoint(&model.to_checkpoint()?)?;
        let after = evaluate(&exported, tasks)?;
        let drift = drift(&exported, tasks, &reference)?;
        for t in &st {
            reference.insert(t.name.clone(), predict(&exported, t, &t.test)?);
        }
        on_stage(s, &exported)?;
        reports.push(StageReport {
            stage: s + 1,
            tasks: st.iter().map(|t| t.name.clone()).collect(),
            log,
            before_truncation: before_trunc,
            truncated,
            recovery,
            max_truncation_error: err,
            after,
            drift,
        });
    }
    Ok((model, reports))
}

/// Baseline (b): all tasks in one stage, full-rank, jointly.
pub fn train_joint(
    tasks: &[TaskData],
    tc: &TrainConfig,
    verbose: bool,
) -> Result<(Model, StageLog)> {
    let mut model = Model {
        cfg: tc.model_config(),
        params: Params::default(),
    };
    let all: Vec<&TaskData> = tasks.iter().collect();
    extend_modalities(&mut model.cfg, &all);
    model.cfg.stages = 1;
    for m in model.cfg.modalities.clone() {
        add_modality(&mut model.params, tc, &m.name, 1)?;
    }
    add_component(&mut model.params, tc, 0, false)?;
    for t in &all {
        let cfg = task_config(t, 0);
        add_task_head(&mut model.params, tc, &cfg)?;
        model.cfg.tasks.push(cfg);
    }
    let log = train_stage(&model, &all, tc, stage_seed(tc.seed, 100), verbose)?;
    model.params.freeze_all();
    Ok((model, log))
}

/// One stage of the naive sequential baseline.
#[derive(Clone, Debug, Serialize)]
pub struct NaiveStage {
    /// Training log.
    pub log: StageLog,
    /// Test metrics of every task seen so far.
    pub test: Vec<Metrics>,
    /// Output drift of the tasks of earlier stages.
    pub drift: Vec<Drift>,
}

/// Baseline (c): naive sequential fine-tuning. One component and one router
/// head; at each stage the new modalities and heads are added and the whole
/// model (everything shared) is trained on the new tasks only. Returns the test
/// metrics of every task seen so far after each stage.
pub fn train_naive(tasks: &[TaskData], tc: &TrainConfig, verbose: bool) -> Result<Vec<NaiveStage>> {
    let mut reference = std::collections::BTreeMap::new();
    let mut model = Model {
        cfg: tc.model_config(),
        params: Params::default(),
    };
    model.cfg.stages = 1;
    let nstages = tasks.iter().map(|t| t.stage).max().unwrap_or(0) + 1;
    let mut out = Vec::new();
    for s in 0..nstages {
        let st: Vec<&TaskData> = tasks.iter().filter(|t| t.stage == s).collect();
        // everything trainable again
        for p in model.params.map.values_mut() {
            if let Param::Fixed(t) = p {
                *p = Param::Train(candle_core::Var::from_tensor(t)?);
            }
        }
        for m in extend_modalities(&mut model.cfg, &st) {
            add_modality(&mut model.params, tc, &m, 1)?;
        }
        if s == 0 {
            add_component(&mut model.params, tc, 0, false)?;
        }
        for t in &st {
            let cfg = task_config(t, 0);
            add_task_head(&mut model.params, tc, &cfg)?;
            model.cfg.tasks.push(cfg);
        }
        // The batch order of the continual model's stage s: stage 1 is then the
        // very model the continual run trains before truncating, so the two
        // methods differ only in what they do from stage 2 on.
        let log = train_stage(&model, &st, tc, stage_seed(tc.seed, s), verbose)?;
        model.params.freeze_all();
        let d = drift(&model, tasks, &reference)?;
        for t in &st {
            reference.insert(t.name.clone(), predict(&model, t, &t.test)?);
        }
        out.push(NaiveStage {
            log,
            test: evaluate(&model, tasks)?,
            drift: d,
        });
    }
    Ok(out)
}

/// Baseline (d): one dense model per task (a single expert, no routing, FFN
/// width `hidden`), trained on that task alone.
pub fn train_dense(
    task: &TaskData,
    tc: &TrainConfig,
    hidden: usize,
    verbose: bool,
) -> Result<(Model, StageLog, Metrics)> {
    let dtc = TrainConfig {
        experts: 1,
        top_k: 1,
        ffn_hidden: hidden,
        ..tc.clone()
    };
    let mut model = Model {
        cfg: dtc.model_config(),
        params: Params::default(),
    };
    extend_modalities(&mut model.cfg, &[task]);
    model.cfg.stages = 1;
    for m in model.cfg.modalities.clone() {
        add_modality(&mut model.params, &dtc, &m.name, 1)?;
    }
    add_component(&mut model.params, &dtc, 0, false)?;
    let cfg = task_config(task, 0);
    add_task_head(&mut model.params, &dtc, &cfg)?;
    model.cfg.tasks.push(cfg);
    let log = train_stage(&model, &[task], &dtc, stage_seed(tc.seed, 300), verbose)?;
    model.params.freeze_all();
    let m = evaluate(&model, std::slice::from_ref(task))?.remove(0);
    Ok((model, log, m))
}
