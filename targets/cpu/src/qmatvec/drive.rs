//! The parts every kernel of a format shares: length checks, activation
//! preparation (LUT tables, int8 activations) and the tile drivers. Only
//! built with the `quant` feature.
//!
//! Length checks use `assert!` with a fixed message, never `assert_eq!` or
//! formatted messages: the `Debug` formatting those pull in costs about 8 KB
//! of flash on a Cortex-M image.

use super::WeightFormat;
use crate::quant::{
    get_f32, lut_params, I8_BLOCK, LUT_ACT_GROUP, LUT_ROW_TILE, Q_BLOCK, Q_ROW_TILE, ROW_TILE_8,
};

/// Length checks every kernel's `run` does first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_run(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &[f32],
    scratch: &[u8],
) {
    assert!(
        Some(packed.len()) == format.checked_packed_bytes(rows, cols),
        "qmatvec: packed has the wrong length for [rows, cols]"
    );
    assert!(
        x.len() == cols && y.len() == rows && bias.is_none_or(|b| b.len() == rows),
        "qmatvec: x must have cols elements, y and bias rows"
    );
    assert!(
        scratch.len() >= format.scratch_bytes(cols),
        "qmatvec: scratch must hold format.scratch_bytes(cols) bytes"
    );
}

/// Activation tables of a LUT format, built by [`prepare_lut`] in scratch.
#[derive(Debug)]
pub(crate) struct LutPrep<'a> {
    /// `K / 4` tables of 16 int8 entries (K = padded cols), in column order.
    pub tables: &'a [u8],
    /// Per group: `ts / 2` (f32 LE), then per group the activation sum (f32 LE).
    params: &'a [u8],
    /// Number of groups.
    pub ng: usize,
}

/// A table builder: [`prepare_lut`] or an architecture's equivalent, which
/// must write byte-identical scratch.
pub(crate) type LutPrepFn = for<'a> fn(WeightFormat, usize, &[f32], &'a mut [u8]) -> LutPrep<'a>;

impl<'a> LutPrep<'a> {
    /// Scratch split for `format` and `cols`: `(tables, params, ng)`.
    pub(crate) fn parts(
        format: WeightFormat,
        cols: usize,
        scratch: &'a mut [u8],
    ) -> (&'a mut [u8], &'a mut [u8], usize) {
        let (g, _, _) = lut_params(format);
        let k = format.padded_cols(cols);
        let (na, ng) = (k / LUT_ACT_GROUP, k / g);
        let (tables, rest) = scratch.split_at_mut(16 * na);
        (tables, &mut rest[..8 * ng], ng)
    }

    /// Record group `gi`'s `ts / 2` and activation sum in `params`.
    #[inline]
    pub(crate) fn set_params(params: &mut [u8], ng: usize, gi: usize, hts: f32, xs: f32) {
        params[4 * gi..4 * gi + 4].copy_from_slice(&hts.to_le_bytes());
        params[4 * (ng + gi)..4 * (ng + gi) + 4].copy_from_slice(&xs.to_le_bytes());
    }

    /// The view over filled parts.
    pub(crate) fn from_parts(tables: &'a [u8], params: &'a [u8], ng: usize) -> Self {
        Self { tables, params, ng }
    }
}

impl LutPrep<'_> {
    /// `ts / 2` of group `g` (half the table scale).
    #[inline(always)]
    pub fn hts(&self, g: usize) -> f32 {
        get_f32(self.params, 4 * g)
    }

    /// Sum of the activations of group `g` (in column order).
    #[inline(always)]
    pub fn xs(&self, g: usize) -> f32 {
        get_f32(self.params, 4 * (self.ng + g))
    }
}

/// `rne(v)` as an integer for `|v| <= 2^22`: after adding `1.5 * 2^23` the
/// rounded integer sits in the low mantissa bits (exact, branch-free, and it
/// vectorises).
#[inline(always)]
pub(crate) fn rne_i32(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - 0x4B40_0000
}

