//! aarch64 NEON kernels for f16, int8, the LUT formats (`tbl` = `vqtbl1q_u8`)
//! and q4_0 / q8_0 (baseline NEON `smull` / `smlal`; no `sdot`).
//!
//! Same contract as the x86-64 module: exact integer parts and a per-row-lane
//! float epilogue with the generic kernel's operation order, multiply and add
//! kept separate (no `fmla`), so outputs are bit-identical to the generic
//! kernels. NEON is part of the aarch64 baseline, so these kernels are plugged
//! with or without the `std` feature.
//!
//! Not plugged: f32 (the generic kernel is auto-vectorised and memory bound).
#![allow(unsafe_code)]

use core::arch::aarch64::*;
use core::arch::asm;

use super::{
    prepare_lut, q_check, q_store_raw, raw_i8, raw_lut, raw_q, run_f16, run_i8, run_lut, run_q,
    run_rows, tiles_of, Feature, I8Prep, LutPrep, QMatVec, QOut, QPrep,
};
use crate::quant::{
    lut_center, lut_params, WeightFormat, I8_BLOCK, LUT_ROW_TILE, Q_BLOCK, Q_CHUNK, Q_ROW_TILE,
    ROW_TILE_8,
};

/// A NEON kernel of one format.
#[derive(Debug)]
pub struct Neon {
    format: WeightFormat,
    name: &'static str,
}

const NEON: &[Feature] = &[Feature::Neon];

macro_rules! neon_kernels {
    ($($id:ident: $f:ident => $name:literal;)*) => {
        $(
            #[doc = concat!("The `", $name, "` kernel.")]
            pub static $id: Neon = Neon { format: WeightFormat::$f, name: $name };
        )*
        /// Every kernel of this module.
        pub static KERNELS: [&'static dyn QMatVec; 12] = [$(&$id),*];
    };
}

neon_kernels! {
    F16: F16 => "aarch64_neon_f16";
    I8ROW: I8Row => "aarch64_neon_i8row";
    I4G32: I4G32 => "aarch64_neon_i4g32";
    I4G64: I4G64 => "aarch64_neon_i4g64";
    I2G32: I2G32 => "aarch64_neon_i2g32";
    I2G64: I2G64 => "aarch64_neon_i2g64";
    I4G32Z: I4G32Z => "aarch64_neon_i4g32z";
    I4G64Z: I4G64Z => "aarch64_neon_i4g64z";
    I2G32Z: I2G32Z => "aarch64_neon_i2g32z";
    I2G64Z: I2G64Z => "aarch64_neon_i2g64z";
    Q4_0: Q4_0 => "aarch64_neon_q4_0";
    Q8_0: Q8_0 => "aarch64_neon_q8_0";
}

impl Neon {
    fn assert_supported(&self) {
        assert!(
            self.is_supported_here(),
            "{}: this CPU lacks NEON",
            self.name
        );
    }
}

impl QMatVec for Neon {
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
                    &mut q_neon_fn(f),
                )
            }
            _ => run_rows(self, rows, cols, packed, n, xs, bias, ys, scratch),
        }
    }

    fn format(&self) -> WeightFormat {
        self.format
    }

    fn requires(&self) -> &'static [Feature] {
        NEON
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
            WeightFormat::F16 => {
                run_f16(
                    rows,
                    cols,
                    packed,
                    x,
                    bias,
                    y,
                    scratch,
                    &mut |t, n, c, x, o| {
                        // SAFETY: NEON checked above; `run_f16` passes `n` (1..=4)
                        // whole tiles of `c` columns and `x.len() == c`.
                        unsafe { f16_tiles(t, n, c, x, o) }
                    },
                )
            }
            WeightFormat::I8Row => {
                run_i8(
                    rows,
                    cols,
                    packed,
                    x,
                    bias,
                    y,
                    scratch,
                    &mut |t, k, p, o, r, v| {
                        // SAFETY: NEON checked above; `run_i8` passes whole tiles
                        // and prepared activations of `k` padded columns.
                        unsafe { i8_tile(t, k, p, o, r, v) }
                    },
                )
            }
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
                &mut q_neon_fn(f),
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
                raw_q(f, rows, cols, packed, x, scratch, out, &mut q_neon_fn(f));
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

