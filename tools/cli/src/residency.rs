//! `taskpath residency`: expert hit rates under RAM budgets, the runtime's
//! LRU + pinning against Belady's optimum, on a real interleaved workload.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use taskpath_checkpoint::Dataset;
use taskpath_format::records::blob_kind;
use taskpath_pack::residency::{simulate_belady, simulate_lru};
use taskpath_runtime::{AlignedArena, Model, ResidencyCache, Session, SessionOptions, Tracer};

use crate::util::{open_model, outln, Table};
use crate::DeltaArgs;

/// Arguments of `residency`.
#[derive(Debug, clap::Args)]
pub struct ResidencyArgs {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Directory of `{TASK}.{split}.json` datasets; the workload interleaves
    /// every task that has one, sample by sample (a device serving all tasks).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Budgets as fractions of the model's total expert bytes.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,1.0")]
    pub budgets: Vec<f64>,
    /// Which split's datasets make the workload (`test` or `train`).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Share of the slots pinned to the hottest experts (at least one slot
    /// always stays unpinned). The default was chosen on the calibration
    /// (train) split of the bundled model: 0.75 beat 0.5 and 0.65 there.
    #[arg(long, default_value_t = 0.75, value_name = "F")]
    pub pin_fraction: f64,
}

#[derive(Default)]
struct Fetches(Vec<u32>);
impl Tracer for Fetches {
    fn expert_fetch(&mut self, blob: u32) {
        self.0.push(blob);
    }
}

/// The samples of the workload: (task index, inputs), interleaved round-robin.
fn workload(model: &Model<'_>, a: &ResidencyArgs) -> Result<Vec<(usize, Vec<Vec<f32>>)>> {
    let mut per_task = Vec::new();
    for t in 0..model.task_count() {
        let info = model.task(t)?;
        let path = a.data.join(format!("{}.{}.json", info.name, a.split));
        if path.is_file() {
            let ds = Dataset::load(&path).with_context(|| format!("loading {}", path.display()))?;
            per_task.push((
                t,
                ds.samples.into_iter().map(|s| s.inputs).collect::<Vec<_>>(),
            ));
        }
    }
    ensure!(
        !per_task.is_empty(),
        "no {{TASK}}.{}.json in {}",
        a.split,
        a.data.display()
    );
    let longest = per_task.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for (t, samples) in &per_task {
            if let Some(x) = samples.get(i) {
                out.push((*t, x.clone()));
            }
        }
    }
    Ok(out)
}

/// Runs the workload, optionally through a cache; returns the fetch trace.
fn run(
    model: &Model<'_>,
    work: &[(usize, Vec<Vec<f32>>)],
    mut cache: Option<&mut ResidencyCache<'_>>,
) -> Result<Vec<u32>> {
    let mut arenas: BTreeMap<usize, AlignedArena> = BTreeMap::new();
    let mut fetches = Fetches::default();
    for (t, x) in work {
        let info = model.task(*t)?;
        let arena = arenas
            .entry(*t)
            .or_insert_with(|| AlignedArena::new(info.arena_bytes));
        let mut s = Session::with_options(
            model,
            *t,
            arena.as_mut_slice(),
            SessionOptions {
                verify_path: false,
                ..Default::default()
            },
        )?;
        if let Some(c) = cache.as_deref_mut() {
            s = s.with_blob_source(c)?;
        }
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0f32; info.outputs];
        s.run_traced(&refs, &mut out, &mut fetches)
            .with_context(|| format!("running {}", info.name))?;
    }
    Ok(fetches.0)
}

/// Expert blobs by calibration gate mass (from the package's route statistics),
/// hottest first; by trace frequency when the package has none.
fn hot_blobs(model: &Model<'_>, trace: &[u32]) -> Vec<u32> {
    let mut heat: BTreeMap<u32, f64> = BTreeMap::new();
    for p in model.parts() {
        for s in p.stats().iter() {
            let Ok(task) = model.task(s.task as usize) else {
                continue;
            };
            for c in 0..=task.stage {
                if let Some(e) = model.expert(s.expert as usize, c) {
                    *heat.entry(e.blob).or_default() += f64::from(s.mass);
                }
            }
        }
    }
    if heat.is_empty() {
        for &b in trace {
            *heat.entry(b).or_default() += 1.0;
        }
    }
    let mut v: Vec<(u32, f64)> = heat.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().map(|(b, _)| b).collect()
}

