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
    /// What to pack: a Taskpath checkpoint directory (model.json), a Hugging
    /// Face checkpoint directory (config.json + safetensors) or a GGUF file.
    #[arg(value_name = "MODEL")]
    pub model_dir: PathBuf,
    /// Output package (.tpk).
    #[arg(short = 'o', long = "output", value_name = "OUT.tpk")]
    pub output: PathBuf,
    /// Layout and calibration options.
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Language-model options.
    #[command(flatten)]
    pub llm: LlmArgs,
    /// Signing.
    #[command(flatten)]
    pub sign: crate::keys::SignArgs,
}

/// Options of language-model packages (Hugging Face or GGUF input).
#[derive(Debug, Clone, clap::Args)]
pub struct LlmArgs {
    /// Positions a session's KV cache holds (fixed at session creation;
    /// 1..=1048576).
    #[arg(long, default_value_t = 2048, value_name = "N", value_parser = crate::util::within(1..=1usize << 20))]
    pub context: usize,
    /// Most tokens one step takes (the prefill chunk; 1..=4096, at most the
    /// context).
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = crate::util::within(1..=4096usize))]
    pub chunk: usize,
    /// Format of the dense matrices (attention, shared experts, embedding,
    /// head); default: each tensor's source encoding (F32, F16, Q8_0 and
    /// Q4_0 kept exactly, BF16 as f32, Q4_K as i4g32z, Q6_K as q8_0).
    #[arg(long, value_name = "FORMAT")]
    pub dense_quant: Option<String>,
}

/// What `pack` was given.
enum Input {
    /// A Taskpath (FLAME) checkpoint directory.
    Flame,
    /// A Hugging Face directory or a GGUF file.
    Llm,
}

fn input_kind(path: &Path) -> Result<Input> {
    if path.is_dir() {
        if path.join("model.json").is_file() {
            return Ok(Input::Flame);
        }
        if path.join("config.json").is_file() {
            return Ok(Input::Llm);
        }
        bail!(
            "{}: not a model directory (expected model.json for a Taskpath checkpoint or config.json for a Hugging Face one)",
            path.display()
        );
    }
    if path.is_file() {
        return Ok(Input::Llm);
    }
    bail!(
        "{}: no such file or directory (expected a Taskpath checkpoint directory with model.json, a Hugging Face directory with config.json, or a GGUF file)",
        path.display()
    )
}

/// Calibration and layout options shared by `pack` and `add-task`.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibArgs {
    /// log2 of the blob alignment (12 = 4 KiB pages; 12..=24).
    #[arg(long, default_value_t = 12, value_name = "N", value_parser = crate::util::within(MIN_ALIGN_LOG2..=MAX_ALIGN_LOG2))]
    pub align_log2: u32,
    /// Lower every op as written, without the exact rewrites (docs/FORMAT.md,
    /// "Exact rewrites"): for measuring what they save.
    #[arg(long, hide = true)]
    pub literal: bool,
    /// Directory of `{TASK}.train.json` datasets: route every task's samples
    /// and store the routing statistics (hot experts are laid out first).
    /// For a language model: a corpus directory of `<domain>/calib.txt`
    /// files; each domain becomes a task named after it (after the full
    /// model's `generate`) and its routing is stored.
    #[arg(long, value_name = "DATA_DIR")]
    pub calibration: Option<PathBuf>,
    /// Keep per (task, modality) — for a language model per (domain, layer) —
    /// the fewest experts carrying this share of the calibration gate mass
    /// (never fewer than top_k; greater than 0 and at most 1). Needs
    /// --calibration.
    #[arg(long, value_name = "C", value_parser = crate::util::within(crate::util::FRACTION))]
    pub path_coverage: Option<f64>,
    /// Store every expert matrix in this format: f32, f16, int8 (= i8row),
    /// int4 (= i4g32), int2 (= i2g32z), or an exact name (i4g64z, q4_0,
    /// ...). Default: f32 for a Taskpath checkpoint; for a language model
    /// each tensor's source encoding (see --dense-quant).
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
    let budget = crate::util::bytes_or_percent("--budget", b, f32_bytes)?;
    let started = Instant::now();
    let plan = taskpath_pack::mixed::plan_mixed(ck, opts, &sub, budget)
        .context("planning mixed precision")?;
    report_mixed(&plan, budget, started)?;
    opts.expert_formats = plan.formats;
    Ok(())
}

/// Prints what a mixed-precision plan chose.
fn report_mixed(
    plan: &taskpath_pack::mixed::MixedPlan,
    budget: usize,
    started: Instant,
) -> Result<()> {
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
    /// Signing.
    #[command(flatten)]
    pub sign: crate::keys::SignArgs,
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
        literal: a.literal,
        ..Default::default()
    };
    check_coverage(a)?;
    let Some(dir) = &a.calibration else {
        return Ok((opts, Vec::new()));
    };
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

