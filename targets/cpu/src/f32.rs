//! Portable f32 reference kernels.
//!
//! Conventions shared by every kernel here:
//!
//! - tensors are row-major; weight matrices are `[out, in]` and applied as
//!   `y = W x + b`;
//! - shapes are checked by the caller; kernels only `debug_assert!` them and
//!   otherwise derive every dimension from slice lengths as documented;
//! - all arithmetic is f32; reductions use eight independent accumulators
//!   (fixed chunks of 8 plus a scalar tail, summed in a fixed order) so that
//!   LLVM vectorises them at opt-level 3 (release builds) without `unsafe` or
//!   target features. No float operation is reordered by the compiler, so the
//!   results are bit-identical across hosts and optimisation levels;
//! - nothing allocates: scratch buffers come from the caller.
//!
//! These kernels are the reference that faster kernels (SIMD, lookup tables)
//! are tested against, so clarity wins over cleverness where the two differ.

use libm::{erfcf, erff, expf};

/// Number of independent accumulators (and chunk width) of the reductions.
const LANES: usize = 8;

/// The error function `erf(x)`, as computed by `libm` (no_std).
#[inline]
pub fn erf(x: f32) -> f32 {
    erff(x)
}

/// Correctly rounded square root. libm's x86 `sqrtf` is `sqrtss` inline
/// assembly, which Miri cannot execute, so Miri runs [`soft_sqrt`], which
/// returns the same bits for every input (tested against libm below).
#[inline]
fn sqrtf(x: f32) -> f32 {
    #[cfg(miri)]
    return soft_sqrt(x);
    #[cfg(not(miri))]
    libm::sqrtf(x)
}

/// Correctly rounded square root in integer arithmetic. For a positive finite
/// `x = m * 2^e` (`e` even after normalising), `r = isqrt(m << k)` has 25
/// bits; rounding `r / 2` up when its last bit is set is round-to-nearest,
/// since a square root of an f32 can never lie exactly half-way between two
/// f32s (that would make `m << k` the square of an odd number, which has no
/// trailing zero bits).
#[cfg(any(miri, test))]
fn soft_sqrt(x: f32) -> f32 {
    if x.is_nan() || x == 0.0 || x == f32::INFINITY {
        return x;
    }
    if x < 0.0 {
        return f32::NAN;
    }
    let b = x.to_bits();
    let (mut m, mut e) = match (b >> 23) as i32 {
        0 => (u64::from(b & 0x7f_ffff), -149),
        be => (u64::from(b & 0x7f_ffff) | 1 << 23, be - 150),
    };
    while m < 1 << 23 {
        m <<= 1;
        e -= 1;
    }
    if e & 1 != 0 {
        m <<= 1;
        e -= 1;
    }
    // m in [2^23, 2^25): m << k in [2^48, 2^50), so r in [2^24, 2^25).
    let k = if m < 1 << 24 { 26 } else { 24 };
    let r = (m << k).isqrt();
    let q = (r >> 1) + (r & 1); // in [2^23, 2^24]; 2^24 carries into the exponent
    let exp = (e - k) / 2 + 1 + 23 + 127;
    f32::from_bits(((exp as u32) << 23) + (q as u32 - (1 << 23)))
}

/// Sum of the accumulators, left to right.
///
/// This order is the one LLVM's SLP vectoriser (opt-level 3, i.e. release
/// builds) maps onto two 4-lane registers with no shuffles in the loop; the
/// tree-shaped orders tried instead made it shuffle every iteration or use
/// 2-lane halves. At opt-level 2 the loop stays scalar but keeps the eight
/// independent chains.
#[inline(always)]
fn hsum(acc: &[f32; LANES]) -> f32 {
    acc.iter().fold(0.0, |s, &a| s + a)
}

