//! Text domains of a language model: a corpus of domains, their routing
//! per (MoE layer, expert), a task path per domain, and perplexity.
//!
//! A corpus directory holds one folder per domain and in it one UTF-8 text
//! file per split: `CORPUS/<domain>/<split>.txt` (models/lm-domains/corpus:
//! `calib`, `val`, `test`). Domains are taken in name order.
//!
//! Token sequences are cut into non-overlapping windows `[0, w)`, `[w, 2w)`,
//! ...; each window runs from position 0 with an empty KV cache, and a last
//! window shorter than 2 tokens is dropped (it would score nothing). Within
//! a window the logits at position `t` score token `t + 1`, so
//! `scored = tokens - windows`; the NLL `-log_softmax(logits)[target]` is
//! computed in f64 from the f32 logits and summed in f64, and
//! `ppl = exp(nll / scored)` (docs/LLM.md, "Domain paths";
//! models/lm-domains/README.md has the same definition for transformers).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use taskpath_format::{ExpertMask, Op};
use taskpath_import::{Checkpoint, Tokenizer};
use taskpath_runtime::{AlignedArena, Model, Session, SessionOptions, Tracer};

use crate::calibrate::{derive_masks, ExpertTally, RouteStats};
use crate::llm::{pack_llm, LlmPackOptions};

/// Largest text file of one (domain, split) read (64 MiB).
pub const MAX_TEXT_BYTES: u64 = 64 << 20;
/// Most text one corpus split may hold in all (1 GiB).
pub const MAX_SPLIT_BYTES: u64 = 1 << 30;
/// Most domains one corpus may hold.
pub const MAX_DOMAINS: usize = 255;

/// One domain's text of one split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainText {
    /// The domain (its folder's name).
    pub name: String,
    /// The split's text.
    pub text: String,
}

/// Reads `dir/<domain>/<split>.txt` of every domain folder of `dir`, in
/// name order. Every domain folder must hold the split.
pub fn load_corpus(dir: &Path, split: &str) -> Result<Vec<DomainText>> {
    ensure!(
        !split.is_empty()
            && split
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "split {split:?} is not a split name (letters, digits, '-' and '_'; e.g. calib, val, test)"
    );
    ensure!(
        dir.is_dir(),
        "corpus directory {} does not exist (expected one folder per domain holding <split>.txt files)",
        dir.display()
    );
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if !e.path().is_dir() {
            continue;
        }
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            bail!(
                "{}: a domain folder's name is not UTF-8",
                e.path().display()
            );
        };
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    ensure!(
        !names.is_empty(),
        "corpus directory {} has no domain folders (expected {}/<domain>/{split}.txt)",
        dir.display(),
        dir.display()
    );
    ensure!(
        names.len() <= MAX_DOMAINS,
        "corpus directory {} has {} domain folders; at most {MAX_DOMAINS}",
        dir.display(),
        names.len()
    );
    let mut out = Vec::with_capacity(names.len());
    let mut total = 0u64;
    for name in names {
        let path = dir.join(&name).join(format!("{split}.txt"));
        if !path.is_file() {
            let mut have: Vec<String> = std::fs::read_dir(dir.join(&name))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(|n| n.strip_suffix(".txt"))
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            have.sort();
            bail!(
                "domain {name} has no split {split:?}: {} does not exist (splits there: {})",
                path.display(),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            );
        }
        let len = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        ensure!(
            len <= MAX_TEXT_BYTES,
            "{} is {len} bytes; at most {MAX_TEXT_BYTES} are read",
            path.display()
        );
        total += len;
        ensure!(
            total <= MAX_SPLIT_BYTES,
            "the {split} texts of {} exceed {MAX_SPLIT_BYTES} bytes in all",
            dir.display()
        );
        // Read at most the limit even if the file grew since its length was taken.
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_TEXT_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("reading {} (UTF-8 text)", path.display()))?;
        ensure!(
            text.len() as u64 <= MAX_TEXT_BYTES,
            "{} grew beyond {MAX_TEXT_BYTES} bytes while it was read",
            path.display()
        );
        out.push(DomainText { name, text });
    }
    Ok(out)
}

/// The token ids of each domain's text (no BOS or EOS), named.
pub fn tokenize(tok: &Tokenizer, domains: &[DomainText]) -> Result<Vec<(String, Vec<u32>)>> {
    domains
        .iter()
        .map(|d| {
            let ids = tok
                .encode(&d.text)
                .with_context(|| format!("tokenizing domain {}", d.name))?;
            Ok((d.name.clone(), ids))
        })
        .collect()
}

