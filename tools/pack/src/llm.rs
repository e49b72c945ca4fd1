//! Decoder MoE language models: a checkpoint users already have (Hugging
//! Face directory or GGUF file, read by `taskpath-import`) lowered to a
//! token-stream task.
//!
//! Layout: one expert group per MoE layer; one page-aligned blob per (layer,
//! expert) holding its gate, up and down matrices (`ExpertKind::SwiGlu`);
//! shared blobs for the embedding, each layer's attention and norms, its
//! router, its shared expert or dense FFN, and the final norm and head. The
//! KV caches are state slots at the head of the slots region; everything
//! else is scratch planned by live range. The architecture's
//! hyper-parameters are metadata keys (`llm.*`, printed by `inspect`).
//!
//! The task's program (docs/LLM.md has the maths), for `n <= chunk` tokens
//! per run at positions `pos..pos + n`:
//!
//! ```text
//! h = Embed(ids) [* embedding multiplier]
//! per layer l:
//!   x = RmsNorm(h); q, k, v = Linear(x) [+ bias]; [q, k = RmsNorm(q, k)]
//!   q, k = Rope(q, k); a = KvAttention(q, k, v; caches l); h += r * Linear_o(a)
//!   x = RmsNorm(h)
//!   dense layer:  h += r * down(silu(gate x) * up x)
//!   MoE layer:    logits = Linear_router(x); route = RouteTokens(logits)
//!                 h += r * MoeTokens(x, route)
//!                 [h += r * sigmoid(g . x) * shared(x)]
//! logits = Linear_head(LastRow(RmsNorm(h)) [/ logit scale])
//! ```

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use taskpath_format::records::*;
use taskpath_format::weight::{dequantize, first_non_finite, quantize, repack_gguf};
use taskpath_format::writer::PackageWriter;
use taskpath_format::{
    ExpertKind, ExpertMask, MetaValue, Op, RopeStyle, RouteMode, SlotId, TensorId, WeightFormat,
};
use taskpath_import::{
    Arch, Checkpoint, DType, LlmConfig, Mla, QkNorm, RopeScaling, TensorName as T,
};

use crate::calibrate::RouteStats;
use crate::plan;

/// What [`pack_llm`] takes besides the checkpoint.
#[derive(Clone, Debug)]
pub struct LlmPackOptions {
    /// log2 of the blob alignment (>= 12).
    pub align_log2: u32,
    /// Positions the KV caches hold (the context length of a session).
    pub context: usize,
    /// Tokens one run takes at most (the prompt chunk of prefill).
    pub chunk: usize,
    /// Format of the expert matrices; `None` keeps each tensor's source
    /// encoding ([`source_format`]).
    pub quant: Option<WeightFormat>,
    /// Format of the dense matrices: attention, shared expert, dense FFN,
    /// embedding and head; `None` keeps each tensor's source encoding.
    pub dense_quant: Option<WeightFormat>,
    /// Tasks: a name and, per MoE layer, the experts its router may pick
    /// (missing layers: every expert). No task given: one task, `generate`,
    /// with every expert on its path.
    pub tasks: Vec<(String, BTreeMap<usize, ExpertMask>)>,
    /// Routing statistics to store, per `(task index, expert group)` (the
    /// group is the index among the MoE layers); `inspect` prints them.
    pub stats: Option<RouteStats>,
    /// Per `(layer, expert)` format, overriding `quant` (mixed precision).
    pub expert_formats: BTreeMap<(usize, usize), WeightFormat>,
}

impl LlmPackOptions {
    /// The format asked for expert `e` of `layer` (`None`: its source's).
    pub fn expert_format(&self, layer: usize, e: usize) -> Option<WeightFormat> {
        self.expert_formats.get(&(layer, e)).copied().or(self.quant)
    }
}

impl Default for LlmPackOptions {
    fn default() -> Self {
        Self {
            align_log2: 12,
            context: 256,
            chunk: 64,
            quant: None,
            dense_quant: None,
            tasks: Vec::new(),
            stats: None,
            expert_formats: BTreeMap::new(),
        }
    }
}

/// The architecture tag of decoder language models.
pub const LLM_ARCH: &str = "llm";

/// The format a tensor stored as `dtype` keeps when no format is asked
/// for, and whether its values survive exactly: F32, F16, Q8_0 and Q4_0
/// have formats of their own (the GGUF blocks are repacked bit for bit);
/// BF16 widens to F32 exactly. The K-quants have no layout here: Q4_K (per
/// 32 values a 4-bit code with a scale and a minimum) is requantized to
/// the asymmetric int4 of groups of 32, Q6_K to Q8_0, and the change is
/// reported ([`PackReport`]).
pub fn source_format(dtype: DType) -> (WeightFormat, bool) {
    match dtype {
        DType::F32 | DType::BF16 => (WeightFormat::F32, true),
        DType::F16 => (WeightFormat::F16, true),
        DType::Q8_0 => (WeightFormat::Q8_0, true),
        DType::Q4_0 => (WeightFormat::Q4_0, true),
        DType::Q4K => (WeightFormat::I4G32Z, false),
        DType::Q6K => (WeightFormat::Q8_0, false),
    }
}

/// How the source encodings were stored, per (source type, stored format).
#[derive(Clone, Debug, Default)]
pub struct PackReport {
    /// Per `(source type, stored format)`: what was stored.
    pub conversions: BTreeMap<(String, WeightFormat), Conversion>,
}

