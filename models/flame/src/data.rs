//! Vendored datasets (models/data/), the committed train/val/test split
//! (models/data/splits.json), per-feature standardisation fitted on the training
//! rows only, and the five tasks of the reference model.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use taskpath_checkpoint::{ModalityConfig, SplitMix64};

/// Default location of the vendored data (`models/data`).
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// Modalities of the reference model in fusion order: (name, tokens, features).
pub const MODALITIES: [(&str, usize, usize); 9] = [
    ("img_rows", 8, 8),
    ("img_cols", 8, 8),
    ("cell_mean", 1, 10),
    ("cell_se", 1, 10),
    ("cell_worst", 1, 10),
    ("demo", 1, 4),
    ("serum", 1, 6),
    ("clinical", 1, 4),
    ("genes", 4, 19),
];

/// The five tasks: (name, modalities, continual stage, outputs, source dataset).
pub const TASKS: [(&str, &[&str], usize, usize, &str); 5] = [
    ("DIGIT-10", &["img_rows", "img_cols"], 0, 10, "digits"),
    (
        "WDBC",
        &["cell_mean", "cell_se", "cell_worst"],
        0,
        2,
        "wdbc",
    ),
    ("DIGIT-PARITY", &["img_rows"], 1, 2, "digits"),
    ("DIAB", &["demo", "serum"], 1, 2, "diab"),
    ("GSE-MET", &["clinical", "genes"], 2, 2, "gse"),
];

/// The four source datasets, in the order used by splits.json.
pub const DATASETS: [&str; 4] = ["digits", "wdbc", "diab", "gse"];

/// `ModalityConfig` of a modality by name.
pub fn modality_config(name: &str) -> ModalityConfig {
    let (n, l, f) = MODALITIES
        .iter()
        .find(|m| m.0 == name)
        .unwrap_or_else(|| panic!("unknown modality {name}"));
    ModalityConfig {
        name: n.to_string(),
        tokens: *l,
        features: *f,
    }
}

/// A raw dataset: one row of numeric features per sample (missing values as NaN),
/// a class label used for stratification and the target the task labels derive from.
#[derive(Clone, Debug)]
pub struct RawDataset {
    /// `rows[i][j]`: feature j of sample i, NaN when missing.
    pub rows: Vec<Vec<f64>>,
    /// Stratification class of each sample.
    pub strata: Vec<usize>,
    /// Raw target (class index, or the regression score for diabetes).
    pub target: Vec<f64>,
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .with_context(|| format!("decompressing {}", path.display()))?;
        Ok(s)
    } else {
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
    }
}

fn parse_f64(s: &str, what: &str) -> Result<f64> {
    s.trim()
        .parse::<f64>()
        .with_context(|| format!("{what}: cannot parse {s:?} as a number"))
}

