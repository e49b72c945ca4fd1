//! Dataset files: the samples of one task, as `taskpath` reads them for
//! calibration (`pack --calibration`), evaluation (`eval`) and `run`.
//!
//! ```json
//! {"format": "taskpath-dataset/1", "task": "DIGIT-10",
//!  "modalities": ["img_rows", "img_cols"],
//!  "samples": [{"inputs": [[...64 f32...], [...64 f32...]], "label": 3,
//!               "logits": [...10 f32, optional...]}]}
//! ```
//!
//! Each sample holds one flat `[tokens * features]` vector (row-major, token
//! by token) per modality, in the order of `modalities`, which must be the
//! task's modalities in model order. `label` is the class index, or `null`
//! when unknown (random data); `logits`, when present, are a reference
//! model's outputs for the sample (e.g. the trainer's), to measure agreement.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::ModelConfig;

/// Version string every dataset file carries.
pub const DATASET_FORMAT: &str = "taskpath-dataset/1";

/// One sample of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// One flat `[tokens * features]` vector per modality of the dataset.
    pub inputs: Vec<Vec<f32>>,
    /// Class index, or `None` when unknown.
    #[serde(default)]
    pub label: Option<i64>,
    /// A reference model's outputs for this sample, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
}

/// The samples of one task (a `taskpath-dataset/1` file).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Task name.
    pub task: String,
    /// Modality names, in model order; `samples[i].inputs[j]` is modality `j`.
    pub modalities: Vec<String>,
    /// The samples.
    pub samples: Vec<Sample>,
}

/// The file form, with its version string.
#[derive(Serialize, Deserialize)]
struct DatasetFile {
    format: String,
    task: String,
    modalities: Vec<String>,
    samples: Vec<Sample>,
}

/// The largest dataset file [`Dataset::load`] reads (the bundled ones are
/// under 2 MiB).
pub const MAX_DATASET_BYTES: u64 = 256 << 20;

