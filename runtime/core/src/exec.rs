//! Each op's semantics, written once over a small set of primitives.
//!
//! [`Primitives`] is what a backend implements: linear, the conv window,
//! GELU(-add), layer norm, axpy, the attention core and attention pooling,
//! gate logits, top-k routing, fill and copy, on ranges of its slots region
//! ([`Buf`]) with weights in its own form ([`Primitives::W`]). The CPU
//! implements them on slices of the caller's arena (`Session`), the CUDA
//! backend on device buffers. [`run_step`] executes one plan [`Step`] —
//! composite ops such as the expert mixture included — by calling them, so
//! an op's meaning lives here and nowhere else; backends differ only in
//! how they do the primitives and where expert weights come from
//! ([`ExpertSource`]). The shared conformance suite (`conformance` module,
//! cargo feature `conformance`: `primitive_conformance!`) checks every
//! primitive and composite step of every backend against the CPU reference
//! on the same inputs.

#[cfg(feature = "decoder")]
use taskpath_format::RouteMode;
use taskpath_format::{ExpertMask, GateFn, RopeStyle};

use crate::error::Error;
use crate::model::{ExpertTensors, TensorView};
use crate::plan::{Buf, ExpertScratch, Step};
use crate::session::RunStats;
use crate::trace::Tracer;

/// What the executor needs to know of a weight, in any backend's form.
pub trait WeightInfo {
    /// Logical rows.
    fn rows(&self) -> usize;
    /// Logical columns.
    fn cols(&self) -> usize;
    /// Rank of a low-rank pair, 0 for dense.
    fn rank(&self) -> usize;
    /// Weight format id.
    fn format(&self) -> u16;
    /// Bytes it reads.
    fn bytes(&self) -> usize;
    /// Global blob index.
    fn blob(&self) -> u32;
    /// Dense f32 (the case with its own conv kernel).
    fn is_dense_f32(&self) -> bool {
        self.format() == taskpath_format::records::format::F32 && self.rank() == 0
    }
}

impl WeightInfo for TensorView<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn format(&self) -> u16 {
        self.format
    }
    fn bytes(&self) -> usize {
        TensorView::bytes(self)
    }
    fn blob(&self) -> u32 {
        self.blob
    }
}

/// The input of a linear map: a task input or a slot range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// Task input `i` (position among the task's modalities).
    Input(usize),
    /// A range of the slots region.
    Slot(Buf),
}

/// The primitives a backend implements (see the module docs). Ranges are f32
/// elements of the backend's slots region; they lie inside it and the ranges
/// of one call never overlap unless a method says so (the plan proved both).
pub trait Primitives {
    /// The backend's error.
    type Error: From<Error>;
    /// A weight tensor as the backend addresses it.
    type W<'w>: WeightInfo + Copy;
    /// Whether [`Primitives::read_route`] is cheap (host memory): when not,
    /// the executor reads routes only for a tracer that wants costly events.
    const HOST_VISIBLE: bool;

