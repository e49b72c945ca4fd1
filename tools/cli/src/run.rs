//! `taskpath run`: one task over inputs from JSON, a dataset file or `.npy` files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use taskpath_checkpoint::{Dataset, Sample};
use taskpath_runtime::{AlignedArena, Model, RunStats, TaskInfo};

use crate::util::{argmax, config_of, modality_name, open_model, outln, task_by_name};
use crate::{npy, DeltaArgs};

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Task to run (optional when the input is a dataset file, which names it).
    #[arg(long)]
    pub task: Option<String>,
    /// Inputs: one JSON file (`{"inputs": {"modality": [[token 0 features], ...]}}`
    /// or a taskpath-dataset/1 file, whose samples all run), or one `.npy` file
    /// per task modality in model order (float32, shape [tokens, features] or flat).
    #[arg(long = "input", value_name = "FILE", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Runs per sample, for timing (1..=1000000).
    #[arg(long, default_value_t = 1, value_parser = crate::util::within(1..=MAX_REPEAT))]
    pub repeat: usize,
    /// Print one JSON object (outputs, argmax, timing) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where to run: the CPU, the CUDA backend or the NPU backend (a
    /// backend that cannot run here says why).
    #[arg(long, value_enum, default_value_t = Target::Cpu)]
    pub target: Target,
}

/// Most runs per sample: enough for any timing, few enough that a run ends.
pub const MAX_REPEAT: usize = 1_000_000;

/// Where `run` and `eval` execute a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The CPU path (the reference).
    #[default]
    Cpu,
    /// The CUDA backend (taskpath-cuda).
    Cuda,
    /// The NPU backend (taskpath-npu): segments offered to the NPU delegate
    /// of this build, the rest on the CPU. This build has no NPU delegate
    /// (a vendor's, or tract with the `tract` feature of taskpath-npu), so
    /// it reports itself unavailable and says why.
    Npu,
}

/// `(name, tokens, features)` of each of the task's modalities, in model order.
pub fn task_shapes(model: &Model<'_>, task: &TaskInfo<'_>) -> Vec<(String, usize, usize)> {
    task.modalities()
        .map(|m| {
            let (_, l, f) = model.modality(m).unwrap_or(("", 0, 0));
            (modality_name(model, m), l, f)
        })
        .collect()
}

/// One `.npy` file per modality, checked against the modality's shape.
fn npy_inputs(
    paths: &[PathBuf],
    shapes: &[(String, usize, usize)],
    task: &str,
) -> Result<Vec<Vec<f32>>> {
    let names: Vec<&str> = shapes.iter().map(|s| s.0.as_str()).collect();
    ensure!(
        paths.len() == shapes.len(),
        "task {task} takes {} inputs ({}), one .npy file each in that order; got {} files",
        shapes.len(),
        names.join(", "),
        paths.len()
    );
    paths
        .iter()
        .zip(shapes)
        .map(|(p, (name, l, f))| {
            let a = npy::load(p, l * f)?;
            let ok = a.shape == [*l, *f] || a.shape == [l * f];
            ensure!(
                ok,
                "{} for modality {name}: shape {:?}, expected {l} tokens x {f} features (shape [{l}, {f}] or [{}])",
                p.display(),
                a.shape,
                l * f
            );
            if let Some(j) = a.data.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{} for modality {name}: token {}, feature {} is {} (inputs must be finite)",
                    p.display(),
                    j / (*f).max(1),
                    j % (*f).max(1),
                    a.data[j]
                );
            }
            Ok(a.data)
        })
        .collect()
}

fn number(v: &Value, what: &dyn Fn() -> String) -> Result<f32> {
    let x = v
        .as_f64()
        .with_context(|| format!("{}: {v} is not a number", what()))?;
    // Checked after the conversion: 1e39 is a finite f64 but +inf as f32.
    let y = x as f32;
    ensure!(
        y.is_finite(),
        "{}: {x} is not finite as a 32-bit float (|x| must be below 3.4e38)",
        what()
    );
    Ok(y)
}