/// Runs `taskpath residency`.
pub fn main(a: &ResidencyArgs) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let work = workload(&model, a)?;
    let trace = run(&model, &work, None)?;
    let expert_bytes: usize = (0..model.blob_count() as u32)
        .filter_map(|i| model.blob(i))
        .filter(|b| b.rec.kind == blob_kind::EXPERT)
        .map(|b| b.bytes.len())
        .sum();
    let slot = ResidencyCache::slot_bytes(&model);
    let hot = hot_blobs(&model, &trace);
    outln!(
        "workload: {} samples interleaved over {} tasks, {} expert fetches; expert pool {} bytes, slot {} bytes",
        work.len(),
        work.iter().map(|w| w.0).collect::<std::collections::BTreeSet<_>>().len(),
        trace.len(),
        expert_bytes,
        slot
    );
    let mut table = Table::new(&[
        "budget",
        "slots",
        "pinned",
        "LRU",
        "LRU+pin",
        "Belady",
        "LRU+pin / Belady",
        "runtime cache",
    ]);
    for &frac in &a.budgets {
        let budget = (expert_bytes as f64 * frac) as usize;
        let slots = budget / slot;
        if slots == 0 {
            table.row(vec![
                format!("{:.0}%", frac * 100.0),
                "0".into(),
                "-".into(),
                "budget below one expert".into(),
            ]);
            continue;
        }
        ensure!(
            (0.0..=1.0).contains(&a.pin_fraction),
            "--pin-fraction must be in 0..=1"
        );
        let n_pin = ((slots as f64 * a.pin_fraction) as usize)
            .min(slots - 1)
            .min(hot.len());
        let pinned = &hot[..n_pin];
        let lru = simulate_lru(&trace, slots, &[]);
        let lru_pin = simulate_lru(&trace, slots, pinned);
        let belady = simulate_belady(&trace, slots);
        // The real cache on the same workload must match the simulation exactly.
        let mut mem = AlignedArena::new(budget);
        let mut cache = ResidencyCache::new(&model, mem.as_mut_slice())?;
        for &b in pinned {
            cache.pin(&model, b)?;
        }
        let pins_loaded = cache.stats().misses;
        run(&model, &work, Some(&mut cache))?;
        let st = cache.stats();
        let real_hits = st.hits;
        let real_misses = st.misses - pins_loaded;
        ensure!(
            st.peak_resident_bytes as usize <= budget,
            "cache held {} bytes over a {budget}-byte budget",
            st.peak_resident_bytes
        );
        let agrees = real_hits == lru_pin.hits && real_misses == lru_pin.misses;
        table.row(vec![
            format!("{:.0}%", frac * 100.0),
            slots.to_string(),
            n_pin.to_string(),
            format!("{:.1}%", 100.0 * lru.hit_rate()),
            format!("{:.1}%", 100.0 * lru_pin.hit_rate()),
            format!("{:.1}%", 100.0 * belady.hit_rate()),
            format!(
                "{:.1}%",
                100.0 * lru_pin.hit_rate() / belady.hit_rate().max(1e-12)
            ),
            if agrees {
                format!(
                    "{:.1}% (= simulation)",
                    100.0 * real_hits as f64 / (real_hits + real_misses) as f64
                )
            } else {
                format!("MISMATCH {real_hits}/{real_misses}")
            },
        ]);
        ensure!(
            agrees,
            "the runtime cache's hits ({real_hits}) differ from the simulation's ({})",
            lru_pin.hits
        );
    }
    outln!("{}", table.render(""));
    Ok(())
}