    /// `y[rows, w.rows] = x[rows, w.cols] W^T + b`; `tmp` holds `[rows,
    /// rank]` for a low-rank `W`, `kernel` is scratch for quantized formats.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        w: &Self::W<'_>,
        b: Option<&Self::W<'_>>,
        x: &Operand,
        rows: usize,
        y: &Buf,
        tmp: &Buf,
        kernel: &Buf,
    ) -> core::result::Result<(), Self::Error>;
    /// `y += w` (w of `y.len()` values).
    fn add_weight(&mut self, w: &Self::W<'_>, y: &Buf) -> core::result::Result<(), Self::Error>;
    /// `y = LN(scale * x)` row-wise, rows of `g.cols()` values; `x == y` is in place.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &mut self,
        x: &Buf,
        y: &Buf,
        g: &Self::W<'_>,
        b: &Self::W<'_>,
        eps: f32,
        scale: f32,
    ) -> core::result::Result<(), Self::Error>;
    /// Multi-head self-attention core over `q, k, v` (`[tokens, d]`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: &Buf,
        k: &Buf,
        v: &Buf,
        out: &Buf,
        tokens: usize,
        heads: usize,
        scratch: &Buf,
    ) -> core::result::Result<(), Self::Error>;
    /// Attention pooling of `u` with a learned query into `out`.
    fn attn_pool(
        &mut self,
        u: &Buf,
        query: &Self::W<'_>,
        out: &Buf,
        scratch: &Buf,
    ) -> core::result::Result<(), Self::Error>;
    /// Gate logits of `p` against the rows of `gate` into `out`.
    fn gate_logits(
        &mut self,
        p: &Buf,
        gate: &Self::W<'_>,
        function: GateFn,
        out: &Buf,
    ) -> core::result::Result<(), Self::Error>;
    /// `y += a * x`.
    fn axpy(&mut self, a: f32, x: &Buf, y: &Buf) -> core::result::Result<(), Self::Error>;
    /// `y[..] = v`.
    fn fill(&mut self, y: &Buf, v: f32) -> core::result::Result<(), Self::Error>;
    /// `dst = src` (same length).
    fn copy(&mut self, src: &Buf, dst: &Buf) -> core::result::Result<(), Self::Error>;
    /// Top-`k` of `logits` within `mask`, softmax over the kept logits,
    /// encoded into `route` as `[count, k expert indices (f32), k gates]`.
    fn route(
        &mut self,
        logits: &Buf,
        mask: &ExpertMask,
        k: usize,
        route: &Buf,
    ) -> core::result::Result<(), Self::Error>;
    /// Decodes `route` (as [`Primitives::route`] wrote it) into `experts`
    /// and `gates` (each at least `k` long); returns the count.
    fn read_route(
        &mut self,
        route: &Buf,
        k: usize,
        experts: &mut [u32],
        gates: &mut [f32],
    ) -> core::result::Result<usize, Self::Error>;
    /// Conv1d, kernel 3, zero padding, at token `token` of `u` (`[l, d]`)
    /// for a dense f32 `w` (`[d_out, 3d]`): taps that read padding are skipped.
    fn conv3(
        &mut self,
        w: &Self::W<'_>,
        b: &Self::W<'_>,
        u: &Buf,
        width: usize,
        token: usize,
        out: &Buf,
    ) -> core::result::Result<(), Self::Error>;
    /// The conv window `[u_{t-1}; u_t; u_{t+1}]` of `u` (`[l, width]`), zero
    /// padded, into `window` (`3 * width`).
    fn conv_window(
        &mut self,
        u: &Buf,
        width: usize,
        token: usize,
        window: &Buf,
    ) -> core::result::Result<(), Self::Error>;
    /// `x = GELU(x) (+ residual)`.
    fn gelu_add(
        &mut self,
        x: &Buf,
        residual: Option<&Buf>,
    ) -> core::result::Result<(), Self::Error>;
    /// `out[r] = scale * table[ids[r]]` for the first `rows` token ids of
    /// task input `input`. Default: unsupported (a backend without the
    /// language-model primitives).
    fn embed(
        &mut self,
        _table: &Self::W<'_>,
        _input: usize,
        _rows: usize,
        _scale: f32,
        _out: &Buf,
    ) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
    /// RMS norm of `x` into `y` (`x == y` in place), rows of `g.cols()`.
    fn rms_norm(
        &mut self,
        _x: &Buf,
        _y: &Buf,
        _g: &Self::W<'_>,
        _eps: f32,
    ) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
    /// RoPE in place over rows of `heads * head_dim`, row `r` at `pos + r`.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &mut self,
        _x: &Buf,
        _heads: usize,
        _head_dim: usize,
        _rot_dims: usize,
        _rot_offset: usize,
        _theta: f32,
        _factor: f32,
        _style: RopeStyle,
        _pos: usize,
    ) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
    /// Appends `rows` keys and values at positions `pos..` of the caches,
    /// then causal grouped-query attention of the `rows` queries.
    #[allow(clippy::too_many_arguments)]
    fn kv_attention(
        &mut self,
        _q: &Buf,
        _k: &Buf,
        _v: &Buf,
        _out: &Buf,
        _caches: (&Buf, &Buf),
        _rows: usize,
        _pos: usize,
        _heads: (usize, usize),
        _dims: (usize, usize),
        _scale: f32,
        _scratch: &Buf,
    ) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
    /// `x = silu(x) * up`.
    fn silu_mul(&mut self, _x: &Buf, _up: &Buf) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
    /// `y[r] += a * sigmoid(gate[r]) * x[r]` over rows of `width`.
    fn axpy_gated(
        &mut self,
        _a: f32,
        _x: &Buf,
        _y: &Buf,
        _gate: &Buf,
        _width: usize,
    ) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
    /// Softmax over every logit, then the top-`k` probabilities within
    /// `mask`, unnormalised, encoded into `route` as [`Primitives::route`] does.
    fn route_softmax(
        &mut self,
        _logits: &Buf,
        _mask: &ExpertMask,
        _k: usize,
        _route: &Buf,
    ) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
    /// `y *= a`.
    fn scale(&mut self, _y: &Buf, _a: f32) -> core::result::Result<(), Self::Error> {
        Err(unsupported().into())
    }
}

