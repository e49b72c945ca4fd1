//! The CUDA backend emulated on the host, for checks on machines without a
//! GPU.
//!
//! [`EmuPrims`] implements the runtime's [`Primitives`] the way the CUDA
//! backend's primitives (`DevPrims`, `src/device.rs`) do, with every kernel
//! launch of `kernels.cu` replaced by its host transliteration: same
//! arguments, same address arithmetic, same operation order, one loop
//! iteration per CUDA thread or lane. The shared conformance suite
//! (`tests/conformance.rs`, `taskpath_runtime::primitive_conformance!`)
//! checks it against the CPU reference, so the device algorithm — not only
//! its scalar helpers — is checked on any machine; the device tests then
//! check the CUDA code itself against the CPU.
//!
//! The quantised kernels (`tp_prep_i8`, `tp_linear_i8`, `tp_prep_lut`,
//! `tp_linear_lut`) are transliterated over the packed bytes and use the
//! plan's kernel scratch split as `DevPrims::matmul` splits it
//! ([`crate::geometry::quant_scratch`]); they are also tested bit for bit
//! against taskpath-cpu's generic kernels below. `expf`, `erfcf` and square
//! roots call the libm crate and Rust's correctly rounded `sqrt`: the
//! kernels' `libm_expf` / `libm_erfcf` are ports of exactly that libm code
//! (`tests/host_math.rs` compiles them with the host C compiler and checks
//! them bit for bit) and NVRTC runs with `--prec-sqrt=true`.
//!
//! Loops index by thread number on purpose, mirroring the CUDA code.
#![allow(clippy::needless_range_loop)]

use taskpath_runtime::exec::{decode_route, Operand, Primitives, MAX_TOP_K};
use taskpath_runtime::format::{ExpertMask, GateFn};
use taskpath_runtime::plan::Buf;
use taskpath_runtime::{TensorView, WeightFormat};

use crate::error::{CudaError, Result};
use crate::geometry::{quant_scratch, supported};

fn f16(b: &[u8], at: usize) -> f32 {
    half_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// IEEE binary16 to binary32, exactly (the PTX `cvt.f32.f16`).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let (e, m) = ((h >> 10) & 0x1f, u32::from(h & 0x3ff));
    match e {
        0 => sign * m as f32 * 5.960_464_5e-8, // m * 2^-24, exact
        31 if m == 0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => {
            f32::from_bits((u32::from(h & 0x8000) << 16) | ((u32::from(e) + 112) << 23) | (m << 13))
        }
    }
}

fn rne_i32(v: f32) -> i32 {
    (v + 12_582_912.0f32).to_bits() as i32 - 0x4B40_0000
}