/// Loads one of [`DATASETS`] from `dir`.
pub fn load_raw(dir: &Path, name: &str) -> Result<RawDataset> {
    match name {
        "digits" => {
            let text = read_text(&dir.join("digits.csv.gz"))?;
            let mut rows = Vec::new();
            let mut target = Vec::new();
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                let v: Vec<f64> = line
                    .split(',')
                    .map(|s| parse_f64(s, &format!("digits.csv.gz line {}", i + 1)))
                    .collect::<Result<_>>()?;
                ensure!(
                    v.len() == 65,
                    "digits.csv.gz line {}: {} columns",
                    i + 1,
                    v.len()
                );
                target.push(v[64]);
                rows.push(v[..64].to_vec());
            }
            let strata = target.iter().map(|&t| t as usize).collect();
            Ok(RawDataset {
                rows,
                strata,
                target,
            })
        }
        "wdbc" => {
            let text = read_text(&dir.join("breast_cancer.csv"))?;
            let mut rows = Vec::new();
            let mut target = Vec::new();
            for (i, line) in text
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .enumerate()
            {
                let v: Vec<f64> = line
                    .split(',')
                    .map(|s| parse_f64(s, &format!("breast_cancer.csv line {}", i + 2)))
                    .collect::<Result<_>>()?;
                ensure!(
                    v.len() == 31,
                    "breast_cancer.csv line {}: {} columns",
                    i + 2,
                    v.len()
                );
                target.push(v[30]);
                rows.push(v[..30].to_vec());
            }
            let strata = target.iter().map(|&t| t as usize).collect();
            Ok(RawDataset {
                rows,
                strata,
                target,
            })
        }
        "diab" => {
            let x = read_text(&dir.join("diabetes_data_raw.csv.gz"))?;
            let y = read_text(&dir.join("diabetes_target.csv.gz"))?;
            let rows: Vec<Vec<f64>> = x
                .lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| {
                    l.split_whitespace()
                        .map(|s| parse_f64(s, &format!("diabetes_data_raw line {}", i + 1)))
                        .collect::<Result<Vec<f64>>>()
                })
                .collect::<Result<_>>()?;
            let target: Vec<f64> = y
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| parse_f64(l, "diabetes_target"))
                .collect::<Result<_>>()?;
            ensure!(rows.len() == target.len(), "diabetes: rows/targets differ");
            ensure!(
                rows.iter().all(|r| r.len() == 10),
                "diabetes: expected 10 columns"
            );
            // Stratify on the whole-dataset median (the task label itself uses the
            // training median, which needs the split first).
            let mut sorted = target.clone();
            sorted.sort_by(f64::total_cmp);
            let med = median_sorted(&sorted);
            let strata = target.iter().map(|&t| usize::from(t > med)).collect();
            Ok(RawDataset {
                rows,
                strata,
                target,
            })
        }
        "gse" => {
            let text = read_text(&dir.join("breast_cancer_GSE7390-metastasis.arff"))?;
            let mut in_data = false;
            let mut rows = Vec::new();
            let mut target = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('%') {
                    continue;
                }
                if !in_data {
                    in_data = l.eq_ignore_ascii_case("@data");
                    continue;
                }
                let f: Vec<&str> = l.split(',').map(str::trim).collect();
                let what = format!("GSE7390 arff line {}", i + 1);
                ensure!(f.len() == 82, "{what}: {} columns, expected 82", f.len());
                let grade = match f[2] {
                    "well differentiated" => 1.0,
                    "intermediate" => 2.0,
                    "poorly differentiated" => 3.0,
                    "unkown" | "unknown" | "?" => f64::NAN,
                    g => bail!("{what}: unknown grade {g:?}"),
                };
                let er = match f[3] {
                    "negative" => 0.0,
                    "positive" => 1.0,
                    "?" => f64::NAN,
                    e => bail!("{what}: unknown er {e:?}"),
                };
                let num = |s: &str| -> Result<f64> {
                    if s == "?" {
                        Ok(f64::NAN)
                    } else {
                        parse_f64(s, &what)
                    }
                };
                let mut row = vec![num(f[0])?, num(f[1])?, grade, er];
                for s in &f[6..] {
                    row.push(num(s)?);
                }
                target.push(match f[5] {
                    "0" => 0.0,
                    "1" => 1.0,
                    e => bail!("{what}: e.tdm is {e:?}"),
                });
                rows.push(row);
            }
            let strata = target.iter().map(|&t| t as usize).collect();
            Ok(RawDataset {
                rows,
                strata,
                target,
            })
        }
        _ => bail!("unknown dataset {name}"),
    }
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Indices of one dataset's train / validation / test samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Validation rows (early stopping).
    pub val: Vec<usize>,
    /// Test rows (reported figures).
    pub test: Vec<usize>,
}

/// splits.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// Always "taskpath-splits/1".
    pub format: String,
    /// Seed the split was drawn with.
    pub seed: u64,
    /// How it was drawn.
    pub method: String,
    /// Per dataset.
    pub datasets: BTreeMap<String, Split>,
}