/// Where a backend's expert weights come from during a run.
pub trait ExpertSource<P: Primitives + ?Sized> {
    /// The components the current `Moe` step will run, in order, before
    /// any runs: a device backend starts their uploads. Default: nothing.
    fn prepare(&mut self, _step: &Step, _selected: &[u32]) -> core::result::Result<(), P::Error> {
        Ok(())
    }
    /// Whether [`ExpertSource::run_component`] computes component `c` of
    /// expert `j` itself (a delegate that runs whole experts). Default: no.
    fn delegates(&self, _step: &Step, _j: usize, _c: usize) -> bool {
        false
    }
    /// Computes component `c` of expert `j` of the `Moe` step itself, from
    /// the conv window the executor gathered into the step's
    /// `scratch.window`; returns where its output (before the gate) is.
    /// Only called when [`ExpertSource::delegates`] says so.
    fn run_component(
        &mut self,
        _p: &mut P,
        _step: &Step,
        _j: usize,
        _c: usize,
    ) -> core::result::Result<Buf, P::Error> {
        Err(Error::InvalidProgram {
            op: 0,
            why: "this expert source delegates nothing",
        }
        .into())
    }
    /// The tensors of component `c` of expert `j` of the `Moe` step's group.
    fn component<T: Tracer + ?Sized>(
        &mut self,
        step: &Step,
        j: usize,
        c: usize,
        tracer: &mut T,
    ) -> core::result::Result<ExpertTensors<P::W<'_>>, P::Error>;
    /// The gate, up and down matrices of SwiGLU expert `j` of a
    /// `MoeTokens` step's group. Default: unsupported.
    fn swiglu<T: Tracer + ?Sized>(
        &mut self,
        _step: &Step,
        _j: usize,
        _tracer: &mut T,
    ) -> core::result::Result<[P::W<'_>; 3], P::Error> {
        Err(unsupported().into())
    }
}

fn unsupported() -> Error {
    Error::InvalidProgram {
        op: 0,
        why: "this backend has no kernel for a language-model primitive",
    }
}

/// What one run of a task takes besides its inputs: the token count and the
/// position of its first token (token-stream tasks; fixed-shape tasks
/// ignore both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunCtx {
    /// Tokens this run (`1..=capacity`).
    pub tokens: usize,
    /// Position of the first of them.
    pub pos: usize,
}

/// Scratch (f32 elements) of a `Moe` op: model width `d`, FFN width `h`, the
/// largest factor rank `r` and kernel scratch bytes `q` of its experts. The
/// packer plans exactly this.
pub fn moe_scratch(d: usize, h: usize, r: usize, q: usize) -> usize {
    5 * d + h + r + q.div_ceil(4)
}

