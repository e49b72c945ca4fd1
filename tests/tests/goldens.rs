//! Golden outputs: the raw bits of every bundled task's outputs on its whole
//! test set, under every weight format, through a delta chain, on narrowed
//! paths and under a 50% expert budget, committed in tests/data/goldens/.
//!
//! They were written once, by the runtime before the typed-program redesign
//! (docs/DESIGN.md, "Adding an op"), so that the redesign could prove it
//! changed no output bit. They are never regenerated: the writer
//! (`TASKPATH_WRITE_GOLDENS=1`) refuses to overwrite a file. A package of any
//! format version is rebuilt here from the checkpoint with the recorded
//! options; only the outputs are compared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use taskpath_checkpoint::{Checkpoint, Dataset};
use taskpath_pack::{derive_paths, pack, pack_delta, route_statistics, PackOptions};
use taskpath_runtime::{
    AlignedArena, Kernels, Model, ResidencyCache, Session, SessionOptions, WeightFormat,
};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/goldens")
}

const TASKS: [&str; 5] = ["DIGIT-10", "WDBC", "DIGIT-PARITY", "DIAB", "GSE-MET"];

/// Test sets in task order.
fn test_sets() -> Vec<Dataset> {
    TASKS
        .iter()
        .map(|t| Dataset::load(&reference().join(format!("data/{t}.test.json"))).unwrap())
        .collect()
}

/// Every task's outputs over its whole test set, concatenated as raw bits
/// (task order `TASKS`, sample order of the file). With `budget` the expert
/// blobs come through one [`ResidencyCache`] of that many bytes shared by
/// all tasks in turn (so evictions happen across tasks too).
fn outputs(
    model: &Model<'_>,
    sets: &[Dataset],
    kernels: Kernels,
    budget: Option<usize>,
) -> Vec<u32> {
    let mut cache_mem = budget.map(AlignedArena::new);
    let mut cache = cache_mem
        .as_mut()
        .map(|m| ResidencyCache::new(model, m.as_mut_slice()).unwrap());
    let mut bits = Vec::new();
    for (name, ds) in TASKS.iter().zip(sets) {
        let t = model.task_index(name).unwrap();
        let info = model.task(t).unwrap();
        let mut arena = AlignedArena::new(info.arena_bytes);
        let opts = SessionOptions {
            kernels: Some(kernels),
            ..Default::default()
        };
        let mut s = Session::with_options(model, t, arena.as_mut_slice(), opts).unwrap();
        if let Some(c) = cache.as_mut() {
            s = s.with_blob_source(c).unwrap();
        }
        let mut out = vec![0f32; info.outputs];
        for x in &ds.samples {
            let refs: Vec<&[f32]> = x.inputs.iter().map(|v| v.as_slice()).collect();
            s.run(&refs, &mut out).unwrap();
            bits.extend(out.iter().map(|v| v.to_bits()));
        }
    }
    bits
}

fn format_named(name: &str) -> WeightFormat {
    taskpath_cpu::quant::ALL
        .iter()
        .copied()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("unknown format {name}"))
}

/// Calibration on the training sets, as `pack --calibration` does.
fn calibrated(ck: &Checkpoint, coverage: Option<f64>) -> PackOptions {
    let inputs: Vec<Vec<Vec<Vec<f32>>>> = TASKS
        .iter()
        .map(|t| {
            Dataset::load(&reference().join(format!("data/{t}.train.json")))
                .unwrap()
                .inputs()
        })
        .collect();
    let stats = route_statistics(ck, &inputs).unwrap();
    PackOptions {
        masks: coverage
            .map(|c| derive_paths(&stats, c, ck.config.top_k))
            .unwrap_or_default(),
        stats: Some(stats),
        ..Default::default()
    }
}

/// One golden configuration: a package (or chain) and how it is run.
struct Config {
    name: &'static str,
    packages: Vec<AlignedArena>,
    budget_share: Option<f64>,
}

fn model_of(packages: &[AlignedArena]) -> Model<'_> {
    let mut m = Model::from_bytes(packages[0].as_slice()).unwrap();
    for d in &packages[1..] {
        m = m.with_delta(d.as_slice()).unwrap();
    }
    m
}