/// `tp_prep_i8` over every warp (block) and lane.
pub(crate) fn prep_i8(x: &[f32], cols: usize, nb: usize, xq: &mut [i8], sx: &mut [f32]) {
    for warp in 0..nb {
        let mbits = (0..32)
            .map(|lane| warp * 32 + lane)
            .map(|c| {
                if c < cols {
                    x[c].to_bits() & 0x7FFF_FFFF
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0);
        let m = f32::from_bits(mbits);
        for lane in 0..32 {
            let c = warp * 32 + lane;
            let v = if c < cols { x[c] } else { 0.0 };
            let mut q = 0i8;
            let scale = if mbits >= 0x7F80_0000 {
                f32::NAN
            } else if mbits == 0 {
                0.0
            } else {
                let inv = 127.0f32 / m;
                if c < cols {
                    q = rne_i32(v * inv) as i8;
                }
                m / 127.0
            };
            xq[c] = q;
            if lane == 0 {
                sx[warp] = scale;
            }
        }
    }
}

/// `tp_linear_i8` over every row (one warp each; the lane sum is exact).
pub(crate) fn linear_i8(
    w: &[u8],
    xq: &[i8],
    sx: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    k: usize,
) {
    for (o, yo) in y.iter_mut().enumerate() {
        let i = o % 8;
        let tile = &w[(o / 8) * (32 + 8 * k)..];
        let wr = &tile[32 + i * k..];
        let mut ya = 0.0f32;
        for blk in 0..k / 32 {
            let acc: i32 = (0..32)
                .map(|lane| i32::from(wr[blk * 32 + lane] as i8) * i32::from(xq[blk * 32 + lane]))
                .sum();
            ya += acc as f32 * sx[blk];
        }
        let s = f32::from_le_bytes([
            tile[4 * i],
            tile[4 * i + 1],
            tile[4 * i + 2],
            tile[4 * i + 3],
        ]);
        let v = ya * s;
        *yo = b.map_or(v, |b| v + b[o]);
    }
}

/// `tp_prep_lut` over every group.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prep_lut(
    x: &[f32],
    cols: usize,
    ng: usize,
    g: usize,
    zp: bool,
    tables: &mut [i8],
    hts: &mut [f32],
    xs: &mut [f32],
) {
    let xv = |c: usize| if c < cols { x[c] } else { 0.0 };
    let apg = g / 4;
    for gi in 0..ng {
        let (mut m, mut sum, mut bad) = (0.0f32, 0.0f32, false);
        for a in 0..apg {
            let c = (gi * apg + a) * 4;
            let (x0, x1, x2, x3) = (xv(c), xv(c + 1), xv(c + 2), xv(c + 3));
            let ma = ((x0.abs() + x1.abs()) + x2.abs()) + x3.abs();
            bad |= !ma.is_finite();
            m = m.max(ma);
            if zp {
                sum += -(((-x0 + -x1) + -x2) - x3);
            }
        }
        let tabs = &mut tables[16 * gi * apg..16 * (gi + 1) * apg];
        if bad || m == 0.0 {
            tabs.fill(0);
        } else {
            let inv = 127.0f32 / m;
            for a in 0..apg {
                let c = (gi * apg + a) * 4;
                let (x0, x1, x2, x3) = (xv(c), xv(c + 1), xv(c + 2), xv(c + 3));
                for i in 0..8 {
                    let s = |bit: usize| if i & bit != 0 { 1.0f32 } else { -1.0 };
                    let t = ((x0 * s(1) + x1 * s(2)) + x2 * s(4)) - x3;
                    let q = rne_i32(t * inv);
                    tabs[16 * a + i] = q as i8;
                    tabs[16 * a + 15 - i] = (-q) as i8;
                }
            }
        }
        hts[gi] = if bad { f32::NAN } else { (m / 127.0) * 0.5 };
        xs[gi] = sum;
    }
}

/// `tp_linear_lut` over every row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_lut(
    w: &[u8],
    tables: &[i8],
    hts: &[f32],
    xs: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    ng: usize,
    g: usize,
    bits: usize,
    zp: bool,
) {
    let wbytes = 16 * g * bits / 8;
    let gb = wbytes + 32 + if zp { 32 } else { 0 };
    let c = ((1u32 << bits) - 1) as f32 * 0.5;
    for (o, yo) in y.iter_mut().enumerate() {
        let i = o % 16;
        let tile = &w[(o / 16) * ng * gb..];
        let mut ya = 0.0f32;
        for gi in 0..ng {
            let gbuf = &tile[gi * gb..];
            let tabs = &tables[16 * gi * (g / 4)..];
            let mut acc = 0i32;
            for blk in 0..wbytes / 32 {
                let (ta, tb, hi) = if bits == 4 {
                    (&tabs[16 * blk..], &tabs[16 * blk..], 2)
                } else {
                    (&tabs[32 * blk..], &tabs[32 * blk + 16..], 0)
                };
                for j in 0..2 {
                    let byte = gbuf[32 * blk + 2 * i + j];
                    acc += i32::from(ta[usize::from(byte & 15)]) << j;
                    acc += i32::from(tb[usize::from(byte >> 4)]) << (j + hi);
                }
            }
            let s = f16(gbuf, wbytes + 2 * i);
            let mut t = acc as f32 * hts[gi];
            if zp {
                t += (c - f16(gbuf, wbytes + 32 + 2 * i)) * xs[gi];
            }
            ya += t * s;
        }
        *yo = b.map_or(ya, |b| ya + b[o]);
    }
}

// ---------------------------------------------------------------- dense f32

/// `dot8`: taskpath-cpu's `reduce2` order (eight lanes over full chunks,
/// lanes summed left to right, then the sequential tail).
fn dot8(a: &[f32], b: &[f32], n: usize) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = n / 8 * 8;
    for c in (0..full).step_by(8) {
        for l in 0..8 {
            acc[l] += a[c + l] * b[c + l];
        }
    }
    let mut tail = 0.0f32;
    for c in full..n {
        tail += a[c] * b[c];
    }
    let mut s = 0.0f32;
    for l in 0..8 {
        s += acc[l];
    }
    s + tail
}

