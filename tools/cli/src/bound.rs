//! `taskpath bound`: how far each task's latency is from a compute lower
//! bound measured on the same core in the same run (docs/BENCHMARKS.md,
//! "The compute bound").
//!
//! The bound of a task is its FLOPs (2 per multiply-add of its matrix work,
//! as its program computes it: [`task_flops`]) divided by the f32 rate of the
//! runtime's own dense linear primitive on cache-resident operands, the best
//! over the model's shapes. Element-wise work (norms, GELU, softmax, routing)
//! is left out of the FLOPs, so the bound is lower than any real run.
//! Rounds interleave the rate measurement with every task's runs, so slow
//! drift of a shared machine moves both alike.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use taskpath_format::Op;
use taskpath_profile::stats::median;
use taskpath_runtime::{
    AlignedArena, Kernels, Model, Session, SessionOptions, TaskInfo, TensorView, WeightFormat,
};

use crate::profile::load_task_inputs;
use crate::util::{open_model, outln};
use crate::DeltaArgs;

/// Most rounds and runs per round.
pub const MAX_ROUNDS: usize = 10_000;

/// Arguments of `bound`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Directory of `{TASK}.test.json` inputs (or one dataset file).
    #[arg(long, default_value = "models/reference/data", value_name = "DIR")]
    pub inputs: PathBuf,
    /// Tasks (comma-separated); default: every task with inputs.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tasks: Vec<String>,
    /// Rounds; each measures the rate once and runs every task (1..=10000).
    #[arg(long, default_value_t = 21, value_parser = crate::util::within(1..=MAX_ROUNDS))]
    pub rounds: usize,
    /// Timed inferences per task per round (1..=10000).
    #[arg(short = 'n', long, default_value_t = 200, value_parser = crate::util::within(1..=MAX_ROUNDS))]
    pub runs: usize,
    /// Opt-in fast f32 GEMM (FMA kernels, `Kernels::with_fast_f32`) for the
    /// sessions and the rate: not bit-exact (docs/KERNELS.md §7).
    #[arg(long)]
    pub fast_math: bool,
}

/// Multiply-adds of `y = W x` over `rows` rows, as the runtime computes it
/// (a low-rank `W = U V` as two products).
fn linear_macs(w: &TensorView<'_>, rows: usize) -> u64 {
    let per_row = if w.is_low_rank() {
        w.rank * (w.rows + w.cols)
    } else {
        w.rows * w.cols
    };
    (rows * per_row) as u64
}

/// Multiply-adds of one expert component run at token `token` of `tokens`:
/// its conv over the taps the kernel computes (dense f32 skips the
/// padding taps; packed formats multiply them), fc1 and fc2.
fn component_macs(
    model: &Model<'_>,
    group: u32,
    j: usize,
    c: usize,
    token: usize,
    tokens: usize,
) -> Option<u64> {
    let w = taskpath_runtime::plan::expert_views(model, group, j, c)?;
    let d = w.conv_w.rows;
    let taps = if w.conv_w.is_f32() && !w.conv_w.is_low_rank() {
        1 + usize::from(token > 0) + usize::from(token + 1 < tokens)
    } else {
        3
    };
    let conv = if taps == 3 {
        linear_macs(&w.conv_w, 1)
    } else {
        (d * taps * d) as u64
    };
    Some(conv + linear_macs(&w.fc1_w, 1) + linear_macs(&w.fc2_w, 1))
}