/// The windows of `tokens` (module docs): non-overlapping, `window` long,
/// the last one kept when it has at least 2 tokens.
pub fn windows(tokens: &[u32], window: usize) -> impl Iterator<Item = &[u32]> {
    tokens.chunks(window.max(1)).filter(|w| w.len() >= 2)
}

/// Tallies a language model's routing per expert group. Every layer's
/// router is router 0 of its own group, so the group comes from the
/// `RouteTokens` op that is running.
#[derive(Clone, Debug, Default)]
pub struct GroupTally {
    group: usize,
    /// Per group: tokens routed, and per expert (picks, summed gate).
    pub groups: BTreeMap<usize, (u32, ExpertTally)>,
    /// With `Some`: every routing decision's experts in order (each token's
    /// groups in program order, each group's experts as the router ranked
    /// them), `top_k` entries per decision.
    pub trace: Option<Vec<u32>>,
}

impl GroupTally {
    /// An empty tally for `model`'s groups (every one present, with zeros).
    pub fn new(model: &Model<'_>, trace: bool) -> Self {
        let groups = (0..model.group_count())
            .filter_map(|g| {
                let rec = model.group(g as u32)?;
                Some((g, (0, vec![(0, 0.0); rec.experts as usize])))
            })
            .collect();
        Self {
            group: 0,
            groups,
            trace: trace.then(Vec::new),
        }
    }

    /// Per group, the share of routing decisions that picked each expert
    /// (picks / tokens routed); sums to top-k per group.
    pub fn pick_counts(&self) -> Vec<Vec<u64>> {
        self.groups
            .values()
            .map(|(_, v)| v.iter().map(|x| u64::from(x.0)).collect())
            .collect()
    }
}

impl Tracer for GroupTally {
    fn op_begin(&mut self, _index: u32, op: &Op) {
        if let Op::RouteTokens { group, .. } = op {
            self.group = *group as usize;
        }
    }
    fn route(&mut self, _router: u32, experts: &[u32], gates: &[f32]) {
        if let Some(t) = &mut self.trace {
            t.extend_from_slice(experts);
        }
        let Some((tokens, v)) = self.groups.get_mut(&self.group) else {
            return;
        };
        *tokens += 1;
        for (&e, &g) in experts.iter().zip(gates) {
            if let Some(x) = v.get_mut(e as usize) {
                x.0 += 1;
                x.1 += f64::from(g);
            }
        }
    }
}

/// Negative log-likelihood of a token sequence (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// Summed NLL (nats, f64).
    pub nll: f64,
    /// Tokens scored (`tokens - windows`).
    pub scored: usize,
    /// Tokens in the windows.
    pub tokens: usize,
    /// Windows run.
    pub windows: usize,
}

impl Score {
    /// `exp(nll / scored)` (NaN when nothing was scored).
    pub fn ppl(&self) -> f64 {
        (self.nll / self.scored as f64).exp()
    }
    /// The sum of two scores.
    pub fn add(&self, o: &Score) -> Score {
        Score {
            nll: self.nll + o.nll,
            scored: self.scored + o.scored,
            tokens: self.tokens + o.tokens,
            windows: self.windows + o.windows,
        }
    }
}

/// `-log_softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = f64::from(max);
    let sum: f64 = logits.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    let x = logits
        .get(target)
        .map_or(f64::NEG_INFINITY, |&x| f64::from(x));
    max + sum.ln() - x
}

/// Scores `tokens` on `session` (a token-stream task), one token per step
/// so every position's logits are seen; every routing decision goes to
/// `tracer`.
pub fn score<T: Tracer>(
    session: &mut Session<'_, '_>,
    tokens: &[u32],
    window: usize,
    tracer: &mut T,
) -> Result<Score> {
    let mut s = Score::default();
    // (scored position, logit, value) of the first non-finite logit: a NaN
    // would make the perplexity NaN, which must fail, not print.
    let mut bad: Option<(usize, usize, f32)> = None;
    let (tokens, windows) =
        run_windows(session, tokens, window, 1, tracer, &mut |logits, next| {
            if bad.is_none() {
                bad = logits
                    .iter()
                    .position(|v| !v.is_finite())
                    .map(|j| (s.scored, j, logits[j]));
            }
            if let Some(next) = next {
                s.nll += nll(logits, next as usize);
                s.scored += 1;
            }
        })?;
    if let Some((at, j, v)) = bad {
        bail!("logit {j} is {v} (not finite) after {at} scored tokens");
    }
    s.tokens = tokens;
    s.windows = windows;
    Ok(s)
}

/// Runs `tokens` through `session` in the same windows as [`score`], in
/// prefill chunks (no logits kept): routing only. Returns the tokens run.
pub fn route<T: Tracer>(
    session: &mut Session<'_, '_>,
    tokens: &[u32],
    window: usize,
    tracer: &mut T,
) -> Result<usize> {
    let chunk = capacity(session)?;
    Ok(run_windows(session, tokens, window, chunk, tracer, &mut |_, _| {})?.0)
}

