//! Language-model corpora for `eval`, `routes` and `profile`: a corpus
//! directory's domains tokenized by the package's own tokenizer, run in
//! windows (taskpath_pack::domains), on several sessions at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use taskpath_format::MetaValue;
use taskpath_pack::domains;
use taskpath_runtime::Model;

use crate::util::outln;

/// Options of the language-model modes of `eval`, `routes` and `profile`.
#[derive(Debug, Clone, clap::Args)]
pub struct CorpusArgs {
    /// Language models: a corpus directory of `<domain>/<split>.txt` texts
    /// (e.g. models/lm-domains/corpus).
    #[arg(long, value_name = "CORPUS_DIR")]
    pub corpus: Option<PathBuf>,
    /// Tokens per window (each runs from position 0 with an empty cache);
    /// default: the package's context, at most the model's trained positions.
    /// 2..=the package's context.
    #[arg(long, value_name = "N", value_parser = crate::util::within(2..=1usize << 20))]
    pub window: Option<usize>,
    /// Only the first N tokens of each domain's text (at least 2).
    #[arg(long, value_name = "N", value_parser = crate::util::within(2..=usize::MAX))]
    pub max_tokens: Option<usize>,
    /// Sessions run at once (one thread each; 1..=64).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = crate::util::within(1..=64usize))]
    pub jobs: usize,
}

/// A corpus split, tokenized.
#[derive(Debug, Clone)]
pub struct Texts {
    /// The split.
    pub split: String,
    /// Tokens per window.
    pub window: usize,
    /// Per domain (name order): its name and token ids.
    pub domains: Vec<(String, Vec<u32>)>,
}

fn meta_u32(model: &Model<'_>, key: &str) -> Option<usize> {
    match model.meta(key) {
        Some(MetaValue::U32(v)) => Some(v as usize),
        _ => None,
    }
}

/// Reads and tokenizes `dir`'s `split` with `model`'s tokenizer.
pub fn load_texts(model: &Model<'_>, dir: &Path, split: &str, a: &CorpusArgs) -> Result<Texts> {
    crate::generate::llm_task(model, None)?;
    let context = meta_u32(model, "llm.context").context("the package has no llm.context")?;
    let trained = meta_u32(model, "llm.max_positions").unwrap_or(context);
    let window = match a.window {
        Some(w) => crate::util::check_range("--window", w, 2..=context)
            .context("the window must fit the package's context")?,
        None => context.min(trained).max(2),
    };
    let tok = taskpath_pack::llm::package_tokenizer(model)?;
    let texts = domains::load_corpus(dir, split)?;
    let mut domains = domains::tokenize(&tok, &texts)?;
    for (name, ids) in &mut domains {
        if let Some(n) = a.max_tokens {
            ids.truncate(n);
        }
        ensure!(
            ids.len() >= 2,
            "domain {name}: its {split} text has {} tokens; at least 2 are needed",
            ids.len()
        );
    }
    Ok(Texts {
        split: split.to_string(),
        window,
        domains,
    })
}

/// The one corpus-or-data argument a command takes: `Ok(Some(corpus))` for
/// a language-model package with `--corpus`, `Ok(None)` for a FLAME one
/// with `data`.
pub fn corpus_or_data<'p>(
    model: &Model<'_>,
    corpus: Option<&'p Path>,
    data: Option<&Path>,
    data_flag: &str,
) -> Result<Option<&'p Path>> {
    let is_llm = model.arch() == taskpath_pack::llm::LLM_ARCH;
    match (corpus, data, is_llm) {
        (Some(_), Some(_), _) => bail!("--corpus and {data_flag} exclude each other"),
        (Some(c), None, true) => Ok(Some(c)),
        (None, Some(_), false) => Ok(None),
        (None, _, true) => bail!(
            "a language-model package is evaluated on a text corpus: give --corpus CORPUS_DIR (<domain>/<split>.txt files)"
        ),
        (Some(_), None, false) => bail!(
            "--corpus is for language-model packages; this one holds a {:?} model (give {data_flag})",
            model.arch()
        ),
        (None, None, false) => bail!("{data_flag} is required"),
    }
}

/// The corpus split to run when `model` is a language model given
/// `--corpus` (`None`: a FLAME package with its `data_flag`); errors as
/// [`corpus_or_data`].
pub fn corpus_texts(
    model: &Model<'_>,
    a: &CorpusArgs,
    data: Option<&Path>,
    data_flag: &str,
    split: &str,
) -> Result<Option<Texts>> {
    corpus_or_data(model, a.corpus.as_deref(), data, data_flag)?
        .map(|dir| load_texts(model, dir, split, a))
        .transpose()
}

