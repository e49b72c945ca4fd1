//! `taskpath profile`: a task (or several) over many inputs, traced and
//! timed; writes a Chrome trace, a summary and plots.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use taskpath_checkpoint::{Dataset, Sample};
use taskpath_profile::chrome::{chrome_json, Recorder, TraceMeta};
use taskpath_profile::driver::{activations, expert_blobs, op_breakdown, profile_task, Options};
use taskpath_profile::energy::{self, Meter, MeterSpec};
use taskpath_profile::summary::{task_row, ActivationRow, Summary};
use taskpath_profile::{pagein, plot};
use taskpath_runtime::{MappedModel, Model, TaskInfo};

use crate::util::{config_of, modality_name, open_model, outln, task_by_name, write_output};
use crate::DeltaArgs;

/// Most timed (or untimed) runs per task: each keeps one latency.
pub const MAX_RUNS: usize = 1_000_000;
/// Most traced runs per task: each keeps every op's events in memory.
pub const MAX_TRACE_RUNS: usize = 100_000;

/// Arguments of `profile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Tasks to profile (comma-separated); default: every task with inputs
    /// when --inputs is a directory.
    #[arg(long, value_delimiter = ',', value_name = "T")]
    pub task: Vec<String>,
    /// Inputs: a taskpath-dataset/1 file, a `{"inputs": {...}}` JSON file,
    /// or a directory of `{TASK}.test.json` datasets.
    #[arg(long, value_name = "FILE|DIR")]
    pub inputs: Option<PathBuf>,
    /// Language-model packages: route a text corpus instead and plot the
    /// domain x expert heat map of every layer (with --split).
    #[command(flatten)]
    pub corpus: crate::lm::CorpusArgs,
    /// Language models: the corpus split to route.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Untimed runs per task before the timed ones (0..=1000000).
    #[arg(long, default_value_t = 20, value_parser = crate::util::within(0..=MAX_RUNS))]
    pub warmup: usize,
    /// Timed runs per task (cycling over the inputs; 1..=1000000).
    #[arg(long, default_value_t = 200, value_parser = crate::util::within(1..=MAX_RUNS))]
    pub runs: usize,
    /// Traced runs per task (cycling over the inputs; 1..=100000); default:
    /// each input once.
    #[arg(long, value_name = "N", value_parser = crate::util::within(1..=MAX_TRACE_RUNS))]
    pub trace_runs: Option<usize>,
    /// Residency cache budget in bytes (reports the hit rate; at most the
    /// package's size, which holds every expert); default: none.
    #[arg(long, value_name = "BYTES", value_parser = crate::util::within(1..=usize::MAX))]
    pub budget: Option<usize>,
    /// Skip the path checksums at session creation (so the first inference
    /// pays the page-ins).
    #[arg(long)]
    pub no_verify: bool,
    /// Drop the package from the page cache before opening it, so page-ins
    /// are real (POSIX_FADV_DONTNEED).
    #[arg(long)]
    pub cold: bool,
    /// Energy meter: auto, none, rapl[:POWERCAP_DIR], ina3221[:SYSFS_ROOT],
    /// tegrastats:LOGFILE.
    #[arg(long, default_value = "auto")]
    pub meter: String,
    /// INA3221 / tegrastats rail to integrate (default: the board input rail).
    #[arg(long)]
    pub rail: Option<String>,
    /// tegrastats --interval in ms (1..=3600000; default: the log's timestamps).
    #[arg(long, value_name = "MS", value_parser = crate::util::within(1..=3_600_000u64))]
    pub interval_ms: Option<u64>,
    /// Output directory: trace.json, summary.md, summary.json, plots.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn numbers(v: &Value, out: &mut Vec<f32>, what: &str) -> Result<()> {
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| numbers(x, out, what)),
        Value::Number(n) => {
            let x = n.as_f64().context("number")?;
            ensure!(x.is_finite(), "{what}: {x} is not finite");
            out.push(x as f32);
            Ok(())
        }
        _ => bail!("{what}: {v} is not a number or an array of numbers"),
    }
}