/// One modality's value from `{"inputs": {...}}`: `[[features] per token]` or flat.
fn modality_input(v: &Value, name: &str, l: usize, f: usize) -> Result<Vec<f32>> {
    let shape = || format!("modality {name}: expected {l} tokens x {f} features");
    let rows = v
        .as_array()
        .with_context(|| format!("{}, got {v}", shape()))?;
    if rows.iter().all(Value::is_array) && !rows.is_empty() {
        ensure!(rows.len() == l, "{}, got {} tokens", shape(), rows.len());
        let mut out = Vec::with_capacity(l * f);
        for (i, r) in rows.iter().enumerate() {
            let r = r.as_array().map_or(&[][..], Vec::as_slice);
            ensure!(
                r.len() == f,
                "{}, token {i} has {} features",
                shape(),
                r.len()
            );
            for (j, x) in r.iter().enumerate() {
                out.push(number(x, &|| {
                    format!("modality {name}, token {i}, feature {j}")
                })?);
            }
        }
        Ok(out)
    } else {
        ensure!(
            rows.len() == l * f,
            "{} (nested [[...] per token] or {} values flat), got {} values",
            shape(),
            l * f,
            rows.len()
        );
        rows.iter()
            .enumerate()
            .map(|(j, x)| number(x, &|| format!("modality {name}, value {j}")))
            .collect()
    }
}

/// `{"inputs": {"modality": ...}}` for one sample.
fn named_inputs(
    map: Option<&serde_json::Map<String, Value>>,
    shapes: &[(String, usize, usize)],
    task: &str,
) -> Result<Vec<Vec<f32>>> {
    let map = map.context(
        "expected {\"inputs\": {\"MODALITY\": [[...], ...]}} or a taskpath-dataset/1 file",
    )?;
    let names: Vec<&str> = shapes.iter().map(|s| s.0.as_str()).collect();
    for k in map.keys() {
        ensure!(
            names.contains(&k.as_str()),
            "input names modality {k:?}, which task {task} does not take (it takes {})",
            names.join(", ")
        );
    }
    shapes
        .iter()
        .map(|(name, l, f)| {
            let v = map.get(name).with_context(|| {
                format!(
                    "input has no modality {name} (task {task} takes {})",
                    names.join(", ")
                )
            })?;
            modality_input(v, name, *l, *f)
        })
        .collect()
}

/// A reader that fails, with `over` as the message, once more than `left`
/// bytes would be read: so a huge file or `/dev/zero` costs at most the
/// limit, and a parser reading through it stops there.
struct Limited<R> {
    inner: R,
    left: u64,
    over: String,
}

impl<R: std::io::Read> std::io::Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the limit: only the end of the file is acceptable.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    self.over.clone(),
                )),
            };
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// Opens `path` for reading at most `limit` bytes; `what` says what the
/// file is for in the message that states the limit.
fn open_limited(
    path: &Path,
    limit: u64,
    what: &dyn Fn() -> String,
) -> Result<Limited<std::fs::File>> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Limited {
        inner: f,
        left: limit,
        over: format!(
            "{} is larger than {limit} bytes, the most {} may take",
            path.display(),
            what()
        ),
    })
}

