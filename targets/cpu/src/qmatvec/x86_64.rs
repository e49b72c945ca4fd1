//! x86-64 kernels: AVX2 for int8 and the LUT formats, AVX2 + F16C for f16 and
//! for the f16 scales of the LUT formats and q4_0 / q8_0, and AVX-512 (F, BW,
//! VNNI: `vpdpbusd`) for q4_0 / q8_0, listed after the AVX2 ones so the table
//! plugs them over those where the CPU has them.
//!
//! Each kernel computes exactly what its generic counterpart computes (see the
//! parent module): integer parts are exact and the float epilogue keeps one
//! output row per lane with the same operation order, multiply and add kept
//! separate. FMA would save one instruction per eight rows in the epilogues
//! only, which are not the bottleneck, so it is not used (and not required).
//!
//! Not plugged: f32 (the generic kernel is auto-vectorised and memory bound).
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use super::{q_check, q_store_raw, QOut, LUT_CHUNK_ROWS, LUT_TILES};
use super::{
    raw_i8, raw_lut, raw_q, run_f16, run_i8, run_lut, run_q, run_rows, CpuFeatures, Feature,
    I8Prep, LutPrep, QMatVec, QPrep,
};
use crate::quant::{
    lut_center, lut_params, WeightFormat, I8_BLOCK, LUT_ROW_TILE, Q_BLOCK, Q_CHUNK, Q_ROW_TILE,
    ROW_TILE_8,
};

/// An AVX2 kernel of one format.
#[derive(Debug)]
pub struct Avx2 {
    format: WeightFormat,
    name: &'static str,
    requires: &'static [Feature],
}

const AVX2: &[Feature] = &[Feature::Avx2];
const AVX2_F16C: &[Feature] = &[Feature::Avx2, Feature::F16c];
const AVX512_VNNI: &[Feature] = &[Feature::Avx512Vnni];

/// An AVX-512 (F + BW + VNNI) kernel of a GGUF block format (q4_0, q8_0).
#[derive(Debug)]
pub struct Avx512 {
    format: WeightFormat,
    name: &'static str,
}

/// The `x86_64_avx512vnni_q4_0` kernel.
pub static AVX512_Q4_0: Avx512 = Avx512 {
    format: WeightFormat::Q4_0,
    name: "x86_64_avx512vnni_q4_0",
};
/// The `x86_64_avx512vnni_q8_0` kernel.
pub static AVX512_Q8_0: Avx512 = Avx512 {
    format: WeightFormat::Q8_0,
    name: "x86_64_avx512vnni_q8_0",
};

macro_rules! avx2_kernels {
    ($($id:ident: $f:ident => $name:literal, $req:expr;)*) => {
        $(
            #[doc = concat!("The `", $name, "` kernel.")]
            pub static $id: Avx2 = Avx2 { format: WeightFormat::$f, name: $name, requires: $req };
        )*
        /// Every kernel of this module, AVX2 ones first: the table plugs them in
        /// this order, so an AVX-512 kernel replaces the AVX2 one of its format.
        pub static KERNELS: [&'static dyn QMatVec; 14] = [$(&$id,)* &AVX512_Q4_0, &AVX512_Q8_0];
    };
}

avx2_kernels! {
    F16: F16 => "x86_64_avx2_f16c_f16", AVX2_F16C;
    I8ROW: I8Row => "x86_64_avx2_i8row", AVX2;
    I4G32: I4G32 => "x86_64_avx2_i4g32", AVX2_F16C;
    I4G64: I4G64 => "x86_64_avx2_i4g64", AVX2_F16C;
    I2G32: I2G32 => "x86_64_avx2_i2g32", AVX2_F16C;
    I2G64: I2G64 => "x86_64_avx2_i2g64", AVX2_F16C;
    I4G32Z: I4G32Z => "x86_64_avx2_i4g32z", AVX2_F16C;
    I4G64Z: I4G64Z => "x86_64_avx2_i4g64z", AVX2_F16C;
    I2G32Z: I2G32Z => "x86_64_avx2_i2g32z", AVX2_F16C;
    I2G64Z: I2G64Z => "x86_64_avx2_i2g64z", AVX2_F16C;
    Q4_0: Q4_0 => "x86_64_avx2_q4_0", AVX2_F16C;
    Q8_0: Q8_0 => "x86_64_avx2_q8_0", AVX2_F16C;
}

impl Avx2 {
    fn assert_supported(&self) {
        assert!(
            self.is_supported_here(),
            "{}: this CPU lacks a required feature",
            self.name
        );
    }
}

impl QMatVec for Avx2 {
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
            f @ (WeightFormat::Q4_0 | WeightFormat::Q8_0) => {
                self.assert_supported();
                run_q(
                    f,
                    rows,
                    cols,
                    packed,
                    n,
                    xs,
                    bias,
                    ys,
                    scratch,
                    &mut q_avx2_fn(f),
                )
            }
            _ => run_rows(self, rows, cols, packed, n, xs, bias, ys, scratch),
        }
    }

    fn format(&self) -> WeightFormat {
        self.format
    }

    fn requires(&self) -> &'static [Feature] {
        self.requires
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
        self.assert_supported();
        match self.format {
            WeightFormat::F16 => run_f16(
                rows,
                cols,
                packed,
                x,
                bias,
                y,
                scratch,
                &mut |t, n, c, x, o| {
                    // SAFETY: `assert_supported` checked AVX2 and F16C; `run_f16`
                    // passes `n` (1..=4) whole tiles of `c` columns and `x.len() == c`.
                    unsafe { f16_tiles(t, n, c, x, o) }
                },
            ),
            WeightFormat::I8Row => run_i8(
                rows,
                cols,
                packed,
                x,
                bias,
                y,
                scratch,
                &mut |t, k, p, o, r, v| {
                    // SAFETY: AVX2 checked above; `run_i8` passes whole tiles and
                    // prepared activations of `k` padded columns.
                    unsafe { i8_tile(t, k, p, o, r, v) }
                },
            ),
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
                &mut q_avx2_fn(f),
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
                prepare_lut_x86,
                &mut lut_tiles_fn(f),
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
        self.assert_supported();
        match self.format {
            WeightFormat::F32 | WeightFormat::F16 => false,
            WeightFormat::I8Row => {
                raw_i8(
                    rows,
                    cols,
                    packed,
                    x,
                    scratch,
                    out,
                    &mut |t, k, p, o, r, v| {
                        // SAFETY: as in `run`.
                        unsafe { i8_tile(t, k, p, o, r, v) }
                    },
                );
                true
            }
            f @ (WeightFormat::Q4_0 | WeightFormat::Q8_0) => {
                raw_q(f, rows, cols, packed, x, scratch, out, &mut q_avx2_fn(f));
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
                    prepare_lut_x86,
                    &mut lut_tiles_fn(f),
                );
                true
            }
        }
    }
}