/// `sum_i f(a_i, b_i)` over two equally long slices, with [`LANES`]
/// independent accumulators so that the loop vectorises.
#[inline(always)]
fn reduce2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    let mut acc = [0.0f32; LANES];
    for (xa, xb) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *s += f(x, y);
        }
    }
    let mut tail = 0.0f32;
    for (&x, &y) in ta.iter().zip(tb) {
        tail += f(x, y);
    }
    hsum(&acc) + tail
}

/// `sum_i f(a_i)` with [`LANES`] independent accumulators.
#[inline(always)]
fn reduce1(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let ca = a.chunks_exact(LANES);
    let ta = ca.remainder();
    let mut acc = [0.0f32; LANES];
    for xa in ca {
        for (s, &x) in acc.iter_mut().zip(xa) {
            *s += f(x);
        }
    }
    let mut tail = 0.0f32;
    for &x in ta {
        tail += f(x);
    }
    hsum(&acc) + tail
}

/// Dot product of two equally long slices.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    reduce2(a, b, |x, y| x * y)
}

/// Squared Euclidean distance of two equally long slices.
#[inline]
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    reduce2(a, b, |x, y| {
        let t = x - y;
        t * t
    })
}

/// Row `i` of a row-major matrix of row width `width` (works for width 0).
#[inline(always)]
fn row(m: &[f32], i: usize, width: usize) -> &[f32] {
    &m[i * width..(i + 1) * width]
}

/// Mutable row `i` of a row-major matrix of row width `width`.
#[inline(always)]
fn row_mut(m: &mut [f32], i: usize, width: usize) -> &mut [f32] {
    &mut m[i * width..(i + 1) * width]
}

/// `y = W x (+ bias)`. `out = y.len()`, `in = x.len()`, `w.len() == out * in`.
pub fn matvec(w: &[f32], x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let n_in = x.len();
    debug_assert_eq!(w.len(), y.len() * n_in, "matvec: w must be [out, in]");
    debug_assert!(
        bias.is_none_or(|b| b.len() == y.len()),
        "matvec: bias must be [out]"
    );
    for (o, yo) in y.iter_mut().enumerate() {
        let b = bias.map_or(0.0, |b| b[o]);
        *yo = dot(row(w, o, n_in), x) + b;
    }
}

/// `Y[r] = W X[r] (+ bias)` for each of `rows` rows; `x: [rows, in]`, `y: [rows, out]`.
///
/// `in = x.len() / rows`, `out = y.len() / rows`; `rows == 0` is a no-op. Each
/// row of `W` is loaded once and applied to every input row while it is hot.
pub fn matmul_rows(w: &[f32], x: &[f32], bias: Option<&[f32]>, rows: usize, y: &mut [f32]) {
    if rows == 0 {
        return;
    }
    debug_assert_eq!(x.len() % rows, 0, "matmul_rows: x must be [rows, in]");
    debug_assert_eq!(y.len() % rows, 0, "matmul_rows: y must be [rows, out]");
    let n_in = x.len() / rows;
    let n_out = y.len() / rows;
    debug_assert_eq!(w.len(), n_out * n_in, "matmul_rows: w must be [out, in]");
    debug_assert!(
        bias.is_none_or(|b| b.len() == n_out),
        "matmul_rows: bias must be [out]"
    );
    for o in 0..n_out {
        let wo = row(w, o, n_in);
        let b = bias.map_or(0.0, |b| b[o]);
        for r in 0..rows {
            y[r * n_out + o] = dot(wo, row(x, r, n_in)) + b;
        }
    }
}

/// Mean and `1 / sqrt(var + eps)` of `scale * x` (biased variance).
#[inline]
fn ln_stats(x: &[f32], eps: f32, scale: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = scale * reduce1(x, |v| v) / n;
    let var = reduce1(x, |v| {
        let t = scale * v - mean;
        t * t
    }) / n;
    (mean, 1.0 / sqrtf(var + eps))
}

