//! The CPU backend's primitives ([`crate::exec::Primitives`]) on slices of
//! a task's slots region: thin calls into taskpath-cpu's kernels. The
//! reference every other backend's primitives are checked against.

use taskpath_cpu::f32 as k;
use taskpath_cpu::qmatvec::Kernels;
use taskpath_format::{ExpertMask, GateFn, RopeStyle, WeightFormat};

use crate::error::{Error, Result};
use crate::exec::{Operand, Primitives};
use crate::model::TensorView;
use crate::plan::Buf;

fn bad(op: u32, why: &'static str) -> Error {
    Error::InvalidProgram { op, why }
}

/// Splits `arena` into disjoint mutable pieces for `ranges`; `None` when two
/// non-empty ranges overlap or one leaves the arena. Empty ranges are free.
pub(crate) fn carve<'s, const N: usize>(
    arena: &'s mut [f32],
    ranges: [&Buf; N],
) -> Option<[&'s mut [f32]; N]> {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| ranges[i].start);
    let mut out: [&'s mut [f32]; N] = core::array::from_fn(|_| <&mut [f32]>::default());
    let mut rest = arena;
    let mut pos = 0usize;
    for &i in &order {
        let r = ranges[i];
        if r.is_empty() {
            continue;
        }
        if r.start < pos || r.end > pos + rest.len() {
            return None;
        }
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(r.start - pos);
        let (mine, tail) = tail.split_at_mut(r.end - r.start);
        out[i] = mine;
        rest = tail;
        pos = r.end;
    }
    Some(out)
}

/// The CPU primitives: kernels of taskpath-cpu on slices of a slots region.
#[derive(Debug)]
pub struct CpuPrims<'s, 'i> {
    slots: &'s mut [f32],
    inputs: &'i [&'i [f32]],
    tokens: &'i [u32],
    kernels: &'s Kernels,
    #[cfg(feature = "std")]
    pool: Option<&'s crate::pool::ThreadPool>,
}

impl<'s, 'i> CpuPrims<'s, 'i> {
    /// Primitives over `slots` (a task's slots region), reading task inputs
    /// from `inputs` and quantized weights with `kernels`.
    pub fn new(slots: &'s mut [f32], inputs: &'i [&'i [f32]], kernels: &'s Kernels) -> Self {
        Self {
            slots,
            inputs,
            tokens: &[],
            kernels,
            #[cfg(feature = "std")]
            pool: None,
        }
    }
    /// Splits matrix products across `pool`'s threads.
    #[cfg(feature = "std")]
    pub fn with_pool(mut self, pool: Option<&'s crate::pool::ThreadPool>) -> Self {
        self.pool = pool.filter(|p| p.threads() > 1);
        self
    }
    /// The token ids an `Embed` reads (a token-stream task's run).
    pub fn with_tokens(mut self, tokens: &'i [u32]) -> Self {
        self.tokens = tokens;
        self
    }
    /// The slots region.
    pub fn slots(&self) -> &[f32] {
        self.slots
    }
    /// The slots region, to write (an executor outside the primitives, such
    /// as a delegate's results).
    pub fn slots_mut(&mut self) -> &mut [f32] {
        self.slots
    }
}

const OVERLAP: Error = Error::InvalidProgram {
    op: 0,
    why: "slots overlap or leave the arena",
};

impl CpuPrims<'_, '_> {
    fn carve<const N: usize>(&mut self, ranges: [&Buf; N]) -> Result<[&mut [f32]; N]> {
        carve(self.slots, ranges).ok_or(OVERLAP)
    }
}

impl Primitives for CpuPrims<'_, '_> {
    type Error = Error;
    type W<'w> = TensorView<'w>;
    const HOST_VISIBLE: bool = true;