/// Signs of `x_0`, `x_1`, `x_2` in table entry `i < 8` (bit `e` of `i` set: `+`).
const LUT_SIGNS: [[f32; 8]; 3] = [
    [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0],
    [-1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0],
    [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0],
];

/// Build the int8 tables of a LUT format for `x` in `scratch` (one routine
/// shared by every kernel, so all see identical tables).
///
/// Per 4 activations `x_0..x_3` (0 past `cols`), for `i < 8`:
/// `T[i] = ((x_0 s_0 + x_1 s_1) + x_2 s_2) - x_3` in f32 with `s_e = +1` if bit
/// `e` of `i` is set, else `-1` (exact sign flips), and `T[15 - i] = -T[i]`.
/// Per group, `m = max_a ((|x_0| + |x_1|) + |x_2|) + |x_3|` (the largest `|T|`),
/// `Tq = rne(T * (127 / m))` (all 0 if `m == 0`),
/// `ts / 2 = (m / 127) * 0.5`, and for the `…Z` formats the activation sum
/// `xsum = sum_a -T_a[0]` in column order (`-T[0] = ((x_0 + x_1) + x_2) + x_3`;
/// 0 for symmetric formats, which do not read it). A non-finite
/// activation zeroes its group's tables and makes `ts` NaN, so the outputs
/// that read it are NaN.
///
/// No clamp is needed: rounding is monotonic, so `|T| <= m` holds in f32 too
/// (`|fl(a +- b)| <= fl(|a| + |b|)` at each step), hence
/// `|T * (127 / m)| <= 127 (1 + eps)^2 < 127.5` and `|Tq| <= 127`.
pub(crate) fn prepare_lut<'a>(
    format: WeightFormat,
    cols: usize,
    x: &[f32],
    scratch: &'a mut [u8],
) -> LutPrep<'a> {
    let (g, _, zp) = lut_params(format);
    let (tables, params, ng) = LutPrep::parts(format, cols, scratch);
    let apg = g / LUT_ACT_GROUP;
    let mut tf = [[0.0f32; 8]; 16];
    for gi in 0..ng {
        let mut m = 0.0f32;
        let mut bad = false;
        let mut sum = 0.0f32;
        for (a, t) in tf[..apg].iter_mut().enumerate() {
            let c = (gi * apg + a) * LUT_ACT_GROUP;
            let xv: [f32; 4] = match x.get(c..c + 4) {
                Some(v) => [v[0], v[1], v[2], v[3]],
                None => core::array::from_fn(|e| x.get(c + e).copied().unwrap_or(0.0)),
            };
            let ma = ((xv[0].abs() + xv[1].abs()) + xv[2].abs()) + xv[3].abs();
            bad |= !ma.is_finite();
            m = m.max(ma);
            for (i, ti) in t.iter_mut().enumerate() {
                *ti = ((xv[0] * LUT_SIGNS[0][i] + xv[1] * LUT_SIGNS[1][i])
                    + xv[2] * LUT_SIGNS[2][i])
                    - xv[3];
            }
            if zp {
                sum += -t[0];
            }
        }
        let tabs = &mut tables[16 * gi * apg..16 * (gi + 1) * apg];
        if bad || m == 0.0 {
            tabs.fill(0);
        } else {
            let inv = 127.0 / m;
            for (t, tab) in tf[..apg].iter().zip(tabs.chunks_exact_mut(16)) {
                let mut q = [0i8; 8];
                for (qi, &ti) in q.iter_mut().zip(t) {
                    *qi = rne_i32(ti * inv) as i8;
                }
                for i in 0..8 {
                    tab[i] = q[i] as u8;
                    tab[15 - i] = q[i].wrapping_neg() as u8;
                }
            }
        }
        let hts = if bad { f32::NAN } else { (m / 127.0) * 0.5 };
        LutPrep::set_params(params, ng, gi, hts, sum);
    }
    LutPrep::from_parts(tables, params, ng)
}

