//! `taskpath pack` and `taskpath add-task`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use taskpath_checkpoint::{Checkpoint, Dataset};
use taskpath_format::{Package, MAX_ALIGN_LOG2, MIN_ALIGN_LOG2};
use taskpath_pack::{derive_paths, pack, pack_delta, route_statistics, PackOptions};
use taskpath_runtime::{AlignedArena, WeightFormat};

use crate::util::{human_bytes, open_model, outln, write_output};
use crate::DeltaArgs;

/// Arguments of `pack`.
#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// Checkpoint directory (model.json + model.safetensors).
    #[arg(value_name = "MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Output package (.tpk).
    #[arg(short = 'o', long = "output", value_name = "OUT.tpk")]
    pub output: PathBuf,
    /// Layout and calibration options.
    #[command(flatten)]
    pub calib: CalibArgs,
}

/// Calibration and layout options shared by `pack` and `add-task`.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibArgs {
    /// log2 of the blob alignment (12 = 4 KiB pages).
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub align_log2: u32,
    /// Directory of `{TASK}.train.json` datasets: route every task's samples
    /// and store the routing statistics (hot experts are laid out first).
    #[arg(long, value_name = "DATA_DIR")]
    pub calibration: Option<PathBuf>,
    /// Keep per (task, modality) the fewest experts carrying this share of the
    /// calibration gate mass (never fewer than top_k). Needs --calibration.
    #[arg(long, value_name = "C")]
    pub path_coverage: Option<f64>,
    /// Store every expert matrix in this format: f32, f16, int8 (= i8row),
    /// int4 (= i4g32), int2 (= i2g32z), or an exact name (i4g64z, ...).
    #[arg(long, value_name = "FORMAT")]
    pub quant: Option<String>,
    /// Mixed precision: fit the expert blobs in this many bytes (or `N%` of
    /// their f32 size), choosing per expert component the formats with the
    /// least measured output change on the calibration data (random inputs
    /// when there is no --calibration).
    #[arg(long, value_name = "BYTES|N%")]
    pub budget: Option<String>,
}

/// A weight format from its CLI name.
pub fn parse_format(s: &str) -> Result<WeightFormat> {
    let alias = match s {
        "int8" => "i8row",
        "int4" => "i4g32",
        "int2" => "i2g32z",
        other => other,
    };
    taskpath_cpu::quant::ALL
        .iter()
        .copied()
        .find(|f| f.name() == alias)
        .with_context(|| {
            let names: Vec<&str> = taskpath_cpu::quant::ALL.iter().map(|f| f.name()).collect();
            format!(
                "unknown weight format {s:?}; known: int8, int4, int2, {}",
                names.join(", ")
            )
        })
}

/// Applies --quant / --budget to `opts`; `inputs` are the calibration
/// samples per task (empty for tasks without any).
fn precision(
    ck: &Checkpoint,
    a: &CalibArgs,
    opts: &mut PackOptions,
    inputs: &[Vec<Vec<Vec<f32>>>],
) -> Result<()> {
    if let Some(q) = &a.quant {
        ensure!(
            a.budget.is_none(),
            "--quant and --budget exclude each other"
        );
        opts.quant = Some(parse_format(q)?);
    }
    let Some(b) = &a.budget else { return Ok(()) };
    // At most 32 samples per task: sensitivity runs the model once per
    // (component, format), so this bounds the work.
    let mut rng = taskpath_checkpoint::SplitMix64::new(0x5EED);
    let sub: Vec<Vec<Vec<Vec<f32>>>> = (0..ck.config.tasks.len())
        .map(|t| match inputs.get(t).filter(|v| !v.is_empty()) {
            Some(v) => v.iter().take(32).cloned().collect(),
            None => (0..32)
                .map(|_| taskpath_checkpoint::random_inputs(&ck.config, t, &mut rng))
                .collect(),
        })
        .collect();
    let f32_bytes = taskpath_pack::mixed::f32_expert_bytes(ck, opts)?;
    let budget = match b.strip_suffix('%') {
        Some(p) => {
            let frac: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("--budget {b}: not a percentage"))?;
            ensure!(
                frac > 0.0 && frac <= 100.0,
                "--budget {b}: percentage must be in (0, 100]"
            );
            (f32_bytes as f64 * frac / 100.0) as usize
        }
        None => b
            .trim()
            .parse()
            .with_context(|| format!("--budget {b}: not a byte count"))?,
    };
    let started = Instant::now();
    let plan = taskpath_pack::mixed::plan_mixed(ck, opts, &sub, budget)
        .context("planning mixed precision")?;
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for f in plan.formats.values() {
        *count.entry(f.name()).or_default() += 1;
    }
    outln!(
        "mixed precision: expert bytes {} -> {} (budget {budget}, {:.1}% of f32) in {:.1} s; components per format: {count:?}",
        plan.f32_bytes,
        plan.bytes,
        100.0 * plan.bytes as f64 / plan.f32_bytes.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    opts.expert_formats = plan.formats;
    Ok(())
}