/// Eight little-endian f16 at `p` as two f32x4 (exact, `fcvtl` / `fcvtl2`).
///
/// # Safety
/// `p` must be valid for reading 16 bytes; the CPU must support NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_f16x8(p: *const u8) -> (float32x4_t, float32x4_t) {
    // SAFETY: the caller guarantees 16 readable bytes; `vld1q_u8` has no
    // alignment requirement.
    let h = unsafe { vreinterpretq_u16_u8(vld1q_u8(p)) };
    let lo: float32x4_t;
    let hi: float32x4_t;
    // SAFETY: `fcvtl`/`fcvtl2` only convert register contents (no memory, no
    // flags); NEON is available (target feature).
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    (lo, hi)
}

// ------------------------------------------------------------------ f16

/// f16 over `n` tiles of 8 rows (4 at a time for independent add chains).
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
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

/// `NT` consecutive f16 tiles: per column `acc = acc + w * x[c]`.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn f16_n<const NT: usize>(tiles: &[u8], cols: usize, x: &[f32], out: &mut [f32; 32]) {
    let tb = 16 * cols;
    assert!(NT <= 4 && tiles.len() >= NT * tb && x.len() >= cols);
    let base = tiles.as_ptr();
    let mut acc = [[vdupq_n_f32(0.0); 2]; NT];
    for (c, &xv) in x[..cols].iter().enumerate() {
        for (t, a) in acc.iter_mut().enumerate() {
            // SAFETY: `t * tb + 16 * c + 16 <= NT * tb <= tiles.len()` (asserted).
            let (w0, w1) = unsafe { load_f16x8(base.add(t * tb + 16 * c)) };
            a[0] = vaddq_f32(a[0], vmulq_n_f32(w0, xv));
            a[1] = vaddq_f32(a[1], vmulq_n_f32(w1, xv));
        }
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: `8 * t + 8 <= 32` since `NT <= 4`.
        unsafe {
            vst1q_f32(out.as_mut_ptr().add(8 * t), a[0]);
            vst1q_f32(out.as_mut_ptr().add(8 * t + 4), a[1]);
        }
    }
}

// ------------------------------------------------------------------ i8row

/// i8row tile (8 rows): per 32-column block and row, `smull`/`smlal2` form
/// pairs of products (each `|w * xq| <= 128 * 127`, a pair `<= 32512 < 2^15`),
/// `saddlp`/`sadalp` widen them to i32 and `addv` sums: the exact block dot
/// (`<= 516128`). The float epilogue then runs per row lane as in the generic
/// kernel.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
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
    let w = tile.as_ptr().cast::<i8>();
    let xq = p.xq.as_ptr().cast::<i8>();
    let mut ya = [vdupq_n_f32(0.0); 2];
    for b in 0..nb {
        // SAFETY: `32 * b + 32 <= k <= p.xq.len()`.
        let (x0, x1) = unsafe { (vld1q_s8(xq.add(32 * b)), vld1q_s8(xq.add(32 * b + 16))) };
        let mut sums = [0i32; 8];
        for (i, s) in sums.iter_mut().enumerate() {
            let at = 32 + i * k + 32 * b;
            // SAFETY: `at + 32 <= 32 + 8 * k == tile.len()` for `i < 8`.
            let (w0, w1) = unsafe { (vld1q_s8(w.add(at)), vld1q_s8(w.add(at + 16))) };
            let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
            let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
            *s = vaddvq_s32(vpadalq_s16(vpaddlq_s16(p0), p1));
        }
        if let Some(raw) = raw.as_deref_mut() {
            for (i, &a) in sums.iter().enumerate().take(valid) {
                raw[i * nb + b] = a;
            }
            continue;
        }
        let sx = p.sx(b);
        // SAFETY: `sums` holds 8 i32.
        let (v0, v1) = unsafe { (vld1q_s32(sums.as_ptr()), vld1q_s32(sums.as_ptr().add(4))) };
        ya[0] = vaddq_f32(ya[0], vmulq_n_f32(vcvtq_f32_s32(v0), sx));
        ya[1] = vaddq_f32(ya[1], vmulq_n_f32(vcvtq_f32_s32(v1), sx));
    }
    // SAFETY: the tile starts with 8 little-endian f32 scales (32 bytes,
    // asserted; loaded bytewise, so unaligned is fine); `y` holds 8 f32.
    unsafe {
        let s0 = vreinterpretq_f32_u8(vld1q_u8(tile.as_ptr()));
        let s1 = vreinterpretq_f32_u8(vld1q_u8(tile.as_ptr().add(16)));
        vst1q_f32(y.as_mut_ptr(), vmulq_f32(ya[0], s0));
        vst1q_f32(y.as_mut_ptr().add(4), vmulq_f32(ya[1], s1));
    }
}

