//! The language model trained here on seven text domains (models/lm-domains)
//! against transformers, and the domain paths derived from it:
//!
//! - our tokens, perplexity and per-token top-2 routing of a domain's test
//!   split against transformers' (fixtures/ppl.json, routing.json, traces/,
//!   tokens/, made by scripts/lm/eval.py);
//! - domain paths: every mask keeps at least top-k experts, covers at least
//!   the requested share of the calibration gate mass with the fewest
//!   experts, and at coverage 1.0 a domain's own path computes exactly what
//!   the full model computes on that domain's calibration text.
//!
//! CI scores one domain (fr-man, the shortest test split; about 20 s in a
//! debug build); `TASKPATH_LM_DOMAINS=all cargo test -p taskpath-tests
//! --test lm_domains test_split -- --nocapture` scores all seven (about 4
//! minutes; docs/LLM.md, "Domain paths"), `TASKPATH_LM_DOMAINS=rust,python`
//! a list.

use std::path::{Path, PathBuf};

use serde_json::Value;
use taskpath_import::Checkpoint;
use taskpath_pack::calibrate::RouteStats;
use taskpath_pack::domains::{self, GroupTally};
use taskpath_pack::llm::{pack_llm, package_tokenizer, LlmPackOptions};
use taskpath_runtime::{AlignedArena, Model};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/lm-domains")
}