/// Arguments of `add-task`.
#[derive(Debug, clap::Args)]
pub struct AddTaskArgs {
    /// The base package (.tpk); it is only read.
    #[arg(value_name = "BASE.tpk")]
    pub base: PathBuf,
    /// Checkpoint directory of the later stage (all stages up to it).
    #[arg(value_name = "STAGE_CHECKPOINT_DIR")]
    pub stage_dir: PathBuf,
    /// Output delta pack (.tpkd).
    #[arg(short = 'o', long = "output", value_name = "OUT.tpkd")]
    pub output: PathBuf,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Layout and calibration options.
    #[command(flatten)]
    pub calib: CalibArgs,
}

/// What a pack produced.
#[derive(Debug)]
pub struct PackSummary {
    /// Tasks in the package.
    pub tasks: usize,
    /// Blobs in the package.
    pub blobs: usize,
    /// File size.
    pub bytes: usize,
    /// Wall time of the whole pack (calibration included).
    pub seconds: f64,
}

fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    Checkpoint::load(dir).with_context(|| format!("loading checkpoint {}", dir.display()))
}

/// Pack options from the calibration arguments: every task in `tasks`
/// (checkpoint indices) is routed over `DIR/{TASK}.train.json`; its routing
/// statistics are kept and, with a coverage, its paths derived.
fn pack_options(ck: &Checkpoint, a: &CalibArgs, tasks: &[usize]) -> Result<PackOptions> {
    let (mut opts, inputs) = routed_options(ck, a, tasks)?;
    precision(ck, a, &mut opts, &inputs)?;
    Ok(opts)
}

/// Calibration samples: per task, per sample, one vector per modality.
type Samples = Vec<Vec<Vec<Vec<f32>>>>;