/// Tensors of one source type stored in one format.
#[derive(Clone, Debug, Default)]
pub struct Conversion {
    /// Tensors.
    pub tensors: usize,
    /// Values.
    pub values: usize,
    /// Whether every value was kept bit for bit (copied or repacked).
    pub exact: bool,
    /// Sum of squared changes (stored minus source value).
    pub err_sq: f64,
    /// Sum of squared source values.
    pub ref_sq: f64,
    /// Largest absolute change.
    pub max_abs: f32,
}

impl Conversion {
    /// Root-mean-square change relative to the root-mean-square weight.
    pub fn rel_rms(&self) -> f64 {
        if self.ref_sq > 0.0 {
            (self.err_sq / self.ref_sq).sqrt()
        } else {
            0.0
        }
    }
}

/// A blob under construction.
#[derive(Default)]
struct Blob {
    bytes: Vec<u8>,
    tensors: Vec<(String, TensorRec)>,
}

impl Blob {
    /// Appends a tensor in `fmt` (vectors store f32); returns its offset.
    fn put(
        &mut self,
        name: &str,
        fmt: WeightFormat,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<usize> {
        ensure!(
            data.len() == rows * cols,
            "{name}: {} values for a {rows} x {cols} tensor",
            data.len()
        );
        let fmt = if rows == 1 { WeightFormat::F32 } else { fmt };
        let n = fmt
            .checked_packed_bytes(rows, cols)
            .with_context(|| format!("{name}: {rows} x {cols} is too large"))?;
        let at = self.reserve(name, fmt, rows, cols, n)?;
        quantize(fmt, rows, cols, data, &mut self.bytes[at..at + n])
            .map_err(|e| anyhow::anyhow!("{name}: quantizing to {fmt}: {e}"))?;
        Ok(at)
    }

    /// Appends a zeroed `rows x cols` tensor record of `n` bytes in `fmt`
    /// (16-byte aligned) and returns its offset.
    fn reserve(
        &mut self,
        name: &str,
        fmt: WeightFormat,
        rows: usize,
        cols: usize,
        n: usize,
    ) -> Result<usize> {
        let at = self.bytes.len().div_ceil(16) * 16;
        self.bytes.resize(at + n, 0);
        self.tensors.push((
            name.to_string(),
            TensorRec {
                format: fmt.id(),
                layout: layout::DENSE,
                offset: u32::try_from(at).context("blob larger than 4 GiB")?,
                bytes: u32::try_from(n).context("tensor larger than 4 GiB")?,
                rows: rows as u32,
                cols: cols as u32,
                ..Default::default()
            },
        ));
        Ok(at)
    }

    /// Appends checkpoint tensor `name` in format `want`, or in its source's
    /// format ([`source_format`]) when `want` is `None`; GGUF Q4_0/Q8_0
    /// blocks going to the same format are repacked bit for bit, anything
    /// else goes through f32. Vectors store f32.
    fn put_source(
        &mut self,
        ck: &Checkpoint,
        name: T,
        want: Option<WeightFormat>,
        report: &mut PackReport,
    ) -> Result<()> {
        let t = ck
            .tensor(name)
            .with_context(|| format!("reading {}", name.short_name()))?;
        let (src_fmt, src_exact) = source_format(t.dtype);
        let fmt = if t.rows == 1 {
            WeightFormat::F32
        } else {
            want.unwrap_or(src_fmt)
        };
        let short = name.short_name();
        let conv = report
            .conversions
            .entry((t.dtype.to_string(), fmt))
            .or_insert(Conversion {
                exact: true,
                ..Default::default()
            });
        conv.tensors += 1;
        conv.values += t.rows * t.cols;
        let gguf_twin = matches!(
            (t.dtype, fmt),
            (DType::Q4_0, WeightFormat::Q4_0) | (DType::Q8_0, WeightFormat::Q8_0)
        );
        if gguf_twin {
            let n = fmt
                .checked_packed_bytes(t.rows, t.cols)
                .with_context(|| format!("{short}: {} x {} is too large", t.rows, t.cols))?;
            let at = self.reserve(&short, fmt, t.rows, t.cols, n)?;
            let packed = &mut self.bytes[at..at + n];
            repack_gguf(fmt, t.rows, t.cols, &t.data, packed)
                .map_err(|e| anyhow::anyhow!("{short}: repacking {} as {fmt}: {e}", t.dtype))?;
            // Repacking keeps every scale's bits, so a NaN `d` in the file
            // would reach every output: refuse it here, where the file is named.
            if let Some(i) = first_non_finite(fmt, t.rows, t.cols, packed)
                .map_err(|e| anyhow::anyhow!("{short}: reading back {fmt}: {e}"))?
            {
                let (r, c) = (i / t.cols, i % t.cols);
                bail!(
                    "{short} ({}): the {} block scale d of row {r}, columns {c}..{} is NaN or infinite; the GGUF file is corrupt",
                    t.source_name,
                    t.dtype,
                    c + 32
                );
            }
            return Ok(());
        }
        let v = t
            .to_f32()
            .with_context(|| format!("converting {} to f32", t.source_name))?;
        let at = self.put(&short, fmt, t.rows, t.cols, &v)?;
        let stored_exact = fmt == WeightFormat::F32 || (fmt == src_fmt && src_exact);
        if !stored_exact {
            let n = t.rows * t.cols;
            let mut back = vec![0f32; n];
            let bytes = fmt.packed_bytes(t.rows, t.cols);
            dequantize(fmt, t.rows, t.cols, &self.bytes[at..at + bytes], &mut back)
                .map_err(|e| anyhow::anyhow!("{short}: reading back {fmt}: {e}"))?;
            for (a, b) in v.iter().zip(&back) {
                let d = b - a;
                conv.err_sq += f64::from(d) * f64::from(d);
                conv.ref_sq += f64::from(*a) * f64::from(*a);
                conv.max_abs = conv.max_abs.max(d.abs());
                conv.exact &= d == 0.0;
            }
        }
        Ok(())
    }
}

/// The op program of one task under construction.
struct Lowering {
    ops: Vec<Op>,
    bufs: Vec<plan::Buffer>,
    /// Buffers that are state (KV caches): placed first, live always.
    state: Vec<bool>,
}

impl Lowering {
    fn buf(&mut self, len: usize) -> SlotId {
        self.bufs.push(plan::Buffer {
            len,
            first: usize::MAX,
            last: 0,
        });
        self.state.push(false);
        SlotId((self.bufs.len() - 1) as u32)
    }
    fn state_buf(&mut self, len: usize) -> SlotId {
        let s = self.buf(len);
        self.state[s.0 as usize] = true;
        s
    }
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
    /// Slot offsets: state buffers first, in order, then the scratch plan.
    fn layout(&self) -> (Vec<(u32, u32, u32)>, usize) {
        let mut offsets = vec![0usize; self.bufs.len()];
        let mut at = 0;
        for (i, b) in self.bufs.iter().enumerate() {
            if self.state[i] {
                offsets[i] = at;
                at += b.len.div_ceil(16) * 16;
            }
        }
        let scratch: Vec<(usize, plan::Buffer)> = self
            .bufs
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.state[*i])
            .map(|(i, b)| (i, b.clone()))
            .collect();
        let only: Vec<plan::Buffer> = scratch.iter().map(|(_, b)| b.clone()).collect();
        let (off, total) = plan::plan(&only);
        for ((i, _), o) in scratch.iter().zip(off) {
            offsets[*i] = at + o;
        }
        let slots = self
            .bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let kind = if self.state[i] {
                    slot_kind::STATE
                } else {
                    slot_kind::SCRATCH
                };
                (offsets[i] as u32, b.len as u32, kind)
            })
            .collect();
        (slots, at + total)
    }
    fn tensor_refs(&self) -> usize {
        let mut n = 0;
        for op in &self.ops {
            op.for_each_tensor(|_| n += 1);
        }
        n
    }
}