/// What `verify` checks of names, on a base package about to be written:
/// `pack` must not produce what `verify` refuses.
fn check_names(bytes: &[u8]) -> Result<()> {
    let copy = AlignedArena::from_bytes(bytes);
    let model = taskpath_runtime::Model::from_bytes(copy.as_slice())
        .context("internal: the packed bytes do not open")?;
    crate::verify::unique_names(&model).context("refusing to write the package")
}

/// Packs `model_dir` into `output` (signed with `sign`, if given) and prints
/// the one-line summary.
pub fn pack_dir(
    model_dir: &Path,
    output: &Path,
    a: &CalibArgs,
    sign: Option<&[u8; 32]>,
) -> Result<PackSummary> {
    let started = Instant::now();
    let ck = load_checkpoint(model_dir)?;
    let all: Vec<usize> = (0..ck.config.tasks.len()).collect();
    let opts = pack_options(&ck, a, &all)?;
    let bytes = pack(&ck, &opts).with_context(|| format!("packing {}", model_dir.display()))?;
    check_names(&bytes)?;
    let bytes = crate::keys::maybe_sign(bytes, sign)?;
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
    // The key is read first: a bad key file fails before any packing.
    let secret = a.sign.secret()?;
    match input_kind(&a.model_dir)? {
        Input::Flame => pack_dir(&a.model_dir, &a.output, &a.calib, secret.as_ref()).map(|_| ()),
        Input::Llm => {
            pack_llm_file(&a.model_dir, &a.output, &a.calib, &a.llm, secret.as_ref()).map(|_| ())
        }
    }
}

