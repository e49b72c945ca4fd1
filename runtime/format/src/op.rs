//! The typed op program: [`Op`] is the one definition of every op's fields.
//!
//! A package stores each op as an [`OpRec`] (an opcode and argument words);
//! [`Op::decode`] and [`Op::encode`] are the only code that knows which word
//! holds which field. Everything downstream (the runtime's plan, the CUDA and
//! NPU backends, the packer's lowering, `inspect`) works on `Op` values. The
//! maths of each op is docs/FORMAT.md's "Op program"; the runtime implements
//! it once over its primitives (`taskpath_runtime::exec`).

use crate::error::FormatError;
use crate::records::{OpRec, NONE, OP_ARGS};

/// A task-local slot (an index into the task's slot table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub u32);

/// A global tensor index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

/// The gate function of a [`Op::Gate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateFn {
    /// `-||p - w_j||_2` (FLAME's Laplace gating).
    Laplace = 0,
    /// `w_j . p` (softmax gating logits).
    Dot = 1,
}

/// What an expert of a group computes; fixes how many tensors each expert
/// component has and what each one is (in record order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertKind {
    /// FLAME's expert: `fc2(GELU(fc1(LN(u_t + GELU(conv(u)_t)))))`, eight
    /// tensors: conv weight `[D, 3D]`, conv bias `[D]`, LN gain and bias `[D]`,
    /// fc1 weight `[H, D]` and bias `[H]`, fc2 weight `[D, H]` and bias `[D]`.
    ConvFfn = 1,
    /// A decoder LLM's expert: `down(silu(gate x) * up x)`, three tensors:
    /// gate `[I, D]`, up `[I, D]`, down `[D, I]`, no biases.
    SwiGlu = 2,
}

impl ExpertKind {
    /// The kind with this id.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::ConvFfn),
            2 => Some(Self::SwiGlu),
            _ => None,
        }
    }
    /// Tensors per expert component.
    pub fn tensors(self) -> u32 {
        match self {
            Self::ConvFfn => 8,
            Self::SwiGlu => 3,
        }
    }
}

/// How a token-stream routing op turns logits into gates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMode {
    /// Top-k of the logits, softmax over the kept ones (Mixtral, Granite;
    /// equal to softmax, top-k and renormalise: `norm_topk_prob`).
    TopKSoftmax = 0,
    /// Softmax over every logit, then the top-k probabilities as they are
    /// (OLMoE, Qwen-MoE without `norm_topk_prob`, DeepSeek-V2).
    SoftmaxTopK = 1,
}

/// Which dimensions RoPE pairs within a head's rotated part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension `i` with `i + rot / 2` (transformers' `rotate_half`).
    HalfSplit = 0,
    /// Dimension `2i` with `2i + 1`.
    Interleaved = 1,
}

/// How an op uses a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Written before it is read, if it is read at all.
    Write,
    /// Read, then written (in place, or accumulated into).
    ReadWrite,
    /// Private working memory of the op: meaningless before and after it.
    Scratch,
    /// Some of the slot is written and the rest kept: the op reads none of
    /// it, but the slot's contents after it include what earlier ops left.
    PartialWrite,
}

impl Access {
    /// Whether the op reads the slot's previous contents.
    pub fn reads(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }
    /// Whether the op leaves a result in the slot.
    pub fn writes(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite | Self::PartialWrite)
    }
    /// Whether the slot's contents after the op depend on its contents
    /// before it (so an executor must carry them across the op).
    pub fn keeps(self) -> bool {
        matches!(self, Self::ReadWrite | Self::PartialWrite)
    }
}