/// Quantised activations of i8row, built by [`prepare_i8`] in scratch.
#[derive(Debug)]
pub(crate) struct I8Prep<'a> {
    /// `K` int8 activations (0 past `cols`).
    pub xq: &'a [u8],
    /// Per 32-column block the activation scale (f32 LE).
    scales: &'a [u8],
}

impl I8Prep<'_> {
    /// Activation scale of block `b`.
    #[inline(always)]
    pub fn sx(&self, b: usize) -> f32 {
        get_f32(self.scales, 4 * b)
    }
}

/// Quantise activations for i8row: per 32-column block, `m = max |x|`,
/// `xq = rne(x * (127 / m))` (0 past `cols`, all 0 if `m == 0`), scale
/// `m / 127`. No clamp is needed: `|x| <= m` and `127 / m` is correctly
/// rounded, so `|x * (127 / m)| <= 127 (1 + eps)^2 < 127.5`. A non-finite value zeroes its block and makes
/// the scale NaN.
pub(crate) fn prepare_i8<'a>(cols: usize, x: &[f32], scratch: &'a mut [u8]) -> I8Prep<'a> {
    let k = WeightFormat::I8Row.padded_cols(cols);
    let nb = k / I8_BLOCK;
    let (xq, rest) = scratch.split_at_mut(k);
    let scales = &mut rest[..4 * nb];
    for (b, qb) in xq.chunks_exact_mut(I8_BLOCK).enumerate() {
        let xb = &x[(b * I8_BLOCK).min(cols)..((b + 1) * I8_BLOCK).min(cols)];
        let scale = quantize_act_block(xb, qb);
        scales[4 * b..4 * b + 4].copy_from_slice(&scale.to_le_bytes());
    }
    I8Prep { xq, scales }
}

/// The int8 activation quantisation of one 32-column block (shared by i8row
/// and the GGUF block formats): `m = max |x|`, `qb = rne(x * (127 / m))` (0
/// past `xb.len()`, all 0 if `m == 0`); returns the scale `m / 127`. A
/// non-finite value zeroes the block and returns NaN.
#[inline]
fn quantize_act_block(xb: &[f32], qb: &mut [u8]) -> f32 {
    // max |x| via the bit patterns (ordered like the values for |x|), so
    // it vectorises; patterns >= that of +inf are inf or NaN.
    let mbits = xb
        .iter()
        .fold(0u32, |mb, v| mb.max(v.to_bits() & 0x7FFF_FFFF));
    let m = f32::from_bits(mbits);
    if mbits >= 0x7F80_0000 {
        qb.fill(0);
        f32::NAN
    } else if mbits == 0 {
        qb.fill(0);
        0.0
    } else {
        let inv = 127.0 / m;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = rne_i32(v * inv) as i8 as u8;
        }
        qb[xb.len()..].fill(0);
        m / 127.0
    }
}

/// One quantised activation row of a GGUF block format (q4_0, q8_0), as
/// [`prepare_q`] writes it in scratch: `K` int8 activations, then per
/// 32-column block the f32 scale, then per block the i32 offset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QPrep<'a> {
    /// `K` int8 activations (0 past `cols`).
    pub xq: &'a [u8],
    /// Per block the activation scale `m / 127` (f32 LE).
    sx: &'a [u8],
    /// Per block `o * sum(xq)` (i32 LE), `o` = 8 (q4_0) or 128 (q8_0): what the
    /// SIMD kernels subtract from their unsigned-weight dot products.
    off: &'a [u8],
}

impl<'a> QPrep<'a> {
    /// The view of a prepared row at the start of `s` (`K + 8 K / 32` bytes).
    pub(crate) fn view(k: usize, s: &'a [u8]) -> Self {
        let nb = k / Q_BLOCK;
        let (xq, rest) = s.split_at(k);
        let (sx, rest) = rest.split_at(4 * nb);
        Self {
            xq,
            sx,
            off: &rest[..4 * nb],
        }
    }