// ------------------------------------------------------------------ f16

/// f16 over `n` tiles of 8 rows (4 at a time: four independent add chains).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_tiles(tiles: &[u8], n: usize, cols: usize, x: &[f32], out: &mut [f32; 32]) {
    match n {
        // SAFETY: same precondition as ours.
        4 => unsafe { f16_n::<4>(tiles, cols, x, out) },
        _ => {
            let tb = 16 * cols;
            for t in 0..n {
                let mut o = [0.0f32; 32];
                // SAFETY: same precondition as ours.
                unsafe { f16_n::<1>(&tiles[t * tb..(t + 1) * tb], cols, x, &mut o) };
                out[8 * t..8 * t + 8].copy_from_slice(&o[..8]);
            }
        }
    }
}

/// `NT` consecutive f16 tiles: per column `acc_t = acc_t + cvt(w_t) * x[c]`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_n<const NT: usize>(tiles: &[u8], cols: usize, x: &[f32], out: &mut [f32; 32]) {
    let tb = 16 * cols;
    assert!(NT <= 4 && tiles.len() >= NT * tb && x.len() >= cols);
    let base = tiles.as_ptr();
    let mut acc = [_mm256_setzero_ps(); NT];
    for (c, &xv) in x[..cols].iter().enumerate() {
        let xv = _mm256_set1_ps(xv);
        for (t, a) in acc.iter_mut().enumerate() {
            // SAFETY: `t * tb + 16 * c + 16 <= NT * tb <= tiles.len()` (asserted above).
            let h = unsafe { _mm_loadu_si128(base.add(t * tb + 16 * c).cast()) };
            *a = _mm256_add_ps(*a, _mm256_mul_ps(_mm256_cvtph_ps(h), xv));
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: `8 * t + 8 <= 32` since `NT <= 4`.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * t), *a) };
    }
}

// ------------------------------------------------------------------ i8row

/// i8row tile (8 rows): per 32-column block, row `i`'s exact integer dot is
/// `madd(maddubs(|xq|, sign(w_i, xq)), 1)` summed over lanes. `maddubs` sees
/// `|xq| <= 127` times `w * sign(xq)` in `[-127, 127]` (quantisation never
/// writes -128), so a pair is at most `2 * 127 * 127 = 32258 < 2^15`: no
/// saturation, and the block sum (<= 516128) is exact in i32 and f32. The eight
/// row sums are gathered into one vector (lane `i` = row `i`) and the float
/// epilogue runs per lane as in the generic kernel.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn i8_tile(
    tile: &[u8],
    k: usize,
    p: &I8Prep<'_>,
    y: &mut [f32; ROW_TILE_8],
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let nb = k / I8_BLOCK;
    assert!(tile.len() == 32 + 8 * k && p.xq.len() >= k && k.is_multiple_of(I8_BLOCK));
    let w = tile.as_ptr();
    let xq = p.xq.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut ya = _mm256_setzero_ps();
    for b in 0..nb {
        // SAFETY: `32 * b + 32 <= k <= p.xq.len()`.
        let xv = unsafe { _mm256_loadu_si256(xq.add(32 * b).cast()) };
        let ax = _mm256_abs_epi8(xv);
        let row = |i: usize| {
            // SAFETY: `32 + i * k + 32 * b + 32 <= 32 + 8 * k == tile.len()` for `i < 8`.
            let wv = unsafe { _mm256_loadu_si256(w.add(32 + i * k + 32 * b).cast()) };
            _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv)), ones)
        };
        let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
        let (d4, d5, d6, d7) = (row(4), row(5), row(6), row(7));
        let h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(d0, d1), _mm256_hadd_epi32(d2, d3));
        let h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(d4, d5), _mm256_hadd_epi32(d6, d7));
        // h0 = [r0 r1 r2 r3 (low halves) | r0 r1 r2 r3 (high halves)], h1 likewise.
        let v = _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(h0, h1),
            _mm256_permute2x128_si256::<0x31>(h0, h1),
        );
        if let Some(raw) = raw.as_deref_mut() {
            let mut t = [0i32; 8];
            // SAFETY: `t` holds 8 i32.
            unsafe { _mm256_storeu_si256(t.as_mut_ptr().cast(), v) };
            for (i, &a) in t.iter().enumerate().take(valid) {
                raw[i * nb + b] = a;
            }
            continue;
        }
        ya = _mm256_add_ps(
            ya,
            _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(p.sx(b))),
        );
    }
    // SAFETY: the tile starts with 8 f32 scales (32 bytes, asserted above);
    // `y` holds 8 f32. x86-64 is little-endian, as the layout.
    unsafe {
        let s = _mm256_loadu_ps(w.cast());
        _mm256_storeu_ps(y.as_mut_ptr(), _mm256_mul_ps(ya, s));
    }
}

// ------------------------------------------------------------------ LUT

