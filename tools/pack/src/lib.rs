//! Taskpath's ahead-of-time packer: a checkpoint in, a `.tpk` package out.
//!
//! [`pack`] lowers the model to a per-task op program, plans each task's arena
//! offline, lays the weights out as one page-aligned blob per modality trunk,
//! router head, expert component and task head (ordered so each task's path is
//! contiguous, hot experts first), and writes the tables of docs/FORMAT.md.
//! [`pack_delta`] writes only what a later stage adds, on top of a base.
//! [`calibrate`] derives task paths from routing statistics.

pub mod calibrate;
pub mod mixed;
pub mod plan;
pub mod residency;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context, Result};
use taskpath_checkpoint::{Checkpoint, Gating, Matrix};
use taskpath_cpu::quant::{quantize, WeightFormat};
use taskpath_format::records::*;
use taskpath_format::writer::PackageWriter;
use taskpath_format::Opcode;
use taskpath_runtime::Model;

pub use calibrate::{derive_paths, random_calibration, route_statistics, RouteStats};

/// What [`pack`] and [`pack_delta`] take besides the checkpoint.
#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    /// log2 of the blob alignment (>= 12; 12 = 4 KiB pages).
    pub align_log2: u32,
    /// Expert mask per `(task index, modality index)`; missing = every expert.
    pub masks: BTreeMap<(usize, usize), u64>,
    /// Routing statistics to store (and to order hot experts first).
    pub stats: Option<RouteStats>,
    /// Weight format of every expert matrix (default f32).
    pub quant: Option<WeightFormat>,
    /// Per `(expert, component)` format, overriding `quant` (mixed precision).
    pub expert_formats: BTreeMap<(usize, usize), WeightFormat>,
}

impl PackOptions {
    /// The format expert component `(j, c)` is stored in.
    pub fn expert_format(&self, j: usize, c: usize) -> WeightFormat {
        self.expert_formats
            .get(&(j, c))
            .copied()
            .or(self.quant)
            .unwrap_or(WeightFormat::F32)
    }
}

/// Blob identity before layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum BlobKey {
    Trunk(usize),
    Router(usize, usize),
    Expert(usize, usize),
    Head(usize),
}

/// A blob under construction: bytes plus its tensors (name, record).
#[derive(Default)]
struct BlobBuild {
    bytes: Vec<u8>,
    tensors: Vec<(String, TensorRec)>,
}

