//! Portable reference kernels, one per format (safe Rust, no target features).
//!
//! These define the numerics: every SIMD kernel must produce bit-identical
//! outputs. They are written for clarity first; LLVM vectorises the f32 and
//! f16 loops on its own.

use super::{
    check_run, prepare_lut, raw_i8, raw_lut, raw_q, run_f16, run_i8, run_lut, run_q, run_rows,
    tiles_of, Feature, I8Prep, LutPrep, QMatVec, QPrep, Q_CHUNK_ROWS, Q_TOKENS,
};
use crate::quant::{
    get_f16, get_f32, lut_center, lut_params, q_value, WeightFormat, I8_BLOCK, LUT_ROW_TILE,
    Q_BLOCK, Q_ROW_TILE, ROW_TILE_8,
};

/// The generic kernel of one format.
#[derive(Debug)]
pub struct Generic {
    format: WeightFormat,
    name: &'static str,
}

macro_rules! generic_kernels {
    ($($f:ident => $name:literal),* $(,)?) => {
        /// The generic kernel of every format, in id order (`KERNELS[id - 1]`).
        pub static KERNELS: [Generic; crate::quant::ALL.len()] = [
            $(Generic { format: WeightFormat::$f, name: $name }),*
        ];
    };
}

generic_kernels! {
    F32 => "generic_f32",
    F16 => "generic_f16",
    I8Row => "generic_i8row",
    I4G32 => "generic_i4g32",
    I4G64 => "generic_i4g64",
    I2G32 => "generic_i2g32",
    I2G64 => "generic_i2g64",
    I4G32Z => "generic_i4g32z",
    I4G64Z => "generic_i4g64z",
    I2G32Z => "generic_i2g32z",
    I2G64Z => "generic_i2g64z",
    Q4_0 => "generic_q4_0",
    Q8_0 => "generic_q8_0",
}

impl QMatVec for Generic {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run_batch(
        &self,
        rows: usize,
        cols: usize,
        packed: &[u8],
        n: usize,
        xs: &[f32],
        bias: Option<&[f32]>,
        ys: &mut [f32],
        scratch: &mut [u8],
    ) {
        match self.format {
            f @ (WeightFormat::Q4_0 | WeightFormat::Q8_0) => run_q(
                f,
                rows,
                cols,
                packed,
                n,
                xs,
                bias,
                ys,
                scratch,
                &mut q_tiles_fn(f),
            ),
            _ => run_rows(self, rows, cols, packed, n, xs, bias, ys, scratch),
        }
    }

    fn format(&self) -> WeightFormat {
        self.format
    }

    fn requires(&self) -> &'static [Feature] {
        &[]
    }

    fn run(
        &self,
        rows: usize,
        cols: usize,
        packed: &[u8],
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        scratch: &mut [u8],
    ) {
        match self.format {
            WeightFormat::F32 => run_f32(rows, cols, packed, x, bias, y, scratch),
            WeightFormat::F16 => run_f16(rows, cols, packed, x, bias, y, scratch, &mut f16_tiles),
            WeightFormat::I8Row => run_i8(rows, cols, packed, x, bias, y, scratch, &mut i8_tile),
            f @ (WeightFormat::Q4_0 | WeightFormat::Q8_0) => run_q(
                f,
                rows,
                cols,
                packed,
                1,
                x,
                bias,
                y,
                scratch,
                &mut q_tiles_fn(f),
            ),
            f => run_lut(
                f,
                rows,
                cols,
                packed,
                x,
                bias,
                y,
                scratch,
                prepare_lut,
                &mut tiles_of(lut_tile_fn(f)),
            ),
        }
    }

    fn integer_parts(
        &self,
        rows: usize,
        cols: usize,
        packed: &[u8],
        x: &[f32],
        scratch: &mut [u8],
        out: &mut [i32],
    ) -> bool {
        match self.format {
            WeightFormat::F32 | WeightFormat::F16 => false,
            WeightFormat::I8Row => {
                raw_i8(rows, cols, packed, x, scratch, out, &mut i8_tile);
                true
            }
            f @ (WeightFormat::Q4_0 | WeightFormat::Q8_0) => {
                raw_q(f, rows, cols, packed, x, scratch, out, &mut q_tiles_fn(f));
                true
            }
            f => {
                raw_lut(
                    f,
                    rows,
                    cols,
                    packed,
                    x,
                    scratch,
                    out,
                    prepare_lut,
                    &mut tiles_of(lut_tile_fn(f)),
                );
                true
            }
        }
    }
}