/// Packs a decoder MoE language model into a package with one task per
/// `opts.tasks` entry (or one `generate` task).
pub fn pack_llm(ck: &Checkpoint, opts: &LlmPackOptions) -> Result<Vec<u8>> {
    pack_llm_report(ck, opts).map(|(bytes, _)| bytes)
}

/// [`pack_llm`], also saying how each source encoding was stored.
pub fn pack_llm_report(ck: &Checkpoint, opts: &LlmPackOptions) -> Result<(Vec<u8>, PackReport)> {
    let c = ck.config().clone();
    let mut report = PackReport::default();
    if let RopeScaling::Yarn { .. } = c.rope.scaling {
        bail!("{}: YaRN rope scaling is not lowered yet", c.arch);
    }
    ensure!(
        opts.chunk >= 1 && opts.context >= 1,
        "chunk and context must be positive"
    );
    ensure!(
        opts.chunk <= opts.context,
        "a run of {} tokens does not fit a context of {}",
        opts.chunk,
        opts.context
    );
    let nl = c.num_layers;
    let dense_fmt = opts.dense_quant;
    let vector = Some(WeightFormat::F32);
    let moe_layers: Vec<usize> = (0..nl).filter(|&l| !c.is_dense_layer(l)).collect();

    let mut w = PackageWriter::default();
    w.arch(LLM_ARCH);
    for (k, v) in metadata(&c, opts) {
        w.meta(&k, v);
    }
    let (mo, ml) = w.string("tokens");
    w.modalities.push(ModalityRec {
        name_off: mo,
        name_len: ml,
        tokens: opts.chunk as u32,
        features: 1,
        kind: input_kind::TOKEN_IDS,
        reserved: 0,
    });

    // Blobs, in path order: embedding, then per layer attention, router,
    // experts, shared expert; then the head.
    let mut blobs: Vec<(BlobRec, Blob)> = Vec::new();
    let none = NONE16;
    let shared = |owner: u16| BlobRec {
        kind: blob_kind::SHARED,
        group: none,
        expert: none,
        component: none,
        owner,
        ..Default::default()
    };
    let mut emb = Blob::default();
    emb.put_source(ck, T::TokenEmbd, dense_fmt, &mut report)?;
    blobs.push((shared(0), emb));
    for l in 0..nl {
        let mut b = Blob::default();
        let mut put = |b: &mut Blob, name: T, fmt: Option<WeightFormat>| -> Result<()> {
            b.put_source(ck, name, fmt, &mut report)
        };
        put(&mut b, T::AttnNorm { layer: l }, vector)?;
        let matrices: Vec<T> = match c.mla {
            Some(m) => {
                let mut v = if m.q_lora_rank.is_some() {
                    vec![T::AttnQA { layer: l }, T::AttnQB { layer: l }]
                } else {
                    vec![T::AttnQ { layer: l }]
                };
                v.extend([T::AttnKvA { layer: l }, T::AttnKvB { layer: l }]);
                v
            }
            None => vec![
                T::AttnQ { layer: l },
                T::AttnK { layer: l },
                T::AttnV { layer: l },
            ],
        };
        for t in matrices.into_iter().chain([T::AttnOutput { layer: l }]) {
            put(&mut b, t, dense_fmt)?;
        }
        if let Some(m) = c.mla {
            if m.q_lora_rank.is_some() {
                put(&mut b, T::AttnQANorm { layer: l }, vector)?;
            }
            put(&mut b, T::AttnKvANorm { layer: l }, vector)?;
        }
        if c.qkv_bias {
            for t in [
                T::AttnQBias { layer: l },
                T::AttnKBias { layer: l },
                T::AttnVBias { layer: l },
            ] {
                put(&mut b, t, vector)?;
            }
        }
        if c.o_bias {
            put(&mut b, T::AttnOutputBias { layer: l }, vector)?;
        }
        if c.qk_norm != QkNorm::None {
            put(&mut b, T::AttnQNorm { layer: l }, vector)?;
            put(&mut b, T::AttnKNorm { layer: l }, vector)?;
        }
        put(&mut b, T::FfnNorm { layer: l }, vector)?;
        if c.is_dense_layer(l) {
            for t in [
                T::DenseGate { layer: l },
                T::DenseUp { layer: l },
                T::DenseDown { layer: l },
            ] {
                put(&mut b, t, dense_fmt)?;
            }
        }
        blobs.push((shared(0), b));
        if c.is_dense_layer(l) {
            continue;
        }
        let g = moe_layers.iter().position(|&x| x == l).unwrap_or(0) as u16;
        let mut r = Blob::default();
        put(&mut r, T::Router { layer: l }, vector)?;
        let mut rec = shared(0);
        rec.kind = blob_kind::ROUTER;
        rec.component = 0;
        blobs.push((rec, r));
        for e in 0..c.num_experts {
            let mut b = Blob::default();
            for t in [
                T::ExpertGate {
                    layer: l,
                    expert: e,
                },
                T::ExpertUp {
                    layer: l,
                    expert: e,
                },
                T::ExpertDown {
                    layer: l,
                    expert: e,
                },
            ] {
                put(&mut b, t, opts.expert_format(l, e))?;
            }
            blobs.push((
                BlobRec {
                    kind: blob_kind::EXPERT,
                    group: g,
                    expert: e as u16,
                    component: 0,
                    owner: none,
                    ..Default::default()
                },
                b,
            ));
        }
        if let Some(se) = c.shared_expert {
            let mut b = Blob::default();
            for t in [
                T::SharedGate { layer: l },
                T::SharedUp { layer: l },
                T::SharedDown { layer: l },
            ] {
                put(&mut b, t, dense_fmt)?;
            }
            if se.sigmoid_gate {
                put(&mut b, T::SharedExpertGate { layer: l }, vector)?;
            }
            blobs.push((shared(0), b));
        }
    }
    let mut head = Blob::default();
    head.put_source(ck, T::OutputNorm, vector, &mut report)?;
    if !c.tie_word_embeddings {
        head.put_source(ck, T::Output, dense_fmt, &mut report)?;
    }
    let mut hrec = shared(0);
    hrec.kind = blob_kind::HEAD;
    blobs.push((hrec, head));

    // The tokenizer travels with the weights (a data blob named by
    // `llm.tokenizer_blob`), so a package alone can generate from text.
    let tok = ck
        .tokenizer()
        .context("reading the checkpoint's tokenizer")?;
    tok.check_vocab(c.vocab_size)
        .context("the tokenizer does not fit the model")?;
    let mut trec = shared(NONE16);
    trec.kind = blob_kind::DATA;
    w.meta("llm.tokenizer_blob", MetaValue::U32(blobs.len() as u32));
    blobs.push((
        trec,
        Blob {
            bytes: tok.to_package_json()?.into_bytes(),
            tensors: Vec::new(),
        },
    ));

    // Tensors: global ids by name.
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    for (bi, (_, b)) in blobs.iter().enumerate() {
        for (name, rec) in &b.tensors {
            let mut rec = *rec;
            rec.blob = bi as u32;
            (rec.name_off, rec.name_len) = w.string(name);
            ids.insert(name.clone(), w.tensors.len() as u32);
            w.tensors.push(rec);
        }
    }
    // Groups, expert records and the component index: one group per MoE layer.
    for (g, &l) in moe_layers.iter().enumerate() {
        let (no, nl_) = w.string(&format!("layer.{l}.experts"));
        w.groups.push(GroupRec {
            name_off: no,
            name_len: nl_,
            experts: c.num_experts as u32,
            top_k: c.experts_per_token as u32,
            kind: ExpertKind::SwiGlu as u32,
            ..Default::default()
        });
        w.components.push(ComponentRec {
            group: g as u32,
            component: 0,
            first_expert: w.experts.len() as u32,
            reserved: 0,
        });
        for e in 0..c.num_experts {
            let blob = blobs
                .iter()
                .position(|(r, _)| {
                    r.kind == blob_kind::EXPERT && r.group == g as u16 && r.expert == e as u16
                })
                .context("internal: expert blob")? as u32;
            let start = ids[&T::ExpertGate {
                layer: l,
                expert: e,
            }
            .short_name()];
            w.experts.push(ExpertRec {
                group: g as u32,
                expert: e as u16,
                component: 0,
                blob,
                tensor_start: start,
                tensor_count: ExpertKind::SwiGlu.tensors(),
                reserved: 0,
            });
        }
    }
    let id = |name: String| -> Result<TensorId> {
        ids.get(&name)
            .copied()
            .map(TensorId)
            .with_context(|| format!("internal: tensor {name} was not packed"))
    };

    let formats: Vec<WeightFormat> = w
        .tensors
        .iter()
        .map(|r| WeightFormat::from_u16(r.format).unwrap_or(WeightFormat::F32))
        .collect();
    let format_of = |t: TensorId| {
        formats
            .get(t.0 as usize)
            .copied()
            .unwrap_or(WeightFormat::F32)
    };

    let tasks: Vec<(String, BTreeMap<usize, ExpertMask>)> = if opts.tasks.is_empty() {
        vec![("generate".to_string(), BTreeMap::new())]
    } else {
        opts.tasks.clone()
    };
    for (task_index, (name, masks)) in tasks.iter().enumerate() {
        let (lw, output) = lower(&c, opts, &id, &format_of, &moe_layers)?;
        let (slots, total) = lw.layout();
        let (no, nl_) = w.string(name);
        w.tasks.push(TaskRec {
            name_off: no,
            name_len: nl_,
            stage: 0,
            outputs: c.vocab_size as u32,
            modality_mask: 1,
            program_start: w.program.len() as u32,
            program_len: lw.ops.len() as u32,
            slot_start: w.slots.len() as u32,
            slot_count: slots.len() as u32,
            path_start: w.paths.len() as u32,
            path_len: moe_layers.len() as u32,
            output_slot: output.0,
            plan_tensors: lw.tensor_refs() as u32,
            reserved: 0,
            slot_bytes: (total * 4) as u64,
        });
        for (offset, len, kind) in slots {
            w.slots.push(SlotRec { offset, len, kind });
        }
        w.program.extend(lw.ops.iter().map(Op::encode));
        for (g, &l) in moe_layers.iter().enumerate() {
            let mask = masks
                .get(&l)
                .copied()
                .unwrap_or_else(|| ExpertMask::all(c.num_experts));
            ensure!(
                !mask.is_empty() && mask.within(c.num_experts),
                "task {name}: the path of layer {l} is empty or names experts beyond {}",
                c.num_experts
            );
            let mut rec = PathRec {
                task: task_index as u32,
                group: g as u32,
                router: 0,
                ..Default::default()
            };
            rec.set_mask(mask);
            w.paths.push(rec);
        }
    }
    if let Some(stats) = &opts.stats {
        write_stats(&mut w, stats, tasks.len(), moe_layers.len(), c.num_experts)?;
    }
    for (rec, b) in blobs {
        let mut rec = rec;
        rec.format = b
            .tensors
            .iter()
            .map(|(_, t)| t.format)
            .max()
            .unwrap_or(format::F32) as u8;
        w.blobs.push((rec, b.bytes));
    }
    let bytes = w.finish(opts.align_log2.max(12), 0);
    let check = taskpath_runtime::AlignedArena::from_bytes(&bytes);
    let m = taskpath_runtime::Model::from_bytes(check.as_slice())
        .context("internal: packed model does not validate")?;
    crate::self_check(&m)?;
    Ok((bytes, report))
}