/// `y[r] = LayerNorm(scale * x[r]) * g + b` for every row of width `g.len()`; biased variance;
/// `x` and `y` have the same length (a multiple of `g.len()`).
///
/// `LayerNorm(z) = (z - mean(z)) / sqrt(var(z) + eps)`. With `g` empty this is
/// a no-op.
pub fn layernorm(x: &[f32], g: &[f32], b: &[f32], eps: f32, scale: f32, y: &mut [f32]) {
    let width = g.len();
    debug_assert_eq!(
        b.len(),
        width,
        "layernorm: g and b must have the same length"
    );
    debug_assert_eq!(
        x.len(),
        y.len(),
        "layernorm: x and y must have the same length"
    );
    if width == 0 {
        return;
    }
    debug_assert_eq!(
        x.len() % width,
        0,
        "layernorm: length must be a multiple of g.len()"
    );
    for (xr, yr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
        let (mean, inv) = ln_stats(xr, eps, scale);
        for (((yi, &xi), &gi), &bi) in yr.iter_mut().zip(xr).zip(g).zip(b) {
            *yi = (scale * xi - mean) * inv * gi + bi;
        }
    }
}

/// In-place LayerNorm variant (same maths) for callers that have one buffer.
///
/// Gives bit-identical results to [`layernorm`].
pub fn layernorm_inplace(x: &mut [f32], g: &[f32], b: &[f32], eps: f32, scale: f32) {
    let width = g.len();
    debug_assert_eq!(
        b.len(),
        width,
        "layernorm: g and b must have the same length"
    );
    if width == 0 {
        return;
    }
    debug_assert_eq!(
        x.len() % width,
        0,
        "layernorm: length must be a multiple of g.len()"
    );
    for xr in x.chunks_exact_mut(width) {
        let (mean, inv) = ln_stats(xr, eps, scale);
        for ((xi, &gi), &bi) in xr.iter_mut().zip(g).zip(b) {
            *xi = (scale * *xi - mean) * inv * gi + bi;
        }
    }
}

/// Exact GELU x/2 (1 + erf(x/sqrt 2)) in place.
///
/// Evaluated as `x/2 * erfc(-x/sqrt 2)`, which is the same function but keeps
/// full relative precision in the negative tail where `1 + erf` cancels.
pub fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        let t = *v;
        *v = 0.5 * t * erfcf(-t * core::f32::consts::FRAC_1_SQRT_2);
    }
}

/// Numerically stable softmax in place (subtract max). Empty slice: no-op.
///
/// NaN inputs make the whole output NaN; an all `-inf` input gives NaN.
pub fn softmax(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Multi-head self-attention core without projections: `q`, `k`, `v` are `[l, d]`, already
/// projected; `heads` divides `d`;
/// `out[l, d] = concat_h softmax(q_h k_h^T / sqrt(d / heads)) v_h`; `scratch.len() >= l`.
///
/// `d = q.len() / l`; `l == 0` is a no-op. `softmax` normalises each row of
/// scores: [`softmax`], or a kernel with its bits (`Kernels::softmax_f32`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    l: usize,
    heads: usize,
    scratch: &mut [f32],
    out: &mut [f32],
    mut softmax: impl FnMut(&mut [f32]),
) {
    if l == 0 {
        return;
    }
    debug_assert!(heads > 0, "attention: heads must be positive");
    debug_assert_eq!(q.len() % l, 0, "attention: q must be [l, d]");
    let d = q.len() / l;
    debug_assert_eq!(d % heads.max(1), 0, "attention: heads must divide d");
    debug_assert_eq!(k.len(), l * d, "attention: k must be [l, d]");
    debug_assert_eq!(v.len(), l * d, "attention: v must be [l, d]");
    debug_assert_eq!(out.len(), l * d, "attention: out must be [l, d]");
    debug_assert!(scratch.len() >= l, "attention: scratch must hold l scores");
    let dh = d / heads.max(1);
    if dh == 0 {
        return;
    }
    let inv_sqrt = 1.0 / sqrtf(dh as f32);
    let scores = &mut scratch[..l];
    for i in 0..l {
        let qi = row(q, i, d);
        let oi = row_mut(out, i, d);
        for ((qh, oh), h) in qi.chunks_exact(dh).zip(oi.chunks_exact_mut(dh)).zip(0..) {
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(qh, row(row(k, j, d), h, dh)) * inv_sqrt;
            }
            softmax(scores);
            oh.fill(0.0);
            for (j, &s) in scores.iter().enumerate() {
                axpy(s, row(row(v, j, d), h, dh), oh);
            }
        }
    }
}