// ------------------------------------------------------------------ f32

/// f32: `y[r] = dot(W[r], x) + (bias[r] or 0)`, the dot with eight lanes over
/// chunks of 8 plus a scalar tail, lanes summed left to right: bit-identical
/// to [`crate::f32::matvec`]. Rows are taken four at a time (four read
/// streams, which the memory system rewards), each with its own accumulators
/// and unchanged operation order.
fn run_f32(
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [u8],
) {
    check_run(WeightFormat::F32, rows, cols, packed, x, bias, y, scratch);
    const R: usize = 4;
    let rb = 4 * cols;
    let full = rows / R * R;
    for (q, yq) in y[..full].chunks_exact_mut(R).enumerate() {
        let w = &packed[q * R * rb..(q + 1) * R * rb];
        let d = dot_le_rows::<R>(w, rb, x);
        for (i, (yi, di)) in yq.iter_mut().zip(d).enumerate() {
            *yi = di + bias.map_or(0.0, |b| b[q * R + i]);
        }
    }
    for r in full..rows {
        let d = dot_le_rows::<1>(&packed[r * rb..(r + 1) * rb], rb, x);
        y[r] = d[0] + bias.map_or(0.0, |b| b[r]);
    }
}

/// `R` dot products `sum_i w_r[i] x[i]` of consecutive rows of `rb` bytes
/// (little-endian f32), each in the order of `f32::matvec`.
#[inline(always)]
fn dot_le_rows<const R: usize>(w: &[u8], rb: usize, x: &[f32]) -> [f32; R] {
    const LANES: usize = 8;
    let cols = x.len();
    let full = cols / LANES * LANES;
    let mut acc = [[0.0f32; LANES]; R];
    for c in (0..full).step_by(LANES) {
        let xb = &x[c..c + LANES];
        for (r, a) in acc.iter_mut().enumerate() {
            let wb = &w[r * rb + 4 * c..r * rb + 4 * (c + LANES)];
            for (l, (s, &xv)) in a.iter_mut().zip(xb).enumerate() {
                *s += get_f32(wb, 4 * l) * xv;
            }
        }
    }
    core::array::from_fn(|r| {
        let mut tail = 0.0f32;
        for (c, &xv) in x.iter().enumerate().skip(full) {
            tail += get_f32(w, r * rb + 4 * c) * xv;
        }
        acc[r].iter().fold(0.0, |s, &a| s + a) + tail
    })
}

// ------------------------------------------------------------------ f16

/// f16 over `n` tiles: per row `acc = acc + w[c] * x[c]` for `c = 0, 1, ...`
/// (separate multiply and add), starting from 0.
fn f16_tiles(tiles: &[u8], n: usize, cols: usize, x: &[f32], out: &mut [f32; 4 * ROW_TILE_8]) {
    let tb = WeightFormat::F16.tile_bytes(cols);
    for t in 0..n {
        let tile = &tiles[t * tb..(t + 1) * tb];
        let mut acc = [0.0f32; ROW_TILE_8];
        for (c, &xv) in x.iter().enumerate() {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += get_f16(tile, 2 * (c * ROW_TILE_8 + i)) * xv;
            }
        }
        out[t * ROW_TILE_8..(t + 1) * ROW_TILE_8].copy_from_slice(&acc);
    }
}

// ------------------------------------------------------------------ i8row

