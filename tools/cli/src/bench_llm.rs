//! `taskpath bench` on language-model packages: llama-bench's shape. Per
//! package and thread count, `pp<P>` (a P-token prompt prefilled in chunks
//! from an empty KV cache) and `tg<N>` (N tokens decoded one at a time from
//! an empty cache) in tokens per second, mean ± standard deviation over the
//! repetitions, each preceded by an untimed warm-up. Token ids are seeded
//! random, as llama-bench's are. Packages and tests are interleaved inside
//! each repetition, so machine drift hits every row alike.
//!
//! The decode rows also give the weight bytes read per token and that
//! traffic's share of this machine's single-thread read bandwidth (measured
//! in the same run: the best of several passes summing a 512 MiB buffer).

use std::hint::black_box;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use taskpath_checkpoint::SplitMix64;
use taskpath_profile::stats::{mean, stddev};
use taskpath_runtime::pool::{ThreadPool, MAX_THREADS};
use taskpath_runtime::{AlignedArena, MappedModel, ResidencyCache, Session};

use crate::util::outln;

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct LlmRow {
    /// Package file name.
    pub package: String,
    /// Package bytes.
    pub bytes: u64,
    /// Threads per session.
    pub threads: usize,
    /// `pp512`, `tg128`, ...
    pub test: String,
    /// Tokens per second in each repetition.
    pub tok_s: Vec<f64>,
    /// Weight bytes read per token (decode rows; prefill: per chunk token).
    pub bytes_per_token: f64,
    /// With `--expert-budget`: the expert cache's budget in bytes and hit
    /// rate over the row's timed repetitions.
    pub cache: Option<(usize, f64)>,
}

/// What an LLM bench prints and writes.
#[derive(Debug, Serialize)]
pub struct LlmReport {
    /// Single-thread read bandwidth measured in this run, GB/s.
    pub read_gb_s: f64,
    /// The rows.
    pub rows: Vec<LlmRow>,
}

/// Single-thread read bandwidth in GB/s: the best of 5 passes summing a
/// 512 MiB buffer with independent accumulators.
pub fn read_bandwidth() -> f64 {
    let n = (512usize << 20) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut acc = [0u64; 8];
        for c in buf.chunks_exact(8) {
            for i in 0..8 {
                acc[i] = acc[i].wrapping_add(c[i]);
            }
        }
        black_box(acc);
        best = best.max((n * 8) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

struct Bench<'m> {
    threads: usize,
    label: String,
    bytes: u64,
    budget: Option<usize>,
    session: Session<'m, 'm>,
    chunk: usize,
    vocab: usize,
    logits: Vec<f32>,
}

impl Bench<'_> {
    /// Seconds and weight bytes for `pp` prompt tokens, or `tg` decode steps.
    fn once(
        &mut self,
        prefill: bool,
        n: usize,
        rng: &mut SplitMix64,
        hits: &mut crate::generate::ExpertIo<'_>,
    ) -> Result<(f64, usize)> {
        self.session.reset();
        let ids: Vec<u32> = (0..n)
            .map(|_| rng.below(self.vocab as u64) as u32)
            .collect();
        let mut bytes = 0;
        let t0 = Instant::now();
        // Hits are counted only with a cache (the tracer's cache query is
        // skipped otherwise, so the unbudgeted timing is untouched).
        let traced = self.budget.is_some();
        let mut step = |s: &mut Session<'_, '_>, ids: &[u32], l: &mut [f32]| {
            if traced {
                s.step_traced(ids, l, &mut *hits)
            } else {
                s.step(ids, l)
            }
        };
        if prefill {
            for c in ids.chunks(self.chunk) {
                bytes += step(&mut self.session, c, &mut self.logits)?.weight_bytes;
            }
        } else {
            for &t in &ids {
                bytes += step(&mut self.session, &[t], &mut self.logits)?.weight_bytes;
            }
        }
        Ok((t0.elapsed().as_secs_f64(), bytes))
    }
}

