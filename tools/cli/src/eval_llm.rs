//! `taskpath eval` of a language-model package on a text corpus: per domain,
//! the perplexity of its split on the full model (`generate`) and on the
//! domain's own path, each path's share of the expert bytes, and with
//! `--cross` every domain's text on every domain's path. The full model is
//! the `generate` task (else task 0).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;
use taskpath_pack::domains::{self, Score};
use taskpath_runtime::{AlignedArena, Model};

use crate::lm::{run_jobs, Texts};
use crate::util::Table;

/// One domain's figures.
#[derive(Debug, Clone, Serialize)]
pub struct DomainRow {
    /// The domain.
    pub domain: String,
    /// Tokens in its windows.
    pub tokens: usize,
    /// Tokens scored (`tokens - windows`).
    pub scored: usize,
    /// Windows.
    pub windows: usize,
    /// Summed NLL on the full model (nats).
    pub full_nll: f64,
    /// Perplexity on the full model.
    pub full_ppl: f64,
    /// Summed NLL on the domain's own path (nats), when the package has a
    /// task named after the domain.
    pub path_nll: Option<f64>,
    /// Perplexity on its own path.
    pub path_ppl: Option<f64>,
    /// `path_ppl / full_ppl - 1`.
    pub rise: Option<f64>,
    /// Expert bytes on its path.
    pub path_expert_bytes: Option<usize>,
    /// `path_expert_bytes` / all expert bytes.
    pub path_share: Option<f64>,
    /// Experts on its path per MoE layer.
    pub path_experts: Option<Vec<usize>>,
}

