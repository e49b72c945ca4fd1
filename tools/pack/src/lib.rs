//! Taskpath's ahead-of-time packer: a checkpoint in, a `.tpk` package out.
//!
//! [`pack`] lowers the model to a per-task op program, plans each task's arena
//! offline, lays the weights out as one page-aligned blob per modality trunk,
//! router head, expert component and task head (ordered so each task's path is
//! contiguous, hot experts first), and writes the tables of docs/FORMAT.md.
//! [`pack_delta`] writes only what a later stage adds, on top of a base.
//! [`calibrate`] derives task paths from routing statistics; [`domains`]
//! does it for the text domains of a language model and scores perplexity.

pub mod calibrate;
pub mod domains;
pub mod llm;
pub mod mixed;
pub mod plan;
pub mod residency;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context, Result};
use taskpath_checkpoint::{Checkpoint, Gating, Matrix};
use taskpath_format::records::*;
use taskpath_format::weight::quantize;
use taskpath_format::writer::PackageWriter;
use taskpath_format::{
    ExpertKind, ExpertMask, GateFn, MetaValue, Op, SlotId, TensorId, WeightFormat,
};
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
    /// Lower every op as the model is written, without the exact rewrites
    /// (docs/FORMAT.md, "Exact rewrites"): the reference the rewrite tests
    /// compare against.
    pub literal: bool,
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
        name: &str,
        fmt: WeightFormat,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<(u32, u32)> {
        let at = self.bytes.len().div_ceil(16) * 16;
        let n = fmt.packed_bytes(rows, cols);
        self.bytes.resize(at + n, 0);
        quantize(fmt, rows, cols, data, &mut self.bytes[at..])
            .map_err(|e| anyhow::anyhow!("tensor {name}: quantizing to {fmt}: {e}"))?;
        Ok((at as u32, n as u32))
    }
    fn vector(&mut self, name: &str, ck: &Checkpoint) -> Result<()> {
        let t = ck.tensor(name);
        let (rows, cols) = if t.shape.len() == 2 {
            (t.shape[0], t.shape[1])
        } else {
            (1, t.shape[0])
        };
        let (offset, bytes) = self.put(name, WeightFormat::F32, rows, cols, &t.data)?;
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
                let (offset, bytes) = self.put(name, fmt, rows, cols, &w.data)?;
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
                let (offset, bytes) = self.put(name, fmt, rows, rank, &u.data)?;
                let (offset2, bytes2) = self.put(name, fmt, rank, cols, &v.data)?;
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
    ops: Vec<Op>,
    bufs: Vec<plan::Buffer>,
}

impl Lowering {
    fn buf(&mut self, len: usize) -> SlotId {
        self.bufs.push(plan::Buffer {
            len,
            first: usize::MAX,
            last: 0,
        });
        SlotId((self.bufs.len() - 1) as u32)
    }
    /// Appends an op; the slots it uses (`Op::for_each_slot`) become live.
    fn op(&mut self, op: Op) {
        let at = self.ops.len();
        let bufs = &mut self.bufs;
        op.for_each_slot(|s, _| {
            let b = &mut bufs[s.0 as usize];
            b.first = b.first.min(at);
            b.last = b.last.max(at);
        });
        self.ops.push(op);
    }
    /// Tensor references of the program, in op order (the plan's table size).
    fn tensor_refs(&self) -> usize {
        let mut n = 0;
        for op in &self.ops {
            op.for_each_tensor(|_| n += 1);
        }
        n
    }
}

/// Resolves tensor names to global tensor indices.
struct Names<'n> {
    ids: &'n HashMap<String, u32>,
    ranks: &'n HashMap<String, u32>,
}

impl Names<'_> {
    fn id(&self, name: &str) -> Result<TensorId> {
        self.ids
            .get(name)
            .copied()
            .map(TensorId)
            .with_context(|| format!("tensor {name} is in neither the package nor its base"))
    }
    fn rank(&self, name: &str) -> usize {
        self.ranks.get(name).copied().unwrap_or(0) as usize
    }
}

