//! `taskpath residency LM.tpk --corpus DIR`: the expert cache on a language
//! model's real routing. Each domain's test text is decoded token by token
//! on the full model (a device serving that domain), the expert-blob
//! fetches are recorded, and LRU, LFU with decay and LRU with the domain's
//! hottest experts pinned are replayed against Belady's optimum at each
//! budget, with two layer-aware policies that know the decoder's layer
//! cycle (layer-cyclic and layer-LFU, `taskpath_pack::residency::LayerRank`). The runtime's `ResidencyCache` replays the LRU+pin case for
//! real and must count exactly what the simulation counts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use taskpath_pack::domains;
use taskpath_pack::residency::{
    simulate_belady, simulate_layer, simulate_lfu, simulate_lru, LayerRank, SimResult,
};
use taskpath_runtime::{cache_footprint, AlignedArena, Model, Prefetch, ResidencyCache, Tracer};

use crate::lm::{load_texts, task_or_full, CorpusArgs};
use crate::residency::ResidencyArgs;
use crate::stream::model_top_k;
use crate::util::{outln, Table};

/// The fetches of a run and the speculative prefetch's predictions: each
/// predicted blob with the number of fetches made before it was predicted.
#[derive(Default)]
struct Routing {
    fetches: Vec<u32>,
    predicted: Vec<(usize, u32)>,
}

impl Tracer for Routing {
    fn expert_fetch(&mut self, blob: u32) {
        self.fetches.push(blob);
    }
    fn expert_predicted(&mut self, blob: u32, _hinted: bool) {
        self.predicted.push((self.fetches.len(), blob));
    }
}

/// A prefetch hook that reads nothing: the session only reports its
/// predictions to the tracer.
struct NoRead;

impl Prefetch for NoRead {
    fn will_need(&mut self, _blob: u32, _bytes: &[u8]) {}
}

/// Decodes `ids` on `task` in windows, through `cache` when given; with
/// `predict`, speculative next-layer prediction of as many experts per token
/// as the router picks (k' = k; hints only, outputs and fetches unchanged).
fn routing(
    model: &Model<'_>,
    task: usize,
    ids: &[u32],
    window: usize,
    cache: Option<&mut ResidencyCache<'_>>,
    predict: bool,
) -> Result<Routing> {
    let info = model.task(task)?;
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut hook = NoRead;
    let mut s = domains::session(model, task, &mut arena)?;
    if predict {
        let k = model_top_k(&s);
        s = s.with_prefetch(&mut hook).with_prefetch_topk(k);
    }
    if let Some(c) = cache {
        s = s.with_blob_source(c)?;
    }
    let mut r = Routing::default();
    domains::score(&mut s, ids, window, &mut r)?;
    Ok(r)
}

/// What a routing-aware eviction may protect at each fetch of `trace`.
struct Lookahead<'r> {
    routing: &'r Routing,
    /// Per fetch: the range of `routing.predicted` made last before it (one
    /// emission point, all with the same fetch count: the next MoE layer's
    /// top-k' experts, scored before this layer's experts ran).
    predicted: Vec<core::ops::Range<usize>>,
    /// Per fetch: the end (exclusive) of its decode step's fetches, found
    /// where the layer cycle wraps.
    step_end: Vec<usize>,
}

impl<'r> Lookahead<'r> {
    fn new(r: &'r Routing, layer_of: impl Fn(u32) -> usize) -> Self {
        let f = &r.fetches;
        let mut step_end = vec![f.len(); f.len()];
        for i in (0..f.len().saturating_sub(1)).rev() {
            step_end[i] = if layer_of(f[i + 1]) < layer_of(f[i]) {
                i + 1
            } else {
                step_end[i + 1]
            };
        }
        let p = &r.predicted;
        let (mut start, mut end) = (0, 0);
        let predicted = (0..f.len())
            .map(|i| {
                while end < p.len() && p[end].0 <= i {
                    if p[end].0 != p[start].0 {
                        start = end;
                    }
                    end += 1;
                }
                start..end
            })
            .collect();
        Self {
            routing: r,
            predicted,
            step_end,
        }
    }

    /// A realisable predictor: the experts the router already picked for
    /// this layer and not yet fetched, and the next layer's predicted ones.
    fn predicted<'s>(
        &'s self,
        layer_of: impl Fn(u32) -> usize + 's,
    ) -> impl Fn(usize, u32) -> bool + 's {
        let (f, p) = (&self.routing.fetches, &self.routing.predicted);
        move |i, b| {
            p[self.predicted[i].clone()].iter().any(|&(_, x)| x == b)
                || f[i + 1..self.step_end[i]]
                    .iter()
                    .take_while(|&&x| layer_of(x) == layer_of(f[i]))
                    .any(|&x| x == b)
        }
    }

    /// The oracle bound of any within-step predictor: every blob the rest
    /// of this decode step fetches (from the trace itself).
    fn step_oracle(&self) -> impl Fn(usize, u32) -> bool + '_ {
        let f = &self.routing.fetches;
        move |i, b| f[i + 1..self.step_end[i]].contains(&b)
    }
}