/// i8row tile: per row and 32-column block `b` the exact `acc_b = sum wq * xq`
/// (`|acc_b| <= 32 * 127 * 127 < 2^24`, so exact in i32 and in f32), then
/// `ya = ya + acc_b * sx_b` for `b = 0, 1, ...` and `y = ya * s_row`.
pub(crate) fn i8_tile(
    tile: &[u8],
    k: usize,
    p: &I8Prep<'_>,
    y: &mut [f32; ROW_TILE_8],
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let nb = k / I8_BLOCK;
    for (i, yi) in y.iter_mut().enumerate() {
        let s = get_f32(tile, 4 * i);
        let w = &tile[4 * ROW_TILE_8 + i * k..][..k];
        let mut ya = 0.0f32;
        for b in 0..nb {
            let wb = &w[b * I8_BLOCK..(b + 1) * I8_BLOCK];
            let xb = &p.xq[b * I8_BLOCK..(b + 1) * I8_BLOCK];
            let acc: i32 = wb
                .iter()
                .zip(xb)
                .map(|(&wv, &xv)| i32::from(wv as i8) * i32::from(xv as i8))
                .sum();
            if let Some(raw) = raw.as_deref_mut() {
                if i < valid {
                    raw[i * nb + b] = acc;
                }
            }
            ya += acc as f32 * p.sx(b);
        }
        *yi = ya * s;
    }
}

// ------------------------------------------------------------------ LUT (int4 / int2)

/// The generic LUT tile kernel of `format`.
#[allow(clippy::type_complexity)]
fn lut_tile_fn(
    format: WeightFormat,
) -> impl FnMut(&[u8], &LutPrep<'_>, &mut [f32; LUT_ROW_TILE], Option<&mut [i32]>, usize) {
    let (g, bits, zp) = lut_params(format);
    move |tile, prep, y, raw, valid| match (bits, zp) {
        (4, false) => lut_tile::<4, false>(g, tile, prep, y, raw, valid),
        (4, true) => lut_tile::<4, true>(g, tile, prep, y, raw, valid),
        (_, false) => lut_tile::<2, false>(g, tile, prep, y, raw, valid),
        (_, true) => lut_tile::<2, true>(g, tile, prep, y, raw, valid),
    }
}

/// One 16-row LUT tile. Per group, every row's `acc` is the sum over the
/// group's 32-byte blocks of `Tq[lo] << j` and `Tq[hi] << j'` (int4: same
/// table, `j' = j + 2`; int2: the next table, `j' = j`) for byte `p` of row
/// `p / 2`, `j = p % 2`. Then, in f32 and this order:
/// `t = acc * (ts/2)`; `t = t + (c - z) * xsum` (`…Z` only); `ya = ya + t * s`.
fn lut_tile<const BITS: u32, const ZP: bool>(
    g: usize,
    tile: &[u8],
    p: &LutPrep<'_>,
    y: &mut [f32; LUT_ROW_TILE],
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let ng = p.ng;
    let wbytes = LUT_ROW_TILE * g * BITS as usize / 8;
    let gb = wbytes + 32 + if ZP { 32 } else { 0 };
    let tabs_per_group = g / 4;
    let c = lut_center(BITS);
    let mut ya = [0.0f32; LUT_ROW_TILE];
    for gi in 0..ng {
        let gbuf = &tile[gi * gb..(gi + 1) * gb];
        let tabs = &p.tables[16 * gi * tabs_per_group..16 * (gi + 1) * tabs_per_group];
        let mut acc = [0i32; LUT_ROW_TILE];
        for (b, block) in gbuf[..wbytes].chunks_exact(32).enumerate() {
            let (ta, tb, hi_shift) = if BITS == 4 {
                (&tabs[16 * b..16 * b + 16], &tabs[16 * b..16 * b + 16], 2)
            } else {
                (
                    &tabs[32 * b..32 * b + 16],
                    &tabs[32 * b + 16..32 * b + 32],
                    0,
                )
            };
            for (pos, &byte) in block.iter().enumerate() {
                let (i, j) = (pos / 2, pos % 2);
                acc[i] += i32::from(ta[usize::from(byte & 15)] as i8) << j;
                acc[i] += i32::from(tb[usize::from(byte >> 4)] as i8) << (j + hi_shift);
            }
        }
        if let Some(raw) = raw.as_deref_mut() {
            for (i, &a) in acc.iter().enumerate().take(valid) {
                raw[i * ng + gi] = a;
            }
            continue;
        }
        let (hts, xs) = (p.hts(gi), p.xs(gi));
        for (i, (yv, &a)) in ya.iter_mut().zip(&acc).enumerate() {
            let s = get_f16(gbuf, wbytes + 2 * i);
            let mut t = a as f32 * hts;
            if ZP {
                let z = get_f16(gbuf, wbytes + 32 + 2 * i);
                t += (c - z) * xs;
            }
            *yv += t * s;
        }
    }
    *y = ya;
}

