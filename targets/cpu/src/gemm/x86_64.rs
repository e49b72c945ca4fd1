//! x86-64 f32 GEMM kernels: AVX2 (a ymm of eight lanes per output) and
//! AVX-512F (a zmm holding the eight lanes of two outputs). Multiply and add
//! stay separate (no FMA) so that every output has the bits of
//! [`crate::f32::matmul_rows`]; see the parent module for the order.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use super::{row_tiles, F32Gemm, Problem, LANES};
use crate::qmatvec::Feature;

/// AVX2 (8 accumulators of one output each, tiles 4 x 2, 2 x 4, 1 x 8).
pub const AVX2: F32Gemm = F32Gemm {
    name: "x86_64_avx2_f32gemm",
    requires: &[Feature::Avx2],
    run: run_avx2,
    exact: true,
};

/// AVX-512F (up to 16 accumulators of two outputs each, tiles 4 x 8, 2 x 16,
/// 1 x 32 and narrower ones for N tails) for `M >= 4`, the AVX2
/// tiles for smaller problems (where they measured faster; same bits).
pub const AVX512F: F32Gemm = F32Gemm {
    name: "x86_64_avx512f_f32gemm",
    requires: &[Feature::Avx2, Feature::Avx512F],
    run: run_avx512,
    exact: true,
};

/// Slowest first: the table plugs the last one the CPU supports.
pub const KERNELS: [F32Gemm; 2] = [AVX2, AVX512F];

// ---------------------------------------------------------------- AVX2

/// `F32Gemm::gemm` asserted the kernel's `requires` before calling this
/// (the only way to reach it: the `run` field is private).
fn run_avx2(p: &mut Problem<'_>) {
    // SAFETY: AVX2 is present (asserted by `F32Gemm::gemm`, see above).
    unsafe { run_avx2_tf(p) }
}

/// The AVX2 driver, compiled with AVX2 so that the tiles and the row
/// epilogue (`finish_rows`) inline into it and the epilogue is vector code
/// (compiled apart, it was scalar: a fifth of the M = 1 GEMM time).
#[target_feature(enable = "avx2")]
fn run_avx2_tf(p: &mut Problem<'_>) {
    for (r0, mr) in row_tiles(p.m) {
        let mut o0 = 0;
        while o0 < p.n {
            let rem = p.n - o0;
            o0 += match mr {
                4 => block256::<4, 2>(p, r0, o0),
                2 if rem > 2 => block256::<2, 4>(p, r0, o0),
                2 => block256::<2, 2>(p, r0, o0),
                _ if rem > 4 => block256::<1, 8>(p, r0, o0),
                _ if rem > 2 => block256::<1, 4>(p, r0, o0),
                _ => block256::<1, 2>(p, r0, o0),
            };
        }
    }
}

/// Rows `r0..r0 + MR` (all `< m`) times outputs `o0..o0 + NR`; returns `NR`.
#[inline(always)]
fn block256<const MR: usize, const NR: usize>(p: &mut Problem<'_>, r0: usize, o0: usize) -> usize {
    let k8 = p.k - p.k % LANES;
    let xs: [*const f32; MR] = core::array::from_fn(|i| p.x_ptr(r0 + i));
    let ws: [*const f32; NR] = core::array::from_fn(|j| p.w_ptr(o0 + j));
    let mut sums = [0.0f32; 8];
    // SAFETY: AVX2 is present (asserted by `F32Gemm::gemm`, see `run_avx2`). Each pointer starts
    // a row of `p.k >= k8` floats inside its slice (`F32Gemm::gemm` checked
    // rows `< m` of X and `< n` of W; `r0 + MR <= m` by `row_tiles`, W rows
    // are clamped by `w_ptr`), and the kernel reads `[c, c + 8)`, `c + 8 <= k8`.
    unsafe { tile256::<MR, NR>(k8, &xs, &ws, &mut sums) };
    p.finish_rows::<NR>(r0, o0, MR, &sums);
    NR
}

