//! Expert streaming for `generate` and `bench` on language models: which
//! reader brings a missed expert in (the mapping with madvise, or `pread`
//! on a background thread, `O_DIRECT` where the filesystem allows it),
//! speculative next-layer prefetch, and what they cost: time stalled on
//! expert bytes, prediction recall and waste.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use taskpath_runtime::plan::Step;
use taskpath_runtime::{
    AlignedArena, BlobSource, CacheStats, MappedModel, MmapPrefetch, Model, Prefetch,
    PrefetchHints, PrefetchReader, PrefetchStats, ResidencyCache, Session,
};

use crate::util::human_bytes;

/// Where missed expert bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReaderKind {
    /// The package's memory map: `MADV_WILLNEED` ahead, a copy, `MADV_PAGEOUT` after.
    Mmap,
    /// Positioned reads of the file (`O_DIRECT` where allowed) on a
    /// background thread, into the cache.
    Pread,
}

impl std::fmt::Display for ReaderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mmap => "mmap",
            Self::Pread => "pread",
        })
    }
}

/// The prefetch and fill hook of one reader.
pub enum Hook<'m> {
    /// madvise over the mapping.
    Mmap(MmapPrefetch<'m>),
    /// The background `pread` reader.
    Pread(PrefetchHints),
}

impl Hook<'_> {
    fn inner(&mut self) -> &mut dyn Prefetch {
        match self {
            Self::Mmap(m) => m,
            Self::Pread(h) => h,
        }
    }
}

impl Prefetch for Hook<'_> {
    fn will_need(&mut self, blob: u32, bytes: &[u8]) {
        self.inner().will_need(blob, bytes);
    }
    fn filled(&mut self, blob: u32, bytes: &[u8]) {
        self.inner().filled(blob, bytes);
    }
    fn fill(&mut self, blob: u32, bytes: &[u8], dst: &mut [u8]) -> taskpath_runtime::Result<()> {
        self.inner().fill(blob, bytes, dst)
    }
}

/// A session's expert source: the cache, or the reader alone (no budget).
enum Source<'r> {
    Cache(Box<ResidencyCache<'r>>),
    Reader(&'r mut PrefetchReader),
}

/// The session's blob source, timing every fetch: the time the session
/// stalls on expert bytes (a hit costs a lookup; a miss, the read).
pub struct Timed<'r> {
    src: Source<'r>,
    stall: Rc<Cell<Duration>>,
}

impl Timed<'_> {
    fn inner(&self) -> &dyn BlobSource {
        match &self.src {
            Source::Cache(c) => &**c,
            Source::Reader(r) => &**r,
        }
    }
}

impl BlobSource for Timed<'_> {
    fn fetch(&mut self, model: &Model<'_>, blob: u32) -> taskpath_runtime::Result<&[u8]> {
        let t0 = Instant::now();
        let src: &mut dyn BlobSource = match &mut self.src {
            Source::Cache(c) => &mut **c,
            Source::Reader(r) => &mut **r,
        };
        let got = src.fetch(model, blob);
        self.stall.set(self.stall.get() + t0.elapsed());
        got
    }
    fn can_hold(&self, bytes: usize) -> bool {
        self.inner().can_hold(bytes)
    }
    fn capacity(&self) -> usize {
        self.inner().capacity()
    }
    fn budget(&self) -> usize {
        self.inner().budget()
    }
    fn holds(&self, blob: u32) -> Option<bool> {
        self.inner().holds(blob)
    }
    fn cache_stats(&self) -> Option<CacheStats> {
        self.inner().cache_stats()
    }
}

/// Expert I/O settings of one session.
#[derive(Clone, Copy, Debug)]
pub struct StreamOpts {
    /// Expert cache bytes; `None`: experts read in place (mmap) or from the
    /// reader directly (pread).
    pub budget: Option<usize>,
    /// The reader.
    pub reader: ReaderKind,
    /// Experts per token speculative prefetch hints (0: off).
    pub topk: usize,
}

/// What a session's expert I/O owns, so the session can borrow it.
pub struct Parts<'m> {
    opts: StreamOpts,
    mem: AlignedArena,
    reader: Option<PrefetchReader>,
    fill: Hook<'m>,
    hint: Hook<'m>,
    stall: Rc<Cell<Duration>>,
}