/// Domain A's text on domain B's path.
#[derive(Debug, Clone, Serialize)]
pub struct Cross {
    /// Text domains (rows).
    pub texts: Vec<String>,
    /// Path tasks (columns).
    pub paths: Vec<String>,
    /// `ppl[text][path]`.
    pub ppl: Vec<Vec<f64>>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct LlmEval {
    /// The split.
    pub split: String,
    /// Tokens per window.
    pub window: usize,
    /// All expert bytes of the package.
    pub expert_bytes: usize,
    /// Per domain.
    pub domains: Vec<DomainRow>,
    /// Over all domains (exp of the total NLL over the total scored tokens):
    /// full model, own paths.
    pub pooled_full_ppl: f64,
    /// Pooled over the domains with an own path.
    pub pooled_path_ppl: Option<f64>,
    /// With `--cross`.
    pub cross: Option<Cross>,
}

/// Scores every needed (domain, task) pair.
pub fn evaluate(model: &Model<'_>, texts: &Texts, cross: bool, jobs: usize) -> Result<LlmEval> {
    let full = crate::lm::task_or_full(model, None)?;
    let own: Vec<Option<usize>> = texts
        .domains
        .iter()
        .map(|(d, _)| model.task_index(d).ok())
        .collect();
    let path_tasks: Vec<usize> = own.iter().flatten().copied().collect();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (d, o) in own.iter().enumerate() {
        pairs.push((d, full));
        if cross {
            pairs.extend(path_tasks.iter().map(|&t| (d, t)));
        } else if let Some(t) = o {
            pairs.push((d, *t));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    let scores = run_jobs(
        pairs.len(),
        jobs,
        &|i| texts.domains[pairs[i].0].1.len() as u64,
        &|i| {
            let (d, t) = pairs[i];
            let info = model.task(t)?;
            let mut arena = AlignedArena::new(info.arena_bytes);
            let mut s = domains::session(model, t, &mut arena)?;
            let (name, ids) = &texts.domains[d];
            domains::score(&mut s, ids, texts.window, &mut taskpath_runtime::NoTrace)
                .with_context(|| format!("scoring domain {name} on task {}", info.name))
        },
    )?;
    let got: BTreeMap<(usize, usize), Score> = pairs.into_iter().zip(scores).collect();
    let expert_bytes = model.expert_bytes();
    let mut rows = Vec::new();
    let (mut all_full, mut all_path) = (Score::default(), Score::default());
    for (d, (name, _)) in texts.domains.iter().enumerate() {
        let f = got[&(d, full)];
        all_full = all_full.add(&f);
        let p = own[d].map(|t| got[&(d, t)]);
        if let Some(p) = &p {
            all_path = all_path.add(p);
        }
        let bytes = own[d]
            .map(|t| domains::expert_path_bytes(model, t))
            .transpose()?;
        let experts = own[d].map(|t| -> Result<Vec<usize>> {
            let info = model.task(t)?;
            Ok(model
                .paths(&info)
                .map(|e| e.mask.count() as usize)
                .collect())
        });
        rows.push(DomainRow {
            domain: name.clone(),
            tokens: f.tokens,
            scored: f.scored,
            windows: f.windows,
            full_nll: f.nll,
            full_ppl: f.ppl(),
            path_nll: p.map(|p| p.nll),
            path_ppl: p.map(|p| p.ppl()),
            rise: p.map(|p| p.ppl() / f.ppl() - 1.0),
            path_expert_bytes: bytes.map(|b| b.0),
            path_share: bytes.map(|b| b.0 as f64 / b.1.max(1) as f64),
            path_experts: experts.transpose()?,
        });
    }
    let cross = cross.then(|| Cross {
        texts: texts.domains.iter().map(|d| d.0.clone()).collect(),
        paths: path_tasks
            .iter()
            .map(|&t| model.task(t).map(|i| i.name.to_string()))
            .collect::<Result<_, _>>()
            .unwrap_or_default(),
        ppl: (0..texts.domains.len())
            .map(|d| path_tasks.iter().map(|&t| got[&(d, t)].ppl()).collect())
            .collect(),
    });
    Ok(LlmEval {
        split: texts.split.clone(),
        window: texts.window,
        expert_bytes,
        domains: rows,
        pooled_full_ppl: all_full.ppl(),
        pooled_path_ppl: (all_path.scored > 0).then(|| all_path.ppl()),
        cross,
    })
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// The report as Markdown: the per-domain table, then the cross matrix.
pub fn markdown(e: &LlmEval) -> String {
    let mut t = Table::new(&[
        "domain",
        "tokens",
        "scored",
        "ppl full",
        "ppl path",
        "rise",
        "path experts / layer",
        "path expert bytes",
        "of all",
    ]);
    for r in &e.domains {
        t.row(vec![
            r.domain.clone(),
            r.tokens.to_string(),
            r.scored.to_string(),
            format!("{:.4}", r.full_ppl),
            opt(r.path_ppl, |v| format!("{v:.4}")),
            opt(r.rise, |v| format!("{:+.2}%", 100.0 * v)),
            r.path_experts.as_ref().map_or_else(
                || "-".to_string(),
                |v| v.iter().map(usize::to_string).collect::<Vec<_>>().join(" "),
            ),
            r.path_expert_bytes
                .map_or_else(|| "-".to_string(), |b| b.to_string()),
            opt(r.path_share, |v| format!("{:.1}%", 100.0 * v)),
        ]);
    }
    let mut out = format!(
        "perplexity on the {} split (windows of {} tokens); path = the domain's own task; expert bytes in all: {}\n\n{}\n\npooled: full model {:.4}{}\n",
        e.split,
        e.window,
        e.expert_bytes,
        t.markdown(),
        e.pooled_full_ppl,
        opt(e.pooled_path_ppl, |v| format!(", own paths {v:.4}")),
    );
    if let Some(c) = &e.cross {
        let mut header = vec!["text \\ path".to_string()];
        header.extend(c.paths.iter().cloned());
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = Table::new(&h);
        for ((d, row), r) in c.texts.iter().zip(&c.ppl).zip(&e.domains) {
            let mut cells = vec![d.clone()];
            cells.extend(
                row.iter()
                    .map(|v| format!("{v:.3} ({:+.1}%)", 100.0 * (v / r.full_ppl - 1.0))),
            );
            t.row(cells);
        }
        out.push_str(&format!(
            "\ncross-domain perplexity (row: the text, column: the path it runs on; in brackets: the rise over the text's full-model perplexity)\n\n{}\n",
            t.markdown()
        ));
    }
    out
}