/// Lane sums of outputs `(i, j)`, `i < MR`, `j < NR`, at `sums[i * NR + j]`.
///
/// # Safety
/// AVX2 must be present; `xs[i]` and `ws[j]` must be readable for `k8`
/// floats; `MR * NR <= 8`.
#[target_feature(enable = "avx2")]
unsafe fn tile256<const MR: usize, const NR: usize>(
    k8: usize,
    xs: &[*const f32; MR],
    ws: &[*const f32; NR],
    sums: &mut [f32; 8],
) {
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut c = 0;
    while c < k8 {
        let mut xv = [_mm256_setzero_ps(); MR];
        for (v, &xp) in xv.iter_mut().zip(xs) {
            // SAFETY: `c + 8 <= k8` and `xp` is readable for k8 floats (caller).
            *v = unsafe { _mm256_loadu_ps(xp.add(c)) };
        }
        for (j, &wp) in ws.iter().enumerate() {
            // SAFETY: as above, for `wp`.
            let wv = unsafe { _mm256_loadu_ps(wp.add(c)) };
            for (i, &x) in xv.iter().enumerate() {
                let a = &mut acc[i * NR + j];
                *a = _mm256_add_ps(*a, _mm256_mul_ps(wv, x));
            }
        }
        c += LANES;
    }
    let s = reduce256(&acc);
    // SAFETY: `sums` is 8 floats.
    unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), s) };
}

/// Lane `i` of the result: `(((0 + v_i[0]) + v_i[1]) + ...) + v_i[7]`, through
/// an 8 x 8 transpose and vertical adds in lane order.
#[target_feature(enable = "avx2")]
fn reduce256(v: &[__m256; 8]) -> __m256 {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    // c_j lane i = v_i[j].
    let c = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    c.iter()
        .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x))
}

// ---------------------------------------------------------------- AVX-512F

/// `F32Gemm::gemm` asserted AVX2 and AVX-512F before calling this (the only
/// way to reach it: the `run` field is private).
fn run_avx512(p: &mut Problem<'_>) {
    // SAFETY: AVX2 and AVX-512F are present (asserted by `F32Gemm::gemm`).
    unsafe { run_avx512_tf(p) }
}

/// The AVX-512F driver (see [`run_avx2_tf`]).
#[target_feature(enable = "avx2,avx512f")]
fn run_avx512_tf(p: &mut Problem<'_>) {
    if p.m < 4 {
        return run_avx2_tf(p);
    }
    for (r0, mr) in row_tiles(p.m) {
        let mut o0 = 0;
        while o0 < p.n {
            let rem = p.n - o0;
            // The widest tile of at most 16 accumulators that the remaining
            // outputs fill (2 NP outputs per activation row).
            o0 += match mr {
                4 if rem > 4 => block512::<4, 4>(p, r0, o0),
                4 => block512::<4, 2>(p, r0, o0),
                2 if rem > 8 => block512::<2, 8>(p, r0, o0),
                2 if rem > 4 => block512::<2, 4>(p, r0, o0),
                2 => block512::<2, 2>(p, r0, o0),
                _ if rem > 16 => block512::<1, 16>(p, r0, o0),
                _ if rem > 8 => block512::<1, 8>(p, r0, o0),
                _ if rem > 4 => block512::<1, 4>(p, r0, o0),
                _ if rem > 2 => block512::<1, 2>(p, r0, o0),
                _ => block512::<1, 1>(p, r0, o0),
            };
        }
    }
}

/// Rows `r0..r0 + MR` (all `< m`) times outputs `o0..o0 + 2 NP`; returns `2 NP`.
#[inline(always)]
fn block512<const MR: usize, const NP: usize>(p: &mut Problem<'_>, r0: usize, o0: usize) -> usize {
    let k8 = p.k - p.k % LANES;
    let xs: [*const f32; MR] = core::array::from_fn(|i| p.x_ptr(r0 + i));
    let ws: [[*const f32; 2]; NP] =
        core::array::from_fn(|q| [p.w_ptr(o0 + 2 * q), p.w_ptr(o0 + 2 * q + 1)]);
    let mut sums = [0.0f32; 32];
    // SAFETY: AVX-512F is present (asserted by `F32Gemm::gemm`, see `run_avx512`). Each pointer
    // starts a row of `p.k >= k8` floats inside its slice (`F32Gemm::gemm`
    // checked rows `< m` of X and `< n` of W; `r0 + MR <= m` by `row_tiles`,
    // W rows are clamped by `w_ptr`), and the kernel reads `[c, c + 8)`, `c + 8 <= k8`.
    unsafe { tile512::<MR, NP>(k8, &xs, &ws, &mut sums) };
    // Row-major: lane l is half l % 2 of accumulator l / 2 = row * NP + pair,
    // output 2 pair + half.
    match NP {
        1 => p.finish_rows::<2>(r0, o0, MR, &sums),
        2 => p.finish_rows::<4>(r0, o0, MR, &sums),
        4 => p.finish_rows::<8>(r0, o0, MR, &sums),
        8 => p.finish_rows::<16>(r0, o0, MR, &sums),
        _ => p.finish_rows::<32>(r0, o0, MR, &sums),
    }
    2 * NP
}

