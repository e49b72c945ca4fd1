//! A task's plan: its op program decoded, checked and resolved once.
//!
//! [`Plan::build`] walks the task's program a single time: every op is
//! decoded ([`Op::decode`], the only decoder), every slot resolved to its
//! range of the slots region and checked against the op's shapes, every
//! tensor resolved to a [`TensorView`] (shape, format, byte layout), every
//! routing op bound to its group and path mask, every expert the task may
//! route to checked (components present, tensor shapes, packed layouts) and
//! the `Moe` scratch divided. Executors — the CPU [`crate::Session`], the
//! CUDA backend, the NPU segment executor — consume the plan's [`Step`]s and
//! never look at op records again.
//!
//! A plan lives in caller memory ([`PlanStorage`]): a session places it at
//! the head of its arena, so firmware sizes one static buffer for both
//! ([`crate::TaskInfo::arena_bytes`]). Nothing here allocates.

use core::ops::Range;

use taskpath_format::records::{blob_kind, slot_kind, TaskRec};
use taskpath_format::{Access, ExpertKind, ExpertMask, GateFn, Op, SlotId, TensorId, WeightFormat};
#[cfg(feature = "decoder")]
use taskpath_format::{RopeStyle, RouteMode};

use crate::error::{Error, Result};
use crate::model::{ExpertTensors, Model, TaskInfo, TensorView};

/// A range of f32 elements of the slots region (`Copy`, unlike `Range`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Buf {
    /// First element.
    pub start: usize,
    /// One past the last element.
    pub end: usize,
}

impl Buf {
    /// `start..end`.
    pub const fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }
    /// `start..start + len`.
    pub const fn at(start: usize, len: usize) -> Self {
        Self {
            start,
            end: start + len,
        }
    }
    /// Elements.
    pub const fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
    /// Whether it holds no element.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// As a `Range`, to index slices.
    pub const fn range(&self) -> Range<usize> {
        self.start..self.end
    }
    /// The first `len` elements (`len <= self.len()`).
    pub const fn prefix(&self, len: usize) -> Self {
        Self::at(self.start, len)
    }
}

/// Index of a tensor in a plan's tensor table ([`Plan::tensors`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tix(pub u16);

/// Components a `Moe` step indexes inline; deeper chains look the rest up
/// in the model's component tables at run time.
pub const INLINE_COMPONENTS: usize = 4;

/// The pieces of a `Moe` op's scratch slot, for one expert component at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpertScratch {
    /// `[d]`: the conv output, then the FFN input.
    pub h: Buf,
    /// `[hidden]`: the FFN's middle.
    pub mid: Buf,
    /// `[d]`: the component's output.
    pub out: Buf,
    /// `[3d]`: the conv window, gathered for non-f32 or low-rank conv weights.
    pub window: Buf,
    /// `[max rank]`: the middle of low-rank products.
    pub tmp: Buf,
    /// The rest: kernel scratch of quantized formats (as bytes).
    pub kernel: Buf,
}

/// One op, resolved: slot ids are ranges of the slots region, tensors are
/// indices into the plan's tensor table, routing ops carry their mask.
#[derive(Clone, Copy, Debug, Default)]
pub enum Step {
    /// Placeholder of unused storage; never in a built plan.
    #[default]
    Nop,
    /// See [`Op::Encode`].
    Encode {
        /// Index among the task's inputs.
        input: usize,
        /// `[L, D]`.
        out: Buf,
        /// `[D, F]`.
        w: Tix,
        /// `[1, D]`.
        b: Tix,
        /// `[L, D]`.
        pos: Tix,
        /// `[L, rank]` or empty.
        tmp: Buf,
        /// Tokens L.
        tokens: usize,
    },
    /// See [`Op::LayerNorm`].
    LayerNorm {
        /// Input (may equal `y`).
        x: Buf,
        /// Output.
        y: Buf,
        /// Gain.
        g: Tix,
        /// Bias.
        b: Tix,
        /// Input scale.
        scale: f32,
        /// Epsilon.
        eps: f32,
    },
    /// See [`Op::Linear`].
    Linear {
        /// Input.
        x: Buf,
        /// Output.
        y: Buf,
        /// Weight.
        w: Tix,
        /// Bias.
        b: Option<Tix>,
        /// Rows (the capacity, in a token-stream task).
        rows: usize,
        /// `[rows, rank]` or empty.
        tmp: Buf,
        /// Kernel scratch of a packed weight, or empty.
        kernel: Buf,
        /// In a token-stream task: each run multiplies its own token count.
        stream: bool,
    },
    /// See [`Op::Attention`].
    Attention {
        /// Queries.
        q: Buf,
        /// Keys.
        k: Buf,
        /// Values.
        v: Buf,
        /// Output.
        out: Buf,
        /// Tokens.
        tokens: usize,
        /// Heads.
        heads: usize,
        /// `[L]`.
        scratch: Buf,
    },
    /// See [`Op::AttnPool`].
    AttnPool {
        /// Input.
        u: Buf,
        /// Query.
        query: Tix,
        /// Output.
        out: Buf,
        /// `[L]`.
        scratch: Buf,
    },
    /// See [`Op::Gate`].
    Gate {
        /// Pooled input.
        p: Buf,
        /// Gate vectors.
        gate: Tix,
        /// Logits.
        logits: Buf,
        /// Accumulate into the logits.
        accumulate: bool,
        /// Scale.
        scale: f32,
        /// `[N]`.
        tmp: Buf,
        /// Gate function.
        function: GateFn,
    },
    /// See [`Op::Route`].
    Route {
        /// Logits `[N]`.
        logits: Buf,
        /// Router id within the task.
        router: u32,
        /// Experts kept.
        top_k: usize,
        /// Experts it may keep.
        mask: ExpertMask,
        /// `[1 + 2k]`.
        route: Buf,
    },
    /// See [`Op::Moe`].
    Moe {
        /// Input `[L, D]`.
        u: Buf,
        /// The routing decision `[1 + 2k]`.
        route: Buf,
        /// Global group.
        group: u32,
        /// Experts kept (the group's top_k).
        top_k: usize,
        /// Experts the route may name.
        mask: ExpertMask,
        /// Components per expert.
        components: usize,
        /// First expert record of each of the first components.
        blocks: [u32; INLINE_COMPONENTS],
        /// Token the experts run at.
        token: usize,
        /// Width D.
        width: usize,
        /// Output `[D]`.
        out: Buf,
        /// The scratch slot, divided.
        scratch: ExpertScratch,
        /// Epsilon of the experts' LayerNorm.
        eps: f32,
    },
    /// See [`Op::Copy`].
    Copy {
        /// Source range.
        src: Buf,
        /// Destination range.
        dst: Buf,
    },
    /// See [`Op::Embed`].
    #[cfg(feature = "decoder")]
    Embed {
        /// Index among the task's inputs (token ids).
        input: usize,
        /// Output `[rows, width]`.
        out: Buf,
        /// Table `[vocab, width]`.
        table: Tix,
        /// Values per token.
        width: usize,
        /// Output scale.
        scale: f32,
    },
    /// See [`Op::RmsNorm`].
    #[cfg(feature = "decoder")]
    RmsNorm {
        /// Input (may equal `y`).
        x: Buf,
        /// Output.
        y: Buf,
        /// Gain.
        g: Tix,
        /// Values per token (`per_token * g.cols`).
        width: usize,
        /// Epsilon.
        eps: f32,
    },
    /// See [`Op::Rope`].
    #[cfg(feature = "decoder")]
    Rope {
        /// Values, rotated in place.
        x: Buf,
        /// Heads per token.
        heads: usize,
        /// Values per head.
        head_dim: usize,
        /// Rotated dimensions.
        rot_dims: usize,
        /// First rotated dimension.
        rot_offset: usize,
        /// Base.
        theta: f32,
        /// Position scaling.
        factor: f32,
        /// Pairing.
        style: RopeStyle,
    },
    /// See [`Op::KvAttention`].
    #[cfg(feature = "decoder")]
    KvAttention {
        /// Queries.
        q: Buf,
        /// New keys.
        k: Buf,
        /// New values.
        v: Buf,
        /// Output.
        out: Buf,
        /// Key cache.
        k_cache: Buf,
        /// Value cache.
        v_cache: Buf,
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Query/key dimension per head.
        head_dim: usize,
        /// Value dimension per head.
        v_dim: usize,
        /// Positions the caches hold.
        context: usize,
        /// Score scale.
        scale: f32,
        /// `[context]`.
        scratch: Buf,
    },
    /// See [`Op::SiluMul`].
    #[cfg(feature = "decoder")]
    SiluMul {
        /// Gate values, overwritten.
        x: Buf,
        /// Up values.
        up: Buf,
        /// Values per token.
        width: usize,
    },
    /// See [`Op::Axpy`].
    #[cfg(feature = "decoder")]
    Axpy {
        /// Added values.
        x: Buf,
        /// Accumulated into.
        y: Buf,
        /// Values per token.
        width: usize,
        /// Scale.
        a: f32,
        /// Per-token gate logits.
        gate: Option<Buf>,
    },
    /// See [`Op::RouteTokens`].
    #[cfg(feature = "decoder")]
    RouteTokens {
        /// Logits `[rows, experts]`.
        logits: Buf,
        /// Experts of the group.
        experts: usize,
        /// Router id within the task.
        router: u32,
        /// Experts kept per token.
        top_k: usize,
        /// Experts it may keep.
        mask: ExpertMask,
        /// Decisions `[rows, 1 + 2k]`.
        route: Buf,
        /// How logits become gates.
        mode: RouteMode,
        /// Gate scale.
        scale: f32,
    },
    /// See [`Op::MoeTokens`].
    #[cfg(feature = "decoder")]
    MoeTokens {
        /// Input `[rows, width]`.
        x: Buf,
        /// Decisions `[rows, 1 + 2k]`.
        route: Buf,
        /// Global group.
        group: u32,
        /// Experts kept per token.
        top_k: usize,
        /// Experts the routes may name.
        mask: ExpertMask,
        /// First expert record of component 0.
        block: u32,
        /// Width D.
        width: usize,
        /// Output `[rows, width]`.
        out: Buf,
        /// The scratch slot, divided.
        scratch: SwiGluScratch,
    },
    /// See [`Op::CopyCols`].
    #[cfg(feature = "decoder")]
    CopyCols {
        /// Input `[rows, src_width]`.
        src: Buf,
        /// Output `[rows, dst_width]`.
        dst: Buf,
        /// Values per token of `src`.
        src_width: usize,
        /// First source column.
        src_off: usize,
        /// Source columns between blocks.
        src_step: usize,
        /// Values per token of `dst`.
        dst_width: usize,
        /// First destination column.
        dst_off: usize,
        /// Destination columns between blocks.
        dst_step: usize,
        /// Columns per block.
        width: usize,
        /// Blocks per token.
        count: usize,
    },
    /// See [`Op::LastRow`].
    #[cfg(feature = "decoder")]
    LastRow {
        /// Input `[rows, width]`.
        x: Buf,
        /// Output `[width]`.
        out: Buf,
        /// Values per token.
        width: usize,
        /// Scale.
        scale: f32,
    },
}

