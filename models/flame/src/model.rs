//! The FLAME-style model of docs/CHECKPOINT.md in candle, with parameters named
//! exactly like the checkpoint tensors.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use taskpath_checkpoint::{Checkpoint, Gating, ModelConfig, SplitMix64, TaskConfig};

/// A parameter: trained in the current stage, or frozen.
#[derive(Clone, Debug)]
pub enum Param {
    /// Trainable.
    Train(Var),
    /// Frozen (earlier stage, or a truncated factor).
    Fixed(Tensor),
}

impl Param {
    /// The value as a tensor (tracked for gradients when trainable).
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Train(v) => v.as_tensor(),
            Param::Fixed(t) => t,
        }
    }
}

/// Named parameters, names as in docs/CHECKPOINT.md.
#[derive(Clone, Debug, Default)]
pub struct Params {
    /// Every parameter by tensor name.
    pub map: BTreeMap<String, Param>,
}

impl Params {
    /// The tensor of a parameter.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.map
            .get(name)
            .map(Param::tensor)
            .with_context(|| format!("model has no parameter {name}"))
    }

    /// Whether a parameter exists.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Inserts a parameter from values.
    pub fn insert(
        &mut self,
        name: &str,
        shape: &[usize],
        data: Vec<f32>,
        train: bool,
    ) -> Result<()> {
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
        let p = if train {
            Param::Train(Var::from_tensor(&t)?)
        } else {
            Param::Fixed(t)
        };
        self.map.insert(name.to_string(), p);
        Ok(())
    }

    /// The trainable variables, in name order.
    pub fn trainable(&self) -> Vec<Var> {
        self.map
            .values()
            .filter_map(|p| match p {
                Param::Train(v) => Some(v.clone()),
                Param::Fixed(_) => None,
            })
            .collect()
    }

    /// Names of the trainable parameters.
    pub fn trainable_names(&self) -> Vec<String> {
        self.map
            .iter()
            .filter(|(_, p)| matches!(p, Param::Train(_)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Freezes every parameter.
    pub fn freeze_all(&mut self) {
        for p in self.map.values_mut() {
            if let Param::Train(v) = p {
                *p = Param::Fixed(v.as_detached_tensor());
            }
        }
    }

    /// Copies of the trainable values (for early stopping).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.trainable()
            .iter()
            .map(|v| Ok(v.as_tensor().copy()?))
            .collect()
    }

    /// Restores values saved by [`Params::snapshot`].
    pub fn restore(&self, snap: &[Tensor]) -> Result<()> {
        for (v, t) in self.trainable().iter().zip(snap) {
            v.set(t)?;
        }
        Ok(())
    }

    /// Values of a parameter as f32.
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.get(name)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.map.values().map(|p| p.tensor().elem_count()).sum()
    }
}

/// Normal samples from [`SplitMix64`] (Box-Muller), for seeded initialisation.
#[derive(Debug)]
pub struct Normal {
    rng: SplitMix64,
}

impl Normal {
    /// A generator with a seed.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
        }
    }

    /// `n` samples of N(0, std^2).
    pub fn sample(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1 = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let u2 = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let r = (-2.0 * (1.0 - u1).ln()).sqrt();
                (r * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
            })
            .collect()
    }

    /// The underlying uniform generator.
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }
}

/// LayerNorm over the last dimension, biased variance.
pub fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.broadcast_mul(g)?.broadcast_add(b)?)
}

/// The model: architecture + parameters.
#[derive(Clone, Debug)]
pub struct Model {
    /// Architecture (model.json).
    pub cfg: ModelConfig,
    /// Parameters.
    pub params: Params,
}

/// Output of a task forward pass.
#[derive(Debug)]
pub struct TaskOutput {
    /// `[B, O]` logits.
    pub logits: Tensor,
    /// Scalar auxiliary load-balancing loss (sum over the task's modalities).
    pub aux: Tensor,
    /// Per modality, per sample: the selected experts.
    pub selected: Vec<Vec<Vec<usize>>>,
}