/// Lane sums of the outputs `(i, 2 q + h)` (`i < MR`, `q < NP`, `h < 2`):
/// accumulator `a = i * NP + q` holds output `2 q` in its low half and
/// `2 q + 1` in its high half; `sums[2 a + h]` is half `h` of accumulator
/// `a`, i.e. the sums are row-major, `2 NP` per row (accumulators past
/// `MR * NP` are zero).
///
/// # Safety
/// AVX-512F must be present; `xs[i]` and `ws[q][h]` must be readable for
/// `k8` floats; `MR * NP <= 16`.
#[target_feature(enable = "avx512f")]
unsafe fn tile512<const MR: usize, const NP: usize>(
    k8: usize,
    xs: &[*const f32; MR],
    ws: &[[*const f32; 2]; NP],
    sums: &mut [f32; 32],
) {
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut c = 0;
    while c < k8 {
        let mut xv = [_mm512_setzero_ps(); MR];
        for (v, &xp) in xv.iter_mut().zip(xs) {
            // SAFETY: `c + 8 <= k8` and `xp` is readable for k8 floats (caller).
            let h = unsafe { _mm256_loadu_ps(xp.add(c)) };
            *v = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(h)));
        }
        for (q, &[w0, w1]) in ws.iter().enumerate() {
            // SAFETY: as above, for `w0` and `w1`.
            let (lo, hi) = unsafe { (_mm256_loadu_ps(w0.add(c)), _mm256_loadu_ps(w1.add(c))) };
            let wv = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                _mm256_castps_pd(hi),
            ));
            for (i, &x) in xv.iter().enumerate() {
                let a = &mut acc[i * NP + q];
                *a = _mm512_add_ps(*a, _mm512_mul_ps(wv, x));
            }
        }
        c += LANES;
    }
    // Lane 8 h + t of a reduced group -> lane 2 t + h (accumulator-major).
    let interleave = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    for g in 0..(MR * NP).div_ceil(8) {
        let v: &[__m512; 8] = acc[8 * g..8 * g + 8].try_into().unwrap();
        let s = _mm512_permutexvar_ps(interleave, reduce512(v));
        // SAFETY: `sums` is 32 floats and `16 g + 16 <= 32` (`g < 2`).
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr().add(16 * g), s) };
    }
}

/// [`reduce256`] on both 256-bit halves at once: half `h`, lane `i` of the
/// result is `(((0 + v_i[8h]) + v_i[8h + 1]) + ...) + v_i[8h + 7]`.
#[target_feature(enable = "avx512f")]
fn reduce512(v: &[__m512; 8]) -> __m512 {
    let t0 = _mm512_unpacklo_ps(v[0], v[1]);
    let t1 = _mm512_unpackhi_ps(v[0], v[1]);
    let t2 = _mm512_unpacklo_ps(v[2], v[3]);
    let t3 = _mm512_unpackhi_ps(v[2], v[3]);
    let t4 = _mm512_unpacklo_ps(v[4], v[5]);
    let t5 = _mm512_unpackhi_ps(v[4], v[5]);
    let t6 = _mm512_unpacklo_ps(v[6], v[7]);
    let t7 = _mm512_unpackhi_ps(v[6], v[7]);
    let u0 = _mm512_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm512_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm512_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm512_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm512_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm512_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm512_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm512_shuffle_ps::<0xEE>(t5, t7);
    // `_mm256_permute2f128_ps` 0x20 / 0x31 within each half (b's indices + 16).
    let lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    let hi = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    let c = [
        _mm512_permutex2var_ps(u0, lo, u4),
        _mm512_permutex2var_ps(u1, lo, u5),
        _mm512_permutex2var_ps(u2, lo, u6),
        _mm512_permutex2var_ps(u3, lo, u7),
        _mm512_permutex2var_ps(u0, hi, u4),
        _mm512_permutex2var_ps(u1, hi, u5),
        _mm512_permutex2var_ps(u2, hi, u6),
        _mm512_permutex2var_ps(u3, hi, u7),
    ];
    c.iter()
        .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x))
}