    /// Activation scale of block `b`.
    #[inline(always)]
    pub fn sx(&self, b: usize) -> f32 {
        get_f32(self.sx, 4 * b)
    }

    /// Offset of block `b`: `8 * sum(xq)` (q4_0) or `128 * sum(xq)` (q8_0).
    #[inline(always)]
    pub fn off(&self, b: usize) -> i32 {
        i32::from_le_bytes([
            self.off[4 * b],
            self.off[4 * b + 1],
            self.off[4 * b + 2],
            self.off[4 * b + 3],
        ])
    }
}

/// Quantise one activation row for a GGUF block format into `s`
/// (`format.q_token_bytes(cols)` bytes): per 32 columns, the i8row
/// quantisation (`quantize_act_block`: `xq = rne(x 127 / m)`, scale `m / 127`
/// in f32), and the offset `8 * sum(xq)` (q4_0, whose stored nibbles are
/// `q + 8`) or `128 * sum(xq)` (q8_0, stored as `q + 128`). One scalar
/// routine for every kernel of both formats, so all see the same integers.
pub(crate) fn prepare_q(format: WeightFormat, cols: usize, x: &[f32], s: &mut [u8]) {
    let k = format.padded_cols(cols);
    let nb = k / Q_BLOCK;
    let o: i32 = if format == WeightFormat::Q4_0 { 8 } else { 128 };
    let (xq, rest) = s.split_at_mut(k);
    let (sx, rest) = rest.split_at_mut(4 * nb);
    for (b, qb) in xq.chunks_exact_mut(Q_BLOCK).enumerate() {
        let xb = &x[(b * Q_BLOCK).min(cols)..((b + 1) * Q_BLOCK).min(cols)];
        let scale = quantize_act_block(xb, qb);
        let sum: i32 = qb.iter().map(|&v| i32::from(v as i8)).sum();
        sx[4 * b..4 * b + 4].copy_from_slice(&scale.to_le_bytes());
        rest[4 * b..4 * b + 4].copy_from_slice(&(o * sum).to_le_bytes());
    }
}

/// A LUT tile kernel: `(tile bytes, tables, y_tile, raw, valid_rows)`. It writes
/// the 16 row results without bias to `y_tile`, or, in raw mode, the integer
/// accumulators of the first `valid_rows` rows to `raw: [valid_rows, ng]`.
pub(crate) type LutTileFn<'f> =
    dyn FnMut(&[u8], &LutPrep<'_>, &mut [f32; LUT_ROW_TILE], Option<&mut [i32]>, usize) + 'f;

/// Tiles the LUT driver hands a kernel at once (separate read streams, which
/// this kind of memory system rewards, and shared table loads).
pub(crate) const LUT_TILES: usize = 4;

/// Rows of one driver chunk.
pub(crate) const LUT_CHUNK_ROWS: usize = LUT_TILES * LUT_ROW_TILE;

/// A LUT kernel over `n <= LUT_TILES` consecutive tiles:
/// `(tiles bytes, n, tables, y_chunk, raw, valid_rows)`, conventions as
/// [`LutTileFn`] with rows numbered across the chunk (`raw: [valid_rows, ng]`).
pub(crate) type LutTilesFn<'f> = dyn FnMut(&[u8], usize, &LutPrep<'_>, &mut [f32; LUT_CHUNK_ROWS], Option<&mut [i32]>, usize)
    + 'f;

