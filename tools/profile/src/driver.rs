//! Runs tasks over inputs: a traced pass (timeline, routes, bytes, page-ins,
//! cache), warm-up, then timed untraced runs (latency, energy, CPU time).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use taskpath_checkpoint::Sample;
use taskpath_runtime::{AlignedArena, CacheStats, Model, ResidencyCache, Session, TaskInfo};

use crate::chrome::{Recorder, SpanKind};
use crate::energy::{process_cpu_time, Meter};
use crate::pagein::{paged_in_bytes, resident_pages};

/// How to profile.
#[derive(Clone, Debug)]
pub struct Options {
    /// Untimed runs before the timed ones.
    pub warmup: usize,
    /// Timed runs per task (cycling over the inputs).
    pub runs: usize,
    /// Traced runs per task (cycling over the inputs); `None`: each input once.
    pub trace_runs: Option<usize>,
    /// Residency cache budget in bytes (`None`: weights read in place).
    pub budget: Option<usize>,
    /// Verify the path's checksums at session creation (reads the path).
    pub verify: bool,
}

/// One task's results.
#[derive(Clone, Debug)]
pub struct TaskProfile {
    /// Task name.
    pub task: String,
    /// Lane in the trace.
    pub lane: u32,
    /// Samples available.
    pub samples: usize,
    /// Timed runs' latencies, ns.
    pub latencies_ns: Vec<u64>,
    /// Wall time of the timed phase.
    pub wall: Duration,
    /// Process CPU time of the timed phase.
    pub cpu: Duration,
    /// Energy of the timed phase, µJ (`None`: no meter or a failed read).
    pub energy_uj: Option<f64>,
    /// Why energy is missing, when it is.
    pub energy_error: Option<String>,
    /// Weight bytes read per inference (mean over traced runs).
    pub weight_bytes: f64,
    /// Expert components evaluated per inference (mean over traced runs).
    pub expert_components: f64,
    /// Bytes paged in while creating the session (path checksums).
    pub session_paged_in: Option<u64>,
    /// Bytes paged in per traced inference.
    pub paged_in: Vec<u64>,
    /// Cache counters over the traced and timed phases, when a budget was given.
    pub cache: Option<CacheStats>,
    /// Traced inferences.
    pub traced: usize,
}

/// `blob -> (expert, component)` for every expert blob of the model.
pub fn expert_blobs(model: &Model<'_>) -> BTreeMap<u32, (usize, usize)> {
    model
        .expert_blobs()
        .map(|b| {
            (
                b.index,
                (usize::from(b.rec.expert), usize::from(b.rec.component)),
            )
        })
        .collect()
}

fn check_sample(task: &TaskInfo<'_>, model: &Model<'_>, i: usize, s: &Sample) -> Result<()> {
    let shapes: Vec<(usize, usize)> = task
        .modalities()
        .map(|m| model.modality(m).map_or((0, 0), |(_, l, f)| (l, f)))
        .collect();
    ensure!(
        s.inputs.len() == shapes.len(),
        "sample {i}: {} inputs, task {} takes {}",
        s.inputs.len(),
        task.name,
        shapes.len()
    );
    for (k, (x, (l, f))) in s.inputs.iter().zip(&shapes).enumerate() {
        ensure!(
            x.len() == l * f,
            "sample {i}, input {k}: {} values, task {} expects {l} tokens x {f} features",
            x.len(),
            task.name
        );
    }
    Ok(())
}

