//! The CPU side of a segmented run: segments no delegate took, and the glue.
//!
//! Every op here calls the same `taskpath-cpu` kernels in the same order as
//! `taskpath_runtime::Session`, so a run with no delegate is bit-identical to
//! a session's (a test checks this on every bundled test sample); that makes
//! the values this module produces for a segment *the runtime's CPU outputs
//! for that part*, which the exported graphs are checked against.

use std::collections::HashMap;

use taskpath_cpu::f32 as k;
use taskpath_cpu::qmatvec::Kernels;
use taskpath_cpu::quant::WeightFormat;
use taskpath_format::records::{gating, ExpertRec};
use taskpath_format::{Opcode, NONE};
use taskpath_runtime::{Model, TaskInfo, TensorView};

use crate::error::{Error, Result};
use crate::plan::{Plan, Source};

/// Values crossing segment boundaries, by task-local slot.
pub(crate) type Values = HashMap<u32, Vec<f32>>;

fn bad(op: u32, why: impl Into<String>) -> Error {
    Error::Program {
        op,
        why: why.into(),
    }
}

/// Runs dense segments op by op on a private arena laid out by the task's
/// memory plan, and the `Route` / `Moe` glue.
#[derive(Debug)]
pub(crate) struct Cpu {
    kernels: Kernels,
    arena: Vec<f32>,
    q: Vec<u8>,
}

impl Cpu {
    pub(crate) fn new(plan: &Plan, kernels: Kernels) -> Self {
        Self {
            kernels,
            arena: vec![0.0; plan.arena_len],
            q: Vec::new(),
        }
    }

    fn range(plan: &Plan, slot: u32, len: usize, op: u32) -> Result<std::ops::Range<usize>> {
        let &(off, cap) = plan
            .slots
            .get(slot as usize)
            .ok_or_else(|| bad(op, "slot beyond the task's plan"))?;
        if len > cap || off + len > plan.arena_len {
            return Err(bad(op, "slot smaller than the op's view"));
        }
        Ok(off..off + len)
    }

    /// Runs dense segment `si` of `plan`: loads each input value into its
    /// slot right before the first op that reads it (slots of values whose
    /// lifetimes do not overlap may share memory), and stores each output
    /// value after the op that writes it.
    pub(crate) fn run_segment(
        &mut self,
        model: &Model<'_>,
        plan: &Plan,
        si: usize,
        inputs: &[&[f32]],
        values: &mut Values,
    ) -> Result<()> {
        let seg = &plan.segments[si];
        let mut loaded: Vec<u32> = Vec::new();
        for &i in &seg.ops {
            let op = &plan.ops[i as usize];
            for &(src, _) in &op.reads {
                if let Source::Slot(s) = src {
                    if !loaded.contains(&s) && seg.inputs.iter().any(|p| p.source == src) {
                        let port = seg.inputs.iter().find(|p| p.source == src);
                        let v = values
                            .get(&s)
                            .ok_or_else(|| bad(i, format!("{}: input not computed", seg.name)))?;
                        let n = port.map_or(v.len(), |p| p.numel());
                        if v.len() != n {
                            return Err(bad(i, "input value of the wrong length"));
                        }
                        let r = Self::range(plan, s, n, i)?;
                        self.arena[r].copy_from_slice(v);
                        loaded.push(s);
                    }
                }
            }
            self.exec(model, plan, i, inputs)?;
            for &(s, _) in &op.writes {
                if let Some(p) = seg.outputs.iter().find(|p| p.source == Source::Slot(s)) {
                    let r = Self::range(plan, s, p.numel(), i)?;
                    values.insert(s, self.arena[r].to_vec());
                }
            }
        }
        Ok(())
    }