impl Model {
    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params.get(name)
    }

    /// `y = W x + b` over the last dimension; `W` full or a factor pair `U (V x)`.
    pub fn linear(&self, x: &Tensor, w: &str, b: &str) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inn = *dims.last().context("linear on a scalar")?;
        let rows = x.elem_count() / inn;
        let x2 = x.reshape((rows, inn))?;
        let y = if self.params.contains(w) {
            x2.matmul(&self.p(w)?.t()?)?
        } else {
            let u = self.p(&format!("{w}.u"))?;
            let v = self.p(&format!("{w}.v"))?;
            x2.matmul(&v.t()?)?.matmul(&u.t()?)?
        };
        let y = y.broadcast_add(self.p(b)?)?;
        let mut out = dims;
        *out.last_mut().unwrap() = y.dim(1)?;
        Ok(y.reshape(out)?)
    }

    fn ln(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        layer_norm(
            x,
            self.p(&format!("{prefix}.g"))?,
            self.p(&format!("{prefix}.b"))?,
            f64::from(self.cfg.ln_eps),
        )
    }

    /// Attention block of modality `m` on encoder tokens: returns `u` `[B, L, D]`.
    pub fn block_u(&self, m: &str, x_in: &Tensor) -> Result<Tensor> {
        let d = self.cfg.d_model;
        let (b, l, _) = x_in.dims3()?;
        let x = self.linear(x_in, &format!("enc.{m}.w"), &format!("enc.{m}.b"))?;
        let x = x.broadcast_add(self.p(&format!("enc.{m}.pos"))?)?;
        let x = self.ln(&(x * (d as f64).sqrt())?, &format!("blk.{m}.ln0"))?;
        let h = self.ln(&x, &format!("blk.{m}.ln1"))?;
        let nh = self.cfg.heads;
        let dh = d / nh;
        let proj = |p: &str| -> Result<Tensor> {
            let t = self.linear(
                &h,
                &format!("blk.{m}.attn.{p}.w"),
                &format!("blk.{m}.attn.{p}.b"),
            )?;
            Ok(t.reshape((b, l, nh, dh))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (proj("q")?, proj("k")?, proj("v")?);
        let scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?;
        let att = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let a = att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        let a = self.linear(
            &a,
            &format!("blk.{m}.attn.o.w"),
            &format!("blk.{m}.attn.o.b"),
        )?;
        self.ln(&a, &format!("blk.{m}.ln2"))
    }

    /// Router logits `[B, N]` of modality `m` for a task of stage `t`.
    pub fn router_logits(&self, m: &str, u: &Tensor, t: usize) -> Result<Tensor> {
        let d = self.cfg.d_model;
        let (b, l, _) = u.dims3()?;
        let mut sum: Option<Tensor> = None;
        for h in 0..=t {
            let q = self.p(&format!("router.{m}.{h}.query"))?;
            let s = u.matmul(&q.reshape((d, 1))?.broadcast_as((b, d, 1))?)?; // [B, L, 1]
            let s = (s / (d as f64).sqrt())?;
            let s = candle_nn::ops::softmax(&s, 1)?;
            let p = s.broadcast_mul(u)?.sum(1)?; // [B, D]
            let _ = l;
            let gate = self.p(&format!("router.{m}.{h}.gate"))?;
            let logit = match self.cfg.gating {
                Gating::Laplace => p
                    .unsqueeze(1)?
                    .broadcast_sub(&gate.unsqueeze(0)?)?
                    .sqr()?
                    .sum(2)?
                    .sqrt()?
                    .neg()?,
                Gating::Softmax => p.matmul(&gate.t()?)?,
            };
            sum = Some(match sum {
                None => logit,
                Some(s) => (s + logit)?,
            });
        }
        let sum = sum.context("no router heads")?;
        if t == 0 {
            Ok(sum)
        } else {
            Ok((sum / (t + 1) as f64)?)
        }
    }

    /// Output of expert `e` (components `0..=t`) at the last token, given the
    /// conv input `[u_{L-2}; u_{L-1}; 0]` `[B, 3D]` and `u_{L-1}` `[B, D]`.
    pub fn expert_last(&self, e: usize, t: usize, cin: &Tensor, cur: &Tensor) -> Result<Tensor> {
        let mut acc: Option<Tensor> = None;
        for c in 0..=t {
            let p = format!("expert.{e}.{c}");
            let conv = self.linear(cin, &format!("{p}.conv.w"), &format!("{p}.conv.b"))?;
            let h = self.ln(&(cur + conv.gelu_erf()?)?, &format!("{p}.ln"))?;
            let f = self
                .linear(&h, &format!("{p}.fc1.w"), &format!("{p}.fc1.b"))?
                .gelu_erf()?;
            let o = self.linear(&f, &format!("{p}.fc2.w"), &format!("{p}.fc2.b"))?;
            acc = Some(match acc {
                None => o,
                Some(a) => (a + o)?,
            });
        }
        acc.context("no components")
    }

    /// Forward pass of a task. `inputs[i]` is `[B, L_i * F_i]` for the task's i-th
    /// modality.
    pub fn forward(&self, task: &TaskConfig, inputs: &[Tensor]) -> Result<TaskOutput> {
        let d = self.cfg.d_model;
        let n = self.cfg.experts;
        let k = self.cfg.top_k;
        let t = task.stage;
        let mut ys = Vec::new();
        let mut aux: Option<Tensor> = None;
        let mut selected = Vec::new();
        if inputs.len() != task.modalities.len() {
            bail!("task {} needs {} inputs", task.name, task.modalities.len());
        }
        for (m, x) in task.modalities.iter().zip(inputs) {
            let mc = &self.cfg.modalities[self.cfg.modality_index(m).context("modality")?];
            let b = x.dim(0)?;
            let x = x.reshape((b, mc.tokens, mc.features))?;
            let u = self.block_u(m, &x)?;
            let logits = self.router_logits(m, &u, t)?;
            // top-k with ties to the lower index, softmax over the kept logits
            let lv = logits.to_vec2::<f32>()?;
            let mut mask = vec![-1e30f32; b * n];
            let mut counts = vec![0f32; n];
            let mut sel = Vec::with_capacity(b);
            for (i, row) in lv.iter().enumerate() {
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|&p, &q| row[q].total_cmp(&row[p]).then(p.cmp(&q)));
                idx.truncate(k);
                for &j in &idx {
                    mask[i * n + j] = 0.0;
                    counts[j] += 1.0;
                }
                sel.push(idx);
            }
            selected.push(sel);
            let mask = Tensor::from_vec(mask, (b, n), x.device())?;
            let g = candle_nn::ops::softmax(&(&logits + mask)?, D::Minus1)?;
            // load balancing (Switch style): N * sum_j f_j P_j
            let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.mean(0)?;
            let frac: Vec<f32> = counts.iter().map(|c| c / (b * k) as f32).collect();
            let frac = Tensor::from_vec(frac, n, x.device())?;
            let a = ((probs * frac)?.sum_all()? * n as f64)?;
            aux = Some(match aux {
                None => a,
                Some(s) => (s + a)?,
            });
            // experts at the last token
            let l = mc.tokens;
            let cur = u.narrow(1, l - 1, 1)?.squeeze(1)?;
            let zeros = Tensor::zeros((b, d), DType::F32, x.device())?;
            let prev = if l >= 2 {
                u.narrow(1, l - 2, 1)?.squeeze(1)?
            } else {
                zeros.clone()
            };
            let cin = Tensor::cat(&[&prev, &cur, &zeros], 1)?;
            let outs = (0..n)
                .map(|e| self.expert_last(e, t, &cin, &cur))
                .collect::<Result<Vec<_>>>()?;
            let outs = Tensor::stack(&outs, 1)?; // [B, N, D]
            let y = outs.broadcast_mul(&g.unsqueeze(2)?)?.sum(1)?;
            ys.push(self.ln(&y, &format!("blk.{m}.lnf"))?);
        }
        let z = Tensor::cat(&ys, 1)?;
        let z = self.ln(&z, &format!("head.{}.ln", task.name))?;
        let logits = self.linear(
            &z,
            &format!("head.{}.w", task.name),
            &format!("head.{}.b", task.name),
        )?;
        Ok(TaskOutput {
            logits,
            aux: aux.context("task without modalities")?,
            selected,
        })
    }

    /// The model as a checkpoint (every parameter, frozen or not, as stored).
    pub fn to_checkpoint(&self) -> Result<Checkpoint> {
        let mut tensors = BTreeMap::new();
        for (name, p) in &self.params.map {
            let t = p.tensor();
            tensors.insert(
                name.clone(),
                taskpath_checkpoint::Tensor::new(
                    t.dims().to_vec(),
                    t.flatten_all()?.to_vec1::<f32>()?,
                ),
            );
        }
        let ck = Checkpoint {
            config: self.cfg.clone(),
            tensors,
        };
        ck.validate()?;
        Ok(ck)
    }

    /// A frozen model from a checkpoint.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        ck.validate()?;
        let mut params = Params::default();
        for (name, t) in &ck.tensors {
            params.insert(name, &t.shape, t.data.clone(), false)?;
        }
        Ok(Self {
            cfg: ck.config.clone(),
            params,
        })
    }

    /// Task config by name.
    pub fn task(&self, name: &str) -> Result<&TaskConfig> {
        self.cfg
            .tasks
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("model has no task {name}"))
    }
}