impl BlobBuild {
    /// Appends `rows x cols` values in `fmt`, 16-aligned; returns (offset, bytes).
    fn put(
        &mut self,
        fmt: WeightFormat,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<(u32, u32)> {
        let at = self.bytes.len().div_ceil(16) * 16;
        let n = fmt.packed_bytes(rows, cols);
        self.bytes.resize(at + n, 0);
        quantize(fmt, rows, cols, data, &mut self.bytes[at..])
            .map_err(|e| anyhow::anyhow!("quantizing to {fmt}: {e}"))?;
        Ok((at as u32, n as u32))
    }
    fn vector(&mut self, name: &str, ck: &Checkpoint) -> Result<()> {
        let t = ck.tensor(name);
        let (rows, cols) = if t.shape.len() == 2 {
            (t.shape[0], t.shape[1])
        } else {
            (1, t.shape[0])
        };
        let (offset, bytes) = self.put(WeightFormat::F32, rows, cols, &t.data)?;
        self.tensors.push((
            name.to_string(),
            TensorRec {
                format: format::F32,
                layout: layout::DENSE,
                offset,
                bytes,
                rows: rows as u32,
                cols: cols as u32,
                ..Default::default()
            },
        ));
        Ok(())
    }
    fn matrix(&mut self, name: &str, ck: &Checkpoint, fmt: WeightFormat) -> Result<()> {
        let rec = match ck.matrix(name) {
            Matrix::Full(w) => {
                let (rows, cols) = (w.shape[0], w.shape[1]);
                let (offset, bytes) = self.put(fmt, rows, cols, &w.data)?;
                TensorRec {
                    format: fmt.id(),
                    layout: layout::DENSE,
                    offset,
                    bytes,
                    rows: rows as u32,
                    cols: cols as u32,
                    ..Default::default()
                }
            }
            Matrix::LowRank(u, v) => {
                let (rows, rank, cols) = (u.shape[0], u.shape[1], v.shape[1]);
                let (offset, bytes) = self.put(fmt, rows, rank, &u.data)?;
                let (offset2, bytes2) = self.put(fmt, rank, cols, &v.data)?;
                TensorRec {
                    format: fmt.id(),
                    layout: layout::LOW_RANK,
                    offset,
                    offset2,
                    bytes,
                    bytes2,
                    rows: rows as u32,
                    cols: cols as u32,
                    rank: rank as u32,
                    ..Default::default()
                }
            }
        };
        self.tensors.push((name.to_string(), rec));
        Ok(())
    }
}

fn build_blob(ck: &Checkpoint, key: BlobKey, fmt: WeightFormat) -> Result<BlobBuild> {
    let c = &ck.config;
    let mut b = BlobBuild::default();
    match key {
        BlobKey::Trunk(m) => {
            let n = &c.modalities[m].name;
            b.matrix(&format!("enc.{n}.w"), ck, WeightFormat::F32)?;
            b.vector(&format!("enc.{n}.b"), ck)?;
            b.vector(&format!("enc.{n}.pos"), ck)?;
            for ln in ["ln0", "ln1", "ln2", "lnf"] {
                b.vector(&format!("blk.{n}.{ln}.g"), ck)?;
                b.vector(&format!("blk.{n}.{ln}.b"), ck)?;
            }
            for p in ["q", "k", "v", "o"] {
                b.matrix(&format!("blk.{n}.attn.{p}.w"), ck, WeightFormat::F32)?;
                b.vector(&format!("blk.{n}.attn.{p}.b"), ck)?;
            }
        }
        BlobKey::Router(m, h) => {
            let n = &c.modalities[m].name;
            b.vector(&format!("router.{n}.{h}.query"), ck)?;
            b.vector(&format!("router.{n}.{h}.gate"), ck)?;
        }
        BlobKey::Expert(j, comp) => {
            let p = format!("expert.{j}.{comp}");
            b.matrix(&format!("{p}.conv.w"), ck, fmt)?;
            b.vector(&format!("{p}.conv.b"), ck)?;
            b.vector(&format!("{p}.ln.g"), ck)?;
            b.vector(&format!("{p}.ln.b"), ck)?;
            b.matrix(&format!("{p}.fc1.w"), ck, fmt)?;
            b.vector(&format!("{p}.fc1.b"), ck)?;
            b.matrix(&format!("{p}.fc2.w"), ck, fmt)?;
            b.vector(&format!("{p}.fc2.b"), ck)?;
        }
        BlobKey::Head(t) => {
            let n = &c.tasks[t].name;
            b.vector(&format!("head.{n}.ln.g"), ck)?;
            b.vector(&format!("head.{n}.ln.b"), ck)?;
            b.matrix(&format!("head.{n}.w"), ck, WeightFormat::F32)?;
            b.vector(&format!("head.{n}.b"), ck)?;
        }
    }
    Ok(b)
}

/// One task's op program under construction, with its buffers.
struct Lowering {
    ops: Vec<OpRec>,
    bufs: Vec<plan::Buffer>,
}

impl Lowering {
    fn buf(&mut self, len: usize) -> u32 {
        self.bufs.push(plan::Buffer {
            len,
            first: usize::MAX,
            last: 0,
        });
        (self.bufs.len() - 1) as u32
    }
    /// Appends an op; `uses` are the buffers it reads or writes.
    fn op(&mut self, opcode: Opcode, a: [u32; 7], uses: &[u32]) {
        let at = self.ops.len();
        for &u in uses {
            let b = &mut self.bufs[u as usize];
            b.first = b.first.min(at);
            b.last = b.last.max(at);
        }
        let [a0, a1, a2, a3, a4, a5, a6] = a;
        self.ops.push(OpRec {
            opcode: opcode as u16,
            flags: 0,
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
        });
    }
}

/// Resolves tensor names to global tensor indices.
struct Names<'n> {
    ids: &'n HashMap<String, u32>,
    ranks: &'n HashMap<String, u32>,
}