/// Most experts a routing op keeps (the format's `MAX_TOP_K`).
pub const MAX_TOP_K: usize = 64;

fn bad(op: u32, why: &'static str) -> Error {
    Error::InvalidProgram { op, why }
}

/// Counts reads into the tracer and the run's statistics.
pub struct Meter<'t, T: ?Sized> {
    /// The tracer.
    pub tracer: &'t mut T,
    /// The statistics.
    pub stats: &'t mut RunStats,
}

impl<T: ?Sized> core::fmt::Debug for Meter<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Meter").field("stats", &self.stats).finish()
    }
}

impl<T: Tracer + ?Sized> Meter<'_, T> {
    fn read(&mut self, t: &impl WeightInfo) {
        self.tracer.blob_read(t.blob(), t.bytes());
        self.stats.weight_bytes += t.bytes();
    }
    /// `rows` rows of `t` (an embedding lookup reads only its tokens' rows).
    #[cfg(feature = "decoder")]
    fn read_rows(&mut self, t: &impl WeightInfo, rows: usize) {
        let bytes = (t.bytes() / t.rows().max(1))
            .saturating_mul(rows)
            .min(t.bytes());
        self.tracer.blob_read(t.blob(), bytes);
        self.stats.weight_bytes += bytes;
    }
}

/// Plan tensor `x` of step `i`'s table.
fn tensor_at<W, E: From<Error>>(tensors: &[W], i: u32, x: crate::plan::Tix) -> Result<&W, E> {
    tensors
        .get(usize::from(x.0))
        .ok_or_else(|| bad(i, "tensor table").into())
}

/// Executes plan step `i` (`step`) with primitives `p`; `tensors` is the
/// backend's form of the plan's tensor table, `experts` its expert source.
pub fn run_step<'w, P: Primitives + ?Sized, X: ExpertSource<P> + ?Sized, T: Tracer + ?Sized>(
    i: u32,
    step: &Step,
    ctx: &RunCtx,
    tensors: &[P::W<'w>],
    p: &mut P,
    experts: &mut X,
    m: &mut Meter<'_, T>,
) -> core::result::Result<(), P::Error> {
    let t = |x| tensor_at::<_, P::Error>(tensors, i, x);
    match step {
        Step::Nop => return Err(bad(i, "empty plan step").into()),
        Step::Encode {
            input,
            out,
            w,
            b,
            pos,
            tmp,
            tokens,
        } => {
            let (w, b, pos) = (t(*w)?, t(*b)?, t(*pos)?);
            [w, b, pos].into_iter().for_each(|x| m.read(x));
            p.linear(
                w,
                Some(b),
                &Operand::Input(*input),
                *tokens,
                out,
                tmp,
                &Buf::default(),
            )?;
            p.add_weight(pos, out)?;
        }
        Step::LayerNorm {
            x,
            y,
            g,
            b,
            scale,
            eps,
        } => {
            let (g, b) = (t(*g)?, t(*b)?);
            m.read(g);
            m.read(b);
            p.layer_norm(x, y, g, b, *eps, *scale)?;
        }
        Step::Linear {
            x,
            y,
            w,
            b,
            rows,
            tmp,
            kernel,
            stream,
        } => {
            let w = t(*w)?;
            m.read(w);
            let b = match b {
                Some(b) => {
                    let b = t(*b)?;
                    m.read(b);
                    Some(b)
                }
                None => None,
            };
            let rows = if *stream { ctx.tokens } else { *rows };
            let (xs, ys) = (x.prefix(rows * w.cols()), y.prefix(rows * w.rows()));
            let tmp = tmp.prefix(tmp.len().min(rows * w.rank()));
            p.linear(w, b, &Operand::Slot(xs), rows, &ys, &tmp, kernel)?;
        }
        Step::Attention {
            q,
            k,
            v,
            out,
            tokens,
            heads,
            scratch,
        } => p.attention(q, k, v, out, *tokens, *heads, scratch)?,
        Step::AttnPool {
            u,
            query,
            out,
            scratch,
        } => {
            let query = t(*query)?;
            m.read(query);
            p.attn_pool(u, query, out, scratch)?;
        }
        Step::Gate {
            p: pooled,
            gate,
            logits,
            accumulate,
            scale,
            tmp,
            function,
        } => {
            let gate = t(*gate)?;
            m.read(gate);
            p.gate_logits(pooled, gate, *function, tmp)?;
            if !accumulate {
                p.fill(logits, 0.0)?;
            }
            p.axpy(*scale, tmp, logits)?;
        }
        Step::Route {
            logits,
            router,
            top_k,
            mask,
            route,
        } => {
            p.route(logits, mask, *top_k, route)?;
            if P::HOST_VISIBLE || m.tracer.wants_costly_events() {
                let mut idx = [0u32; MAX_TOP_K];
                let mut gate = [0f32; MAX_TOP_K];
                let k = (*top_k).min(MAX_TOP_K);
                let got = p.read_route(route, k, &mut idx[..k], &mut gate[..k])?;
                m.tracer.route(*router, &idx[..got], &gate[..got]);
            }
        }
        Step::Moe { .. } => moe(i, step, p, experts, m)?,
        Step::Copy { src, dst } => p.copy(src, dst)?,
        #[cfg(feature = "decoder")]
        _ => run_token_step(i, step, ctx, tensors, p, experts, m)?,
    }
    Ok(())
}