/// `sq_dist8`: `dot8`'s order over `(a - b)^2`.
fn sq_dist8(a: &[f32], b: &[f32], n: usize) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = n / 8 * 8;
    for c in (0..full).step_by(8) {
        for l in 0..8 {
            let t = a[c + l] - b[c + l];
            acc[l] += t * t;
        }
    }
    let mut tail = 0.0f32;
    for c in full..n {
        let t = a[c] - b[c];
        tail += t * t;
    }
    let mut s = 0.0f32;
    for l in 0..8 {
        s += acc[l];
    }
    s + tail
}

/// `reduce8`: the sum of `(scale x - mean)^2`, or of `x` when not `centre`.
fn reduce8(x: &[f32], n: usize, centre: bool, scale: f32, mean: f32) -> f32 {
    let term = |v: f32| {
        if centre {
            let t = scale * v - mean;
            t * t
        } else {
            v
        }
    };
    let mut acc = [0.0f32; 8];
    let full = n / 8 * 8;
    for c in (0..full).step_by(8) {
        for l in 0..8 {
            acc[l] += term(x[c + l]);
        }
    }
    let mut tail = 0.0f32;
    for c in full..n {
        tail += term(x[c]);
    }
    let mut s = 0.0f32;
    for l in 0..8 {
        s += acc[l];
    }
    s + tail
}

/// The kernels' `gelu`: `0.5 t erfc(-t / sqrt 2)` (the .cu literal
/// `0.70710678118654752440f` is this f32).
fn gelu(t: f32) -> f32 {
    0.5 * t * libm::erfcf(-t * core::f32::consts::FRAC_1_SQRT_2)
}

/// `tp_linear_f32` over every `(row, output)` thread.
#[allow(clippy::too_many_arguments)]
fn linear_f32(
    w: &[f32],
    x: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    rows: usize,
    n_out: usize,
    n_in: usize,
) {
    for id in 0..rows * n_out {
        let (r, o) = (id / n_out, id % n_out);
        y[r * n_out + o] = dot8(&w[o * n_in..], &x[r * n_in..], n_in) + b.map_or(0.0, |b| b[o]);
    }
}

/// `tp_linear_f16` over every `(row, output)` thread.
#[allow(clippy::too_many_arguments)]
fn linear_f16(
    w: &[u8],
    x: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    rows: usize,
    n_out: usize,
    n_in: usize,
) {
    for id in 0..rows * n_out {
        let (r, o) = (id / n_out, id % n_out);
        let tile = &w[(o / 8) * 16 * n_in..];
        let i = o % 8;
        let xr = &x[r * n_in..];
        let mut s = 0.0f32;
        for c in 0..n_in {
            s += f16(tile, 2 * (8 * c + i)) * xr[c];
        }
        y[r * n_out + o] = b.map_or(s, |b| s + b[o]);
    }
}

/// `tp_conv3_f32` over every output thread.
#[allow(clippy::too_many_arguments)]
fn conv3_f32(
    w: &[f32],
    b: &[f32],
    u: &[f32],
    l: usize,
    d: usize,
    t: usize,
    y: &mut [f32],
    n_out: usize,
) {
    for o in 0..n_out {
        let k0 = if t == 0 { 1 } else { 0 };
        let k1 = if t + 1 >= l { 2 } else { 3 };
        let window = &u[(t + k0 - 1) * d..];
        y[o] = dot8(&w[o * 3 * d + k0 * d..], window, (k1 - k0) * d) + b[o];
    }
}

/// `tp_layernorm` over every row thread (`x` may equal `y`: each thread
/// reads an element of its row before writing it).
#[allow(clippy::too_many_arguments)]
fn layernorm(
    x: &[f32],
    y: &mut [f32],
    g: &[f32],
    b: &[f32],
    rows: usize,
    width: usize,
    eps: f32,
    scale: f32,
) {
    for r in 0..rows {
        let xr = &x[r * width..];
        let yr = &mut y[r * width..];
        let n = width as f32;
        let mean = scale * reduce8(xr, width, false, 1.0, 0.0) / n;
        let var = reduce8(xr, width, true, scale, mean) / n;
        let inv = 1.0f32 / (var + eps).sqrt();
        for c in 0..width {
            yr[c] = (scale * xr[c] - mean) * inv * g[c] + b[c];
        }
    }
}