    fn tensor<'a>(model: &Model<'a>, id: u32, op: u32) -> Result<TensorView<'a>> {
        let t = model
            .tensor(id)
            .ok_or_else(|| bad(op, format!("tensor {id} does not exist")))?;
        if !t.is_f32() {
            return Err(bad(op, "quantized weights outside an expert blob"));
        }
        Ok(t)
    }

    fn read(&self, plan: &Plan, s: u32, len: usize, op: u32) -> Result<Vec<f32>> {
        Ok(self.arena[Self::range(plan, s, len, op)?].to_vec())
    }

    fn write(&mut self, plan: &Plan, s: u32, v: &[f32], op: u32) -> Result<()> {
        let r = Self::range(plan, s, v.len(), op)?;
        self.arena[r].copy_from_slice(v);
        Ok(())
    }

    /// One dense op, with the kernels and argument order of `Session::exec`.
    fn exec(&mut self, model: &Model<'_>, plan: &Plan, i: u32, inputs: &[&[f32]]) -> Result<()> {
        let hp = model.hparams();
        let d = hp.d_model as usize;
        let op = plan.ops[i as usize].clone();
        let r = op.rec;
        let t = |id| Self::tensor(model, id, i);
        match op.opcode {
            Opcode::Encode => {
                let (w, b, pos) = (t(r.a2)?, t(r.a3)?, t(r.a4)?);
                let x = inputs
                    .get(r.a0 as usize)
                    .ok_or_else(|| bad(i, "task input missing"))?;
                let rows = pos.rows;
                if x.len() != rows * w.cols {
                    return Err(bad(i, "task input of the wrong length"));
                }
                let mut y = vec![0.0; rows * d];
                linear(&self.kernels, &w, x, Some(b.a), rows, &mut [], &mut y)
                    .ok_or_else(|| bad(i, "linear shapes"))?;
                k::add(pos.a, &mut y);
                self.write(plan, r.a1, &y, i)
            }
            Opcode::LayerNorm => {
                let (g, b) = (t(r.a2)?, t(r.a3)?);
                let n = r.a5 as usize * g.cols;
                let mut x = self.read(plan, r.a0, n, i)?;
                k::layernorm_inplace(&mut x, g.a, b.a, hp.ln_eps, f32::from_bits(r.a4));
                self.write(plan, r.a1, &x, i)
            }
            Opcode::Linear => {
                let w = t(r.a2)?;
                let b = if r.a3 == NONE { None } else { Some(t(r.a3)?) };
                let rows = r.a4 as usize;
                let x = self.read(plan, r.a0, rows * w.cols, i)?;
                let mut y = vec![0.0; rows * w.rows];
                linear(&self.kernels, &w, &x, b.map(|b| b.a), rows, &mut [], &mut y)
                    .ok_or_else(|| bad(i, "linear shapes"))?;
                self.write(plan, r.a1, &y, i)
            }
            Opcode::Attention => {
                let (l, heads) = (r.a4 as usize, r.a5 as usize);
                if heads == 0 || d % heads != 0 {
                    return Err(bad(i, "heads must divide d_model"));
                }
                let q = self.read(plan, r.a0, l * d, i)?;
                let kk = self.read(plan, r.a1, l * d, i)?;
                let v = self.read(plan, r.a2, l * d, i)?;
                let mut out = vec![0.0; l * d];
                let mut s = vec![0.0; l];
                k::attention(&q, &kk, &v, l, heads, &mut s, &mut out);
                self.write(plan, r.a3, &out, i)
            }
            Opcode::AttnPool => {
                let l = r.a1 as usize;
                let q = t(r.a2)?;
                let u = self.read(plan, r.a0, l * d, i)?;
                let mut out = vec![0.0; d];
                let mut s = vec![0.0; l];
                k::attention_pool(&u, q.a, &mut s, &mut out);
                self.write(plan, r.a3, &out, i)
            }
            Opcode::Gate => {
                let g = t(r.a1)?;
                let n = hp.experts as usize;
                let p = self.read(plan, r.a0, d, i)?;
                let mut tmp = vec![0.0; n];
                if hp.gating == gating::SOFTMAX {
                    k::dot_logits(&p, g.a, &mut tmp);
                } else {
                    k::laplace_logits(&p, g.a, &mut tmp);
                }
                let mut logits = if r.a3 != 0 {
                    self.read(plan, r.a2, n, i)?
                } else {
                    vec![0.0; n]
                };
                k::axpy(f32::from_bits(r.a4), &tmp, &mut logits);
                self.write(plan, r.a2, &logits, i)
            }
            Opcode::Copy => {
                let (so, dof, len) = (r.a1 as usize, r.a3 as usize, r.a4 as usize);
                let src = Self::range(plan, r.a0, so + len, i)?;
                let dst = Self::range(plan, r.a2, dof + len, i)?;
                self.arena
                    .copy_within(src.start + so..src.start + so + len, dst.start + dof);
                Ok(())
            }
            Opcode::Route | Opcode::Moe => Err(bad(i, "glue op inside a dense segment")),
        }
    }

    /// The `Route` glue: top-k of the logits within the modality's path,
    /// softmax over the kept ones; `[count, experts.., gates..]`.
    pub(crate) fn route(
        model: &Model<'_>,
        task: &TaskInfo<'_>,
        plan: &Plan,
        i: u32,
        values: &mut Values,
    ) -> Result<()> {
        let r = plan.ops[i as usize].rec;
        let hp = model.hparams();
        let (n, kk) = (hp.experts as usize, hp.top_k as usize);
        let mask = model
            .path_mask(task, r.a1 as usize)
            .ok_or_else(|| bad(i, "route for a modality outside the task"))?;
        let logits = values
            .get(&r.a0)
            .ok_or_else(|| bad(i, "route before its logits"))?;
        if logits.len() != n || kk > 64 {
            return Err(bad(i, "logits of the wrong length"));
        }
        let mut idx = [0u32; 64];
        let mut gate = [0f32; 64];
        let got = k::top_k_masked(logits, mask, kk, &mut idx[..kk], &mut gate[..kk]);
        let mut route = vec![0.0; 1 + 2 * kk];
        route[0] = got as f32;
        for j in 0..got {
            route[1 + j] = idx[j] as f32;
            route[1 + kk + j] = gate[j];
        }
        values.insert(r.a2, route);
        Ok(())
    }

    /// One expert component at token `token` of `u`, exactly as the
    /// session's `Moe` op computes it (before the gate weighting).
    pub(crate) fn expert(
        &mut self,
        model: &Model<'_>,
        e: &ExpertRec,
        u: &[f32],
        token: usize,
        op: u32,
    ) -> Result<Vec<f32>> {
        let hp = model.hparams();
        let (d, h) = (hp.d_model as usize, hp.ffn_hidden as usize);
        let blob = model
            .blob(e.blob)
            .ok_or_else(|| bad(op, "expert blob missing"))?
            .bytes;
        let taskpath_runtime::ExpertTensors {
            conv_w: cw,
            conv_b: cb,
            ln_g: lg,
            ln_b: lb,
            fc1_w: w1,
            fc1_b: b1,
            fc2_w: w2,
            fc2_b: b2,
        } = model
            .expert_tensors(e, blob)
            .ok_or_else(|| bad(op, "expert tensor outside its blob"))?;
        for v in [&cb, &lg, &lb, &b1, &b2] {
            if !v.is_f32() || v.is_low_rank() {
                return Err(bad(op, "expert vectors must be dense f32"));
            }
        }
        let mut q_need = 0;
        for w in [&cw, &w1, &w2] {
            if let Some(fmt) = WeightFormat::from_u16(w.format).filter(|_| !w.is_f32()) {
                self.kernels
                    .kernel(fmt)
                    .map_err(|u| bad(op, format!("{} needs {}", fmt.name(), u.missing_feature)))?;
                q_need = q_need
                    .max(fmt.scratch_bytes(w.cols))
                    .max(fmt.scratch_bytes(w.rank));
            }
        }
        if self.q.len() < q_need {
            self.q.resize(q_need, 0);
        }
        let r = cw.rank.max(w1.rank).max(w2.rank);
        let mut tmp = vec![0.0; r];
        let mut hbuf = vec![0.0; d];
        let mut mid = vec![0.0; h];
        let mut obuf = vec![0.0; d];
        if cw.is_f32() && !cw.is_low_rank() {
            k::conv3_at(cw.a, cb.a, u, d, token, &mut hbuf);
        } else {
            let cat = window(u, d, token);
            linear(&self.kernels, &cw, &cat, Some(cb.a), 1, &mut tmp, &mut hbuf)
                .ok_or_else(|| bad(op, "expert kernel"))?;
        }
        k::gelu(&mut hbuf);
        k::add(&u[token * d..(token + 1) * d], &mut hbuf);
        k::layernorm_inplace(&mut hbuf, lg.a, lb.a, hp.ln_eps, 1.0);
        let q = &mut self.q;
        taskpath_runtime::linear(
            &self.kernels,
            &w1,
            &hbuf,
            Some(b1.a),
            1,
            &mut tmp,
            q,
            &mut mid,
        )
        .ok_or_else(|| bad(op, "expert kernel"))?;
        k::gelu(&mut mid);
        taskpath_runtime::linear(
            &self.kernels,
            &w2,
            &mid,
            Some(b2.a),
            1,
            &mut tmp,
            q,
            &mut obuf,
        )
        .ok_or_else(|| bad(op, "expert kernel"))?;
        Ok(obuf)
    }
}