/// The token-stream (decoder) steps of [`run_step`]: a build without the
/// `decoder` feature leaves them out (firmware flash), and its plans refuse
/// their ops.
#[cfg(feature = "decoder")]
fn run_token_step<'w, P: Primitives + ?Sized, X: ExpertSource<P> + ?Sized, T: Tracer + ?Sized>(
    i: u32,
    step: &Step,
    ctx: &RunCtx,
    tensors: &[P::W<'w>],
    p: &mut P,
    experts: &mut X,
    m: &mut Meter<'_, T>,
) -> core::result::Result<(), P::Error> {
    let t = |x| tensor_at::<_, P::Error>(tensors, i, x);
    match step {
        Step::Embed {
            input,
            out,
            table,
            width,
            scale,
        } => {
            let table = t(*table)?;
            m.read_rows(table, ctx.tokens);
            p.embed(
                table,
                *input,
                ctx.tokens,
                *scale,
                &out.prefix(ctx.tokens * width),
            )?;
        }
        Step::RmsNorm {
            x,
            y,
            g,
            width,
            eps,
        } => {
            let g = t(*g)?;
            m.read(g);
            let n = ctx.tokens * width;
            p.rms_norm(&x.prefix(n), &y.prefix(n), g, *eps)?;
        }
        Step::Rope {
            x,
            heads,
            head_dim,
            rot_dims,
            rot_offset,
            theta,
            factor,
            style,
        } => p.rope(
            &x.prefix(ctx.tokens * heads * head_dim),
            *heads,
            *head_dim,
            *rot_dims,
            *rot_offset,
            *theta,
            *factor,
            *style,
            ctx.pos,
        )?,
        Step::KvAttention {
            q,
            k,
            v,
            out,
            k_cache,
            v_cache,
            heads,
            kv_heads,
            head_dim,
            v_dim,
            context,
            scale,
            scratch,
        } => {
            let n = ctx.tokens;
            if ctx.pos + n > *context {
                return Err(bad(i, "the run's tokens pass the end of the context").into());
            }
            p.kv_attention(
                &q.prefix(n * heads * head_dim),
                &k.prefix(n * kv_heads * head_dim),
                &v.prefix(n * kv_heads * v_dim),
                &out.prefix(n * heads * v_dim),
                (k_cache, v_cache),
                n,
                ctx.pos,
                (*heads, *kv_heads),
                (*head_dim, *v_dim),
                *scale,
                scratch,
            )?;
        }
        Step::SiluMul { x, up, width } => {
            let n = ctx.tokens * width;
            p.silu_mul(&x.prefix(n), &up.prefix(n))?;
        }
        Step::Axpy {
            x,
            y,
            width,
            a,
            gate,
        } => {
            let n = ctx.tokens * width;
            match gate {
                None => p.axpy(*a, &x.prefix(n), &y.prefix(n))?,
                Some(g) => p.axpy_gated(
                    *a,
                    &x.prefix(n),
                    &y.prefix(n),
                    &g.prefix(ctx.tokens),
                    *width,
                )?,
            }
        }
        Step::RouteTokens {
            logits,
            experts: e,
            router,
            top_k,
            mask,
            route,
            mode,
            scale,
        } => {
            let k = (*top_k).min(MAX_TOP_K);
            let stride = 1 + 2 * top_k;
            for r in 0..ctx.tokens {
                let (lr, rr) = (
                    Buf::at(logits.start + r * e, *e),
                    Buf::at(route.start + r * stride, stride),
                );
                match mode {
                    RouteMode::TopKSoftmax => p.route(&lr, mask, *top_k, &rr)?,
                    RouteMode::SoftmaxTopK => p.route_softmax(&lr, mask, *top_k, &rr)?,
                }
                if *scale != 1.0 {
                    p.scale(&Buf::at(rr.start + 1 + top_k, *top_k), *scale)?;
                }
                if P::HOST_VISIBLE || m.tracer.wants_costly_events() {
                    let mut idx = [0u32; MAX_TOP_K];
                    let mut gate = [0f32; MAX_TOP_K];
                    let got = p.read_route(&rr, k, &mut idx[..k], &mut gate[..k])?;
                    m.tracer.route(*router, &idx[..got], &gate[..got]);
                }
            }
        }
        Step::MoeTokens { .. } => moe_tokens(i, step, ctx, p, experts, m)?,
        Step::CopyCols {
            src,
            dst,
            src_width,
            src_off,
            src_step,
            dst_width,
            dst_off,
            dst_step,
            width,
            count,
        } => {
            for r in 0..ctx.tokens {
                for b in 0..*count {
                    let s = Buf::at(src.start + r * src_width + src_off + b * src_step, *width);
                    let d = Buf::at(dst.start + r * dst_width + dst_off + b * dst_step, *width);
                    p.copy(&s, &d)?;
                }
            }
        }
        Step::LastRow {
            x,
            out,
            width,
            scale,
        } => {
            let last = Buf::at(x.start + (ctx.tokens.max(1) - 1) * width, *width);
            p.fill(out, 0.0)?;
            p.axpy(*scale, &last, out)?;
        }
        _ => return Err(bad(i, "not a token-stream step").into()),
    }
    Ok(())
}