/// The pieces of a `MoeTokens` op's scratch: one expert applied to up to
/// `batch` of the run's tokens at once (the tokens routed to it, gathered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwiGluScratch {
    /// Tokens per gathered batch: `min(rows, MOE_BATCH)`.
    pub batch: usize,
    /// `[batch, width]`: the gathered inputs.
    pub x: Buf,
    /// `[batch, hidden]`: the gate projection, then `silu(gate) * up`.
    pub gate: Buf,
    /// `[batch, hidden]`: the up projection.
    pub up: Buf,
    /// `[batch, width]`: the expert's outputs.
    pub out: Buf,
    /// Kernel scratch of packed weights (as bytes), for `batch` rows.
    pub kernel: Buf,
}

/// Most tokens a `MoeTokens` op passes through one expert's matrices at
/// once: a prefill chunk's tokens are grouped per expert, so each expert's
/// weights are read once per 64 tokens, not once per token.
pub const MOE_BATCH: usize = 64;

/// Most experts per token a `MoeTokens` op may keep (every supported
/// architecture routes to at most 8; the executor keeps a batch's routes
/// on the stack).
pub const MOE_TOKENS_MAX_TOP_K: usize = 8;

/// Tokens per gathered batch of a `MoeTokens` op over `rows` tokens.
pub fn moe_batch(rows: usize) -> usize {
    rows.clamp(1, MOE_BATCH)
}

/// Scratch (f32 elements) of a `MoeTokens` op over `rows` tokens: width
/// `d`, expert hidden width `h`, kernel scratch bytes `q` for one row. The
/// packer plans exactly this.
pub fn swiglu_scratch(d: usize, h: usize, q: usize, rows: usize) -> usize {
    let b = moe_batch(rows);
    b * (2 * h + 2 * d) + (b * q).div_ceil(4)
}

/// One entry of a plan: the op as the package states it and as resolved.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanStep {
    /// The decoded op (`None` only in unused storage).
    pub op: Option<Op>,
    /// Its resolution.
    pub step: Step,
}

/// Caller memory for one plan (see [`Plan::storage_counts`]).
#[derive(Debug)]
pub struct PlanStorage<'p, 'a> {
    /// One per op.
    pub steps: &'p mut [PlanStep],
    /// One per tensor reference of the ops (`plan_tensors`).
    pub tensors: &'p mut [TensorView<'a>],
    /// One per slot of the task.
    pub slots: &'p mut [Buf],
}

/// Elements of each table a task's plan needs: `(steps, tensors, slots)`.
pub fn storage_counts(rec: &TaskRec) -> (usize, usize, usize) {
    (
        rec.program_len as usize,
        rec.plan_tensors as usize,
        rec.slot_count as usize,
    )
}

const fn pad(align: usize) -> usize {
    align - 1
}

/// Bytes a session takes from the head of its arena for the plan of a task
/// with this record, on this platform: the three tables, each aligned for
/// its type, then padding up to the slots region's 16-byte alignment.
pub fn storage_bytes(rec: &TaskRec) -> usize {
    use core::mem::{align_of, size_of};
    let (s, t, l) = storage_counts(rec);
    s * size_of::<PlanStep>()
        + pad(align_of::<PlanStep>())
        + t * size_of::<TensorView<'static>>()
        + pad(align_of::<TensorView<'static>>())
        + l * size_of::<Buf>()
        + pad(align_of::<Buf>())
        + pad(SLOTS_ALIGN)
}

/// Alignment of the slots region within the arena (SIMD loads, cache lines).
pub const SLOTS_ALIGN: usize = 16;

/// A task's plan (see the module docs).
#[derive(Debug)]
pub struct Plan<'p, 'a> {
    task: TaskInfo<'a>,
    /// Bit `id` set for each packed (non-f32) weight format the task's
    /// experts use: what a backend must have kernels for.
    formats: u32,
    steps: &'p [PlanStep],
    tensors: &'p [TensorView<'a>],
    slots: &'p [Buf],
    output: Buf,
    state: Buf,
    slot_elems: usize,
    #[cfg(feature = "decoder")]
    tokens: Option<TokenShape>,
}