/// Stores `stats` (keyed by task and group) as route-statistics records.
fn write_stats(
    w: &mut PackageWriter,
    stats: &RouteStats,
    tasks: usize,
    groups: usize,
    experts: usize,
) -> Result<()> {
    for (&(t, g), (_, v)) in &stats.table {
        ensure!(
            t < tasks && g < groups && v.len() == experts,
            "routing statistics for task {t}, group {g} with {} experts do not fit a package of {tasks} tasks, {groups} groups of {experts} experts",
            v.len()
        );
        for j in 0..experts {
            let (picks, mass, samples) = stats.get(t, g, j);
            w.stats.push(StatRec {
                task: t as u32,
                group: g as u32,
                router: 0,
                expert: j as u32,
                picks,
                mass,
                samples,
            });
        }
    }
    Ok(())
}

/// The tokenizer a language-model package carries (checksum verified).
pub fn package_tokenizer(
    model: &taskpath_runtime::Model<'_>,
) -> Result<taskpath_import::Tokenizer> {
    let Some(MetaValue::U32(b)) = model.meta("llm.tokenizer_blob") else {
        bail!(
            "the package has no tokenizer (metadata llm.tokenizer_blob); is it a language model?"
        );
    };
    let blob = model
        .blob(b)
        .with_context(|| format!("llm.tokenizer_blob names blob {b}, which does not exist"))?;
    model
        .verify_blob(b)
        .context("the tokenizer blob fails its checksum")?;
    Ok(taskpath_import::Tokenizer::from_package_json(
        blob.bytes,
        "the package's tokenizer",
    )?)
}

