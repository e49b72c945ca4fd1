//! `taskpath-flame`: trains the reference model and its baselines, exports
//! checkpoints and evaluation fixtures. See docs/TRAINING.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use taskpath_checkpoint::{write_atomic, Gating};
use taskpath_flame::data;
use taskpath_flame::export;
use taskpath_flame::train::{self, Metrics, TrainConfig};

const USAGE: &str = "usage:
  taskpath-flame train     [--out DIR] [--seed N] [--experts N] [--gating laplace|softmax]
                           [--epochs N] [--recover-epochs N] [--min-steps N] [--patience-steps N]
                           [--final-only] [--no-fixtures] [--quiet]
  taskpath-flame joint     [--out DIR] [--seed N] [--experts N] [--quiet]   baseline (b)
  taskpath-flame naive     [--out DIR] [--seed N] [--experts N] [--quiet]   baseline (c)
  taskpath-flame dense     [--out DIR] [--seed N] [--hidden N] [--quiet]    baseline (d)
  taskpath-flame seeds     [--runs N] [--seed N] [--quiet]                   continual vs naive over N seeds
  taskpath-flame split     [--seed N]                                       rewrite models/data/splits.json
options: --data DIR (default models/data); --out defaults to models/reference;
  --lr X, --weight-decay X, --batch N override the training defaults (docs/TRAINING.md)";

struct Args {
    cmd: String,
    out: PathBuf,
    data: PathBuf,
    tc: TrainConfig,
    final_only: bool,
    fixtures: bool,
    verbose: bool,
    hidden: usize,
    split_seed: u64,
    runs: usize,
}

fn parse() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().context(USAGE)?;
    if matches!(cmd.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let mut a = Args {
        cmd,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../reference"),
        data: data::default_data_dir(),
        tc: TrainConfig::default(),
        final_only: false,
        fixtures: true,
        verbose: true,
        hidden: 512,
        split_seed: 20261126,
        runs: 3,
    };
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--out" => a.out = PathBuf::from(val()?),
            "--data" => a.data = PathBuf::from(val()?),
            "--seed" => {
                let s: u64 = val()?.parse()?;
                a.tc.seed = s;
                a.split_seed = s;
            }
            "--experts" => a.tc.experts = val()?.parse()?,
            "--epochs" => a.tc.max_epochs = val()?.parse()?,
            "--recover-epochs" => a.tc.recover_epochs = val()?.parse()?,
            "--min-steps" => a.tc.min_steps = val()?.parse()?,
            "--patience-steps" => a.tc.patience_steps = val()?.parse()?,
            "--lr" => a.tc.lr = val()?.parse()?,
            "--weight-decay" => a.tc.weight_decay = val()?.parse()?,
            "--batch" => a.tc.batch = val()?.parse()?,
            "--hidden" => a.hidden = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--gating" => {
                a.tc.gating = match val()?.as_str() {
                    "laplace" => Gating::Laplace,
                    "softmax" => Gating::Softmax,
                    g => bail!("unknown gating {g}"),
                }
            }
            "--final-only" => a.final_only = true,
            "--no-fixtures" => a.fixtures = false,
            "--quiet" => a.verbose = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            f => bail!("unknown option {f}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn print_metrics(prefix: &str, ms: &[Metrics]) {
    for m in ms {
        println!(
            "{prefix}{:<13} acc {:.4}  balanced acc {:.4}  (n={})",
            m.task, m.accuracy, m.balanced_accuracy, m.n
        );
    }
}