fn json(name: &str) -> Value {
    let p = root().join("fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn package(opts: &LlmPackOptions) -> AlignedArena {
    let ck = Checkpoint::open(root().join("model")).expect("open checkpoint");
    AlignedArena::from_bytes(&pack_llm(&ck, opts).expect("pack"))
}

/// Top-2 sets that differ between our routing and transformers' trace.
fn flips(ours: &[u32], theirs: &[u8], k: usize) -> usize {
    assert_eq!(ours.len(), theirs.len(), "routing decisions");
    ours.chunks(k)
        .zip(theirs.chunks(k))
        .filter(|(a, b)| {
            let mut a: Vec<u32> = a.to_vec();
            let mut b: Vec<u32> = b.iter().map(|&x| u32::from(x)).collect();
            a.sort_unstable();
            b.sort_unstable();
            a != b
        })
        .count()
}

#[test]
fn test_split_perplexity_tokens_and_routing_match_transformers() {
    let ppl = json("ppl.json");
    let routing = json("routing.json");
    let window = ppl["context"].as_u64().unwrap() as usize;
    let bytes = package(&LlmPackOptions {
        context: window,
        chunk: 64,
        ..Default::default()
    });
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let tok = package_tokenizer(&model).unwrap();
    let all: Vec<String> = routing["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    let chosen: Vec<String> = match std::env::var("TASKPATH_LM_DOMAINS").as_deref() {
        Ok("all") => all,
        Ok(list) => list.split(',').map(str::to_string).collect(),
        Err(_) => vec!["fr-man".to_string()],
    };
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = domains::session(&model, 0, &mut arena).unwrap();
    println!(
        "domain      tokens  ppl ours    ppl transformers  rel. diff   top-2 flips / decisions"
    );
    for d in &chosen {
        let fx = &ppl["domains"][d];
        // Tokens: the package's tokenizer against the fixture's ids.
        let text = std::fs::read_to_string(root().join(format!("corpus/{d}/test.txt"))).unwrap();
        let ids = tok.encode(&text).unwrap();
        let want: Vec<u32> = std::fs::read(root().join(format!("fixtures/tokens/{d}.test.u16")))
            .unwrap()
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        assert_eq!(ids, want, "{d}: token ids");

        let mut tally = GroupTally::new(&model, true);
        let score = domains::score(&mut s, &ids, window, &mut tally).unwrap();
        assert_eq!(
            score.tokens as u64,
            fx["tokens_in_windows"].as_u64().unwrap()
        );
        assert_eq!(score.windows as u64, fx["windows"].as_u64().unwrap());
        assert_eq!(score.scored as u64, fx["scored_tokens"].as_u64().unwrap());
        let theirs = fx["moe_test_ppl"].as_f64().unwrap();
        let rel = score.ppl() / theirs - 1.0;

        // Routing: per token and layer, the top-2 set; and the counts.
        let trace = std::fs::read(root().join(format!("fixtures/traces/{d}.u8"))).unwrap();
        let ours = tally.trace.as_deref().unwrap();
        let k = routing["top_k"].as_u64().unwrap() as usize;
        let flipped = flips(ours, &trace, k);
        let counts = tally.pick_counts();
        let mut count_diff = 0u64;
        for (l, per_layer) in routing["counts"][d].as_array().unwrap().iter().enumerate() {
            for (e, c) in per_layer.as_array().unwrap().iter().enumerate() {
                count_diff += c.as_u64().unwrap().abs_diff(counts[l][e]);
            }
        }
        println!(
            "{d:<10} {:>7}  {:>9.5}  {theirs:>9.5}        {rel:+.2e}   {flipped} / {}  (count differences {count_diff})",
            score.tokens,
            score.ppl(),
            ours.len() / k
        );
        assert!(rel.abs() < 1e-3, "{d}: ppl {} vs {theirs}", score.ppl());
        // A flipped decision moves at most two counts each way.
        assert!(
            count_diff <= 4 * flipped as u64,
            "{d}: counts differ beyond the flips"
        );
        assert!(
            flipped * 1000 <= ours.len() / k,
            "{d}: {flipped} of {} top-2 decisions differ from transformers",
            ours.len() / k
        );
    }
}

/// Share of `mask`'s gate mass in one tally.
fn covered(v: &[(u32, f64)], mask: &taskpath_format::ExpertMask) -> f64 {
    let total: f64 = v.iter().map(|x| x.1).sum();
    let kept: f64 = mask.iter().map(|j| v[j].1).sum();
    kept / total
}

#[test]
fn domain_paths_cover_their_calibration_mass_and_full_coverage_changes_nothing() {
    let ck = Checkpoint::open(root().join("model")).unwrap();
    let tok = ck.tokenizer().unwrap();
    // Two domains, 320 calibration tokens each, windows of 128 (two full,
    // one of 64): small enough for a debug build.
    let ids: Vec<(String, Vec<u32>)> = ["en-bible", "rust"]
        .iter()
        .map(|d| {
            let text =
                std::fs::read_to_string(root().join(format!("corpus/{d}/calib.txt"))).unwrap();
            let mut ids = tok.encode(&text).unwrap();
            ids.truncate(320);
            (d.to_string(), ids)
        })
        .collect();
    let (window, top_k) = (128, ck.config().experts_per_token);
    let base = LlmPackOptions {
        context: window,
        chunk: 32,
        ..Default::default()
    };
    let full = domains::calibrate_domains(&ck, &base, &ids, window, Some(1.0)).unwrap();
    let narrow = domains::calibrate_domains(&ck, &base, &ids, window, Some(0.7)).unwrap();
    assert_eq!(
        full.stats, narrow.stats,
        "the statistics do not depend on C"
    );
    assert_eq!(full.tokens, [320, 320]);
    let names: Vec<&str> = full.tasks.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["generate", "en-bible", "rust"]);
    assert!(full.tasks[0].1.is_empty(), "generate keeps every expert");

    // Oracle: per (domain, layer), every mask has >= top_k experts, covers
    // >= C of the recorded mass, and dropping its lightest expert would not
    // (unless it is at the top-k floor): the fewest experts.
    let stats: &RouteStats = &full.stats;
    let mut narrower = 0;
    for (paths, c) in [(&full, 1.0), (&narrow, 0.7)] {
        for (t, (name, masks)) in paths.tasks.iter().enumerate().skip(1) {
            assert_eq!(masks.len(), 4, "{name}: one mask per MoE layer");
            for (&layer, mask) in masks {
                let (tokens, v) = &stats.table[&(t, layer)];
                assert_eq!(*tokens, 320);
                let n = mask.count() as usize;
                assert!(n >= top_k, "{name} L{layer}: {n} experts");
                let cov = covered(v, mask);
                assert!(cov >= c - 1e-12, "{name} L{layer}: covers {cov} < {c}");
                if n > top_k {
                    let lightest = mask
                        .iter()
                        .min_by(|&a, &b| v[a].1.total_cmp(&v[b].1))
                        .unwrap();
                    let mut less = *mask;
                    less.0[lightest / 64] &= !(1u64 << (lightest % 64));
                    assert!(covered(v, &less) < c, "{name} L{layer}: not minimal");
                }
                if c == 1.0 {
                    // Exactly the experts it picked (or the top-k floor).
                    let picked = v.iter().filter(|x| x.0 > 0).count();
                    assert_eq!(n, picked.max(top_k), "{name} L{layer}");
                } else {
                    narrower += usize::from(n < 8);
                }
            }
        }
    }
    assert!(narrower > 0, "coverage 0.7 narrows some path");

    // The package stores the statistics: one record per (task, layer, expert).
    let mut opts = base.clone();
    opts.tasks = full.tasks.clone();
    opts.stats = Some(full.stats.clone());
    let bytes = AlignedArena::from_bytes(&pack_llm(&ck, &opts).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    assert_eq!(model.base().stats().len(), 3 * 4 * 8);

    // At C = 1.0 each domain's path computes exactly the full model's
    // logits and routing on its calibration text.
    let run = |task: usize, ids: &[u32]| {
        let info = model.task(task).unwrap();
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s = domains::session(&model, task, &mut arena).unwrap();
        let mut tally = GroupTally::new(&model, true);
        let mut logits = vec![0f32; info.outputs];
        let mut all = Vec::new();
        for w in domains::windows(ids, window) {
            s.reset();
            for c in w.chunks(32) {
                s.step_traced(c, &mut logits, &mut tally).unwrap();
                all.extend(logits.iter().map(|x| x.to_bits()));
            }
        }
        (all, tally.trace.unwrap())
    };
    for (t, (name, ids)) in ids.iter().enumerate() {
        let own = run(t + 1, ids);
        assert_eq!(own.0.len(), 10 * 4096, "{name}: ten chunks' logits");
        assert_eq!(
            own,
            run(0, ids),
            "{name}: own path at C = 1.0 vs full model"
        );
    }
}