// ---------------------------------------------------------------- fast (FMA)
//
// The opt-in fast kernels (parent module, "The opt-in fast kernels"): FMA,
// full-width accumulators, a masked last chunk, a pairwise lane tree. Every
// tile runs the same per-output arithmetic, so an output's bits do not depend
// on the tile, M or the strides.

/// AVX2 + FMA: a ymm of eight lanes per output, 8 accumulators per tile
/// (4 x 2, 2 x 4, 1 x 8). Not bit-exact: [`super::fast_variant`] only.
pub const AVX2_FMA: F32Gemm = F32Gemm {
    name: "x86_64_avx2_fma_f32gemm",
    requires: &[Feature::Avx2, Feature::Fma],
    run: run_avx2_fma,
    exact: false,
};

/// AVX-512F + FMA: a zmm of sixteen lanes per output, up to 16 accumulators
/// per tile (4 x 4, 2 x 8, 1 x 16, narrower for N tails). Not bit-exact:
/// [`super::fast_variant`] only.
pub const AVX512F_FMA: F32Gemm = F32Gemm {
    name: "x86_64_avx512f_fma_f32gemm",
    requires: &[Feature::Avx2, Feature::Avx512F, Feature::Fma],
    run: run_avx512_fma,
    exact: false,
};

/// The fast kernels, slowest first.
pub const FAST_KERNELS: [F32Gemm; 2] = [AVX2_FMA, AVX512F_FMA];

/// `F32Gemm::gemm` asserted AVX2 and FMA before calling this (the only way
/// to reach it: the `run` field is private).
fn run_avx2_fma(p: &mut Problem<'_>) {
    // SAFETY: AVX2 and FMA are present (asserted by `F32Gemm::gemm`).
    unsafe { run_avx2_fma_tf(p) }
}

/// The AVX2 + FMA driver (see [`run_avx2_tf`]).
#[target_feature(enable = "avx2,fma")]
fn run_avx2_fma_tf(p: &mut Problem<'_>) {
    for (r0, mr) in row_tiles(p.m) {
        let mut o0 = 0;
        while o0 < p.n {
            o0 += match mr {
                4 => fast256::<4, 2>(p, r0, o0),
                2 => fast256::<2, 4>(p, r0, o0),
                _ => fast256::<1, 8>(p, r0, o0),
            };
        }
    }
}

/// Rows `r0..r0 + MR` (all `< m`) times outputs `o0..o0 + NR`; returns `NR`.
#[inline(always)]
fn fast256<const MR: usize, const NR: usize>(p: &mut Problem<'_>, r0: usize, o0: usize) -> usize {
    let xs: [*const f32; MR] = core::array::from_fn(|i| p.x_ptr(r0 + i));
    let ws: [*const f32; NR] = core::array::from_fn(|j| p.w_ptr(o0 + j));
    let mut sums = [0.0f32; 8];
    // SAFETY: AVX2 and FMA are present (asserted by `F32Gemm::gemm`, see
    // `run_avx2_fma`). Each pointer starts a row of `p.k` floats inside its
    // slice (`F32Gemm::gemm` checked rows `< m` of X and `< n` of W;
    // `r0 + MR <= m` by `row_tiles`, W rows are clamped by `w_ptr`).
    unsafe { fast_tile256::<MR, NR>(p.k, &xs, &ws, &mut sums) };
    p.store_rows::<NR>(r0, o0, MR, &sums);
    NR
}