/// The task named `name`, or the full model's (`generate`, else task 0).
pub fn task_or_full(model: &Model<'_>, name: Option<&str>) -> Result<usize> {
    match name {
        Some(t) => crate::generate::llm_task(model, Some(t)),
        None => {
            crate::generate::llm_task(model, None)?;
            Ok(model.task_index(domains::FULL_TASK).unwrap_or(0))
        }
    }
}

/// Prints `r` as pretty JSON or as `markdown(r)`.
pub fn print_report<R: serde::Serialize>(
    r: &R,
    json: bool,
    markdown: impl Fn(&R) -> String,
) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(r)?);
    } else {
        outln!("{}", markdown(r));
    }
    Ok(())
}

/// Runs `f(0..n)` on `jobs` threads; results in index order. A progress bar
/// counts `weight(i)` per finished job.
pub fn run_jobs<T: Send>(
    n: usize,
    jobs: usize,
    weight: &(dyn Fn(usize) -> u64 + Sync),
    f: &(dyn Fn(usize) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    let bar = indicatif::ProgressBar::new((0..n).map(weight).sum());
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..n).map(|_| None).collect());
    let spawn_error = std::thread::scope(|s| {
        for k in 0..jobs.clamp(1, n.max(1)) {
            let spawned = std::thread::Builder::new().spawn_scoped(s, || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                let failed = r.is_err();
                if let Ok(mut o) = out.lock() {
                    o[i] = Some(r);
                }
                bar.inc(weight(i));
                if failed {
                    // The others stop at their next job.
                    next.store(n, Ordering::Relaxed);
                }
            });
            if let Err(e) = spawned {
                // Those already running stop at their next job; the scope
                // joins them.
                next.store(n, Ordering::Relaxed);
                return Some((k, e));
            }
        }
        None
    });
    if let Some((k, e)) = spawn_error {
        bar.finish_and_clear();
        return Err(e).with_context(|| format!("starting job thread {} of {jobs}", k + 1));
    }
    bar.finish_and_clear();
    let out = out
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
    let mut v = Vec::with_capacity(n);
    for r in out {
        match r {
            Some(r) => v.push(r?),
            None => bail!("a job did not run (an earlier one failed)"),
        }
    }
    Ok(v)
}

/// Entropy in bits of a distribution given by counts (0 for an empty one).
pub fn entropy_bits(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum()
}

/// `I(domain; expert)` in bits from per-domain counts: the entropy of the
/// pooled counts minus the domains' entropies weighted by their counts.
pub fn mutual_information_bits(per_domain: &[Vec<u64>]) -> f64 {
    let width = per_domain.iter().map(Vec::len).max().unwrap_or(0);
    let mut pooled = vec![0u64; width];
    for c in per_domain {
        for (p, x) in pooled.iter_mut().zip(c) {
            *p += x;
        }
    }
    let total: u64 = pooled.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let within: f64 = per_domain
        .iter()
        .map(|c| c.iter().sum::<u64>() as f64 / total as f64 * entropy_bits(c))
        .sum();
    entropy_bits(&pooled) - within
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_and_mutual_information() {
        assert_eq!(entropy_bits(&[5, 5, 5, 5, 5, 5, 5, 5]), 3.0);
        assert_eq!(entropy_bits(&[7, 0]), 0.0);
        assert_eq!(entropy_bits(&[]), 0.0);
        // Disjoint experts: the expert names the domain, 1 bit.
        assert!((mutual_information_bits(&[vec![4, 0], vec![0, 4]]) - 1.0).abs() < 1e-12);
        // Identical distributions share nothing.
        assert!(mutual_information_bits(&[vec![1, 3], vec![2, 6]]).abs() < 1e-12);
    }

    #[test]
    fn jobs_return_in_order_and_stop_on_errors() {
        let v = run_jobs(10, 3, &|_| 1, &|i| Ok(i * i)).unwrap();
        assert_eq!(v, (0..10).map(|i| i * i).collect::<Vec<_>>());
        let e = run_jobs(10, 2, &|_| 1, &|i| {
            if i == 4 {
                bail!("job 4 failed")
            }
            Ok(i)
        })
        .unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
    }
}