/// What a token-stream task takes per run and holds across runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenShape {
    /// Tokens one run takes at most (its `Embed`'s capacity).
    pub capacity: usize,
    /// Positions its KV caches hold (the context length).
    pub context: usize,
    /// Rows of its embedding table (token ids must be below).
    pub vocab: usize,
}

fn bad(op: u32, why: &'static str) -> Error {
    Error::InvalidProgram { op, why }
}

fn overlap(a: &Buf, b: &Buf) -> bool {
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

/// Resolution of one task's ops, with the tensor table under construction.
struct Builder<'m, 's, 'a> {
    model: &'m Model<'a>,
    task: &'m TaskInfo<'a>,
    tensors: &'s mut [TensorView<'a>],
    n_tensors: usize,
    slots: &'s [Buf],
    op: u32,
    formats: u32,
    /// A token-stream task (its program starts with `Embed`): dense ops may
    /// take packed weights and `rows` fields are capacities.
    stream: bool,
    /// Rows of the `Embed` that starts a token-stream task.
    capacity: u32,
    #[cfg(feature = "decoder")]
    part: taskpath_format::Package<'a>,
}

impl<'a> Builder<'_, '_, 'a> {
    fn bad(&self, why: &'static str) -> Error {
        bad(self.op, why)
    }

    fn slot(&self, s: SlotId, len: usize) -> Result<Buf> {
        let r = self
            .slots
            .get(s.0 as usize)
            .ok_or(self.bad("slot index beyond the task's plan"))?;
        if r.len() < len {
            return Err(self.bad("slot too small for the op's shape"));
        }
        Ok(r.prefix(len))
    }

    fn opt_slot(&self, s: Option<SlotId>, len: usize) -> Result<Buf> {
        match s {
            Some(s) => self.slot(s, len),
            None if len == 0 => Ok(Buf::default()),
            None => Err(self.bad("a low-rank weight needs a temporary slot")),
        }
    }

    /// Tensor `id`, which must be a dense f32 tensor of shape `[rows, cols]`
    /// (`None` for either: any) outside expert blobs; its table index.
    fn tensor(
        &mut self,
        id: TensorId,
        rows: Option<usize>,
        cols: Option<usize>,
    ) -> Result<(Tix, TensorView<'a>)> {
        let t = self.model.tensor(id.0).ok_or(self.bad("no such tensor"))?;
        if rows.is_some_and(|r| r != t.rows) || cols.is_some_and(|c| c != t.cols) {
            return Err(self.bad("tensor shape does not match the op"));
        }
        if t.rows == 1 && t.is_low_rank() {
            return Err(self.bad("vector stored as low-rank"));
        }
        if !(t.is_f32() || self.stream && t.rows > 1) {
            return Err(self.bad("quantized weights are only supported in expert blobs"));
        }
        if !t.is_f32() {
            self.layout_scratch(&t)?;
        }
        let blob = self.model.blob(t.blob).ok_or(self.bad("no such blob"))?;
        if blob.rec.kind == blob_kind::EXPERT {
            return Err(self.bad("a dense op names a tensor of an expert blob"));
        }
        // One entry per reference: the packer states their count.
        let i = self.n_tensors;
        let slot = self.tensors.get_mut(i).ok_or(bad(
            self.op,
            "the ops name more tensors than the task's plan_tensors",
        ))?;
        *slot = t;
        self.n_tensors += 1;
        let i = u16::try_from(i).map_err(|_| bad(self.op, "more than 65536 tensor references"))?;
        Ok((Tix(i), t))
    }