/// `tp_attention` over every `(token, head)` thread: scores recomputed in
/// each pass, as the kernel does.
#[allow(clippy::too_many_arguments)]
fn attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], l: usize, d: usize, heads: usize) {
    for id in 0..l * heads {
        let (i, h, dh) = (id / heads, id % heads, d / heads);
        let inv_sqrt = 1.0f32 / (dh as f32).sqrt();
        let qh = &q[i * d + h * dh..];
        let score = |j: usize| dot8(qh, &k[j * d + h * dh..], dh) * inv_sqrt;
        let mut mx = f32::NEG_INFINITY;
        for j in 0..l {
            mx = mx.max(score(j));
        }
        let mut sum = 0.0f32;
        for j in 0..l {
            sum += libm::expf(score(j) - mx);
        }
        let oh = &mut out[i * d + h * dh..][..dh];
        oh.fill(0.0);
        for j in 0..l {
            let p = libm::expf(score(j) - mx) / sum;
            let vh = &v[j * d + h * dh..];
            for e in 0..dh {
                oh[e] += p * vh[e];
            }
        }
    }
}

/// `tp_attn_pool` (one block: scores in shared memory, softmax by thread 0).
fn attn_pool(u: &[f32], query: &[f32], out: &mut [f32], l: usize, d: usize) {
    let inv_sqrt = 1.0f32 / (d as f32).sqrt();
    let mut sc: Vec<f32> = (0..l)
        .map(|j| dot8(query, &u[j * d..], d) * inv_sqrt)
        .collect();
    let (mut mx, mut sum) = (f32::NEG_INFINITY, 0.0f32);
    for j in 0..l {
        mx = mx.max(sc[j]);
    }
    for j in 0..l {
        sc[j] = libm::expf(sc[j] - mx);
        sum += sc[j];
    }
    for j in 0..l {
        sc[j] /= sum;
    }
    for c in 0..d {
        let mut o = 0.0f32;
        for j in 0..l {
            o += sc[j] * u[j * d + c];
        }
        out[c] = o;
    }
}

/// `tp_gate` over every expert thread.
#[allow(clippy::too_many_arguments)]
fn gate(
    p: &[f32],
    w: &[f32],
    logits: &mut [f32],
    n: usize,
    d: usize,
    laplace: bool,
    acc: bool,
    scale: f32,
) {
    for j in 0..n {
        let wj = &w[j * d..];
        let raw = if laplace {
            -sq_dist8(p, wj, d).sqrt()
        } else {
            dot8(wj, p, d) + 0.0
        };
        logits[j] = (if acc { logits[j] } else { 0.0 }) + scale * raw;
    }
}

/// `tp_route` (one thread): masked top-k, NaN last, ties to the lower
/// index, softmax over the kept logits. `None` where the kernel's local
/// `gate[64]` would overflow.
fn route(logits: &[f32], n: usize, mask: [u32; 8], k: usize, route: &mut [f32]) -> Option<()> {
    let word = |lo: usize, hi: usize| (u64::from(mask[hi]) << 32) | u64::from(mask[lo]);
    let mut remaining = [word(0, 1), word(2, 3), word(4, 5), word(6, 7)];
    let mut count = 0usize;
    for w in 0..4 {
        let lo = 64 * w;
        if n <= lo {
            remaining[w] = 0;
        } else if n - lo < 64 {
            remaining[w] &= (1u64 << (n - lo)) - 1;
        }
        count += remaining[w].count_ones() as usize;
    }
    let kk = k.min(count);
    if kk > 64 {
        return None;
    }
    let mut gate = [0.0f32; 64];
    let mut mx = f32::NEG_INFINITY;
    for slot in 0..kk {
        let mut best: Option<usize> = None;
        for w in 0..4 {
            let mut bits = remaining[w];
            while bits != 0 {
                let j = 64 * w + bits.trailing_zeros() as usize;
                best = match best {
                    None => Some(j),
                    Some(bb) => {
                        let (a, b) = (logits[j], logits[bb]);
                        Some(if !a.is_nan() && (b.is_nan() || a > b) {
                            j
                        } else {
                            bb
                        })
                    }
                };
                bits &= bits - 1;
            }
        }
        let best = best?;
        remaining[best / 64] &= !(1u64 << (best % 64));
        route[1 + slot] = best as f32;
        gate[slot] = logits[best];
        mx = mx.max(gate[slot]);
    }
    let mut sum = 0.0f32;
    for s in 0..kk {
        gate[s] = libm::expf(gate[s] - mx);
        sum += gate[s];
    }
    for s in 0..kk {
        route[1 + k + s] = gate[s] / sum;
    }
    route[0] = kk as f32;
    Some(())
}