/// The configurations. The mixed-precision package's per-component formats
/// are read from the golden manifest when it exists (they were planned once
/// by `plan_mixed` on the calibration data, as `pack --budget 30%` does), so
/// the comparison depends only on the runtime.
fn configs(manifest: Option<&serde_json::Value>) -> (Vec<Config>, BTreeMap<String, String>) {
    let s3 = Checkpoint::load(&reference().join("stage3")).unwrap();
    let one = |opts: &PackOptions| vec![AlignedArena::from_bytes(&pack(&s3, opts).unwrap())];
    let mut out = Vec::new();
    let mut mixed_formats = BTreeMap::new();
    for q in ["f32", "f16", "i8row", "i4g32", "i2g32z"] {
        let opts = PackOptions {
            quant: Some(format_named(q)),
            ..Default::default()
        };
        out.push(Config {
            name: q,
            packages: one(&opts),
            budget_share: None,
        });
    }
    // Mixed precision at 30% of the f32 expert bytes.
    let mut mixed = calibrated(&s3, None);
    match manifest.and_then(|m| m["mixed30_formats"].as_object()) {
        Some(recorded) => {
            for (k, v) in recorded {
                let (j, c) = k.split_once(',').unwrap();
                mixed.expert_formats.insert(
                    (j.parse().unwrap(), c.parse().unwrap()),
                    format_named(v.as_str().unwrap()),
                );
            }
        }
        None => {
            let inputs: Vec<Vec<Vec<Vec<f32>>>> = TASKS
                .iter()
                .map(|t| {
                    Dataset::load(&reference().join(format!("data/{t}.train.json")))
                        .unwrap()
                        .inputs()
                        .into_iter()
                        .take(32)
                        .collect()
                })
                .collect();
            let f32_bytes = taskpath_pack::mixed::f32_expert_bytes(&s3, &mixed).unwrap();
            let budget = (f32_bytes as f64 * 0.30) as usize;
            let plan = taskpath_pack::mixed::plan_mixed(&s3, &mixed, &inputs, budget).unwrap();
            mixed.expert_formats = plan.formats;
        }
    }
    for ((j, c), f) in &mixed.expert_formats {
        mixed_formats.insert(format!("{j},{c}"), f.name().to_string());
    }
    out.push(Config {
        name: "mixed30",
        packages: one(&mixed),
        budget_share: None,
    });
    out.push(Config {
        name: "paths090",
        packages: one(&calibrated(&s3, Some(0.9))),
        budget_share: None,
    });
    // Stage 1 base + stage-2 and stage-3 delta packs.
    let opts = PackOptions::default();
    let s1 = Checkpoint::load(&reference().join("stage1")).unwrap();
    let s2 = Checkpoint::load(&reference().join("stage2")).unwrap();
    let base = AlignedArena::from_bytes(&pack(&s1, &opts).unwrap());
    let d2 = {
        let m1 = Model::from_bytes(base.as_slice()).unwrap();
        AlignedArena::from_bytes(&pack_delta(&s2, &m1, &opts).unwrap())
    };
    let d3 = {
        let m2 = Model::from_bytes(base.as_slice())
            .unwrap()
            .with_delta(d2.as_slice())
            .unwrap();
        AlignedArena::from_bytes(&pack_delta(&s3, &m2, &opts).unwrap())
    };
    out.push(Config {
        name: "delta-chain",
        packages: vec![base, d2, d3],
        budget_share: None,
    });
    for q in ["f32", "i4g32"] {
        let opts = PackOptions {
            quant: Some(format_named(q)),
            ..Default::default()
        };
        out.push(Config {
            name: if q == "f32" {
                "budget50-f32"
            } else {
                "budget50-i4g32"
            },
            packages: one(&opts),
            budget_share: Some(0.5),
        });
    }
    (out, mixed_formats)
}

fn to_bytes(bits: &[u32]) -> Vec<u8> {
    bits.iter().flat_map(|b| b.to_le_bytes()).collect()
}

#[test]
fn outputs_equal_the_committed_goldens_bit_for_bit() {
    let dir = golden_dir();
    let manifest_path = dir.join("manifest.json");
    let write = std::env::var_os("TASKPATH_WRITE_GOLDENS").is_some();
    let manifest: Option<serde_json::Value> = std::fs::read_to_string(&manifest_path)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap());
    if manifest.is_none() && !write {
        panic!(
            "{} is missing: the goldens are committed files, never regenerated",
            manifest_path.display()
        );
    }
    let sets = test_sets();
    let (configs, mixed_formats) = configs(manifest.as_ref());
    let best_table = Kernels::best().to_string();
    let mut written = serde_json::Map::new();
    let mut compared = 0;
    for c in &configs {
        let model = model_of(&c.packages);
        let budget = c.budget_share.map(|s| {
            ((model.expert_bytes() as f64 * s) as usize).max(ResidencyCache::min_budget(&model))
        });
        for (kname, kernels) in [("generic", Kernels::generic()), ("best", Kernels::best())] {
            let file = format!("{}.{kname}.f32", c.name);
            let got = to_bytes(&outputs(&model, &sets, kernels, budget));
            if write {
                let p = dir.join(&file);
                assert!(
                    !p.exists(),
                    "{} exists: goldens are never overwritten",
                    p.display()
                );
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&p, &got).unwrap();
                written.insert(file.clone(), serde_json::json!(got.len()));
                continue;
            }
            let m = manifest.as_ref().unwrap();
            if kname == "best" && m["best_kernels"].as_str() != Some(best_table.as_str()) {
                eprintln!("{file}: skipped, this CPU's kernel table differs from the recorded one");
                continue;
            }
            let want = std::fs::read(dir.join(&file)).unwrap();
            assert_eq!(got.len(), want.len(), "{file}: output count differs");
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                let i = at / 4;
                let g = f32::from_le_bytes(got[i * 4..i * 4 + 4].try_into().unwrap());
                let w = f32::from_le_bytes(want[i * 4..i * 4 + 4].try_into().unwrap());
                panic!(
                    "{file}: output value {i} is {g:e} ({:#010x}), golden {w:e} ({:#010x})",
                    g.to_bits(),
                    w.to_bits()
                );
            }
            compared += 1;
        }
    }
    if write {
        let m = serde_json::json!({
            "about": "raw little-endian f32 outputs of every task (DIGIT-10, WDBC, DIGIT-PARITY, DIAB, GSE-MET) on its whole test set, per configuration and kernel table; written once before the typed-program redesign, never regenerated (tests/tests/goldens.rs)",
            "tasks": TASKS,
            "samples": sets.iter().map(|d| d.samples.len()).collect::<Vec<_>>(),
            "best_kernels": best_table,
            "mixed30_formats": mixed_formats,
            "files": written,
        });
        if !manifest_path.exists() {
            std::fs::write(
                &manifest_path,
                serde_json::to_string_pretty(&m).unwrap() + "\n",
            )
            .unwrap();
        }
    } else {
        let m = manifest.as_ref().unwrap();
        assert_eq!(
            m["mixed30_formats"].as_object().map(|o| o.len()),
            Some(mixed_formats.len())
        );
        assert!(
            compared >= configs.len(),
            "compared only {compared} golden files"
        );
    }
}