#[cfg(feature = "decoder")]
use crate::plan::{MOE_BATCH, MOE_TOKENS_MAX_TOP_K as GATHER_TOP_K};

/// The per-token expert mixture of SwiGLU experts:
/// `out[r] = sum_j g_j down(silu(gate x_r) * up x_r)`, summed in expert
/// order. The run's tokens are taken `batch` at a time; per expert on the
/// path, the tokens routed to it are gathered, pass through its three
/// matrices as one batch (each weight read once per batch), and are
/// scattered back with their gates.
#[cfg(feature = "decoder")]
fn moe_tokens<P: Primitives + ?Sized, X: ExpertSource<P> + ?Sized, T: Tracer + ?Sized>(
    i: u32,
    step: &Step,
    ctx: &RunCtx,
    p: &mut P,
    experts: &mut X,
    m: &mut Meter<'_, T>,
) -> core::result::Result<(), P::Error> {
    let Step::MoeTokens {
        x,
        route,
        top_k,
        mask,
        width: d,
        out,
        scratch: s,
        ..
    } = step
    else {
        return Err(bad(i, "not an expert step").into());
    };
    let d = *d;
    let k = *top_k;
    if k > GATHER_TOP_K {
        return Err(bad(i, "MoeTokens keeps at most 8 experts per token").into());
    }
    let stride = 1 + 2 * k;
    let batch = s.batch.clamp(1, MOE_BATCH);
    let mut idx = [[0u32; GATHER_TOP_K]; MOE_BATCH];
    let mut gate = [[0f32; GATHER_TOP_K]; MOE_BATCH];
    let mut got = [0usize; MOE_BATCH];
    let mut first = 0;
    while first < ctx.tokens {
        let nb = batch.min(ctx.tokens - first);
        for t in 0..nb {
            let r = first + t;
            let rr = Buf::at(route.start + r * stride, stride);
            let n = p.read_route(&rr, k, &mut idx[t][..k], &mut gate[t][..k])?;
            if n > k {
                return Err(bad(i, "route slot holds more than top_k experts").into());
            }
            if idx[t][..n].iter().any(|&e| !mask.contains(e as usize)) {
                return Err(bad(i, "route names an expert outside the task's path").into());
            }
            got[t] = n;
        }
        p.fill(&Buf::at(out.start + first * d, nb * d), 0.0)?;
        for e in mask.iter() {
            let mut sel = [(0usize, 0f32); MOE_BATCH];
            let mut n = 0;
            for t in 0..nb {
                if let Some(j) = idx[t][..got[t]].iter().position(|&x| x as usize == e) {
                    sel[n] = (t, gate[t][j]);
                    n += 1;
                }
            }
            if n == 0 {
                continue;
            }
            let [wg, wu, wd] = experts.swiglu(step, e, &mut *m.tracer)?;
            for w in [&wg, &wu, &wd] {
                m.read(w);
            }
            let h = wg.rows();
            for (j, &(t, _)) in sel[..n].iter().enumerate() {
                p.copy(
                    &Buf::at(x.start + (first + t) * d, d),
                    &Buf::at(s.x.start + j * d, d),
                )?;
            }
            let (xb, gb, ub, ob) = (
                s.x.prefix(n * d),
                s.gate.prefix(n * h),
                s.up.prefix(n * h),
                s.out.prefix(n * d),
            );
            let none = Buf::default();
            p.linear(&wg, None, &Operand::Slot(xb), n, &gb, &none, &s.kernel)?;
            p.linear(&wu, None, &Operand::Slot(xb), n, &ub, &none, &s.kernel)?;
            p.silu_mul(&gb, &ub)?;
            p.linear(&wd, None, &Operand::Slot(gb), n, &ob, &none, &s.kernel)?;
            for (j, &(t, g)) in sel[..n].iter().enumerate() {
                let o = Buf::at(out.start + (first + t) * d, d);
                p.axpy(g, &Buf::at(ob.start + j * d, d), &o)?;
            }
            m.stats.expert_components += 1;
        }
        first += nb;
    }
    Ok(())
}