/// One op of a task's program (docs/FORMAT.md, "Op program").
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `out[L,D] = W x + b + pos` for task input `input` (`[L,F]`); `tmp`
    /// holds `V x` when `W` is low-rank.
    Encode {
        /// Index among the task's inputs.
        input: u32,
        /// Output `[L, D]`.
        out: SlotId,
        /// `[D, F]`.
        w: TensorId,
        /// `[1, D]`.
        b: TensorId,
        /// Position embedding `[L, D]`.
        pos: TensorId,
        /// `[L, rank]` for a low-rank `W`.
        tmp: Option<SlotId>,
    },
    /// `y = LN(scale * x)` row-wise over `rows` rows of `g.cols` values; `y`
    /// may equal `x` (in place) but may not partly overlap it.
    LayerNorm {
        /// Input.
        x: SlotId,
        /// Output.
        y: SlotId,
        /// Gain `[1, C]`.
        g: TensorId,
        /// Bias `[1, C]`.
        b: TensorId,
        /// Input scale.
        scale: f32,
        /// Rows.
        rows: u32,
        /// Epsilon (> 0).
        eps: f32,
    },
    /// `y[rows] = W x[rows] + b`.
    Linear {
        /// Input `[rows, cols]`.
        x: SlotId,
        /// Output `[rows, W.rows]`.
        y: SlotId,
        /// Weight.
        w: TensorId,
        /// Bias `[1, W.rows]`.
        b: Option<TensorId>,
        /// Rows (tokens).
        rows: u32,
        /// `[rows, rank]` for a low-rank `W`.
        tmp: Option<SlotId>,
    },
    /// Multi-head self-attention core over projected `q, k, v` (`[L, D]`).
    Attention {
        /// Queries.
        q: SlotId,
        /// Keys.
        k: SlotId,
        /// Values.
        v: SlotId,
        /// Output `[L, D]`.
        out: SlotId,
        /// Tokens L.
        tokens: u32,
        /// Width D.
        width: u32,
        /// Heads (divides D).
        heads: u32,
        /// `[L]` of scores.
        scratch: SlotId,
    },
    /// Attention pooling of `u` (`[L, D]`) with a learned query into one vector.
    AttnPool {
        /// Input `[L, D]`.
        u: SlotId,
        /// Tokens L.
        tokens: u32,
        /// Query `[1, D]`.
        query: TensorId,
        /// Output `[D]`.
        out: SlotId,
        /// `[L]` of scores.
        scratch: SlotId,
    },
    /// Gate logits of pooled `p` against `gate` (`[N, D]`):
    /// `logits = (accumulate ? logits : 0) + scale * g(p)`.
    Gate {
        /// Pooled input `[D]`.
        p: SlotId,
        /// Gate vectors `[N, D]`.
        gate: TensorId,
        /// Logits `[N]`.
        logits: SlotId,
        /// Add to the logits instead of overwriting them.
        accumulate: bool,
        /// Scale of this head's logits.
        scale: f32,
        /// `[N]` of working memory.
        tmp: SlotId,
        /// The gate function.
        function: GateFn,
    },
    /// Top-k of `logits` within the task's path mask for `(group, router)`,
    /// softmax over the kept logits; writes the count, `k` expert indices
    /// (as f32) and `k` gates into `route` (`1 + 2k`, k = the group's top_k).
    Route {
        /// Logits `[N]`.
        logits: SlotId,
        /// Global group index.
        group: u32,
        /// Router id within the task.
        router: u32,
        /// The routing decision.
        route: SlotId,
    },
    /// The mixture of the experts `route` selected, at token `token` of `u`:
    /// `out = sum_j g_j sum_{c < components} E_{j,c}(u)`.
    Moe {
        /// Input `[L, D]`.
        u: SlotId,
        /// Tokens L.
        tokens: u32,
        /// Width D.
        width: u32,
        /// The routing decision of the `Route` op with the same group and router.
        route: SlotId,
        /// Global group index.
        group: u32,
        /// Router id within the task (its path mask bounds the experts).
        router: u32,
        /// Components per expert (stage + 1).
        components: u32,
        /// Token the experts run at.
        token: u32,
        /// Output `[D]`.
        out: SlotId,
        /// Working memory of the experts.
        scratch: SlotId,
        /// Epsilon of the experts' LayerNorm.
        eps: f32,
    },
    /// Copies `len` values from `src[src_offset..]` to `dst[dst_offset..]`.
    Copy {
        /// Source slot.
        src: SlotId,
        /// Offset in the source.
        src_offset: u32,
        /// Destination slot.
        dst: SlotId,
        /// Offset in the destination.
        dst_offset: u32,
        /// Values.
        len: u32,
    },
    /// Token-stream ops (a task whose runs take `n <= rows` tokens at
    /// position `pos`: `rows` fields are capacities, each run uses `n`).
    /// `out[r] = scale * table[ids[r]]` for the run's token ids (task input
    /// `input`, of kind token ids).
    #[cfg(feature = "decoder")]
    Embed {
        /// Index among the task's inputs.
        input: u32,
        /// Output `[rows, D]`.
        out: SlotId,
        /// Embedding table `[vocab, D]`.
        table: TensorId,
        /// Capacity in tokens.
        rows: u32,
        /// Output scale (Granite's embedding multiplier; else 1).
        scale: f32,
    },
    /// `y = x / sqrt(mean(x^2) + eps) * g` over rows of `g.cols` values:
    /// `per_token` such rows per token (1: the whole hidden state; the
    /// number of heads: per-head q/k norms). `y` may equal `x`.
    #[cfg(feature = "decoder")]
    RmsNorm {
        /// Input.
        x: SlotId,
        /// Output.
        y: SlotId,
        /// Gain `[1, C]`.
        g: TensorId,
        /// Capacity in tokens.
        rows: u32,
        /// Rows of `C` values per token.
        per_token: u32,
        /// Epsilon (> 0).
        eps: f32,
    },
    /// Rotary position embedding, in place, of `heads` heads of `head_dim`
    /// per token, rotating `rot_dims` dimensions starting at `rot_offset`
    /// of each head, token `r` at position `pos + r`:
    /// angle `p / (theta^(2i / rot_dims) * factor)`.
    #[cfg(feature = "decoder")]
    Rope {
        /// Values `[rows, heads * head_dim]`, rotated in place.
        x: SlotId,
        /// Capacity in tokens.
        rows: u32,
        /// Heads per token.
        heads: u32,
        /// Values per head.
        head_dim: u32,
        /// Rotated dimensions (even).
        rot_dims: u32,
        /// First rotated dimension within a head.
        rot_offset: u32,
        /// Base.
        theta: f32,
        /// Linear position scaling factor (1 = none).
        factor: f32,
        /// Pairing.
        style: RopeStyle,
    },
    /// Causal grouped-query attention over a KV cache: appends the run's
    /// `k, v` rows at positions `pos..pos + n` of the caches (state
    /// slots), then each query row `r` attends to positions `0..=pos + r`.
    #[cfg(feature = "decoder")]
    KvAttention {
        /// Queries `[rows, heads * head_dim]`.
        q: SlotId,
        /// New keys `[rows, kv_heads * head_dim]`.
        k: SlotId,
        /// New values `[rows, kv_heads * v_dim]`.
        v: SlotId,
        /// Output `[rows, heads * v_dim]`.
        out: SlotId,
        /// Key cache `[context, kv_heads * head_dim]` (a state slot).
        k_cache: SlotId,
        /// Value cache `[context, kv_heads * v_dim]` (a state slot).
        v_cache: SlotId,
        /// Capacity in tokens.
        rows: u32,
        /// Query heads.
        heads: u32,
        /// Key/value heads (divides `heads`).
        kv_heads: u32,
        /// Query/key dimension per head.
        head_dim: u32,
        /// Value dimension per head.
        v_dim: u32,
        /// Positions the caches hold.
        context: u32,
        /// Score scale (`1/sqrt(head_dim)` unless the model says otherwise).
        scale: f32,
        /// `[context]` of scores.
        scratch: SlotId,
    },
    /// `x = silu(x) * up`, elementwise over `rows` tokens of `width`.
    #[cfg(feature = "decoder")]
    SiluMul {
        /// Gate values, overwritten with the result.
        x: SlotId,
        /// Up values.
        up: SlotId,
        /// Capacity in tokens.
        rows: u32,
        /// Values per token.
        width: u32,
    },
    /// `y[r] += a * x[r]` over `rows` tokens of `width` (residual adds);
    /// with `gate`, `a` is multiplied per token by `sigmoid(gate[r])`
    /// (Qwen2-MoE's shared-expert gate).
    #[cfg(feature = "decoder")]
    Axpy {
        /// Added values.
        x: SlotId,
        /// Accumulated into.
        y: SlotId,
        /// Capacity in tokens.
        rows: u32,
        /// Values per token.
        width: u32,
        /// Scale.
        a: f32,
        /// Per-token gate logits `[rows]`, if any.
        gate: Option<SlotId>,
    },
    /// Per token: gates over the group's experts from `logits`
    /// (`[rows, N]`) within the path mask of `(group, router)`, written to
    /// `route` (`[rows, 1 + 2k]`, as `Route`), each gate times `scale`.
    #[cfg(feature = "decoder")]
    RouteTokens {
        /// Router logits.
        logits: SlotId,
        /// Global group index.
        group: u32,
        /// Router id within the task.
        router: u32,
        /// The routing decisions.
        route: SlotId,
        /// Capacity in tokens.
        rows: u32,
        /// How logits become gates.
        mode: RouteMode,
        /// Gate scale (DeepSeek's routed scaling factor; else 1).
        scale: f32,
    },
    /// Per token: `out[r] = sum_j g_j E_j(x[r])` over the experts `route`
    /// chose (SwiGLU experts of `group`).
    #[cfg(feature = "decoder")]
    MoeTokens {
        /// Input `[rows, width]`.
        x: SlotId,
        /// The routing decisions of the `RouteTokens` op with this group and router.
        route: SlotId,
        /// Global group index.
        group: u32,
        /// Router id within the task (its path mask bounds the experts).
        router: u32,
        /// Capacity in tokens.
        rows: u32,
        /// Width D.
        width: u32,
        /// Output `[rows, width]`.
        out: SlotId,
        /// Working memory of the experts.
        scratch: SlotId,
    },
    /// `out = scale * x[n - 1]`: the run's last token (what the LM head reads).
    #[cfg(feature = "decoder")]
    LastRow {
        /// Input `[rows, width]`.
        x: SlotId,
        /// Output `[width]`.
        out: SlotId,
        /// Capacity in tokens.
        rows: u32,
        /// Values per token.
        width: u32,
        /// Scale (1, or Granite's `1 / logits_scaling` ahead of the head).
        scale: f32,
    },
    /// Strided column copy: for each token `r < n` and block `i < count`,
    /// `dst[r][dst_off + i dst_step ..][..width] = src[r][src_off + i
    /// src_step ..][..width]`. Splits a projection into its parts, gathers
    /// per-head pieces, and with `src_step = 0` broadcasts one piece to every
    /// head (DeepSeek's multi-head latent attention uses all three).
    #[cfg(feature = "decoder")]
    CopyCols {
        /// Input `[rows, src_width]`.
        src: SlotId,
        /// Output `[rows, dst_width]`.
        dst: SlotId,
        /// Capacity in tokens.
        rows: u32,
        /// Values per token of `src`.
        src_width: u32,
        /// First source column of block 0.
        src_off: u32,
        /// Source columns between blocks.
        src_step: u32,
        /// Values per token of `dst`.
        dst_width: u32,
        /// First destination column of block 0.
        dst_off: u32,
        /// Destination columns between blocks.
        dst_step: u32,
        /// Columns per block.
        width: u32,
        /// Blocks per token.
        count: u32,
    },
}