/// Attention pooling: `s = softmax_l(query . u_l / sqrt(d))`, `out = sum_l s_l u_l`;
/// `u: [l, d]`, `d = query.len()`; `scratch.len() >= l`.
///
/// With `l == 0` the output is zero. `softmax` as in [`attention`].
pub fn attention_pool(
    u: &[f32],
    query: &[f32],
    scratch: &mut [f32],
    out: &mut [f32],
    softmax: impl FnOnce(&mut [f32]),
) {
    let d = query.len();
    debug_assert_eq!(out.len(), d, "attention_pool: out must be [d]");
    if d == 0 {
        return;
    }
    debug_assert_eq!(u.len() % d, 0, "attention_pool: u must be [l, d]");
    let l = u.len() / d;
    debug_assert!(
        scratch.len() >= l,
        "attention_pool: scratch must hold l scores"
    );
    let inv_sqrt = 1.0 / sqrtf(d as f32);
    let scores = &mut scratch[..l];
    for (s, ul) in scores.iter_mut().zip(u.chunks_exact(d)) {
        *s = dot(query, ul) * inv_sqrt;
    }
    softmax(scores);
    out.fill(0.0);
    for (&s, ul) in scores.iter().zip(u.chunks_exact(d)) {
        axpy(s, ul, out);
    }
}

/// Laplace gate logits: `out[j] = -||p - gates[j]||_2`, `gates: [n, d]`, `n = out.len()`.
pub fn laplace_logits(p: &[f32], gates: &[f32], out: &mut [f32]) {
    let d = p.len();
    debug_assert_eq!(
        gates.len(),
        out.len() * d,
        "laplace_logits: gates must be [n, d]"
    );
    for (j, o) in out.iter_mut().enumerate() {
        *o = -sqrtf(sq_dist(p, row(gates, j, d)));
    }
}

/// Dot gate logits: `out[j] = gates[j] . p`.
///
/// `gates: [n, d]` with `d = p.len()`, `n = out.len()`.
pub fn dot_logits(p: &[f32], gates: &[f32], out: &mut [f32]) {
    matvec(gates, p, None, out);
}

/// `a` ranks strictly before `b`: larger, and NaN ranks after every number.
#[inline]
fn ranks_before(a: f32, b: f32) -> bool {
    !a.is_nan() && (b.is_nan() || a > b)
}

/// Top-k among experts whose bit is set in `mask` (bit `j % 64` of word `j / 64` = expert `j`,
/// up to 256), by logit
/// descending, ties -> lower index first; writes the chosen indices to `idx[..k']` and the
/// softmax of their logits to `gate[..k']`, and returns
/// `k'` = min(k, experts of the mask below `n = logits.len()`). NaN logits rank last.
///
/// `idx` and `gate` must hold at least `k'` entries; entries past `k'` are
/// left untouched. The gates follow [`softmax`], so a chosen NaN logit makes
/// every gate NaN.
pub fn top_k_masked(
    logits: &[f32],
    mask: &[u64],
    k: usize,
    idx: &mut [u32],
    gate: &mut [f32],
) -> usize {
    let n = logits.len();
    debug_assert!(n <= 256, "top_k_masked: at most 256 experts");
    let mut remaining = [0u64; 4];
    for (wi, (r, &m)) in remaining.iter_mut().zip(mask).enumerate() {
        let lo = wi * 64;
        *r = if n <= lo {
            0
        } else if n - lo >= 64 {
            m
        } else {
            m & ((1u64 << (n - lo)) - 1)
        };
    }
    let count: u32 = remaining.iter().map(|w| w.count_ones()).sum();
    let kk = k.min(count as usize);
    debug_assert!(
        idx.len() >= kk && gate.len() >= kk,
        "top_k_masked: idx/gate too short"
    );
    for slot in 0..kk {
        // Selection by repeated scans: k and n are tiny, and scanning set bits
        // in ascending order with a strict comparison gives lower-index-first ties.
        let mut best = usize::MAX;
        for (wi, &w) in remaining.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let j = wi * 64 + bits.trailing_zeros() as usize;
                if best == usize::MAX || ranks_before(logits[j], logits[best]) {
                    best = j;
                }
                bits &= bits - 1;
            }
        }
        remaining[best / 64] &= !(1u64 << (best % 64));
        idx[slot] = best as u32;
        gate[slot] = logits[best];
    }
    softmax(&mut gate[..kk]);
    kk
}