/// Adapt a one-tile kernel to the driver's chunks (see [`each_tile`]).
#[allow(clippy::type_complexity)]
pub(crate) fn tiles_of<'f>(
    mut one: impl FnMut(&[u8], &LutPrep<'_>, &mut [f32; LUT_ROW_TILE], Option<&mut [i32]>, usize) + 'f,
) -> impl FnMut(&[u8], usize, &LutPrep<'_>, &mut [f32; LUT_CHUNK_ROWS], Option<&mut [i32]>, usize) + 'f
{
    move |t, n, p, o, r, v| each_tile(t, n, p, o, r, v, &mut one)
}

/// Run a one-tile kernel over each tile of a driver chunk.
pub(crate) fn each_tile(
    tiles: &[u8],
    n: usize,
    prep: &LutPrep<'_>,
    out: &mut [f32; LUT_CHUNK_ROWS],
    mut raw: Option<&mut [i32]>,
    valid: usize,
    one: &mut LutTileFn<'_>,
) {
    let tb = tiles.len().checked_div(n).unwrap_or(0);
    let ng = prep.ng;
    for t in 0..n {
        let v = valid.saturating_sub(LUT_ROW_TILE * t).min(LUT_ROW_TILE);
        let mut o = [0.0f32; LUT_ROW_TILE];
        let r = raw
            .as_deref_mut()
            .map(|r| &mut r[LUT_ROW_TILE * t * ng..(LUT_ROW_TILE * t + v) * ng]);
        one(&tiles[t * tb..(t + 1) * tb], prep, &mut o, r, v);
        out[LUT_ROW_TILE * t..LUT_ROW_TILE * (t + 1)].copy_from_slice(&o);
    }
}

/// Driver of the LUT formats: checks, tables, loop over chunks of up to
/// [`LUT_TILES`] tiles, bias.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_lut(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [u8],
    prep_fn: LutPrepFn,
    tiles_fn: &mut LutTilesFn<'_>,
) {
    check_run(format, rows, cols, packed, x, bias, y, scratch);
    let prep = prep_fn(format, cols, x, scratch);
    let tb = format.tile_bytes(cols);
    for (c, yc) in y.chunks_mut(LUT_CHUNK_ROWS).enumerate() {
        let n = yc.len().div_ceil(LUT_ROW_TILE);
        let first = c * LUT_TILES;
        let mut out = [0.0f32; LUT_CHUNK_ROWS];
        tiles_fn(
            &packed[first * tb..(first + n) * tb],
            n,
            &prep,
            &mut out,
            None,
            yc.len(),
        );
        finish_tile(yc, &out, bias.map(|b| &b[c * LUT_CHUNK_ROWS..]));
    }
}

/// Raw (integer parts) driver of the LUT formats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn raw_lut(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    scratch: &mut [u8],
    out: &mut [i32],
    prep_fn: LutPrepFn,
    tiles_fn: &mut LutTilesFn<'_>,
) {
    check_raw(format, rows, cols, packed, x, scratch, out);
    let prep = prep_fn(format, cols, x, scratch);
    let tb = format.tile_bytes(cols);
    let ng = prep.ng;
    let mut dummy = [0.0f32; LUT_CHUNK_ROWS];
    for c in 0..rows.div_ceil(LUT_CHUNK_ROWS) {
        let valid = (rows - c * LUT_CHUNK_ROWS).min(LUT_CHUNK_ROWS);
        let n = valid.div_ceil(LUT_ROW_TILE);
        let first = c * LUT_TILES;
        let o = &mut out[c * LUT_CHUNK_ROWS * ng..][..valid * ng];
        tiles_fn(
            &packed[first * tb..(first + n) * tb],
            n,
            &prep,
            &mut dummy,
            Some(o),
            valid,
        );
    }
}

fn check_raw(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    scratch: &[u8],
    out: &[i32],
) {
    let y = [0.0f32; 0];
    check_run(format, 0, cols, &[], x, None, &y, scratch);
    assert!(
        Some(packed.len()) == format.checked_packed_bytes(rows, cols),
        "integer_parts: packed has the wrong length for [rows, cols]"
    );
    assert!(
        out.len() == rows * format.int_parts_per_row(cols),
        "integer_parts: out must be [rows, int_parts_per_row]"
    );
}