impl Names<'_> {
    fn id(&self, name: &str) -> Result<u32> {
        self.ids
            .get(name)
            .copied()
            .with_context(|| format!("tensor {name} is in neither the package nor its base"))
    }
    fn rank(&self, name: &str) -> usize {
        self.ranks.get(name).copied().unwrap_or(0) as usize
    }
}

/// Lowers task `t` to ops over buffers (docs/FORMAT.md, "Op program").
fn lower_task(
    ck: &Checkpoint,
    t: usize,
    names: &Names<'_>,
    opts: &PackOptions,
) -> Result<Lowering> {
    let c = &ck.config;
    let task = &c.tasks[t];
    let (d, n, k) = (c.d_model, c.experts, c.top_k);
    let stage = task.stage;
    let mods = c.task_modalities(task);
    let mut lw = Lowering {
        ops: Vec::new(),
        bufs: Vec::new(),
    };
    let z = lw.buf(mods.len() * d);
    let none = NONE;
    let max_rank = (0..n)
        .flat_map(|j| {
            (0..=stage).flat_map(move |cc| {
                ["conv", "fc1", "fc2"].map(move |p| format!("expert.{j}.{cc}.{p}.w"))
            })
        })
        .map(|nm| names.rank(&nm))
        .max()
        .unwrap_or(0);
    // Kernel scratch of the quantized expert matrices the task may run.
    let q_bytes = (0..n)
        .flat_map(|j| (0..=stage).map(move |cc| (j, cc)))
        .flat_map(|(j, cc)| {
            let fmt = opts.expert_format(j, cc);
            [("conv", 3 * d), ("fc1", d), ("fc2", c.ffn_hidden)]
                .map(move |(p, cols)| (fmt, format!("expert.{j}.{cc}.{p}.w"), cols))
        })
        .filter(|(fmt, _, _)| *fmt != WeightFormat::F32)
        .map(|(fmt, name, cols)| {
            fmt.scratch_bytes(cols)
                .max(fmt.scratch_bytes(names.rank(&name)))
        })
        .max()
        .unwrap_or(0);
    for (slot, &m) in mods.iter().enumerate() {
        let mc = &c.modalities[m];
        let (l, nm) = (mc.tokens, &mc.name);
        let id = |s: String| names.id(&s);
        let x = lw.buf(l * d);
        let enc_rank = names.rank(&format!("enc.{nm}.w"));
        let tmp = if enc_rank > 0 {
            lw.buf(l * enc_rank)
        } else {
            none
        };
        let uses: Vec<u32> = [x, tmp].into_iter().filter(|&b| b != none).collect();
        lw.op(
            Opcode::Encode,
            [
                slot as u32,
                x,
                id(format!("enc.{nm}.w"))?,
                id(format!("enc.{nm}.b"))?,
                id(format!("enc.{nm}.pos"))?,
                tmp,
                0,
            ],
            &uses,
        );
        let sqrt_d = (d as f32).sqrt();
        lw.op(
            Opcode::LayerNorm,
            [
                x,
                x,
                id(format!("blk.{nm}.ln0.g"))?,
                id(format!("blk.{nm}.ln0.b"))?,
                sqrt_d.to_bits(),
                l as u32,
                0,
            ],
            &[x],
        );
        let t1 = lw.buf(l * d);
        lw.op(
            Opcode::LayerNorm,
            [
                x,
                t1,
                id(format!("blk.{nm}.ln1.g"))?,
                id(format!("blk.{nm}.ln1.b"))?,
                1f32.to_bits(),
                l as u32,
                0,
            ],
            &[x, t1],
        );
        let mut qkv = [0u32; 3];
        for (i, p) in ["q", "k", "v"].iter().enumerate() {
            qkv[i] = lw.buf(l * d);
            lw.op(
                Opcode::Linear,
                [
                    t1,
                    qkv[i],
                    id(format!("blk.{nm}.attn.{p}.w"))?,
                    id(format!("blk.{nm}.attn.{p}.b"))?,
                    l as u32,
                    none,
                    0,
                ],
                &[t1, qkv[i]],
            );
        }
        let att = lw.buf(l * d);
        let scr = lw.buf(l);
        lw.op(
            Opcode::Attention,
            [qkv[0], qkv[1], qkv[2], att, l as u32, c.heads as u32, scr],
            &[qkv[0], qkv[1], qkv[2], att, scr],
        );
        let a = lw.buf(l * d);
        lw.op(
            Opcode::Linear,
            [
                att,
                a,
                id(format!("blk.{nm}.attn.o.w"))?,
                id(format!("blk.{nm}.attn.o.b"))?,
                l as u32,
                none,
                0,
            ],
            &[att, a],
        );
        let u = lw.buf(l * d);
        lw.op(
            Opcode::LayerNorm,
            [
                a,
                u,
                id(format!("blk.{nm}.ln2.g"))?,
                id(format!("blk.{nm}.ln2.b"))?,
                1f32.to_bits(),
                l as u32,
                0,
            ],
            &[a, u],
        );
        let p = lw.buf(d);
        let logits = lw.buf(n);
        let gtmp = lw.buf(n);
        let pscr = lw.buf(l);
        let scale = 1.0 / (stage as f32 + 1.0);
        for h in 0..=stage {
            lw.op(
                Opcode::AttnPool,
                [
                    u,
                    l as u32,
                    id(format!("router.{nm}.{h}.query"))?,
                    p,
                    pscr,
                    0,
                    0,
                ],
                &[u, p, pscr],
            );
            lw.op(
                Opcode::Gate,
                [
                    p,
                    id(format!("router.{nm}.{h}.gate"))?,
                    logits,
                    u32::from(h > 0),
                    scale.to_bits(),
                    gtmp,
                    0,
                ],
                &[p, logits, gtmp],
            );
        }
        let route = lw.buf(1 + 2 * k);
        lw.op(
            Opcode::Route,
            [logits, m as u32, route, 0, 0, 0, 0],
            &[logits, route],
        );
        let y = lw.buf(d);
        let mscr = lw.buf(taskpath_runtime::moe_scratch(
            d,
            c.ffn_hidden,
            max_rank,
            q_bytes,
        ));
        lw.op(
            Opcode::Moe,
            [u, l as u32, route, stage as u32, (l - 1) as u32, y, mscr],
            &[u, route, y, mscr],
        );
        lw.op(
            Opcode::LayerNorm,
            [
                y,
                y,
                id(format!("blk.{nm}.lnf.g"))?,
                id(format!("blk.{nm}.lnf.b"))?,
                1f32.to_bits(),
                1,
                0,
            ],
            &[y],
        );
        lw.op(
            Opcode::Copy,
            [y, 0, z, (slot * d) as u32, d as u32, 0, 0],
            &[y, z],
        );
    }
    let tn = &task.name;
    lw.op(
        Opcode::LayerNorm,
        [
            z,
            z,
            names.id(&format!("head.{tn}.ln.g"))?,
            names.id(&format!("head.{tn}.ln.b"))?,
            1f32.to_bits(),
            1,
            0,
        ],
        &[z],
    );
    let out = lw.buf(task.outputs);
    lw.op(
        Opcode::Linear,
        [
            z,
            out,
            names.id(&format!("head.{tn}.w"))?,
            names.id(&format!("head.{tn}.b"))?,
            1,
            none,
            0,
        ],
        &[z, out],
    );
    Ok(lw)
}