/// The AVX2 LUT kernel of `format` over a driver chunk of up to [`LUT_TILES`] tiles.
#[allow(clippy::type_complexity)]
fn lut_tiles_fn(
    format: WeightFormat,
) -> impl FnMut(&[u8], usize, &LutPrep<'_>, &mut [f32; LUT_CHUNK_ROWS], Option<&mut [i32]>, usize) {
    let (g, bits, zp) = lut_params(format);
    move |tiles, n, prep, y, raw, valid| {
        // SAFETY: every caller (`run`, `integer_parts`) checked AVX2 and F16C
        // first; `run_lut` / `raw_lut` pass `n` whole tiles and the tables of
        // the same format and `cols`.
        unsafe {
            match (bits, g, zp) {
                (4, 32, false) => lut_chunk::<4, 32, false>(tiles, n, prep, y, raw, valid),
                (4, 64, false) => lut_chunk::<4, 64, false>(tiles, n, prep, y, raw, valid),
                (2, 32, false) => lut_chunk::<2, 32, false>(tiles, n, prep, y, raw, valid),
                (2, 64, false) => lut_chunk::<2, 64, false>(tiles, n, prep, y, raw, valid),
                (4, 32, true) => lut_chunk::<4, 32, true>(tiles, n, prep, y, raw, valid),
                (4, 64, true) => lut_chunk::<4, 64, true>(tiles, n, prep, y, raw, valid),
                (2, 32, true) => lut_chunk::<2, 32, true>(tiles, n, prep, y, raw, valid),
                _ => lut_chunk::<2, 64, true>(tiles, n, prep, y, raw, valid),
            }
        }
    }
}

/// A driver chunk: four tiles at once when it is full, else tile by tile.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn lut_chunk<const BITS: u32, const G: usize, const ZP: bool>(
    tiles: &[u8],
    n: usize,
    p: &LutPrep<'_>,
    y: &mut [f32; LUT_CHUNK_ROWS],
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    if n == LUT_TILES {
        // SAFETY: same precondition as ours.
        unsafe { lut_tiles::<BITS, G, ZP, LUT_TILES>(tiles, p, y, raw, valid) };
        return;
    }
    let tb = tiles.len().checked_div(n).unwrap_or(0);
    let ng = p.ng;
    for t in 0..n {
        let v = valid.saturating_sub(LUT_ROW_TILE * t).min(LUT_ROW_TILE);
        let mut o = [0.0f32; LUT_CHUNK_ROWS];
        let r = raw
            .as_deref_mut()
            .map(|r| &mut r[LUT_ROW_TILE * t * ng..(LUT_ROW_TILE * t + v) * ng]);
        // SAFETY: same precondition as ours.
        unsafe { lut_tiles::<BITS, G, ZP, 1>(&tiles[t * tb..(t + 1) * tb], p, &mut o, r, v) };
        y[LUT_ROW_TILE * t..LUT_ROW_TILE * (t + 1)].copy_from_slice(&o[..LUT_ROW_TILE]);
    }
}

/// `NT` consecutive 16-row LUT tiles (one read stream each; the tables are
/// loaded once for all of them). Per 32-byte block, `pshufb` looks up the low
/// and the high nibbles of the weight bytes in the broadcast table (int4: one
/// table, int2: two consecutive tables); byte `2i + j` of a lookup belongs to
/// row `i` and has weight `2^j` (low nibble) or `2^(j + 2)` / `2^j` (high
/// nibble, int4 / int2), applied by `maddubs(weights, lookup)`, which also
/// widens to i16 lane `i` = row `i`.
///
/// Overflow bound: entries are in `[-127, 127]`; a `maddubs` pair is at most
/// `(4 + 8) * 127 = 1524`; a whole group adds, per table, at most
/// `(1 + 2 + 4 + 8) * 127 = 1905` (int4) or `(1 + 2) * 127 = 381` (int2), so
/// with at most 16 tables per group `|acc| <= 16 * 1905 = 30480 < 2^15`. Every
/// partial sum is bounded by the same total, so the i16 lanes never wrap and
/// equal the generic kernel's i32 sums.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn lut_tiles<const BITS: u32, const G: usize, const ZP: bool, const NT: usize>(
    tiles: &[u8],
    p: &LutPrep<'_>,
    y: &mut [f32; LUT_CHUNK_ROWS],
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let ng = p.ng;
    let wbytes = LUT_ROW_TILE * G * BITS as usize / 8;
    let gb = wbytes + 32 + if ZP { 32 } else { 0 };
    let tb = ng * gb;
    assert!(NT <= LUT_TILES && tiles.len() == NT * tb);
    assert!(p.tables.len() >= 16 * ng * (G / 4));
    assert!(raw.as_deref().is_none_or(|r| r.len() >= valid * ng) && valid <= NT * LUT_ROW_TILE);
    let mask = _mm256_set1_epi8(0x0F);
    // Byte multipliers for maddubs: [1, 2] per row; high nibbles [4, 8] for int4.
    let mul_lo = _mm256_set1_epi16(0x0201);
    let mul_hi = if BITS == 4 {
        _mm256_set1_epi16(0x0804)
    } else {
        mul_lo
    };
    let c = _mm256_set1_ps(lut_center(BITS));
    let base = tiles.as_ptr();
    let mut yv = [[_mm256_setzero_ps(); 2]; NT];
    let mut tp = p.tables.as_ptr();
    for gi in 0..ng {
        let goff = gi * gb;
        let mut acc = [_mm256_setzero_si256(); NT];
        // SAFETY: group `gi` of tile `t` occupies
        // `tiles[t * tb + goff..t * tb + goff + gb]` (within `NT * tb`, asserted)
        // and its tables `tables[16 * gi * G / 4..16 * (gi + 1) * G / 4]`;
        // `tp` advances by exactly `16 * G / 4` per group.
        unsafe {
            for blk in 0..wbytes / 32 {
                let ta = _mm256_broadcastsi128_si256(_mm_loadu_si128(tp.cast()));
                let tb2 = if BITS == 4 {
                    ta
                } else {
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(tp.add(16).cast()))
                };
                for (t, a) in acc.iter_mut().enumerate() {
                    let w = _mm256_loadu_si256(base.add(t * tb + goff + 32 * blk).cast());
                    let lo = _mm256_and_si256(w, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(w), mask);
                    let la = _mm256_maddubs_epi16(mul_lo, _mm256_shuffle_epi8(ta, lo));
                    let lb = _mm256_maddubs_epi16(mul_hi, _mm256_shuffle_epi8(tb2, hi));
                    *a = _mm256_add_epi16(*a, _mm256_add_epi16(la, lb));
                }
                tp = tp.add(if BITS == 4 { 16 } else { 32 });
            }
        }
        let (hts, xs) = (_mm256_set1_ps(p.hts(gi)), _mm256_set1_ps(p.xs(gi)));
        for (t, (a, yt)) in acc.iter().zip(yv.iter_mut()).enumerate() {
            // SAFETY: the 32 bytes of scales (and 32 of zero points) follow
            // the group's weights in tile `t`.
            let (s0, s1, z) = unsafe {
                let sp = base.add(t * tb + goff + wbytes);
                let s0 = _mm256_cvtph_ps(_mm_loadu_si128(sp.cast()));
                let s1 = _mm256_cvtph_ps(_mm_loadu_si128(sp.add(16).cast()));
                let z = if ZP {
                    Some((
                        _mm256_cvtph_ps(_mm_loadu_si128(sp.add(32).cast())),
                        _mm256_cvtph_ps(_mm_loadu_si128(sp.add(48).cast())),
                    ))
                } else {
                    None
                };
                (s0, s1, z)
            };
            if let Some(raw) = raw.as_deref_mut() {
                let mut tmp = [0i16; 16];
                // SAFETY: `tmp` holds 16 i16.
                unsafe { _mm256_storeu_si256(tmp.as_mut_ptr().cast(), *a) };
                for (i, &v) in tmp.iter().enumerate() {
                    let r = LUT_ROW_TILE * t + i;
                    if r < valid {
                        raw[r * ng + gi] = i32::from(v);
                    }
                }
                continue;
            }
            let a0 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(*a)));
            let a1 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(*a)));
            let mut t0 = _mm256_mul_ps(a0, hts);
            let mut t1 = _mm256_mul_ps(a1, hts);
            if let Some((z0, z1)) = z {
                t0 = _mm256_add_ps(t0, _mm256_mul_ps(_mm256_sub_ps(c, z0), xs));
                t1 = _mm256_add_ps(t1, _mm256_mul_ps(_mm256_sub_ps(c, z1), xs));
            }
            yt[0] = _mm256_add_ps(yt[0], _mm256_mul_ps(t0, s0));
            yt[1] = _mm256_add_ps(yt[1], _mm256_mul_ps(t1, s1));
        }
    }
    for (t, yt) in yv.iter().enumerate() {
        // SAFETY: `y` holds `LUT_CHUNK_ROWS >= 16 NT` f32.
        unsafe {
            _mm256_storeu_ps(y.as_mut_ptr().add(16 * t), yt[0]);
            _mm256_storeu_ps(y.as_mut_ptr().add(16 * t + 8), yt[1]);
        }
    }
}