/// Copy a tile's rows out, adding the bias when there is one.
#[inline]
fn finish_tile(yt: &mut [f32], out: &[f32], bias: Option<&[f32]>) {
    match bias {
        Some(b) => {
            for ((yi, &o), &bi) in yt.iter_mut().zip(out).zip(b) {
                *yi = o + bi;
            }
        }
        None => yt.copy_from_slice(&out[..yt.len()]),
    }
}

/// An i8row tile kernel: `(tile bytes, padded cols, activations, y_tile, raw, valid_rows)`,
/// conventions as [`LutTileFn`] with `raw: [valid_rows, K / 32]`.
pub(crate) type I8TileFn<'f> =
    dyn FnMut(&[u8], usize, &I8Prep<'_>, &mut [f32; ROW_TILE_8], Option<&mut [i32]>, usize) + 'f;

/// Driver of i8row: checks, activation quantisation, tile loop, bias.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_i8(
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [u8],
    tile_fn: &mut I8TileFn<'_>,
) {
    let f = WeightFormat::I8Row;
    check_run(f, rows, cols, packed, x, bias, y, scratch);
    let prep = prepare_i8(cols, x, scratch);
    let (tb, k) = (f.tile_bytes(cols), f.padded_cols(cols));
    for (t, yt) in y.chunks_mut(ROW_TILE_8).enumerate() {
        let mut out = [0.0f32; ROW_TILE_8];
        tile_fn(
            &packed[t * tb..(t + 1) * tb],
            k,
            &prep,
            &mut out,
            None,
            yt.len(),
        );
        finish_tile(yt, &out, bias.map(|b| &b[t * ROW_TILE_8..]));
    }
}

/// Raw (integer parts) driver of i8row.
pub(crate) fn raw_i8(
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    scratch: &mut [u8],
    out: &mut [i32],
    tile_fn: &mut I8TileFn<'_>,
) {
    let f = WeightFormat::I8Row;
    check_raw(f, rows, cols, packed, x, scratch, out);
    let prep = prepare_i8(cols, x, scratch);
    let (tb, k) = (f.tile_bytes(cols), f.padded_cols(cols));
    let nb = k / I8_BLOCK;
    let mut dummy = [0.0f32; ROW_TILE_8];
    for t in 0..rows.div_ceil(ROW_TILE_8) {
        let valid = (rows - t * ROW_TILE_8).min(ROW_TILE_8);
        let o = &mut out[t * ROW_TILE_8 * nb..][..valid * nb];
        tile_fn(
            &packed[t * tb..(t + 1) * tb],
            k,
            &prep,
            &mut dummy,
            Some(o),
            valid,
        );
    }
}

/// An f16 kernel over `n` (1 to 4) consecutive tiles: `(tiles bytes, n, cols, x, y)`
/// writing `8 n` row results (no bias) to `y[..8 n]`.
pub(crate) type F16TilesFn<'f> =
    dyn FnMut(&[u8], usize, usize, &[f32], &mut [f32; 4 * ROW_TILE_8]) + 'f;

/// Driver of f16: checks, loop over groups of up to 4 tiles, bias.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_f16(
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [u8],
    tiles_fn: &mut F16TilesFn<'_>,
) {
    let f = WeightFormat::F16;
    check_run(f, rows, cols, packed, x, bias, y, scratch);
    let tb = f.tile_bytes(cols);
    let per = 4 * ROW_TILE_8;
    for (c, yc) in y.chunks_mut(per).enumerate() {
        let n = yc.len().div_ceil(ROW_TILE_8);
        let mut out = [0.0f32; 4 * ROW_TILE_8];
        tiles_fn(&packed[4 * c * tb..(4 * c + n) * tb], n, cols, x, &mut out);
        finish_tile(yc, &out, bias.map(|b| &b[c * per..]));
    }
}

/// Tiles the GGUF-block driver hands a kernel at once (separate read streams).
pub(crate) const Q_TILES: usize = 4;

