//! `taskpath run`: one task over inputs from JSON, a dataset file or `.npy` files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use taskpath_checkpoint::{Dataset, Sample};
use taskpath_runtime::{AlignedArena, Model, RunStats, Session, TaskInfo};

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
    /// Runs per sample, for timing.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print one JSON object (outputs, argmax, timing) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where to run: the CPU path, or the CUDA backend (errors with the
    /// reason on a machine without a usable GPU).
    #[arg(long, value_enum, default_value_t = Target::Cpu)]
    pub target: Target,
}

/// Where `run` and `eval` execute a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The CPU path (the reference).
    #[default]
    Cpu,
    /// The CUDA backend (taskpath-cuda).
    Cuda,
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
            let a = npy::load(p)?;
            let ok = a.shape == [*l, *f] || a.shape == [l * f];
            ensure!(
                ok,
                "{} for modality {name}: shape {:?}, expected {l} tokens x {f} features (shape [{l}, {f}] or [{}])",
                p.display(),
                a.shape,
                l * f
            );
            Ok(a.data)
        })
        .collect()
}

fn number(v: &Value, what: &dyn Fn() -> String) -> Result<f32> {
    let x = v
        .as_f64()
        .with_context(|| format!("{}: {v} is not a number", what()))?;
    ensure!(x.is_finite(), "{}: {x} is not finite", what());
    Ok(x as f32)
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
fn named_inputs(v: &Value, shapes: &[(String, usize, usize)], task: &str) -> Result<Vec<Vec<f32>>> {
    let map = v.get("inputs").and_then(Value::as_object).context(
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

fn load_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
    let v = load_json(path)?;
    if v.get("format").is_some() || v.get("samples").is_some() {
        let ds = Dataset::from_json(&v.to_string())
            .with_context(|| format!("reading dataset {}", path.display()))?;
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
    let inputs = named_inputs(&v, &shapes, info.name)
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

/// Outputs and timing of running samples through one session.
#[derive(Debug)]
pub struct Outcome {
    /// Per sample, the logits (of its last repeat).
    pub outputs: Vec<Vec<f32>>,
    /// Session creation (checks its program and path checksums).
    pub session: Duration,
    /// Every run's wall time.
    pub runs: Vec<Duration>,
    /// Stats of the last run.
    pub stats: RunStats,
}

impl Outcome {
    /// Mean run time in microseconds.
    pub fn mean_us(&self) -> f64 {
        let n = self.runs.len().max(1) as f64;
        self.runs.iter().map(Duration::as_secs_f64).sum::<f64>() / n * 1e6
    }
    /// Fastest run in microseconds.
    pub fn min_us(&self) -> f64 {
        self.runs
            .iter()
            .min()
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
}

/// Runs every sample `repeat` times through one session of `task`.
pub fn run_samples(
    model: &Model<'_>,
    task: &TaskInfo<'_>,
    samples: &[Sample],
    repeat: usize,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut arena = AlignedArena::new(task.arena_bytes);
    let mut session = Session::new(model, task.index, arena.as_mut_slice())
        .with_context(|| format!("creating a session for task {}", task.name))?;
    let session_time = started.elapsed();
    let shapes = task_shapes(model, task);
    let mut outputs = Vec::with_capacity(samples.len());
    let mut runs = Vec::with_capacity(samples.len() * repeat);
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
            stats = session
                .run(&refs, &mut out)
                .with_context(|| format!("running sample {i} of task {}", task.name))?;
            runs.push(t.elapsed());
        }
        outputs.push(out);
    }
    Ok(Outcome {
        outputs,
        session: session_time,
        runs,
        stats,
    })
}

/// [`run_samples`] on `target`.
pub fn run_samples_on(
    model: &Model<'_>,
    task: &TaskInfo<'_>,
    samples: &[Sample],
    repeat: usize,
    target: Target,
) -> Result<Outcome> {
    match target {
        Target::Cpu => run_samples(model, task, samples, repeat),
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

/// Runs every sample `repeat` times through `backend` (same timing rules as
/// [`run_samples`]).
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
    let (mut outputs, mut runs) = (Vec::new(), Vec::new());
    let mut stats = RunStats::default();
    for (i, s) in samples.iter().enumerate() {
        let refs: Vec<&[f32]> = s.inputs.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; task.outputs];
        for _ in 0..repeat.max(1) {
            let t = Instant::now();
            stats = backend
                .execute(&mut handle, &refs, &mut out)
                .with_context(|| format!("running sample {i} of task {}", task.name))?;
            runs.push(t.elapsed());
        }
        outputs.push(out);
    }
    Ok(Outcome {
        outputs,
        session,
        runs,
        stats,
    })
}

fn list(v: &[f32]) -> String {
    let s: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
    format!("[{}]", s.join(", "))
}

/// Runs `run`.
pub fn main(a: &RunArgs) -> Result<()> {
    ensure!(a.repeat >= 1, "--repeat must be at least 1");
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let (task, samples) = load_inputs(&model, a.task.as_deref(), &a.inputs)?;
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
            "runs": o.runs.len(),
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
        task.name,
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
        o.runs.len(),
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
