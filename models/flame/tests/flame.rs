//! Unit tests of the loaders, SVD truncation, continual-stage invariants and
//! export. None trains the full model: they use `TrainConfig::tiny()` and a few
//! dozen samples.

use std::path::PathBuf;

use taskpath_checkpoint::{Checkpoint, SplitMix64};
use taskpath_flame::data::{self, TaskData, TaskSplit};
use taskpath_flame::model::Model;
use taskpath_flame::svd;
use taskpath_flame::train::{self, TrainConfig};

fn tasks() -> Vec<TaskData> {
    data::load_tasks(&data::default_data_dir()).expect("load tasks")
}

fn shrink_split(s: &TaskSplit, t: &TaskData, n: usize) -> TaskSplit {
    let n = n.min(s.len());
    TaskSplit {
        inputs: s
            .inputs
            .iter()
            .zip(&t.modalities)
            .map(|(v, m)| v[..n * m.tokens * m.features].to_vec())
            .collect(),
        labels: s.labels[..n].to_vec(),
        rows: s.rows[..n].to_vec(),
    }
}

/// The tasks with at most `n` samples per split.
fn small_tasks(n: usize) -> Vec<TaskData> {
    tasks()
        .into_iter()
        .map(|t| TaskData {
            train: shrink_split(&t.train, &t, n),
            val: shrink_split(&t.val, &t, n),
            test: shrink_split(&t.test, &t, n),
            ..t
        })
        .collect()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("taskpath-flame-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn loaders_give_documented_shapes_and_split_sizes() {
    let ts = tasks();
    let names: Vec<_> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["DIGIT-10", "WDBC", "DIGIT-PARITY", "DIAB", "GSE-MET"]
    );
    type Mods = &'static [(&'static str, usize, usize)];
    let expect: [(&str, Mods, usize, usize); 5] = [
        (
            "DIGIT-10",
            &[("img_rows", 8, 8), ("img_cols", 8, 8)],
            10,
            1797,
        ),
        (
            "WDBC",
            &[
                ("cell_mean", 1, 10),
                ("cell_se", 1, 10),
                ("cell_worst", 1, 10),
            ],
            2,
            569,
        ),
        ("DIGIT-PARITY", &[("img_rows", 8, 8)], 2, 1797),
        ("DIAB", &[("demo", 1, 4), ("serum", 1, 6)], 2, 442),
        ("GSE-MET", &[("clinical", 1, 4), ("genes", 4, 19)], 2, 198),
    ];
    for (t, (name, mods, outputs, total)) in ts.iter().zip(expect) {
        assert_eq!(t.name, name);
        assert_eq!(t.outputs, outputs);
        let got: Vec<_> = t
            .modalities
            .iter()
            .map(|m| (m.name.as_str(), m.tokens, m.features))
            .collect();
        assert_eq!(got, mods, "{name}");
        let n = [t.train.len(), t.val.len(), t.test.len()];
        assert_eq!(n.iter().sum::<usize>(), total, "{name}");
        // 70/15/15, stratified and rounded per class
        assert!(
            (n[0] as f64 / total as f64 - 0.70).abs() < 0.01,
            "{name} {n:?}"
        );
        assert!(
            (n[1] as f64 / total as f64 - 0.15).abs() < 0.01,
            "{name} {n:?}"
        );
        for s in [&t.train, &t.val, &t.test] {
            for (m, v) in t.modalities.iter().zip(&s.inputs) {
                assert_eq!(v.len(), s.len() * m.tokens * m.features);
                assert!(v.iter().all(|x| x.is_finite()));
            }
            assert!(s.labels.iter().all(|&l| (l as usize) < outputs));
        }
        // disjoint splits
        let mut rows: Vec<usize> = [&t.train, &t.val, &t.test]
            .iter()
            .flat_map(|s| s.rows.clone())
            .collect();
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows.len(), total, "{name}: splits overlap");
    }
    // the committed split is the one `taskpath-flame split` draws
    let committed = data::load_splits(&data::default_data_dir()).unwrap();
    let redrawn = data::make_splits(&data::default_data_dir(), committed.seed).unwrap();
    assert_eq!(committed, redrawn);
    // img_cols is the transpose of img_rows
    let d = &ts[0];
    let (r, c) = (&d.test.inputs[0][..64], &d.test.inputs[1][..64]);
    for i in 0..8 {
        for j in 0..8 {
            assert_eq!(r[i * 8 + j], c[j * 8 + i]);
        }
    }
    // DIGIT-PARITY labels are the DIGIT-10 labels mod 2 on the same rows
    assert_eq!(ts[0].test.rows, ts[2].test.rows);
    for (a, b) in ts[0].test.labels.iter().zip(&ts[2].test.labels) {
        assert_eq!(a % 2, *b);
    }
}