/// Runs the bench over language-model packages (`pp` prompt tokens, `tg`
/// decode steps), each session's experts in a cache of `budget` when given.
pub fn run(
    mapped: &[MappedModel],
    labels: &[String],
    threads: &[usize],
    (pp, tg): (usize, usize),
    reps: usize,
    budget: Option<&str>,
) -> Result<LlmReport> {
    ensure!(
        threads.iter().all(|&t| (1..=MAX_THREADS).contains(&t)),
        "--threads: each count must be in 1..={MAX_THREADS}"
    );
    let models: Vec<_> = mapped
        .iter()
        .map(MappedModel::model)
        .collect::<Result<_, _>>()?;
    let pools: Vec<ThreadPool> = threads
        .iter()
        .map(|&t| ThreadPool::new(t))
        .collect::<std::io::Result<_>>()
        .context("starting worker threads")?;
    let mut arenas: Vec<AlignedArena> = Vec::new();
    let mut cache_mem: Vec<AlignedArena> = Vec::new();
    for m in &models {
        let t = crate::generate::llm_task(m, None)?;
        let bytes = budget
            .map(|b| crate::generate::expert_budget_bytes(m, b))
            .transpose()?;
        for _ in threads {
            arenas.push(AlignedArena::new(m.task(t)?.arena_bytes));
            if let Some(b) = bytes {
                cache_mem.push(AlignedArena::new(b));
            }
        }
    }
    let mut caches: Vec<ResidencyCache<'_>> = Vec::new();
    let mut mem_iter = cache_mem.iter_mut();
    for m in &models {
        for _ in threads {
            if let Some(mem) = mem_iter.next() {
                caches.push(
                    ResidencyCache::new(m, mem.as_mut_slice())
                        .context("creating the expert cache")?,
                );
            }
        }
    }
    let mut benches = Vec::new();
    let mut arena_iter = arenas.iter_mut();
    let mut cache_iter = caches.iter_mut();
    for (m, (label, mm)) in models.iter().zip(labels.iter().zip(mapped)) {
        for pool in &pools {
            let arena = arena_iter.next().context("internal: arena count")?;
            let mut session = Session::new(m, 0, arena.as_mut_slice())?.with_pool(pool);
            let mut cache_budget = None;
            if budget.is_some() {
                let c = cache_iter.next().context("internal: cache count")?;
                cache_budget = Some(c.budget());
                session = session.with_blob_source(c)?;
            }
            let shape = session.plan().tokens().context("not a token-stream task")?;
            ensure!(
            pp.max(tg) <= shape.context,
            "{label}: -p {pp} / -n {tg} exceed the package's context of {} (pack with a larger --context)",
            shape.context
        );
            benches.push(Bench {
                threads: pool.threads(),
                label: label.clone(),
                bytes: mm.bytes(0).map_or(0, |b| b.len() as u64),
                budget: cache_budget,
                session,
                chunk: shape.capacity,
                vocab: shape.vocab,
                logits: vec![0f32; shape.vocab],
            });
        }
    }
    let read_gb_s = read_bandwidth();
    let mut rows = Vec::new();
    for b in &benches {
        for (test, n) in [(format!("pp{pp}"), pp), (format!("tg{tg}"), tg)] {
            if n > 0 {
                rows.push(LlmRow {
                    package: b.label.clone(),
                    bytes: b.bytes,
                    threads: b.threads,
                    test,
                    tok_s: Vec::new(),
                    bytes_per_token: 0.0,
                    cache: b.budget.map(|b| (b, 0.0)),
                });
            }
        }
    }
    let mut rng = SplitMix64::new(1234);
    let tests: Vec<(bool, usize)> = [(true, pp), (false, tg)]
        .into_iter()
        .filter(|t| t.1 > 0)
        .collect();
    for rep in 0..=reps {
        let mut row = 0;
        for b in &mut benches {
            for &(prefill, n) in &tests {
                let mut hits = crate::generate::ExpertIo::default();
                let (s, bytes) = b.once(prefill, n, &mut rng, &mut hits)?;
                if rep > 0 {
                    rows[row].tok_s.push(n as f64 / s);
                    rows[row].bytes_per_token = bytes as f64 / n as f64;
                    if let Some((_, acc)) = &mut rows[row].cache {
                        // Mean over the timed repetitions.
                        *acc += hits.hit_rate() / reps as f64;
                    }
                }
                row += 1;
            }
        }
    }
    Ok(LlmReport { read_gb_s, rows })
}

/// The report as llama-bench's Markdown table, plus ratios against the
/// first package and the decode rows' share of the read bandwidth.
pub fn markdown(r: &LlmReport) -> String {
    let mut s = String::from(
        "| package | size | threads | test | t/s | vs first | weight MB/token | GB/s read | of read bandwidth |\n|---|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for row in &r.rows {
        let m = mean(&row.tok_s);
        let first = r
            .rows
            .iter()
            .find(|b| b.test == row.test && b.threads == row.threads);
        let gb = row.bytes_per_token * m / 1e9;
        s.push_str(&format!(
            "| {} | {:.1} MiB | {} | {} | {:.2} ± {:.2} | {} | {:.2} | {:.2} | {:.0}% |\n",
            row.package,
            row.bytes as f64 / 1048576.0,
            row.threads,
            row.test,
            m,
            stddev(&row.tok_s),
            first.map_or("-".into(), |f| format!("{:.3}", m / mean(&f.tok_s))),
            row.bytes_per_token / 1e6,
            gb,
            100.0 * gb / r.read_gb_s
        ));
    }
    for row in r.rows.iter().filter(|r| r.cache.is_some()) {
        let (budget, hit) = row.cache.unwrap_or_default();
        s.push_str(&format!(
            "\n{} {} threads {}: expert cache of {} bytes, hit rate {:.1}%",
            row.package,
            row.test,
            row.threads,
            budget,
            100.0 * hit
        ));
    }
    s.push_str(&format!(
        "\nsingle-thread read bandwidth (this run): {:.2} GB/s\n",
        r.read_gb_s
    ));
    s
}

/// The rows as CSV.
pub fn csv(r: &LlmReport) -> String {
    let mut s = String::from(
        "package,bytes,threads,test,tok_s_mean,tok_s_stddev,bytes_per_token,read_gb_s\n",
    );
    for row in &r.rows {
        s.push_str(&format!(
            "{},{},{},{},{:.4},{:.4},{:.0},{:.3}\n",
            row.package,
            row.bytes,
            row.threads,
            row.test,
            mean(&row.tok_s),
            stddev(&row.tok_s),
            row.bytes_per_token,
            r.read_gb_s
        ));
    }
    s
}

/// Prints the report in each requested format.
pub fn print(r: &LlmReport, formats: &[String]) -> Result<()> {
    for f in formats {
        match f.as_str() {
            "md" => outln!("{}", markdown(r)),
            "csv" => outln!("{}", csv(r)),
            _ => outln!("{}", serde_json::to_string_pretty(r)?),
        }
    }
    Ok(())
}
