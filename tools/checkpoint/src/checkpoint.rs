//! Checkpoint directories: `model.json` + `model.safetensors` (docs/CHECKPOINT.md).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Version string every `model.json` carries.
pub const CHECKPOINT_FORMAT: &str = "taskpath-checkpoint/1";

/// Gate function of the routers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gating {
    /// `logit_j = -||p - w_j||_2`.
    Laplace,
    /// `logit_j = w_j . p`.
    Softmax,
}

/// One input modality: a sequence of `tokens` vectors of `features` values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModalityConfig {
    /// Unique name, used in tensor names.
    pub name: String,
    /// Sequence length L.
    pub tokens: usize,
    /// Raw features per token F.
    pub features: usize,
}

/// One task: its modalities (in model order), stage and head size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Unique name.
    pub name: String,
    /// Modality names, a subset of the model's, in model order.
    pub modalities: Vec<String>,
    /// 0-based continual stage.
    pub stage: usize,
    /// Number of head outputs (logits).
    pub outputs: usize,
}

/// `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// Model width D.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Shared expert pool size N.
    pub experts: usize,
    /// Experts kept per (sample, modality).
    pub top_k: usize,
    /// Hidden width of the expert FFN.
    pub ffn_hidden: usize,
    /// Rank of low-rank components (informational).
    pub rank: usize,
    /// Number of stages S (components per expert slot, router heads per modality).
    pub stages: usize,
    /// Router gate function.
    pub gating: Gating,
    /// LayerNorm epsilon.
    pub ln_eps: f32,
    /// Modalities in fusion order.
    pub modalities: Vec<ModalityConfig>,
    /// Tasks.
    pub tasks: Vec<TaskConfig>,
}