#[test]
fn standardisation_uses_training_statistics_only() {
    for t in tasks() {
        for (m, v) in t.modalities.iter().zip(&t.train.inputs) {
            let w = m.tokens * m.features;
            let n = t.train.len() as f64;
            for j in 0..w {
                let col: Vec<f64> = v.chunks(w).map(|r| f64::from(r[j])).collect();
                let mean = col.iter().sum::<f64>() / n;
                let var = col.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
                assert!(
                    mean.abs() < 1e-4,
                    "{} {} feature {j}: train mean {mean}",
                    t.name,
                    m.name
                );
                // constant pixels standardise to 0, everything else to unit variance
                assert!(
                    (var - 1.0).abs() < 1e-3 || var < 1e-9,
                    "{} {} feature {j}: train var {var}",
                    t.name,
                    m.name
                );
            }
        }
    }
    // the fit ignores rows outside the fitting set
    let rows: Vec<Vec<f64>> = (0..10).map(|i| vec![i as f64, 1.0]).collect();
    let fit = [0usize, 1, 2, 3, 4];
    let (m1, s1) = data::fit_standardiser(&rows, &fit);
    let mut poisoned = rows.clone();
    for r in poisoned.iter_mut().skip(5) {
        r[0] = 1e9;
    }
    let (m2, s2) = data::fit_standardiser(&poisoned, &fit);
    assert_eq!((m1.clone(), s1.clone()), (m2, s2));
    assert_eq!(m1, [2.0, 1.0]);
    assert!((s1[0] - 2f64.sqrt()).abs() < 1e-12);
    assert_eq!(s1[1], 1.0, "a constant feature keeps std 1");
}

fn random_matrix(m: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut g = taskpath_flame::model::Normal::new(seed);
    g.sample(m * n, 1.0)
}

fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                .sum::<f64>() as f32;
        }
    }
    out
}