/// The domain's expert blobs by calibration gate mass on its own task
/// (the package's route statistics), hottest first; `None` when the
/// package has no statistics for it.
fn hot_blobs(model: &Model<'_>, domain: &str) -> Option<Vec<u32>> {
    let task = model.task_index(domain).ok()?;
    let mut heat: BTreeMap<u32, f64> = BTreeMap::new();
    for p in model.parts() {
        for s in p.stats().iter().filter(|s| s.task as usize == task) {
            if let Some(e) = model.expert(s.group, s.expert as usize, 0) {
                *heat.entry(e.blob).or_default() += f64::from(s.mass);
            }
        }
    }
    if heat.is_empty() {
        return None;
    }
    let mut v: Vec<(u32, f64)> = heat.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Some(v.into_iter().map(|(b, _)| b).collect())
}

/// Weight of the layer distance in layer-LFU.
const LAYER_WEIGHT: f64 = 1.0;

/// Each expert blob's MoE layer (groups with experts, in group order, which
/// is the order a decoder runs them) and the number of layers.
fn blob_layers(model: &Model<'_>) -> (BTreeMap<u32, usize>, usize) {
    let mut map = BTreeMap::new();
    let mut layers = 0;
    for g in 0..model.group_count() as u32 {
        let blobs: Vec<u32> = (0..)
            .map_while(|j| model.expert(g, j, 0))
            .map(|e| e.blob)
            .collect();
        if blobs.is_empty() {
            continue;
        }
        for b in blobs {
            map.insert(b, layers);
        }
        layers += 1;
    }
    (map, layers)
}

fn pct(r: &SimResult) -> String {
    format!("{:.1}%", 100.0 * r.hit_rate())
}

