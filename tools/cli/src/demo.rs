//! `taskpath demo`: pack, verify and evaluate a model end to end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use taskpath_checkpoint::{random_checkpoint, Checkpoint, RandomSpec};

use crate::lm::CorpusArgs;
use crate::pack::{pack_dir, pack_llm_file, CalibArgs, LlmArgs};
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
    /// The language model of step 6 (a Hugging Face directory or GGUF file);
    /// step 6 is skipped when it does not exist.
    #[arg(long, default_value = "models/lm-domains/model")]
    pub lm: PathBuf,
    /// Its corpus: `<domain>/{calib,test}.txt` per text domain.
    #[arg(long, default_value = "models/lm-domains/corpus")]
    pub lm_corpus: PathBuf,
}

fn is_checkpoint(dir: &Path) -> bool {
    dir.join("model.json").is_file() && dir.join("model.safetensors").is_file()
}

/// Runs `demo`.
pub fn main(a: &DemoArgs) -> Result<()> {
    outln!("== 1/6 model");
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

    outln!("\n== 2/6 pack");
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
            literal: false,
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
            literal: false,
            calibration: None,
            path_coverage: None,
            quant: None,
            budget: None,
        }
    };
    let out = a.out.join("model.tpk");
    let s = pack_dir(&model_dir, &out, &calib, None)?;
    drop(ck);

    outln!("\n== 3/6 verify");
    let v = verify::verify(&out, &[], None)?;
    outln!("ok: {} blobs, {} tasks verified", v.blobs, v.tasks);

    outln!("\n== 4/6 eval");
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

    outln!("\n== 5/6 profile");
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
    drop(mapped);

    outln!("\n== 6/6 language model: one expert path per text domain");
    if a.lm.exists() && a.lm_corpus.is_dir() {
        language_model(a)?;
    } else {
        outln!(
            "skipped: {} or {} is missing",
            a.lm.display(),
            a.lm_corpus.display()
        );
    }
    Ok(())
}

/// Step 6: the domain language model packed with a path per domain
/// (routing measured on each domain's calibration text), perplexity of the
/// full model and of each path on the test text, and greedy text from two
/// domains on their own paths.
fn language_model(a: &DemoArgs) -> Result<()> {
    let out = a.out.join("lm-domains.tpk");
    let coverage = 0.9;
    outln!(
        "packing {} with --calibration {} --path-coverage {coverage}",
        a.lm.display(),
        a.lm_corpus.display()
    );
    let calib = CalibArgs {
        align_log2: 12,
        literal: false,
        calibration: Some(a.lm_corpus.clone()),
        path_coverage: Some(coverage),
        quant: None,
        budget: None,
    };
    let llm = LlmArgs {
        context: 256,
        chunk: 64,
        dense_quant: None,
    };
    pack_llm_file(&a.lm, &out, &calib, &llm, None)?;
    let mapped = open_model(&out, &[])?;
    let model = mapped.model()?;
    let corpus = CorpusArgs {
        corpus: Some(a.lm_corpus.clone()),
        window: None,
        max_tokens: Some(2048),
        jobs: 2,
    };
    let texts = crate::lm::load_texts(&model, &a.lm_corpus, "test", &corpus)?;
    outln!(
        "\nperplexity on the first {} test tokens of each domain (windows of {}), full model vs the domain's path:",
        corpus.max_tokens.unwrap_or(0),
        texts.window
    );
    let e = crate::eval_llm::evaluate(&model, &texts, false, corpus.jobs)?;
    outln!("{}", crate::eval_llm::markdown(&e));
    drop(mapped);
    for (task, prompt) in [
        ("rust", "fn main() {\n    let"),
        ("en-bible", "And God said unto"),
    ] {
        outln!("\ngreedy, task {task}:");
        crate::generate::main(&crate::generate::Args {
            file: out.clone(),
            deltas: crate::DeltaArgs { deltas: Vec::new() },
            prompt: prompt.to_string(),
            n: 32,
            task: Some(task.to_string()),
            temp: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            ignore_eos: true,
            threads: 1,
            expert_budget: None,
            reader: crate::stream::ReaderKind::Mmap,
            prefetch_topk: None,
        })?;
    }
    Ok(())
}