impl Dataset {
    /// Reads and parses a dataset file (its shapes are checked against a model
    /// by [`Dataset::validate_against`]).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_limited(path, MAX_DATASET_BYTES)
    }

    /// [`Dataset::load`] of a file of at most `limit` bytes.
    pub fn load_limited(path: &Path, limit: u64) -> Result<Self> {
        use std::io::Read as _;
        let file = std::fs::File::open(path)
            .with_context(|| format!("reading dataset {}", path.display()))?;
        let mut text = String::new();
        // At most one byte past the limit: `/dev/zero` or a runaway file is
        // refused there, not read to the end.
        file.take(limit.saturating_add(1))
            .read_to_string(&mut text)
            .with_context(|| format!("reading dataset {}", path.display()))?;
        ensure!(
            text.len() as u64 <= limit,
            "dataset {} is larger than the limit of {limit} bytes",
            path.display()
        );
        Self::from_json(&text).with_context(|| format!("parsing dataset {}", path.display()))
    }

    /// Parses a dataset from JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let f: DatasetFile = serde_json::from_str(text)?;
        ensure!(
            f.format == DATASET_FORMAT,
            "format is {:?}, expected {DATASET_FORMAT:?}",
            f.format
        );
        Ok(Self {
            task: f.task,
            modalities: f.modalities,
            samples: f.samples,
        })
    }

    /// The JSON text of the file (compact, one line per sample).
    pub fn to_json(&self) -> Result<String> {
        let head = serde_json::json!({
            "format": DATASET_FORMAT,
            "task": self.task,
            "modalities": self.modalities,
        });
        let mut text = serde_json::to_string(&head)?;
        // Re-open the object to append the samples, one per line.
        text.pop();
        text.push_str(",\"samples\":[");
        for (i, s) in self.samples.iter().enumerate() {
            text.push_str(if i == 0 { "\n" } else { ",\n" });
            text.push_str(&serde_json::to_string(s)?);
        }
        text.push_str("\n]}\n");
        Ok(text)
    }

    /// Writes the dataset to `path` atomically (see [`crate::write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.to_json()?;
        crate::write_atomic(path, text.as_bytes())
    }

    /// Checks the dataset against a model: the task exists, the modalities are
    /// the task's (same names, same order), and every sample has one input per
    /// modality of `tokens * features` finite values, a label within the
    /// task's outputs and logits of the task's output count. Errors name the
    /// sample and the modality.
    pub fn validate_against(&self, config: &ModelConfig) -> Result<()> {
        let Some(task) = config.tasks.iter().find(|t| t.name == self.task) else {
            let names: Vec<&str> = config.tasks.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "dataset task {:?} is not in the model (its tasks: {})",
                self.task,
                names.join(", ")
            );
        };
        ensure!(
            self.modalities == task.modalities,
            "dataset of task {:?} lists modalities [{}], the task takes [{}]",
            self.task,
            self.modalities.join(", "),
            task.modalities.join(", ")
        );
        let shapes: Vec<(&str, usize, usize)> = task
            .modalities
            .iter()
            .map(|name| {
                let m = config
                    .modalities
                    .iter()
                    .find(|m| &m.name == name)
                    .with_context(|| format!("model has no modality {name:?}"))?;
                Ok((name.as_str(), m.tokens, m.features))
            })
            .collect::<Result<_>>()?;
        for (i, s) in self.samples.iter().enumerate() {
            let at = || format!("dataset of task {:?}, sample {i}", self.task);
            ensure!(
                s.inputs.len() == shapes.len(),
                "{}: {} inputs, the task takes {} modalities ({})",
                at(),
                s.inputs.len(),
                shapes.len(),
                self.modalities.join(", ")
            );
            for (x, &(name, l, f)) in s.inputs.iter().zip(&shapes) {
                ensure!(
                    x.len() == l * f,
                    "{}, modality {name}: {} values, expected {l} tokens x {f} features = {}",
                    at(),
                    x.len(),
                    l * f
                );
                if let Some(j) = x.iter().position(|v| !v.is_finite()) {
                    bail!("{}, modality {name}: value {j} is not finite", at());
                }
            }
            if let Some(label) = s.label {
                ensure!(
                    (0..task.outputs as i64).contains(&label),
                    "{}: label {label} is outside 0..{} (the task's outputs)",
                    at(),
                    task.outputs
                );
            }
            if let Some(logits) = &s.logits {
                ensure!(
                    logits.len() == task.outputs,
                    "{}: {} logits, the task has {} outputs",
                    at(),
                    logits.len(),
                    task.outputs
                );
            }
        }
        Ok(())
    }

    /// The inputs of every sample, in the form `taskpath_pack::route_statistics`
    /// takes for one task.
    pub fn inputs(&self) -> Vec<Vec<Vec<f32>>> {
        self.samples.iter().map(|s| s.inputs.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{random_inputs, RandomSpec, SplitMix64};

    fn config() -> ModelConfig {
        RandomSpec::small(8, 2, 3, 2, 2).config()
    }

    /// A dataset file is read up to its limit and no further: `/dev/zero`
    /// is refused after `limit` bytes (issue 17: it used to read 2 GB), a
    /// file at the limit loads.
    #[test]
    fn dataset_files_are_read_under_a_limit() {
        if std::path::Path::new("/dev/zero").exists() {
            let e = Dataset::load_limited(Path::new("/dev/zero"), 4096).unwrap_err();
            assert!(
                format!("{e:#}").contains("larger than the limit of 4096 bytes"),
                "{e:#}"
            );
        }
        let d = dataset(3);
        let dir = std::env::temp_dir().join(format!("tp-dataset-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.json");
        d.save(&p).unwrap();
        let n = std::fs::metadata(&p).unwrap().len();
        assert_eq!(Dataset::load_limited(&p, n).unwrap().samples.len(), 3);
        let e = Dataset::load_limited(&p, n - 1).unwrap_err();
        assert!(format!("{e:#}").contains("larger than the limit"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A valid dataset of task0 (modalities a [5x3], b [3x7], 2 outputs).
    fn dataset(n: usize) -> Dataset {
        let c = config();
        let mut rng = SplitMix64::new(7);
        Dataset {
            task: "task0".into(),
            modalities: vec!["a".into(), "b".into()],
            samples: (0..n)
                .map(|i| Sample {
                    inputs: random_inputs(&c, 0, &mut rng),
                    label: if i % 3 == 2 { None } else { Some(i as i64 % 2) },
                    logits: (i % 2 == 0).then(|| vec![0.25, -1.5e-7]),
                })
                .collect(),
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("taskpath-dataset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn err(d: &Dataset) -> String {
        format!("{:#}", d.validate_against(&config()).unwrap_err())
    }

    #[test]
    fn save_load_round_trip() {
        let d = dataset(5);
        d.validate_against(&config()).unwrap();
        let path = tmp("round.json");
        d.save(&path).unwrap();
        let back = Dataset::load(&path).unwrap();
        assert_eq!(back, d);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"label\":null"),
            "unknown labels are written as null"
        );
        assert!(text.starts_with("{\"format\":\"taskpath-dataset/1\""));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn empty_dataset_round_trips() {
        let mut d = dataset(0);
        d.task = "task1".into();
        d.modalities = vec!["b".into()];
        let back = Dataset::from_json(&d.to_json().unwrap()).unwrap();
        assert_eq!(back, d);
        back.validate_against(&config()).unwrap();
    }

    #[test]
    fn label_and_logits_are_optional_in_the_file() {
        let text = r#"{"format":"taskpath-dataset/1","task":"task1","modalities":["b"],
            "samples":[{"inputs":[[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]]}]}"#;
        let d = Dataset::from_json(text).unwrap();
        assert_eq!(d.samples[0].label, None);
        assert_eq!(d.samples[0].logits, None);
        d.validate_against(&config()).unwrap();
    }

    #[test]
    fn wrong_format_and_missing_file_are_errors() {
        let text = r#"{"format":"taskpath-dataset/9","task":"t","modalities":[],"samples":[]}"#;
        let e = format!("{:#}", Dataset::from_json(text).unwrap_err());
        assert!(e.contains("taskpath-dataset/9"), "{e}");
        let e = format!("{:#}", Dataset::load(&tmp("absent.json")).unwrap_err());
        assert!(e.contains("absent.json"), "{e}");
        let e = format!("{:#}", Dataset::from_json("{\"format\":").unwrap_err());
        assert!(e.contains("EOF"), "{e}");
    }

    #[test]
    fn unknown_task_is_named_with_the_model_tasks() {
        let mut d = dataset(1);
        d.task = "nope".into();
        let e = err(&d);
        assert!(e.contains("\"nope\"") && e.contains("task0, task1"), "{e}");
    }

    #[test]
    fn modalities_must_be_the_tasks() {
        let mut d = dataset(1);
        d.modalities = vec!["b".into(), "a".into()];
        let e = err(&d);
        assert!(e.contains("[b, a]") && e.contains("[a, b]"), "{e}");
    }

    #[test]
    fn input_count_is_checked_per_sample() {
        let mut d = dataset(3);
        d.samples[2].inputs.pop();
        let e = err(&d);
        assert!(e.contains("sample 2") && e.contains("1 inputs"), "{e}");
    }

    #[test]
    fn input_length_error_names_sample_and_modality() {
        let mut d = dataset(4);
        d.samples[3].inputs[1].push(0.0);
        let e = err(&d);
        assert!(e.contains("sample 3, modality b"), "{e}");
        assert!(
            e.contains("22 values, expected 3 tokens x 7 features = 21"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_inputs_are_refused() {
        let mut d = dataset(2);
        d.samples[1].inputs[0][4] = f32::NAN;
        let e = err(&d);
        assert!(
            e.contains("sample 1, modality a: value 4 is not finite"),
            "{e}"
        );
    }

    #[test]
    fn label_must_be_a_class_of_the_task() {
        let mut d = dataset(2);
        d.samples[1].label = Some(2);
        let e = err(&d);
        assert!(e.contains("sample 1: label 2 is outside 0..2"), "{e}");
        d.samples[1].label = Some(-1);
        assert!(err(&d).contains("label -1"));
    }

    #[test]
    fn logits_must_match_the_outputs() {
        let mut d = dataset(1);
        d.samples[0].logits = Some(vec![1.0; 3]);
        let e = err(&d);
        assert!(
            e.contains("sample 0: 3 logits, the task has 2 outputs"),
            "{e}"
        );
    }
}