/// Runs the language-model mode of `residency`.
pub fn main(model: &Model<'_>, a: &ResidencyArgs, corpus: &Path) -> Result<()> {
    ensure!(
        a.lfu_half_life.is_finite() && (1.0..=1e9).contains(&a.lfu_half_life),
        "--lfu-half-life must be in 1..=1e9 fetches, got {}",
        a.lfu_half_life
    );
    let args = CorpusArgs {
        corpus: Some(corpus.to_path_buf()),
        window: None,
        max_tokens: Some(a.max_tokens),
        jobs: 1,
    };
    let texts = load_texts(model, corpus, &a.split, &args)?;
    let full = task_or_full(model, None)?;
    let sizes: Vec<usize> = model
        .expert_blobs()
        .map(|b| cache_footprint(b.bytes.len()))
        .collect();
    let blob = sizes
        .iter()
        .copied()
        .max()
        .context("the package has no expert blobs")?;
    ensure!(
        sizes.iter().all(|&s| s == blob),
        "the LLM mode replays equal expert blobs only (this package's differ in size)"
    );
    let pool = blob * sizes.len();
    let (layer_map, layers) = blob_layers(model);
    let layer_of = |b: u32| layer_map.get(&b).copied().unwrap_or(0);
    outln!(
        "full model, {} split, first {} tokens per domain, windows of {}: {} expert blobs of {} bytes (cache footprint), pool {} bytes; LFU half-life {} fetches; pin share {}",
        a.split,
        a.max_tokens,
        texts.window,
        sizes.len(),
        blob,
        pool,
        a.lfu_half_life,
        a.pin_fraction
    );
    let mut t = Table::new(&[
        "domain",
        "budget",
        "slots",
        "LRU",
        "LFU (decay)",
        "LRU+pin",
        "pinned",
        "layer-cyclic",
        "layer-LFU",
        "layer-LFU + prediction",
        "layer-LFU + step oracle",
        "Belady",
        "best / Belady",
        "runtime cache (LRU+pin)",
    ]);
    // Per budget: summed hits and fetches of each policy.
    let mut sums: BTreeMap<usize, [SimResult; 8]> = BTreeMap::new();
    for (domain, ids) in &texts.domains {
        let routed = routing(model, full, ids, texts.window, None, true)
            .with_context(|| format!("decoding domain {domain}"))?;
        let trace = &routed.fetches;
        let ahead = Lookahead::new(&routed, layer_of);
        let hot = hot_blobs(model, domain);
        for &frac in &a.budgets {
            let budget = (pool as f64 * frac) as usize;
            let slots = budget / blob;
            if slots < 1 {
                t.row(vec![
                    domain.clone(),
                    format!("{:.0}%", frac * 100.0),
                    "budget below one expert".into(),
                ]);
                continue;
            }
            let n_pin = ((slots as f64 * a.pin_fraction) as usize).min(slots - 1);
            let pinned: Vec<u32> = hot
                .as_deref()
                .map_or(Vec::new(), |h| h[..n_pin.min(h.len())].to_vec());
            let lru = simulate_lru(trace, slots, &[]);
            let lfu = simulate_lfu(trace, slots, a.lfu_half_life);
            let lru_pin = simulate_lru(trace, slots, &pinned);
            let layered = |rank, protect: &dyn Fn(usize, u32) -> bool| {
                simulate_layer(
                    trace,
                    slots,
                    a.lfu_half_life,
                    layers,
                    layer_of,
                    rank,
                    protect,
                )
            };
            let lfu_rank = LayerRank::Lfu {
                weight: LAYER_WEIGHT,
            };
            let cyclic = layered(LayerRank::Cyclic, &|_, _| false);
            let layer_lfu = layered(lfu_rank, &|_, _| false);
            let layer_lfu_predicted = layered(lfu_rank, &ahead.predicted(layer_of));
            let layer_lfu_oracle = layered(lfu_rank, &ahead.step_oracle());
            let belady = simulate_belady(trace, slots);
            let best = [lru, lfu, lru_pin, cyclic, layer_lfu, layer_lfu_predicted]
                .iter()
                .map(SimResult::hit_rate)
                .fold(0.0, f64::max);
            // The runtime cache, same pins, same text: must match exactly.
            let mut mem = AlignedArena::new(slots * blob);
            let mut cache = ResidencyCache::new(model, mem.as_mut_slice())?;
            for &b in &pinned {
                cache.pin(model, b)?;
            }
            let pin_loads = cache.stats().misses;
            routing(model, full, ids, texts.window, Some(&mut cache), false)?;
            let st = cache.stats();
            let (hits, misses) = (st.hits, st.misses - pin_loads);
            ensure!(
                st.peak_resident_bytes as usize <= slots * blob,
                "the cache held {} bytes over its {}-byte budget",
                st.peak_resident_bytes,
                slots * blob
            );
            ensure!(
                hits == lru_pin.hits && misses == lru_pin.misses,
                "{domain}: the runtime cache's {hits} hits / {misses} misses differ from the simulation's {} / {}",
                lru_pin.hits,
                lru_pin.misses
            );
            let e = sums.entry(slots).or_default();
            for (acc, r) in e.iter_mut().zip([
                lru,
                lfu,
                lru_pin,
                cyclic,
                layer_lfu,
                layer_lfu_predicted,
                layer_lfu_oracle,
                belady,
            ]) {
                acc.hits += r.hits;
                acc.misses += r.misses;
            }
            t.row(vec![
                domain.clone(),
                format!("{:.0}%", frac * 100.0),
                slots.to_string(),
                pct(&lru),
                pct(&lfu),
                pct(&lru_pin),
                if hot.is_some() {
                    pinned.len().to_string()
                } else {
                    "0 (no stats)".into()
                },
                pct(&cyclic),
                pct(&layer_lfu),
                pct(&layer_lfu_predicted),
                pct(&layer_lfu_oracle),
                pct(&belady),
                format!("{:.1}%", 100.0 * best / belady.hit_rate().max(1e-12)),
                format!(
                    "{:.1}% (= simulation)",
                    100.0 * hits as f64 / (hits + misses).max(1) as f64
                ),
            ]);
        }
    }
    for (slots, [lru, lfu, pin, cyclic, layer_lfu, predicted, oracle, belady]) in &sums {
        let best = [lru, lfu, pin, cyclic, layer_lfu, predicted]
            .iter()
            .map(|r| r.hit_rate())
            .fold(0.0, f64::max);
        t.row(vec![
            "all (pooled)".into(),
            format!("{:.0}%", 100.0 * (slots * blob) as f64 / pool as f64),
            slots.to_string(),
            pct(lru),
            pct(lfu),
            pct(pin),
            "-".into(),
            pct(cyclic),
            pct(layer_lfu),
            pct(predicted),
            pct(oracle),
            pct(belady),
            format!("{:.1}%", 100.0 * best / belady.hit_rate().max(1e-12)),
            "-".into(),
        ]);
    }
    outln!("{}", t.render(""));
    Ok(())
}