    fn linear(
        &mut self,
        w: &TensorView<'_>,
        b: Option<&TensorView<'_>>,
        x: &Operand,
        rows: usize,
        y: &Buf,
        tmp: &Buf,
        kernel: &Buf,
    ) -> Result<()> {
        let kernels = self.kernels;
        let b = b.map(|b| b.a);
        #[cfg(feature = "std")]
        if let (Some(pool), Operand::Slot(xr)) = (self.pool, x) {
            if !w.is_low_rank() && tmp.is_empty() {
                let [x, y, q] = self.carve([xr, y, kernel])?;
                return crate::pool::linear_parallel(pool, kernels, w, x, b, rows, q, y)
                    .ok_or(bad(0, "linear shapes or kernel scratch"));
            }
        }
        let done = match x {
            Operand::Input(i) => {
                let x = *self.inputs.get(*i).ok_or(bad(0, "input"))?;
                let [y, tmp, q] = self.carve([y, tmp, kernel])?;
                linear(kernels, w, x, b, rows, tmp, bytemuck::cast_slice_mut(q), y)
            }
            Operand::Slot(xr) => {
                let [x, y, tmp, q] = self.carve([xr, y, tmp, kernel])?;
                linear(kernels, w, x, b, rows, tmp, bytemuck::cast_slice_mut(q), y)
            }
        };
        done.ok_or(bad(0, "linear shapes or kernel scratch"))
    }

    fn add_weight(&mut self, w: &TensorView<'_>, y: &Buf) -> Result<()> {
        let [y] = self.carve([y])?;
        if w.a.len() != y.len() {
            return Err(bad(0, "add shapes"));
        }
        k::add(w.a, y);
        Ok(())
    }

    fn layer_norm(
        &mut self,
        x: &Buf,
        y: &Buf,
        g: &TensorView<'_>,
        b: &TensorView<'_>,
        eps: f32,
        scale: f32,
    ) -> Result<()> {
        if x == y {
            let [x] = self.carve([x])?;
            k::layernorm_inplace(x, g.a, b.a, eps, scale);
        } else {
            let [xs, ys] = self.carve([x, y])?;
            k::layernorm(xs, g.a, b.a, eps, scale, ys);
        }
        Ok(())
    }

    fn attention(
        &mut self,
        q: &Buf,
        kr: &Buf,
        v: &Buf,
        out: &Buf,
        tokens: usize,
        heads: usize,
        scratch: &Buf,
    ) -> Result<()> {
        #[cfg(feature = "gelu")]
        let kernels = self.kernels;
        let [q, kr, v, out, s] = self.carve([q, kr, v, out, scratch])?;
        // The vector softmax comes with the `gelu` kernels (its `expf`
        // lanes); without them the scalar one, same bits, less flash (a
        // closure here cost the f32-only firmware 348 B).
        #[cfg(feature = "gelu")]
        k::attention(q, kr, v, tokens, heads, s, out, |x| kernels.softmax_f32(x));
        #[cfg(not(feature = "gelu"))]
        k::attention(q, kr, v, tokens, heads, s, out, k::softmax);
        Ok(())
    }

    fn attn_pool(
        &mut self,
        u: &Buf,
        query: &TensorView<'_>,
        out: &Buf,
        scratch: &Buf,
    ) -> Result<()> {
        #[cfg(feature = "gelu")]
        let kernels = self.kernels;
        let [u, out, s] = self.carve([u, out, scratch])?;
        #[cfg(feature = "gelu")]
        k::attention_pool(u, query.a, s, out, |x| kernels.softmax_f32(x));
        #[cfg(not(feature = "gelu"))]
        k::attention_pool(u, query.a, s, out, k::softmax);
        Ok(())
    }

    fn gate_logits(
        &mut self,
        p: &Buf,
        gate: &TensorView<'_>,
        function: GateFn,
        out: &Buf,
    ) -> Result<()> {
        let [p, out] = self.carve([p, out])?;
        match function {
            GateFn::Dot => k::dot_logits(p, gate.a, out),
            GateFn::Laplace => k::laplace_logits(p, gate.a, out),
        }
        Ok(())
    }

