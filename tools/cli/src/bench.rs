//! `taskpath bench`: a llama-bench style matrix of packages x tasks x
//! thread counts, repeated, with mean ± standard deviation.
//!
//! "Threads" is that many independent sessions (each with its own arena)
//! running concurrently on separate OS threads over the same mapped package:
//! a session is single-threaded, so threads measure throughput, not a
//! faster single inference. Packages, tasks and thread counts are
//! interleaved inside each repetition, so slow drift of a shared machine
//! hits every configuration alike and ratios from one run are fair.
//!
//! Timed: `Session::run` calls only (inputs are decoded and sessions created
//! before the clock starts). Not timed: opening, validation, session creation.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use taskpath_checkpoint::Sample;
use taskpath_format::Op;
use taskpath_profile::chrome::Recorder;
use taskpath_profile::stats::{mean, median, stddev};
use taskpath_runtime::{AlignedArena, MappedModel, Model, NoTrace, Session, TaskInfo, Tracer};

use crate::profile::load_task_inputs;
use crate::util::{open_model, outln, write_output};

/// Most concurrent sessions: each is an OS thread with its own arena.
pub const MAX_THREADS: usize = 1024;
/// Most inferences (or tokens) per session and repetition.
pub const MAX_RUNS: usize = 1 << 20;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Packages (.tpk) to compare; ratios are against the first.
    #[arg(value_name = "FILE.tpk", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Directory of `{TASK}.test.json` inputs (or one dataset file).
    #[arg(long, default_value = "models/reference/data", value_name = "DIR")]
    pub inputs: PathBuf,
    /// Tasks (comma-separated); default: every task with inputs.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tasks: Vec<String>,
    /// Concurrent sessions (comma-separated), one OS thread each (1..=1024;
    /// language models: threads per session, 1..=16).
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = crate::util::within(1..=MAX_THREADS))]
    pub threads: Vec<usize>,
    /// Repetitions per configuration (mean ± stddev across them; 1..=10000).
    #[arg(short = 'r', long, default_value_t = 5, value_parser = crate::util::within(1..=10_000usize))]
    pub repetitions: usize,
    /// Inferences per session per repetition (cycling over the inputs);
    /// default 100. Language-model packages: tokens of the `tg` row
    /// (default 128; 0 skips it). At most 1048576.
    #[arg(short = 'n', long, value_parser = crate::util::within(0..=MAX_RUNS))]
    pub runs: Option<usize>,
    /// Language-model packages: prompt tokens of the `pp` row (default
    /// 512; 0 skips it; at most 1048576).
    #[arg(short = 'p', long = "n-prompt", value_parser = crate::util::within(0..=MAX_RUNS))]
    pub n_prompt: Option<usize>,
    /// Untimed inferences per session before each timed repetition
    /// (0..=1048576).
    #[arg(long, default_value_t = 10, value_parser = crate::util::within(0..=MAX_RUNS))]
    pub warmup: usize,
    /// Output formats printed to stdout (comma-separated): md, csv, json.
    #[arg(short = 'o', long, value_delimiter = ',', default_value = "md")]
    pub output: Vec<String>,
    /// Also write bench.md, bench.csv and bench.json here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Instead of the matrix: tracing overhead, one thread, per package and
    /// task: `Session::run` vs `run_traced` with a disabled tracer, with a
    /// `dyn Tracer` that ignores events, and with the recording tracer,
    /// interleaved per inference; latency = median per repetition.
    #[arg(long)]
    pub tracing: bool,
    /// Language models: hold routed experts in an anonymous-memory cache of
    /// this many bytes (or N% of each package's expert bytes), filled from
    /// the package on a miss; the table gains the decode's hit rate.
    #[arg(long, value_name = "BYTES|N%")]
    pub expert_budget: Option<String>,
    /// Language models: expert readers to compare (comma-separated: mmap,
    /// pread), each its own rows, interleaved in one run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mmap")]
    pub reader: Vec<crate::stream::ReaderKind>,
    /// Language models: speculative prefetch settings to compare
    /// (comma-separated experts per token; 0: off), each its own rows,
    /// interleaved in one run. Default: the model's top-k with
    /// --expert-budget, else 0.
    #[arg(long, value_delimiter = ',', value_name = "K,...", value_parser = crate::util::within(0..=256usize))]
    pub prefetch_topk: Vec<usize>,
}