// ------------------------------------------------------------------ LUT

/// The NEON LUT tile kernel of `format`.
#[allow(clippy::type_complexity)]
fn lut_tile_fn(
    format: WeightFormat,
) -> impl FnMut(&[u8], &LutPrep<'_>, &mut [f32; 16], Option<&mut [i32]>, usize) {
    let (g, bits, zp) = lut_params(format);
    move |tile, prep, y, raw, valid| {
        // SAFETY: every caller (`run`, `integer_parts`) checked NEON first;
        // `run_lut` / `raw_lut` pass whole tiles and the tables of the same
        // format and `cols`.
        unsafe {
            match (bits, g, zp) {
                (4, 32, false) => lut_tile::<4, 32, false>(tile, prep, y, raw, valid),
                (4, 64, false) => lut_tile::<4, 64, false>(tile, prep, y, raw, valid),
                (2, 32, false) => lut_tile::<2, 32, false>(tile, prep, y, raw, valid),
                (2, 64, false) => lut_tile::<2, 64, false>(tile, prep, y, raw, valid),
                (4, 32, true) => lut_tile::<4, 32, true>(tile, prep, y, raw, valid),
                (4, 64, true) => lut_tile::<4, 64, true>(tile, prep, y, raw, valid),
                (2, 32, true) => lut_tile::<2, 32, true>(tile, prep, y, raw, valid),
                _ => lut_tile::<2, 64, true>(tile, prep, y, raw, valid),
            }
        }
    }
}