/// Opcodes (append-only within a major version), as [`OpRec::opcode`]
/// stores them and the C ABI's tracer callbacks report them.
pub mod opcode {
    /// [`super::Op::Encode`].
    pub const ENCODE: u16 = 1;
    /// [`super::Op::LayerNorm`].
    pub const LAYER_NORM: u16 = 2;
    /// [`super::Op::Linear`].
    pub const LINEAR: u16 = 3;
    /// [`super::Op::Attention`].
    pub const ATTENTION: u16 = 4;
    /// [`super::Op::AttnPool`].
    pub const ATTN_POOL: u16 = 5;
    /// [`super::Op::Gate`].
    pub const GATE: u16 = 6;
    /// [`super::Op::Route`].
    pub const ROUTE: u16 = 7;
    /// [`super::Op::Moe`].
    pub const MOE: u16 = 8;
    /// [`super::Op::Copy`].
    pub const COPY: u16 = 9;
    /// [`super::Op::Embed`].
    pub const EMBED: u16 = 10;
    /// [`super::Op::RmsNorm`].
    pub const RMS_NORM: u16 = 11;
    /// [`super::Op::Rope`].
    pub const ROPE: u16 = 12;
    /// [`super::Op::KvAttention`].
    pub const KV_ATTENTION: u16 = 13;
    /// [`super::Op::SiluMul`].
    pub const SILU_MUL: u16 = 14;
    /// [`super::Op::Axpy`].
    pub const AXPY: u16 = 15;
    /// [`super::Op::RouteTokens`].
    pub const ROUTE_TOKENS: u16 = 16;
    /// [`super::Op::MoeTokens`].
    pub const MOE_TOKENS: u16 = 17;
    /// [`super::Op::LastRow`].
    pub const LAST_ROW: u16 = 18;
    /// [`super::Op::CopyCols`].
    pub const COPY_COLS: u16 = 19;