    fn resolve(&mut self, op: &Op) -> Result<Step> {
        let model = self.model;
        Ok(match *op {
            Op::Encode {
                input,
                out,
                w,
                b,
                pos,
                tmp,
            } => {
                let m = self
                    .task
                    .modalities()
                    .nth(input as usize)
                    .ok_or(self.bad("input index beyond the task's modalities"))?;
                let (_, l, f) = model.modality(m).ok_or(self.bad("modality"))?;
                let (w, wv) = self.tensor(w, None, Some(f))?;
                let d = wv.rows;
                Step::Encode {
                    input: input as usize,
                    out: self.slot(out, l * d)?,
                    b: self.tensor(b, Some(1), Some(d))?.0,
                    pos: self.tensor(pos, Some(l), Some(d))?.0,
                    tmp: self.opt_slot(tmp, l * wv.rank)?,
                    w,
                    tokens: l,
                }
            }
            Op::LayerNorm {
                x,
                y,
                g,
                b,
                scale,
                rows,
                eps,
            } => {
                let (g, gv) = self.tensor(g, Some(1), None)?;
                let n = (rows as usize) * gv.cols;
                let (x, y) = (self.slot(x, n)?, self.slot(y, n)?);
                if x != y && overlap(&x, &y) {
                    return Err(self.bad("layernorm input and output overlap without being equal"));
                }
                Step::LayerNorm {
                    x,
                    y,
                    g,
                    b: self.tensor(b, Some(1), Some(gv.cols))?.0,
                    scale,
                    eps,
                }
            }
            Op::Linear {
                x,
                y,
                w,
                b,
                rows,
                tmp,
            } => {
                let (w, wv) = self.tensor(w, None, None)?;
                let rows = rows as usize;
                let b = match b {
                    Some(b) => Some(self.tensor(b, Some(1), Some(wv.rows))?.0),
                    None => None,
                };
                // A packed weight's kernel scratch lives in the `tmp` slot.
                let q = self.layout_scratch(&wv)?;
                let (tmp, kernel) = if q > 0 {
                    let need = (rows * wv.rank).max(q.div_ceil(4));
                    let t = self.opt_slot(tmp, need)?;
                    (Buf::default(), t)
                } else {
                    (self.opt_slot(tmp, rows * wv.rank)?, Buf::default())
                };
                if q > 0 && wv.rank > 0 {
                    return Err(self.bad("a packed low-rank weight in a dense op"));
                }
                Step::Linear {
                    x: self.slot(x, rows * wv.cols)?,
                    y: self.slot(y, rows * wv.rows)?,
                    tmp,
                    kernel,
                    w,
                    b,
                    rows,
                    // A matrix over the capacity's rows scales with each
                    // run's tokens; one with fixed rows (the head, after
                    // LastRow) does not.
                    stream: self.stream && rows == self.capacity as usize,
                }
            }
            Op::Attention {
                q,
                k,
                v,
                out,
                tokens,
                width,
                heads,
                scratch,
            } => {
                let (l, d, h) = (tokens as usize, width as usize, heads as usize);
                if h == 0 || d == 0 || d % h != 0 {
                    return Err(self.bad("heads must divide the width"));
                }
                Step::Attention {
                    q: self.slot(q, l * d)?,
                    k: self.slot(k, l * d)?,
                    v: self.slot(v, l * d)?,
                    out: self.slot(out, l * d)?,
                    tokens: l,
                    heads: h,
                    scratch: self.slot(scratch, l)?,
                }
            }
            Op::AttnPool {
                u,
                tokens,
                query,
                out,
                scratch,
            } => {
                let (query, qv) = self.tensor(query, Some(1), None)?;
                let (l, d) = (tokens as usize, qv.cols);
                Step::AttnPool {
                    u: self.slot(u, l * d)?,
                    query,
                    out: self.slot(out, d)?,
                    scratch: self.slot(scratch, l)?,
                }
            }
            Op::Gate {
                p,
                gate,
                logits,
                accumulate,
                scale,
                tmp,
                function,
            } => {
                let (gate, gv) = self.tensor(gate, None, None)?;
                let n = gv.rows;
                Step::Gate {
                    p: self.slot(p, gv.cols)?,
                    gate,
                    logits: self.slot(logits, n)?,
                    accumulate,
                    scale,
                    tmp: self.slot(tmp, n)?,
                    function,
                }
            }
            Op::Route {
                logits,
                group,
                router,
                route,
            } => {
                let g = model.group(group).ok_or(self.bad("no such group"))?;
                let mask = model
                    .path_mask(self.task, group, router)
                    .ok_or(self.bad("route for a router without a path entry"))?;
                let k = g.top_k as usize;
                Step::Route {
                    logits: self.slot(logits, g.experts as usize)?,
                    router,
                    top_k: k,
                    mask,
                    route: self.slot(route, 1 + 2 * k)?,
                }
            }
            Op::Moe {
                u,
                tokens,
                width,
                route,
                group,
                router,
                components,
                token,
                out,
                scratch,
                eps,
            } => {
                let g = model.group(group).ok_or(self.bad("no such group"))?;
                if ExpertKind::from_u32(g.kind) != Some(ExpertKind::ConvFfn) {
                    return Err(
                        self.bad("this runtime has no executor for the group's expert kind")
                    );
                }
                let mask = model
                    .path_mask(self.task, group, router)
                    .ok_or(self.bad("experts for a router without a path entry"))?;
                let (l, d, comps) = (tokens as usize, width as usize, components as usize);
                if comps == 0 || comps > model.components(group) {
                    return Err(self.bad("experts beyond the group's components"));
                }
                if comps > self.task.stage + 1 {
                    return Err(self.bad("experts beyond the task's stage"));
                }
                if token >= tokens {
                    return Err(self.bad("token beyond the sequence"));
                }
                let mut blocks = [0u32; INLINE_COMPONENTS];
                for (c, b) in blocks.iter_mut().enumerate().take(comps) {
                    *b = model
                        .component_block(group, c)
                        .ok_or(self.bad("missing expert component"))?
                        .first_expert;
                }
                let (hidden, max_rank, q_bytes) = self.experts(group, &mask, comps, d)?;
                let k = g.top_k as usize;
                let need = crate::exec::moe_scratch(d, hidden, max_rank, q_bytes);
                let s = self.slot(scratch, need)?;
                let at = |from: usize, len: usize| Buf::at(s.start + from, len);
                let scratch = ExpertScratch {
                    h: at(0, d),
                    mid: at(d, hidden),
                    out: at(d + hidden, d),
                    window: at(2 * d + hidden, 3 * d),
                    tmp: at(5 * d + hidden, max_rank),
                    kernel: at(
                        5 * d + hidden + max_rank,
                        need - (5 * d + hidden + max_rank),
                    ),
                };
                Step::Moe {
                    u: self.slot(u, l * d)?,
                    route: self.slot(route, 1 + 2 * k)?,
                    group,
                    top_k: k,
                    mask,
                    components: comps,
                    blocks,
                    token: token as usize,
                    width: d,
                    out: self.slot(out, d)?,
                    scratch,
                    eps,
                }
            }
            Op::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            } => {
                let (so, dof, n) = (src_offset as usize, dst_offset as usize, len as usize);
                let (s, d) = (self.slot(src, so + n)?, self.slot(dst, dof + n)?);
                Step::Copy {
                    src: Buf::new(s.start + so, s.end),
                    dst: Buf::new(d.start + dof, d.end),
                }
            }
            #[cfg(feature = "decoder")]
            _ => return self.resolve_token_op(op),
        })
    }

    /// The token-stream (decoder) ops of [`Builder::resolve`].
    #[cfg(feature = "decoder")]
    fn resolve_token_op(&mut self, op: &Op) -> Result<Step> {
        let model = self.model;
        Ok(match *op {
            Op::Embed {
                input,
                out,
                table,
                rows,
                scale,
            } => {
                let m = self
                    .task
                    .modalities()
                    .nth(input as usize)
                    .ok_or(self.bad("input index beyond the task's modalities"))?;
                if !model.is_token_input(m) {
                    return Err(self.bad("Embed reads an input that is not token ids"));
                }
                let (table, tv) = self.tensor(table, None, None)?;
                if tv.is_low_rank() {
                    return Err(self.bad("a low-rank embedding table"));
                }
                Step::Embed {
                    input: input as usize,
                    out: self.slot(out, rows as usize * tv.cols)?,
                    table,
                    width: tv.cols,
                    scale,
                }
            }
            Op::RmsNorm {
                x,
                y,
                g,
                rows,
                per_token,
                eps,
            } => {
                let (g, gv) = self.tensor(g, Some(1), None)?;
                let width = per_token as usize * gv.cols;
                let n = rows as usize * width;
                let (x, y) = (self.slot(x, n)?, self.slot(y, n)?);
                if x != y && overlap(&x, &y) {
                    return Err(self.bad("norm input and output overlap without being equal"));
                }
                if width == 0 {
                    return Err(self.bad("empty norm rows"));
                }
                Step::RmsNorm {
                    x,
                    y,
                    g,
                    width,
                    eps,
                }
            }
            Op::Rope {
                x,
                rows,
                heads,
                head_dim,
                rot_dims,
                rot_offset,
                theta,
                factor,
                style,
            } => {
                let (h, hd, rd, ro) = (
                    heads as usize,
                    head_dim as usize,
                    rot_dims as usize,
                    rot_offset as usize,
                );
                if rd % 2 != 0 || rd == 0 || ro + rd > hd || h == 0 {
                    return Err(self.bad("rotated dimensions must be even and inside the head"));
                }
                Step::Rope {
                    x: self.slot(x, rows as usize * h * hd)?,
                    heads: h,
                    head_dim: hd,
                    rot_dims: rd,
                    rot_offset: ro,
                    theta,
                    factor,
                    style,
                }
            }
            Op::KvAttention {
                q,
                k,
                v,
                out,
                k_cache,
                v_cache,
                rows,
                heads,
                kv_heads,
                head_dim,
                v_dim,
                context,
                scale,
                scratch,
            } => {
                let (n, h, kvh, hd, vd, ctx) = (
                    rows as usize,
                    heads as usize,
                    kv_heads as usize,
                    head_dim as usize,
                    v_dim as usize,
                    context as usize,
                );
                if h == 0 || kvh == 0 || h % kvh != 0 || hd == 0 || vd == 0 || ctx == 0 {
                    return Err(self.bad("heads must be a multiple of the key/value heads"));
                }
                if n > ctx {
                    return Err(self.bad("more tokens per run than the context holds"));
                }
                for c in [k_cache, v_cache] {
                    if !self.is_state(c) {
                        return Err(self.bad("a KV cache must be a state slot"));
                    }
                }
                Step::KvAttention {
                    q: self.slot(q, n * h * hd)?,
                    k: self.slot(k, n * kvh * hd)?,
                    v: self.slot(v, n * kvh * vd)?,
                    out: self.slot(out, n * h * vd)?,
                    k_cache: self.slot(k_cache, ctx * kvh * hd)?,
                    v_cache: self.slot(v_cache, ctx * kvh * vd)?,
                    heads: h,
                    kv_heads: kvh,
                    head_dim: hd,
                    v_dim: vd,
                    context: ctx,
                    scale,
                    scratch: self.slot(scratch, ctx)?,
                }
            }
            Op::SiluMul { x, up, rows, width } => {
                let n = rows as usize * width as usize;
                Step::SiluMul {
                    x: self.slot(x, n)?,
                    up: self.slot(up, n)?,
                    width: width as usize,
                }
            }
            Op::Axpy {
                x,
                y,
                rows,
                width,
                a,
                gate,
            } => {
                let n = rows as usize * width as usize;
                Step::Axpy {
                    x: self.slot(x, n)?,
                    y: self.slot(y, n)?,
                    width: width as usize,
                    a,
                    gate: match gate {
                        Some(g) => Some(self.slot(g, rows as usize)?),
                        None => None,
                    },
                }
            }
            Op::RouteTokens {
                logits,
                group,
                router,
                route,
                rows,
                mode,
                scale,
            } => {
                let g = model.group(group).ok_or(self.bad("no such group"))?;
                let mask = model
                    .path_mask(self.task, group, router)
                    .ok_or(self.bad("route for a router without a path entry"))?;
                let (n, e, k) = (rows as usize, g.experts as usize, g.top_k as usize);
                Step::RouteTokens {
                    logits: self.slot(logits, n * e)?,
                    experts: e,
                    router,
                    top_k: k,
                    mask,
                    route: self.slot(route, n * (1 + 2 * k))?,
                    mode,
                    scale,
                }
            }
            Op::MoeTokens {
                x,
                route,
                group,
                router,
                rows,
                width,
                out,
                scratch,
            } => {
                let g = model.group(group).ok_or(self.bad("no such group"))?;
                if ExpertKind::from_u32(g.kind) != Some(ExpertKind::SwiGlu) {
                    return Err(self.bad("MoeTokens runs SwiGLU experts only"));
                }
                let mask = model
                    .path_mask(self.task, group, router)
                    .ok_or(self.bad("experts for a router without a path entry"))?;
                let (n, d, k) = (rows as usize, width as usize, g.top_k as usize);
                if k > MOE_TOKENS_MAX_TOP_K {
                    return Err(self.bad("MoeTokens keeps at most 8 experts per token"));
                }
                let block = model
                    .component_block(group, 0)
                    .ok_or(self.bad("missing expert component"))?
                    .first_expert;
                let (hidden, q) = self.swiglu_experts(group, &mask, d)?;
                let need = swiglu_scratch(d, hidden, q, n);
                let s = self.slot(scratch, need)?;
                let b = moe_batch(n);
                let at = |from: usize, len: usize| Buf::at(s.start + from, len);
                let (xs, gs, us, os) = (0, b * d, b * (d + hidden), b * (d + 2 * hidden));
                let used = b * (2 * d + 2 * hidden);
                Step::MoeTokens {
                    x: self.slot(x, n * d)?,
                    route: self.slot(route, n * (1 + 2 * k))?,
                    group,
                    top_k: k,
                    mask,
                    block,
                    width: d,
                    out: self.slot(out, n * d)?,
                    scratch: SwiGluScratch {
                        batch: b,
                        x: at(xs, b * d),
                        gate: at(gs, b * hidden),
                        up: at(us, b * hidden),
                        out: at(os, b * d),
                        kernel: at(used, need - used),
                    },
                }
            }
            Op::LastRow {
                x,
                out,
                rows,
                width,
                scale,
            } => {
                let w = width as usize;
                Step::LastRow {
                    x: self.slot(x, rows as usize * w)?,
                    out: self.slot(out, w)?,
                    width: w,
                    scale,
                }
            }
            Op::CopyCols {
                src,
                dst,
                rows,
                src_width,
                src_off,
                src_step,
                dst_width,
                dst_off,
                dst_step,
                width,
                count,
            } => {
                let u = |v: u32| v as usize;
                // The last block's end, or None on overflow.
                let end = |off: u32, step: u32| {
                    u(step)
                        .checked_mul(u(count).checked_sub(1)?)?
                        .checked_add(u(off))?
                        .checked_add(u(width))
                };
                if width == 0 || count == 0 {
                    return Err(self.bad("CopyCols copies nothing"));
                }
                if end(src_off, src_step).is_none_or(|e| e > u(src_width))
                    || end(dst_off, dst_step).is_none_or(|e| e > u(dst_width))
                {
                    return Err(self.bad("CopyCols blocks pass the end of a row"));
                }
                if count > 1 && dst_step < width {
                    return Err(self.bad("CopyCols destination blocks overlap"));
                }
                let len = |w: u32| {
                    u(rows)
                        .checked_mul(u(w))
                        .ok_or(self.bad("CopyCols shape overflows"))
                };
                Step::CopyCols {
                    src: self.slot(src, len(src_width)?)?,
                    dst: self.slot(dst, len(dst_width)?)?,
                    src_width: u(src_width),
                    src_off: u(src_off),
                    src_step: u(src_step),
                    dst_width: u(dst_width),
                    dst_off: u(dst_off),
                    dst_step: u(dst_step),
                    width: u(width),
                    count: u(count),
                }
            }
            _ => return Err(self.bad("not a token-stream op")),
        })
    }

    /// Whether slot `s` is a state slot (a KV cache).
    #[cfg(feature = "decoder")]
    fn is_state(&self, s: SlotId) -> bool {
        s.0 < self.task.rec.slot_count
            && self
                .part
                .slots()
                .get((self.task.rec.slot_start + s.0) as usize)
                .is_some_and(|r| r.kind == slot_kind::STATE)
    }

    /// Checks every expert in `mask` of a SwiGLU `group`: its component 0
    /// present, gate/up `[H, D]` and down `[D, H]`, formats known and bytes
    /// matching their layouts. Returns `H` and the largest kernel scratch.
    #[cfg(feature = "decoder")]
    fn swiglu_experts(
        &mut self,
        group: u32,
        mask: &ExpertMask,
        d: usize,
    ) -> Result<(usize, usize)> {
        let (mut hidden, mut q) = (0, 0);
        for j in mask.iter() {
            let e = self
                .model
                .expert(group, j, 0)
                .ok_or(self.bad("missing expert component"))?;
            let blob = self.model.blob(e.blob).ok_or(self.bad("no such blob"))?;
            let t = |k: u32| {
                self.model
                    .tensor_in(e.tensor_start + k, blob.bytes)
                    .filter(|_| k < e.tensor_count)
            };
            let (Some(gw), Some(uw), Some(dw)) = (t(0), t(1), t(2)) else {
                return Err(self.bad("expert tensor outside its blob"));
            };
            let h = gw.rows;
            if gw.cols != d || uw.rows != h || uw.cols != d || dw.rows != d || dw.cols != h {
                return Err(self.bad("expert tensor shape does not match the op's width"));
            }
            for w in [&gw, &uw, &dw] {
                if w.is_low_rank() {
                    return Err(self.bad("low-rank SwiGLU experts are not supported"));
                }
                q = q.max(self.layout_scratch(w)?);
            }
            hidden = hidden.max(h);
        }
        Ok((hidden, q))
    }

    /// Checks every component `< comps` of every expert in `mask` of
    /// `group`: present, tensor shapes for width `d`, vectors dense f32,
    /// matrices in a known format whose bytes match its layout. Returns the
    /// widest hidden size, the largest rank and the largest kernel scratch.
    fn experts(
        &mut self,
        group: u32,
        mask: &ExpertMask,
        comps: usize,
        d: usize,
    ) -> Result<(usize, usize, usize)> {
        let (mut hidden, mut max_rank, mut q_bytes) = (0, 0, 0);
        for j in mask.iter() {
            for c in 0..comps {
                let e = self
                    .model
                    .expert(group, j, c)
                    .ok_or(self.bad("missing expert component"))?;
                let blob = self.model.blob(e.blob).ok_or(self.bad("no such blob"))?;
                let x = self
                    .model
                    .expert_tensors(&e, blob.bytes)
                    .ok_or(self.bad("expert tensor outside its blob"))?;
                let h = x.fc1_w.rows;
                let shapes = [
                    (&x.conv_w, d, 3 * d),
                    (&x.conv_b, 1, d),
                    (&x.ln_g, 1, d),
                    (&x.ln_b, 1, d),
                    (&x.fc1_w, h, d),
                    (&x.fc1_b, 1, h),
                    (&x.fc2_w, d, h),
                    (&x.fc2_b, 1, d),
                ];
                for (t, r, cols) in shapes {
                    if t.rows != r || t.cols != cols {
                        return Err(self.bad("expert tensor shape does not match the op's width"));
                    }
                }
                hidden = hidden.max(h);
                for t in [&x.conv_b, &x.ln_g, &x.ln_b, &x.fc1_b, &x.fc2_b] {
                    if !t.is_f32() || t.is_low_rank() {
                        return Err(self.bad("expert vectors must be dense f32"));
                    }
                }
                for t in [&x.conv_w, &x.fc1_w, &x.fc2_w] {
                    max_rank = max_rank.max(t.rank);
                    q_bytes = q_bytes.max(self.layout_scratch(t)?);
                }
            }
        }
        Ok((hidden, max_rank, q_bytes))
    }

    /// Checks a matrix's byte lengths against its format's layout; returns
    /// the kernel scratch bytes it needs.
    fn layout_scratch(&mut self, t: &TensorView<'_>) -> Result<usize> {
        if t.is_f32() {
            return Ok(0);
        }
        // Without kernels for it the format's layout is moot: refuse it here,
        // which also leaves the layout rules out of f32-only firmware.
        #[cfg(not(feature = "quant"))]
        {
            Err(Error::UnsupportedFormat {
                format: t.format,
                name: WeightFormat::from_u16(t.format).map_or("unknown", WeightFormat::name),
                missing: taskpath_cpu::qmatvec::NOT_BUILT,
            })
        }
        #[cfg(feature = "quant")]
        {
            let fmt = WeightFormat::from_u16(t.format).ok_or(Error::UnsupportedFormat {
                format: t.format,
                name: "unknown",
                missing: "this build does not know the format id",
            })?;
            self.formats |= 1 << fmt.id();
            let factors: [(usize, usize, usize); 2] = if t.is_low_rank() {
                [
                    (t.rows, t.rank, t.raw_a.len()),
                    (t.rank, t.cols, t.raw_b.len()),
                ]
            } else {
                [(t.rows, t.cols, t.raw_a.len()), (0, 0, 0)]
            };
            let mut scratch = 0;
            for (r, c, len) in factors.into_iter().filter(|f| f.0 > 0) {
                if fmt.checked_packed_bytes(r, c) != Some(len) {
                    return Err(self.bad("quantized tensor bytes do not match its format's layout"));
                }
                scratch = scratch.max(fmt.scratch_bytes(c));
            }
            Ok(scratch)
        }
    }
}