// ------------------------------------------------------------------ q4_0 / q8_0

/// The generic kernel of a GGUF block format (see [`q_tiles`]).
#[allow(clippy::type_complexity)]
fn q_tiles_fn(
    format: WeightFormat,
) -> impl FnMut(
    &[u8],
    usize,
    Option<&[u8]>,
    &[QPrep<'_>],
    &mut [[f32; Q_CHUNK_ROWS]; Q_TOKENS],
    Option<&mut [i32]>,
    usize,
) {
    move |tiles, nt, _next, preps, out, raw, valid| {
        q_tiles(format, tiles, nt, preps, out, raw, valid)
    }
}

/// `nt` 16-row tiles of q4_0 / q8_0 for each prepared token. Per row and
/// 32-column block `b` the exact integer part is `acc_b = sum_c sq_c xq_c`
/// with `sq` the signed quant (`q - 8` in `[-8, 7]`, or `q` in `[-128, 127]`):
/// `|acc_b| <= 32 * 128 * 127 = 520192 < 2^24`, exact in i32 and in f32. Then
/// in f32, blocks in order from `ya = 0`: `ya = ya + (acc_b * sx_b) * d_b`,
/// multiply and add kept separate; the row's result is `ya`.
pub(crate) fn q_tiles(
    format: WeightFormat,
    tiles: &[u8],
    nt: usize,
    preps: &[QPrep<'_>],
    out: &mut [[f32; Q_CHUNK_ROWS]; Q_TOKENS],
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let bb = format.q_block_bytes();
    let wb = bb - 2 * Q_ROW_TILE;
    let tb = tiles.len().checked_div(nt).unwrap_or(0);
    let nb = tb / bb;
    for (p, o) in preps.iter().zip(out.iter_mut()) {
        for t in 0..nt {
            let tile = &tiles[t * tb..(t + 1) * tb];
            let mut ya = [0.0f32; Q_ROW_TILE];
            for b in 0..nb {
                let blk = &tile[b * bb..(b + 1) * bb];
                let xq = &p.xq[b * Q_BLOCK..(b + 1) * Q_BLOCK];
                let mut acc = [0i32; Q_ROW_TILE];
                for (c, &xv) in xq.iter().enumerate() {
                    let xv = i32::from(xv as i8);
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a += i32::from(q_value(format, &blk[..wb], r, c)) * xv;
                    }
                }
                if let Some(raw) = raw.as_deref_mut() {
                    for (i, &a) in acc.iter().enumerate() {
                        let row = Q_ROW_TILE * t + i;
                        if row < valid {
                            raw[row * nb + b] = a;
                        }
                    }
                    continue;
                }
                let sx = p.sx(b);
                for (r, (y, &a)) in ya.iter_mut().zip(&acc).enumerate() {
                    let v = a as f32 * sx;
                    *y += v * get_f16(blk, wb + 2 * r);
                }
            }
            o[Q_ROW_TILE * t..Q_ROW_TILE * (t + 1)].copy_from_slice(&ya);
        }
    }
}