/// One configuration's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Package label (file name).
    pub package: String,
    /// Task.
    pub task: String,
    /// Concurrent sessions, or the tracing mode with `--tracing`.
    pub threads: usize,
    /// Tracing mode (`--tracing` only).
    pub mode: Option<String>,
    /// Mean latency per inference in each repetition, µs.
    pub latency_us: Vec<f64>,
    /// Inferences per second (all threads) in each repetition.
    pub throughput: Vec<f64>,
}

impl Row {
    fn lat(&self) -> (f64, f64) {
        (mean(&self.latency_us), stddev(&self.latency_us))
    }
    fn tput(&self) -> (f64, f64) {
        (mean(&self.throughput), stddev(&self.throughput))
    }
}

struct Work<'m> {
    label: String,
    model: Model<'m>,
    tasks: Vec<(TaskInfo<'m>, Vec<Sample>)>,
}

/// A tracer that records only when switched on: the cost of tracing
/// compiled in but off (one predictable branch per hook).
struct Toggle {
    on: bool,
    rec: Recorder,
}

impl Tracer for Toggle {
    #[inline]
    fn op_begin(&mut self, index: u32, op: &Op) {
        if self.on {
            self.rec.op_begin(index, op);
        }
    }
    #[inline]
    fn op_end(&mut self, index: u32, op: &Op) {
        if self.on {
            self.rec.op_end(index, op);
        }
    }
    #[inline]
    fn blob_read(&mut self, blob: u32, bytes: usize) {
        if self.on {
            self.rec.blob_read(blob, bytes);
        }
    }
    #[inline]
    fn expert_fetch(&mut self, blob: u32) {
        if self.on {
            self.rec.expert_fetch(blob);
        }
    }
    #[inline]
    fn route(&mut self, modality: u32, experts: &[u32], gates: &[f32]) {
        if self.on {
            self.rec.route(modality, experts, gates);
        }
    }
    #[inline]
    fn wants_costly_events(&self) -> bool {
        self.on
    }
}

/// Tracing modes of `--tracing`, in table order.
const MODES: [&str; 4] = [
    "run (no tracer)",
    "run_traced, tracer off",
    "run_traced, &mut dyn Tracer = NoTrace",
    "run_traced, recording",
];

fn refs(samples: &[Sample]) -> Vec<Vec<&[f32]>> {
    samples
        .iter()
        .map(|s| s.inputs.iter().map(Vec::as_slice).collect())
        .collect()
}

/// A start line for `parties` threads that, unlike `std::sync::Barrier`, can
/// be called off: a thread that fails (or panics, or is never spawned)
/// before reaching it releases everyone instead of leaving them waiting.
struct Gate {
    /// (arrived, called off)
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    parties: usize,
}

impl Gate {
    fn new(parties: usize) -> Self {
        Self {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
            parties,
        }
    }

    /// Waits until every party arrived (true) or the start is called off
    /// (false).
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 += 1;
        if s.0 >= self.parties {
            self.cv.notify_all();
        }
        let s = self
            .cv
            .wait_while(s, |s| s.0 < self.parties && !s.1)
            .unwrap_or_else(PoisonError::into_inner);
        !s.1
    }

    fn call_off(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.cv.notify_all();
    }

    /// A ticket that calls the start off when dropped before [`Ticket::wait`]
    /// (an early return or a panic of its thread).
    fn ticket(&self) -> Ticket<'_> {
        Ticket(self, false)
    }
}

struct Ticket<'a>(&'a Gate, bool);

impl Ticket<'_> {
    fn wait(&mut self) -> bool {
        self.1 = true;
        self.0.wait()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.call_off();
        }
    }
}