/// Profiles `task` over `samples` on trace lane `lane`. `package` is the
/// mapped package (for page-in counts); `progress` is called once per run.
#[allow(clippy::too_many_arguments)]
pub fn profile_task(
    model: &Model<'_>,
    package: &[u8],
    task: &TaskInfo<'_>,
    samples: &[Sample],
    lane: u32,
    opts: &Options,
    meter: &mut Meter,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(),
) -> Result<TaskProfile> {
    ensure!(!samples.is_empty(), "task {}: no input samples", task.name);
    for (i, s) in samples.iter().enumerate() {
        check_sample(task, model, i, s)?;
    }
    let inputs: Vec<Vec<&[f32]>> = samples
        .iter()
        .map(|s| s.inputs.iter().map(Vec::as_slice).collect())
        .collect();
    let mut out = vec![0f32; task.outputs];
    let mut arena = AlignedArena::new(task.arena_bytes);
    let mut cache_mem = opts.budget.map(AlignedArena::new);
    let mut cache = match cache_mem.as_mut() {
        Some(m) => {
            let n = m.as_slice().len();
            Some(
                ResidencyCache::new(model, m.as_mut_slice())
                    .with_context(|| format!("a residency cache of {n} bytes"))?,
            )
        }
        None => None,
    };
    let before = resident_pages(package);
    let opts_s = taskpath_runtime::SessionOptions {
        verify_path: opts.verify,
        kernels: None,
    };
    let mut session = Session::with_options(model, task.index, arena.as_mut_slice(), opts_s)
        .with_context(|| format!("creating a session for task {}", task.name))?;
    if let Some(c) = cache.as_mut() {
        session = session.with_blob_source(c)?;
    }
    let session_paged_in = match (&before, resident_pages(package)) {
        (Some(b), Some(a)) => Some(paged_in_bytes(b, &a)),
        _ => None,
    };

    // Traced pass.
    let mut paged_in = Vec::new();
    let (mut weight_bytes, mut components) = (0u64, 0u64);
    let n_trace = opts.trace_runs.unwrap_or(samples.len()).max(1);
    for r in 0..n_trace {
        let i = r % samples.len();
        let before = resident_pages(package);
        rec.begin_inference(lane, i);
        let stats = session
            .run_traced(&inputs[i], &mut out, &mut *rec)
            .with_context(|| format!("running sample {i} of task {}", task.name))?;
        let end = rec.end_inference();
        if let (Some(b), Some(a)) = (before, resident_pages(package)) {
            let bytes = paged_in_bytes(&b, &a);
            paged_in.push(bytes);
            rec.counter("paged in (bytes)", end, vec![("bytes", bytes as f64)]);
        }
        if opts.budget.is_some() {
            rec.counter(
                "residency cache",
                end,
                vec![("hits", rec.hits as f64), ("misses", rec.misses as f64)],
            );
        }
        weight_bytes += stats.weight_bytes as u64;
        components += u64::from(stats.expert_components);
        progress();
    }

    for r in 0..opts.warmup {
        let i = r % samples.len();
        session.run(&inputs[i], &mut out)?;
        progress();
    }

    // Timed pass.
    let mut latencies_ns = Vec::with_capacity(opts.runs);
    let e0 = match meter {
        Meter::Some(m) => Some(m.energy_uj()),
        Meter::None(_) => None,
    };
    let cpu0 = process_cpu_time();
    let started = Instant::now();
    for r in 0..opts.runs {
        let i = r % samples.len();
        let t = Instant::now();
        session.run(&inputs[i], &mut out)?;
        latencies_ns.push(t.elapsed().as_nanos() as u64);
        progress();
    }
    let wall = started.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu0);
    let (energy_uj, energy_error) = match (meter, e0) {
        (Meter::Some(m), Some(Ok(e0))) => match m.energy_uj() {
            Ok(e1) => (Some(e1.saturating_sub(e0) as f64), None),
            Err(e) => (
                None,
                Some(format!("{} read failed after the runs: {e}", m.name())),
            ),
        },
        (Meter::Some(m), Some(Err(e))) => (None, Some(format!("{} read failed: {e}", m.name()))),
        (Meter::None(why), _) => (None, Some(why.clone())),
        (Meter::Some(_), None) => (None, Some("meter not read".into())),
    };
    Ok(TaskProfile {
        task: task.name.to_string(),
        lane,
        samples: samples.len(),
        latencies_ns,
        wall,
        cpu,
        energy_uj,
        energy_error,
        weight_bytes: weight_bytes as f64 / n_trace as f64,
        expert_components: components as f64 / n_trace as f64,
        session_paged_in,
        paged_in,
        cache: cache.map(|c| c.stats()),
        traced: n_trace,
    })
}

/// Median over the traced inferences on `lane` of each opcode's time per
/// inference, ns (the median keeps a descheduled run from dominating).
pub fn op_breakdown(rec: &Recorder, lane: u32, _traced: usize) -> BTreeMap<String, f64> {
    // Per inference (by its start), per opcode, the summed op time.
    let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut inferences: Vec<(u64, u64)> = rec
        .spans
        .iter()
        .filter(|s| s.lane == lane && matches!(s.kind, SpanKind::Inference { .. }))
        .map(|s| (s.start_ns, s.end_ns))
        .collect();
    inferences.sort_unstable();
    let n = inferences.len();
    for s in rec.spans.iter().filter(|s| s.lane == lane) {
        if let SpanKind::Op { op, .. } = &s.kind {
            let i = inferences.partition_point(|x| x.0 <= s.start_ns);
            if i == 0 {
                continue;
            }
            let v = per.entry(op.to_string()).or_insert_with(|| vec![0.0; n]);
            v[i - 1] += (s.end_ns - s.start_ns) as f64;
        }
    }
    per.into_iter()
        .map(|(k, v)| (k, crate::stats::median(&v)))
        .collect()
}

/// Expert activation counts: `(lane, modality) -> (count per expert, routes)`.
pub fn activations(rec: &Recorder, experts: usize) -> BTreeMap<(u32, u32), (Vec<u64>, u64)> {
    let mut m: BTreeMap<(u32, u32), (Vec<u64>, u64)> = BTreeMap::new();
    for r in &rec.routes {
        let e = m
            .entry((r.lane, r.modality))
            .or_insert_with(|| (vec![0; experts], 0));
        e.1 += 1;
        for &x in &r.experts {
            if let Some(c) = e.0.get_mut(x as usize) {
                *c += 1;
            }
        }
    }
    m
}