/// `tp_conv_cat` over every window element.
fn conv_cat(u: &[f32], l: usize, d: usize, token: usize, cat: &mut [f32]) {
    for i in 0..3 * d {
        let (tap, c) = (i / d, i % d);
        // s = token + tap - 1, from -1.
        cat[i] = match (token + tap).checked_sub(1) {
            Some(s) if s < l => u[s * d + c],
            _ => 0.0,
        };
    }
}

// ---------------------------------------------------------------- primitives

fn invalid(why: &'static str) -> CudaError {
    CudaError::Runtime(taskpath_runtime::Error::InvalidProgram { op: 0, why })
}

/// The CUDA backend's primitives (`DevPrims`) emulated on the host: each
/// primitive launches the same kernels as the device, in the same order,
/// with the same arguments, on a host slots region (see the module docs).
///
/// Where the device would silently read or write out of bounds (a buffer
/// shorter than the kernel's geometry, kernel scratch smaller than the
/// device's split), the emulation reports an error instead.
#[derive(Debug)]
pub struct EmuPrims<'s, 'i> {
    slots: &'s mut [f32],
    inputs: &'i [&'i [f32]],
}

impl<'s, 'i> EmuPrims<'s, 'i> {
    /// Primitives over `slots` (the emulated device arena: a task's slots
    /// region), with the task inputs `inputs` (the device input buffers).
    pub fn new(slots: &'s mut [f32], inputs: &'i [&'i [f32]]) -> Self {
        Self { slots, inputs }
    }

    /// The slots region.
    pub fn slots(&self) -> &[f32] {
        self.slots
    }

    /// A copy of `b` (kernels read through raw pointers; the plan keeps an
    /// op's inputs and outputs apart).
    fn get(&self, b: &Buf) -> Result<Vec<f32>> {
        self.slots
            .get(b.range())
            .map(<[f32]>::to_vec)
            .ok_or_else(|| invalid("emulated device access outside the arena"))
    }

    fn at(&mut self, b: &Buf) -> Result<&mut [f32]> {
        self.slots
            .get_mut(b.range())
            .ok_or_else(|| invalid("emulated device access outside the arena"))
    }

    fn put(&mut self, b: &Buf, v: &[f32]) -> Result<()> {
        self.at(&Buf::at(b.start, v.len()))?.copy_from_slice(v);
        Ok(())
    }

    /// Leaves the quantised activations (`qb` bytes, then `qs` f32 at the
    /// next 4-byte boundary) in the kernel scratch as the device does, and
    /// reads them back for the product kernel.
    fn through_scratch(
        &mut self,
        kernel: &Buf,
        qb: &[i8],
        qs: &[f32],
    ) -> Result<(Vec<i8>, Vec<f32>)> {
        let qs_at = qb.len().div_ceil(4);
        if kernel.len() < qs_at + qs.len() {
            return Err(invalid(
                "kernel scratch smaller than the device's quantised-activation split",
            ));
        }
        let words = self.at(kernel)?;
        for (w, chunk) in words.iter_mut().zip(qb.chunks(4)) {
            let mut bytes = w.to_ne_bytes();
            for (b, &q) in bytes.iter_mut().zip(chunk) {
                *b = q as u8;
            }
            *w = f32::from_ne_bytes(bytes);
        }
        words[qs_at..qs_at + qs.len()].copy_from_slice(qs);
        let back_b = words[..qs_at]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(qb.len())
            .map(|b| b as i8)
            .collect();
        Ok((back_b, words[qs_at..qs_at + qs.len()].to_vec()))
    }

    /// `DevPrims::matmul`: `y[rows, n_out] = W x + b` for one stored matrix
    /// (`w` its f32 values, `packed` its bytes), one launch (f32, f16) or
    /// two per row (quantised).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        fmt: WeightFormat,
        n_out: usize,
        n_in: usize,
        w: &[f32],
        packed: &[u8],
        x: &[f32],
        b: Option<&[f32]>,
        rows: usize,
        y: &Buf,
        kernel: &Buf,
    ) -> Result<()> {
        if x.len() < rows * n_in || y.len() < rows * n_out || b.is_some_and(|b| b.len() < n_out) {
            return Err(invalid("linear shapes"));
        }
        let short = || invalid("weight data shorter than its shape");
        let mut out = vec![0.0f32; rows * n_out];
        match fmt {
            WeightFormat::F32 => {
                if w.len() < n_out * n_in {
                    return Err(short());
                }
                linear_f32(w, x, b, &mut out, rows, n_out, n_in);
            }
            WeightFormat::F16 => {
                if packed.len() < fmt.packed_bytes(n_out, n_in) {
                    return Err(short());
                }
                linear_f16(packed, x, b, &mut out, rows, n_out, n_in);
            }
            _ => {
                if packed.len() < fmt.packed_bytes(n_out, n_in) {
                    return Err(short());
                }
                let (qb_len, ns) = quant_scratch(fmt, n_in);
                let k = fmt.padded_cols(n_in);
                for r in 0..rows {
                    let xr = &x[r * n_in..(r + 1) * n_in];
                    let yr = &mut out[r * n_out..(r + 1) * n_out];
                    let (mut qb, mut qs) = (vec![0i8; qb_len], vec![0.0f32; ns]);
                    if fmt == WeightFormat::I8Row {
                        prep_i8(xr, n_in, k / 32, &mut qb, &mut qs);
                        let (qb, qs) = self.through_scratch(kernel, &qb, &qs)?;
                        linear_i8(packed, &qb, &qs, b, yr, k);
                    } else {
                        let g = fmt.group().ok_or_else(|| {
                            CudaError::UnsupportedFormat(format!(
                                "weight format {fmt} has no CUDA kernel"
                            ))
                        })?;
                        let (bits, zp) = (fmt.bits() as usize, fmt.has_zero_point());
                        let ng = k / g;
                        let (hts, xs) = qs.split_at_mut(ng);
                        prep_lut(xr, n_in, ng, g, zp, &mut qb, hts, xs);
                        let (qb, qs) = self.through_scratch(kernel, &qb, &qs)?;
                        let (hts, xs) = qs.split_at(ng);
                        linear_lut(packed, &qb, hts, xs, b, yr, ng, g, bits, zp);
                    }
                }
            }
        }
        self.put(y, &out)
    }
}