/// One repetition of `threads` concurrent sessions: (mean latency µs, inferences/s).
fn rep_threads(
    model: &Model<'_>,
    task: &TaskInfo<'_>,
    samples: &[Sample],
    threads: usize,
    runs: usize,
    warmup: usize,
) -> Result<(f64, f64)> {
    let inputs = refs(samples);
    let gate = Gate::new(threads + 1);
    let (busy, wall) = std::thread::scope(|s| -> Result<(Duration, Duration)> {
        let mut main_ticket = gate.ticket();
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let (inputs, gate) = (&inputs, &gate);
            let spawned = std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn_scoped(s, move || -> Result<Option<Duration>> {
                    let mut ticket = gate.ticket();
                    let mut arena = AlignedArena::new(task.arena_bytes);
                    let mut session = Session::new(model, task.index, arena.as_mut_slice())?;
                    let mut out = vec![0f32; task.outputs];
                    for r in 0..warmup {
                        session.run(&inputs[(r + t) % inputs.len()], &mut out)?;
                    }
                    if !ticket.wait() {
                        return Ok(None);
                    }
                    let t0 = Instant::now();
                    for r in 0..runs {
                        session.run(&inputs[(r + t) % inputs.len()], &mut out)?;
                    }
                    Ok(Some(t0.elapsed()))
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Dropping the ticket unblocks the threads already started;
                    // the scope then joins them.
                    drop(main_ticket);
                    return Err(e)
                        .with_context(|| format!("starting bench thread {} of {threads}", t + 1));
                }
            }
        }
        let started = main_ticket.wait();
        let t0 = Instant::now();
        let mut busy = Duration::ZERO;
        let mut first_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(Some(d))) => busy += d,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(anyhow::anyhow!("a bench thread panicked"));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        ensure!(started, "a bench thread stopped before the timed runs");
        Ok((busy, t0.elapsed()))
    })?;
    let n = (threads * runs) as f64;
    Ok((busy.as_secs_f64() * 1e6 / n, n / wall.as_secs_f64()))
}

/// One repetition of every tracing mode on this thread, interleaved per
/// inference on one session (each input runs once per mode, the mode order
/// rotating from input to input), so drift and cache state hit every mode
/// alike: per mode, (median latency µs, inferences/s from the summed times).
fn rep_modes(
    model: &Model<'_>,
    task: &TaskInfo<'_>,
    samples: &[Sample],
    runs: usize,
    warmup: usize,
) -> Result<Vec<(f64, f64)>> {
    let inputs = refs(samples);
    let mut arena = AlignedArena::new(task.arena_bytes);
    let mut session = Session::new(model, task.index, arena.as_mut_slice())?;
    let mut out = vec![0f32; task.outputs];
    let mut off = Toggle {
        on: false,
        rec: Recorder::new(),
    };
    let mut on = Toggle {
        on: true,
        rec: Recorder::new(),
    };
    let mut nothing = NoTrace;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); MODES.len()];
    for r in 0..warmup + runs {
        let x = &inputs[r % inputs.len()];
        // The first run on a new input pays for bringing it in: rotate which
        // mode goes first so every mode takes every position equally often.
        for k in 0..MODES.len() {
            let mode = (k + r) % MODES.len();
            let t0 = Instant::now();
            match mode {
                0 => session.run(x, &mut out)?,
                1 => session.run_traced(x, &mut out, &mut off)?,
                2 => {
                    let mut d: &mut dyn Tracer = &mut nothing;
                    session.run_traced(x, &mut out, &mut d)?
                }
                _ => {
                    on.rec.begin_inference(0, r);
                    let s = session.run_traced(x, &mut out, &mut on)?;
                    on.rec.end_inference();
                    s
                }
            };
            let dt = t0.elapsed().as_secs_f64() * 1e6;
            if r >= warmup {
                times[mode].push(dt);
            }
        }
        if on.rec.spans.len() > 1 << 20 {
            // Keep the recorder's memory bounded over long runs.
            on.rec = Recorder::new();
        }
    }
    Ok(times
        .iter()
        .map(|t| (median(t), t.len() as f64 / (t.iter().sum::<f64>() / 1e6)))
        .collect())
}

fn label(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn fmt_pm(m: f64, s: f64, digits: usize) -> String {
    format!("{m:.digits$} ± {s:.digits$}")
}

/// The rows as a Markdown table with ratios against the first package (or,
/// with `--tracing`, against `run (no tracer)`).
pub fn markdown(rows: &[Row], tracing: bool) -> String {
    let mut s = if tracing {
        String::from("| package | task | mode | latency µs | vs no tracer (median) |\n|---|---|---|---:|---:|\n")
    } else {
        String::from("| package | task | threads | latency µs | inferences/s | latency vs first | throughput vs first |\n|---|---|---:|---:|---:|---:|---:|\n")
    };
    for r in rows {
        let (lm, ls) = r.lat();
        let (tm, ts) = r.tput();
        if tracing {
            let base = rows.iter().find(|b| {
                b.package == r.package && b.task == r.task && b.mode.as_deref() == Some(MODES[0])
            });
            let ratio = base.map_or("-".into(), |b| {
                format!("{:.4}", median(&r.latency_us) / median(&b.latency_us))
            });
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.package,
                r.task,
                r.mode.as_deref().unwrap_or(""),
                fmt_pm(lm, ls, 1),
                ratio
            ));
        } else {
            let base = rows
                .iter()
                .find(|b| b.task == r.task && b.threads == r.threads);
            let (lr, tr) = base.map_or(("-".into(), "-".into()), |b| {
                (
                    format!("{:.3}", lm / b.lat().0),
                    format!("{:.3}", tm / b.tput().0),
                )
            });
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {lr} | {tr} |\n",
                r.package,
                r.task,
                r.threads,
                fmt_pm(lm, ls, 1),
                fmt_pm(tm, ts, 0)
            ));
        }
    }
    s
}