impl<'p, 'a> Plan<'p, 'a> {
    /// Builds and checks the plan of task `task` (global index) in `storage`
    /// (its tables at least [`storage_counts`] long).
    pub fn build(model: &Model<'a>, task: usize, storage: PlanStorage<'p, 'a>) -> Result<Self> {
        let task = model.task(task)?;
        let part = model.part(task.part).ok_or(Error::UnknownTask)?;
        let (n_steps, n_tensors, n_slots) = storage_counts(&task.rec);
        let PlanStorage {
            steps,
            tensors,
            slots,
        } = storage;
        if steps.len() < n_steps || tensors.len() < n_tensors || slots.len() < n_slots {
            return Err(Error::ArenaTooSmall {
                need: storage_bytes(&task.rec),
                have: 0,
            });
        }
        let (steps, tensors, slots) = (
            &mut steps[..n_steps],
            &mut tensors[..n_tensors],
            &mut slots[..n_slots],
        );
        let slot_elems = task.slot_bytes / 4;
        let mut state = Buf::default();
        for (k, s) in slots.iter_mut().enumerate() {
            let rec = part
                .slots()
                .get(task.rec.slot_start as usize + k)
                .ok_or(bad(0, "slot table"))?;
            let r = Buf::at(rec.offset as usize, rec.len as usize);
            if r.end > slot_elems {
                return Err(bad(0, "slot outside the arena"));
            }
            if rec.kind == slot_kind::STATE && !r.is_empty() {
                state = if state.is_empty() {
                    r
                } else {
                    Buf::new(state.start.min(r.start), state.end.max(r.end))
                };
            }
            *s = r;
        }
        // State persists across runs: no scratch slot may share its bytes.
        for (k, s) in slots.iter().enumerate() {
            let kind = part
                .slots()
                .get(task.rec.slot_start as usize + k)
                .map_or(0, |r| r.kind);
            if kind == slot_kind::SCRATCH && overlap(s, &state) {
                return Err(bad(0, "a scratch slot overlaps the state slots"));
            }
        }
        #[cfg(feature = "decoder")]
        let (stream, capacity) = match model.op(&task, 0) {
            Ok(Op::Embed { rows, .. }) => (true, rows),
            _ => (false, 0),
        };
        #[cfg(not(feature = "decoder"))]
        let (stream, capacity) = (false, 0);
        let mut b = Builder {
            model,
            task: &task,
            tensors,
            n_tensors: 0,
            slots,
            op: 0,
            formats: 0,
            stream,
            capacity,
            #[cfg(feature = "decoder")]
            part,
        };
        for (i, ps) in steps.iter_mut().enumerate() {
            b.op = i as u32;
            let op = model.op(&task, i as u32)?;
            #[cfg(feature = "decoder")]
            if op.is_token_stream() && !b.stream {
                // It would run over zero tokens: refuse it rather than do nothing.
                return Err(bad(
                    i as u32,
                    "a token-stream op in a task that does not start with Embed",
                ));
            }
            let step = b.resolve(&op)?;
            check_disjoint(&op, b.slots, i as u32)?;
            *ps = PlanStep { op: Some(op), step };
        }
        let output = b
            .slots
            .get(task.rec.output_slot as usize)
            .copied()
            .ok_or(bad(0, "output slot"))?;
        if output.len() < task.outputs {
            return Err(bad(0, "output slot smaller than the task's outputs"));
        }
        if b.n_tensors != n_tensors {
            return Err(bad(
                0,
                "the task's plan_tensors is not the number of tensor references of its ops",
            ));
        }
        #[cfg(feature = "decoder")]
        let tokens = token_shape(steps, &b);
        #[cfg(feature = "decoder")]
        if b.stream && tokens.is_none() {
            return Err(bad(
                0,
                "a token-stream task needs an Embed and a KV attention",
            ));
        }
        let Builder {
            tensors,
            slots,
            formats,
            ..
        } = b;
        Ok(Self {
            task,
            #[cfg(feature = "decoder")]
            tokens,
            formats,
            steps,
            tensors,
            slots,
            output: output.prefix(task.outputs),
            state,
            slot_elems,
        })
    }