/// The expert mixture: `out = sum_j g_j sum_c E_{j,c}(u)` over the experts
/// the route names (each checked against the step's mask).
fn moe<P: Primitives + ?Sized, X: ExpertSource<P> + ?Sized, T: Tracer + ?Sized>(
    i: u32,
    step: &Step,
    p: &mut P,
    experts: &mut X,
    m: &mut Meter<'_, T>,
) -> core::result::Result<(), P::Error> {
    let Step::Moe {
        u,
        route,
        top_k,
        mask,
        components,
        token,
        width,
        out,
        scratch,
        eps,
        ..
    } = step
    else {
        return Err(bad(i, "not an expert step").into());
    };
    let k = (*top_k).min(MAX_TOP_K);
    let mut idx = [0u32; MAX_TOP_K];
    let mut gate = [0f32; MAX_TOP_K];
    let got = p.read_route(route, k, &mut idx[..k], &mut gate[..k])?;
    if got > k {
        return Err(bad(i, "route slot holds more than top_k experts").into());
    }
    for &e in &idx[..got] {
        if !mask.contains(e as usize) {
            return Err(bad(i, "route names an expert outside the task's path").into());
        }
    }
    experts.prepare(step, &idx[..got])?;
    p.fill(out, 0.0)?;
    for (&e, &g) in idx[..got].iter().zip(&gate[..got]) {
        for c in 0..*components {
            let y = if experts.delegates(step, e as usize, c) {
                p.conv_window(u, *width, *token, &scratch.window)?;
                experts.run_component(p, step, e as usize, c)?
            } else {
                let w = experts.component(step, e as usize, c, &mut *m.tracer)?;
                for x in w.all() {
                    m.read(x);
                }
                conv_ffn(p, &w, u, *width, *token, scratch, *eps)?
            };
            m.stats.expert_components += 1;
            p.axpy(g, &y, out)?;
        }
    }
    Ok(())
}