/// The one expert group of a FLAME model: the pool shared by all modalities.
const GROUP: u32 = 0;

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
    let eps = c.ln_eps;
    let mods = c.task_modalities(task);
    let mut lw = Lowering {
        ops: Vec::new(),
        bufs: Vec::new(),
    };
    let z = lw.buf(mods.len() * d);
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
    let function = match c.gating {
        Gating::Laplace => GateFn::Laplace,
        Gating::Softmax => GateFn::Dot,
    };
    for (slot, &m) in mods.iter().enumerate() {
        let mc = &c.modalities[m];
        let (l, nm) = (mc.tokens, &mc.name);
        let id = |s: String| names.id(&s);
        let x = lw.buf(l * d);
        let enc_rank = names.rank(&format!("enc.{nm}.w"));
        let tmp = (enc_rank > 0).then(|| lw.buf(l * enc_rank));
        lw.op(Op::Encode {
            input: slot as u32,
            out: x,
            w: id(format!("enc.{nm}.w"))?,
            b: id(format!("enc.{nm}.b"))?,
            pos: id(format!("enc.{nm}.pos"))?,
            tmp,
        });
        let norm = |x, y, ln: &str, scale: f32, rows: usize| -> Result<Op> {
            Ok(Op::LayerNorm {
                x,
                y,
                g: id(format!("blk.{nm}.{ln}.g"))?,
                b: id(format!("blk.{nm}.{ln}.b"))?,
                scale,
                rows: rows as u32,
                eps,
            })
        };
        lw.op(norm(x, x, "ln0", (d as f32).sqrt(), l)?);
        let t1 = lw.buf(l * d);
        lw.op(norm(x, t1, "ln1", 1.0, l)?);
        let single = l == 1 && !opts.literal;
        let proj = |lw: &mut Lowering, p: &str| -> Result<SlotId> {
            let y = lw.buf(l * d);
            lw.op(Op::Linear {
                x: t1,
                y,
                w: id(format!("blk.{nm}.attn.{p}.w"))?,
                b: Some(id(format!("blk.{nm}.attn.{p}.b"))?),
                rows: l as u32,
                tmp: None,
            });
            Ok(y)
        };
        // One token: the softmax over a single key is exactly 1, so the
        // attention core returns v unchanged and q, k are dead.
        let att = if single {
            proj(&mut lw, "v")?
        } else {
            let q = proj(&mut lw, "q")?;
            let k = proj(&mut lw, "k")?;
            let v = proj(&mut lw, "v")?;
            let att = lw.buf(l * d);
            let scr = lw.buf(l);
            lw.op(Op::Attention {
                q,
                k,
                v,
                out: att,
                tokens: l as u32,
                width: d as u32,
                heads: c.heads as u32,
                scratch: scr,
            });
            att
        };
        let a = lw.buf(l * d);
        lw.op(Op::Linear {
            x: att,
            y: a,
            w: id(format!("blk.{nm}.attn.o.w"))?,
            b: Some(id(format!("blk.{nm}.attn.o.b"))?),
            rows: l as u32,
            tmp: None,
        });
        let u = lw.buf(l * d);
        lw.op(norm(a, u, "ln2", 1.0, l)?);
        // One token: attention pooling weighs it by exactly 1, so every
        // router head reads u itself.
        let (p, pscr) = if single {
            (u, None)
        } else {
            (lw.buf(d), Some(lw.buf(l)))
        };
        let logits = lw.buf(n);
        let gtmp = lw.buf(n);
        let scale = 1.0 / (stage as f32 + 1.0);
        for h in 0..=stage {
            if let Some(scratch) = pscr {
                lw.op(Op::AttnPool {
                    u,
                    tokens: l as u32,
                    query: id(format!("router.{nm}.{h}.query"))?,
                    out: p,
                    scratch,
                });
            }
            lw.op(Op::Gate {
                p,
                gate: id(format!("router.{nm}.{h}.gate"))?,
                logits,
                accumulate: h > 0,
                scale,
                tmp: gtmp,
                function,
            });
        }
        let route = lw.buf(1 + 2 * k);
        lw.op(Op::Route {
            logits,
            group: GROUP,
            router: m as u32,
            route,
        });
        let y = lw.buf(d);
        let mscr = lw.buf(taskpath_runtime::moe_scratch(
            d,
            c.ffn_hidden,
            max_rank,
            q_bytes,
        ));
        lw.op(Op::Moe {
            u,
            tokens: l as u32,
            width: d as u32,
            route,
            group: GROUP,
            router: m as u32,
            components: stage as u32 + 1,
            token: (l - 1) as u32,
            out: y,
            scratch: mscr,
            eps,
        });
        lw.op(norm(y, y, "lnf", 1.0, 1)?);
        lw.op(Op::Copy {
            src: y,
            src_offset: 0,
            dst: z,
            dst_offset: (slot * d) as u32,
            len: d as u32,
        });
    }
    let tn = &task.name;
    lw.op(Op::LayerNorm {
        x: z,
        y: z,
        g: names.id(&format!("head.{tn}.ln.g"))?,
        b: names.id(&format!("head.{tn}.ln.b"))?,
        scale: 1.0,
        rows: 1,
        eps,
    });
    let out = lw.buf(task.outputs);
    lw.op(Op::Linear {
        x: z,
        y: out,
        w: names.id(&format!("head.{tn}.w"))?,
        b: Some(names.id(&format!("head.{tn}.b"))?),
        rows: 1,
        tmp: None,
    });
    Ok(lw)
}