    fn axpy(&mut self, a: f32, x: &Buf, y: &Buf) -> Result<()> {
        let [x, y] = self.carve([x, y])?;
        k::axpy(a, x, y);
        Ok(())
    }

    fn fill(&mut self, y: &Buf, v: f32) -> Result<()> {
        let [y] = self.carve([y])?;
        y.fill(v);
        Ok(())
    }

    fn copy(&mut self, src: &Buf, dst: &Buf) -> Result<()> {
        let [s, d] = self.carve([src, dst])?;
        d.copy_from_slice(s);
        Ok(())
    }

    fn route(&mut self, logits: &Buf, mask: &ExpertMask, kk: usize, route: &Buf) -> Result<()> {
        let mut idx = [0u32; crate::exec::MAX_TOP_K];
        let mut gate = [0f32; crate::exec::MAX_TOP_K];
        let kk = kk.min(idx.len());
        let [logits, route] = self.carve([logits, route])?;
        let got = k::top_k_masked(logits, &mask.0, kk, &mut idx[..kk], &mut gate[..kk]);
        route[0] = got as f32;
        for (j, (&e, &g)) in idx[..got].iter().zip(&gate[..got]).enumerate() {
            route[1 + j] = e as f32;
            route[1 + kk + j] = g;
        }
        Ok(())
    }

    fn read_route(
        &mut self,
        route: &Buf,
        kk: usize,
        experts: &mut [u32],
        gates: &mut [f32],
    ) -> Result<usize> {
        let [route] = self.carve([route])?;
        crate::exec::decode_route(route, kk, experts, gates)
            .ok_or(bad(0, "route slot holds more than top_k experts"))
    }

    fn conv3(
        &mut self,
        w: &TensorView<'_>,
        b: &TensorView<'_>,
        u: &Buf,
        width: usize,
        token: usize,
        out: &Buf,
    ) -> Result<()> {
        let kernels = self.kernels;
        let [u, out] = self.carve([u, out])?;
        kernels.conv3_f32(w.a, b.a, u, width, token, out);
        Ok(())
    }

    fn conv_window(&mut self, u: &Buf, width: usize, token: usize, window: &Buf) -> Result<()> {
        let [u, cat] = self.carve([u, window])?;
        let l = u.len() / width.max(1);
        for (tap, dst) in cat.chunks_exact_mut(width).enumerate() {
            match (token + tap).checked_sub(1).filter(|&s| s < l) {
                Some(s) => dst.copy_from_slice(&u[s * width..(s + 1) * width]),
                None => dst.fill(0.0),
            }
        }
        Ok(())
    }

    fn gelu_add(&mut self, x: &Buf, residual: Option<&Buf>) -> Result<()> {
        // The table's GELU (vectorised with taskpath-cpu's `gelu` feature)
        // has the bits of `k::gelu` then `k::add(r, x)`.
        let kernels = self.kernels;
        match residual {
            None => {
                let [x] = self.carve([x])?;
                kernels.gelu_f32(x, None);
            }
            Some(r) => {
                let [x, r] = self.carve([x, r])?;
                if x.len() != r.len() {
                    return Err(bad(0, "add shapes"));
                }
                kernels.gelu_f32(x, Some(r));
            }
        }
        Ok(())
    }