    /// Whether `op` is a token-stream (decoder) opcode, [`EMBED`] to
    /// [`COPY_COLS`]: the ops a build without the `decoder` feature leaves out.
    pub const fn is_token_stream(op: u16) -> bool {
        op >= EMBED && op <= COPY_COLS
    }
}

/// Reads argument words in order, checking each against its type.
struct Args<'r> {
    r: &'r OpRec,
    at: usize,
    op: u32,
}

impl Args<'_> {
    fn bad(&self, why: &'static str) -> FormatError {
        FormatError::Invalid {
            field: "program.args",
            index: Some(self.op),
            value: self.at.saturating_sub(1) as u64,
            why,
        }
    }
    fn word(&mut self) -> u32 {
        let w = self.r.args[self.at];
        self.at += 1;
        w
    }
    fn u32(&mut self) -> u32 {
        self.word()
    }
    fn slot(&mut self) -> Result<SlotId, FormatError> {
        match self.word() {
            NONE => Err(self.bad("a required slot is NONE")),
            s => Ok(SlotId(s)),
        }
    }
    fn opt_slot(&mut self) -> Option<SlotId> {
        match self.word() {
            NONE => None,
            s => Some(SlotId(s)),
        }
    }
    fn tensor(&mut self) -> Result<TensorId, FormatError> {
        match self.word() {
            NONE => Err(self.bad("a required tensor is NONE")),
            t => Ok(TensorId(t)),
        }
    }
    fn opt_tensor(&mut self) -> Option<TensorId> {
        match self.word() {
            NONE => None,
            t => Some(TensorId(t)),
        }
    }
    fn finite(&mut self) -> Result<f32, FormatError> {
        let v = f32::from_bits(self.word());
        if v.is_finite() {
            Ok(v)
        } else {
            Err(self.bad("a scale is not finite"))
        }
    }
    fn eps(&mut self) -> Result<f32, FormatError> {
        let v = f32::from_bits(self.word());
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.bad("epsilon must be finite and > 0"))
        }
    }
    fn bool(&mut self) -> Result<bool, FormatError> {
        match self.word() {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad("a flag must be 0 or 1")),
        }
    }
    #[cfg(feature = "decoder")]
    fn route_mode(&mut self) -> Result<RouteMode, FormatError> {
        match self.word() {
            0 => Ok(RouteMode::TopKSoftmax),
            1 => Ok(RouteMode::SoftmaxTopK),
            _ => Err(self.bad("unknown route mode")),
        }
    }
    #[cfg(feature = "decoder")]
    fn rope_style(&mut self) -> Result<RopeStyle, FormatError> {
        match self.word() {
            0 => Ok(RopeStyle::HalfSplit),
            1 => Ok(RopeStyle::Interleaved),
            _ => Err(self.bad("unknown rope style")),
        }
    }
    #[cfg(feature = "decoder")]
    fn positive(&mut self) -> Result<f32, FormatError> {
        let v = f32::from_bits(self.word());
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.bad("must be finite and > 0"))
        }
    }
    fn gate_fn(&mut self) -> Result<GateFn, FormatError> {
        match self.word() {
            0 => Ok(GateFn::Laplace),
            1 => Ok(GateFn::Dot),
            _ => Err(self.bad("unknown gate function")),
        }
    }
    /// Every word past the op's fields must be zero.
    fn end(self) -> Result<(), FormatError> {
        match self.r.args[self.at..].iter().position(|&w| w != 0) {
            None => Ok(()),
            Some(k) => Err(FormatError::Invalid {
                field: "program.args",
                index: Some(self.op),
                value: (self.at + k) as u64,
                why: "argument words past the op's fields must be zero",
            }),
        }
    }
}

/// Builds argument words in order.
struct Words {
    w: [u32; OP_ARGS],
    at: usize,
}