// ------------------------------------------------------------------ LUT tables

/// [`super::prepare_lut`] with AVX2 when this CPU has it (byte-identical
/// scratch, so kernels see the same tables), else the generic routine.
fn prepare_lut_x86<'a>(
    format: WeightFormat,
    cols: usize,
    x: &[f32],
    scratch: &'a mut [u8],
) -> LutPrep<'a> {
    if CpuFeatures::host().avx2 {
        // SAFETY: AVX2 is present (checked just above).
        unsafe { prepare_lut_avx2(format, cols, x, scratch) }
    } else {
        super::prepare_lut(format, cols, x, scratch)
    }
}

/// The generic table builder's arithmetic with eight 4-column sets per
/// vector (lane `l < 4` is set `2l`, lane `4 + l` is set `2l + 1` of each 32
/// columns): every lane performs the generic scalar operations in the same
/// order (sign flips as exact negations, separate adds, the same
/// round-to-nearest-even trick), and the maximum and the column-order sum are
/// taken over the same values, so the tables and parameters are identical.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn prepare_lut_avx2<'a>(
    format: WeightFormat,
    cols: usize,
    x: &[f32],
    scratch: &'a mut [u8],
) -> LutPrep<'a> {
    let (g, _, zp) = lut_params(format);
    let (tables, params, ng) = LutPrep::parts(format, cols, scratch);
    let chunks = g / 32;
    let sign = _mm256_set1_ps(-0.0);
    let magic = _mm256_set1_ps(12_582_912.0);
    let magic_bits = _mm256_set1_epi32(0x4B40_0000);
    // Per 128-bit lane: 4x4 byte transpose, and byte reversal within 8-byte halves.
    let tr = _mm256_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10,
        14, 3, 7, 11, 15,
    );
    let rev = _mm256_setr_epi8(
        7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13,
        12, 11, 10, 9, 8,
    );
    for gi in 0..ng {
        let mut t = [[_mm256_setzero_ps(); 8]; 2];
        let mut mav = _mm256_setzero_ps();
        let mut finite = true;
        for (ch, tc) in t.iter_mut().enumerate().take(chunks) {
            let c = gi * g + 32 * ch;
            let mut buf = [0.0f32; 32];
            let src: &[f32] = match x.get(c..c + 32) {
                Some(v) => v,
                None => {
                    if c < cols {
                        buf[..cols - c].copy_from_slice(&x[c..cols]);
                    }
                    &buf
                }
            };
            // SAFETY: `src` holds 32 f32.
            let (a, b, cc, d) = unsafe {
                let p = src.as_ptr();
                (
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                )
            };
            let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            let (t2, t3) = (_mm256_unpacklo_ps(cc, d), _mm256_unpackhi_ps(cc, d));
            let x0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let x1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let x2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let x3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let abs = |v| _mm256_andnot_ps(sign, v);
            let ma = _mm256_add_ps(
                _mm256_add_ps(_mm256_add_ps(abs(x0), abs(x1)), abs(x2)),
                abs(x3),
            );
            let ok = _mm256_cmp_ps::<_CMP_LE_OQ>(ma, _mm256_set1_ps(f32::MAX));
            finite &= _mm256_movemask_ps(ok) == 0xFF;
            mav = _mm256_max_ps(mav, ma);
            let (n0, n1, n2) = (
                _mm256_xor_ps(x0, sign),
                _mm256_xor_ps(x1, sign),
                _mm256_xor_ps(x2, sign),
            );
            for (i, ti) in tc.iter_mut().enumerate() {
                let s0 = if i & 1 != 0 { x0 } else { n0 };
                let s1 = if i & 2 != 0 { x1 } else { n1 };
                let s2 = if i & 4 != 0 { x2 } else { n2 };
                *ti = _mm256_sub_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), s2), x3);
            }
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mav) };
        let m = lanes.iter().fold(0.0f32, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        if zp {
            for tc in &t[..chunks] {
                // SAFETY: `lanes` holds 8 f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_xor_ps(tc[0], sign)) };
                for a in 0..8 {
                    sum += lanes[(a % 2) * 4 + a / 2];
                }
            }
        }
        let tabs = &mut tables[16 * gi * (g / 4)..16 * (gi + 1) * (g / 4)];
        if !finite || m == 0.0 {
            tabs.fill(0);
        } else {
            let inv = _mm256_set1_ps(127.0 / m);
            for (ch, tc) in t.iter().enumerate().take(chunks) {
                let q = tc.map(|ti| {
                    let v = _mm256_mul_ps(ti, inv);
                    _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(v, magic)), magic_bits)
                });
                let b0 = _mm256_packs_epi16(
                    _mm256_packs_epi32(q[0], q[1]),
                    _mm256_packs_epi32(q[2], q[3]),
                );
                let b1 = _mm256_packs_epi16(
                    _mm256_packs_epi32(q[4], q[5]),
                    _mm256_packs_epi32(q[6], q[7]),
                );
                let (c0, c1) = (_mm256_shuffle_epi8(b0, tr), _mm256_shuffle_epi8(b1, tr));
                // Per 128-bit lane: [set l: q0..q7, set l + 1: q0..q7] for lanes (0, 1), (2, 3).
                let v01 = _mm256_unpacklo_epi32(c0, c1);
                let v23 = _mm256_unpackhi_epi32(c0, c1);
                let zero = _mm256_setzero_si256();
                let r01 = _mm256_shuffle_epi8(_mm256_sub_epi8(zero, v01), rev);
                let r23 = _mm256_shuffle_epi8(_mm256_sub_epi8(zero, v23), rev);
                // Low 128-bit lane holds sets 0, 2 (v01) and 4, 6 (v23); high lane 1, 3 and 5, 7.
                let out = [
                    _mm256_unpacklo_epi64(v01, r01),
                    _mm256_unpackhi_epi64(v01, r01),
                    _mm256_unpacklo_epi64(v23, r23),
                    _mm256_unpackhi_epi64(v23, r23),
                ];
                let dst = &mut tabs[16 * 8 * ch..16 * 8 * (ch + 1)];
                for (j, o) in out.iter().enumerate() {
                    // SAFETY: `dst` holds 8 tables of 16 bytes; `o` is tables
                    // of sets `2j` and `2j + 1`, bytes `32 j..32 j + 32`.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(32 * j).cast(), *o) };
                }
            }
        }
        let hts = if finite { (m / 127.0) * 0.5 } else { f32::NAN };
        LutPrep::set_params(params, ng, gi, hts, sum);
    }
    LutPrep::from_parts(tables, params, ng)
}

