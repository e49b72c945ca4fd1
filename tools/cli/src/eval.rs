//! `taskpath eval`: each task over its test set.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use taskpath_checkpoint::Dataset;
use taskpath_runtime::Model;

use crate::run::{run_samples_on, Target};
use crate::util::{argmax, config_of, open_model, outln, task_by_name, Table};
use crate::DeltaArgs;

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Directory of `{TASK}.test.json` datasets (FLAME packages).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Language-model packages: the text corpus to score.
    #[command(flatten)]
    pub corpus: crate::lm::CorpusArgs,
    /// Language models: which split of the corpus to score.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Language models: also run every domain's text on every domain's path.
    #[arg(long)]
    pub cross: bool,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Only these tasks (comma-separated); each must have a test set.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tasks: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where to run: the CPU path, or the CUDA backend.
    #[arg(long, value_enum, default_value_t = Target::Cpu)]
    pub target: Target,
}

/// Agreement of the runtime's outputs with the dataset's stored logits.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Samples with stored logits.
    pub samples: usize,
    /// Largest |runtime - stored|.
    pub max_abs: f64,
    /// Largest |runtime - stored| / max(1, |stored|).
    pub max_rel: f64,
    /// Share of those samples whose argmax agrees.
    pub predictions: f64,
}

/// One task's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    /// Task name.
    pub task: String,
    /// Its stage.
    pub stage: usize,
    /// Outputs (classes).
    pub outputs: usize,
    /// Samples run.
    pub samples: usize,
    /// Samples with a label.
    pub labelled: usize,
    /// argmax == label over labelled samples.
    pub accuracy: Option<f64>,
    /// Mean per-class recall (2-class tasks only).
    pub balanced_accuracy: Option<f64>,
    /// Agreement with stored logits, when the dataset has them.
    pub agreement: Option<Agreement>,
    /// Mean run latency per sample, µs.
    pub mean_us: f64,
    /// Bytes of weights on the task's path.
    pub path_bytes: usize,
    /// Bytes of all blobs of the model.
    pub total_bytes: usize,
    /// Arena bytes of the task.
    pub arena_bytes: usize,
}

/// Scores of predictions against labels: `(accuracy, balanced accuracy)`.
pub fn scores(
    preds: &[usize],
    labels: &[Option<i64>],
    classes: usize,
) -> (Option<f64>, Option<f64>) {
    let pairs: Vec<(usize, i64)> = preds
        .iter()
        .zip(labels)
        .filter_map(|(&p, l)| l.map(|l| (p, l)))
        .collect();
    if pairs.is_empty() {
        return (None, None);
    }
    let correct = pairs.iter().filter(|(p, l)| *p as i64 == *l).count();
    let acc = correct as f64 / pairs.len() as f64;
    let balanced = (classes == 2).then(|| {
        let recalls: Vec<f64> = (0..2i64)
            .filter_map(|c| {
                let of_c: Vec<_> = pairs.iter().filter(|(_, l)| *l == c).collect();
                (!of_c.is_empty()).then(|| {
                    of_c.iter().filter(|(p, _)| *p as i64 == c).count() as f64 / of_c.len() as f64
                })
            })
            .collect();
        recalls.iter().sum::<f64>() / recalls.len() as f64
    });
    (Some(acc), balanced)
}

/// Runs every selected task that has `dir/{TASK}.test.json` (with `only`
/// non-empty, exactly those tasks, each of which must have one).
pub fn evaluate(model: &Model<'_>, dir: &Path, only: &[String]) -> Result<Vec<EvalRow>> {
    evaluate_on(model, dir, only, Target::Cpu)
}