/// Rows of one GGUF-block driver chunk.
pub(crate) const Q_CHUNK_ROWS: usize = Q_TILES * Q_ROW_TILE;

/// Tokens (activation rows) a GGUF-block kernel call takes at most: each
/// unpacked weight chunk is used for all of them.
pub(crate) const Q_TOKENS: usize = 4;

/// Tokens a batched pass prepares at most (the scratch decides, see
/// [`run_q`]; 64 is the largest prefill chunk the runtime uses).
const Q_MAX_PASS: usize = 64;

/// A GGUF-block kernel: `(tiles bytes, n tiles (1..=Q_TILES), next, tokens
/// (1..=Q_TOKENS), out, raw, valid_rows)`. It writes token `j`'s `16 n` row
/// results without bias to `out[j]`, or, in raw mode (one token), the integer
/// parts of the first `valid_rows` rows to `raw: [valid_rows, K / 32]`.
/// `next` is `Some` (the following chunk's bytes, possibly empty) when the
/// chunk comes from memory, i.e. for the first group of tokens of a pass: a
/// kernel may then prefetch ahead of its loads; `None` when the chunk is
/// already in cache.
pub(crate) type QTilesFn<'f> = dyn FnMut(
        &[u8],
        usize,
        Option<&[u8]>,
        &[QPrep<'_>],
        &mut [[f32; Q_CHUNK_ROWS]; Q_TOKENS],
        Option<&mut [i32]>,
        usize,
    ) + 'f;

/// Driver of the GGUF block formats for `n` activation rows `xs: [n, cols]`
/// (`run` is `n = 1`): checks; then per pass of as many tokens as the
/// scratch holds (at least [`crate::quant::Q_SCRATCH_TOKENS`], at most 64),
/// quantise them (`prepare_q`), and for each chunk of up to [`Q_TILES`] tiles
/// run the kernel on groups of up to [`Q_TOKENS`] tokens, so the chunk is
/// read from memory once per pass and reused from cache by every group; bias.
/// Every output depends only on its own activation row, so the results equal
/// `n` single calls bit for bit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_q(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    n: usize,
    xs: &[f32],
    bias: Option<&[f32]>,
    ys: &mut [f32],
    scratch: &mut [u8],
    tiles_fn: &mut QTilesFn<'_>,
) {
    assert!(
        Some(xs.len()) == n.checked_mul(cols) && Some(ys.len()) == n.checked_mul(rows),
        "run_batch: xs must be [n, cols] and ys [n, rows]"
    );
    if n == 0 {
        return;
    }
    check_run(
        format,
        rows,
        cols,
        packed,
        &xs[..cols],
        bias,
        &ys[..rows],
        scratch,
    );
    let k = format.padded_cols(cols);
    let ptb = format.q_token_bytes(cols);
    let cap = scratch
        .len()
        .checked_div(ptb)
        .unwrap_or(Q_MAX_PASS)
        .clamp(1, Q_MAX_PASS);
    let tb = format.tile_bytes(cols);
    let mut p0 = 0;
    while p0 < n {
        let pn = cap.min(n - p0);
        for t in 0..pn {
            let x = &xs[(p0 + t) * cols..(p0 + t + 1) * cols];
            prepare_q(format, cols, x, &mut scratch[t * ptb..(t + 1) * ptb]);
        }
        let s: &[u8] = scratch;
        for c in 0..rows.div_ceil(Q_CHUNK_ROWS) {
            let r0 = c * Q_CHUNK_ROWS;
            let valid = (rows - r0).min(Q_CHUNK_ROWS);
            let nt = valid.div_ceil(Q_ROW_TILE);
            let tiles = &packed[c * Q_TILES * tb..(c * Q_TILES + nt) * tb];
            let next = packed
                .get((c + 1) * Q_TILES * tb..)
                .map_or(&[][..], |p| &p[..p.len().min(Q_TILES * tb)]);
            for g in (0..pn).step_by(Q_TOKENS) {
                let gn = Q_TOKENS.min(pn - g);
                let preps: [QPrep<'_>; Q_TOKENS] =
                    core::array::from_fn(|i| QPrep::view(k, &s[(g + i.min(gn - 1)) * ptb..]));
                let mut out = [[0.0f32; Q_CHUNK_ROWS]; Q_TOKENS];
                let pf = (g == 0).then_some(next);
                tiles_fn(tiles, nt, pf, &preps[..gn], &mut out, None, valid);
                for (j, o) in out.iter().enumerate().take(gn) {
                    let y = &mut ys[(p0 + g + j) * rows + r0..][..valid];
                    finish_tile(y, o, bias.map(|b| &b[r0..]));
                }
            }
        }
        p0 += pn;
    }
}

/// Raw (integer parts) driver of the GGUF block formats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn raw_q(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    scratch: &mut [u8],
    out: &mut [i32],
    tiles_fn: &mut QTilesFn<'_>,
) {
    check_raw(format, rows, cols, packed, x, scratch, out);
    let k = format.padded_cols(cols);
    prepare_q(format, cols, x, scratch);
    let prep = [QPrep::view(k, scratch)];
    let tb = format.tile_bytes(cols);
    let nb = k / Q_BLOCK;
    let mut dummy = [[0.0f32; Q_CHUNK_ROWS]; Q_TOKENS];
    for c in 0..rows.div_ceil(Q_CHUNK_ROWS) {
        let valid = (rows - c * Q_CHUNK_ROWS).min(Q_CHUNK_ROWS);
        let nt = valid.div_ceil(Q_ROW_TILE);
        let o = &mut out[c * Q_CHUNK_ROWS * nb..][..valid * nb];
        tiles_fn(
            &packed[c * Q_TILES * tb..(c * Q_TILES + nt) * tb],
            nt,
            None,
            &prep,
            &mut dummy,
            Some(o),
            valid,
        );
    }
}