// ------------------------------------------------------------------ q4_0 / q8_0

/// Bytes each tile's read stream prefetches ahead of its loads.
const PREFETCH_AHEAD: usize = 2048;

/// Software prefetch (`prefetcht0`) of one tile's read stream
/// [`PREFETCH_AHEAD`] bytes ahead: the lines of stream bytes `at + D..at + D +
/// n`, where the stream is `tile` followed by the same tile of the next chunk
/// (`next`, possibly empty). Several independent streams of 9-25 KB tiles
/// are too short and too many for the hardware prefetchers to ramp up on;
/// this keeps about `PREFETCH_AHEAD` bytes per stream in flight (well inside
/// L1 for four streams). Consecutive calls with `at` advancing by `n` cover
/// each line once.
#[inline(always)]
fn prefetch_ahead(tile: &[u8], next: &[u8], at: usize, n: usize) {
    let (lo, hi) = ((at + PREFETCH_AHEAD) / 64, (at + n + PREFETCH_AHEAD) / 64);
    if 64 * hi <= tile.len() {
        // The common case: all lines inside the tile.
        for l in lo..hi {
            // SAFETY: `64 l < 64 hi <= tile.len()`; a prefetch reads nothing
            // architecturally and needs only SSE (x86-64 baseline).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(tile.as_ptr().add(64 * l).cast()) };
        }
        return;
    }
    for l in lo..hi {
        let b = 64 * l;
        let p = if b < tile.len() {
            tile[b..].as_ptr()
        } else if b - tile.len() < next.len() {
            next[b - tile.len()..].as_ptr()
        } else {
            return;
        };
        // SAFETY: `p` points into `tile` or `next`; as above.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }
}

/// The AVX2 kernel of q4_0 / q8_0 as the driver's tile function.
#[allow(clippy::type_complexity)]
fn q_avx2_fn(
    format: WeightFormat,
) -> impl FnMut(&[u8], usize, Option<&[u8]>, &[QPrep<'_>], &mut QOut, Option<&mut [i32]>, usize) {
    let q4 = format == WeightFormat::Q4_0;
    move |tiles, nt, next, preps, out, raw, valid| {
        let (tb, _) = q_check(q4, tiles, nt, preps, raw.as_deref(), valid);
        // SAFETY: every caller (`run`, `run_batch`, `integer_parts`) checked
        // AVX2 and F16C first; `q_check` asserted the lengths the kernel reads.
        unsafe {
            match (q4, preps.len()) {
                (true, 1) => q_avx2_span::<true, 2, 1>(tiles, tb, nt, next, preps, out, raw, valid),
                (true, 2) => q_avx2_span::<true, 1, 2>(tiles, tb, nt, next, preps, out, raw, valid),
                (true, 3) => q_avx2_span::<true, 1, 3>(tiles, tb, nt, next, preps, out, raw, valid),
                (true, _) => q_avx2_span::<true, 1, 4>(tiles, tb, nt, next, preps, out, raw, valid),
                (false, 1) => {
                    q_avx2_span::<false, 2, 1>(tiles, tb, nt, next, preps, out, raw, valid)
                }
                (false, 2) => {
                    q_avx2_span::<false, 1, 2>(tiles, tb, nt, next, preps, out, raw, valid)
                }
                (false, 3) => {
                    q_avx2_span::<false, 1, 3>(tiles, tb, nt, next, preps, out, raw, valid)
                }
                (false, _) => {
                    q_avx2_span::<false, 1, 4>(tiles, tb, nt, next, preps, out, raw, valid)
                }
            }
        }
    }
}

/// The chunk's tiles `NT` at a time (then one at a time), `TB` tokens each.
///
/// # Safety
/// The CPU must support AVX2 and F16C; the arguments must pass [`q_check`].
#[target_feature(enable = "avx2,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn q_avx2_span<const Q4: bool, const NT: usize, const TB: usize>(
    tiles: &[u8],
    tb: usize,
    nt: usize,
    next: Option<&[u8]>,
    preps: &[QPrep<'_>],
    out: &mut QOut,
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    // The same tiles of the next chunk, for the kernel to prefetch.
    let pf = |t0: usize, n: usize| {
        next.map(|next| {
            let a = (t0 * tb).min(next.len());
            &next[a..((t0 + n) * tb).min(next.len())]
        })
    };
    let mut t0 = 0;
    while t0 < nt {
        // SAFETY: same preconditions as ours; tiles `t0..t0 + NT` (or `+ 1`) exist.
        unsafe {
            if nt - t0 >= NT {
                q_avx2_tiles::<Q4, NT, TB>(
                    tiles,
                    tb,
                    t0,
                    pf(t0, NT),
                    preps,
                    out,
                    raw.as_deref_mut(),
                    valid,
                );
                t0 += NT;
            } else {
                q_avx2_tiles::<Q4, 1, TB>(
                    tiles,
                    tb,
                    t0,
                    pf(t0, 1),
                    preps,
                    out,
                    raw.as_deref_mut(),
                    valid,
                );
                t0 += 1;
            }
        }
    }
}

/// `NT` tiles from tile `t0` for `TB` tokens with AVX2. A 64-byte weight chunk
/// is two vectors (rows 0..8, rows 8..16), 4 bytes per row.
///
/// q4_0: the nibbles `q` in `[0, 15]` are `maddubs`' unsigned operand, the
/// broadcast 4 activations (`|xq| <= 127`) the signed one: each i16 pair is at
/// most `2 * 15 * 127 = 3810`, low plus high nibbles `7620` per chunk, and the
/// i16 lanes sum 4 chunks (`30480 < 2^15`): exact. `madd` with ones gives each
/// row's dot `sum q xq` (`<= 60960`) in i32 lane order = row order; minus the
/// prepared `8 sum(xq)` that is the integer part `sum (q - 8) xq`.
///
/// q8_0: `q = w ^ 0x80` in `[-128, 127]`; the sign trick runs on the weights:
/// `maddubs(|q|, sign(xq, q))` (`|q| <= 128` read unsigned, so `-128` is
/// exact; `xq` in `[-127, 127]` negates safely) gives pairs of at most
/// `2 * 128 * 127 = 32512 < 2^15`, widened by `madd` to i32 per row and
/// summed over the block: `|sum q xq| <= 520192`, the integer part itself.
///
/// Epilogue per row lane, blocks in order: `ya = ya + (acc * sx) * d`.
///
/// # Safety
/// The CPU must support AVX2 and F16C; the arguments must pass [`q_check`]
/// and `t0 + NT <= nt`.
#[target_feature(enable = "avx2,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn q_avx2_tiles<const Q4: bool, const NT: usize, const TB: usize>(
    tiles: &[u8],
    tb: usize,
    t0: usize,
    pf: Option<&[u8]>,
    preps: &[QPrep<'_>],
    out: &mut QOut,
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let bb = if Q4 { 288 } else { 544 };
    let wb = bb - 2 * Q_ROW_TILE;
    let nb = tb / bb;
    assert!(preps.len() == TB && (t0 + NT) * tb <= tiles.len());
    // SAFETY: in bounds by the assertion above.
    let base = unsafe { tiles.as_ptr().add(t0 * tb) };
    let mask = _mm256_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let mut ya = [[[_mm256_setzero_ps(); 2]; NT]; TB];
    for b in 0..nb {
        if let Some(pf) = pf {
            for t in 0..NT {
                let next = pf.get(t * tb..).unwrap_or(&[]);
                prefetch_ahead(&tiles[(t0 + t) * tb..(t0 + t + 1) * tb], next, b * bb, bb);
            }
        }
        let mut acc = [[[_mm256_setzero_si256(); 2]; NT]; TB];
        let chunks = if Q4 { 4 } else { 8 };
        for k in 0..chunks {
            // Broadcast activations: q4_0 columns 8k..8k+4 (low nibbles) and
            // 8k+4..8k+8 (high); q8_0 columns 4k..4k+4.
            let xv: [[__m256i; 2]; TB] = core::array::from_fn(|j| {
                let at = Q_BLOCK * b + if Q4 { 8 * k } else { 4 * k };
                let xp = preps[j].xq.as_ptr();
                // SAFETY: `at + 8 <= 32 nb <= xq.len()` (`q_check`).
                unsafe {
                    let lo = _mm256_set1_epi32(xp.add(at).cast::<i32>().read_unaligned());
                    let hi = if Q4 {
                        _mm256_set1_epi32(xp.add(at + 4).cast::<i32>().read_unaligned())
                    } else {
                        lo
                    };
                    [lo, hi]
                }
            });
            for t in 0..NT {
                for h in 0..2 {
                    // SAFETY: chunk `k` of block `b` of tile `t` is inside the
                    // asserted `NT` tiles.
                    let w = unsafe {
                        _mm256_loadu_si256(base.add(t * tb + b * bb + Q_CHUNK * k + 32 * h).cast())
                    };
                    if Q4 {
                        let lo = _mm256_and_si256(w, mask);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(w), mask);
                        for j in 0..TB {
                            let p = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, xv[j][0]),
                                _mm256_maddubs_epi16(hi, xv[j][1]),
                            );
                            acc[j][t][h] = _mm256_add_epi16(acc[j][t][h], p);
                        }
                    } else {
                        let q = _mm256_xor_si256(w, flip);
                        let aq = _mm256_abs_epi8(q);
                        for j in 0..TB {
                            let p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(xv[j][0], q));
                            acc[j][t][h] =
                                _mm256_add_epi32(acc[j][t][h], _mm256_madd_epi16(p, ones));
                        }
                    }
                }
            }
        }
        for t in 0..NT {
            // SAFETY: the block's 16 f16 scales follow its weights in tile `t`.
            let d = unsafe {
                let dp = base.add(t * tb + b * bb + wb);
                [
                    _mm256_cvtph_ps(_mm_loadu_si128(dp.cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(dp.add(16).cast())),
                ]
            };
            for j in 0..TB {
                let off = _mm256_set1_epi32(if Q4 { preps[j].off(b) } else { 0 });
                let v = acc[j][t].map(|a| {
                    let a = if Q4 { _mm256_madd_epi16(a, ones) } else { a };
                    _mm256_sub_epi32(a, off)
                });
                if let Some(raw) = raw.as_deref_mut() {
                    let mut tmp = [0i32; 16];
                    // SAFETY: `tmp` holds 16 i32.
                    unsafe {
                        _mm256_storeu_si256(tmp.as_mut_ptr().cast(), v[0]);
                        _mm256_storeu_si256(tmp.as_mut_ptr().add(8).cast(), v[1]);
                    }
                    q_store_raw(raw, &tmp, Q_ROW_TILE * (t0 + t), valid, nb, b);
                    continue;
                }
                let sx = _mm256_set1_ps(preps[j].sx(b));
                for h in 0..2 {
                    let f = _mm256_mul_ps(_mm256_cvtepi32_ps(v[h]), sx);
                    ya[j][t][h] = _mm256_add_ps(ya[j][t][h], _mm256_mul_ps(f, d[h]));
                }
            }
        }
    }
    for (j, yj) in ya.iter().enumerate() {
        for (t, yt) in yj.iter().enumerate() {
            let o = &mut out[j][Q_ROW_TILE * (t0 + t)..Q_ROW_TILE * (t0 + t + 1)];
            // SAFETY: `o` holds 16 f32 (`q_check`: `t0 + t < nt <= 4`).
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), yt[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), yt[1]);
            }
        }
    }
}