/// Lane sums of outputs `(i, j)` (accumulator `i * NR + j`, `MR * NR == 8`),
/// accumulator `a` at `sums[a]` (row-major).
///
/// # Safety
/// AVX2 and FMA must be present; `xs[i]` and `ws[j]` must be readable for `k`
/// floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn fast_tile256<const MR: usize, const NR: usize>(
    k: usize,
    xs: &[*const f32; MR],
    ws: &[*const f32; NR],
    sums: &mut [f32; 8],
) {
    const L: usize = 8;
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut c = 0;
    while c + L <= k {
        let mut xv = [_mm256_setzero_ps(); MR];
        for (v, &xp) in xv.iter_mut().zip(xs) {
            // SAFETY: `c + 8 <= k` and `xp` is readable for k floats (caller).
            *v = unsafe { _mm256_loadu_ps(xp.add(c)) };
        }
        for (j, &wp) in ws.iter().enumerate() {
            // SAFETY: as above, for `wp`.
            let wv = unsafe { _mm256_loadu_ps(wp.add(c)) };
            for (i, &x) in xv.iter().enumerate() {
                let a = &mut acc[i * NR + j];
                *a = _mm256_fmadd_ps(wv, x, *a);
            }
        }
        c += L;
    }
    if c < k {
        // Lanes `t < k - c` (1..=7 of them) load, the others are zeros.
        let rem = (k - c) as i32;
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(rem),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let mut xv = [_mm256_setzero_ps(); MR];
        for (v, &xp) in xv.iter_mut().zip(xs) {
            // SAFETY: `vmaskmovps` reads only the lanes whose mask is set,
            // `[c, k)`, inside the `k` readable floats (caller); masked-off
            // lanes are not accessed and cannot fault.
            *v = unsafe { _mm256_maskload_ps(xp.add(c), mask) };
        }
        for (j, &wp) in ws.iter().enumerate() {
            // SAFETY: as above, for `wp`.
            let wv = unsafe { _mm256_maskload_ps(wp.add(c), mask) };
            for (i, &x) in xv.iter().enumerate() {
                let a = &mut acc[i * NR + j];
                *a = _mm256_fmadd_ps(wv, x, *a);
            }
        }
    }
    // Lane 4 h + t of the tree holds accumulator 2 t + h: back to lane a.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let s = _mm256_permutevar8x32_ps(tree256(&acc), order);
    // SAFETY: `sums` is 8 floats.
    unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), s) };
}

/// Lane `4 h + t` of the result is the pairwise lane sum of `v[2 t + h]`:
/// `B_j = v[j] + v[j + 4]` (j < 4), then `(B_0 + B_2) + (B_1 + B_3)`.
#[target_feature(enable = "avx2")]
fn tree256(v: &[__m256; 8]) -> __m256 {
    // s_i: lanes 0-3 `v[2i]_j + v[2i]_{j+4}`, lanes 4-7 the same for v[2i + 1].
    let s: [__m256; 4] = core::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    });
    // t_i, 128-bit half h: `[x_0 + x_2, x_1 + x_3]` of v[4i + h], then of v[4i + 2 + h].
    let t: [__m256; 2] = core::array::from_fn(|i| {
        let (a, b) = (_mm256_castps_pd(s[2 * i]), _mm256_castps_pd(s[2 * i + 1]));
        _mm256_add_ps(
            _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
            _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
        )
    });
    // Half h: the sums of v[h], v[2 + h], v[4 + h], v[6 + h].
    _mm256_add_ps(
        _mm256_shuffle_ps::<0x88>(t[0], t[1]),
        _mm256_shuffle_ps::<0xDD>(t[0], t[1]),
    )
}

/// `F32Gemm::gemm` asserted AVX2, AVX-512F and FMA before calling this (the
/// only way to reach it: the `run` field is private).
fn run_avx512_fma(p: &mut Problem<'_>) {
    // SAFETY: AVX2, AVX-512F and FMA are present (asserted by `F32Gemm::gemm`).
    unsafe { run_avx512_fma_tf(p) }
}

/// The AVX-512F + FMA driver (see [`run_avx2_tf`]).
#[target_feature(enable = "avx2,avx512f,fma")]
fn run_avx512_fma_tf(p: &mut Problem<'_>) {
    for (r0, mr) in row_tiles(p.m) {
        let mut o0 = 0;
        while o0 < p.n {
            let rem = p.n - o0;
            o0 += match mr {
                4 if rem > 2 => fast512::<4, 4>(p, r0, o0),
                4 => fast512::<4, 2>(p, r0, o0),
                2 if rem > 4 => fast512::<2, 8>(p, r0, o0),
                2 => fast512::<2, 4>(p, r0, o0),
                _ if rem > 8 => fast512::<1, 16>(p, r0, o0),
                _ if rem > 4 => fast512::<1, 8>(p, r0, o0),
                _ => fast512::<1, 4>(p, r0, o0),
            };
        }
    }
}

/// Rows `r0..r0 + MR` (all `< m`) times outputs `o0..o0 + NR`; returns `NR`.
#[inline(always)]
fn fast512<const MR: usize, const NR: usize>(p: &mut Problem<'_>, r0: usize, o0: usize) -> usize {
    let xs: [*const f32; MR] = core::array::from_fn(|i| p.x_ptr(r0 + i));
    let ws: [*const f32; NR] = core::array::from_fn(|j| p.w_ptr(o0 + j));
    let mut sums = [0.0f32; 16];
    // SAFETY: AVX-512F and FMA are present (asserted by `F32Gemm::gemm`, see
    // `run_avx512_fma`). Each pointer starts a row of `p.k` floats inside its
    // slice (`F32Gemm::gemm` checked rows `< m` of X and `< n` of W;
    // `r0 + MR <= m` by `row_tiles`, W rows are clamped by `w_ptr`).
    unsafe { fast_tile512::<MR, NR>(p.k, &xs, &ws, &mut sums) };
    p.store_rows::<NR>(r0, o0, MR, &sums);
    NR
}

