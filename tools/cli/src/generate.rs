//! `taskpath generate`: text generation from a language-model package —
//! the prompt is tokenized with the package's own tokenizer, prefilled in
//! chunks, then decoded one token at a time with a seeded sampler; tokens
//! are printed as they are produced, then prompt and decode speed, expert
//! use and bytes read per token.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use taskpath_runtime::{AlignedArena, Model, ResidencyCache, RunStats, Session};

use crate::sample::{Sampler, SamplerSettings};
use crate::stream::{attach, model_top_k, Parts, Predictions, ReaderKind, StreamOpts};
use crate::util::{bytes_or_percent, human_bytes, open_model, outln, storage_read_bytes};
use crate::DeltaArgs;

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A language-model package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// The prompt.
    #[arg(short = 'p', long)]
    pub prompt: String,
    /// Tokens to generate (stops early at end-of-sequence).
    #[arg(short = 'n', long = "n-predict", default_value_t = 64, value_parser = crate::util::within(0..=1usize << 20))]
    pub n: usize,
    /// Task (a domain path); default: the package's first task.
    #[arg(long)]
    pub task: Option<String>,
    /// Temperature (0: greedy; at most 100).
    #[arg(long, default_value_t = 0.8, value_parser = crate::util::within(0.0f32..=100.0))]
    pub temp: f32,
    /// Top-k truncation (0: off; at most 16777216).
    #[arg(long, default_value_t = 40, value_parser = crate::util::within(0..=1usize << 24))]
    pub top_k: usize,
    /// Top-p (nucleus) truncation (1: off; greater than 0).
    #[arg(long, default_value_t = 0.95, value_parser = crate::util::within((std::ops::Bound::Excluded(0.0f32), std::ops::Bound::Included(1.0f32))))]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep going after the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Threads splitting each matrix product (the caller included).
    #[arg(short = 't', long, default_value_t = 1, value_parser = crate::util::within(1..=taskpath_runtime::pool::MAX_THREADS))]
    pub threads: usize,
    /// Hold routed experts in an anonymous-memory cache of this many bytes
    /// (or N% of the package's expert bytes), filled from the package on a
    /// miss, and report hit rate and bytes read per token; default: read
    /// every expert in place from the mapped package.
    #[arg(long, value_name = "BYTES|N%")]
    pub expert_budget: Option<String>,
    /// How missed experts are read: the memory map (madvise ahead, page
    /// out after the copy) or `pread` on a background thread (`O_DIRECT`
    /// where the filesystem allows it; the fallback is reported).
    #[arg(long, value_enum, default_value_t = ReaderKind::Mmap)]
    pub reader: ReaderKind,
    /// Speculative prefetch: after each MoE layer routes, hint the next
    /// layer's K most likely experts per token (its router applied to this
    /// layer's hidden state); 0: off. Default: the model's top-k with
    /// --expert-budget or --reader pread, else 0.
    #[arg(long, value_name = "K", value_parser = crate::util::within(0..=256usize))]
    pub prefetch_topk: Option<usize>,
}

/// A session's expert fetches and, with a cache, its hits and misses;
/// with a model, also their bytes (`generate` and `bench` report them).
#[derive(Default)]
pub(crate) struct ExpertIo<'m> {
    pub model: Option<&'m Model<'m>>,
    pub hits: u64,
    pub misses: u64,
    pub fetched_bytes: u64,
    pub missed_bytes: u64,
    /// Speculative prefetch's scores.
    pub pred: Predictions,
}

impl ExpertIo<'_> {
    fn bytes(&self, blob: u32) -> u64 {
        self.model
            .and_then(|m| m.blob(blob))
            .map_or(0, |b| b.bytes.len() as u64)
    }

    /// Hits over cache accesses (0 without any).
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
}

impl taskpath_runtime::Tracer for ExpertIo<'_> {
    fn expert_fetch(&mut self, blob: u32) {
        self.fetched_bytes += self.bytes(blob);
        self.pred.fetched(blob);
    }
    fn expert_predicted(&mut self, blob: u32, hinted: bool) {
        if let Some(m) = self.model {
            self.pred.predicted(m, blob, hinted);
        }
    }
    fn op_end(&mut self, _index: u32, op: &taskpath_runtime::format::Op) {
        if let (taskpath_runtime::format::Op::MoeTokens { .. }, Some(m)) = (op, self.model) {
            self.pred.op_end(m);
        }
    }
    fn cache_access(&mut self, blob: u32, hit: bool) {
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
            self.missed_bytes += self.bytes(blob);
        }
    }
}