/// The outputs of a GGUF-block kernel call: `[token][row of the chunk]`.
pub(crate) type QOut = [[f32; Q_CHUNK_ROWS]; Q_TOKENS];

/// Check what every q4_0 / q8_0 SIMD kernel relies on before reading through
/// raw pointers: `tiles` holds `nt` tiles of `nb` whole block records, every
/// prepared token has `32 nb` activations (its scales and offsets are read
/// through bounds-checked accessors), the outputs hold the chunk, and `raw`
/// holds `valid` rows. Returns `(tile bytes, blocks per tile)`.
pub(crate) fn q_check(
    q4: bool,
    tiles: &[u8],
    nt: usize,
    preps: &[QPrep<'_>],
    raw: Option<&[i32]>,
    valid: usize,
) -> (usize, usize) {
    let bb = if q4 {
        WeightFormat::Q4_0.q_block_bytes()
    } else {
        WeightFormat::Q8_0.q_block_bytes()
    };
    let tb = tiles.len().checked_div(nt).unwrap_or(0);
    let nb = tb / bb;
    assert!(nt <= Q_CHUNK_ROWS / Q_ROW_TILE && tb * nt == tiles.len() && nb * bb == tb);
    assert!(!preps.is_empty() && preps.len() <= Q_TOKENS);
    assert!(preps.iter().all(|p| p.xq.len() >= Q_BLOCK * nb));
    assert!(valid <= nt * Q_ROW_TILE && raw.is_none_or(|r| r.len() >= valid * nb));
    (tb, nb)
}

/// Store 16 row values of lane-ordered integer parts into `raw` rows
/// `row0..row0 + 16` (those below `valid`), block `b` of `nb`.
pub(crate) fn q_store_raw(
    raw: &mut [i32],
    v: &[i32; 16],
    row0: usize,
    valid: usize,
    nb: usize,
    b: usize,
) {
    for (i, &a) in v.iter().enumerate() {
        let r = row0 + i;
        if r < valid {
            raw[r * nb + b] = a;
        }
    }
}
