//! The profile summary: one row per task, an activation histogram per
//! (task, modality), energy or "no meter" with CPU time.

use serde::Serialize;

use crate::driver::TaskProfile;
use crate::stats::{mean, percentile};

/// One task's summary row.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRow {
    /// Task name.
    pub task: String,
    /// Timed runs.
    pub runs: usize,
    /// Latency percentiles and mean, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Inferences per second over the timed phase's wall time.
    pub throughput_per_s: f64,
    /// Weight bytes read per inference.
    pub bytes_touched: f64,
    /// Bytes paged in per traced inference (mean; `None` without mincore).
    pub bytes_paged_in: Option<f64>,
    /// Bytes paged in at session creation.
    pub session_paged_in: Option<u64>,
    /// Expert components evaluated per inference.
    pub expert_components: f64,
    /// Residency cache hit rate, when a budget was given.
    pub cache_hit_rate: Option<f64>,
    /// Energy per inference, µJ; `None` = no meter.
    pub energy_uj_per_inference: Option<f64>,
    /// Process CPU time per inference, µs (always reported).
    pub cpu_us_per_inference: f64,
}

/// One (task, modality) activation histogram.
#[derive(Clone, Debug, Serialize)]
pub struct ActivationRow {
    /// Task name.
    pub task: String,
    /// Modality name.
    pub modality: String,
    /// Router decisions seen.
    pub routes: u64,
    /// Times each expert was picked.
    pub counts: Vec<u64>,
}

/// The whole summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// What was profiled (package path and deltas).
    pub model: String,
    /// The meter's name, or `"no meter"`.
    pub meter: String,
    /// Why there is no energy, when there is none.
    pub meter_note: Option<String>,
    /// Per task.
    pub tasks: Vec<TaskRow>,
    /// Per (task, modality).
    pub activations: Vec<ActivationRow>,
    /// `/proc/self/io` `read_bytes` over the whole profile.
    pub process_read_bytes: Option<u64>,
}

/// A summary row from a task's profile.
pub fn task_row(p: &TaskProfile) -> TaskRow {
    let lat: Vec<f64> = p.latencies_ns.iter().map(|&n| n as f64 / 1000.0).collect();
    let pct = |q| percentile(&lat, q).unwrap_or(0.0);
    let n = p.latencies_ns.len().max(1) as f64;
    TaskRow {
        task: p.task.clone(),
        runs: p.latencies_ns.len(),
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        mean_us: mean(&lat),
        throughput_per_s: p.latencies_ns.len() as f64 / p.wall.as_secs_f64().max(1e-12),
        bytes_touched: p.weight_bytes,
        bytes_paged_in: (!p.paged_in.is_empty())
            .then(|| p.paged_in.iter().sum::<u64>() as f64 / p.paged_in.len() as f64),
        session_paged_in: p.session_paged_in,
        expert_components: p.expert_components,
        cache_hit_rate: p.cache.and_then(|c| {
            let total = c.hits + c.misses;
            (total > 0).then(|| c.hits as f64 / total as f64)
        }),
        energy_uj_per_inference: p.energy_uj.map(|e| e / n),
        cpu_us_per_inference: p.cpu.as_secs_f64() * 1e6 / n,
    }
}

fn bytes(v: f64) -> String {
    if v >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", v / 1024.0 / 1024.0)
    } else if v >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

impl Summary {
    /// The summary as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut s = format!("Model: `{}`  \nEnergy: {}", self.model, self.meter);
        if let Some(n) = &self.meter_note {
            s.push_str(&format!(" ({n})"));
        }
        s.push_str("\n\n| task | runs | p50 µs | p90 µs | p99 µs | mean µs | inf/s | bytes touched/inf | paged in/inf | paged in at session | expert comps/inf | cache hit rate | energy/inf | CPU µs/inf |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for t in &self.tasks {
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {:.1} | {} | {} | {:.1} |\n",
                t.task,
                t.runs,
                t.p50_us,
                t.p90_us,
                t.p99_us,
                t.mean_us,
                t.throughput_per_s,
                bytes(t.bytes_touched),
                t.bytes_paged_in.map_or("n/a (no mincore)".into(), bytes),
                t.session_paged_in
                    .map_or("n/a".into(), |b| bytes(b as f64)),
                t.expert_components,
                t.cache_hit_rate
                    .map_or("no cache".into(), |r| format!("{:.1}%", 100.0 * r)),
                t.energy_uj_per_inference
                    .map_or("no meter".into(), |e| format!("{e:.1} µJ")),
                t.cpu_us_per_inference
            ));
        }
        if !self.activations.is_empty() {
            let n = self.activations[0].counts.len();
            s.push_str("\nExpert activations (share of router decisions that picked each expert):\n\n| task | modality | routes |");
            for e in 0..n {
                s.push_str(&format!(" e{e} |"));
            }
            s.push_str("\n|---|---|---:|");
            s.push_str(&"---:|".repeat(n));
            s.push('\n');
            for a in &self.activations {
                s.push_str(&format!("| {} | {} | {} |", a.task, a.modality, a.routes));
                for c in &a.counts {
                    s.push_str(&format!(" {:.2} |", *c as f64 / a.routes.max(1) as f64));
                }
                s.push('\n');
            }
        }
        if let Some(b) = self.process_read_bytes {
            s.push_str(&format!(
                "\nStorage reads by the process over the whole profile (/proc/self/io read_bytes): {}\n",
                bytes(b as f64)
            ));
        }
        s
    }
}