impl Words {
    fn put(&mut self, v: u32) -> &mut Self {
        self.w[self.at] = v;
        self.at += 1;
        self
    }
    fn slot(&mut self, s: SlotId) -> &mut Self {
        self.put(s.0)
    }
    fn opt_slot(&mut self, s: Option<SlotId>) -> &mut Self {
        self.put(s.map_or(NONE, |s| s.0))
    }
    fn tensor(&mut self, t: TensorId) -> &mut Self {
        self.put(t.0)
    }
    fn opt_tensor(&mut self, t: Option<TensorId>) -> &mut Self {
        self.put(t.map_or(NONE, |t| t.0))
    }
    fn f32(&mut self, v: f32) -> &mut Self {
        self.put(v.to_bits())
    }
}

impl Op {
    /// Decodes op record `rec` (op `index` of its task, for error messages):
    /// the opcode must be known, the flags zero, every field of the right
    /// kind (required slots and tensors present, flags 0/1, scales finite,
    /// epsilons > 0) and every unused argument word zero. Shapes, slot
    /// ranges and tensor identities are the plan's to check.
    pub fn decode(rec: &OpRec, index: u32) -> Result<Self, FormatError> {
        if rec.flags != 0 {
            return Err(FormatError::Invalid {
                field: "program.flags",
                index: Some(index),
                value: rec.flags.into(),
                why: "must be zero",
            });
        }
        let mut a = Args {
            r: rec,
            at: 0,
            op: index,
        };
        let op = match rec.opcode {
            opcode::ENCODE => Op::Encode {
                input: a.u32(),
                out: a.slot()?,
                w: a.tensor()?,
                b: a.tensor()?,
                pos: a.tensor()?,
                tmp: a.opt_slot(),
            },
            opcode::LAYER_NORM => Op::LayerNorm {
                x: a.slot()?,
                y: a.slot()?,
                g: a.tensor()?,
                b: a.tensor()?,
                scale: a.finite()?,
                rows: a.u32(),
                eps: a.eps()?,
            },
            opcode::LINEAR => Op::Linear {
                x: a.slot()?,
                y: a.slot()?,
                w: a.tensor()?,
                b: a.opt_tensor(),
                rows: a.u32(),
                tmp: a.opt_slot(),
            },
            opcode::ATTENTION => Op::Attention {
                q: a.slot()?,
                k: a.slot()?,
                v: a.slot()?,
                out: a.slot()?,
                tokens: a.u32(),
                width: a.u32(),
                heads: a.u32(),
                scratch: a.slot()?,
            },
            opcode::ATTN_POOL => Op::AttnPool {
                u: a.slot()?,
                tokens: a.u32(),
                query: a.tensor()?,
                out: a.slot()?,
                scratch: a.slot()?,
            },
            opcode::GATE => Op::Gate {
                p: a.slot()?,
                gate: a.tensor()?,
                logits: a.slot()?,
                accumulate: a.bool()?,
                scale: a.finite()?,
                tmp: a.slot()?,
                function: a.gate_fn()?,
            },
            opcode::ROUTE => Op::Route {
                logits: a.slot()?,
                group: a.u32(),
                router: a.u32(),
                route: a.slot()?,
            },
            opcode::MOE => Op::Moe {
                u: a.slot()?,
                tokens: a.u32(),
                width: a.u32(),
                route: a.slot()?,
                group: a.u32(),
                router: a.u32(),
                components: a.u32(),
                token: a.u32(),
                out: a.slot()?,
                scratch: a.slot()?,
                eps: a.eps()?,
            },
            opcode::COPY => Op::Copy {
                src: a.slot()?,
                src_offset: a.u32(),
                dst: a.slot()?,
                dst_offset: a.u32(),
                len: a.u32(),
            },
            #[cfg(feature = "decoder")]
            opcode::EMBED => Op::Embed {
                input: a.u32(),
                out: a.slot()?,
                table: a.tensor()?,
                rows: a.u32(),
                scale: a.finite()?,
            },
            #[cfg(feature = "decoder")]
            opcode::RMS_NORM => Op::RmsNorm {
                x: a.slot()?,
                y: a.slot()?,
                g: a.tensor()?,
                rows: a.u32(),
                per_token: a.u32(),
                eps: a.eps()?,
            },
            #[cfg(feature = "decoder")]
            opcode::ROPE => Op::Rope {
                x: a.slot()?,
                rows: a.u32(),
                heads: a.u32(),
                head_dim: a.u32(),
                rot_dims: a.u32(),
                rot_offset: a.u32(),
                theta: a.positive()?,
                factor: a.positive()?,
                style: a.rope_style()?,
            },
            #[cfg(feature = "decoder")]
            opcode::KV_ATTENTION => Op::KvAttention {
                q: a.slot()?,
                k: a.slot()?,
                v: a.slot()?,
                out: a.slot()?,
                k_cache: a.slot()?,
                v_cache: a.slot()?,
                rows: a.u32(),
                heads: a.u32(),
                kv_heads: a.u32(),
                head_dim: a.u32(),
                v_dim: a.u32(),
                context: a.u32(),
                scale: a.positive()?,
                scratch: a.slot()?,
            },
            #[cfg(feature = "decoder")]
            opcode::SILU_MUL => Op::SiluMul {
                x: a.slot()?,
                up: a.slot()?,
                rows: a.u32(),
                width: a.u32(),
            },
            #[cfg(feature = "decoder")]
            opcode::AXPY => Op::Axpy {
                x: a.slot()?,
                y: a.slot()?,
                rows: a.u32(),
                width: a.u32(),
                a: a.finite()?,
                gate: a.opt_slot(),
            },
            #[cfg(feature = "decoder")]
            opcode::ROUTE_TOKENS => Op::RouteTokens {
                logits: a.slot()?,
                group: a.u32(),
                router: a.u32(),
                route: a.slot()?,
                rows: a.u32(),
                mode: a.route_mode()?,
                scale: a.positive()?,
            },
            #[cfg(feature = "decoder")]
            opcode::MOE_TOKENS => Op::MoeTokens {
                x: a.slot()?,
                route: a.slot()?,
                group: a.u32(),
                router: a.u32(),
                rows: a.u32(),
                width: a.u32(),
                out: a.slot()?,
                scratch: a.slot()?,
            },
            #[cfg(feature = "decoder")]
            opcode::LAST_ROW => Op::LastRow {
                x: a.slot()?,
                out: a.slot()?,
                rows: a.u32(),
                width: a.u32(),
                scale: a.finite()?,
            },
            #[cfg(feature = "decoder")]
            opcode::COPY_COLS => Op::CopyCols {
                src: a.slot()?,
                dst: a.slot()?,
                rows: a.u32(),
                src_width: a.u32(),
                src_off: a.u32(),
                src_step: a.u32(),
                dst_width: a.u32(),
                dst_off: a.u32(),
                dst_step: a.u32(),
                width: a.u32(),
                count: a.u32(),
            },
            other => {
                return Err(FormatError::Unsupported {
                    field: "program.opcode",
                    value: other.into(),
                })
            }
        };
        a.end()?;
        Ok(op)
    }