/// [`evaluate`] on `target`.
pub fn evaluate_on(
    model: &Model<'_>,
    dir: &Path,
    only: &[String],
    target: Target,
) -> Result<Vec<EvalRow>> {
    let config = config_of(model)?;
    let total_bytes: usize = (0..model.blob_count() as u32)
        .filter_map(|b| model.blob(b))
        .map(|b| b.bytes.len())
        .sum();
    let tasks: Vec<String> = if only.is_empty() {
        config.tasks.iter().map(|t| t.name.clone()).collect()
    } else {
        only.to_vec()
    };
    let mut rows = Vec::new();
    for name in &tasks {
        let task = task_by_name(model, name)?;
        let path = dir.join(format!("{name}.test.json"));
        if !path.is_file() {
            if only.is_empty() {
                continue;
            }
            bail!(
                "no test set for task {name}: {} does not exist",
                path.display()
            );
        }
        let ds = Dataset::load(&path)?;
        ds.validate_against(&config)
            .with_context(|| format!("checking {}", path.display()))?;
        if ds.task != *name {
            bail!(
                "{} holds samples of task {:?}, expected {name:?}",
                path.display(),
                ds.task
            );
        }
        let o = run_samples_on(model, &task, &ds.samples, 1, target)?;
        let preds: Vec<usize> = o.outputs.iter().map(|v| argmax(v)).collect();
        let labels: Vec<Option<i64>> = ds.samples.iter().map(|s| s.label).collect();
        let (accuracy, balanced_accuracy) = scores(&preds, &labels, task.outputs);
        let mut agree = Agreement {
            samples: 0,
            max_abs: 0.0,
            max_rel: 0.0,
            predictions: 0.0,
        };
        for (i, ((s, out), &p)) in ds.samples.iter().zip(&o.outputs).zip(&preds).enumerate() {
            let Some(want) = &s.logits else { continue };
            // JSON has no NaN, but 1e39 is +inf as f32: no agreement to measure.
            if let Some(j) = want.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}, sample {i}: stored logit {j} is {} (not finite as a 32-bit float)",
                    path.display(),
                    want[j]
                );
            }
            agree.samples += 1;
            for (a, b) in out.iter().zip(want) {
                let d = (f64::from(*a) - f64::from(*b)).abs();
                agree.max_abs = nan_max(agree.max_abs, d);
                agree.max_rel = nan_max(agree.max_rel, d / f64::from(b.abs()).max(1.0));
            }
            agree.predictions += f64::from(u8::from(argmax(want) == p));
        }
        if agree.samples > 0 {
            agree.predictions /= agree.samples as f64;
        }
        rows.push(EvalRow {
            task: name.clone(),
            stage: task.stage,
            outputs: task.outputs,
            samples: ds.samples.len(),
            labelled: labels.iter().flatten().count(),
            accuracy,
            balanced_accuracy,
            agreement: (agree.samples > 0).then_some(agree),
            mean_us: o.mean_us(),
            path_bytes: model.path_bytes(&task),
            total_bytes,
            arena_bytes: task.arena_bytes,
        });
    }
    if rows.is_empty() {
        bail!(
            "no test sets in {}: expected files named {{TASK}}.test.json for tasks {}",
            dir.display(),
            tasks.join(", ")
        );
    }
    Ok(rows)
}

/// The larger of two differences, NaN if either is: `f64::max` returns
/// the other operand for a NaN, which would report a NaN output as agreeing.
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// The evaluation table.
pub fn table(rows: &[EvalRow]) -> Table {
    let mut t = Table::new(&[
        "task",
        "stage",
        "samples",
        "accuracy",
        "bal. acc",
        "agree",
        "max abs",
        "max rel",
        "path bytes",
        "of all",
        "arena",
        "µs/sample",
    ]);
    for r in rows {
        let a = r.agreement.as_ref();
        t.row(vec![
            r.task.clone(),
            r.stage.to_string(),
            r.samples.to_string(),
            pct(r.accuracy),
            pct(r.balanced_accuracy),
            pct(a.map(|a| a.predictions)),
            a.map_or_else(|| "-".into(), |a| format!("{:.2e}", a.max_abs)),
            a.map_or_else(|| "-".into(), |a| format!("{:.2e}", a.max_rel)),
            r.path_bytes.to_string(),
            format!(
                "{:.1}%",
                100.0 * r.path_bytes as f64 / r.total_bytes.max(1) as f64
            ),
            r.arena_bytes.to_string(),
            format!("{:.1}", r.mean_us),
        ]);
    }
    t
}

/// Runs `eval`.
pub fn main(a: &EvalArgs) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    if let Some(texts) =
        crate::lm::corpus_texts(&model, &a.corpus, a.data.as_deref(), "--data", &a.split)?
    {
        let e = crate::eval_llm::evaluate(&model, &texts, a.cross, a.corpus.jobs)?;
        return crate::lm::print_report(&e, a.json, crate::eval_llm::markdown);
    }
    let dir = a.data.as_deref().context("--data is required")?;
    let rows = evaluate_on(&model, dir, &a.tasks, a.target)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        outln!("{}", table(&rows).render(""));
        if rows.iter().all(|r| r.labelled == 0) {
            outln!("(no labels in these test sets: accuracy is not defined)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_balanced_accuracy() {
        // 4 of class 0 (3 right), 1 of class 1 (right), 1 unlabelled.
        let preds = [0, 0, 0, 1, 1, 0];
        let labels = [Some(0), Some(0), Some(0), Some(0), Some(1), None];
        let (acc, bal) = scores(&preds, &labels, 2);
        assert_eq!(acc, Some(0.8));
        assert_eq!(bal, Some((0.75 + 1.0) / 2.0));
        assert_eq!(
            scores(&preds, &labels, 3).1,
            None,
            "balanced only for 2 classes"
        );
        assert_eq!(scores(&[1], &[None], 2), (None, None));
    }

    #[test]
    fn a_nan_difference_is_never_reported_as_agreement() {
        assert!(nan_max(0.0, f64::NAN).is_nan());
        assert!(nan_max(f64::NAN, 0.5).is_nan());
        assert_eq!(nan_max(0.25, 0.5), 0.5);
        let d = [0.1, f64::NAN, 0.2];
        assert!(d.iter().fold(0.0, |m, &x| nan_max(m, x)).is_nan());
    }
}