/// The architecture's hyper-parameters as metadata (`inspect` prints them).
fn metadata(c: &LlmConfig, opts: &LlmPackOptions) -> Vec<(String, MetaValue<'static>)> {
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut m = vec![
        (
            "llm.architecture".to_string(),
            MetaValue::Str(c.arch.hf_name()),
        ),
        ("llm.vocab".to_string(), u(c.vocab_size)),
        ("llm.hidden".to_string(), u(c.hidden_size)),
        ("llm.layers".to_string(), u(c.num_layers)),
        ("llm.heads".to_string(), u(c.num_heads)),
        ("llm.kv_heads".to_string(), u(c.num_kv_heads)),
        ("llm.head_dim".to_string(), u(c.head_dim)),
        ("llm.experts".to_string(), u(c.num_experts)),
        ("llm.experts_per_token".to_string(), u(c.experts_per_token)),
        ("llm.expert_ffn".to_string(), u(c.expert_ffn)),
        (
            "llm.norm_topk_prob".to_string(),
            MetaValue::Bool(c.norm_topk_prob),
        ),
        ("llm.rms_eps".to_string(), MetaValue::F32(c.rms_norm_eps)),
        ("llm.rope_theta".to_string(), MetaValue::F32(c.rope.theta)),
        ("llm.context".to_string(), u(opts.context)),
        (
            "llm.max_positions".to_string(),
            u(c.max_position_embeddings),
        ),
        ("llm.chunk".to_string(), u(opts.chunk)),
        (
            "llm.tie_embeddings".to_string(),
            MetaValue::Bool(c.tie_word_embeddings),
        ),
    ];
    if let Some(b) = c.bos_token_id {
        m.push(("llm.bos".to_string(), MetaValue::U32(b)));
    }
    if let Some(e) = c.eos_token_id {
        m.push(("llm.eos".to_string(), MetaValue::U32(e)));
    }
    m
}