impl Primitives for EmuPrims<'_, '_> {
    type Error = CudaError;
    type W<'w> = TensorView<'w>;
    /// As the device backend: the executor reads routes back only for a
    /// tracer that asks.
    const HOST_VISIBLE: bool = false;

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
        let fmt = WeightFormat::from_u16(w.format)
            .filter(|&f| supported(f))
            .ok_or_else(|| {
                CudaError::UnsupportedFormat(format!(
                    "weight format id {} has no CUDA kernel in this build",
                    w.format
                ))
            })?;
        let x = match x {
            Operand::Input(k) => self
                .inputs
                .get(*k)
                .map(|x| x.to_vec())
                .ok_or_else(|| invalid("input"))?,
            Operand::Slot(b) => self.get(b)?,
        };
        let b = b.map(|b| b.a);
        if w.rank > 0 {
            let tmp = Buf::at(tmp.start, rows * w.rank);
            self.matmul(
                fmt, w.rank, w.cols, w.b, w.raw_b, &x, None, rows, &tmp, kernel,
            )?;
            let t = self.get(&tmp)?;
            self.matmul(fmt, w.rows, w.rank, w.a, w.raw_a, &t, b, rows, y, kernel)
        } else {
            self.matmul(fmt, w.rows, w.cols, w.a, w.raw_a, &x, b, rows, y, kernel)
        }
    }

    fn add_weight(&mut self, w: &TensorView<'_>, y: &Buf) -> Result<()> {
        // tp_add over y.len() threads.
        let x = w.a.get(..y.len()).ok_or_else(|| invalid("add shapes"))?;
        let y = self.at(y)?;
        for i in 0..y.len() {
            y[i] += x[i];
        }
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
        let width = g.cols.max(1);
        let rows = x.len() / width;
        if g.a.len() < width || b.a.len() < width || y.len() < rows * width {
            return Err(invalid("layer norm shapes"));
        }
        let xs = self.get(x)?;
        let mut ys = self.get(y)?;
        layernorm(&xs, &mut ys, g.a, b.a, rows, width, eps, scale);
        self.put(y, &ys)
    }

    fn attention(
        &mut self,
        q: &Buf,
        k: &Buf,
        v: &Buf,
        out: &Buf,
        tokens: usize,
        heads: usize,
        _scratch: &Buf,
    ) -> Result<()> {
        let d = q.len() / tokens.max(1);
        let n = tokens * d;
        if heads == 0 {
            return Ok(());
        }
        if k.len() < n || v.len() < n || out.len() < n {
            return Err(invalid("attention shapes"));
        }
        let (qs, ks, vs) = (self.get(q)?, self.get(k)?, self.get(v)?);
        let mut o = self.get(out)?;
        attention(&qs, &ks, &vs, &mut o, tokens, d, heads);
        self.put(out, &o)
    }

    fn attn_pool(
        &mut self,
        u: &Buf,
        query: &TensorView<'_>,
        out: &Buf,
        _scratch: &Buf,
    ) -> Result<()> {
        let d = query.cols.max(1);
        let l = u.len() / d;
        if query.a.len() < d || out.len() < d {
            return Err(invalid("attention pool shapes"));
        }
        let us = self.get(u)?;
        let mut o = vec![0.0f32; d];
        attn_pool(&us, query.a, &mut o, l, d);
        self.put(out, &o)
    }

    fn gate_logits(
        &mut self,
        p: &Buf,
        gate: &TensorView<'_>,
        function: GateFn,
        out: &Buf,
    ) -> Result<()> {
        // tp_gate with acc = 0, scale = 1 (as DevPrims launches it).
        let (n, d) = (gate.rows, gate.cols);
        if p.len() < d || out.len() < n || gate.a.len() < n * d {
            return Err(invalid("gate shapes"));
        }
        let ps = self.get(p)?;
        let mut o = self.get(out)?;
        gate_fn(&ps, gate.a, &mut o, n, d, function);
        self.put(out, &o)
    }

    fn axpy(&mut self, a: f32, x: &Buf, y: &Buf) -> Result<()> {
        // tp_axpy over y.len() threads.
        if x.len() < y.len() {
            return Err(invalid("axpy shapes"));
        }
        let xs = self.get(x)?;
        let y = self.at(y)?;
        for i in 0..y.len() {
            y[i] += a * xs[i];
        }
        Ok(())
    }

    fn fill(&mut self, y: &Buf, v: f32) -> Result<()> {
        // cuMemsetD8Async(0): only +0.0, like the device backend.
        if v.to_bits() != 0 {
            return Err(invalid("the CUDA backend fills with +0.0 only"));
        }
        self.at(y)?.fill(0.0);
        Ok(())
    }

    fn copy(&mut self, src: &Buf, dst: &Buf) -> Result<()> {
        // cuMemcpyDtoDAsync of the shorter length.
        let n = dst.len().min(src.len());
        let s = self.get(&Buf::at(src.start, n))?;
        self.put(dst, &s)
    }

    fn route(&mut self, logits: &Buf, mask: &ExpertMask, k: usize, r: &Buf) -> Result<()> {
        let words: [u32; 8] = core::array::from_fn(|n| (mask.0[n / 2] >> (32 * (n % 2))) as u32);
        if r.len() < 1 + 2 * k {
            return Err(invalid("route slot shorter than 1 + 2 top_k"));
        }
        let ls = self.get(logits)?;
        let mut rs = self.get(r)?;
        route(&ls, ls.len(), words, k, &mut rs)
            .ok_or_else(|| invalid("more than 64 experts overflow tp_route's gates"))?;
        self.put(r, &rs)
    }

    fn read_route(
        &mut self,
        route: &Buf,
        k: usize,
        experts: &mut [u32],
        gates: &mut [f32],
    ) -> Result<usize> {
        // DevPrims copies 1 + 2k floats to the host and decodes them there.
        let n = (1 + 2 * k).min(route.len()).min(1 + 2 * MAX_TOP_K);
        if n < 1 + 2 * k {
            return Err(invalid("route slot shorter than 1 + 2 top_k"));
        }
        let r = self.get(&Buf::at(route.start, n))?;
        decode_route(&r, k, experts, gates)
            .ok_or_else(|| invalid("route slot holds more than top_k experts"))
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
        let l = u.len() / width.max(1);
        let n_out = w.rows;
        if token >= l || w.a.len() < n_out * 3 * width || b.a.len() < n_out || out.len() < n_out {
            return Err(invalid("conv shapes"));
        }
        let us = self.get(u)?;
        let mut o = vec![0.0f32; n_out];
        conv3_f32(w.a, b.a, &us, l, width, token, &mut o, n_out);
        self.put(out, &o)
    }

    fn conv_window(&mut self, u: &Buf, width: usize, token: usize, window: &Buf) -> Result<()> {
        let l = u.len() / width.max(1);
        if window.len() < 3 * width {
            return Err(invalid("conv window shapes"));
        }
        let us = self.get(u)?;
        let mut cat = vec![0.0f32; 3 * width];
        conv_cat(&us, l, width, token, &mut cat);
        self.put(window, &cat)
    }

    fn gelu_add(&mut self, x: &Buf, residual: Option<&Buf>) -> Result<()> {
        let r = match residual {
            Some(r) if r.len() < x.len() => return Err(invalid("residual shapes")),
            Some(r) => Some(self.get(r)?),
            None => None,
        };
        let h = self.at(x)?;
        // tp_gelu_add / tp_gelu over x.len() threads.
        for i in 0..h.len() {
            h[i] = match &r {
                Some(r) => gelu(h[i]) + r[i],
                None => gelu(h[i]),
            };
        }
        Ok(())
    }
}