#[test]
fn svd_truncation_reconstructs_rank_r_exactly() {
    for (m, n, r) in [(24, 40, 5), (40, 24, 5), (32, 96, 8)] {
        let w = matmul(&random_matrix(m, r, 1), &random_matrix(r, n, 2), m, r, n);
        let lr = svd::truncate(&w, m, n, r);
        assert_eq!((lr.u.len(), lr.v.len()), (m * r, r * n));
        let back = svd::reconstruct(&lr, m, n);
        let norm = w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let err = w
            .iter()
            .zip(&back)
            .map(|(a, b)| (f64::from(*a) - b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(err / norm < 1e-6, "{m}x{n} rank {r}: relative error {err}");
        // the tail singular values of a rank-r matrix vanish
        assert!(lr.singular_values[r] / lr.singular_values[0] < 1e-6);
    }
}

#[test]
fn svd_truncation_error_equals_tail_singular_values() {
    let (m, n) = (30, 50);
    let w = random_matrix(m, n, 7);
    let a: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
    let d = svd::svd(&a, m, n);
    // U S V^T reproduces A and U, V are orthonormal
    let k = d.s.len();
    for i in 0..m {
        for j in 0..n {
            let v: f64 = (0..k)
                .map(|p| d.u[i * k + p] * d.s[p] * d.vt[p * n + j])
                .sum();
            assert!((v - a[i * n + j]).abs() < 1e-9);
        }
    }
    for p in 0..k {
        for q in 0..k {
            let dot: f64 = (0..n).map(|j| d.vt[p * n + j] * d.vt[q * n + j]).sum();
            assert!((dot - f64::from(u8::from(p == q))).abs() < 1e-9);
        }
    }
    assert!(d.s.windows(2).all(|s| s[0] >= s[1]));
    for r in [1, 4, 10, 29] {
        let lr = svd::truncate(&w, m, n, r);
        let back = svd::reconstruct(&lr, m, n);
        let err = a
            .iter()
            .zip(&back)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let tail = d.s[r..].iter().map(|s| s * s).sum::<f64>().sqrt();
        assert!(
            (err - tail).abs() / tail < 1e-5,
            "rank {r}: error {err} vs tail {tail}"
        );
    }
}

/// Logits of the first samples of a task's test split.
fn logits(model: &Model, t: &TaskData) -> Vec<Vec<f32>> {
    train::predict(model, t, &t.test).unwrap()
}

#[test]
fn new_stage_leaves_earlier_tasks_bit_identical() {
    let ts = small_tasks(40);
    let tc = TrainConfig::tiny();
    let mut model = Model {
        cfg: tc.model_config(),
        params: Default::default(),
    };
    let s0: Vec<&TaskData> = ts.iter().filter(|t| t.stage == 0).collect();
    train::grow_stage(&mut model, &s0, &tc, 0).unwrap();
    train::train_stage(&model, &s0, &tc, 1, false).unwrap();
    train::truncate_stage(&mut model, &tc, 0, &[], false).unwrap();
    model.params.freeze_all();
    let before: Vec<_> = s0.iter().map(|t| logits(&model, t)).collect();

    let s1: Vec<&TaskData> = ts.iter().filter(|t| t.stage == 1).collect();
    train::grow_stage(&mut model, &s1, &tc, 1).unwrap();
    // the new component starts at zero: fc2 weight and bias are 0
    for e in 0..tc.experts {
        for p in ["fc2.w", "fc2.b"] {
            let v = model.params.values(&format!("expert.{e}.1.{p}")).unwrap();
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
    let fresh: Vec<_> = s0.iter().map(|t| logits(&model, t)).collect();
    assert_eq!(
        before, fresh,
        "adding a zero-initialised stage changed stage-0 outputs"
    );
    // only the new stage's parameters train, and training them changes nothing
    // for stage 0
    let names = model.params.trainable_names();
    let allowed = |n: &String| {
        (n.starts_with("expert.") && n.contains(".1."))
            || (n.starts_with("router.img_rows.1."))
            || n.starts_with("head.DIGIT-PARITY")
            || n.starts_with("head.DIAB")
            || n.contains(".demo.")
            || n.contains(".serum.")
    };
    assert!(names.iter().all(allowed), "{names:?}");
    train::train_stage(&model, &s1, &tc, 2, false).unwrap();
    let after: Vec<_> = s0.iter().map(|t| logits(&model, t)).collect();
    assert_eq!(before, after, "training stage 1 changed stage-0 outputs");
}

#[test]
fn export_round_trips_through_checkpoint_load() {
    let ts = small_tasks(24);
    let tc = TrainConfig {
        max_epochs: 1,
        ..TrainConfig::tiny()
    };
    let dir = tmpdir("export");
    let mut seen = Vec::new();
    let (model, reports) = train::train_continual(&ts, &tc, false, |s, m| {
        let d = dir.join(format!("stage{}", s + 1));
        taskpath_flame::export::save(m, &d)?;
        seen.push(d);
        Ok(())
    })
    .unwrap();
    assert_eq!(reports.len(), 3);
    for (s, d) in seen.iter().enumerate() {
        let ck = Checkpoint::load(d).unwrap();
        ck.validate().unwrap();
        assert_eq!(ck.config.stages, s + 1);
        let stage_tasks: Vec<_> = ck.config.tasks.iter().map(|t| t.stage).collect();
        assert!(stage_tasks.iter().all(|&t| t <= s));
        // expert matrices of every component are rank-r factor pairs
        for e in 0..tc.experts {
            for c in 0..=s {
                for w in ["conv", "fc1", "fc2"] {
                    let u = ck.tensor(&format!("expert.{e}.{c}.{w}.w.u"));
                    assert_eq!(u.shape[1], tc.rank);
                    assert!(!ck.tensors.contains_key(&format!("expert.{e}.{c}.{w}.w")));
                }
            }
        }
    }
    let ck = Checkpoint::load(&seen[2]).unwrap();
    let names: Vec<_> = ck
        .config
        .modalities
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "img_rows",
            "img_cols",
            "cell_mean",
            "cell_se",
            "cell_worst",
            "demo",
            "serum",
            "clinical",
            "genes"
        ]
    );
    // the loaded checkpoint computes exactly what the trained model computes
    let loaded = Model::from_checkpoint(&ck).unwrap();
    for t in &ts {
        assert_eq!(logits(&model, t), logits(&loaded, t), "{}", t.name);
    }
    // and saving the loaded model again gives the same tensors
    let again = loaded.to_checkpoint().unwrap();
    assert_eq!(again.tensors, ck.tensors);
    assert_eq!(again.config, ck.config);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_is_deterministic() {
    let ts = small_tasks(32);
    let tc = TrainConfig {
        max_epochs: 1,
        recover_epochs: 0,
        ..TrainConfig::tiny()
    };
    let run = || {
        let (m, _) = train::train_continual(&ts[..2], &tc, false, |_, _| Ok(())).unwrap();
        m.to_checkpoint().unwrap().tensors
    };
    assert_eq!(run(), run());
}

#[test]
fn top_k_ties_go_to_the_lower_index() {
    // with all gate vectors equal, every expert has the same logit
    let ts = small_tasks(8);
    let tc = TrainConfig::tiny();
    let mut model = Model {
        cfg: tc.model_config(),
        params: Default::default(),
    };
    let s0: Vec<&TaskData> = ts.iter().filter(|t| t.stage == 0).collect();
    train::grow_stage(&mut model, &s0, &tc, 0).unwrap();
    let mut rng = SplitMix64::new(3);
    let row: Vec<f32> = (0..tc.d_model).map(|_| rng.uniform()).collect();
    for m in ["img_rows", "img_cols"] {
        let gate: Vec<f32> = (0..tc.experts).flat_map(|_| row.clone()).collect();
        model
            .params
            .insert(
                &format!("router.{m}.0.gate"),
                &[tc.experts, tc.d_model],
                gate,
                false,
            )
            .unwrap();
    }
    let t = &ts[0];
    let x = train::batch_inputs(&t.test, t, &[0, 1, 2]).unwrap();
    let out = model.forward(model.task("DIGIT-10").unwrap(), &x).unwrap();
    for sel in &out.selected {
        for s in sel {
            assert_eq!(s, &[0, 1]);
        }
    }
}