/// One 16-row LUT tile. Bytes 0..16 of a block hold rows 0..8, bytes 16..32
/// rows 8..16; `tbl` looks the low and high nibbles up. Seen as i16 lanes, a
/// lookup holds row `i`'s plane-`j = 0` entry in the low byte and `j = 1` in
/// the high byte, so `(v << 8) >> 8` and `v >> 8` (arithmetic, fused into
/// `ssra`) add them to separate even / odd accumulators, combined per group as
/// `e_lo + 2 o_lo + 2^s e_hi + 2^(s+1) o_hi` with `s = 2` (int4) or 0 (int2).
///
/// Overflow bound: each accumulator adds at most 16 entries of magnitude
/// `<= 127` per group (`<= 2032`), and the combination is bounded by
/// `16 * (1 + 2 + 4 + 8) * 127 = 30480 < 2^15`; all exact, so equal to the
/// generic kernel's i32 sums.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
unsafe fn lut_tile<const BITS: u32, const G: usize, const ZP: bool>(
    tile: &[u8],
    p: &LutPrep<'_>,
    y: &mut [f32; LUT_ROW_TILE],
    mut raw: Option<&mut [i32]>,
    valid: usize,
) {
    let ng = p.ng;
    let wbytes = LUT_ROW_TILE * G * BITS as usize / 8;
    let gb = wbytes + 32 + if ZP { 32 } else { 0 };
    assert!(tile.len() == ng * gb && p.tables.len() >= 16 * ng * (G / 4));
    assert!(raw.as_deref().is_none_or(|r| r.len() >= valid * ng) && valid <= LUT_ROW_TILE);
    let mask = vdupq_n_u8(0x0F);
    let c = vdupq_n_f32(lut_center(BITS));
    let mut ya = [vdupq_n_f32(0.0); 4];
    let mut wp = tile.as_ptr();
    let mut tp = p.tables.as_ptr();
    for gi in 0..ng {
        let z16 = vdupq_n_s16(0);
        // [half][e_lo, o_lo, e_hi, o_hi]
        let mut acc = [[z16; 4]; 2];
        // SAFETY: group `gi` occupies `tile[gi * gb..(gi + 1) * gb]` and its
        // tables `tables[16 * gi * G / 4..16 * (gi + 1) * G / 4]`; `wp` and
        // `tp` advance by exactly `wbytes` and `16 * G / 4` in the loop and by
        // `gb - wbytes` after it, all within the asserted lengths.
        unsafe {
            for _ in 0..wbytes / 32 {
                let ta = vld1q_u8(tp);
                let tb = if BITS == 4 { ta } else { vld1q_u8(tp.add(16)) };
                for (h, a) in acc.iter_mut().enumerate() {
                    let w = vld1q_u8(wp.add(16 * h));
                    let rl = vreinterpretq_s16_u8(vqtbl1q_u8(ta, vandq_u8(w, mask)));
                    let rh = vreinterpretq_s16_u8(vqtbl1q_u8(tb, vshrq_n_u8::<4>(w)));
                    a[0] = vsraq_n_s16::<8>(a[0], vshlq_n_s16::<8>(rl));
                    a[1] = vsraq_n_s16::<8>(a[1], rl);
                    a[2] = vsraq_n_s16::<8>(a[2], vshlq_n_s16::<8>(rh));
                    a[3] = vsraq_n_s16::<8>(a[3], rh);
                }
                wp = wp.add(32);
                tp = tp.add(if BITS == 4 { 16 } else { 32 });
            }
        }
        let comb = |a: &[int16x8_t; 4]| {
            let lo = vaddq_s16(a[0], vshlq_n_s16::<1>(a[1]));
            let hi = if BITS == 4 {
                vaddq_s16(vshlq_n_s16::<2>(a[2]), vshlq_n_s16::<3>(a[3]))
            } else {
                vaddq_s16(a[2], vshlq_n_s16::<1>(a[3]))
            };
            vaddq_s16(lo, hi)
        };
        let (acc0, acc1) = (comb(&acc[0]), comb(&acc[1]));
        // SAFETY: the 32 bytes of scales (and 32 of zero points) follow the weights.
        let (s, z) = unsafe {
            let (s0, s1) = load_f16x8(wp);
            let (s2, s3) = load_f16x8(wp.add(16));
            let z = if ZP {
                let (z0, z1) = load_f16x8(wp.add(32));
                let (z2, z3) = load_f16x8(wp.add(48));
                Some([z0, z1, z2, z3])
            } else {
                None
            };
            wp = wp.add(gb - wbytes);
            ([s0, s1, s2, s3], z)
        };
        if let Some(raw) = raw.as_deref_mut() {
            let mut t = [0i16; 16];
            // SAFETY: `t` holds 16 i16.
            unsafe {
                vst1q_s16(t.as_mut_ptr(), acc0);
                vst1q_s16(t.as_mut_ptr().add(8), acc1);
            }
            for (i, &a) in t.iter().enumerate().take(valid) {
                raw[i * ng + gi] = i32::from(a);
            }
            continue;
        }
        let a = [
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(acc0))),
            vcvtq_f32_s32(vmovl_high_s16(acc0)),
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(acc1))),
            vcvtq_f32_s32(vmovl_high_s16(acc1)),
        ];
        let (hts, xs) = (p.hts(gi), p.xs(gi));
        for q in 0..4 {
            let mut t = vmulq_n_f32(a[q], hts);
            if let Some(z) = z {
                t = vaddq_f32(t, vmulq_n_f32(vsubq_f32(c, z[q]), xs));
            }
            ya[q] = vaddq_f32(ya[q], vmulq_f32(t, s[q]));
        }
    }
    for (q, v) in ya.iter().enumerate() {
        // SAFETY: `y` holds 16 f32.
        unsafe { vst1q_f32(y.as_mut_ptr().add(4 * q), *v) };
    }
}