/// Decodes a route slot `[count, k expert indices (f32), k gates]` as
/// [`Primitives::route`] writes it into `experts` and `gates`; returns the
/// count, or `None` when it is not in `0..=k` (or the slot is shorter than
/// `1 + 2k`). NaN and negative indices name no expert (`u32::MAX`): a cast
/// would make them expert 0. Every backend's `read_route` ends here.
pub fn decode_route(
    route: &[f32],
    k: usize,
    experts: &mut [u32],
    gates: &mut [f32],
) -> Option<usize> {
    let got = *route.first()?;
    if !(got >= 0.0 && got <= k as f32) || route.len() < 1 + 2 * k {
        return None;
    }
    let got = got as usize;
    for j in 0..got {
        let e = route[1 + j];
        *experts.get_mut(j)? = if e >= 0.0 { e as u32 } else { u32::MAX };
        *gates.get_mut(j)? = route[1 + k + j];
    }
    Some(got)
}

/// FLAME's expert component `fc2(GELU(fc1(LN(u_t + GELU(conv(u)_t)))))` at
/// token `token` of `u` (`[l, d]`), in the pieces of `s`; returns where the
/// output (`[d]`) is.
pub fn conv_ffn<P: Primitives + ?Sized>(
    p: &mut P,
    w: &ExpertTensors<P::W<'_>>,
    u: &Buf,
    d: usize,
    token: usize,
    s: &ExpertScratch,
    eps: f32,
) -> core::result::Result<Buf, P::Error> {
    let ut = &Buf::at(u.start + token * d, d);
    let h = w.fc1_w.rows();
    let hbuf = s.h.prefix(d);
    let mid = s.mid.prefix(h);
    let tmp = s
        .tmp
        .prefix(w.conv_w.rank().max(w.fc1_w.rank()).max(w.fc2_w.rank()));
    if w.conv_w.is_dense_f32() {
        // Dense f32: skip the zero-padded taps (the exact summation order).
        p.conv3(&w.conv_w, &w.conv_b, u, d, token, &hbuf)?;
    } else {
        p.conv_window(u, d, token, &s.window)?;
        p.linear(
            &w.conv_w,
            Some(&w.conv_b),
            &Operand::Slot(s.window),
            1,
            &hbuf,
            &tmp,
            &s.kernel,
        )?;
    }
    p.gelu_add(&hbuf, Some(ut))?;
    p.layer_norm(&hbuf, &hbuf, &w.ln_g, &w.ln_b, eps, 1.0)?;
    p.linear(
        &w.fc1_w,
        Some(&w.fc1_b),
        &Operand::Slot(hbuf),
        1,
        &mid,
        &tmp,
        &s.kernel,
    )?;
    p.gelu_add(&mid, None)?;
    let obuf = s.out.prefix(d);
    p.linear(
        &w.fc2_w,
        Some(&w.fc2_b),
        &Operand::Slot(mid),
        1,
        &obuf,
        &tmp,
        &s.kernel,
    )?;
    Ok(obuf)
}