    fn embed(
        &mut self,
        table: &TensorView<'_>,
        _input: usize,
        rows: usize,
        scale: f32,
        out: &Buf,
    ) -> Result<()> {
        let (vocab, d) = (table.rows, table.cols);
        let ids = self
            .tokens
            .get(..rows)
            .ok_or(bad(0, "fewer token ids than rows"))?;
        let [out] = self.carve([out])?;
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(d)) {
            let r = id as usize;
            if r >= vocab {
                return Err(Error::TokenOutOfRange { token: id, vocab });
            }
            if table.is_f32() {
                o.copy_from_slice(&table.a[r * d..(r + 1) * d]);
            } else {
                let fmt = WeightFormat::from_u16(table.format).ok_or(bad(0, "embedding format"))?;
                taskpath_format::weight::dequantize_row(fmt, vocab, d, table.raw_a, r, o)
                    .map_err(|_| bad(0, "embedding table bytes"))?;
            }
            if scale != 1.0 {
                o.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(())
    }

    fn rms_norm(&mut self, x: &Buf, y: &Buf, g: &TensorView<'_>, eps: f32) -> Result<()> {
        if x == y {
            let [x] = self.carve([x])?;
            k::rmsnorm_inplace(x, g.a, eps);
        } else {
            let [xs, ys] = self.carve([x, y])?;
            k::rmsnorm(xs, g.a, eps, ys);
        }
        Ok(())
    }

    fn rope(
        &mut self,
        x: &Buf,
        heads: usize,
        head_dim: usize,
        rot_dims: usize,
        rot_offset: usize,
        theta: f32,
        factor: f32,
        style: RopeStyle,
        pos: usize,
    ) -> Result<()> {
        let [x] = self.carve([x])?;
        if rot_offset + rot_dims > head_dim {
            return Err(bad(0, "rope dimensions beyond the head"));
        }
        let row = heads * head_dim;
        for (r, xr) in x.chunks_exact_mut(row.max(1)).enumerate() {
            k::rope(
                xr,
                head_dim,
                rot_offset,
                rot_dims,
                pos + r,
                theta,
                factor,
                style == RopeStyle::Interleaved,
            );
        }
        Ok(())
    }

    fn kv_attention(
        &mut self,
        q: &Buf,
        kb: &Buf,
        vb: &Buf,
        out: &Buf,
        (kc, vc): (&Buf, &Buf),
        rows: usize,
        pos: usize,
        (heads, kv_heads): (usize, usize),
        (hd, vd): (usize, usize),
        scale: f32,
        scratch: &Buf,
    ) -> Result<()> {
        #[cfg(feature = "std")]
        let pool = self.pool;
        let kernels = self.kernels;
        let [q, kn, vn, out, kc, vc, sc] = self.carve([q, kb, vb, out, kc, vc, scratch])?;
        let (kw, vw) = (kv_heads * hd, kv_heads * vd);
        if (pos + rows) * kw > kc.len() || (pos + rows) * vw > vc.len() {
            return Err(bad(0, "the run's tokens pass the end of the KV cache"));
        }
        kc[pos * kw..(pos + rows) * kw].copy_from_slice(&kn[..rows * kw]);
        vc[pos * vw..(pos + rows) * vw].copy_from_slice(&vn[..rows * vw]);
        let group = heads / kv_heads.max(1);
        let (q, kc, vc) = (&*q, &*kc, &*vc);
        // Query heads of the run's tokens, (token, head) in order: unit u
        // writes out[u vd..(u + 1) vd].
        let heads_of = |lo: usize, hi: usize, out: &mut [f32], sc: &mut [f32]| {
            for (u, oh) in (lo..hi).zip(out.chunks_exact_mut(vd)) {
                let (r, h) = (u / heads, u % heads);
                let kvh = h / group.max(1);
                let len = pos + r + 1;
                if sc.len() < len {
                    return false;
                }
                let qh = &q[u * hd..(u + 1) * hd];
                k::attend(
                    qh,
                    &kc[kvh * hd..],
                    kw,
                    &vc[kvh * vd..],
                    vw,
                    len,
                    scale,
                    sc,
                    oh,
                    |x| kernels.softmax_f32(x),
                );
            }
            true
        };
        let units = rows * heads;
        let out = out
            .get_mut(..units * vd)
            .ok_or(bad(0, "attention output"))?;
        #[cfg(feature = "std")]
        if let Some(pool) = pool {
            // Worth a hand-off only with enough keys to read.
            if units >= 2 * pool.threads() && units * (pos + rows) * hd >= 1 << 15 {
                let ok =
                    crate::pool::split(pool, units, out, |lo, hi| (hi - lo) * vd, sc, heads_of);
                return if ok {
                    Ok(())
                } else {
                    Err(bad(0, "attention scratch"))
                };
            }
        }
        if heads_of(0, units, out, sc) {
            Ok(())
        } else {
            Err(bad(0, "attention scratch"))
        }
    }

    fn silu_mul(&mut self, x: &Buf, up: &Buf) -> Result<()> {
        let [x, up] = self.carve([x, up])?;
        k::silu_mul(x, up);
        Ok(())
    }

    fn axpy_gated(&mut self, a: f32, x: &Buf, y: &Buf, gate: &Buf, width: usize) -> Result<()> {
        let [x, y, g] = self.carve([x, y, gate])?;
        for ((xr, yr), &gl) in x
            .chunks_exact(width)
            .zip(y.chunks_exact_mut(width))
            .zip(g.iter())
        {
            k::axpy(a * k::sigmoid(gl), xr, yr);
        }
        Ok(())
    }

    fn route_softmax(
        &mut self,
        logits: &Buf,
        mask: &ExpertMask,
        kk: usize,
        route: &Buf,
    ) -> Result<()> {
        let mut idx = [0u32; crate::exec::MAX_TOP_K];
        let mut gate = [0f32; crate::exec::MAX_TOP_K];
        let kk = kk.min(idx.len());
        let [logits, route] = self.carve([logits, route])?;
        // The choice is the logits' top-k; the gates are their shares of a
        // softmax over every expert.
        let got = k::top_k_masked(logits, &mask.0, kk, &mut idx[..kk], &mut gate[..kk]);
        let mut probs = [0f32; 256];
        let n = logits.len().min(probs.len());
        probs[..n].copy_from_slice(&logits[..n]);
        k::softmax(&mut probs[..n]);
        route[0] = got as f32;
        for (j, &e) in idx[..got].iter().enumerate() {
            route[1 + j] = e as f32;
            route[1 + kk + j] = probs[e as usize];
        }
        Ok(())
    }

    fn scale(&mut self, y: &Buf, a: f32) -> Result<()> {
        let [y] = self.carve([y])?;
        y.iter_mut().for_each(|v| *v *= a);
        Ok(())
    }
}

/// `y = W x + b` over `rows` rows, through `tmp` for a low-rank `W = U V`
/// and `q` as kernel scratch for quantized formats. `None` when a buffer is
/// too small or no kernel serves the format (both ruled out at session creation).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    kernels: &Kernels,
    w: &TensorView<'_>,
    x: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    tmp: &mut [f32],
    q: &mut [u8],
    y: &mut [f32],
) -> Option<()> {
    let x = x.get(..rows * w.cols)?;
    let y = y.get_mut(..rows * w.rows)?;
    if w.is_f32() {
        if w.is_low_rank() {
            let tmp = tmp.get_mut(..rows * w.rank)?;
            kernels.matmul_f32(w.b, x, None, rows, tmp);
            kernels.matmul_f32(w.a, tmp, b, rows, y);
        } else {
            kernels.matmul_f32(w.a, x, b, rows, y);
        }
        return Some(());
    }
    let fmt = WeightFormat::from_u16(w.format)?;
    let kern = kernels.kernel(fmt).ok()?;
    if w.is_low_rank() {
        let tmp = tmp.get_mut(..rows * w.rank)?;
        if q.len() < fmt.scratch_bytes(w.cols).max(fmt.scratch_bytes(w.rank)) {
            return None;
        }
        kern.run_batch(w.rank, w.cols, w.raw_b, rows, x, None, tmp, q);
        kern.run_batch(w.rows, w.rank, w.raw_a, rows, tmp, b, y, q);
    } else {
        if q.len() < fmt.scratch_bytes(w.cols) {
            return None;
        }
        kern.run_batch(w.rows, w.cols, w.raw_a, rows, x, b, y, q);
    }
    Some(())
}