/// `[u_{t-1}; u_t; u_{t+1}]` with zero rows beyond the sequence: the input
/// of an expert graph.
pub fn window(u: &[f32], d: usize, token: usize) -> Vec<f32> {
    let l = u.len() / d.max(1);
    let mut cat = vec![0.0; 3 * d];
    for (tap, dst) in cat.chunks_exact_mut(d.max(1)).enumerate() {
        if let Some(s) = (token + tap).checked_sub(1).filter(|&s| s < l) {
            dst.copy_from_slice(&u[s * d..(s + 1) * d]);
        }
    }
    cat
}

/// `linear` without kernel scratch (f32 weights only).
fn linear(
    kernels: &Kernels,
    w: &TensorView<'_>,
    x: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    tmp: &mut [f32],
    y: &mut [f32],
) -> Option<()> {
    let mut tmp_own;
    let tmp = if w.is_low_rank() && tmp.len() < rows * w.rank {
        tmp_own = vec![0.0; rows * w.rank];
        &mut tmp_own[..]
    } else {
        tmp
    };
    let mut q = Vec::new();
    if let Some(fmt) = WeightFormat::from_u16(w.format).filter(|_| !w.is_f32()) {
        q.resize(fmt.scratch_bytes(w.cols).max(fmt.scratch_bytes(w.rank)), 0);
    }
    taskpath_runtime::linear(kernels, w, x, b, rows, tmp, &mut q, y)
}