    /// The record of this op (the inverse of [`Op::decode`]).
    pub fn encode(&self) -> OpRec {
        let mut w = Words {
            w: [0; OP_ARGS],
            at: 0,
        };
        let opcode = match *self {
            Op::Encode {
                input,
                out,
                w: wt,
                b,
                pos,
                tmp,
            } => {
                w.put(input)
                    .slot(out)
                    .tensor(wt)
                    .tensor(b)
                    .tensor(pos)
                    .opt_slot(tmp);
                opcode::ENCODE
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
                w.slot(x)
                    .slot(y)
                    .tensor(g)
                    .tensor(b)
                    .f32(scale)
                    .put(rows)
                    .f32(eps);
                opcode::LAYER_NORM
            }
            Op::Linear {
                x,
                y,
                w: wt,
                b,
                rows,
                tmp,
            } => {
                w.slot(x)
                    .slot(y)
                    .tensor(wt)
                    .opt_tensor(b)
                    .put(rows)
                    .opt_slot(tmp);
                opcode::LINEAR
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
                w.slot(q)
                    .slot(k)
                    .slot(v)
                    .slot(out)
                    .put(tokens)
                    .put(width)
                    .put(heads)
                    .slot(scratch);
                opcode::ATTENTION
            }
            Op::AttnPool {
                u,
                tokens,
                query,
                out,
                scratch,
            } => {
                w.slot(u).put(tokens).tensor(query).slot(out).slot(scratch);
                opcode::ATTN_POOL
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
                w.slot(p)
                    .tensor(gate)
                    .slot(logits)
                    .put(u32::from(accumulate))
                    .f32(scale)
                    .slot(tmp)
                    .put(function as u32);
                opcode::GATE
            }
            Op::Route {
                logits,
                group,
                router,
                route,
            } => {
                w.slot(logits).put(group).put(router).slot(route);
                opcode::ROUTE
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
                w.slot(u)
                    .put(tokens)
                    .put(width)
                    .slot(route)
                    .put(group)
                    .put(router)
                    .put(components)
                    .put(token)
                    .slot(out)
                    .slot(scratch)
                    .f32(eps);
                opcode::MOE
            }
            Op::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            } => {
                w.slot(src)
                    .put(src_offset)
                    .slot(dst)
                    .put(dst_offset)
                    .put(len);
                opcode::COPY
            }
            #[cfg(feature = "decoder")]
            Op::Embed {
                input,
                out,
                table,
                rows,
                scale,
            } => {
                w.put(input).slot(out).tensor(table).put(rows).f32(scale);
                opcode::EMBED
            }
            #[cfg(feature = "decoder")]
            Op::RmsNorm {
                x,
                y,
                g,
                rows,
                per_token,
                eps,
            } => {
                w.slot(x)
                    .slot(y)
                    .tensor(g)
                    .put(rows)
                    .put(per_token)
                    .f32(eps);
                opcode::RMS_NORM
            }
            #[cfg(feature = "decoder")]
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
                w.slot(x)
                    .put(rows)
                    .put(heads)
                    .put(head_dim)
                    .put(rot_dims)
                    .put(rot_offset)
                    .f32(theta)
                    .f32(factor)
                    .put(style as u32);
                opcode::ROPE
            }
            #[cfg(feature = "decoder")]
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
                w.slot(q)
                    .slot(k)
                    .slot(v)
                    .slot(out)
                    .slot(k_cache)
                    .slot(v_cache)
                    .put(rows)
                    .put(heads)
                    .put(kv_heads)
                    .put(head_dim)
                    .put(v_dim)
                    .put(context)
                    .f32(scale)
                    .slot(scratch);
                opcode::KV_ATTENTION
            }
            #[cfg(feature = "decoder")]
            Op::SiluMul { x, up, rows, width } => {
                w.slot(x).slot(up).put(rows).put(width);
                opcode::SILU_MUL
            }
            #[cfg(feature = "decoder")]
            Op::Axpy {
                x,
                y,
                rows,
                width,
                a,
                gate,
            } => {
                w.slot(x).slot(y).put(rows).put(width).f32(a).opt_slot(gate);
                opcode::AXPY
            }
            #[cfg(feature = "decoder")]
            Op::RouteTokens {
                logits,
                group,
                router,
                route,
                rows,
                mode,
                scale,
            } => {
                w.slot(logits)
                    .put(group)
                    .put(router)
                    .slot(route)
                    .put(rows)
                    .put(mode as u32)
                    .f32(scale);
                opcode::ROUTE_TOKENS
            }
            #[cfg(feature = "decoder")]
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
                w.slot(x)
                    .slot(route)
                    .put(group)
                    .put(router)
                    .put(rows)
                    .put(width)
                    .slot(out)
                    .slot(scratch);
                opcode::MOE_TOKENS
            }
            #[cfg(feature = "decoder")]
            Op::LastRow {
                x,
                out,
                rows,
                width,
                scale,
            } => {
                w.slot(x).slot(out).put(rows).put(width).f32(scale);
                opcode::LAST_ROW
            }
            #[cfg(feature = "decoder")]
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
                w.slot(src)
                    .slot(dst)
                    .put(rows)
                    .put(src_width)
                    .put(src_off)
                    .put(src_step);
                w.put(dst_width)
                    .put(dst_off)
                    .put(dst_step)
                    .put(width)
                    .put(count);
                opcode::COPY_COLS
            }
        };
        debug_assert_eq!(opcode, self.opcode());
        OpRec {
            opcode,
            flags: 0,
            args: w.w,
        }
    }

    /// The op's stable opcode (docs/FORMAT.md), as the C ABI's tracer
    /// callbacks report it.
    pub fn opcode(&self) -> u16 {
        match self {
            Op::Encode { .. } => opcode::ENCODE,
            Op::LayerNorm { .. } => opcode::LAYER_NORM,
            Op::Linear { .. } => opcode::LINEAR,
            Op::Attention { .. } => opcode::ATTENTION,
            Op::AttnPool { .. } => opcode::ATTN_POOL,
            Op::Gate { .. } => opcode::GATE,
            Op::Route { .. } => opcode::ROUTE,
            Op::Moe { .. } => opcode::MOE,
            Op::Copy { .. } => opcode::COPY,
            #[cfg(feature = "decoder")]
            Op::Embed { .. } => opcode::EMBED,
            #[cfg(feature = "decoder")]
            Op::RmsNorm { .. } => opcode::RMS_NORM,
            #[cfg(feature = "decoder")]
            Op::Rope { .. } => opcode::ROPE,
            #[cfg(feature = "decoder")]
            Op::KvAttention { .. } => opcode::KV_ATTENTION,
            #[cfg(feature = "decoder")]
            Op::SiluMul { .. } => opcode::SILU_MUL,
            #[cfg(feature = "decoder")]
            Op::Axpy { .. } => opcode::AXPY,
            #[cfg(feature = "decoder")]
            Op::RouteTokens { .. } => opcode::ROUTE_TOKENS,
            #[cfg(feature = "decoder")]
            Op::MoeTokens { .. } => opcode::MOE_TOKENS,
            #[cfg(feature = "decoder")]
            Op::LastRow { .. } => opcode::LAST_ROW,
            #[cfg(feature = "decoder")]
            Op::CopyCols { .. } => opcode::COPY_COLS,
        }
    }

    /// Short name of the op kind (`"Linear"`), as traces and `inspect` print it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Encode { .. } => "Encode",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::Linear { .. } => "Linear",
            Op::Attention { .. } => "Attention",
            Op::AttnPool { .. } => "AttnPool",
            Op::Gate { .. } => "Gate",
            Op::Route { .. } => "Route",
            Op::Moe { .. } => "Moe",
            Op::Copy { .. } => "Copy",
            #[cfg(feature = "decoder")]
            Op::Embed { .. } => "Embed",
            #[cfg(feature = "decoder")]
            Op::RmsNorm { .. } => "RmsNorm",
            #[cfg(feature = "decoder")]
            Op::Rope { .. } => "Rope",
            #[cfg(feature = "decoder")]
            Op::KvAttention { .. } => "KvAttention",
            #[cfg(feature = "decoder")]
            Op::SiluMul { .. } => "SiluMul",
            #[cfg(feature = "decoder")]
            Op::Axpy { .. } => "Axpy",
            #[cfg(feature = "decoder")]
            Op::RouteTokens { .. } => "RouteTokens",
            #[cfg(feature = "decoder")]
            Op::MoeTokens { .. } => "MoeTokens",
            #[cfg(feature = "decoder")]
            Op::LastRow { .. } => "LastRow",
            #[cfg(feature = "decoder")]
            Op::CopyCols { .. } => "CopyCols",
        }
    }

    /// The experts an op runs: `(group, router, components)` for `Moe` (its
    /// components) and `MoeTokens` (component 0 only); `None` otherwise.
    pub fn expert_use(&self) -> Option<(u32, u32, u32)> {
        match *self {
            Op::Moe {
                group,
                router,
                components,
                ..
            } => Some((group, router, components)),
            #[cfg(feature = "decoder")]
            Op::MoeTokens { group, router, .. } => Some((group, router, 1)),
            _ => None,
        }
    }

    /// Whether the op belongs to a token-stream task (its `rows` field is
    /// a capacity and each run takes the run's token count).
    pub fn is_token_stream(&self) -> bool {
        opcode::is_token_stream(self.opcode())
    }

    /// Every slot the op uses, with how (a slot may appear twice, e.g. an
    /// in-place LayerNorm's input and output).
    pub fn for_each_slot(&self, mut f: impl FnMut(SlotId, Access)) {
        use Access::*;
        match *self {
            Op::Encode { out, tmp, .. } => {
                f(out, Write);
                tmp.into_iter().for_each(|t| f(t, Scratch));
            }
            Op::LayerNorm { x, y, .. } => {
                if x == y {
                    f(x, ReadWrite);
                } else {
                    f(x, Read);
                    f(y, Write);
                }
            }
            Op::Linear { x, y, tmp, .. } => {
                f(x, Read);
                f(y, Write);
                tmp.into_iter().for_each(|t| f(t, Scratch));
            }
            Op::Attention {
                q,
                k,
                v,
                out,
                scratch,
                ..
            } => {
                f(q, Read);
                f(k, Read);
                f(v, Read);
                f(out, Write);
                f(scratch, Scratch);
            }
            Op::AttnPool {
                u, out, scratch, ..
            } => {
                f(u, Read);
                f(out, Write);
                f(scratch, Scratch);
            }
            Op::Gate {
                p,
                logits,
                accumulate,
                tmp,
                ..
            } => {
                f(p, Read);
                f(logits, if accumulate { ReadWrite } else { Write });
                f(tmp, Scratch);
            }
            Op::Route { logits, route, .. } => {
                f(logits, Read);
                f(route, Write);
            }
            Op::Moe {
                u,
                route,
                out,
                scratch,
                ..
            } => {
                f(u, Read);
                f(route, Read);
                f(out, Write);
                f(scratch, Scratch);
            }
            Op::Copy { src, dst, .. } => {
                f(src, Read);
                // Part of the destination: the rest keeps its value.
                f(dst, Write);
            }
            #[cfg(feature = "decoder")]
            Op::Embed { out, .. } => f(out, Write),
            #[cfg(feature = "decoder")]
            Op::RmsNorm { x, y, .. } => {
                if x == y {
                    f(x, ReadWrite);
                } else {
                    f(x, Read);
                    f(y, Write);
                }
            }
            #[cfg(feature = "decoder")]
            Op::Rope { x, .. } => f(x, ReadWrite),
            #[cfg(feature = "decoder")]
            Op::KvAttention {
                q,
                k,
                v,
                out,
                k_cache,
                v_cache,
                scratch,
                ..
            } => {
                f(q, Read);
                f(k, Read);
                f(v, Read);
                f(k_cache, ReadWrite);
                f(v_cache, ReadWrite);
                f(out, Write);
                f(scratch, Scratch);
            }
            #[cfg(feature = "decoder")]
            Op::SiluMul { x, up, .. } => {
                f(x, ReadWrite);
                f(up, Read);
            }
            #[cfg(feature = "decoder")]
            Op::Axpy { x, y, gate, .. } => {
                f(x, Read);
                gate.into_iter().for_each(|g| f(g, Read));
                f(y, ReadWrite);
            }
            #[cfg(feature = "decoder")]
            Op::RouteTokens { logits, route, .. } => {
                f(logits, Read);
                f(route, Write);
            }
            #[cfg(feature = "decoder")]
            Op::MoeTokens {
                x,
                route,
                out,
                scratch,
                ..
            } => {
                f(x, Read);
                f(route, Read);
                f(out, Write);
                f(scratch, Scratch);
            }
            #[cfg(feature = "decoder")]
            Op::LastRow { x, out, .. } => {
                f(x, Read);
                f(out, Write);
            }
            #[cfg(feature = "decoder")]
            Op::CopyCols { src, dst, .. } => {
                f(src, Read);
                // A copy may fill some of `dst`'s columns after an earlier
                // op wrote others (assembling keys head by head).
                f(dst, PartialWrite);
            }
        }
    }

    /// Every tensor the op names (expert tensors are reached through its group).
    pub fn for_each_tensor(&self, mut f: impl FnMut(TensorId)) {
        match *self {
            Op::Encode { w, b, pos, .. } => {
                f(w);
                f(b);
                f(pos);
            }
            Op::LayerNorm { g, b, .. } => {
                f(g);
                f(b);
            }
            Op::Linear { w, b, .. } => {
                f(w);
                b.into_iter().for_each(f);
            }
            Op::AttnPool { query, .. } => f(query),
            Op::Gate { gate, .. } => f(gate),
            #[cfg(feature = "decoder")]
            Op::Embed { table, .. } => f(table),
            #[cfg(feature = "decoder")]
            Op::RmsNorm { g, .. } => f(g),
            Op::Attention { .. } | Op::Route { .. } | Op::Moe { .. } | Op::Copy { .. } => {}
            #[cfg(feature = "decoder")]
            Op::Rope { .. }
            | Op::KvAttention { .. }
            | Op::SiluMul { .. }
            | Op::Axpy { .. }
            | Op::RouteTokens { .. }
            | Op::MoeTokens { .. }
            | Op::LastRow { .. }
            | Op::CopyCols { .. } => {}
        }
    }
}
