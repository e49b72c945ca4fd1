//! `taskpath demo`: pack, verify and evaluate a model end to end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use taskpath_checkpoint::{random_checkpoint, Checkpoint, RandomSpec};

use crate::pack::{pack_dir, CalibArgs};
use crate::util::{human_bytes, open_model, outln};
use crate::{eval, gen, verify};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Checkpoint directory to pack (falls back to models/random, then to a
    /// freshly generated random reference-shape model, when it does not exist).
    #[arg(long, default_value = "models/reference/stage3")]
    pub model: PathBuf,
    /// Directory of `{TASK}.train.json` / `{TASK}.test.json` datasets.
    #[arg(long, default_value = "models/reference/data")]
    pub data: PathBuf,
    /// Output directory (model.tpk).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
}

fn is_checkpoint(dir: &Path) -> bool {
    dir.join("model.json").is_file() && dir.join("model.safetensors").is_file()
}

/// Runs `demo`.
pub fn main(a: &DemoArgs) -> Result<()> {
    outln!("== 1/5 model");
    let (model_dir, data_dir) = if is_checkpoint(&a.model) {
        (a.model.clone(), a.data.clone())
    } else {
        let fallback = PathBuf::from("models/random");
        if is_checkpoint(&fallback) {
            outln!(
                "{} not found (train it with taskpath-flame); using {}",
                a.model.display(),
                fallback.display()
            );
            let data = if a.data.is_dir() {
                a.data.clone()
            } else {
                fallback.join("data")
            };
            (fallback, data)
        } else {
            let dir = a.out.join("random-model");
            outln!(
                "neither {} nor {} exists; generating a random reference-shape model in {}",
                a.model.display(),
                fallback.display(),
                dir.display()
            );
            let ck = random_checkpoint(&RandomSpec::reference(), 1);
            ck.save(&dir)?;
            gen::write_datasets(&ck, &dir.join("data"), 1, 256, 64)?;
            (dir.clone(), dir.join("data"))
        }
    };
    let ck = Checkpoint::load(&model_dir)
        .with_context(|| format!("loading checkpoint {}", model_dir.display()))?;
    let c = &ck.config;
    outln!(
        "{}: D={} experts={} top_k={} stages={}, tasks {}",
        model_dir.display(),
        c.d_model,
        c.experts,
        c.top_k,
        c.stages,
        c.tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    outln!("\n== 2/5 pack");
    let has_train = c
        .tasks
        .iter()
        .all(|t| data_dir.join(format!("{}.train.json", t.name)).is_file());
    let has_test = c
        .tasks
        .iter()
        .any(|t| data_dir.join(format!("{}.test.json", t.name)).is_file());
    let calib = if has_train {
        outln!(
            "calibrating task paths on {} (coverage 0.99)",
            data_dir.display()
        );
        CalibArgs {
            align_log2: 12,
            calibration: Some(data_dir.clone()),
            path_coverage: Some(0.99),
            quant: None,
            budget: None,
        }
    } else {
        outln!(
            "no {{TASK}}.train.json for every task in {}: packing every expert on every path",
            data_dir.display()
        );
        CalibArgs {
            align_log2: 12,
            calibration: None,
            path_coverage: None,
            quant: None,
            budget: None,
        }
    };
    let out = a.out.join("model.tpk");
    let s = pack_dir(&model_dir, &out, &calib)?;
    drop(ck);

    outln!("\n== 3/5 verify");
    let v = verify::verify(&out, &[])?;
    outln!("ok: {} blobs, {} tasks verified", v.blobs, v.tasks);

    outln!("\n== 4/5 eval");
    let mapped = open_model(&out, &[])?;
    let model = mapped.model()?;
    if has_test {
        let rows = eval::evaluate(&model, &data_dir, &[])?;
        outln!("{}", eval::table(&rows).render(""));
        if rows.iter().all(|r| r.labelled == 0) {
            outln!("(these test sets have no labels, as random data: accuracy is not defined)");
        }
    } else {
        outln!("skipped: no {{TASK}}.test.json in {}", data_dir.display());
    }

    outln!("\n== 5/5 profile");
    if has_test {
        // Half the expert bytes as the residency budget, so the summary shows
        // a real hit rate next to latency; the plots are the README's.
        let opts = taskpath_profile::driver::Options {
            warmup: 20,
            runs: 200,
            trace_runs: None,
            budget: Some((model.expert_bytes() / 2).max(1)),
            verify: true,
        };
        let mut meter = taskpath_profile::energy::open(&taskpath_profile::energy::MeterSpec::Auto)?;
        let dir = a.out.join("profile");
        let w = crate::profile::profile_to_dir(
            &mapped,
            &out.display().to_string(),
            &[],
            &data_dir,
            &opts,
            &mut meter,
            &dir,
            false,
        )?;
        outln!("{}", w.summary.markdown());
        outln!("wrote {} files under {}", w.files.len(), dir.display());
    } else {
        outln!("skipped: no {{TASK}}.test.json in {}", data_dir.display());
    }
    outln!(
        "\n{}: {} tasks, {} blobs, {} ({} bytes)",
        out.display(),
        s.tasks,
        s.blobs,
        human_bytes(s.bytes),
        s.bytes
    );
    Ok(())
}