/// Conv1d with kernel 3 and zero padding evaluated at one token `t`:
/// `y = W [u_{t-1}; u_t; u_{t+1}] + b`, `u: [l, d]` with `l = u.len() / d`, `W: [out, 3d]` where
/// column `k * d + i` is tap `k` (0 = previous token), input channel `i`.
///
/// Missing neighbours (`t == 0`, `t == l - 1`) are zero, so their taps are
/// skipped. The present rows of `u` are contiguous, as are the matching
/// columns of each row of `W`, so each output is a single dot product.
pub fn conv3_at(w: &[f32], b: &[f32], u: &[f32], d: usize, t: usize, y: &mut [f32]) {
    let n_out = y.len();
    debug_assert_eq!(b.len(), n_out, "conv3_at: b must be [out]");
    debug_assert_eq!(w.len(), n_out * 3 * d, "conv3_at: w must be [out, 3d]");
    let l = u.len().checked_div(d).unwrap_or(0);
    debug_assert!(
        d == 0 || u.len().is_multiple_of(d),
        "conv3_at: u must be [l, d]"
    );
    debug_assert!(d == 0 || t < l, "conv3_at: t out of range");
    // Taps k0..k1 are present; tap k reads token t + k - 1.
    let k0 = if t == 0 { 1 } else { 0 };
    let k1 = if t + 1 >= l { 2 } else { 3 };
    let window = &u[(t + k0 - 1) * d..(t + k1 - 1) * d];
    for (o, (yo, &bo)) in y.iter_mut().zip(b).enumerate() {
        let wo = row(w, o, 3 * d);
        *yo = dot(&wo[k0 * d..k1 * d], window) + bo;
    }
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len(), "axpy: x and y must have the same length");
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `y += x`.
pub fn add(x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len(), "add: x and y must have the same length");
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += xi;
    }
}

/// RMS norm of each row of `g.len()` values: `y = x / sqrt(mean(x^2) + eps) * g`
/// (`x`, `y`: whole rows; the mean in f32 with the reduction order of [`dot`]).
pub fn rmsnorm(x: &[f32], g: &[f32], eps: f32, y: &mut [f32]) {
    let w = g.len().max(1);
    debug_assert_eq!(
        x.len(),
        y.len(),
        "rmsnorm: x and y must have the same length"
    );
    for (xr, yr) in x.chunks_exact(w).zip(y.chunks_exact_mut(w)) {
        let inv = 1.0 / sqrtf(dot(xr, xr) / w as f32 + eps);
        for ((o, &v), &gi) in yr.iter_mut().zip(xr).zip(g) {
            *o = v * inv * gi;
        }
    }
}

/// [`rmsnorm`] in place.
pub fn rmsnorm_inplace(x: &mut [f32], g: &[f32], eps: f32) {
    let w = g.len().max(1);
    for xr in x.chunks_exact_mut(w) {
        let inv = 1.0 / sqrtf(dot(xr, xr) / w as f32 + eps);
        for (v, &gi) in xr.iter_mut().zip(g) {
            *v = *v * inv * gi;
        }
    }
}