/// `{"inputs": {"modality": [[...] per token] or flat}}` as one sample.
fn inputs_json(model: &Model<'_>, task: &TaskInfo<'_>, v: &Value, path: &Path) -> Result<Sample> {
    let map = v
        .get("inputs")
        .and_then(Value::as_object)
        .with_context(|| {
            format!(
                "{}: expected a taskpath-dataset/1 file or {{\"inputs\": {{\"MODALITY\": [...]}}}}",
                path.display()
            )
        })?;
    let mut inputs = Vec::new();
    for m in task.modalities() {
        let name = modality_name(model, m);
        let (_, l, f) = model.modality(m).unwrap_or(("", 0, 0));
        let v = map.get(&name).with_context(|| {
            format!(
                "{}: no input for modality {name} of task {}",
                path.display(),
                task.name
            )
        })?;
        let mut x = Vec::with_capacity(l * f);
        numbers(v, &mut x, &format!("{}: modality {name}", path.display()))?;
        ensure!(
            x.len() == l * f,
            "{}: modality {name} has {} values, expected {l} tokens x {f} features",
            path.display(),
            x.len()
        );
        inputs.push(x);
    }
    Ok(Sample {
        inputs,
        label: None,
        logits: None,
    })
}

/// The `(task, samples)` pairs to profile.
pub fn load_task_inputs<'a>(
    model: &Model<'a>,
    tasks: &[String],
    inputs: &Path,
) -> Result<Vec<(TaskInfo<'a>, Vec<Sample>)>> {
    let config = config_of(model)?;
    let dataset = |path: &Path, want: Option<&str>| -> Result<(TaskInfo<'a>, Vec<Sample>)> {
        let ds = Dataset::load(path)?;
        if let Some(t) = want {
            ensure!(
                ds.task == t,
                "{} holds samples of task {}, not {t}",
                path.display(),
                ds.task
            );
        }
        ds.validate_against(&config)
            .with_context(|| format!("checking {}", path.display()))?;
        Ok((task_by_name(model, &ds.task)?, ds.samples))
    };
    if inputs.is_dir() {
        let names: Vec<String> = if tasks.is_empty() {
            config.tasks.iter().map(|t| t.name.clone()).collect()
        } else {
            tasks.to_vec()
        };
        let mut out = Vec::new();
        for n in &names {
            task_by_name(model, n)?;
            let p = inputs.join(format!("{n}.test.json"));
            if p.is_file() {
                out.push(dataset(&p, Some(n))?);
            } else if !tasks.is_empty() {
                bail!("no inputs for task {n}: {} does not exist", p.display());
            }
        }
        ensure!(
            !out.is_empty(),
            "no {{TASK}}.test.json files in {}",
            inputs.display()
        );
        return Ok(out);
    }
    ensure!(
        inputs.is_file(),
        "--inputs {}: no such file or directory",
        inputs.display()
    );
    ensure!(
        tasks.len() <= 1,
        "--inputs FILE holds one task's inputs; give one --task (or a directory)"
    );
    let text =
        std::fs::read_to_string(inputs).with_context(|| format!("reading {}", inputs.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", inputs.display()))?;
    if v.get("samples").is_some() {
        return Ok(vec![dataset(inputs, tasks.first().map(String::as_str))?]);
    }
    let name = tasks
        .first()
        .context("--task is required with a {\"inputs\": ...} file")?;
    let task = task_by_name(model, name)?;
    let s = inputs_json(model, &task, &v, inputs)?;
    Ok(vec![(task, vec![s])])
}

/// What [`profile_to_dir`] wrote.
#[derive(Debug)]
pub struct Written {
    /// The summary.
    pub summary: Summary,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Profiles the tasks of `mapped` and writes trace.json, summary.md,
/// summary.json and the plots (PNG + SVG) into `out`.
#[allow(clippy::too_many_arguments)]
pub fn profile_to_dir(
    mapped: &MappedModel,
    label: &str,
    tasks: &[String],
    inputs: &Path,
    opts: &Options,
    meter: &mut Meter,
    out: &Path,
    progress: bool,
) -> Result<Written> {
    let model = mapped.model()?;
    let package = mapped.bytes(0).unwrap_or(&[]);
    let work = load_task_inputs(&model, tasks, inputs)?;
    let mut rec = Recorder::new();
    rec.set_expert_blobs(expert_blobs(&model));
    let total: usize = work
        .iter()
        .map(|(_, s)| opts.trace_runs.unwrap_or(s.len()).max(1) + opts.warmup + opts.runs)
        .sum();
    let bar = if progress {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} runs {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let io0 = pagein::proc_read_bytes();
    let mut profiles = Vec::new();
    for (lane, (task, samples)) in work.iter().enumerate() {
        bar.set_message(crate::util::printable(task.name).into_owned());
        let p = profile_task(
            &model,
            package,
            task,
            samples,
            lane as u32,
            opts,
            meter,
            &mut rec,
            &mut || bar.inc(1),
        )?;
        profiles.push(p);
    }
    bar.finish_and_clear();
    let io = match (io0, pagein::proc_read_bytes()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let lanes: Vec<String> = work.iter().map(|(t, _)| t.name.to_string()).collect();
    let modalities: Vec<String> = (0..model.modality_count())
        .map(|m| modality_name(&model, m))
        .collect();
    let trace = chrome_json(
        &rec,
        &TraceMeta {
            process: &format!("taskpath profile {label}"),
            lanes: &lanes,
            modalities: &modalities,
        },
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = Vec::new();
    let trace_path = out.join("trace.json");
    write_output(&trace_path, trace.as_bytes())?;
    files.push(trace_path);

    let experts = crate::util::expert_count(&model);
    let acts: Vec<ActivationRow> = activations(&rec, experts)
        .into_iter()
        .map(|((lane, m), (counts, routes))| ActivationRow {
            task: lanes[lane as usize].clone(),
            modality: modalities
                .get(m as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{m}")),
            routes,
            counts,
        })
        .collect();
    let (meter_name, meter_note) = match meter {
        Meter::Some(m) => (
            m.name().to_string(),
            profiles.iter().find_map(|p| p.energy_error.clone()),
        ),
        Meter::None(why) => (
            "no meter".to_string(),
            Some(format!("{why}; CPU time reported instead")),
        ),
    };
    let summary = Summary {
        model: label.to_string(),
        meter: meter_name,
        meter_note,
        tasks: profiles.iter().map(task_row).collect(),
        activations: acts,
        process_read_bytes: io,
    };
    let md = out.join("summary.md");
    write_output(&md, summary.markdown().as_bytes())?;
    files.push(md);
    let js = out.join("summary.json");
    write_output(&js, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    files.push(js);

    let lat: Vec<(String, Vec<f64>)> = profiles
        .iter()
        .map(|p| {
            (
                p.task.clone(),
                p.latencies_ns.iter().map(|&n| n as f64 / 1000.0).collect(),
            )
        })
        .collect();
    files.extend(plot::latency_histogram(out, &lat)?);
    let heat: Vec<(String, Vec<u64>, u64)> = summary
        .activations
        .iter()
        .map(|a| {
            (
                format!("{}/{}", a.task, a.modality),
                a.counts.clone(),
                a.routes,
            )
        })
        .collect();
    files.extend(plot::activation_heatmap(out, &heat)?);
    let ops: Vec<(String, _)> = profiles
        .iter()
        .map(|p| (p.task.clone(), op_breakdown(&rec, p.lane, p.traced)))
        .collect();
    files.extend(plot::op_breakdown(out, &ops)?);
    Ok(Written { summary, files })
}

/// The language-model profile: routes every domain of the corpus split and
/// writes `routes.md`, `routes.json` and one domain x expert heat map per
/// layer (`experts-<group>.{png,svg}`) into `out`.
pub fn profile_llm(
    model: &Model<'_>,
    corpus: &Path,
    a: &Args,
) -> Result<(crate::routes_llm::RouteReport, Vec<PathBuf>)> {
    ensure!(
        a.task.len() <= 1,
        "a language-model profile routes the corpus on one task; give at most one --task"
    );
    let texts = crate::lm::load_texts(model, corpus, &a.split, &a.corpus)?;
    let task = crate::lm::task_or_full(model, a.task.first().map(String::as_str))?;
    let r = crate::routes_llm::measure(model, &texts, task, a.corpus.jobs)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut files = Vec::new();
    let md = a.out.join("routes.md");
    write_output(&md, crate::routes_llm::markdown(&r).as_bytes())?;
    files.push(md);
    let js = a.out.join("routes.json");
    write_output(&js, serde_json::to_string_pretty(&r)?.as_bytes())?;
    files.push(js);
    for (g, name) in r.groups.iter().enumerate() {
        let caption = format!(
            "{name}: share of each domain's routing decisions ({} split, task {})",
            r.split, r.task
        );
        let stem = format!("experts-{}", name.replace(['.', '/'], "-"));
        files.extend(plot::heatmap(
            &a.out,
            &stem,
            &caption,
            &crate::routes_llm::heat_rows(&r, g),
        )?);
    }
    Ok((r, files))
}

/// Runs `profile`.
pub fn main(a: &Args) -> Result<()> {
    if let Some(dir) = &a.corpus.corpus {
        let mapped = open_model(&a.file, &a.deltas.deltas)?;
        let model = mapped.model()?;
        crate::lm::corpus_or_data(&model, Some(dir), a.inputs.as_deref(), "--inputs")?;
        let (r, files) = profile_llm(&model, dir, a)?;
        outln!("{}", crate::routes_llm::markdown(&r));
        for f in &files {
            outln!("wrote {}", f.display());
        }
        return Ok(());
    }
    let inputs = a
        .inputs
        .as_deref()
        .context("--inputs is required (--corpus CORPUS_DIR for a language model)")?;
    let spec = MeterSpec::parse(&a.meter, a.rail.as_deref(), a.interval_ms)?;
    let mut meter = energy::open(&spec)?;
    if a.cold && !pagein::drop_page_cache(&a.file) {
        bail!(
            "--cold: could not drop {} from the page cache",
            a.file.display()
        );
    }
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    crate::lm::corpus_or_data(&mapped.model()?, None, Some(inputs), "--inputs")?;
    if let Some(b) = a.budget {
        // The cache is allocated up front: a budget beyond the package would
        // only be memory that can never be used.
        crate::util::check_range("--budget", b, 1..=crate::util::chain_bytes(&mapped))?;
    }
    let opts = Options {
        warmup: a.warmup,
        runs: a.runs,
        trace_runs: a.trace_runs,
        budget: a.budget,
        verify: !a.no_verify,
    };
    let w = profile_to_dir(
        &mapped,
        &a.file.display().to_string(),
        &a.task,
        inputs,
        &opts,
        &mut meter,
        &a.out,
        !a.quiet,
    )?;
    outln!("{}", w.summary.markdown());
    for f in &w.files {
        outln!("wrote {}", f.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_flatten_nested_arrays_and_reject_other_values() {
        let mut v = Vec::new();
        numbers(&serde_json::json!([[1, 2.5], [3]]), &mut v, "x").unwrap();
        assert_eq!(v, [1.0, 2.5, 3.0]);
        let e = numbers(&serde_json::json!([[1, "a"]]), &mut v, "modality m").unwrap_err();
        assert!(e.to_string().contains("modality m"), "{e}");
    }
}