// ------------------------------------------------------------------ q4_0 / q8_0

/// The NEON kernel of q4_0 / q8_0 as the driver's tile function: tile by
/// tile, and for each tile every token of the call (the tile stays in L1
/// between them; the driver already reads each chunk from memory once per
/// pass of tokens).
#[allow(clippy::type_complexity)]
fn q_neon_fn(
    format: WeightFormat,
) -> impl FnMut(&[u8], usize, Option<&[u8]>, &[QPrep<'_>], &mut QOut, Option<&mut [i32]>, usize) {
    let q4 = format == WeightFormat::Q4_0;
    move |tiles, nt, _next, preps, out, mut raw, valid| {
        let (tb, _) = q_check(q4, tiles, nt, preps, raw.as_deref(), valid);
        for t in 0..nt {
            let tile = &tiles[t * tb..(t + 1) * tb];
            for (p, o) in preps.iter().zip(out.iter_mut()) {
                let y: &mut [f32; Q_ROW_TILE] = (&mut o[Q_ROW_TILE * t..Q_ROW_TILE * (t + 1)])
                    .try_into()
                    .unwrap();
                let r = raw.as_deref_mut();
                // SAFETY: every caller (`run`, `run_batch`, `integer_parts`)
                // checked NEON first; `q_check` asserted the lengths.
                unsafe {
                    if q4 {
                        q_tile::<true>(tile, p, y, r, Q_ROW_TILE * t, valid);
                    } else {
                        q_tile::<false>(tile, p, y, r, Q_ROW_TILE * t, valid);
                    }
                }
            }
        }
    }
}

/// One 16-row tile of q4_0 / q8_0 for one token. A 64-byte chunk is four
/// vectors of 4 rows x 4 bytes; the 4 broadcast activations of the chunk's
/// columns multiply each row's 4 bytes (`smull` / `smlal`, low and high
/// halves), giving i16 lanes `(row, column)`.
///
/// q4_0: nibbles `q` in `[0, 15]` times `|xq| <= 127`; each i16 lane adds the
/// low- and high-nibble products of 4 chunks, at most `8 * 15 * 127 = 15240 <
/// 2^15`. q8_0: `q = w ^ 0x80` in `[-128, 127]`; two chunks' products share an
/// i16 lane (`<= 2 * 128 * 127 = 32512 < 2^15`) before `sadalp` widens them to
/// i32. Per block `saddlp` / `addp` gather each row's sum into lane order (row
/// `4 m + i` in lane `i` of vector `m`): the exact dot (q4_0 minus the
/// prepared `8 sum(xq)`), at most `520192` in magnitude. Epilogue per row
/// lane, blocks in order: `ya = ya + (acc * sx) * d`.
///
/// # Safety
/// The CPU must support NEON; `tile` must hold whole block records and
/// `p.xq` 32 activations per block (`q_check`).
#[target_feature(enable = "neon")]
unsafe fn q_tile<const Q4: bool>(
    tile: &[u8],
    p: &QPrep<'_>,
    y: &mut [f32; Q_ROW_TILE],
    mut raw: Option<&mut [i32]>,
    row0: usize,
    valid: usize,
) {
    let bb = if Q4 { 288 } else { 544 };
    let wb = bb - 2 * Q_ROW_TILE;
    let nb = tile.len() / bb;
    assert!(nb * bb == tile.len() && p.xq.len() >= Q_BLOCK * nb);
    let bcast = |at: usize| {
        let v = u32::from_le_bytes([p.xq[at], p.xq[at + 1], p.xq[at + 2], p.xq[at + 3]]);
        vreinterpretq_s8_u32(vdupq_n_u32(v))
    };
    let mut ya = [vdupq_n_f32(0.0); 4];
    for b in 0..nb {
        // SAFETY: block `b` occupies `tile[b * bb..(b + 1) * bb]` (asserted).
        let blk = unsafe { tile.as_ptr().add(b * bb) };
        let x0 = Q_BLOCK * b;
        let mut acc = [vdupq_n_s32(0); 4];
        if Q4 {
            let mask = vdupq_n_u8(0x0F);
            let mut a16 = [[vdupq_n_s16(0); 2]; 4];
            for k in 0..4 {
                let (xl, xh) = (bcast(x0 + 8 * k), bcast(x0 + 8 * k + 4));
                for (m, a) in a16.iter_mut().enumerate() {
                    // SAFETY: chunk `k`, vector `m` lies inside the block's weights.
                    let wv = unsafe { vld1q_u8(blk.add(Q_CHUNK * k + 16 * m)) };
                    let lo = vreinterpretq_s8_u8(vandq_u8(wv, mask));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(wv));
                    a[0] = vmlal_s8(a[0], vget_low_s8(lo), vget_low_s8(xl));
                    a[0] = vmlal_s8(a[0], vget_low_s8(hi), vget_low_s8(xh));
                    a[1] = vmlal_high_s8(a[1], lo, xl);
                    a[1] = vmlal_high_s8(a[1], hi, xh);
                }
            }
            let off = vdupq_n_s32(p.off(b));
            for (m, a) in a16.iter().enumerate() {
                let s = vpaddq_s32(vpaddlq_s16(a[0]), vpaddlq_s16(a[1]));
                acc[m] = vsubq_s32(s, off);
            }
        } else {
            let flip = vdupq_n_u8(0x80);
            let mut a32 = [[vdupq_n_s32(0); 2]; 4];
            for k in (0..8).step_by(2) {
                let (x0v, x1v) = (bcast(x0 + 4 * k), bcast(x0 + 4 * k + 4));
                for (m, a) in a32.iter_mut().enumerate() {
                    // SAFETY: chunks `k`, `k + 1`, vector `m` lie inside the block's weights.
                    let (q0, q1) = unsafe {
                        (
                            vld1q_u8(blk.add(Q_CHUNK * k + 16 * m)),
                            vld1q_u8(blk.add(Q_CHUNK * (k + 1) + 16 * m)),
                        )
                    };
                    let q0 = vreinterpretq_s8_u8(veorq_u8(q0, flip));
                    let q1 = vreinterpretq_s8_u8(veorq_u8(q1, flip));
                    let lo = vmlal_s8(
                        vmull_s8(vget_low_s8(q0), vget_low_s8(x0v)),
                        vget_low_s8(q1),
                        vget_low_s8(x1v),
                    );
                    let hi = vmlal_high_s8(vmull_high_s8(q0, x0v), q1, x1v);
                    a[0] = vpadalq_s16(a[0], lo);
                    a[1] = vpadalq_s16(a[1], hi);
                }
            }
            for (m, a) in a32.iter().enumerate() {
                acc[m] = vpaddq_s32(a[0], a[1]);
            }
        }
        if let Some(raw) = raw.as_deref_mut() {
            let mut tmp = [0i32; 16];
            for (m, a) in acc.iter().enumerate() {
                // SAFETY: `tmp` holds 16 i32.
                unsafe { vst1q_s32(tmp.as_mut_ptr().add(4 * m), *a) };
            }
            q_store_raw(raw, &tmp, row0, valid, nb, b);
            continue;
        }
        let sx = p.sx(b);
        // SAFETY: the block's 16 f16 scales (32 bytes) follow its weights.
        let d = unsafe {
            let (d0, d1) = load_f16x8(blk.add(wb));
            let (d2, d3) = load_f16x8(blk.add(wb + 16));
            [d0, d1, d2, d3]
        };
        for m in 0..4 {
            let f = vmulq_n_f32(vcvtq_f32_s32(acc[m]), sx);
            ya[m] = vaddq_f32(ya[m], vmulq_f32(f, d[m]));
        }
    }
    for (m, v) in ya.iter().enumerate() {
        // SAFETY: `y` holds 16 f32.
        unsafe { vst1q_f32(y.as_mut_ptr().add(4 * m), *v) };
    }
}