/// Reads all of `path`, refusing (without reading further) a file of more
/// than `limit` bytes; `what` says what the file is for.
pub fn read_limited(path: &Path, limit: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_limited(path, limit, what)?, &mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// JSON text allowed per input value or logit: a pretty-printed
/// `-1.2345678e-05,` with its indentation takes well under 64 bytes.
pub const JSON_BYTES_PER_VALUE: u64 = 64;
/// JSON text allowed per sample on top of its values (keys, label).
pub const JSON_BYTES_PER_SAMPLE: u64 = 256;
/// Samples a JSON input (a dataset file) may hold.
pub const MAX_JSON_SAMPLES: u64 = 10_000;
/// Slack for the rest of a JSON input (format, task and modality names).
pub const JSON_SLACK: u64 = 1 << 20;

/// Both JSON input forms, parsed in one pass straight from the file into
/// f32 samples (no intermediate text copy or second parse): a dataset
/// (`format`, `task`, `modalities`, `samples`) or `{"inputs": {...}}`.
#[derive(serde::Deserialize)]
struct JsonInput {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    modalities: Option<Vec<String>>,
    #[serde(default)]
    samples: Option<Vec<Sample>>,
    #[serde(default)]
    inputs: Option<serde_json::Map<String, Value>>,
}

/// The byte limit of a JSON input for `task` (or for the model's largest
/// task when the input names it), and the rule behind it in words.
fn json_limit(model: &Model<'_>, task: Option<&TaskInfo<'_>>) -> (u64, String) {
    let values = |t: &TaskInfo<'_>| {
        task_shapes(model, t)
            .iter()
            .map(|s| s.1 * s.2)
            .sum::<usize>()
            + t.outputs
    };
    let (n, whose) = match task {
        Some(t) => (values(t), format!("task {}", t.name)),
        None => (
            (0..model.task_count())
                .filter_map(|i| model.task(i).ok())
                .map(|t| values(&t))
                .max()
                .unwrap_or(0),
            "the package's largest task".to_string(),
        ),
    };
    let per_sample = (n as u64)
        .saturating_mul(JSON_BYTES_PER_VALUE)
        .saturating_add(JSON_BYTES_PER_SAMPLE);
    let limit = per_sample
        .saturating_mul(MAX_JSON_SAMPLES)
        .saturating_add(JSON_SLACK);
    (
        limit,
        format!(
            "a JSON input for {whose} ({MAX_JSON_SAMPLES} samples of {n} values and logits at {JSON_BYTES_PER_VALUE} bytes each)"
        ),
    )
}

fn load_json(path: &Path, limit: u64, what: &str) -> Result<JsonInput> {
    let r = std::io::BufReader::new(open_limited(path, limit, &|| what.to_string())?);
    serde_json::from_reader(r).with_context(|| {
        format!(
            "parsing {} (expected {{\"inputs\": {{\"MODALITY\": [[...], ...]}}}} or a taskpath-dataset/1 file)",
            path.display()
        )
    })
}

/// Loads the inputs of `run` for the model (task given or named by a dataset).
fn load_inputs<'a>(
    model: &Model<'a>,
    task: Option<&str>,
    paths: &[PathBuf],
) -> Result<(TaskInfo<'a>, Vec<Sample>)> {
    let is_npy = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let need_task = |t: Option<&str>| -> Result<TaskInfo<'a>> {
        let name = t.context("--task NAME is required with this input")?;
        task_by_name(model, name)
    };
    if paths.iter().any(is_npy) {
        ensure!(
            paths.iter().all(is_npy),
            "mixing .npy and other input files: give one .npy per modality, or one JSON file"
        );
        let info = need_task(task)?;
        let shapes = task_shapes(model, &info);
        let inputs = npy_inputs(paths, &shapes, info.name)?;
        return Ok((
            info,
            vec![Sample {
                inputs,
                label: None,
                logits: None,
            }],
        ));
    }
    let [path] = paths else {
        bail!(
            "give one JSON input file (or one .npy file per modality), got {}",
            paths.len()
        );
    };
    let given = task.map(|t| task_by_name(model, t)).transpose()?;
    let (limit, what) = json_limit(model, given.as_ref());
    let v = load_json(path, limit, &what)?;
    if v.format.is_some() || v.samples.is_some() {
        let ds = dataset(v).with_context(|| format!("reading dataset {}", path.display()))?;
        if let Some(t) = task {
            ensure!(
                t == ds.task,
                "--task {t} but the dataset {} holds samples of task {}",
                path.display(),
                ds.task
            );
        }
        let info =
            task_by_name(model, &ds.task).with_context(|| format!("dataset {}", path.display()))?;
        ds.validate_against(&config_of(model)?)
            .with_context(|| format!("checking {}", path.display()))?;
        return Ok((info, ds.samples));
    }
    let info = need_task(task)?;
    let shapes = task_shapes(model, &info);
    let inputs = named_inputs(v.inputs.as_ref(), &shapes, info.name)
        .with_context(|| format!("reading inputs from {}", path.display()))?;
    Ok((
        info,
        vec![Sample {
            inputs,
            label: None,
            logits: None,
        }],
    ))
}