/// Packs a Hugging Face directory or GGUF file into `output`.
pub fn pack_llm_file(
    path: &Path,
    output: &Path,
    a: &CalibArgs,
    l: &LlmArgs,
    sign: Option<&[u8; 32]>,
) -> Result<PackSummary> {
    let started = Instant::now();
    check_coverage(a)?;
    ensure!(
        a.budget.is_none() || a.calibration.is_some(),
        "--budget for a language model needs --calibration CORPUS_DIR (the sensitivity of each expert is measured on calib.txt)"
    );
    ensure!(
        a.quant.is_none() || a.budget.is_none(),
        "--quant and --budget exclude each other"
    );
    ensure!(
        (MIN_ALIGN_LOG2..=MAX_ALIGN_LOG2).contains(&a.align_log2),
        "--align-log2 must be in {MIN_ALIGN_LOG2}..={MAX_ALIGN_LOG2}, got {}",
        a.align_log2
    );
    ensure!(
        (1..=1 << 20).contains(&l.context),
        "--context must be in 1..=1048576, got {}",
        l.context
    );
    ensure!(
        (1..=l.context.min(4096)).contains(&l.chunk),
        "--chunk must be in 1..={} (at most the context and 4096), got {}",
        l.context.min(4096),
        l.chunk
    );
    let ck = taskpath_import::Checkpoint::open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut opts = taskpath_pack::llm::LlmPackOptions {
        align_log2: a.align_log2,
        context: l.context,
        chunk: l.chunk,
        quant: a.quant.as_deref().map(parse_format).transpose()?,
        dense_quant: l.dense_quant.as_deref().map(parse_format).transpose()?,
        tasks: Vec::new(),
        stats: None,
        expert_formats: BTreeMap::new(),
    };
    if let Some(dir) = &a.calibration {
        let ids = calibration_text(&ck, dir)?;
        let window = opts.context.min(ck.config().max_position_embeddings.max(2));
        if let Some(b) = &a.budget {
            opts.expert_formats = llm_precision(&ck, &opts, &ids, window, b)?;
        }
        let paths = domain_paths(&ck, &opts, &ids, window, dir, a.path_coverage)?;
        opts.tasks = paths.tasks;
        opts.stats = Some(paths.stats);
    }
    let (bytes, report) = taskpath_pack::llm::pack_llm_report(&ck, &opts)
        .with_context(|| format!("packing {}", path.display()))?;
    for ((src, fmt), cv) in &report.conversions {
        if cv.exact {
            outln!(
                "  {src} -> {}: {} tensors, {} values, exact",
                fmt.name(),
                cv.tensors,
                cv.values
            );
        } else {
            outln!(
                "  {src} -> {}: {} tensors, {} values, rms change {:.3e} of rms weight, max |change| {:.3e}",
                fmt.name(),
                cv.tensors,
                cv.values,
                cv.rel_rms(),
                cv.max_abs
            );
        }
    }
    check_names(&bytes)?;
    let bytes = crate::keys::maybe_sign(bytes, sign)?;
    write_output(output, &bytes)?;
    let (tasks, blobs) = counts(&bytes)?;
    let s = PackSummary {
        tasks,
        blobs,
        bytes: bytes.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let c = ck.config();
    outln!(
        "packed {} ({}, {} layers, {} experts top-{}) -> {}: {} tasks, {} blobs, {} bytes ({}) in {:.2} s",
        path.display(),
        c.arch.hf_name(),
        c.num_layers,
        c.num_experts,
        c.experts_per_token,
        output.display(),
        s.tasks,
        s.blobs,
        s.bytes,
        human_bytes(s.bytes),
        s.seconds
    );
    Ok(s)
}

/// `--path-coverage` needs `--calibration` and lies in (0, 1].
fn check_coverage(a: &CalibArgs) -> Result<()> {
    match (a.path_coverage, &a.calibration) {
        (Some(_), None) => bail!("--path-coverage needs --calibration DATA_DIR (paths are derived from routing statistics on calibration data)"),
        (Some(c), Some(_)) => ensure!(
            c > 0.0 && c <= 1.0,
            "--path-coverage must be in (0, 1], got {c}"
        ),
        _ => {}
    }
    Ok(())
}

/// Each domain's `CORPUS_DIR/<domain>/calib.txt`, tokenized by the
/// checkpoint's tokenizer.
fn calibration_text(
    ck: &taskpath_import::Checkpoint,
    dir: &Path,
) -> Result<Vec<(String, Vec<u32>)>> {
    let tok = ck.tokenizer().context(
        "--calibration tokenizes each domain's calib.txt with the checkpoint's tokenizer",
    )?;
    let corpus = taskpath_pack::domains::load_corpus(dir, "calib")
        .with_context(|| format!("reading the calibration corpus {}", dir.display()))?;
    taskpath_pack::domains::tokenize(&tok, &corpus)
}

/// Calibration tokens per domain for a language model's sensitivity runs
/// (the first window's worth): each run re-packs the model, so this bounds
/// the work.
const BUDGET_TOKENS: usize = 256;

/// `--budget` for a language model: per `(layer, expert)` formats from the
/// sensitivity on the first tokens of each domain's calibration text.
fn llm_precision(
    ck: &taskpath_import::Checkpoint,
    opts: &taskpath_pack::llm::LlmPackOptions,
    ids: &[(String, Vec<u32>)],
    window: usize,
    budget: &str,
) -> Result<BTreeMap<(usize, usize), WeightFormat>> {
    let f32_bytes = taskpath_pack::mixed::llm_f32_expert_bytes(ck, opts)?;
    let budget = crate::util::bytes_or_percent("--budget", budget, f32_bytes)?;
    let started = Instant::now();
    let tokens: Vec<Vec<u32>> = ids
        .iter()
        .map(|(_, t)| t[..t.len().min(BUDGET_TOKENS)].to_vec())
        .collect();
    let plan =
        taskpath_pack::mixed::plan_mixed_llm(ck, opts, &tokens, window.min(BUDGET_TOKENS), budget)
            .context("planning mixed precision")?;
    report_mixed(&plan, budget, started)?;
    Ok(plan.formats)
}

/// A language model's domain tasks from the calibration text `ids` (of
/// `dir`): the routing of each domain's text on the full model and, with a
/// coverage, each domain's path (printed per layer).
fn domain_paths(
    ck: &taskpath_import::Checkpoint,
    opts: &taskpath_pack::llm::LlmPackOptions,
    ids: &[(String, Vec<u32>)],
    window: usize,
    dir: &Path,
    coverage: Option<f64>,
) -> Result<taskpath_pack::domains::DomainPaths> {
    use taskpath_pack::domains;
    let started = Instant::now();
    let paths = domains::calibrate_domains(ck, opts, ids, window, coverage)
        .context("routing the calibration text")?;
    outln!(
        "calibrated on {} tokens of {} domains from {} (windows of {window}) in {:.2} s",
        paths.tokens.iter().sum::<usize>(),
        ids.len(),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(cov) = coverage {
        for (name, masks) in &paths.tasks[1..] {
            let layers: Vec<String> = masks
                .iter()
                .map(|(l, m)| {
                    let e: Vec<String> = m.iter().map(|j| j.to_string()).collect();
                    format!("L{l} [{}]", e.join(","))
                })
                .collect();
            outln!("  path of {name} at coverage {cov}: {}", layers.join(" "));
        }
    }
    Ok(paths)
}

/// Runs `add-task`.
pub fn add_task(a: &AddTaskArgs) -> Result<()> {
    let started = Instant::now();
    // The key is read first: a bad key file fails before any packing.
    let secret = a.sign.secret()?;
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
    let bytes = crate::keys::maybe_sign(bytes, secret.as_ref())?;
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