/// The logits after every prefill chunk of `chunk` tokens of every window of
/// `tokens` (rows of the vocabulary, in order).
pub fn chunk_logits(
    session: &mut Session<'_, '_>,
    tokens: &[u32],
    window: usize,
    chunk: usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    run_windows(
        session,
        tokens,
        window,
        chunk,
        &mut taskpath_runtime::NoTrace,
        &mut |logits, _| out.extend_from_slice(logits),
    )?;
    Ok(out)
}

/// Tokens one step of `session` takes at most.
fn capacity(session: &Session<'_, '_>) -> Result<usize> {
    Ok(session
        .plan()
        .tokens()
        .context("the task is not a token-stream task")?
        .capacity)
}

/// Every window from an empty cache, `step` tokens a run; after each run
/// `f(logits, next)` gets the logits of its last token and the token that
/// follows it in the window. Returns `(tokens, windows)` run.
fn run_windows<T: Tracer>(
    session: &mut Session<'_, '_>,
    tokens: &[u32],
    window: usize,
    step: usize,
    tracer: &mut T,
    f: &mut dyn FnMut(&[f32], Option<u32>),
) -> Result<(usize, usize)> {
    let shape = session
        .plan()
        .tokens()
        .context("the task is not a token-stream task")?;
    check_window(window, shape.context)?;
    ensure!(
        (1..=shape.capacity).contains(&step),
        "a run of {step} tokens does not fit the task's chunk of {}",
        shape.capacity
    );
    let mut logits = vec![0f32; session.task().outputs];
    let (mut n, mut count) = (0, 0);
    for w in windows(tokens, window) {
        session.reset();
        for (i, c) in w.chunks(step).enumerate() {
            session.step_traced(c, &mut logits, &mut *tracer)?;
            f(&logits, w.get((i + 1) * step).copied());
        }
        n += w.len();
        count += 1;
    }
    Ok((n, count))
}

fn check_window(window: usize, context: usize) -> Result<()> {
    ensure!(
        (2..=context).contains(&window),
        "a window of {window} tokens does not fit: it must be in 2..={context} (the package's context)"
    );
    Ok(())
}

/// A session over `model`'s task `task` in `arena` (path checksums skipped:
/// the caller verified the package or packed it itself).
pub fn session<'m, 'a>(
    model: &'m Model<'a>,
    task: usize,
    arena: &'m mut AlignedArena,
) -> Result<Session<'m, 'a>> {
    Ok(Session::with_options(
        model,
        task,
        arena.as_mut_slice(),
        SessionOptions {
            verify_path: false,
            ..Default::default()
        },
    )?)
}

/// Domain tasks derived from calibration text: what [`calibrate_domains`]
/// returns, ready for [`LlmPackOptions::tasks`] and [`LlmPackOptions::stats`].
#[derive(Clone, Debug)]
pub struct DomainPaths {
    /// Task 0, `generate` (every expert), then one task per domain, named
    /// after it, with its experts per MoE layer.
    pub tasks: Vec<(String, BTreeMap<usize, ExpertMask>)>,
    /// Routing statistics per `(task, group)`: task 0 pools every domain.
    pub stats: RouteStats,
    /// Calibration tokens routed per domain.
    pub tokens: Vec<usize>,
}

/// The name of the task with every expert (task 0 of a package with domain paths).
pub const FULL_TASK: &str = "generate";