/// Alignment, routing statistics and paths; returns the calibration inputs too.
fn routed_options(
    ck: &Checkpoint,
    a: &CalibArgs,
    tasks: &[usize],
) -> Result<(PackOptions, Samples)> {
    ensure!(
        (MIN_ALIGN_LOG2..=MAX_ALIGN_LOG2).contains(&a.align_log2),
        "--align-log2 must be in {MIN_ALIGN_LOG2}..={MAX_ALIGN_LOG2}, got {}",
        a.align_log2
    );
    let mut opts = PackOptions {
        align_log2: a.align_log2,
        ..Default::default()
    };
    let Some(dir) = &a.calibration else {
        if a.path_coverage.is_some() {
            bail!("--path-coverage needs --calibration DATA_DIR (paths are derived from routing statistics on calibration data)");
        }
        return Ok((opts, Vec::new()));
    };
    if let Some(c) = a.path_coverage {
        ensure!(
            c > 0.0 && c <= 1.0,
            "--path-coverage must be in (0, 1], got {c}"
        );
    }
    let c = &ck.config;
    let mut inputs = vec![Vec::new(); c.tasks.len()];
    for &t in tasks {
        let name = &c.tasks[t].name;
        let path = dir.join(format!("{name}.train.json"));
        if !path.is_file() {
            bail!(
                "calibration data for task {name} is missing: {} does not exist",
                path.display()
            );
        }
        let ds = Dataset::load(&path)?;
        ds.validate_against(c)
            .with_context(|| format!("checking {}", path.display()))?;
        ensure!(
            ds.task == *name,
            "{} holds samples of task {:?}, expected {name:?}",
            path.display(),
            ds.task
        );
        ensure!(
            !ds.samples.is_empty(),
            "calibration set {} has no samples",
            path.display()
        );
        inputs[t] = ds.inputs();
    }
    let n: usize = inputs.iter().map(Vec::len).sum();
    let started = Instant::now();
    let mut stats = route_statistics(ck, &inputs).context("routing the calibration samples")?;
    stats.table.retain(|(t, _), _| tasks.contains(t));
    outln!(
        "calibrated on {n} samples of {} tasks from {} in {:.2} s",
        tasks.len(),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(cov) = a.path_coverage {
        opts.masks = derive_paths(&stats, cov, c.top_k);
        opts.masks.retain(|(t, _), _| tasks.contains(t));
        for &t in tasks {
            let task = &c.tasks[t];
            let per_mod: Vec<String> = c
                .task_modalities(task)
                .into_iter()
                .map(|m| {
                    let mask = opts.masks.get(&(t, m)).copied().unwrap_or(u64::MAX);
                    let experts: Vec<String> = (0..c.experts)
                        .filter(|j| mask & (1 << j) != 0)
                        .map(|j| j.to_string())
                        .collect();
                    format!("{} [{}]", c.modalities[m].name, experts.join(","))
                })
                .collect();
            outln!(
                "  path of {} at coverage {cov}: {}",
                task.name,
                per_mod.join(" ")
            );
        }
    }
    opts.stats = Some(stats);
    Ok((opts, inputs))
}

fn counts(bytes: &[u8]) -> Result<(usize, usize)> {
    let copy = AlignedArena::from_bytes(bytes);
    let p = Package::parse(copy.as_slice()).context("internal: the packed bytes do not parse")?;
    Ok((p.tasks().len(), p.blobs().len()))
}

/// Packs `model_dir` into `output` and prints the one-line summary.
pub fn pack_dir(model_dir: &Path, output: &Path, a: &CalibArgs) -> Result<PackSummary> {
    let started = Instant::now();
    let ck = load_checkpoint(model_dir)?;
    let all: Vec<usize> = (0..ck.config.tasks.len()).collect();
    let opts = pack_options(&ck, a, &all)?;
    let bytes = pack(&ck, &opts).with_context(|| format!("packing {}", model_dir.display()))?;
    write_output(output, &bytes)?;
    let (tasks, blobs) = counts(&bytes)?;
    let s = PackSummary {
        tasks,
        blobs,
        bytes: bytes.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    outln!(
        "packed {} -> {}: {} tasks, {} blobs, {} bytes ({}) in {:.2} s",
        model_dir.display(),
        output.display(),
        s.tasks,
        s.blobs,
        s.bytes,
        human_bytes(s.bytes),
        s.seconds
    );
    Ok(s)
}

/// Runs `pack`.
pub fn main(a: &PackArgs) -> Result<()> {
    pack_dir(&a.model_dir, &a.output, &a.calib).map(|_| ())
}

/// Runs `add-task`.
pub fn add_task(a: &AddTaskArgs) -> Result<()> {
    let started = Instant::now();
    let mapped = open_model(&a.base, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let ck = load_checkpoint(&a.stage_dir)?;
    let new: Vec<usize> = (0..ck.config.tasks.len())
        .filter(|&t| model.task_index(&ck.config.tasks[t].name).is_err())
        .collect();
    ensure!(
        !new.is_empty(),
        "{} adds no task: every task of it is already in {}",
        a.stage_dir.display(),
        a.base.display()
    );
    let opts = pack_options(&ck, &a.calib, &new)?;
    let bytes = pack_delta(&ck, &model, &opts).with_context(|| {
        format!(
            "packing {} as a delta of {}",
            a.stage_dir.display(),
            a.base.display()
        )
    })?;
    write_output(&a.output, &bytes)?;
    let blobs = {
        let copy = AlignedArena::from_bytes(&bytes);
        Package::parse(copy.as_slice())
            .context("internal: the delta does not parse")?
            .blobs()
            .len()
    };
    let names: Vec<&str> = new
        .iter()
        .map(|&t| ck.config.tasks[t].name.as_str())
        .collect();
    outln!(
        "packed delta {} -> {}: {} new tasks ({}), {} blobs, {} bytes ({}) in {:.2} s",
        a.stage_dir.display(),
        a.output.display(),
        new.len(),
        names.join(", "),
        blobs,
        bytes.len(),
        human_bytes(bytes.len()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
