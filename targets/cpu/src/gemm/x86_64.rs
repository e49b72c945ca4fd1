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
};

/// AVX-512F (up to 16 accumulators of two outputs each, tiles 4 x 8, 2 x 16,
/// 1 x 32 and narrower ones for N tails) for `M >= 4` and `K >= 64`, the AVX2
/// tiles for smaller problems (where they measured faster; same bits).
pub const AVX512F: F32Gemm = F32Gemm {
    name: "x86_64_avx512f_f32gemm",
    requires: &[Feature::Avx2, Feature::Avx512F],
    run: run_avx512,
};

/// Slowest first: the table plugs the last one the CPU supports.
pub const KERNELS: [F32Gemm; 2] = [AVX2, AVX512F];

// ---------------------------------------------------------------- AVX2

/// `F32Gemm::gemm` asserted the kernel's `requires` before calling this
/// (the only way to reach it: the `run` field is private).
fn run_avx2(p: &mut Problem<'_>) {
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
    p.finish(r0, o0, &sums[..MR * NR], |l| Some((l / NR, l % NR)));
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
    if p.m < 4 || p.k < 64 {
        return run_avx2(p);
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
    // Lane l: group l / 16 of eight accumulators, half h = (l % 16) / 8,
    // lane t = l % 8 of the transposed group = accumulator a = 8 (l / 16) + t
    // = row * NP + pair, output 2 pair + h.
    let groups = (MR * NP).div_ceil(8);
    p.finish(r0, o0, &sums[..16 * groups], |l| {
        let a = 8 * (l / 16) + l % 8;
        (a < MR * NP).then_some((a / NP, 2 * (a % NP) + (l % 16) / 8))
    });
    2 * NP
}

/// Lane sums of the outputs `(i, 2 q + h)` (`i < MR`, `q < NP`, `h < 2`):
/// accumulator `a = i * NP + q` holds output `2 q` in its low half and
/// `2 q + 1` in its high half; `sums[16 g + 8 h + t]` is half `h` of
/// accumulator `8 g + t` (accumulators past `MR * NP` are zero).
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
    for g in 0..(MR * NP).div_ceil(8) {
        let v: &[__m512; 8] = acc[8 * g..8 * g + 8].try_into().unwrap();
        let s = reduce512(v);
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