impl ModelConfig {
    /// Checks internal consistency; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.format == CHECKPOINT_FORMAT,
            "model.json: format is {:?}, expected {CHECKPOINT_FORMAT:?}",
            self.format
        );
        ensure!(self.d_model > 0, "model.json: d_model must be > 0");
        ensure!(
            self.heads > 0 && self.d_model.is_multiple_of(self.heads),
            "model.json: heads ({}) must divide d_model ({})",
            self.heads,
            self.d_model
        );
        ensure!(
            (1..=64).contains(&self.experts),
            "model.json: experts must be in 1..=64, got {}",
            self.experts
        );
        ensure!(
            (1..=self.experts).contains(&self.top_k),
            "model.json: top_k must be in 1..=experts, got {}",
            self.top_k
        );
        ensure!(self.ffn_hidden > 0, "model.json: ffn_hidden must be > 0");
        ensure!(
            (1..=255).contains(&self.stages),
            "model.json: stages must be in 1..=255, got {}",
            self.stages
        );
        ensure!(
            self.ln_eps > 0.0 && self.ln_eps.is_finite(),
            "model.json: ln_eps must be positive"
        );
        ensure!(
            !self.modalities.is_empty() && self.modalities.len() <= 32,
            "model.json: need 1..=32 modalities"
        );
        for (i, m) in self.modalities.iter().enumerate() {
            ensure!(
                is_name(&m.name),
                "model.json: modality {i} has invalid name {:?}",
                m.name
            );
            ensure!(
                m.tokens > 0 && m.features > 0,
                "model.json: modality {:?} needs tokens > 0 and features > 0",
                m.name
            );
            ensure!(
                !self.modalities[..i].iter().any(|o| o.name == m.name),
                "model.json: duplicate modality {:?}",
                m.name
            );
        }
        ensure!(!self.tasks.is_empty(), "model.json: no tasks");
        for (i, t) in self.tasks.iter().enumerate() {
            ensure!(
                is_name(&t.name),
                "model.json: task {i} has invalid name {:?}",
                t.name
            );
            ensure!(
                !self.tasks[..i].iter().any(|o| o.name == t.name),
                "model.json: duplicate task {:?}",
                t.name
            );
            ensure!(
                t.stage < self.stages,
                "model.json: task {:?} has stage {} but the model has {} stages",
                t.name,
                t.stage,
                self.stages
            );
            ensure!(
                t.outputs > 0,
                "model.json: task {:?} needs outputs > 0",
                t.name
            );
            ensure!(
                !t.modalities.is_empty(),
                "model.json: task {:?} has no modalities",
                t.name
            );
            let mut last = None;
            for m in &t.modalities {
                let Some(idx) = self.modality_index(m) else {
                    bail!("model.json: task {:?} names unknown modality {m:?}", t.name);
                };
                ensure!(
                    last.is_none_or(|l| idx > l),
                    "model.json: task {:?} lists modalities out of model order or twice",
                    t.name
                );
                last = Some(idx);
            }
        }
        Ok(())
    }

    /// Index of a modality by name.
    pub fn modality_index(&self, name: &str) -> Option<usize> {
        self.modalities.iter().position(|m| m.name == name)
    }

    /// Indices of a task's modalities, in model order.
    pub fn task_modalities(&self, task: &TaskConfig) -> Vec<usize> {
        task.modalities
            .iter()
            .filter_map(|m| self.modality_index(m))
            .collect()
    }

    /// Every tensor the checkpoint must hold, with its full-rank shape.
    /// The bool says whether it may be stored as a low-rank pair.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>, bool)> {
        let d = self.d_model;
        let h = self.ffn_hidden;
        let mut v = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, lr: bool| v.push((name, shape, lr));
        for m in &self.modalities {
            let n = &m.name;
            push(format!("enc.{n}.w"), vec![d, m.features], true);
            push(format!("enc.{n}.b"), vec![d], false);
            push(format!("enc.{n}.pos"), vec![m.tokens, d], false);
            for ln in ["ln0", "ln1", "ln2", "lnf"] {
                push(format!("blk.{n}.{ln}.g"), vec![d], false);
                push(format!("blk.{n}.{ln}.b"), vec![d], false);
            }
            for p in ["q", "k", "v", "o"] {
                push(format!("blk.{n}.attn.{p}.w"), vec![d, d], false);
                push(format!("blk.{n}.attn.{p}.b"), vec![d], false);
            }
            for s in 0..self.stages {
                push(format!("router.{n}.{s}.query"), vec![d], false);
                push(format!("router.{n}.{s}.gate"), vec![self.experts, d], false);
            }
        }
        for e in 0..self.experts {
            for c in 0..self.stages {
                let p = format!("expert.{e}.{c}");
                push(format!("{p}.conv.w"), vec![d, 3 * d], true);
                push(format!("{p}.conv.b"), vec![d], false);
                push(format!("{p}.ln.g"), vec![d], false);
                push(format!("{p}.ln.b"), vec![d], false);
                push(format!("{p}.fc1.w"), vec![h, d], true);
                push(format!("{p}.fc1.b"), vec![h], false);
                push(format!("{p}.fc2.w"), vec![d, h], true);
                push(format!("{p}.fc2.b"), vec![d], false);
            }
        }
        for t in &self.tasks {
            let z = t.modalities.len() * d;
            push(format!("head.{}.ln.g", t.name), vec![z], false);
            push(format!("head.{}.ln.b", t.name), vec![z], false);
            push(format!("head.{}.w", t.name), vec![t.outputs, z], false);
            push(format!("head.{}.b", t.name), vec![t.outputs], false);
        }
        v
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A dense f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from shape and values; panics if they disagree (programming error).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape/data mismatch"
        );
        Self { shape, data }
    }
}

/// A matrix as stored: full, or a low-rank pair `W = U V`.
#[derive(Clone, Copy, Debug)]
pub enum Matrix<'a> {
    /// `[out, in]`.
    Full(&'a Tensor),
    /// `U [out, r]`, `V [r, in]`.
    LowRank(&'a Tensor, &'a Tensor),
}

impl Matrix<'_> {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Matrix::Full(w) => (w.shape[0], w.shape[1]),
            Matrix::LowRank(u, v) => (u.shape[0], v.shape[1]),
        }
    }

    /// The dense `[out, in]` values (U V for a low-rank pair), accumulated in f64.
    pub fn dense(&self) -> Vec<f32> {
        match self {
            Matrix::Full(w) => w.data.clone(),
            Matrix::LowRank(u, v) => {
                let (o, r, i) = (u.shape[0], u.shape[1], v.shape[1]);
                let mut out = vec![0f32; o * i];
                for a in 0..o {
                    for b in 0..i {
                        let s: f64 = (0..r)
                            .map(|k| u.data[a * r + k] as f64 * v.data[k * i + b] as f64)
                            .sum();
                        out[a * i + b] = s as f32;
                    }
                }
                out
            }
        }
    }
}

