//! `taskpath routes` of a language-model package on a text corpus: the
//! share of each expert per (domain, layer), the entropy of each domain's
//! expert distribution and the mutual information between domain and
//! expert per layer. `taskpath profile --corpus` plots the same shares.

use anyhow::{Context, Result};
use serde::Serialize;
use taskpath_pack::domains::{self, GroupTally};
use taskpath_runtime::{AlignedArena, Model};

use crate::lm::{entropy_bits, mutual_information_bits, run_jobs, Texts};
use crate::util::Table;

/// Routing of every domain of a corpus split, in the layout of
/// models/lm-domains/fixtures/routing.json.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// The task the text ran on.
    pub task: String,
    /// The split.
    pub split: String,
    /// Tokens per window.
    pub window: usize,
    /// Domains, in order.
    pub domains: Vec<String>,
    /// Expert groups (MoE layers), by name.
    pub groups: Vec<String>,
    /// Experts per group (the widest).
    pub experts: usize,
    /// Experts kept per token.
    pub top_k: usize,
    /// Tokens routed per domain.
    pub tokens: Vec<usize>,
    /// `counts[domain][group][expert]`: tokens that picked the expert.
    pub counts: Vec<Vec<Vec<u64>>>,
    /// `entropy_bits[domain][group]` of the domain's expert distribution.
    pub entropy_bits: Vec<Vec<f64>>,
    /// Entropy of the uniform distribution over a group's experts.
    pub entropy_uniform_bits: f64,
    /// Per group, the entropy of every domain's selections pooled.
    pub entropy_pooled_bits: Vec<f64>,
    /// Per group, `I(domain; expert)` (domains weighted by their tokens).
    pub mutual_information_bits: Vec<f64>,
    /// `paths[domain][group]`: the experts of the domain's own task, when
    /// the package has one.
    pub paths: Vec<Option<Vec<Vec<usize>>>>,
}

/// Routes every domain of `texts` through task `task` (prefill chunks).
pub fn measure(model: &Model<'_>, texts: &Texts, task: usize, jobs: usize) -> Result<RouteReport> {
    let info = model.task(task)?;
    let tallies = run_jobs(
        texts.domains.len(),
        jobs,
        &|d| texts.domains[d].1.len() as u64,
        &|d| {
            let mut arena = AlignedArena::new(info.arena_bytes);
            let mut s = domains::session(model, task, &mut arena)?;
            let mut tally = GroupTally::new(model, false);
            let (name, ids) = &texts.domains[d];
            let n = domains::route(&mut s, ids, texts.window, &mut tally)
                .with_context(|| format!("routing domain {name} on task {}", info.name))?;
            Ok((n, tally.pick_counts()))
        },
    )?;
    let groups: Vec<String> = (0..model.group_count() as u32)
        .map(|g| model.group_name(g).unwrap_or("group").to_string())
        .collect();
    let top_k = model.group(0).map_or(0, |g| g.top_k as usize);
    let experts = crate::util::expert_count(model);
    let counts: Vec<Vec<Vec<u64>>> = tallies.iter().map(|t| t.1.clone()).collect();
    let entropies = counts
        .iter()
        .map(|per_group| per_group.iter().map(|c| entropy_bits(c)).collect())
        .collect();
    let per_group = |g: usize| -> Vec<Vec<u64>> {
        counts
            .iter()
            .map(|c| c.get(g).cloned().unwrap_or_default())
            .collect()
    };
    let pooled = |g: usize| -> Vec<u64> {
        let mut p = vec![0u64; experts];
        for c in per_group(g) {
            for (a, b) in p.iter_mut().zip(c) {
                *a += b;
            }
        }
        p
    };
    let paths = texts
        .domains
        .iter()
        .map(|(name, _)| -> Result<Option<Vec<Vec<usize>>>> {
            let Ok(t) = model.task_index(name) else {
                return Ok(None);
            };
            let info = model.task(t)?;
            Ok(Some(
                model
                    .paths(&info)
                    .map(|e| e.mask.iter().collect())
                    .collect(),
            ))
        })
        .collect::<Result<_>>()?;
    Ok(RouteReport {
        task: info.name.to_string(),
        split: texts.split.clone(),
        window: texts.window,
        domains: texts.domains.iter().map(|d| d.0.clone()).collect(),
        experts,
        top_k,
        tokens: tallies.iter().map(|t| t.0).collect(),
        entropy_bits: entropies,
        entropy_uniform_bits: (experts.max(1) as f64).log2(),
        entropy_pooled_bits: (0..groups.len())
            .map(|g| entropy_bits(&pooled(g)))
            .collect(),
        mutual_information_bits: (0..groups.len())
            .map(|g| mutual_information_bits(&per_group(g)))
            .collect(),
        groups,
        counts,
        paths,
    })
}

/// The report as Markdown: one share table per layer, then the entropies.
pub fn markdown(r: &RouteReport) -> String {
    let experts = r.experts;
    let mut out = format!(
        "expert share per (domain, layer): % of the domain's routing decisions (top-{} per token) on the {} split, task {}; * = on the domain's own path\n",
        r.top_k, r.split, r.task
    );
    for (g, name) in r.groups.iter().enumerate() {
        let mut header = vec![name.clone()];
        header.extend((0..experts).map(|j| format!("e{j}")));
        header.push("entropy (bits)".into());
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = Table::new(&h);
        for (d, domain) in r.domains.iter().enumerate() {
            let c = &r.counts[d][g];
            let total = c.iter().sum::<u64>().max(1) as f64;
            let path = r.paths[d].as_ref().and_then(|p| p.get(g));
            let mut row = vec![domain.clone()];
            row.extend(c.iter().enumerate().map(|(j, &x)| {
                let mark = if path.is_some_and(|p| p.contains(&j)) {
                    "*"
                } else {
                    ""
                };
                format!("{:.1}{mark}", 100.0 * x as f64 / total)
            }));
            row.push(format!("{:.3}", r.entropy_bits[d][g]));
            t.row(row);
        }
        out.push_str(&format!("\n{}\n", t.markdown()));
    }
    let mut header = vec!["entropy (bits)".to_string()];
    header.extend(r.groups.iter().cloned());
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&h);
    for (d, domain) in r.domains.iter().enumerate() {
        let mut row = vec![domain.clone()];
        row.extend(r.entropy_bits[d].iter().map(|e| format!("{e:.3}")));
        t.row(row);
    }
    let mut row = vec!["all domains pooled".to_string()];
    row.extend(r.entropy_pooled_bits.iter().map(|e| format!("{e:.3}")));
    t.row(row);
    let mut row = vec!["I(domain; expert)".to_string()];
    row.extend(r.mutual_information_bits.iter().map(|e| format!("{e:.3}")));
    t.row(row);
    out.push_str(&format!(
        "\nentropy of each domain's expert distribution (uniform over {experts} = {:.3} bits)\n\n{}\n",
        r.entropy_uniform_bits,
        t.markdown()
    ));
    out
}

/// Heat-map rows of group `g`: `(domain, counts, decisions)`.
pub fn heat_rows(r: &RouteReport, g: usize) -> Vec<(String, Vec<u64>, u64)> {
    r.domains
        .iter()
        .enumerate()
        .map(|(d, name)| {
            let c = r.counts[d][g].clone();
            let total = c.iter().sum();
            (name.clone(), c, total)
        })
        .collect()
}