/// `--expert-budget SPEC` for `model`, in bytes: a byte count or N% of its
/// expert bytes, never more than all of them.
pub(crate) fn expert_budget_bytes(model: &Model<'_>, spec: &str) -> Result<usize> {
    let bytes = bytes_or_percent("--expert-budget", spec, model.expert_bytes())?;
    ensure!(
        bytes <= model.expert_bytes().max(ResidencyCache::min_budget(model)),
        "--expert-budget {spec}: more than the package's {} expert bytes",
        model.expert_bytes()
    );
    Ok(bytes)
}

/// The task to run: `name`, or the first token-stream task.
pub fn llm_task(model: &Model<'_>, name: Option<&str>) -> Result<usize> {
    ensure!(
        model.arch() == taskpath_pack::llm::LLM_ARCH,
        "the package's architecture is {:?}, not a language model ({:?})",
        model.arch(),
        taskpath_pack::llm::LLM_ARCH
    );
    match name {
        Some(n) => Ok(model.task_index(n).with_context(|| {
            let names: Vec<String> = (0..model.task_count())
                .filter_map(|t| model.task(t).ok().map(|t| t.name.to_string()))
                .collect();
            format!("no task {n:?}; the package has {}", names.join(", "))
        })?),
        None => Ok(0),
    }
}