    /// The task.
    pub fn task(&self) -> &TaskInfo<'a> {
        &self.task
    }
    /// A token-stream task's run capacity, context and vocabulary; `None`
    /// for a fixed-shape task.
    pub fn tokens(&self) -> Option<TokenShape> {
        #[cfg(feature = "decoder")]
        return self.tokens;
        #[cfg(not(feature = "decoder"))]
        None
    }
    /// The packed weight formats the task's experts use (f32 excluded): a
    /// backend must run each of them.
    pub fn formats(&self) -> impl Iterator<Item = WeightFormat> + '_ {
        (0..32u16)
            .filter(|i| self.formats & (1 << i) != 0)
            .filter_map(WeightFormat::from_u16)
    }
    /// Whether blob `b` is on the task's path: it holds a tensor of the
    /// plan, or it is component `< components` of an expert in the mask of
    /// a `Moe` step of the blob's group.
    pub fn on_path(&self, b: &crate::BlobView<'_>) -> bool {
        if b.rec.kind == blob_kind::EXPERT {
            self.steps.iter().any(|ps| {
                let (group, mask, components) = match ps.step {
                    Step::Moe {
                        group,
                        mask,
                        components,
                        ..
                    } => (group, mask, components),
                    #[cfg(feature = "decoder")]
                    Step::MoeTokens { group, mask, .. } => (group, mask, 1),
                    _ => return false,
                };
                u32::from(b.rec.group) == group
                    && usize::from(b.rec.component) < components
                    && mask.contains(b.rec.expert.into())
            })
        } else {
            self.tensors.iter().any(|t| t.blob == b.index)
        }
    }
    /// The largest kernel scratch (bytes) any step hands a matrix product or
    /// an attention: what each worker of a thread pool needs.
    pub fn max_kernel_scratch(&self) -> usize {
        self.steps
            .iter()
            .map(|ps| match ps.step {
                Step::Linear { kernel, .. } => kernel.len(),
                Step::Moe { scratch, .. } => scratch.kernel.len(),
                #[cfg(feature = "decoder")]
                Step::MoeTokens { scratch, .. } => scratch.kernel.len(),
                #[cfg(feature = "decoder")]
                Step::KvAttention { scratch, .. } => scratch.len(),
                _ => 0,
            })
            .max()
            .unwrap_or(0)
            * 4
    }
    /// The steps, in program order.
    pub fn steps(&self) -> &'p [PlanStep] {
        self.steps
    }
    /// The dense tensors the steps name ([`Tix`] indexes this table).
    pub fn tensors(&self) -> &'p [TensorView<'a>] {
        self.tensors
    }
    /// Range of slot `s` in the slots region.
    pub fn slot(&self, s: SlotId) -> Option<Buf> {
        self.slots.get(s.0 as usize).copied()
    }
    /// Where the outputs are.
    pub fn output(&self) -> Buf {
        self.output
    }
    /// The hull of the state slots (empty when the task has none): what
    /// `Session::reset` clears and what persists between runs.
    pub fn state(&self) -> Buf {
        self.state
    }
    /// f32 elements of the slots region.
    pub fn slot_elems(&self) -> usize {
        self.slot_elems
    }
    /// Every slot op `i` uses, as ranges of the slots region, with how.
    pub fn accesses(&self, i: usize, mut f: impl FnMut(SlotId, Buf, Access)) {
        if let Some(op) = self.steps.get(i).and_then(|s| s.op) {
            op.for_each_slot(|s, a| {
                if let Some(r) = self.slot(s) {
                    f(s, r, a);
                }
            });
        }
    }
    /// The first expert record of component `c` of a `Moe` step's group.
    pub fn block(&self, model: &Model<'a>, step: &Step, c: usize) -> Option<u32> {
        first_expert(model, step, c)
    }
}