/// FLOPs of one run of a fixed-shape task: 2 per multiply-add of its
/// encoders, projections, attention cores, pooling, gates, heads and the
/// experts a route runs. An expert's work is data-dependent, so each route
/// counts its group's `top_k` times the cheapest component its path allows:
/// the count never exceeds what a run computes.
pub fn task_flops(model: &Model<'_>, task: &TaskInfo<'_>) -> Result<u64> {
    let tensor = |id: taskpath_format::TensorId| {
        model
            .tensor(id.0)
            .with_context(|| format!("tensor {} of task {}", id.0, task.name))
    };
    let mut macs = 0u64;
    for op in model.ops(task) {
        macs += match op {
            Op::Encode { w, pos, .. } => {
                let l = tensor(pos)?.rows.max(1);
                linear_macs(&tensor(w)?, l)
            }
            Op::Linear { w, rows, .. } => linear_macs(&tensor(w)?, rows as usize),
            Op::Attention { tokens, width, .. } => {
                let (l, d) = (tokens as u64, width as u64);
                2 * l * l * d
            }
            Op::AttnPool { tokens, query, .. } => 2 * tokens as u64 * tensor(query)?.cols as u64,
            Op::Gate { gate, .. } => {
                let g = tensor(gate)?;
                (g.rows * g.cols) as u64
            }
            Op::Moe {
                group,
                router,
                components,
                token,
                tokens,
                ..
            } => {
                let rec = model.group(group).context("expert group")?;
                let mask = model
                    .path_mask(task, group, router)
                    .context("task path for a Moe op")?;
                let mut per_route = 0u64;
                for c in 0..components as usize {
                    per_route += mask
                        .iter()
                        .filter_map(|j| {
                            component_macs(model, group, j, c, token as usize, tokens as usize)
                        })
                        .min()
                        .context("no expert component on the path")?;
                }
                u64::from(rec.top_k) * per_route
            }
            Op::LayerNorm { .. } | Op::Route { .. } | Op::Copy { .. } => 0,
            other => bail!(
                "task {}: op {} is a token-stream op; `bound` covers fixed-shape tasks \
                 (language models: `bench` against llama.cpp)",
                task.name,
                other.name()
            ),
        };
    }
    Ok(2 * macs)
}

/// Shapes of the rate microbenchmark `(rows, in, out)`: the trunk's
/// projections at 16 and 8 tokens and a square block that fits in L1.
const RATE_SHAPES: [(usize, usize, usize); 3] = [(16, 128, 128), (8, 128, 128), (16, 64, 64)];