/// Routes every domain's calibration tokens through the full model (packed
/// as `opts` says, without tasks, with a context of `window`) and derives
/// each domain's path: per MoE layer, the fewest experts carrying
/// `coverage` of that layer's gate mass on the domain's text, never fewer
/// than top-k (`None`: every expert, statistics only).
pub fn calibrate_domains(
    ck: &Checkpoint,
    opts: &LlmPackOptions,
    domains: &[(String, Vec<u32>)],
    window: usize,
    coverage: Option<f64>,
) -> Result<DomainPaths> {
    if let Some(c) = coverage {
        ensure!(
            c > 0.0 && c <= 1.0,
            "path coverage must be in (0, 1], got {c}"
        );
    }
    ensure!(!domains.is_empty(), "no calibration domains");
    for (name, ids) in domains {
        ensure!(
            name != FULL_TASK,
            "a domain may not be named {FULL_TASK:?}: that is the full model's task"
        );
        ensure!(
            windows(ids, window).next().is_some(),
            "domain {name} has fewer than 2 calibration tokens"
        );
    }
    let c = ck.config();
    let base = LlmPackOptions {
        context: window,
        chunk: opts.chunk.min(window),
        tasks: Vec::new(),
        stats: None,
        ..opts.clone()
    };
    let bytes = AlignedArena::from_bytes(&pack_llm(ck, &base)?);
    let model = Model::from_bytes(bytes.as_slice())?;
    let info = model.task(0)?;
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = session(&model, 0, &mut arena)?;
    let mut stats = RouteStats::default();
    let mut pooled = GroupTally::new(&model, false);
    let mut tokens = Vec::with_capacity(domains.len());
    let bar = indicatif::ProgressBar::new(domains.len() as u64).with_message("calibrating");
    for (d, (name, ids)) in domains.iter().enumerate() {
        let mut tally = GroupTally::new(&model, false);
        let n = route(&mut s, ids, window, &mut tally)
            .with_context(|| format!("routing the calibration text of domain {name}"))?;
        tokens.push(n);
        for (g, (t, v)) in tally.groups {
            if let Some((pt, pv)) = pooled.groups.get_mut(&g) {
                *pt += t;
                for (a, b) in pv.iter_mut().zip(&v) {
                    a.0 += b.0;
                    a.1 += b.1;
                }
            }
            stats.table.insert((d + 1, g), (t, v));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for (g, tv) in pooled.groups {
        stats.table.insert((0, g), tv);
    }
    let moe_layers: Vec<usize> = (0..c.num_layers)
        .filter(|&l| !c.is_dense_layer(l))
        .collect();
    let masks = match coverage {
        Some(cov) => derive_masks(&stats, cov, c.experts_per_token),
        None => BTreeMap::new(),
    };
    let mut tasks = vec![(FULL_TASK.to_string(), BTreeMap::new())];
    for (d, (name, _)) in domains.iter().enumerate() {
        let per_layer = masks
            .iter()
            .filter(|((t, _), _)| *t == d + 1)
            .filter_map(|(&(_, g), &m)| Some((*moe_layers.get(g)?, m)))
            .collect();
        tasks.push((name.clone(), per_layer));
    }
    Ok(DomainPaths {
        tasks,
        stats,
        tokens,
    })
}

/// Bytes of `task`'s experts and of every expert of the model:
/// `(on the path, all)`.
pub fn expert_path_bytes(model: &Model<'_>, task: usize) -> Result<(usize, usize)> {
    let info = model.task(task)?;
    let on: usize = model
        .expert_blobs()
        .filter(|b| model.on_path(&info, b))
        .map(|b| b.bytes.len())
        .sum();
    Ok((on, model.expert_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_drop_only_a_last_window_of_one_token() {
        let t: Vec<u32> = (0..9).collect();
        let w: Vec<&[u32]> = windows(&t, 4).collect();
        assert_eq!(w, [&[0, 1, 2, 3][..], &[4, 5, 6, 7]]);
        let w: Vec<usize> = windows(&t[..10.min(t.len())], 3)
            .map(<[u32]>::len)
            .collect();
        assert_eq!(w, [3, 3, 3]);
        assert_eq!(windows(&t[..6], 4).map(<[u32]>::len).sum::<usize>(), 6);
        assert_eq!(windows(&t[..1], 4).count(), 0);
    }

    #[test]
    fn nll_is_the_negative_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| f64::from(x).exp()).sum();
        for (t, &x) in l.iter().enumerate() {
            let want = -(f64::from(x).exp() / z).ln();
            assert!((nll(&l, t) - want).abs() < 1e-12);
        }
        // Large logits do not overflow.
        assert!((nll(&[1000.0, 1000.0], 0) - 2f64.ln()).abs() < 1e-12);
        assert_eq!(nll(&l, 9), f64::INFINITY);
    }

    #[test]
    fn corpus_errors_name_what_is_wrong() {
        let d = std::env::temp_dir().join(format!("taskpath-corpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let e = load_corpus(&d, "test").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::create_dir_all(d.join("b")).unwrap();
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::write(d.join("a/test.txt"), "alpha").unwrap();
        std::fs::write(d.join("b/test.txt"), "beta").unwrap();
        std::fs::write(d.join("b/calib.txt"), "b").unwrap();
        std::fs::write(d.join("notes.txt"), "not a domain").unwrap();
        let c = load_corpus(&d, "test").unwrap();
        let names: Vec<&str> = c.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c[1].text, "beta");
        let e = load_corpus(&d, "calib").unwrap_err().to_string();
        assert!(
            e.contains("domain a has no split \"calib\"") && e.contains("test"),
            "{e}"
        );
        let e = load_corpus(&d, "../x").unwrap_err().to_string();
        assert!(e.contains("not a split name"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