/// `x = silu(x) * up = x / (1 + exp(-x)) * up`, elementwise.
pub fn silu_mul(x: &mut [f32], up: &[f32]) {
    debug_assert_eq!(x.len(), up.len(), "silu_mul: lengths differ");
    for (v, &u) in x.iter_mut().zip(up) {
        let t = *v;
        *v = t / (1.0 + expf(-t)) * u;
    }
}

/// The logistic function `1 / (1 + exp(-x))`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + expf(-x))
}

/// Rotary position embedding of every head of one token: in each
/// `head_dim`-value head of `x`, the `rot` values from `offset` (`rot`
/// even) turn pairwise at position `pos`: pair `(a, b)` of index
/// `i < rot / 2` (`(i, i + rot/2)` half-split, `(2i, 2i + 1)` interleaved)
/// by `pos * inv_freq_i`, `inv_freq_i = 1 / (theta^(2i / rot) * factor)`,
/// computed in f64 and rounded (its cosine and sine) to f32 once per pair
/// for all heads.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &mut [f32],
    head_dim: usize,
    offset: usize,
    rot: usize,
    pos: usize,
    theta: f32,
    factor: f32,
    interleaved: bool,
) {
    let half = rot / 2;
    for i in 0..half {
        let inv =
            1.0 / (libm::pow(f64::from(theta), (2 * i) as f64 / rot as f64) * f64::from(factor));
        let ang = pos as f64 * inv;
        let (s, c) = (libm::sin(ang) as f32, libm::cos(ang) as f32);
        let (ia, ib) = if interleaved {
            (offset + 2 * i, offset + 2 * i + 1)
        } else {
            (offset + i, offset + i + half)
        };
        for h in x.chunks_exact_mut(head_dim.max(1)) {
            let (a, b) = (h[ia], h[ib]);
            h[ia] = a * c - b * s;
            h[ib] = b * c + a * s;
        }
    }
}

/// Causal attention of one query head over a cache: `scores[t] = scale *
/// q . keys[t]` for `t < len` (each key `q.len()` values at stride
/// `k_stride` from `keys`), `softmax` (with the bits of [`softmax`], e.g.
/// `Kernels::softmax_f32`), then `out = sum_t scores[t] * values[t]` (each
/// `out.len()` values at stride `v_stride`).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    keys: &[f32],
    k_stride: usize,
    values: &[f32],
    v_stride: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    softmax: impl FnOnce(&mut [f32]),
) {
    let (hd, vd) = (q.len(), out.len());
    for (t, s) in scores[..len].iter_mut().enumerate() {
        *s = dot(q, &keys[t * k_stride..t * k_stride + hd]) * scale;
    }
    softmax(&mut scores[..len]);
    out.fill(0.0);
    for (t, &w) in scores[..len].iter().enumerate() {
        let vr = &values[t * v_stride..t * v_stride + vd];
        for (o, &v) in out.iter_mut().zip(vr) {
            *o += w * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::soft_sqrt;

    /// The Miri square root returns libm's bits: every exponent, the edges
    /// of each binade, subnormals, specials and 2^20 pseudo-random patterns.
    #[test]
    fn soft_sqrt_equals_libm_bit_for_bit() {
        let check = |b: u32| {
            let x = f32::from_bits(b);
            let (want, got) = (libm::sqrtf(x), soft_sqrt(x));
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "sqrt({x:e}) [{b:#010x}]: libm {want:e}, soft {got:e}"
            );
        };
        for e in 0..=255u32 {
            for m in [0, 1, 2, 3, 0x40_0000, 0x7f_fffe, 0x7f_ffff] {
                check(e << 23 | m);
                check(1 << 31 | e << 23 | m);
            }
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1 << 20 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            check((s >> 32) as u32);
        }
    }
}