fn print_drift(ds: &[train::Drift]) {
    for d in ds {
        println!(
            "  drift of {:<13} max |logit change| {:.3e}, changed predictions {:.4}",
            d.task, d.max_abs_logit_change, d.changed_predictions
        );
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    write_atomic(path, (serde_json::to_string_pretty(v)? + "\n").as_bytes())
}

fn main() -> Result<()> {
    let a = parse()?;
    let start = Instant::now();
    if a.cmd == "split" {
        let s = data::make_splits(&a.data, a.split_seed)?;
        let p = a.data.join("splits.json");
        write_atomic(&p, (serde_json::to_string(&s)? + "\n").as_bytes())?;
        println!("wrote {}", p.display());
        return Ok(());
    }
    let tasks = data::load_tasks(&a.data)?;
    let tc = &a.tc;
    match a.cmd.as_str() {
        "train" => {
            let (model, reports) = train::train_continual(&tasks, tc, a.verbose, |s, m| {
                if a.final_only && s + 1 < 3 {
                    return Ok(());
                }
                let dir = a.out.join(format!("stage{}", s + 1));
                export::save(m, &dir)?;
                println!("exported {}", dir.display());
                Ok(())
            })?;
            let wall = start.elapsed().as_secs_f64();
            for r in &reports {
                println!(
                    "stage {} ({}): {} epochs (best {}), {:.1}s, max truncation error {:.4}",
                    r.stage,
                    r.tasks.join(", "),
                    r.log.epochs,
                    r.log.best_epoch,
                    r.log.seconds,
                    r.max_truncation_error
                );
                print_metrics("  before truncation  ", &r.before_truncation);
                print_metrics("  truncated          ", &r.truncated);
                if let Some(l) = &r.recovery {
                    println!(
                        "  recovery: {} epochs (best {}), {:.1}s",
                        l.epochs, l.best_epoch, l.seconds
                    );
                }
                print_metrics("  exported           ", &r.after);
                print_drift(&r.drift);
            }
            let mut counts = Vec::new();
            for s in 0..reports.len() {
                let dir = a.out.join(format!("stage{}", s + 1));
                if dir.join("model.json").exists() {
                    let ck = taskpath_checkpoint::Checkpoint::load(&dir)?;
                    let c = export::count_params(&ck);
                    println!(
                        "stage{} checkpoint: {} parameters; expert components per stage {:?} (full-rank pool {})",
                        s + 1,
                        c.total,
                        c.expert_components,
                        c.full_pool_per_stage
                    );
                    counts.push(json!({"stage": s + 1, "counts": c}));
                }
            }
            if a.fixtures && !a.final_only {
                export::write_fixtures(&model, &tasks, &a.out)?;
                println!("wrote fixtures under {}", a.out.display());
            }
            println!("total wall time {wall:.1}s");
            write_json(
                &a.out.join("train-report.json"),
                &json!({"command": std::env::args().collect::<Vec<_>>().join(" "),
                        "config": tc, "stages": reports, "param_counts": counts,
                        "wall_seconds": wall}),
            )?;
        }
        "joint" => {
            let (model, log) = train::train_joint(&tasks, tc, a.verbose)?;
            let full = train::evaluate(&model, &tasks)?;
            print_metrics("joint  ", &full);
            println!(
                "joint: {} epochs (best {}), {:.1}s",
                log.epochs, log.best_epoch, log.seconds
            );
            write_json(
                &a.out.join("baselines/joint.json"),
                &json!({"config": tc, "log": log, "test": full,
                        "wall_seconds": start.elapsed().as_secs_f64()}),
            )?;
        }
        "naive" => {
            let res = train::train_naive(&tasks, tc, a.verbose)?;
            for (s, r) in res.iter().enumerate() {
                println!(
                    "after stage {} ({} epochs, {:.1}s):",
                    s + 1,
                    r.log.epochs,
                    r.log.seconds
                );
                print_metrics("  naive  ", &r.test);
                print_drift(&r.drift);
            }
            let stages = serde_json::to_value(&res)?;
            write_json(
                &a.out.join("baselines/naive.json"),
                &json!({"config": tc, "stages": stages,
                        "wall_seconds": start.elapsed().as_secs_f64()}),
            )?;
        }
        "dense" => {
            let mut rows = Vec::new();
            for t in &tasks {
                let (model, log, m) = train::train_dense(t, tc, a.hidden, a.verbose)?;
                let params = model.params.count();
                print_metrics("dense  ", std::slice::from_ref(&m));
                println!(
                    "  {} parameters, {} epochs, {:.1}s",
                    params, log.epochs, log.seconds
                );
                rows.push(json!({"task": t.name, "parameters": params, "log": log, "test": m}));
            }
            write_json(
                &a.out.join("baselines/dense.json"),
                &json!({"config": tc, "ffn_hidden": a.hidden, "tasks": rows,
                        "wall_seconds": start.elapsed().as_secs_f64()}),
            )?;
        }
        "seeds" => seeds(&a, &tasks, start)?,
        c => bail!("unknown command {c}\n{USAGE}"),
    }
    println!("done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Continual model vs naive fine-tuning over `a.runs` seeds (initialisation and
/// batch order; the data split stays the committed one): one test set of 85
/// WDBC samples cannot tell a 1-point difference from seed noise.
fn seeds(a: &Args, tasks: &[data::TaskData], start: Instant) -> Result<()> {
    let mut runs = Vec::new();
    for i in 0..a.runs {
        let tc = TrainConfig {
            seed: a.tc.seed.wrapping_add(i as u64),
            ..a.tc.clone()
        };
        let t0 = Instant::now();
        let (_, reports) = train::train_continual(tasks, &tc, a.verbose, |_, _| Ok(()))?;
        let naive = train::train_naive(tasks, &tc, a.verbose)?;
        let cont = &reports.last().context("no stages")?.after;
        let nv = &naive.last().context("no stages")?.test;
        println!("seed {} ({:.0}s)", tc.seed, t0.elapsed().as_secs_f64());
        print_metrics("  continual  ", cont);
        print_metrics("  naive      ", nv);
        runs.push(json!({"seed": tc.seed, "continual": cont, "naive": nv,
                         "naive_after_stage1": naive[0].test,
                         "continual_before_truncation": reports[0].before_truncation}));
    }
    let mut summary = Vec::new();
    println!("task           continual mean (sd)   naive mean (sd)   [headline metric, after stage 3, {} seeds]", a.runs);
    for t in tasks {
        let col = |key: &str| -> Vec<f64> {
            runs.iter()
                .filter_map(|r| {
                    r[key]
                        .as_array()?
                        .iter()
                        .find(|m| m["task"] == t.name.as_str())
                        .map(|m| {
                            let k = if train::uses_balanced(&t.name) {
                                "balanced_accuracy"
                            } else {
                                "accuracy"
                            };
                            100.0 * m[k].as_f64().unwrap_or(f64::NAN)
                        })
                })
                .collect()
        };
        let (c, n) = (mean_sd(&col("continual")), mean_sd(&col("naive")));
        println!(
            "{:<14} {:6.2} ({:4.2})        {:6.2} ({:4.2})",
            t.name, c.0, c.1, n.0, n.1
        );
        summary.push(json!({"task": t.name, "stage": t.stage + 1,
                            "continual_mean": c.0, "continual_sd": c.1,
                            "naive_mean": n.0, "naive_sd": n.1}));
    }
    write_json(
        &a.out.join("baselines/seeds.json"),
        &json!({"command": std::env::args().collect::<Vec<_>>().join(" "),
                "config": a.tc, "runs": runs, "summary": summary,
                "wall_seconds": start.elapsed().as_secs_f64()}),
    )
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}