/// Read-only handles on a session's expert I/O counters, valid while the
/// session borrows its [`Parts`].
#[derive(Clone)]
pub struct Probe {
    stall: Rc<Cell<Duration>>,
    hints: Option<PrefetchHints>,
    /// How the reader reads ("mmap" or the pread reader's mode).
    pub mode: String,
}

impl Probe {
    /// Time stalled on expert bytes so far.
    pub fn stall(&self) -> Duration {
        self.stall.get()
    }
    /// The pread reader's counters.
    pub fn reader(&self) -> Option<PrefetchStats> {
        self.hints.as_ref().map(PrefetchHints::stats)
    }
}

/// The experts per token of the task's MoE layers (the router's top-k; 0
/// without MoE layers).
pub fn model_top_k(s: &Session<'_, '_>) -> usize {
    s.plan()
        .steps()
        .iter()
        .filter_map(|p| match p.step {
            Step::MoeTokens { top_k, .. } => Some(top_k),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Refuses a budget that cannot hold one token's active experts of a layer.
pub fn check_layer_budget(s: &Session<'_, '_>, budget: usize) -> Result<()> {
    let need = s.layer_expert_budget();
    ensure!(
        budget >= need,
        "expert budget too small: {budget} bytes cannot hold one layer's {} active experts of a token ({need} bytes); give at least {need}",
        model_top_k(s)
    );
    Ok(())
}

impl<'m> Parts<'m> {
    /// The pieces for one session of `model` (mapped as `mapped` from the
    /// files `paths`, base first).
    pub fn new(
        model: &Model<'_>,
        mapped: &'m MappedModel,
        paths: &[PathBuf],
        opts: StreamOpts,
    ) -> Result<Self> {
        let largest = ResidencyCache::min_budget(model);
        let reader = match opts.reader {
            ReaderKind::Mmap => None,
            // Read-ahead room: two layers' predictions of one token.
            ReaderKind::Pread => Some(
                PrefetchReader::from_files_direct(model, paths, 2 * opts.topk.max(1) * largest)
                    .context("starting the pread reader")?,
            ),
        };
        let hook = || match &reader {
            Some(r) => Hook::Pread(r.hints()),
            None => Hook::Mmap(MmapPrefetch(mapped)),
        };
        Ok(Self {
            opts,
            mem: AlignedArena::new(opts.budget.unwrap_or(0)),
            fill: hook(),
            hint: hook(),
            reader,
            stall: Rc::default(),
        })
    }

    /// Handles on the counters.
    pub fn probe(&self) -> Probe {
        Probe {
            stall: Rc::clone(&self.stall),
            hints: self.reader.as_ref().map(PrefetchReader::hints),
            mode: self
                .reader
                .as_ref()
                .map_or("mmap".into(), |r| r.io_mode().to_string()),
        }
    }

    /// The session's blob source (a cache, or the pread reader without a
    /// budget; `None`: in place) and its prefetch hook, for [`attach`].
    pub fn split<'s>(
        &'s mut self,
        model: &Model<'_>,
    ) -> Result<(Option<Timed<'s>>, &'s mut Hook<'m>)> {
        let Self {
            opts,
            mem,
            reader,
            fill,
            hint,
            stall,
        } = self;
        let src = match (opts.budget, reader.as_mut()) {
            (Some(_), _) => Some(Source::Cache(Box::new(
                ResidencyCache::new(model, mem.as_mut_slice())
                    .context("creating the expert cache")?
                    .with_fill_hint(fill),
            ))),
            (None, Some(r)) => Some(Source::Reader(r)),
            (None, None) => None,
        };
        let timed = src.map(|src| Timed {
            src,
            stall: Rc::clone(stall),
        });
        Ok((timed, hint))
    }
}

/// Gives `session` the blob source and prefetch hook of [`Parts::split`],
/// refusing a budget below one layer's active experts.
pub fn attach<'s, 'p: 's, 'm: 's>(
    session: Session<'s, 's>,
    source: Option<&'s mut Timed<'p>>,
    hint: &'s mut Hook<'m>,
    opts: StreamOpts,
) -> Result<Session<'s, 's>> {
    if let Some(b) = opts.budget {
        check_layer_budget(&session, b)?;
    }
    let mut session = session.with_prefetch_topk(opts.topk).with_prefetch(hint);
    if let Some(src) = source {
        session = session.with_blob_source(src)?;
    }
    Ok(session)
}

/// Prediction scores of one MoE layer.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct LayerScore {
    /// Expert fetches the layer ran.
    pub used: u64,
    /// Of them, predicted.
    pub predicted: u64,
    /// Bytes hinted for the layer (predicted and not held).
    pub hinted_bytes: u64,
    /// Of them, for experts the layer did not run.
    pub wasted_bytes: u64,
}