/// A stratified 70/15/15 split: per stratum, a seeded shuffle, then the first
/// round(0.70 n) rows train, the next round(0.15 n) validation, the rest test.
pub fn stratified_split(strata: &[usize], seed: u64) -> Split {
    let mut rng = SplitMix64::new(seed);
    let classes = strata.iter().copied().max().map_or(0, |m| m + 1);
    let mut split = Split {
        train: vec![],
        val: vec![],
        test: vec![],
    };
    for c in 0..classes {
        let mut idx: Vec<usize> = (0..strata.len()).filter(|&i| strata[i] == c).collect();
        shuffle(&mut idx, &mut rng);
        let n = idx.len();
        let ntr = (0.70 * n as f64).round() as usize;
        let nva = (0.15 * n as f64).round() as usize;
        split.train.extend_from_slice(&idx[..ntr]);
        split.val.extend_from_slice(&idx[ntr..ntr + nva]);
        split.test.extend_from_slice(&idx[ntr + nva..]);
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    split.test.sort_unstable();
    split
}

/// Fisher-Yates with [`SplitMix64`].
pub fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// Draws the split of every dataset.
pub fn make_splits(dir: &Path, seed: u64) -> Result<Splits> {
    let mut datasets = BTreeMap::new();
    for (i, d) in DATASETS.iter().enumerate() {
        let raw = load_raw(dir, d)?;
        datasets.insert(
            d.to_string(),
            stratified_split(&raw.strata, seed.wrapping_add(i as u64)),
        );
    }
    Ok(Splits {
        format: "taskpath-splits/1".into(),
        seed,
        method: "stratified by class (diabetes: by whole-set median), per class a SplitMix64 \
                 Fisher-Yates shuffle seeded seed+dataset_index, 70/15/15 rounded"
            .into(),
        datasets,
    })
}

/// Reads `dir/splits.json`.
pub fn load_splits(dir: &Path) -> Result<Splits> {
    let p = dir.join("splits.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let s: Splits =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    Ok(s)
}

/// Per-feature mean and (biased) standard deviation of the given rows, ignoring
/// NaNs. A feature constant on those rows gets std 1 (it standardises to 0).
pub fn fit_standardiser(rows: &[Vec<f64>], fit_rows: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let nf = rows[0].len();
    let mut mean = vec![0.0; nf];
    let mut std = vec![1.0; nf];
    for j in 0..nf {
        let vals: Vec<f64> = fit_rows
            .iter()
            .map(|&i| rows[i][j])
            .filter(|x| !x.is_nan())
            .collect();
        let n = vals.len().max(1) as f64;
        let m = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
        mean[j] = m;
        std[j] = if var.sqrt() > 1e-8 { var.sqrt() } else { 1.0 };
    }
    (mean, std)
}

/// One split of one task: per modality the flat `[n, L, F]` standardised inputs.
#[derive(Clone, Debug)]
pub struct TaskSplit {
    /// Per modality of the task, `n * L * F` values.
    pub inputs: Vec<Vec<f32>>,
    /// Class labels.
    pub labels: Vec<u32>,
    /// Dataset row of each sample.
    pub rows: Vec<usize>,
}

impl TaskSplit {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A task with its data.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// Task name.
    pub name: String,
    /// Modalities (model order).
    pub modalities: Vec<ModalityConfig>,
    /// Continual stage (0-based).
    pub stage: usize,
    /// Number of classes.
    pub outputs: usize,
    /// Training split.
    pub train: TaskSplit,
    /// Validation split.
    pub val: TaskSplit,
    /// Test split.
    pub test: TaskSplit,
}

/// Arranges one standardised dataset row into the tokens of a modality.
fn tokens_of(modality: &str, row: &[f64]) -> Vec<f32> {
    let pick = |idx: &mut dyn Iterator<Item = usize>| idx.map(|j| row[j] as f32).collect();
    match modality {
        "img_rows" => pick(&mut (0..64)),
        // token c = column c read top to bottom
        "img_cols" => pick(&mut (0..64).map(|k| (k % 8) * 8 + k / 8)),
        "cell_mean" => pick(&mut (0..10)),
        "cell_se" => pick(&mut (10..20)),
        "cell_worst" => pick(&mut (20..30)),
        "demo" => pick(&mut (0..4)),
        "serum" => pick(&mut (4..10)),
        "clinical" => pick(&mut (0..4)),
        "genes" => pick(&mut (4..80)),
        m => panic!("unknown modality {m}"),
    }
}

/// Loads every task from `dir` using `dir/splits.json`.
pub fn load_tasks(dir: &Path) -> Result<Vec<TaskData>> {
    let splits = load_splits(dir)?;
    load_tasks_with(dir, &splits)
}

/// Loads every task from `dir` with the given split.
pub fn load_tasks_with(dir: &Path, splits: &Splits) -> Result<Vec<TaskData>> {
    let mut raws = BTreeMap::new();
    for d in DATASETS {
        raws.insert(d, load_raw(dir, d)?);
    }
    let mut out = Vec::new();
    for (name, mods, stage, outputs, ds) in TASKS {
        let raw = &raws[ds];
        let split = splits
            .datasets
            .get(ds)
            .with_context(|| format!("splits.json has no dataset {ds}"))?;
        let n = raw.rows.len();
        for idx in [&split.train, &split.val, &split.test] {
            ensure!(
                idx.iter().all(|&i| i < n),
                "splits.json: {ds} index out of range"
            );
        }
        // Missing values (GSE7390 grade "unkown") are imputed with the training
        // median of the feature, before standardisation.
        let mut rows = raw.rows.clone();
        for j in 0..rows[0].len() {
            if !rows.iter().any(|r| r[j].is_nan()) {
                continue;
            }
            let mut vals: Vec<f64> = split
                .train
                .iter()
                .map(|&i| raw.rows[i][j])
                .filter(|x| !x.is_nan())
                .collect();
            vals.sort_by(f64::total_cmp);
            let med = median_sorted(&vals);
            for r in rows.iter_mut() {
                if r[j].is_nan() {
                    r[j] = med;
                }
            }
        }
        let (mean, std) = fit_standardiser(&rows, &split.train);
        let labels_of = |idx: &[usize]| -> Vec<u32> {
            match (name, ds) {
                ("DIGIT-PARITY", _) => idx.iter().map(|&i| raw.target[i] as u32 % 2).collect(),
                (_, "diab") => {
                    let mut t: Vec<f64> = split.train.iter().map(|&i| raw.target[i]).collect();
                    t.sort_by(f64::total_cmp);
                    let med = median_sorted(&t);
                    idx.iter()
                        .map(|&i| u32::from(raw.target[i] > med))
                        .collect()
                }
                _ => idx.iter().map(|&i| raw.target[i] as u32).collect(),
            }
        };
        let make = |idx: &[usize]| -> TaskSplit {
            let inputs = mods
                .iter()
                .map(|m| {
                    idx.iter()
                        .flat_map(|&i| {
                            let z: Vec<f64> = rows[i]
                                .iter()
                                .zip(mean.iter().zip(&std))
                                .map(|(x, (m, s))| (x - m) / s)
                                .collect();
                            tokens_of(m, &z)
                        })
                        .collect()
                })
                .collect();
            TaskSplit {
                inputs,
                labels: labels_of(idx),
                rows: idx.to_vec(),
            }
        };
        out.push(TaskData {
            name: name.to_string(),
            modalities: mods.iter().map(|m| modality_config(m)).collect(),
            stage,
            outputs,
            train: make(&split.train),
            val: make(&split.val),
            test: make(&split.test),
        });
    }
    Ok(out)
}