/// The architecture tag of the FLAME family.
pub const FLAME_ARCH: &str = "flame";

/// The FLAME model's hyper-parameters as package metadata (`inspect` prints
/// them; the runtime needs none of them: its ops carry what they use).
fn flame_metadata(ck: &Checkpoint) -> Vec<(&'static str, MetaValue<'static>)> {
    let c = &ck.config;
    let u = |v: usize| MetaValue::U32(v as u32);
    vec![
        ("flame.d_model", u(c.d_model)),
        ("flame.heads", u(c.heads)),
        ("flame.experts", u(c.experts)),
        ("flame.top_k", u(c.top_k)),
        ("flame.ffn_hidden", u(c.ffn_hidden)),
        ("flame.rank", u(c.rank)),
        (
            "flame.gating",
            MetaValue::Str(match c.gating {
                Gating::Laplace => "laplace",
                Gating::Softmax => "softmax",
            }),
        ),
        ("flame.ln_eps", MetaValue::F32(c.ln_eps)),
    ]
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
    // The format's op fields and records are 32-bit, and it caps every
    // width; refuse here, by name, rather than narrow silently.
    let max = taskpath_format::MAX_DIM as usize;
    let dims = [
        ("d_model", c.d_model),
        ("heads", c.heads),
        ("ffn_hidden", c.ffn_hidden),
        ("rank", c.rank),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .chain(c.modalities.iter().flat_map(|m| {
        [
            (format!("modality {} tokens", m.name), m.tokens),
            (format!("modality {} features", m.name), m.features),
        ]
    }));
    for (name, v) in dims {
        ensure!(
            v <= max,
            "{name} is {v}, above the package format's limit MAX_DIM = {max}"
        );
    }
    let mut w = PackageWriter::default();
    w.arch(FLAME_ARCH);
    let meta = flame_metadata(ck);
    for (k, v) in &meta {
        w.meta(k, *v);
    }
    let mut mr = ModelRec::default();

    // What is already in the base chain: tensors by name, tasks by name.
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut ranks: HashMap<String, u32> = HashMap::new();
    let mut base_tasks: Vec<String> = Vec::new();
    let mut base_stages = 0usize;
    let mut base_mods = 0usize;
    if let Some(base) = base {
        let same = base.arch() == FLAME_ARCH
            && meta.iter().all(|(k, v)| match (base.meta(k), v) {
                (Some(MetaValue::F32(a)), MetaValue::F32(b)) => a.to_bits() == b.to_bits(),
                (got, want) => got == Some(*want),
            });
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
        base_stages = base.components(GROUP);
        ensure!(
            c.stages > base_stages,
            "checkpoint has {} stages, base already has {base_stages}: nothing to add",
            c.stages
        );
        for p in base.parts() {
            for (i, t) in p.tensors().iter().enumerate() {
                let name = p.str(t.name_off, t.name_len).to_string();
                let global = p.model().tensor_base + i as u32;
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
        mr.tensor_base = ids.len() as u32;
        mr.blob_base = base.blob_count() as u32;
        mr.task_base = base.task_count() as u32;
        mr.expert_base = base.parts().map(|p| p.experts().len()).sum::<usize>() as u32;
        mr.group_base = base.group_count() as u32;
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

    let progress = indicatif::ProgressBar::new(order.len() as u64).with_message("blobs");
    let mut blob_of: HashMap<BlobKey, u32> = HashMap::new();
    let mut tensor_recs: Vec<(String, TensorRec)> = Vec::new();
    for (i, &key) in order.iter().enumerate() {
        let global_blob = mr.blob_base + i as u32;
        let fmt = match key {
            BlobKey::Expert(j, comp) => opts.expert_format(j, comp),
            _ => WeightFormat::F32,
        };
        let b = build_blob(ck, key, fmt)?;
        for (name, mut rec) in b.tensors {
            rec.blob = global_blob;
            ranks.insert(name.clone(), rec.rank);
            ids.insert(name.clone(), mr.tensor_base + tensor_recs.len() as u32);
            tensor_recs.push((name, rec));
        }
        let none = NONE16;
        let (kind, group, expert, component, owner) = match key {
            BlobKey::Trunk(m) => (blob_kind::SHARED, none, none, none, m as u16),
            BlobKey::Router(m, h) => (blob_kind::ROUTER, none, none, h as u16, m as u16),
            BlobKey::Expert(j, comp) => {
                (blob_kind::EXPERT, GROUP as u16, j as u16, comp as u16, none)
            }
            BlobKey::Head(t) => (blob_kind::HEAD, none, none, none, task_global(t) as u16),
        };
        let rec = BlobRec {
            kind,
            format: fmt.id() as u8,
            group,
            expert,
            component,
            owner,
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
            kind: input_kind::FEATURES,
            reserved: 0,
        });
    }
    let names = Names {
        ids: &ids,
        ranks: &ranks,
    };
    if base.is_none() {
        let (name_off, name_len) = w.string("experts");
        w.groups.push(GroupRec {
            name_off,
            name_len,
            experts: c.experts as u32,
            top_k: c.top_k as u32,
            kind: ExpertKind::ConvFfn as u32,
            ..Default::default()
        });
    }
    // The (group, component) index: one block per new component, experts in order.
    for comp in base_stages..c.stages {
        w.components.push(ComponentRec {
            group: GROUP,
            component: comp as u32,
            first_expert: mr.expert_base + w.experts.len() as u32,
            reserved: 0,
        });
        for j in 0..c.experts {
            let p = format!("expert.{j}.{comp}");
            let start = names.id(&format!("{p}.conv.w"))?.0;
            // ExpertKind::ConvFfn's tensor order, as build_blob wrote them.
            for (k, t) in [
                "conv.w", "conv.b", "ln.g", "ln.b", "fc1.w", "fc1.b", "fc2.w", "fc2.b",
            ]
            .iter()
            .enumerate()
            {
                ensure!(
                    names.id(&format!("{p}.{t}"))?.0 == start + k as u32,
                    "internal: the tensors of expert {j} component {comp} are not consecutive"
                );
            }
            w.experts.push(ExpertRec {
                group: GROUP,
                expert: j as u16,
                component: comp as u16,
                blob: blob_of[&BlobKey::Expert(j, comp)],
                tensor_start: start,
                tensor_count: ExpertKind::ConvFfn.tensors(),
                reserved: 0,
            });
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
            program_start: w.program.len() as u32,
            program_len: lw.ops.len() as u32,
            slot_start: w.slots.len() as u32,
            slot_count: lw.bufs.len() as u32,
            path_start: w.paths.len() as u32,
            path_len: mods.len() as u32,
            output_slot: (lw.bufs.len() - 1) as u32,
            plan_tensors: lw.tensor_refs() as u32,
            reserved: 0,
            slot_bytes: (total * 4) as u64,
        };
        for (b, off) in lw.bufs.iter().zip(&offsets) {
            if b.first == usize::MAX {
                bail!("internal: unused buffer in task {}", task.name);
            }
            let word = |v: usize| {
                u32::try_from(v).with_context(|| {
                    format!(
                        "task {}: a slot at {off} of {} values passes the format's 32-bit slot offsets",
                        task.name, b.len
                    )
                })
            };
            w.slots.push(SlotRec {
                offset: word(*off)?,
                len: word(b.len)?,
                kind: slot_kind::SCRATCH,
            });
        }
        w.program.extend(lw.ops.iter().map(Op::encode));
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
            let mut rec = PathRec {
                task: task_global(t) as u32,
                group: GROUP,
                router: m as u32,
                ..Default::default()
            };
            rec.set_mask(ExpertMask([mask, 0, 0, 0]));
            w.paths.push(rec);
        }
        if let Some(stats) = &opts.stats {
            for &m in &mods {
                for j in 0..c.experts {
                    let (picks, mass, samples) = stats.get(t, m, j);
                    w.stats.push(StatRec {
                        task: task_global(t) as u32,
                        group: GROUP,
                        router: m as u32,
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
    w.model.tensor_base = mr.tensor_base;
    w.model.blob_base = mr.blob_base;
    w.model.task_base = mr.task_base;
    w.model.expert_base = mr.expert_base;
    w.model.group_base = mr.group_base;
    let base_id = base.map_or(0, |b| b.parts().last().map_or(0, |p| p.id()));
    let bytes = w.finish(opts.align_log2.max(12), base_id);
    // Never hand out a package the runtime would refuse.
    let check = taskpath_runtime::AlignedArena::from_bytes(&bytes);
    match base {
        None => {
            let m = Model::from_bytes(check.as_slice())
                .context("internal: packed model does not validate")?;
            self_check(&m)?;
        }
        Some(b) => {
            let m = b
                .with_delta(check.as_slice())
                .context("internal: delta pack does not validate")?;
            self_check(&m)?;
        }
    }
    Ok(bytes)
}

/// What `taskpath verify` checks, run by the packer on its own output before
/// it is written: every blob checksum, every stored number finite, every
/// task's program (plan, dataflow, what the task needs).
pub(crate) fn self_check(m: &Model<'_>) -> Result<()> {
    m.verify()
        .context("internal: a packed blob does not verify")?;
    taskpath_runtime::plan::check_all(m).context("internal: a packed task's program does not check")
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use taskpath_checkpoint::{random_checkpoint, RandomSpec};

    /// A modality longer than the format's MAX_DIM tokens is refused by
    /// name, before anything is narrowed to 32 bits.
    #[test]
    fn widths_above_the_format_limit_are_refused_by_name() {
        let mut spec = RandomSpec::small(4, 1, 2, 1, 1);
        let over = taskpath_format::MAX_DIM as usize + 1;
        spec.modalities[1].1 = over;
        let ck = random_checkpoint(&spec, 1);
        let err = format!("{:#}", pack(&ck, &PackOptions::default()).unwrap_err());
        assert!(
            err.contains("modality b tokens") && err.contains("MAX_DIM"),
            "{err}"
        );
        assert!(err.contains(&over.to_string()), "{err}");
    }
}
