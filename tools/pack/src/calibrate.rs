//! Task paths from routing statistics.
//!
//! The model is packed with every expert allowed, run over calibration inputs
//! on the real runtime, and each router's choices and gate mass are recorded
//! per (task, modality, expert). A path keeps, per (task, modality), the
//! fewest experts carrying at least the requested share of the gate mass —
//! never fewer than top-k, so routing keeps its k choices.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use taskpath_checkpoint::{random_inputs, Checkpoint, SplitMix64};
use taskpath_format::ExpertMask;
use taskpath_runtime::{AlignedArena, Model, Session, SessionOptions, Tracer};

/// Per expert of one (task, modality): (times picked, summed gate).
pub type ExpertTally = Vec<(u32, f64)>;

/// Per (task, router): samples seen, and per expert (times picked, summed
/// gate). A FLAME router is a modality; a language model's is an MoE layer's
/// expert group, and its samples are tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteStats {
    /// `(task, router) -> (samples, [(picks, gate mass)] per expert)`.
    pub table: BTreeMap<(usize, usize), (u32, ExpertTally)>,
}

impl RouteStats {
    /// `(picks, share of gate mass in 0..=1, samples)` of one entry.
    pub fn get(&self, task: usize, modality: usize, expert: usize) -> (u32, f32, u32) {
        match self.table.get(&(task, modality)) {
            Some((samples, v)) if *samples > 0 => {
                let (p, m) = v.get(expert).copied().unwrap_or((0, 0.0));
                (
                    p,
                    (m / f64::from(*samples)).clamp(0.0, 1.0) as f32,
                    *samples,
                )
            }
            _ => (0, 0.0, 0),
        }
    }
    /// Gate mass of `expert` summed over a task's modalities (for hot-first ordering).
    pub fn expert_mass(&self, task: usize, expert: usize) -> f64 {
        self.table
            .iter()
            .filter(|((t, _), _)| *t == task)
            .map(|(_, (_, v))| v.get(expert).map_or(0.0, |x| x.1))
            .sum()
    }
}

struct Recorder<'s> {
    modality_slot: &'s mut BTreeMap<usize, Vec<(u32, f64)>>,
}

impl Tracer for Recorder<'_> {
    fn route(&mut self, modality: u32, experts: &[u32], gates: &[f32]) {
        if let Some(v) = self.modality_slot.get_mut(&(modality as usize)) {
            for (&e, &g) in experts.iter().zip(gates) {
                if let Some(x) = v.get_mut(e as usize) {
                    x.0 += 1;
                    x.1 += f64::from(g);
                }
            }
        }
    }
}

/// Runs every task of `ck` over its calibration inputs (`inputs[task]` = samples,
/// each one flat vector per task modality) with every expert allowed, and
/// records the routing.
pub fn route_statistics(ck: &Checkpoint, inputs: &[Vec<Vec<Vec<f32>>>]) -> Result<RouteStats> {
    let c = &ck.config;
    ensure!(
        inputs.len() == c.tasks.len(),
        "calibration data has {} tasks, model has {}",
        inputs.len(),
        c.tasks.len()
    );
    let bytes = AlignedArena::from_bytes(&crate::pack(ck, &crate::PackOptions::default())?);
    let model = Model::from_bytes(bytes.as_slice())?;
    let mut stats = RouteStats::default();
    let total: u64 = inputs.iter().map(|s| s.len() as u64).sum();
    let bar = indicatif::ProgressBar::new(total).with_message("calibrating");
    for (t, samples) in inputs.iter().enumerate() {
        let info = model.task(t)?;
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut session = Session::with_options(
            &model,
            t,
            arena.as_mut_slice(),
            SessionOptions {
                verify_path: false,
                ..Default::default()
            },
        )?;
        let mut out = vec![0f32; info.outputs];
        let mut per_mod: BTreeMap<usize, Vec<(u32, f64)>> = info
            .modalities()
            .map(|m| (m, vec![(0, 0.0); c.experts]))
            .collect();
        for (i, s) in samples.iter().enumerate() {
            let refs: Vec<&[f32]> = s.iter().map(|v| v.as_slice()).collect();
            session
                .run_traced(
                    &refs,
                    &mut out,
                    &mut Recorder {
                        modality_slot: &mut per_mod,
                    },
                )
                .with_context(|| format!("calibration sample {i} of task {}", info.name))?;
            bar.inc(1);
        }
        for (m, v) in per_mod {
            stats.table.insert((t, m), (samples.len() as u32, v));
        }
    }
    bar.finish_and_clear();
    Ok(stats)
}