/// Largest safetensors JSON header read (the safetensors library's limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads a `model.safetensors` for `config`, checking its header first: the
/// header length is bounded and inside the file, every tensor is F32, is one
/// `config` expects (with its shape when full-rank) and has an offset range
/// of exactly its size inside the data region, which those ranges fill. Only
/// then is the data read, so a wrong or hostile header costs a header read,
/// not the whole file.
fn read_safetensors(path: &Path, config: &ModelConfig) -> Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    let file_len = f.metadata()?.len();
    ensure!(
        file_len >= 8,
        "{file_len} bytes: too short for the 8-byte header length"
    );
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    let most = MAX_HEADER_BYTES.min(file_len - 8);
    ensure!(
        n <= most,
        "the header length is {n} bytes; it must be at most {most} (the file's size less 8, and at most {MAX_HEADER_BYTES})"
    );
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).context("the JSON header is not an object")?;
    let expected: BTreeMap<String, (Vec<usize>, bool)> = config
        .expected_tensors()
        .into_iter()
        .map(|(name, shape, lr)| (name, (shape, lr)))
        .collect();
    let data_len = file_len - 8 - n;
    let mut ranges = Vec::new();
    for (name, v) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype").and_then(serde_json::Value::as_str);
        ensure!(
            dtype == Some("F32"),
            "tensor {name:?} has dtype {dtype:?}, expected F32"
        );
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .with_context(|| format!("tensor {name:?}: no valid shape"))?;
        let known = match expected.get(name) {
            Some((s, _)) => {
                ensure!(
                    *s == shape,
                    "tensor {name:?} has shape {shape:?}, model.json implies {s:?}"
                );
                true
            }
            // A low-rank factor of an expected low-rank matrix.
            None => name
                .strip_suffix(".u")
                .or_else(|| name.strip_suffix(".v"))
                .and_then(|base| expected.get(base))
                .is_some_and(|(_, lr)| *lr),
        };
        ensure!(known, "tensor {name:?} is not one model.json describes");
        let offsets: [u64; 2] = v
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .with_context(|| format!("tensor {name:?}: no valid data_offsets"))?;
        let bytes = shape
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64));
        ensure!(
            offsets[0] <= offsets[1]
                && offsets[1] <= data_len
                && Some(offsets[1] - offsets[0]) == bytes,
            "tensor {name:?}: data_offsets {offsets:?} must span its {} bytes within the {data_len}-byte data region",
            bytes.map_or_else(|| "overflowing".into(), |b| b.to_string())
        );
        ranges.push(offsets);
    }
    ranges.sort_unstable();
    let mut end = 0;
    for [a, b] in ranges {
        ensure!(
            a == end,
            "the tensors' data ranges overlap or leave a gap at byte {end}"
        );
        end = b;
    }
    ensure!(
        end == data_len,
        "the tensors cover {end} bytes of the {data_len}-byte data region"
    );
    f.rewind()?;
    let mut bytes = Vec::with_capacity(file_len as usize);
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A loaded, validated checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Architecture.
    pub config: ModelConfig,
    /// Every tensor by name.
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads `dir/model.json` and `dir/model.safetensors` and validates them.
    pub fn load(dir: &Path) -> Result<Self> {
        let json_path = dir.join("model.json");
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let config: ModelConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", json_path.display()))?;
        config.validate()?;
        let st_path = dir.join("model.safetensors");
        let bytes = read_safetensors(&st_path, &config)
            .with_context(|| format!("reading {}", st_path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("parsing {}", st_path.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            ensure!(
                view.dtype() == safetensors::Dtype::F32,
                "{}: tensor {name} has dtype {:?}, expected F32",
                st_path.display(),
                view.dtype()
            );
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(name, Tensor::new(view.shape().to_vec(), data));
        }
        let ck = Self { config, tensors };
        ck.validate()?;
        Ok(ck)
    }

    /// Checks the config and that every tensor exists with its shape, none extra.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        let mut seen = 0usize;
        for (name, shape, lr) in self.config.expected_tensors() {
            if let Some(t) = self.tensors.get(&name) {
                ensure!(
                    t.shape == shape,
                    "checkpoint: tensor {name} has shape {:?}, model.json implies {:?}",
                    t.shape,
                    shape
                );
                ensure!(
                    t.data.iter().all(|x| x.is_finite()),
                    "checkpoint: tensor {name} holds a non-finite value"
                );
                seen += 1;
            } else if lr {
                let (u, v) = (format!("{name}.u"), format!("{name}.v"));
                let (Some(tu), Some(tv)) = (self.tensors.get(&u), self.tensors.get(&v)) else {
                    bail!("checkpoint: missing tensor {name} (or its low-rank pair {u}/{v})");
                };
                ensure!(
                    tu.shape.len() == 2
                        && tv.shape.len() == 2
                        && tu.shape[0] == shape[0]
                        && tv.shape[1] == shape[1]
                        && tu.shape[1] == tv.shape[0]
                        && tu.shape[1] > 0,
                    "checkpoint: low-rank pair {u} {:?} / {v} {:?} does not factor a {:?} matrix",
                    tu.shape,
                    tv.shape,
                    shape
                );
                ensure!(
                    tu.data.iter().chain(&tv.data).all(|x| x.is_finite()),
                    "checkpoint: tensor {name} holds a non-finite value"
                );
                seen += 2;
            } else {
                bail!("checkpoint: missing tensor {name} (shape {shape:?})");
            }
        }
        if seen != self.tensors.len() {
            let expected: std::collections::BTreeSet<String> = self
                .config
                .expected_tensors()
                .into_iter()
                .flat_map(|(n, _, _)| [format!("{n}.u"), format!("{n}.v"), n])
                .collect();
            let extra: Vec<_> = self
                .tensors
                .keys()
                .filter(|k| !expected.contains(*k))
                .take(5)
                .collect();
            bail!("checkpoint: tensors not described by model.json: {extra:?}");
        }
        Ok(())
    }

    /// The checkpoint as it was after stage `s`: stages `0..=s`, the tasks of
    /// those stages, the modalities up to the last one they use, and only their tensors (what a continual trainer exports
    /// after that stage, since later stages never change earlier weights).
    pub fn stage_prefix(&self, s: usize) -> Result<Checkpoint> {
        let mut config = self.config.clone();
        config.stages = s + 1;
        config.tasks.retain(|t| t.stage <= s);
        // Modalities no kept task uses, after the last one used, arrive with a
        // later stage (indices of the kept ones do not move).
        let used = config
            .modalities
            .iter()
            .rposition(|m| config.tasks.iter().any(|t| t.modalities.contains(&m.name)))
            .map_or(0, |i| i + 1);
        config.modalities.truncate(used);
        let keep: std::collections::BTreeSet<String> = config
            .expected_tensors()
            .into_iter()
            .flat_map(|(n, _, _)| [format!("{n}.u"), format!("{n}.v"), n])
            .collect();
        let tensors = self
            .tensors
            .iter()
            .filter(|(n, _)| keep.contains(*n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let out = Checkpoint { config, tensors };
        out.validate()
            .with_context(|| format!("building the stage {s} checkpoint"))?;
        Ok(out)
    }

    /// A tensor that [`Checkpoint::validate`] guarantees exists.
    pub fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("validated checkpoint lacks {name}"))
    }

    /// A matrix, full or low-rank.
    pub fn matrix(&self, name: &str) -> Matrix<'_> {
        match self.tensors.get(name) {
            Some(w) => Matrix::Full(w),
            None => Matrix::LowRank(
                self.tensor(&format!("{name}.u")),
                self.tensor(&format!("{name}.v")),
            ),
        }
    }

    /// Writes `dir/model.json` and `dir/model.safetensors`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&self.config)? + "\n";
        crate::write_atomic(&dir.join("model.json"), json.as_bytes())?;
        let raw: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    t.shape.clone(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
            .iter()
            .map(|(n, b, s)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
                ))
            })
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(views, &None)?;
        crate::write_atomic(&dir.join("model.safetensors"), &bytes)?;
        Ok(())
    }
}