/// Lane sums of outputs `(i, j)` (accumulator `i * NR + j`, `MR * NR <= 16`;
/// the others are zero), accumulator `a` at `sums[a]` (row-major).
///
/// # Safety
/// AVX-512F and FMA must be present; `xs[i]` and `ws[j]` must be readable for
/// `k` floats.
#[target_feature(enable = "avx512f,fma")]
unsafe fn fast_tile512<const MR: usize, const NR: usize>(
    k: usize,
    xs: &[*const f32; MR],
    ws: &[*const f32; NR],
    sums: &mut [f32; 16],
) {
    const L: usize = 16;
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut c = 0;
    while c + L <= k {
        let mut xv = [_mm512_setzero_ps(); MR];
        for (v, &xp) in xv.iter_mut().zip(xs) {
            // SAFETY: `c + 16 <= k` and `xp` is readable for k floats (caller).
            *v = unsafe { _mm512_loadu_ps(xp.add(c)) };
        }
        for (j, &wp) in ws.iter().enumerate() {
            // SAFETY: as above, for `wp`.
            let wv = unsafe { _mm512_loadu_ps(wp.add(c)) };
            for (i, &x) in xv.iter().enumerate() {
                let a = &mut acc[i * NR + j];
                *a = _mm512_fmadd_ps(wv, x, *a);
            }
        }
        c += L;
    }
    if c < k {
        // Lanes `t < k - c` (1..=15 of them) load, the others are zeros.
        let mask: __mmask16 = (1u16 << (k - c)) - 1;
        let mut xv = [_mm512_setzero_ps(); MR];
        for (v, &xp) in xv.iter_mut().zip(xs) {
            // SAFETY: a masked load reads only the lanes whose mask bit is
            // set, `[c, k)`, inside the `k` readable floats (caller); masked-off
            // lanes are not accessed (fault suppression) and read as zero.
            *v = unsafe { _mm512_maskz_loadu_ps(mask, xp.add(c)) };
        }
        for (j, &wp) in ws.iter().enumerate() {
            // SAFETY: as above, for `wp`.
            let wv = unsafe { _mm512_maskz_loadu_ps(mask, wp.add(c)) };
            for (i, &x) in xv.iter().enumerate() {
                let a = &mut acc[i * NR + j];
                *a = _mm512_fmadd_ps(wv, x, *a);
            }
        }
    }
    // Lane 4 q + t of the tree holds accumulator 4 t + q: back to lane a.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let s = _mm512_permutexvar_ps(order, tree512(&acc));
    // SAFETY: `sums` is 16 floats.
    unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), s) };
}

/// Lane `4 q + t` of the result is the pairwise lane sum of `v[4 t + q]`:
/// `A_j = (v[j] + v[j + 8]) + (v[j + 4] + v[j + 12])` (j < 4), then
/// `(A_0 + A_2) + (A_1 + A_3)`.
#[target_feature(enable = "avx512f")]
fn tree512(v: &[__m512; 16]) -> __m512 {
    // s_i: lanes 0-7 `v[2i]_j + v[2i]_{j+8}`, lanes 8-15 the same for v[2i + 1].
    let s: [__m512; 8] = core::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    // t_i, 128-bit quarter q: the four partial sums of v[4i + q].
    let t: [__m512; 4] = core::array::from_fn(|i| {
        let (a, b) = (s[2 * i], s[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    // u_i, quarter q: `[x_0 + x_2, x_1 + x_3]` of v[8i + q], then of v[8i + 4 + q].
    let u: [__m512; 2] = core::array::from_fn(|i| {
        let (a, b) = (_mm512_castps_pd(t[2 * i]), _mm512_castps_pd(t[2 * i + 1]));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    });
    // Quarter q: the sums of v[q], v[4 + q], v[8 + q], v[12 + q].
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(u[0], u[1]),
        _mm512_shuffle_ps::<0xDD>(u[0], u[1]),
    )
}