/// Pack options with task paths calibrated on random inputs instead of a
/// dataset: `samples` seeded `random_inputs` per task, paths kept at
/// `coverage`. For tests and benchmarks of narrowed paths.
pub fn random_calibration(
    ck: &Checkpoint,
    samples: usize,
    seed: u64,
    coverage: f64,
) -> Result<crate::PackOptions> {
    let mut rng = SplitMix64::new(seed);
    let inputs: Vec<Vec<Vec<Vec<f32>>>> = (0..ck.config.tasks.len())
        .map(|t| {
            (0..samples)
                .map(|_| random_inputs(&ck.config, t, &mut rng))
                .collect()
        })
        .collect();
    let stats = route_statistics(ck, &inputs)?;
    Ok(crate::PackOptions {
        masks: derive_paths(&stats, coverage, ck.config.top_k),
        stats: Some(stats),
        ..Default::default()
    })
}

/// Per (task, router), the fewest experts (by gate mass, ties to the lower
/// index) whose mass reaches `coverage` of the total, and at least `top_k`,
/// as 64-bit masks (FLAME: at most 64 experts; wider groups keep their
/// first 64 here, use [`derive_masks`]).
pub fn derive_paths(
    stats: &RouteStats,
    coverage: f64,
    top_k: usize,
) -> BTreeMap<(usize, usize), u64> {
    derive_masks(stats, coverage, top_k)
        .into_iter()
        .map(|(k, m)| (k, m.0[0]))
        .collect()
}

/// [`derive_paths`] for groups of any width (up to 256 experts): per
/// `(task, router)` of `stats` (FLAME: a modality; a language model: an MoE
/// layer's group), the [`coverage_mask`] of its tally.
pub fn derive_masks(
    stats: &RouteStats,
    coverage: f64,
    top_k: usize,
) -> BTreeMap<(usize, usize), ExpertMask> {
    stats
        .table
        .iter()
        .map(|(&key, (_, v))| (key, coverage_mask(v, coverage, top_k)))
        .collect()
}

/// The fewest experts of one router (by gate mass, ties to the lower index)
/// whose mass reaches `coverage` of the tally's total, and at least `top_k`
/// of them. At coverage 1.0 the mask is exactly the experts picked at all
/// (plus the top-k floor).
pub fn coverage_mask(tally: &[(u32, f64)], coverage: f64, top_k: usize) -> ExpertMask {
    let mut order: Vec<usize> = (0..tally.len()).collect();
    order.sort_by(|&a, &b| tally[b].1.total_cmp(&tally[a].1).then(a.cmp(&b)));
    let total: f64 = order.iter().map(|&j| tally[j].1).sum();
    let mut mask = ExpertMask::default();
    let mut acc = 0.0;
    for (n, &j) in order.iter().enumerate() {
        // Full coverage keeps every expert that was picked at all, however
        // small its mass against the total's rounding.
        let used = tally[j].0 > 0 || tally[j].1 > 0.0;
        if n >= top_k && acc >= coverage * total && (coverage < 1.0 || !used) {
            break;
        }
        mask.insert(j);
        acc += tally[j].1;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_the_fewest_experts_reaching_coverage_but_at_least_top_k() {
        let mut s = RouteStats::default();
        // Mass 50, 30, 15, 4, 1 on experts 3, 0, 4, 1, 2.
        s.table.insert(
            (0, 0),
            (
                100,
                vec![(60, 30.0), (8, 4.0), (2, 1.0), (100, 50.0), (30, 15.0)],
            ),
        );
        let at = |c| derive_paths(&s, c, 2)[&(0, 0)];
        assert_eq!(at(0.5), 0b01001, "top_k floor: experts 3 and 0");
        assert_eq!(at(0.9), 0b11001, "3, 0, 4 carry 95%");
        assert_eq!(at(0.99), 0b11011, "then 1 reaches 99%");
        assert_eq!(at(1.0), 0b11111);
        assert_eq!(derive_paths(&s, 0.1, 1)[&(0, 0)], 0b01000);
    }

    #[test]
    fn masks_cover_wide_groups_and_keep_exactly_the_used_experts_at_full_coverage() {
        // 128 experts; masses that do not sum exactly in index order.
        let mut v = vec![(0u32, 0.0f64); 128];
        for (j, m) in [(3, 0.1), (70, 0.2), (127, 0.3), (5, 1e-17), (90, 0.7)] {
            v[j] = (1, m);
        }
        let m = coverage_mask(&v, 1.0, 2);
        assert_eq!(m.iter().collect::<Vec<_>>(), [3, 5, 70, 90, 127]);
        let m = coverage_mask(&v, 0.5, 2);
        assert_eq!(m.iter().collect::<Vec<_>>(), [90, 127]);
        // Never fewer than top-k, even where no expert has any mass.
        assert_eq!(coverage_mask(&[(0, 0.0); 8], 0.9, 2).count(), 2);
    }
}