/// The global expert record of expert `j`, component `c` of a `Moe` step's
/// group (the step's inline index, or the model's component tables past it).
pub fn first_expert(model: &Model<'_>, step: &Step, c: usize) -> Option<u32> {
    match *step {
        Step::Moe { blocks, group, .. } => match blocks.get(c) {
            Some(&b) => Some(b),
            None => model.component_block(group, c).map(|b| b.first_expert),
        },
        _ => None,
    }
}

#[cfg(feature = "decoder")]
/// The token shape of a stream task: its first op's `Embed` capacity and
/// table, the smallest context of its attention ops.
fn token_shape(steps: &[PlanStep], b: &Builder<'_, '_, '_>) -> Option<TokenShape> {
    let (table, capacity) = match steps.first()?.step {
        Step::Embed {
            table, out, width, ..
        } => (table, out.len() / width.max(1)),
        _ => return None,
    };
    let context = steps
        .iter()
        .filter_map(|ps| match ps.step {
            Step::KvAttention { context, .. } => Some(context),
            _ => None,
        })
        .min()?;
    Some(TokenShape {
        capacity,
        context,
        vocab: b.tensors.get(usize::from(table.0))?.rows,
    })
}

/// The slots one op uses at once must not share bytes, except an in-place
/// LayerNorm's input and output (the same slot).
fn check_disjoint(op: &Op, slots: &[Buf], i: u32) -> Result<()> {
    let mut seen: [(u32, usize, usize); 8] = [(u32::MAX, 0, 0); 8];
    let mut n = 0;
    let mut err = None;
    op.for_each_slot(|s, _| {
        let Some(r) = slots.get(s.0 as usize) else {
            return;
        };
        for &(id, a, b) in &seen[..n] {
            if id != s.0 && overlap(&Buf::new(a, b), r) {
                err = Some(bad(i, "two slots of one op overlap"));
            }
        }
        if n < seen.len() {
            seen[n] = (s.0, r.start, r.end);
            n += 1;
        }
    });
    err.map_or(Ok(()), Err)
}

/// The tensors of expert component `e` of a plan's group, for executors
/// that address the package bytes directly.
pub fn expert_views<'a>(
    model: &Model<'a>,
    group: u32,
    j: usize,
    c: usize,
) -> Option<ExpertTensors<TensorView<'a>>> {
    let e = model.expert(group, j, c)?;
    let blob = model.blob(e.blob)?;
    model.expert_tensors(&e, blob.bytes)
}