impl LayerScore {
    fn add(&mut self, o: &Self) {
        self.used += o.used;
        self.predicted += o.predicted;
        self.hinted_bytes += o.hinted_bytes;
        self.wasted_bytes += o.wasted_bytes;
    }
    /// Predicted share of the experts used.
    pub fn recall(&self) -> f64 {
        self.predicted as f64 / self.used.max(1) as f64
    }
}

/// Scores speculative prefetch against the experts each layer then runs:
/// fed by a tracer's `expert_predicted`, `expert_fetch` and `op_end`.
#[derive(Debug, Default)]
pub struct Predictions {
    /// Per expert group (MoE layer).
    pub layers: BTreeMap<u16, LayerScore>,
    /// Predictions waiting for their layer: (blob, hinted).
    pending: BTreeMap<u16, Vec<(u32, bool)>>,
    /// Blobs the running MoE op fetched.
    fetched: Vec<u32>,
}

impl Predictions {
    fn group(model: &Model<'_>, blob: u32) -> Option<(u16, u64)> {
        model
            .blob(blob)
            .map(|b| (b.rec.group, b.bytes.len() as u64))
    }
    /// A prediction for the layer of `blob`.
    pub fn predicted(&mut self, model: &Model<'_>, blob: u32, hinted: bool) {
        if let Some((g, _)) = Self::group(model, blob) {
            self.pending.entry(g).or_default().push((blob, hinted));
        }
    }
    /// An expert fetch of the running MoE op.
    pub fn fetched(&mut self, blob: u32) {
        self.fetched.push(blob);
    }
    /// The end of an op: an MoE op's fetches settle its layer's predictions.
    pub fn op_end(&mut self, model: &Model<'_>) {
        let Some((g, _)) = self.fetched.first().and_then(|&b| Self::group(model, b)) else {
            return;
        };
        let pending = self.pending.remove(&g).unwrap_or_default();
        let score = self.layers.entry(g).or_default();
        for &b in &self.fetched {
            score.used += 1;
            score.predicted += u64::from(pending.iter().any(|p| p.0 == b));
        }
        for &(b, _) in pending.iter().filter(|p| p.1) {
            let bytes = Self::group(model, b).map_or(0, |x| x.1);
            score.hinted_bytes += bytes;
            if !self.fetched.contains(&b) {
                score.wasted_bytes += bytes;
            }
        }
        self.fetched.clear();
    }
    /// All layers together.
    pub fn total(&self) -> LayerScore {
        let mut t = LayerScore::default();
        self.layers.values().for_each(|l| t.add(l));
        t
    }
    /// "recall 87.5% (layers 91/80/...), hinted X, wasted Y (Z%) per token".
    pub fn summary(&self, tokens: usize) -> String {
        let t = self.total();
        let per = |v: u64| human_bytes((v / tokens.max(1) as u64) as usize);
        let layers: Vec<String> = self
            .layers
            .values()
            .map(|l| format!("{:.0}", 100.0 * l.recall()))
            .collect();
        format!(
            "recall {:.1}% (per layer: {}%); hinted {} per token, wasted {} per token ({:.1}% of hinted)",
            100.0 * t.recall(),
            layers.join("/"),
            per(t.hinted_bytes),
            per(t.wasted_bytes),
            100.0 * t.wasted_bytes as f64 / t.hinted_bytes.max(1) as f64
        )
    }
}
