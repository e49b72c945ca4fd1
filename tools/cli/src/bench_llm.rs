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
use taskpath_runtime::{AlignedArena, MappedModel, Session};

use crate::stream::{attach, model_top_k, Parts, Probe, ReaderKind, StreamOpts};

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
    /// The expert reader ("mmap", or the pread reader's mode).
    pub reader: String,
    /// Experts per token of speculative prefetch (0: off).
    pub prefetch_topk: usize,
    /// Expert I/O per token over the timed repetitions (with a cache, a
    /// pread reader or prefetch).
    pub io: Option<IoRow>,
}

/// Expert I/O of a row, per token, over its timed repetitions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IoRow {
    /// Time stalled on expert bytes, ms.
    pub stall_ms: f64,
    /// Bytes read from storage (/proc/self/io; all threads).
    pub storage_bytes: f64,
    /// (1 - hit rate) x active expert bytes.
    pub ideal_bytes: f64,
    /// Speculative prefetch: predicted share of the experts used.
    pub recall: f64,
    /// Bytes hinted for a layer that then did not use them.
    pub wasted_bytes: f64,
    /// Bytes hinted.
    pub hinted_bytes: f64,
}

/// Expert I/O settings of a bench: each reader x prefetch setting is a
/// session of its own.
#[derive(Debug, Clone, Copy)]
pub struct IoSettings<'a> {
    /// `--expert-budget`.
    pub budget: Option<&'a str>,
    /// `--reader`.
    pub readers: &'a [ReaderKind],
    /// `--prefetch-topk` (empty: the default).
    pub topk: &'a [usize],
    /// The package files, in `mapped`'s order.
    pub paths: &'a [std::path::PathBuf],
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
    opts: StreamOpts,
    probe: Probe,
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
        // Hits are counted only with a cache, a reader or prefetch (the
        // tracer's cache query is skipped otherwise, so the plain timing is
        // untouched).
        let traced =
            self.budget.is_some() || self.opts.topk > 0 || self.opts.reader == ReaderKind::Pread;
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
/// decode steps), one session per package x threads x reader x prefetch
/// setting, each session's experts in a cache of `io.budget` when given.
pub fn run(
    mapped: &[MappedModel],
    labels: &[String],
    threads: &[usize],
    (pp, tg): (usize, usize),
    reps: usize,
    io: IoSettings<'_>,
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
    // One configuration per session: (model, pool, reader, prefetch, budget).
    let mut configs = Vec::new();
    for (mi, m) in models.iter().enumerate() {
        let t = crate::generate::llm_task(m, None)?;
        let budget = io
            .budget
            .map(|b| crate::generate::expert_budget_bytes(m, b))
            .transpose()?;
        let mut arena = AlignedArena::new(m.task(t)?.arena_bytes);
        let k = model_top_k(&Session::new(m, t, arena.as_mut_slice())?);
        let topks: Vec<usize> = if io.topk.is_empty() {
            vec![if budget.is_some() { k } else { 0 }]
        } else {
            io.topk.to_vec()
        };
        for pi in 0..pools.len() {
            for &reader in io.readers {
                for &topk in &topks {
                    configs.push((
                        mi,
                        pi,
                        StreamOpts {
                            budget,
                            reader,
                            topk,
                        },
                    ));
                }
            }
        }
    }
    let mut arenas: Vec<AlignedArena> = configs
        .iter()
        .map(|&(mi, _, _)| Ok(AlignedArena::new(models[mi].task(0)?.arena_bytes)))
        .collect::<Result<_>>()?;
    let mut parts: Vec<Parts<'_>> = configs
        .iter()
        .map(|&(mi, _, opts)| {
            let path = io.paths.get(mi).context("internal: package path")?;
            Parts::new(&models[mi], &mapped[mi], std::slice::from_ref(path), opts)
        })
        .collect::<Result<_>>()?;
    let probes: Vec<Probe> = parts.iter().map(Parts::probe).collect();
    let mut splits = Vec::new();
    for (p, &(mi, _, _)) in parts.iter_mut().zip(&configs) {
        splits.push(p.split(&models[mi])?);
    }
    let mut benches = Vec::new();
    for ((((mi, pi, opts), arena), (timed, hint)), probe) in configs
        .iter()
        .copied()
        .zip(arenas.iter_mut())
        .zip(splits.iter_mut())
        .zip(probes)
    {
        let (m, label, mm) = (&models[mi], &labels[mi], &mapped[mi]);
        let session = Session::new(m, 0, arena.as_mut_slice())?.with_pool(&pools[pi]);
        let session = attach(session, timed.as_mut(), hint, opts)?;
        let shape = session.plan().tokens().context("not a token-stream task")?;
        ensure!(
            pp.max(tg) <= shape.context,
            "{label}: -p {pp} / -n {tg} exceed the package's context of {} (pack with a larger --context)",
            shape.context
        );
        benches.push(Bench {
            threads: pools[pi].threads(),
            label: label.clone(),
            bytes: mm.bytes(0).map_or(0, |b| b.len() as u64),
            budget: opts.budget,
            opts,
            probe,
            session,
            chunk: shape.capacity,
            vocab: shape.vocab,
            logits: vec![0f32; shape.vocab],
        });
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
                    reader: b.probe.mode.clone(),
                    prefetch_topk: b.opts.topk,
                    io: None,
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
                let mut hits = crate::generate::ExpertIo {
                    model: Some(b.session.model()),
                    ..Default::default()
                };
                let (stall0, read0) = (b.probe.stall(), crate::util::storage_read_bytes());
                let (s, bytes) = b.once(prefill, n, &mut rng, &mut hits)?;
                let read = read0
                    .zip(crate::util::storage_read_bytes())
                    .map_or(0, |(a, z)| z.saturating_sub(a));
                if rep > 0 {
                    let r = &mut rows[row];
                    r.tok_s.push(n as f64 / s);
                    r.bytes_per_token = bytes as f64 / n as f64;
                    if let Some((_, acc)) = &mut r.cache {
                        // Mean over the timed repetitions.
                        *acc += hits.hit_rate() / reps as f64;
                    }
                    if b.budget.is_some() || b.opts.topk > 0 || b.opts.reader == ReaderKind::Pread {
                        let w = 1.0 / (reps * n) as f64;
                        let t = hits.pred.total();
                        let io = r.io.get_or_insert_with(IoRow::default);
                        io.stall_ms += (b.probe.stall() - stall0).as_secs_f64() * 1e3 * w;
                        io.storage_bytes += read as f64 * w;
                        io.ideal_bytes += hits.missed_bytes as f64 * w;
                        io.hinted_bytes += t.hinted_bytes as f64 * w;
                        io.wasted_bytes += t.wasted_bytes as f64 * w;
                        io.recall += t.recall() / reps as f64;
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
    if r.rows.iter().any(|r| r.io.is_some()) {
        s.push_str(
            "\n\n| package | threads | test | reader | prefetch k' | stall ms/token | storage KiB/token | ideal KiB/token | storage / ideal | recall | hinted KiB/token | wasted KiB/token |\n|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in &r.rows {
            let Some(io) = &row.io else { continue };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.3} | {:.1} | {:.1} | {:.2} | {:.1}% | {:.1} | {:.1} |\n",
                row.package,
                row.threads,
                row.test,
                row.reader,
                row.prefetch_topk,
                io.stall_ms,
                io.storage_bytes / 1024.0,
                io.ideal_bytes / 1024.0,
                io.storage_bytes / io.ideal_bytes.max(1.0),
                100.0 * io.recall,
                io.hinted_bytes / 1024.0,
                io.wasted_bytes / 1024.0
            ));
        }
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