/// Owned storage for one plan (std): for backends and tools that build a
/// plan outside a session's arena.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct PlanBuffers<'a> {
    steps: std::vec::Vec<PlanStep>,
    tensors: std::vec::Vec<TensorView<'a>>,
    slots: std::vec::Vec<Buf>,
}

#[cfg(feature = "std")]
impl<'a> PlanBuffers<'a> {
    /// Storage sized for `task`'s plan.
    pub fn new(task: &TaskInfo<'a>) -> Self {
        let (s, t, l) = storage_counts(&task.rec);
        Self {
            steps: std::vec![PlanStep::default(); s],
            tensors: std::vec![TensorView::default(); t],
            slots: std::vec![Buf::default(); l],
        }
    }
    /// The storage, to [`Plan::build`] into.
    pub fn storage(&mut self) -> PlanStorage<'_, 'a> {
        PlanStorage {
            steps: &mut self.steps,
            tensors: &mut self.tensors,
            slots: &mut self.slots,
        }
    }
}

/// Builds the plan of every task of `model`: the whole semantic check of a
/// package (`taskpath verify`, and the packer on its own output).
#[cfg(feature = "std")]
pub fn check_all(model: &Model<'_>) -> Result<()> {
    for t in 0..model.task_count() {
        let info = model.task(t)?;
        let mut b = PlanBuffers::new(&info);
        let plan = Plan::build(model, t, b.storage())?;
        check_dataflow(model, &plan)?;
        check_program(model, &plan)?;
    }
    Ok(())
}

/// What every task needs, whatever its kind (std): each of its inputs is
/// read (`Encode`, `Embed`), each of its path entries is routed and its
/// experts run (a program whose `Moe` became a `Copy` computes plausible
/// numbers without the experts the path names), and attention runs over at
/// least one token. [`check_all`] runs it with [`check_dataflow`].
#[cfg(feature = "std")]
pub fn check_program(model: &Model<'_>, plan: &Plan<'_, '_>) -> Result<()> {
    let task = plan.task();
    let mut read = std::vec![false; task.modalities().count()];
    let mut paths: std::vec::Vec<(u32, u32)> =
        model.paths(task).map(|e| (e.group, e.router)).collect();
    paths.sort_unstable();
    paths.dedup();
    let (mut routed, mut mixed) = (std::vec![false; paths.len()], std::vec![false; paths.len()]);
    let mark = |seen: &mut [bool], gr: (u32, u32)| {
        if let Ok(k) = paths.binary_search(&gr) {
            seen[k] = true;
        }
    };
    for (i, s) in plan.steps().iter().enumerate() {
        match s.op {
            Some(Op::Encode { input, .. }) => {
                if let Some(r) = read.get_mut(input as usize) {
                    *r = true;
                }
            }
            #[cfg(feature = "decoder")]
            Some(Op::Embed { input, .. }) => {
                if let Some(r) = read.get_mut(input as usize) {
                    *r = true;
                }
            }
            Some(Op::Attention { tokens: 0, .. } | Op::AttnPool { tokens: 0, .. }) => {
                return Err(bad(i as u32, "attention over zero tokens"));
            }
            Some(Op::Route { group, router, .. }) => mark(&mut routed, (group, router)),
            Some(Op::Moe { group, router, .. }) => mark(&mut mixed, (group, router)),
            #[cfg(feature = "decoder")]
            Some(Op::RouteTokens { group, router, .. }) => mark(&mut routed, (group, router)),
            #[cfg(feature = "decoder")]
            Some(Op::MoeTokens { group, router, .. }) => mark(&mut mixed, (group, router)),
            _ => {}
        }
    }
    if read.contains(&false) {
        return Err(bad(0, "a task input no op reads"));
    }
    if routed.contains(&false) {
        return Err(bad(0, "a path entry no Route op uses"));
    }
    if mixed.contains(&false) {
        return Err(bad(0, "a path entry whose experts no Moe op runs"));
    }
    Ok(())
}

/// The program's dataflow (std: it allocates per slot): every slot an op
/// reads was written by an earlier op (state slots, the KV caches, persist
/// and are exempt), the output slot is written, and two slots whose live
/// ranges (first to last use, in op order; the output's to the end) meet
/// never share bytes. A package that breaks these still runs, on garbage:
/// [`check_all`] (`taskpath verify`, `pack` on its output, every CLI
/// command on open) refuses it; sessions rely on that and allocate nothing.
#[cfg(feature = "std")]
pub fn check_dataflow(model: &Model<'_>, plan: &Plan<'_, '_>) -> Result<()> {
    let task = plan.task();
    let part = model.part(task.part).ok_or(Error::UnknownTask)?;
    let n = plan.slots.len();
    let state: std::vec::Vec<bool> = (0..n)
        .map(|k| {
            part.slots()
                .get(task.rec.slot_start as usize + k)
                .is_some_and(|r| r.kind == slot_kind::STATE)
        })
        .collect();
    let mut written = state.clone();
    // (first use, last use) per slot, in op indices.
    let mut live: std::vec::Vec<Option<(usize, usize)>> = std::vec![None; n];
    let steps = plan.steps().len();
    for i in 0..steps {
        let mut err = None;
        let mut writes = std::vec::Vec::new();
        plan.accesses(i, |s, _, a| {
            let k = s.0 as usize;
            if k >= n {
                return;
            }
            if a.reads() && !written[k] {
                err.get_or_insert(bad(i as u32, "reads a slot no earlier op wrote"));
            }
            if !matches!(a, Access::Read) {
                writes.push(k);
            }
            let l = live[k].get_or_insert((i, i));
            l.1 = i;
        });
        if let Some(e) = err {
            return Err(e);
        }
        for k in writes {
            written[k] = true;
        }
    }
    let out = task.rec.output_slot as usize;
    if !written.get(out).copied().unwrap_or(false) || state.get(out).copied().unwrap_or(false) {
        return Err(bad(0, "no op writes the task's output slot"));
    }
    if let Some(l) = live.get_mut(out).and_then(Option::as_mut) {
        l.1 = steps;
    }
    for (k, l) in live.iter_mut().enumerate() {
        if state[k] {
            *l = Some((0, steps));
        }
    }
    // A sweep over op indices keeps this O(n log n) in the slot count (a
    // hostile package may list millions): the byte ranges of the slots live
    // at once are disjoint, so a new one overlaps one of them exactly when
    // it overlaps the live range that starts last before its end.
    let mut by_start: std::vec::Vec<(usize, usize, usize)> = live
        .iter()
        .enumerate()
        .filter_map(|(k, l)| l.map(|(a0, a1)| (a0, a1, k)))
        .filter(|&(_, _, k)| !plan.slots[k].is_empty())
        .collect();
    by_start.sort_unstable();
    let mut by_end = by_start.clone();
    by_end.sort_unstable_by_key(|&(_, a1, _)| a1);
    let mut active = std::collections::BTreeMap::<usize, usize>::new();
    let mut ended = by_end.iter().peekable();
    for &(a0, _, k) in &by_start {
        while let Some(&(_, _, j)) = ended.next_if(|&&(_, b1, _)| b1 < a0) {
            active.remove(&plan.slots[j].start);
        }
        let r = &plan.slots[k];
        if let Some((_, &end)) = active.range(..r.end).next_back() {
            if end > r.start {
                return Err(bad(
                    a0 as u32,
                    "two slots that are live at once share bytes",
                ));
            }
        }
        active.insert(r.start, r.end);
    }
    Ok(())
}