/// `tp_gate` as `DevPrims::gate_logits` launches it: `acc = 0`, `scale = 1`,
/// so the logit written is `0.0 + 1.0 * raw`. Not the CPU's bits in one
/// place: a Laplace logit `-sqrt(0) = -0.0` (the input equal to a gate
/// vector) comes out `+0.0`.
fn gate_fn(p: &[f32], w: &[f32], out: &mut [f32], n: usize, d: usize, function: GateFn) {
    gate(p, w, out, n, d, function == GateFn::Laplace, false, 1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpath_cpu::quant::{quantize, WeightFormat, ALL};
    use taskpath_runtime::Kernels;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The transliterated device algorithm equals the CPU generic kernel bit
    /// for bit, for every quantised format and awkward shapes.
    #[test]
    fn device_quantised_algorithm_is_bit_identical_to_the_cpu_kernels() {
        let mut seed = 7u64;
        for f in ALL
            .into_iter()
            .filter(|f| *f == WeightFormat::I8Row || f.is_lut())
        {
            for (rows, cols) in [
                (1usize, 1usize),
                (5, 31),
                (16, 64),
                (17, 65),
                (40, 200),
                (96, 128),
            ] {
                let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
                let mut x: Vec<f32> = (0..cols).map(|_| lcg(&mut seed) * 3.0).collect();
                x[0] *= 8.0; // an outlier, as activations have
                let bias: Vec<f32> = (0..rows).map(|_| lcg(&mut seed)).collect();
                let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
                quantize(f, rows, cols, &w, &mut packed).unwrap();
                let mut want = vec![0f32; rows];
                let mut scratch = vec![0u8; f.scratch_bytes(cols)];
                let kern = Kernels::generic().kernel(f).unwrap();
                kern.run(
                    rows,
                    cols,
                    &packed,
                    &x,
                    Some(&bias),
                    &mut want,
                    &mut scratch,
                );

                let k = f.padded_cols(cols);
                let (nb, ns) = crate::geometry::quant_scratch(f, cols);
                let (mut qb, mut qs) = (vec![0i8; nb], vec![0f32; ns]);
                let mut got = vec![0f32; rows];
                if f == WeightFormat::I8Row {
                    prep_i8(&x, cols, k / 32, &mut qb, &mut qs);
                    linear_i8(&packed, &qb, &qs, Some(&bias), &mut got, k);
                } else {
                    let g = f.group().unwrap();
                    let ng = k / g;
                    let (hts, xs) = qs.split_at_mut(ng);
                    prep_lut(&x, cols, ng, g, f.has_zero_point(), &mut qb, hts, xs);
                    let bits = f.bits() as usize;
                    linear_lut(
                        &packed,
                        &qb,
                        hts,
                        xs,
                        Some(&bias),
                        &mut got,
                        ng,
                        g,
                        bits,
                        f.has_zero_point(),
                    );
                }
                let gb: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(gb, wb, "{f} [{rows}, {cols}]: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn half_conversion_is_exact() {
        for h in [
            0u16,
            1,
            0x3ff,
            0x400,
            0x3c00,
            0xbc00,
            0x7bff,
            0xfbff,
            0x7c00,
            0x0001 | 0x8000,
        ] {
            assert_eq!(
                half_to_f32(h).to_bits(),
                half::f16::from_bits(h).to_f32().to_bits(),
                "{h:#x}"
            );
        }
    }
}