/// GFLOP/s of the runtime's dense f32 linear primitive on operands that
/// stay in cache: the best over [`RATE_SHAPES`] of the median of 15 timed
/// blocks of calls.
fn linear_rate(kernels: &Kernels) -> Result<f64> {
    let mut best = 0f64;
    for (rows, n_in, n_out) in RATE_SHAPES {
        let w: Vec<f32> = (0..n_in * n_out)
            .map(|i| ((i % 17) as f32 - 8.0) / 64.0)
            .collect();
        let b = vec![0.5f32; n_out];
        let x: Vec<f32> = (0..rows * n_in)
            .map(|i| ((i % 13) as f32 - 6.0) / 32.0)
            .collect();
        let mut y = vec![0f32; rows * n_out];
        let view = TensorView {
            rows: n_out,
            cols: n_in,
            format: WeightFormat::F32 as u16,
            a: &w,
            b: &[],
            raw_a: &[],
            raw_b: &[],
            rank: 0,
            blob: 0,
        };
        let flops = 2.0 * (rows * n_in * n_out) as f64;
        // About 20 µs per block at tens of GFLOP/s.
        let calls = (4e5 / flops).ceil().max(1.0) as usize;
        let call = |y: &mut [f32]| {
            taskpath_runtime::linear(kernels, &view, &x, Some(&b), rows, &mut [], &mut [], y)
                .context("rate microbenchmark: linear refused its shapes")
        };
        for _ in 0..calls {
            call(&mut y)?;
        }
        let mut rates = Vec::with_capacity(15);
        for _ in 0..15 {
            let t = Instant::now();
            for _ in 0..calls {
                call(&mut y)?;
            }
            rates.push(flops * calls as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        std::hint::black_box(&y);
        best = best.max(median(&rates));
    }
    Ok(best)
}

/// Runs `bound`.
pub fn main(a: &Args) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let kernels = if a.fast_math {
        Kernels::best().with_fast_f32()
    } else {
        Kernels::best()
    };
    let mut work = Vec::new();
    for (info, samples) in load_task_inputs(&model, &a.tasks, &a.inputs)? {
        if samples.is_empty() {
            bail!("task {}: the inputs hold no samples", info.name);
        }
        let flops = task_flops(&model, &info)?;
        let arena = AlignedArena::new(info.arena_bytes);
        work.push((info, samples, flops, arena, Vec::<f64>::new()));
    }
    let mut rates = Vec::with_capacity(a.rounds);
    for _ in 0..a.rounds {
        rates.push(linear_rate(&kernels)?);
        for (info, samples, _, arena, lat) in work.iter_mut() {
            let opts = SessionOptions {
                kernels: Some(kernels),
                ..SessionOptions::default()
            };
            let mut s = Session::with_options(&model, info.index, arena.as_mut_slice(), opts)?;
            let mut out = vec![0f32; info.outputs];
            let refs: Vec<Vec<&[f32]>> = samples
                .iter()
                .map(|x| x.inputs.iter().map(Vec::as_slice).collect())
                .collect();
            for i in 0..a.runs.min(10) {
                s.run(&refs[i % refs.len()], &mut out)?;
            }
            for i in 0..a.runs {
                let t = Instant::now();
                s.run(&refs[i % refs.len()], &mut out)?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let rate = median(&rates);
    let spread = (
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
    outln!(
        "f32 GEMM kernel: {}{}",
        kernels.f32_gemm().name(),
        if a.fast_math { " (--fast-math)" } else { "" }
    );
    outln!(
        "rate: dense f32 linear on cache-resident operands, median of {} rounds: {rate:.1} GFLOP/s \
         (min {:.1}, max {:.1})",
        a.rounds,
        spread.0,
        spread.1
    );
    outln!("| task | MFLOP | bound µs | p50 µs | p90 µs | p50 / bound |");
    outln!("|---|---:|---:|---:|---:|---:|");
    for (info, _, flops, _, lat) in &mut work {
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        let bound = *flops as f64 / (rate * 1e3);
        outln!(
            "| {} | {:.3} | {bound:.1} | {:.1} | {:.1} | {:.2} |",
            info.name,
            *flops as f64 / 1e6,
            p(0.5),
            p(0.9),
            p(0.5) / bound
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpath_checkpoint::Checkpoint;
    use taskpath_pack::{pack, PackOptions};

    /// The exact rewrites remove, per single-token modality, the q and k
    /// projections (2 D^2 multiply-adds), the attention core over one key
    /// (2 D) and one pooling per router head (2 D each): the counted FLOPs
    /// must drop by exactly that, by hand.
    #[test]
    fn flops_drop_by_the_hand_computed_work_of_the_rewrites() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/reference/stage3");
        let ck = Checkpoint::load(&root).unwrap();
        let c = &ck.config;
        let d = c.d_model as u64;
        let packed = |literal| {
            taskpath_runtime::AlignedArena::from_bytes(
                &pack(
                    &ck,
                    &PackOptions {
                        literal,
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        };
        let (lit, rw) = (packed(true), packed(false));
        let (ml, mr) = (
            Model::from_bytes(lit.as_slice()).unwrap(),
            Model::from_bytes(rw.as_slice()).unwrap(),
        );
        let mut rewritten_some = false;
        for t in 0..ml.task_count() {
            let (tl, tr) = (ml.task(t).unwrap(), mr.task(t).unwrap());
            let singles = c
                .task_modalities(&c.tasks[t])
                .iter()
                .filter(|&&m| c.modalities[m].tokens == 1)
                .count() as u64;
            let heads = tl.stage as u64 + 1;
            let saved_macs = singles * (2 * d * d + 2 * d + heads * 2 * d);
            let (fl, fr) = (task_flops(&ml, &tl).unwrap(), task_flops(&mr, &tr).unwrap());
            assert_eq!(fl - fr, 2 * saved_macs, "task {}", tl.name);
            rewritten_some |= singles > 0;
            // The head alone: outputs x (modalities x D) multiply-adds.
            let head = c.tasks[t].outputs as u64 * c.task_modalities(&c.tasks[t]).len() as u64 * d;
            assert!(fr > 2 * head, "task {}", tl.name);
        }
        assert!(rewritten_some);
    }

    #[test]
    fn every_flame_task_is_counted() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/reference/stage3");
        let ck = Checkpoint::load(&root).unwrap();
        let bytes = pack(&ck, &PackOptions::default()).unwrap();
        let arena = taskpath_runtime::AlignedArena::from_bytes(&bytes);
        let m = Model::from_bytes(arena.as_slice()).unwrap();
        // Every FLAME task is fixed-shape: counted, and above zero.
        for t in 0..m.task_count() {
            assert!(task_flops(&m, &m.task(t).unwrap()).unwrap() > 0);
        }
    }
}