/// The dataset form of a JSON input, with the checks of `Dataset::from_json`.
fn dataset(v: JsonInput) -> Result<Dataset> {
    let format = v.format.context("missing field `format`")?;
    ensure!(
        format == taskpath_checkpoint::DATASET_FORMAT,
        "format is {format:?}, expected {:?}",
        taskpath_checkpoint::DATASET_FORMAT
    );
    Ok(Dataset {
        task: v.task.context("missing field `task`")?,
        modalities: v.modalities.context("missing field `modalities`")?,
        samples: v.samples.context("missing field `samples`")?,
    })
}

/// Outputs and timing of running samples through one session.
#[derive(Debug)]
pub struct Outcome {
    /// Per sample, the logits (of its last repeat).
    pub outputs: Vec<Vec<f32>>,
    /// Session creation (checks its program and path checksums).
    pub session: Duration,
    /// Runs done (summed and minimised as they go, so `--repeat` costs no
    /// memory).
    pub runs: usize,
    /// Wall time of all runs together.
    pub total: Duration,
    /// The fastest run.
    pub fastest: Option<Duration>,
    /// Stats of the last run.
    pub stats: RunStats,
}

impl Outcome {
    /// Mean run time in microseconds.
    pub fn mean_us(&self) -> f64 {
        self.total.as_secs_f64() / self.runs.max(1) as f64 * 1e6
    }
    /// Fastest run in microseconds.
    pub fn min_us(&self) -> f64 {
        self.fastest.map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
}

/// Runs every sample `repeat` times on `target`, chosen through the
/// runtime's one `Backend` interface.
pub fn run_samples_on(
    model: &Model<'_>,
    task: &TaskInfo<'_>,
    samples: &[Sample],
    repeat: usize,
    target: Target,
) -> Result<Outcome> {
    match target {
        Target::Cpu => run_on_backend(
            &taskpath_runtime::CpuBackend::default(),
            model,
            task,
            samples,
            repeat,
        ),
        Target::Npu => run_on_backend(
            &taskpath_npu::NpuBackend::new(taskpath_npu::CpuOnly, taskpath_npu::Precision::F32),
            model,
            task,
            samples,
            repeat,
        ),
        #[cfg(feature = "cuda")]
        Target::Cuda => {
            let cuda = taskpath_cuda::CudaBackend::new(Default::default());
            run_on_backend(&cuda, model, task, samples, repeat)
        }
        #[cfg(not(feature = "cuda"))]
        Target::Cuda => bail!(
            "--target cuda: this taskpath was built without the `cuda` feature \
             (cargo build -p taskpath-cli --features cuda)"
        ),
    }
}

/// Runs every sample `repeat` times through one prepared task of `backend`:
/// `init` once (timed as the session), then `execute` per run.
pub fn run_on_backend<B>(
    backend: &B,
    model: &Model<'_>,
    task: &TaskInfo<'_>,
    samples: &[Sample],
    repeat: usize,
) -> Result<Outcome>
where
    B: taskpath_runtime::Backend,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    backend.is_available()?;
    let started = Instant::now();
    let mut arena = AlignedArena::new(task.arena_bytes);
    let mut handle = backend
        .init(model, task.index, arena.as_mut_slice())
        .with_context(|| format!("preparing task {} on {}", task.name, backend.name()))?;
    let session = started.elapsed();
    let shapes = task_shapes(model, task);
    let mut outputs = Vec::with_capacity(samples.len());
    let (mut runs, mut total, mut fastest) = (0usize, Duration::ZERO, None::<Duration>);
    let mut stats = RunStats::default();
    for (i, s) in samples.iter().enumerate() {
        ensure!(
            s.inputs.len() == shapes.len(),
            "sample {i}: {} inputs, task {} takes {}",
            s.inputs.len(),
            task.name,
            shapes.len()
        );
        for (x, (name, l, f)) in s.inputs.iter().zip(&shapes) {
            ensure!(
                x.len() == l * f,
                "sample {i}, modality {name}: {} values, expected {l} tokens x {f} features = {}",
                x.len(),
                l * f
            );
        }
        let refs: Vec<&[f32]> = s.inputs.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; task.outputs];
        for _ in 0..repeat.max(1) {
            let t = Instant::now();
            stats = backend
                .execute(&mut handle, &refs, &mut out)
                .with_context(|| format!("running sample {i} of task {}", task.name))?;
            let dt = t.elapsed();
            runs += 1;
            total += dt;
            fastest = Some(fastest.map_or(dt, |f| f.min(dt)));
        }
        // Never exit 0 with NaN: a non-finite output is a failed run.
        if let Some(j) = out.iter().position(|v| !v.is_finite()) {
            bail!(
                "task {}, sample {i}: output {j} is {} (not finite); the inputs or the package's weights overflow (`taskpath verify` checks the weights)",
                task.name,
                out[j]
            );
        }
        outputs.push(out);
    }
    Ok(Outcome {
        outputs,
        session,
        runs,
        total,
        fastest,
        stats,
    })
}