/// The rows as CSV (mean and stddev columns).
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "package,task,threads,mode,reps,latency_us_mean,latency_us_stddev,throughput_mean,throughput_stddev\n",
    );
    for r in rows {
        let (lm, ls) = r.lat();
        let (tm, ts) = r.tput();
        s.push_str(&format!(
            "{},{},{},{},{},{lm:.3},{ls:.3},{tm:.1},{ts:.1}\n",
            r.package,
            r.task,
            r.threads,
            r.mode.as_deref().unwrap_or(""),
            r.latency_us.len()
        ));
    }
    s
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "commit": commit,
        "unix_time": secs,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Runs `bench`.
pub fn main(a: &Args) -> Result<()> {
    ensure!(a.repetitions >= 1, "-r/--repetitions must be at least 1");
    ensure!(
        a.threads.iter().all(|&t| t >= 1),
        "--threads: every count must be at least 1"
    );
    for o in &a.output {
        if !matches!(o.as_str(), "md" | "csv" | "json") {
            bail!("-o/--output {o:?}: expected md, csv or json");
        }
    }
    let mapped: Vec<MappedModel> = a
        .files
        .iter()
        .map(|f| open_model(f, &[]))
        .collect::<Result<_>>()?;
    let llm: Vec<bool> = mapped
        .iter()
        .map(|m| m.model().map(|m| m.arch() == taskpath_pack::llm::LLM_ARCH))
        .collect::<Result<_, _>>()?;
    if llm.iter().any(|&l| l) {
        ensure!(
            llm.iter().all(|&l| l),
            "bench compares packages of one kind: do not mix language models with other packages"
        );
        let (pp, tg) = (a.n_prompt.unwrap_or(512), a.runs.unwrap_or(128));
        ensure!(pp + tg > 0, "-p and -n are both 0: nothing to measure");
        let labels: Vec<String> = a.files.iter().map(|f| label(f)).collect();
        let report = crate::bench_llm::run(
            &mapped,
            &labels,
            &a.threads,
            (pp, tg),
            a.repetitions,
            crate::bench_llm::IoSettings {
                budget: a.expert_budget.as_deref(),
                readers: &a.reader,
                topk: &a.prefetch_topk,
                paths: &a.files,
            },
        )?;
        crate::bench_llm::print(&report, &a.output)?;
        if let Some(dir) = &a.out {
            write_output(
                &dir.join("bench.md"),
                crate::bench_llm::markdown(&report).as_bytes(),
            )?;
            write_output(
                &dir.join("bench.csv"),
                crate::bench_llm::csv(&report).as_bytes(),
            )?;
            write_output(
                &dir.join("bench.json"),
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
        }
        return Ok(());
    }
    ensure!(a.n_prompt.is_none(), "-p is for language-model packages");
    let runs = a.runs.unwrap_or(100);
    ensure!(runs >= 1, "-n/--runs must be at least 1");
    let work: Vec<Work<'_>> = mapped
        .iter()
        .zip(&a.files)
        .map(|(m, f)| -> Result<Work<'_>> {
            let model = m.model()?;
            let tasks = load_task_inputs(&model, &a.tasks, &a.inputs)
                .with_context(|| format!("inputs for {}", f.display()))?;
            Ok(Work {
                label: label(f),
                model,
                tasks,
            })
        })
        .collect::<Result<_>>()?;
    let mut rows: Vec<Row> = Vec::new();
    let configs: Vec<(usize, usize, usize)> = work
        .iter()
        .enumerate()
        .flat_map(|(p, w)| {
            let variants: Vec<usize> = if a.tracing {
                (0..MODES.len()).collect()
            } else {
                a.threads.clone()
            };
            (0..w.tasks.len())
                .flat_map(move |t| variants.clone().into_iter().map(move |v| (p, t, v)))
        })
        .collect();
    for &(p, t, v) in &configs {
        rows.push(Row {
            package: work[p].label.clone(),
            task: work[p].tasks[t].0.name.to_string(),
            threads: if a.tracing { 1 } else { v },
            mode: a.tracing.then(|| MODES[v].to_string()),
            latency_us: Vec::new(),
            throughput: Vec::new(),
        });
    }
    let bar = indicatif::ProgressBar::new((configs.len() * a.repetitions) as u64);
    for _ in 0..a.repetitions {
        if a.tracing {
            // Rows come in groups of MODES.len() per (package, task).
            for (group, cfg) in rows
                .chunks_mut(MODES.len())
                .zip(configs.chunks(MODES.len()))
            {
                let (p, t, _) = cfg[0];
                let (task, samples) = &work[p].tasks[t];
                let res = rep_modes(&work[p].model, task, samples, runs, a.warmup)?;
                for (row, (lat, tput)) in group.iter_mut().zip(res) {
                    row.latency_us.push(lat);
                    row.throughput.push(tput);
                }
                bar.inc(MODES.len() as u64);
            }
            continue;
        }
        for (row, &(p, t, v)) in rows.iter_mut().zip(&configs) {
            let (task, samples) = &work[p].tasks[t];
            let (lat, tput) = rep_threads(&work[p].model, task, samples, v, runs, a.warmup)?;
            row.latency_us.push(lat);
            row.throughput.push(tput);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let md = markdown(&rows, a.tracing);
    let cs = csv(&rows);
    let js = serde_json::to_string_pretty(&serde_json::json!({
        "machine": machine(),
        "params": {
            "files": a.files, "tasks": a.tasks, "threads": a.threads,
            "repetitions": a.repetitions, "runs": runs, "warmup": a.warmup,
            "tracing": a.tracing, "inputs": a.inputs,
        },
        "rows": rows,
    }))?;
    for o in &a.output {
        match o.as_str() {
            "md" => outln!("{md}"),
            "csv" => outln!("{cs}"),
            _ => outln!("{js}"),
        }
    }
    if let Some(dir) = &a.out {
        write_output(&dir.join("bench.md"), md.as_bytes())?;
        write_output(&dir.join("bench.csv"), cs.as_bytes())?;
        write_output(&dir.join("bench.json"), js.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(package: &str, threads: usize, lat: &[f64], tput: &[f64]) -> Row {
        Row {
            package: package.into(),
            task: "T".into(),
            threads,
            mode: None,
            latency_us: lat.to_vec(),
            throughput: tput.to_vec(),
        }
    }

    #[test]
    fn ratios_are_against_the_first_package_at_the_same_thread_count() {
        let rows = [
            row("f32.tpk", 1, &[100.0, 110.0], &[10_000.0, 9_000.0]),
            row("f32.tpk", 2, &[120.0, 120.0], &[16_000.0, 16_000.0]),
            row("i4.tpk", 1, &[84.0, 84.0], &[12_000.0, 12_000.0]),
            row("i4.tpk", 2, &[60.0, 60.0], &[32_000.0, 32_000.0]),
        ];
        let md = markdown(&rows, false);
        let lines: Vec<&str> = md.lines().collect();
        // Means 105 and 84: 84 / 105 = 0.8; throughput 12000 / 9500 = 1.263.
        assert!(lines[4].ends_with("| 0.800 | 1.263 |"), "{}", lines[4]);
        // Two threads: 60 / 120 = 0.5 and 32000 / 16000 = 2.
        assert!(lines[5].ends_with("| 0.500 | 2.000 |"), "{}", lines[5]);
        // 100 and 110: sample stddev = 7.07.
        assert!(lines[2].contains("105.0 ± 7.1"), "{}", lines[2]);
        let csv = csv(&rows);
        assert_eq!(
            csv.lines().nth(1),
            Some("f32.tpk,T,1,,2,105.000,7.071,9500.0,707.1")
        );
    }

    #[test]
    fn tracing_rows_compare_medians_with_the_untraced_run() {
        let mut a = row("m.tpk", 1, &[100.0, 200.0, 101.0], &[1.0; 3]);
        a.mode = Some(MODES[0].into());
        let mut b = row("m.tpk", 1, &[103.0, 90.0, 150.0], &[1.0; 3]);
        b.mode = Some(MODES[3].into());
        let md = markdown(&[a, b], true);
        // Medians 101 and 103.
        assert!(md.lines().nth(3).unwrap().ends_with("| 1.0198 |"), "{md}");
    }
}