impl Avx512 {
    fn assert_supported(&self) {
        assert!(
            self.is_supported_here(),
            "{}: this CPU lacks AVX-512 F/BW/VNNI",
            self.name
        );
    }
}

impl QMatVec for Avx512 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn format(&self) -> WeightFormat {
        self.format
    }

    fn requires(&self) -> &'static [Feature] {
        AVX512_VNNI
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
        self.assert_supported();
        let f = self.format;
        run_q(
            f,
            rows,
            cols,
            packed,
            1,
            x,
            bias,
            y,
            scratch,
            &mut q_avx512_fn(f),
        );
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
        self.assert_supported();
        let f = self.format;
        run_q(
            f,
            rows,
            cols,
            packed,
            n,
            xs,
            bias,
            ys,
            scratch,
            &mut q_avx512_fn(f),
        );
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
        self.assert_supported();
        let f = self.format;
        raw_q(f, rows, cols, packed, x, scratch, out, &mut q_avx512_fn(f));
        true
    }
}

/// The AVX-512 kernel of q4_0 / q8_0 as the driver's tile function.
#[allow(clippy::type_complexity)]
fn q_avx512_fn(
    format: WeightFormat,
) -> impl FnMut(&[u8], usize, Option<&[u8]>, &[QPrep<'_>], &mut QOut, Option<&mut [i32]>, usize) {
    let q4 = format == WeightFormat::Q4_0;
    move |tiles, nt, next, preps, out, raw, valid| {
        let (tb, _) = q_check(q4, tiles, nt, preps, raw.as_deref(), valid);
        // SAFETY: every caller (`run`, `run_batch`, `integer_parts`) checked
        // AVX-512 F, BW and VNNI first; `q_check` asserted the lengths.
        unsafe {
            match (q4, preps.len()) {
                (true, 1) => q512_span::<true, 4, 1>(tiles, tb, nt, next, preps, out, raw, valid),
                (true, 2) => q512_span::<true, 2, 2>(tiles, tb, nt, next, preps, out, raw, valid),
                (true, 3) => q512_span::<true, 2, 3>(tiles, tb, nt, next, preps, out, raw, valid),
                (true, _) => q512_span::<true, 2, 4>(tiles, tb, nt, next, preps, out, raw, valid),
                (false, 1) => q512_span::<false, 4, 1>(tiles, tb, nt, next, preps, out, raw, valid),
                (false, 2) => q512_span::<false, 2, 2>(tiles, tb, nt, next, preps, out, raw, valid),
                (false, 3) => q512_span::<false, 2, 3>(tiles, tb, nt, next, preps, out, raw, valid),
                (false, _) => q512_span::<false, 2, 4>(tiles, tb, nt, next, preps, out, raw, valid),
            }
        }
    }
}

/// The chunk's tiles `NT` at a time (then one at a time), `TB` tokens each.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; the arguments must pass [`q_check`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn q512_span<const Q4: bool, const NT: usize, const TB: usize>(
    tiles: &[u8],
    tb: usize,
    nt: usize,
    next: Option<&[u8]>,
    preps: &[QPrep<'_>],
    out: &mut QOut,
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    // The same tiles of the next chunk, for the kernel to prefetch.
    let pf = |t0: usize, n: usize| {
        next.map(|next| {
            let a = (t0 * tb).min(next.len());
            &next[a..((t0 + n) * tb).min(next.len())]
        })
    };
    let mut t0 = 0;
    while t0 < nt {
        // SAFETY: same preconditions as ours; tiles `t0..t0 + NT` (or `+ 1`) exist.
        unsafe {
            if nt - t0 >= NT {
                q512_tiles::<Q4, NT, TB>(
                    tiles,
                    tb,
                    t0,
                    pf(t0, NT),
                    preps,
                    out,
                    raw.as_deref_mut(),
                    valid,
                );
                t0 += NT;
            } else {
                q512_tiles::<Q4, 1, TB>(
                    tiles,
                    tb,
                    t0,
                    pf(t0, 1),
                    preps,
                    out,
                    raw.as_deref_mut(),
                    valid,
                );
                t0 += 1;
            }
        }
    }
}

/// `NT` tiles from tile `t0` for `TB` tokens with AVX-512 VNNI. A 64-byte
/// weight chunk is one vector whose i32 lane `r` holds row `r`'s 4 bytes, so
/// `vpdpbusd(acc, weights, broadcast 4 activations)` adds each row's 4-column
/// dot to its lane: unsigned weights (q4_0 nibbles `q` in `[0, 15]`; q8_0
/// bytes `q + 128` in `[0, 255]`) times signed activations (`|xq| <= 127`).
/// Per block a lane sums 32 products: at most `32 * 15 * 127 = 60960` (q4_0)
/// or `32 * 255 * 127 = 1036320` (q8_0), exact in i32 (`vpdpbusd` does not
/// saturate). Subtracting the prepared offset (`8 sum(xq)` / `128 sum(xq)`)
/// leaves the integer part `sum (q - 8) xq` / `sum q xq`. Epilogue per row
/// lane, blocks in order: `ya = ya + (acc * sx) * d`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; the arguments must pass
/// [`q_check`] and `t0 + NT <= nt`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn q512_tiles<const Q4: bool, const NT: usize, const TB: usize>(
    tiles: &[u8],
    tb: usize,
    t0: usize,
    pf: Option<&[u8]>,
    preps: &[QPrep<'_>],
    out: &mut QOut,
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let bb = if Q4 { 288 } else { 544 };
    let wb = bb - 2 * Q_ROW_TILE;
    let nb = tb / bb;
    assert!(preps.len() == TB && (t0 + NT) * tb <= tiles.len());
    // SAFETY: in bounds by the assertion above.
    let base = unsafe { tiles.as_ptr().add(t0 * tb) };
    let mask = _mm512_set1_epi8(0x0F);
    let mut ya = [[_mm512_setzero_ps(); NT]; TB];
    for b in 0..nb {
        if let Some(pf) = pf {
            for t in 0..NT {
                let next = pf.get(t * tb..).unwrap_or(&[]);
                prefetch_ahead(&tiles[(t0 + t) * tb..(t0 + t + 1) * tb], next, b * bb, bb);
            }
        }
        let mut acc = [[_mm512_setzero_si512(); NT]; TB];
        let chunks = if Q4 { 4 } else { 8 };
        for k in 0..chunks {
            let xv: [[__m512i; 2]; TB] = core::array::from_fn(|j| {
                let at = Q_BLOCK * b + if Q4 { 8 * k } else { 4 * k };
                let xp = preps[j].xq.as_ptr();
                // SAFETY: `at + 8 <= 32 nb <= xq.len()` (`q_check`).
                unsafe {
                    let lo = _mm512_set1_epi32(xp.add(at).cast::<i32>().read_unaligned());
                    let hi = if Q4 {
                        _mm512_set1_epi32(xp.add(at + 4).cast::<i32>().read_unaligned())
                    } else {
                        lo
                    };
                    [lo, hi]
                }
            });
            for t in 0..NT {
                // SAFETY: chunk `k` of block `b` of tile `t` is inside the asserted tiles.
                let w =
                    unsafe { _mm512_loadu_si512(base.add(t * tb + b * bb + Q_CHUNK * k).cast()) };
                if Q4 {
                    let lo = _mm512_and_si512(w, mask);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), mask);
                    for j in 0..TB {
                        let a = _mm512_dpbusd_epi32(acc[j][t], lo, xv[j][0]);
                        acc[j][t] = _mm512_dpbusd_epi32(a, hi, xv[j][1]);
                    }
                } else {
                    for j in 0..TB {
                        acc[j][t] = _mm512_dpbusd_epi32(acc[j][t], w, xv[j][0]);
                    }
                }
            }
        }
        for t in 0..NT {
            // SAFETY: the block's 16 f16 scales follow its weights in tile `t`.
            let d = unsafe {
                _mm512_cvtph_ps(_mm256_loadu_si256(base.add(t * tb + b * bb + wb).cast()))
            };
            for j in 0..TB {
                let v = _mm512_sub_epi32(acc[j][t], _mm512_set1_epi32(preps[j].off(b)));
                if let Some(raw) = raw.as_deref_mut() {
                    let mut tmp = [0i32; 16];
                    // SAFETY: `tmp` holds 16 i32.
                    unsafe { _mm512_storeu_si512(tmp.as_mut_ptr().cast(), v) };
                    q_store_raw(raw, &tmp, Q_ROW_TILE * (t0 + t), valid, nb, b);
                    continue;
                }
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(preps[j].sx(b)));
                ya[j][t] = _mm512_add_ps(ya[j][t], _mm512_mul_ps(f, d));
            }
        }
    }
    for (j, yj) in ya.iter().enumerate() {
        for (t, yt) in yj.iter().enumerate() {
            let o = &mut out[j][Q_ROW_TILE * (t0 + t)..Q_ROW_TILE * (t0 + t + 1)];
            // SAFETY: `o` holds 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *yt) };
        }
    }
}