fn list(v: &[f32]) -> String {
    let s: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
    format!("[{}]", s.join(", "))
}

/// Runs `run`.
pub fn main(a: &RunArgs) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let (task, samples) = load_inputs(&model, a.task.as_deref(), &a.inputs)?;
    mapped.will_need_task(task.index);
    let o = run_samples_on(&model, &task, &samples, a.repeat, a.target)?;
    let argmaxes: Vec<usize> = o.outputs.iter().map(|v| argmax(v)).collect();
    let labelled: Vec<(usize, i64)> = samples
        .iter()
        .zip(&argmaxes)
        .filter_map(|(s, &p)| s.label.map(|l| (p, l)))
        .collect();
    let correct = labelled.iter().filter(|(p, l)| *p as i64 == *l).count();
    if a.json {
        let v = serde_json::json!({
            "task": task.name,
            "outputs": o.outputs,
            "argmax": argmaxes,
            "labels": samples.iter().map(|s| s.label).collect::<Vec<_>>(),
            "session_us": o.session.as_secs_f64() * 1e6,
            "runs": o.runs,
            "mean_us": o.mean_us(),
            "min_us": o.min_us(),
            "ops": o.stats.ops,
            "expert_components": o.stats.expert_components,
            "weight_bytes": o.stats.weight_bytes,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!(
        "task {} (stage {}, {} outputs): session created in {:.1} µs, arena {} bytes",
        crate::util::printable(task.name),
        task.stage,
        task.outputs,
        o.session.as_secs_f64() * 1e6,
        task.arena_bytes
    );
    for (i, (out, s)) in o.outputs.iter().zip(&samples).enumerate() {
        let label = s.label.map_or_else(String::new, |l| format!("  label {l}"));
        outln!(
            "sample {i}: argmax {}{label}  outputs {}",
            argmaxes[i],
            list(out)
        );
    }
    if !labelled.is_empty() {
        outln!(
            "accuracy: {correct}/{} = {:.2}%",
            labelled.len(),
            100.0 * correct as f64 / labelled.len() as f64
        );
    }
    outln!(
        "timing: {} runs, mean {:.1} µs, min {:.1} µs; per run {} ops, {} expert components, {} weight bytes read",
        o.runs,
        o.mean_us(),
        o.min_us(),
        o.stats.ops,
        o.stats.expert_components,
        o.stats.weight_bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpath_checkpoint::random::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};

    /// `--target cuda` either runs (a GPU is there) and agrees with the CPU,
    /// or fails with the backend's reason, never a panic.
    #[test]
    fn cuda_target_runs_or_says_why() {
        let ck = random_checkpoint(&RandomSpec::small(32, 2, 4, 2, 1), 5);
        let bytes = taskpath_pack::pack(&ck, &Default::default()).unwrap();
        let arena = AlignedArena::from_bytes(&bytes);
        let model = Model::from_bytes(arena.as_slice()).unwrap();
        let task = model.task(0).unwrap();
        let sample = Sample {
            inputs: random_inputs(&ck.config, 0, &mut SplitMix64::new(2)),
            label: None,
            logits: None,
        };
        let samples = [sample];
        let cpu = run_samples_on(&model, &task, &samples, 1, Target::Cpu).unwrap();
        match run_samples_on(&model, &task, &samples, 1, Target::Cuda) {
            Ok(o) => {
                for (a, b) in o.outputs[0].iter().zip(&cpu.outputs[0]) {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("--target cuda here: {msg}");
                assert!(
                    msg.contains("CUDA is not available")
                        || msg.contains("without the `cuda` feature"),
                    "{msg}"
                );
            }
        }
    }
}