/// Lowers one task (docs at the top of this file).
fn lower(
    c: &LlmConfig,
    opts: &LlmPackOptions,
    id: &dyn Fn(String) -> Result<TensorId>,
    format_of: &dyn Fn(TensorId) -> WeightFormat,
    moe_layers: &[usize],
) -> Result<(Lowering, SlotId)> {
    let (d, nh, nkv, hd) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim);
    let (r, ctx) = (opts.chunk as u32, opts.context);
    let n = opts.chunk;
    let eps = c.rms_norm_eps;
    let mut lw = Lowering {
        ops: Vec::new(),
        bufs: Vec::new(),
        state: Vec::new(),
    };
    let t = |name: T| id(name.short_name());
    let vd = c.mla.map_or(hd, |m| m.v_head_dim);
    let caches: Vec<(SlotId, SlotId)> = (0..c.num_layers)
        .map(|_| (lw.state_buf(ctx * nkv * hd), lw.state_buf(ctx * nkv * vd)))
        .collect();
    let (emb_scale, res_scale, att_scale, logit_scale) = match c.granite {
        Some(g) => (g.embedding, g.residual, g.attention, g.logits),
        None => (1.0, 1.0, 1.0 / (hd as f32).sqrt(), 1.0),
    };
    let h = lw.buf(n * d);
    lw.op(Op::Embed {
        input: 0,
        out: h,
        table: id("token_embd".into())?,
        rows: r,
        scale: emb_scale,
    });
    let factor = match c.rope.scaling {
        RopeScaling::Linear { factor } => factor,
        _ => 1.0,
    };
    let style = match c.rope.style {
        taskpath_import::RopeStyle::HalfSplit => RopeStyle::HalfSplit,
        taskpath_import::RopeStyle::Interleaved => RopeStyle::Interleaved,
    };
    let linear = |lw: &mut Lowering,
                  x: SlotId,
                  w: TensorId,
                  b: Option<TensorId>,
                  out_w: usize,
                  q_cols: usize|
     -> SlotId {
        let y = lw.buf(n * out_w);
        // Packed weights run with kernel scratch in the `tmp` slot.
        let q = format_of(w).scratch_bytes(q_cols);
        let tmp = (q > 0).then(|| lw.buf(q.div_ceil(4)));
        lw.op(Op::Linear {
            x,
            y,
            w,
            b,
            rows: r,
            tmp,
        });
        y
    };
    for (l, &(kc, vc)) in caches.iter().enumerate() {
        let x = lw.buf(n * d);
        lw.op(Op::RmsNorm {
            x: h,
            y: x,
            g: t(T::AttnNorm { layer: l })?,
            rows: r,
            per_token: 1,
            eps,
        });
        let bias = |name: T| -> Result<Option<TensorId>> {
            if c.qkv_bias {
                Ok(Some(t(name)?))
            } else {
                Ok(None)
            }
        };
        let (q, k, v) = match c.mla {
            Some(m) => mla_qkv(&mut lw, c, &m, x, l, &t, &linear, (r, n), (factor, style))?,
            None => {
                let q = linear(
                    &mut lw,
                    x,
                    t(T::AttnQ { layer: l })?,
                    bias(T::AttnQBias { layer: l })?,
                    nh * hd,
                    d,
                );
                let k = linear(
                    &mut lw,
                    x,
                    t(T::AttnK { layer: l })?,
                    bias(T::AttnKBias { layer: l })?,
                    nkv * hd,
                    d,
                );
                let v = linear(
                    &mut lw,
                    x,
                    t(T::AttnV { layer: l })?,
                    bias(T::AttnVBias { layer: l })?,
                    nkv * hd,
                    d,
                );
                match c.qk_norm {
                    QkNorm::None => {}
                    QkNorm::Whole => {
                        for (s, name) in [
                            (q, T::AttnQNorm { layer: l }),
                            (k, T::AttnKNorm { layer: l }),
                        ] {
                            lw.op(Op::RmsNorm {
                                x: s,
                                y: s,
                                g: t(name)?,
                                rows: r,
                                per_token: 1,
                                eps,
                            });
                        }
                    }
                    QkNorm::PerHead => {
                        for (s, name, heads) in [
                            (q, T::AttnQNorm { layer: l }, nh),
                            (k, T::AttnKNorm { layer: l }, nkv),
                        ] {
                            lw.op(Op::RmsNorm {
                                x: s,
                                y: s,
                                g: t(name)?,
                                rows: r,
                                per_token: heads as u32,
                                eps,
                            });
                        }
                    }
                }
                for (s, heads) in [(q, nh), (k, nkv)] {
                    lw.op(Op::Rope {
                        x: s,
                        rows: r,
                        heads: heads as u32,
                        head_dim: hd as u32,
                        rot_dims: c.rope.dims as u32,
                        rot_offset: 0,
                        theta: c.rope.theta,
                        factor,
                        style,
                    });
                }
                (q, k, v)
            }
        };
        let att = lw.buf(n * nh * vd);
        let scratch = lw.buf(ctx);
        lw.op(Op::KvAttention {
            q,
            k,
            v,
            out: att,
            k_cache: kc,
            v_cache: vc,
            rows: r,
            heads: nh as u32,
            kv_heads: nkv as u32,
            head_dim: hd as u32,
            v_dim: vd as u32,
            context: ctx as u32,
            scale: att_scale,
            scratch,
        });
        let ob = if c.o_bias {
            Some(t(T::AttnOutputBias { layer: l })?)
        } else {
            None
        };
        let o = linear(&mut lw, att, t(T::AttnOutput { layer: l })?, ob, d, nh * vd);
        lw.op(Op::Axpy {
            x: o,
            y: h,
            rows: r,
            width: d as u32,
            a: res_scale,
            gate: None,
        });
        let x2 = lw.buf(n * d);
        lw.op(Op::RmsNorm {
            x: h,
            y: x2,
            g: t(T::FfnNorm { layer: l })?,
            rows: r,
            per_token: 1,
            eps,
        });
        let swiglu = |lw: &mut Lowering, gate: T, up: T, down: T, width: usize| -> Result<SlotId> {
            let g = linear(lw, x2, t(gate)?, None, width, d);
            let u = linear(lw, x2, t(up)?, None, width, d);
            lw.op(Op::SiluMul {
                x: g,
                up: u,
                rows: r,
                width: width as u32,
            });
            Ok(linear(lw, g, t(down)?, None, d, width))
        };
        if c.is_dense_layer(l) {
            let dl = c.dense_layers.context("internal: dense layer width")?;
            let y = swiglu(
                &mut lw,
                T::DenseGate { layer: l },
                T::DenseUp { layer: l },
                T::DenseDown { layer: l },
                dl.ffn,
            )?;
            lw.op(Op::Axpy {
                x: y,
                y: h,
                rows: r,
                width: d as u32,
                a: res_scale,
                gate: None,
            });
            continue;
        }
        let g = moe_layers
            .iter()
            .position(|&x| x == l)
            .context("internal: MoE layer")? as u32;
        let logits = linear(
            &mut lw,
            x2,
            t(T::Router { layer: l })?,
            None,
            c.num_experts,
            d,
        );
        let k = c.experts_per_token;
        let route = lw.buf(n * (1 + 2 * k));
        let mode = match c.arch {
            Arch::Mixtral | Arch::GraniteMoe => RouteMode::TopKSoftmax,
            _ if c.norm_topk_prob => RouteMode::TopKSoftmax,
            _ => RouteMode::SoftmaxTopK,
        };
        lw.op(Op::RouteTokens {
            logits,
            group: g,
            router: 0,
            route,
            rows: r,
            mode,
            scale: c.routed_scaling_factor,
        });
        let moe = lw.buf(n * d);
        // Kernel scratch for the largest need of the layer's expert formats.
        let mut q_bytes = 0;
        for e in 0..c.num_experts {
            for (name, cols) in [
                (
                    T::ExpertGate {
                        layer: l,
                        expert: e,
                    },
                    d,
                ),
                (
                    T::ExpertDown {
                        layer: l,
                        expert: e,
                    },
                    c.expert_ffn,
                ),
            ] {
                q_bytes = q_bytes.max(format_of(t(name)?).scratch_bytes(cols));
            }
        }
        let scr = lw.buf(taskpath_runtime::plan::swiglu_scratch(
            d,
            c.expert_ffn,
            q_bytes,
            n,
        ));
        lw.op(Op::MoeTokens {
            x: x2,
            route,
            group: g,
            router: 0,
            rows: r,
            width: d as u32,
            out: moe,
            scratch: scr,
        });
        lw.op(Op::Axpy {
            x: moe,
            y: h,
            rows: r,
            width: d as u32,
            a: res_scale,
            gate: None,
        });
        if let Some(se) = c.shared_expert {
            let y = swiglu(
                &mut lw,
                T::SharedGate { layer: l },
                T::SharedUp { layer: l },
                T::SharedDown { layer: l },
                se.ffn,
            )?;
            let gate = if se.sigmoid_gate {
                Some(linear(
                    &mut lw,
                    x2,
                    t(T::SharedExpertGate { layer: l })?,
                    None,
                    1,
                    d,
                ))
            } else {
                None
            };
            lw.op(Op::Axpy {
                x: y,
                y: h,
                rows: r,
                width: d as u32,
                a: res_scale,
                gate,
            });
        }
    }
    let xf = lw.buf(n * d);
    lw.op(Op::RmsNorm {
        x: h,
        y: xf,
        g: id("output_norm".into())?,
        rows: r,
        per_token: 1,
        eps,
    });
    let last = lw.buf(d);
    lw.op(Op::LastRow {
        x: xf,
        out: last,
        rows: r,
        width: d as u32,
        scale: 1.0 / logit_scale,
    });
    let head = if c.tie_word_embeddings {
        id("token_embd".into())?
    } else {
        id("output".into())?
    };
    let logits = lw.buf(c.vocab_size);
    let q = format_of(head).scratch_bytes(d);
    let tmp = (q > 0).then(|| lw.buf(q.div_ceil(4)));
    lw.op(Op::Linear {
        x: last,
        y: logits,
        w: head,
        b: None,
        rows: 1,
        tmp,
    });
    Ok((lw, logits))
}