fn hparams(ck: &Checkpoint) -> HParams {
    let c = &ck.config;
    HParams {
        d_model: c.d_model as u32,
        heads: c.heads as u32,
        experts: c.experts as u32,
        top_k: c.top_k as u32,
        ffn_hidden: c.ffn_hidden as u32,
        rank: c.rank as u32,
        stages: c.stages as u32,
        gating: match c.gating {
            Gating::Laplace => gating::LAPLACE,
            Gating::Softmax => gating::SOFTMAX,
        },
        ln_eps: c.ln_eps,
        ..Default::default()
    }
}

/// Packs a whole checkpoint into a base package.
pub fn pack(ck: &Checkpoint, opts: &PackOptions) -> Result<Vec<u8>> {
    write_package(ck, None, opts)
}

/// Packs what `ck` (a later-stage checkpoint) adds to `base`: new expert
/// components, router heads, task heads and tasks. Refuses a base whose
/// architecture differs or whose weights differ from `ck`'s frozen ones.
pub fn pack_delta(ck: &Checkpoint, base: &Model<'_>, opts: &PackOptions) -> Result<Vec<u8>> {
    write_package(ck, Some(base), opts)
}

fn write_package(ck: &Checkpoint, base: Option<&Model<'_>>, opts: &PackOptions) -> Result<Vec<u8>> {
    ck.validate()?;
    let c = &ck.config;
    let mut hp = hparams(ck);

    // What is already in the base chain: tensors by name, tasks by name.
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut ranks: HashMap<String, u32> = HashMap::new();
    let mut base_tasks: Vec<String> = Vec::new();
    let mut base_stages = 0usize;
    let mut base_mods = 0usize;
    if let Some(base) = base {
        let bh = base.hparams();
        let same = bh.d_model == hp.d_model
            && bh.heads == hp.heads
            && bh.experts == hp.experts
            && bh.top_k == hp.top_k
            && bh.ffn_hidden == hp.ffn_hidden
            && bh.gating == hp.gating
            && bh.ln_eps.to_bits() == hp.ln_eps.to_bits();
        ensure!(
            same,
            "checkpoint architecture differs from the base package's"
        );
        ensure!(
            base.modality_count() <= c.modalities.len(),
            "checkpoint has fewer modalities than the base package"
        );
        for m in 0..base.modality_count() {
            let (name, l, f) = base.modality(m).context("base modality")?;
            let mc = &c.modalities[m];
            ensure!(
                name == mc.name && l == mc.tokens && f == mc.features,
                "modality {} ({}x{}) differs from the base package's {name} ({l}x{f}): new modalities must come after the base's",
                mc.name, mc.tokens, mc.features
            );
        }
        base_mods = base.modality_count();
        base_stages = bh.stages as usize;
        ensure!(
            c.stages > base_stages,
            "checkpoint has {} stages, base already has {base_stages}: nothing to add",
            c.stages
        );
        for p in base.parts() {
            for (i, t) in p.tensors().iter().enumerate() {
                let name = p.str(t.name_off, t.name_len).to_string();
                let global = p.hparams().tensor_base + i as u32;
                // Frozen weights must be exactly what the base holds.
                let (a, b) = p.tensor_f32(&t)?;
                let same = match ck.matrix(&name) {
                    _ if ck.tensors.contains_key(&name) && t.layout == layout::DENSE => {
                        ck.tensor(&name).data == a
                    }
                    Matrix::LowRank(u, v) if t.layout == layout::LOW_RANK => {
                        u.data == a && v.data == b
                    }
                    _ => false,
                };
                ensure!(same, "base package tensor {name} differs from the checkpoint: this delta was not trained on that base");
                ranks.insert(name.clone(), t.rank);
                ids.insert(name, global);
            }
        }
        for i in 0..base.task_count() {
            let t = base.task(i)?;
            let cfg =
                c.tasks.iter().find(|x| x.name == t.name).with_context(|| {
                    format!("base task {} is missing from the checkpoint", t.name)
                })?;
            ensure!(
                cfg.stage == t.stage,
                "task {} has stage {} in the base and {} in the checkpoint",
                t.name,
                t.stage,
                cfg.stage
            );
            base_tasks.push(t.name.to_string());
        }
        hp.tensor_base = ids.len() as u32;
        hp.blob_base = base.blob_count() as u32;
        hp.task_base = base.task_count() as u32;
        hp.expert_base = base.parts().map(|p| p.experts().len()).sum::<usize>() as u32;
        hp.router_base = base.parts().map(|p| p.routers().len()).sum::<usize>() as u32;
    }
    let new_tasks: Vec<usize> = (0..c.tasks.len())
        .filter(|&t| !base_tasks.contains(&c.tasks[t].name))
        .collect();
    for &t in &new_tasks {
        ensure!(
            c.tasks[t].stage >= base_stages,
            "task {} has stage {} but the base already covers stages 0..{base_stages}",
            c.tasks[t].name,
            c.tasks[t].stage
        );
    }
    ensure!(
        !new_tasks.is_empty() || base.is_none(),
        "the checkpoint adds no task to the base"
    );
    let task_global = |t: usize| -> usize {
        // Base tasks keep their index; new tasks follow in checkpoint order.
        match base_tasks.iter().position(|n| n == &c.tasks[t].name) {
            Some(i) => i,
            None => base_tasks.len() + new_tasks.iter().position(|&x| x == t).unwrap_or(0),
        }
    };

    // Blobs in path order: each new task's trunks, router heads, hot experts, head.
    let mut order: Vec<BlobKey> = Vec::new();
    let push = |k: BlobKey, order: &mut Vec<BlobKey>| {
        let is_new = match k {
            BlobKey::Trunk(m) => m >= base_mods,
            BlobKey::Router(m, h) => m >= base_mods || h >= base_stages,
            BlobKey::Expert(_, h) => h >= base_stages,
            BlobKey::Head(t) => new_tasks.contains(&t),
        };
        if is_new && !order.contains(&k) {
            order.push(k);
        }
    };
    let mut tasks_by_stage: Vec<usize> = (0..c.tasks.len()).collect();
    tasks_by_stage.sort_by_key(|&t| c.tasks[t].stage);
    for &t in &tasks_by_stage {
        let task = &c.tasks[t];
        let mods = c.task_modalities(task);
        for &m in &mods {
            push(BlobKey::Trunk(m), &mut order);
            for h in 0..=task.stage {
                push(BlobKey::Router(m, h), &mut order);
            }
        }
        let mut experts: Vec<(f64, usize)> = (0..c.experts)
            .filter(|&j| {
                mods.iter().any(|&m| {
                    opts.masks
                        .get(&(t, m))
                        .is_none_or(|mask| mask & (1 << j) != 0)
                })
            })
            .map(|j| (opts.stats.as_ref().map_or(0.0, |s| s.expert_mass(t, j)), j))
            .collect();
        experts.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, j) in experts {
            for comp in 0..=task.stage {
                push(BlobKey::Expert(j, comp), &mut order);
            }
        }
        push(BlobKey::Head(t), &mut order);
    }
    for m in 0..c.modalities.len() {
        push(BlobKey::Trunk(m), &mut order);
        for h in 0..c.stages {
            push(BlobKey::Router(m, h), &mut order);
        }
    }
    for j in 0..c.experts {
        for comp in 0..c.stages {
            push(BlobKey::Expert(j, comp), &mut order);
        }
    }

    let mut w = PackageWriter::default();
    let progress = indicatif::ProgressBar::new(order.len() as u64).with_message("blobs");
    let mut blob_of: HashMap<BlobKey, u32> = HashMap::new();
    let mut tensor_recs: Vec<(String, TensorRec)> = Vec::new();
    for (i, &key) in order.iter().enumerate() {
        let global_blob = hp.blob_base + i as u32;
        let fmt = match key {
            BlobKey::Expert(j, comp) => opts.expert_format(j, comp),
            _ => WeightFormat::F32,
        };
        let b = build_blob(ck, key, fmt)?;
        for (name, mut rec) in b.tensors {
            rec.blob = global_blob;
            ranks.insert(name.clone(), rec.rank);
            ids.insert(name.clone(), hp.tensor_base + tensor_recs.len() as u32);
            tensor_recs.push((name, rec));
        }
        let none = NONE16;
        let (kind, modality, expert, component, task) = match key {
            BlobKey::Trunk(m) => (blob_kind::TRUNK, m as u16, none, none, none),
            BlobKey::Router(m, h) => (blob_kind::ROUTER, m as u16, none, h as u16, none),
            BlobKey::Expert(j, comp) => (blob_kind::EXPERT, none, j as u16, comp as u16, none),
            BlobKey::Head(t) => (blob_kind::HEAD, none, none, none, task_global(t) as u16),
        };
        let rec = BlobRec {
            kind,
            format: fmt.id() as u8,
            modality,
            expert,
            component,
            task,
            ..Default::default()
        };
        w.blobs.push((rec, b.bytes));
        blob_of.insert(key, global_blob);
        progress.inc(1);
    }
    progress.finish_and_clear();
    for (name, mut rec) in tensor_recs {
        (rec.name_off, rec.name_len) = w.string(&name);
        w.tensors.push(rec);
    }
    for mc in &c.modalities {
        let (name_off, name_len) = w.string(&mc.name);
        w.modalities.push(ModalityRec {
            name_off,
            name_len,
            tokens: mc.tokens as u32,
            features: mc.features as u32,
        });
    }
    let names = Names {
        ids: &ids,
        ranks: &ranks,
    };
    let id = |s: String| names.id(&s);
    for key in &order {
        match *key {
            BlobKey::Expert(j, comp) => {
                let p = format!("expert.{j}.{comp}");
                w.experts.push(ExpertRec {
                    expert: j as u16,
                    component: comp as u16,
                    blob: blob_of[key],
                    conv_w: id(format!("{p}.conv.w"))?,
                    conv_b: id(format!("{p}.conv.b"))?,
                    ln_g: id(format!("{p}.ln.g"))?,
                    ln_b: id(format!("{p}.ln.b"))?,
                    fc1_w: id(format!("{p}.fc1.w"))?,
                    fc1_b: id(format!("{p}.fc1.b"))?,
                    fc2_w: id(format!("{p}.fc2.w"))?,
                    fc2_b: id(format!("{p}.fc2.b"))?,
                });
            }
            BlobKey::Router(m, h) => {
                let nm = &c.modalities[m].name;
                w.routers.push(RouterRec {
                    modality: m as u16,
                    head: h as u16,
                    blob: blob_of[key],
                    query: id(format!("router.{nm}.{h}.query"))?,
                    gate: id(format!("router.{nm}.{h}.gate"))?,
                });
            }
            _ => {}
        }
    }
    for &t in &new_tasks {
        let task = &c.tasks[t];
        let lw = lower_task(ck, t, &names, opts)?;
        let (offsets, total) = plan::plan(&lw.bufs);
        let (name_off, name_len) = w.string(&task.name);
        let mods = c.task_modalities(task);
        let rec = TaskRec {
            name_off,
            name_len,
            stage: task.stage as u32,
            outputs: task.outputs as u32,
            modality_mask: mods.iter().fold(0, |a, &m| a | (1 << m)),
            head_blob: blob_of[&BlobKey::Head(t)],
            program_start: w.program.len() as u32,
            program_len: lw.ops.len() as u32,
            slot_start: w.slots.len() as u32,
            slot_count: lw.bufs.len() as u32,
            path_start: w.paths.len() as u32,
            path_len: mods.len() as u32,
            output_slot: (lw.bufs.len() - 1) as u32,
            reserved: 0,
            arena_bytes: (total * 4) as u64,
        };
        for (b, off) in lw.bufs.iter().zip(&offsets) {
            if b.first == usize::MAX {
                bail!("internal: unused buffer in task {}", task.name);
            }
            w.slots.push(SlotRec {
                offset: *off as u32,
                len: b.len as u32,
            });
        }
        w.program.extend(lw.ops);
        let all = if c.experts == 64 {
            u64::MAX
        } else {
            (1u64 << c.experts) - 1
        };
        for &m in &mods {
            let mask = opts.masks.get(&(t, m)).copied().unwrap_or(all);
            ensure!(
                mask != 0 && mask & !all == 0,
                "path mask {mask:#x} of task {} is empty or names experts beyond {}",
                task.name,
                c.experts
            );
            w.paths.push(PathRec {
                task: task_global(t) as u32,
                modality: m as u32,
                mask,
            });
        }
        if let Some(stats) = &opts.stats {
            for &m in &mods {
                for j in 0..c.experts {
                    let (picks, mass, samples) = stats.get(t, m, j);
                    w.stats.push(StatRec {
                        task: task_global(t) as u32,
                        modality: m as u32,
                        expert: j as u32,
                        picks,
                        mass,
                        samples,
                    });
                }
            }
        }
        w.tasks.push(rec);
    }
    w.hparams = hp;
    let base_id = base.map_or(0, |b| b.parts().last().map_or(0, |p| p.id()));
    let bytes = w.finish(opts.align_log2.max(12), base_id);
    // Never hand out a package the runtime would refuse.
    let check = taskpath_runtime::AlignedArena::from_bytes(&bytes);
    match base {
        None => {
            Model::from_bytes(check.as_slice())
                .context("internal: packed model does not validate")?;
        }
        Some(b) => {
            b.with_delta(check.as_slice())
                .context("internal: delta pack does not validate")?;
        }
    }
    Ok(bytes)
}