/// Runs `generate`.
pub fn main(a: &Args) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let task = llm_task(&model, a.task.as_deref())?;
    if a.expert_budget.is_some() {
        mapped.will_need_shared(task);
    } else {
        mapped.will_need_task(task);
    }
    let tok = taskpath_pack::llm::package_tokenizer(&model)?;
    let info = model.task(task)?;
    let mut arena = AlignedArena::new(info.arena_bytes);
    let budget = a
        .expert_budget
        .as_deref()
        .map(|b| expert_budget_bytes(&model, b))
        .transpose()?;
    let pool =
        taskpath_runtime::pool::ThreadPool::new(a.threads).context("starting worker threads")?;
    let s = Session::new(&model, task, arena.as_mut_slice())?.with_pool(&pool);
    let opts = StreamOpts {
        budget,
        reader: a.reader,
        topk: a
            .prefetch_topk
            .unwrap_or(if budget.is_some() || a.reader == ReaderKind::Pread {
                model_top_k(&s)
            } else {
                0
            }),
    };
    let paths: Vec<PathBuf> = std::iter::once(a.file.clone())
        .chain(a.deltas.deltas.iter().cloned())
        .collect();
    let mut parts = Parts::new(&model, &mapped, &paths, opts)?;
    let probe = parts.probe();
    let (mut timed, hint) = parts.split(&model)?;
    let mut s = attach(s, timed.as_mut(), hint, opts)?;
    let shape = s
        .plan()
        .tokens()
        .context("the task is not a token-stream task")?;
    let prompt = tok.encode_with_special(&a.prompt)?;
    ensure!(!prompt.is_empty(), "the prompt is empty (no tokens)");
    ensure!(
        prompt.len() + a.n <= shape.context,
        "the prompt ({} tokens) plus -n {} exceeds the package's context of {} positions (pack with a larger --context)",
        prompt.len(),
        a.n,
        shape.context
    );
    let mut sampler = Sampler::new(
        SamplerSettings {
            temp: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        shape.vocab,
    )?;
    let mut logits = vec![0f32; shape.vocab];
    let t0 = Instant::now();
    for chunk in prompt.chunks(shape.capacity) {
        s.step(chunk, &mut logits)?;
    }
    let prompt_s = t0.elapsed().as_secs_f64();

    let mut out = std::io::stdout().lock();
    // The vocabulary comes from the package: its pieces may hold escape
    // sequences, which a terminal would obey, so a terminal gets them
    // escaped; a pipe or file gets the text exactly as the model made it.
    let tty = std::io::IsTerminal::is_terminal(&out);
    let shown = |t: &str| {
        if tty {
            crate::util::terminal_safe(t).to_string()
        } else {
            t.to_string()
        }
    };
    write!(out, "{}", shown(&a.prompt))?;
    let mut generated: Vec<u32> = Vec::with_capacity(a.n);
    let mut printed = 0usize;
    let mut decode = RunStats::default();
    let mut io = ExpertIo {
        model: Some(&model),
        ..Default::default()
    };
    let read0 = storage_read_bytes();
    let stall0 = probe.stall();
    let t1 = Instant::now();
    let mut decode_s = 0.0;
    for _ in 0..a.n {
        let t = sampler.sample(&logits).with_context(|| {
            format!("task {}: sampling at position {}", info.name, s.position())
        })?;
        if !a.ignore_eos && Some(t) == tok.eos_id() {
            break;
        }
        generated.push(t);
        // Print whole characters only: a token may end inside one.
        let text = tok.decode(&generated)?;
        if !text.ends_with('\u{fffd}') && text.len() > printed {
            write!(out, "{}", shown(&text[printed..]))?;
            out.flush()?;
            printed = text.len();
        }
        if generated.len() == a.n {
            decode_s = t1.elapsed().as_secs_f64();
            break;
        }
        let st = s.step_traced(&[t], &mut logits, &mut io)?;
        decode.ops += st.ops;
        decode.expert_components += st.expert_components;
        decode.weight_bytes += st.weight_bytes;
        decode_s = t1.elapsed().as_secs_f64();
    }
    writeln!(out)?;
    drop(out);
    let steps = generated.len().saturating_sub(1).max(1);
    outln!(
        "\nprompt: {} tokens in {:.1} ms ({:.1} tok/s); decode: {} tokens in {:.1} ms ({:.1} tok/s)",
        prompt.len(),
        prompt_s * 1e3,
        prompt.len() as f64 / prompt_s.max(1e-9),
        generated.len(),
        decode_s * 1e3,
        generated.len().saturating_sub(1) as f64 / decode_s.max(1e-9)
    );
    outln!(
        "per decoded token: {} bytes of weights read ({}), {:.1} experts run",
        decode.weight_bytes / steps,
        human_bytes(decode.weight_bytes / steps),
        decode.expert_components as f64 / steps as f64
    );
    let read = read0
        .zip(storage_read_bytes())
        .map(|(a, b)| b.saturating_sub(a));
    let per = |v: u64| human_bytes((v / steps as u64) as usize);
    let decode_stall = probe.stall() - stall0;
    let cache = s.blob_source().and_then(|b| b.cache_stats());
    if cache.is_some() {
        outln!(
            "decode, expert cache: hit rate {:.1}% ({} of {} expert fetches); active expert bytes {} per token; ideal reads (1 - hit rate) x active = {} per token; read from storage {} per token",
            100.0 * io.hit_rate(),
            io.hits,
            io.hits + io.misses,
            per(io.fetched_bytes),
            per(io.missed_bytes),
            read.map_or("n/a".to_string(), per)
        );
    } else if let Some(r) = read {
        outln!(
            "decode: read from storage {} per token (mapped package)",
            per(r)
        );
    }
    if s.blob_source().is_some() {
        outln!(
            "decode, expert reader {}: stalled on expert bytes {:.3} ms per token ({:.1}% of decode time)",
            probe.mode,
            decode_stall.as_secs_f64() * 1e3 / steps as f64,
            100.0 * decode_stall.as_secs_f64() / decode_s.max(1e-9)
        );
    }
    if opts.topk > 0 {
        outln!(
            "decode, speculative prefetch of the next layer's top-{}: {}",
            opts.topk,
            io.pred.summary(steps)
        );
    }
    if let Some(r) = probe.reader() {
        outln!(
            "pread reader: {} read ahead and used when ready, {} waited for, {} read on demand; {} read ahead, {} of it discarded unused",
            r.ready,
            r.waited,
            r.direct,
            human_bytes(r.ahead_bytes as usize),
            human_bytes(r.stale_bytes as usize)
        );
    }
    if let (Some(st), Some(b)) = (cache, budget) {
        outln!(
            "expert cache {}: hit rate {:.1}% ({} hits, {} misses, {} evictions, {} copied)",
            human_bytes(b),
            100.0 * st.hits as f64 / (st.hits + st.misses).max(1) as f64,
            st.hits,
            st.misses,
            st.evictions,
            human_bytes(st.bytes_copied as usize)
        );
    }
    Ok(())
}