/// A `Linear` op under construction: `(lowering, x, w, bias, out width,
/// in width) -> y`.
type LinearFn<'f> =
    dyn Fn(&mut Lowering, SlotId, TensorId, Option<TensorId>, usize, usize) -> SlotId + 'f;

/// DeepSeek-V2's multi-head latent attention, expanded to per-head keys
/// and values for `KvAttention` (the cache holds them expanded):
///
/// ```text
/// q = q_b(RmsNorm(q_a x))  (or q_proj x)        [n, heads, nope + rope]
/// c, k_pe = split(kv_a x)                        [n, kv_lora], [n, rope]
/// kv = kv_b(RmsNorm(c))                          [n, heads, nope + v]
/// q[.., nope..] = Rope(q[.., nope..]); k_pe = Rope(k_pe)   (interleaved pairs)
/// k = [kv[.., ..nope], k_pe for every head]      [n, heads, nope + rope]
/// v = kv[.., nope..]                             [n, heads, v]
/// ```
#[allow(clippy::too_many_arguments)]
fn mla_qkv(
    lw: &mut Lowering,
    c: &LlmConfig,
    m: &Mla,
    x: SlotId,
    l: usize,
    t: &dyn Fn(T) -> Result<TensorId>,
    linear: &LinearFn<'_>,
    (r, n): (u32, usize),
    (factor, style): (f32, RopeStyle),
) -> Result<(SlotId, SlotId, SlotId)> {
    let (d, nh, eps) = (c.hidden_size, c.num_heads, c.rms_norm_eps);
    let (nope, rope, vd) = (m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim);
    let qk = nope + rope;
    let q = match m.q_lora_rank {
        Some(rank) => {
            let qa = linear(lw, x, t(T::AttnQA { layer: l })?, None, rank, d);
            lw.op(Op::RmsNorm {
                x: qa,
                y: qa,
                g: t(T::AttnQANorm { layer: l })?,
                rows: r,
                per_token: 1,
                eps,
            });
            linear(lw, qa, t(T::AttnQB { layer: l })?, None, nh * qk, rank)
        }
        None => linear(lw, x, t(T::AttnQ { layer: l })?, None, nh * qk, d),
    };
    let kv_lora = m.kv_lora_rank;
    let ckv = linear(lw, x, t(T::AttnKvA { layer: l })?, None, kv_lora + rope, d);
    let u = |v: usize| v as u32;
    let copy = |lw: &mut Lowering, src, dst, (sw, so, ss), (dw, dof, ds), width, count| {
        lw.op(Op::CopyCols {
            src,
            dst,
            rows: r,
            src_width: u(sw),
            src_off: u(so),
            src_step: u(ss),
            dst_width: u(dw),
            dst_off: u(dof),
            dst_step: u(ds),
            width: u(width),
            count: u(count),
        });
    };
    let latent = lw.buf(n * kv_lora);
    copy(
        lw,
        ckv,
        latent,
        (kv_lora + rope, 0, 0),
        (kv_lora, 0, 0),
        kv_lora,
        1,
    );
    let k_pe = lw.buf(n * rope);
    copy(
        lw,
        ckv,
        k_pe,
        (kv_lora + rope, kv_lora, 0),
        (rope, 0, 0),
        rope,
        1,
    );
    lw.op(Op::RmsNorm {
        x: latent,
        y: latent,
        g: t(T::AttnKvANorm { layer: l })?,
        rows: r,
        per_token: 1,
        eps,
    });
    let kv = linear(
        lw,
        latent,
        t(T::AttnKvB { layer: l })?,
        None,
        nh * (nope + vd),
        kv_lora,
    );
    for (s, heads, head_dim, offset) in [(q, nh, qk, nope), (k_pe, 1, rope, 0)] {
        lw.op(Op::Rope {
            x: s,
            rows: r,
            heads: u(heads),
            head_dim: u(head_dim),
            rot_dims: u(rope),
            rot_offset: u(offset),
            theta: c.rope.theta,
            factor,
            style,
        });
    }
    let k = lw.buf(n * nh * qk);
    copy(
        lw,
        kv,
        k,
        (nh * (nope + vd), 0, nope + vd),
        (nh * qk, 0, qk),
        nope,
        nh,
    );
    copy(lw, k_pe, k, (rope, 0, 0), (nh * qk, nope, qk), rope, nh);
    let v = lw.buf(n * nh * vd);
    copy(
        lw,
        kv,
        v,
        (nh * (nope + vd), nope, nope + vd),
        (nh * vd, 0, vd),
        vd,
        nh,
    );
    Ok((q, k, v))
}
