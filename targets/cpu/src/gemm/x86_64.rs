//! x86-64 f32 GEMM kernels: AVX2 (a ymm of eight lanes per output) and
//! AVX-512F (a zmm holding the eight lanes of two outputs). Multiply and add
//! stay separate (no FMA) so that every output has the bits of
//! [`crate::f32::matmul_rows`]; see the parent module for the order.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use super::{row_tiles, F32Gemm, Problem, LANES};
use crate::qmatvec::{CpuFeatures, Feature};

/// AVX2 (8 accumulators of one output each, tiles 4 x 2, 2 x 4, 1 x 8).
pub const AVX2: F32Gemm = F32Gemm {
    name: "x86_64_avx2_f32gemm",
    requires: &[Feature::Avx2],
    run: run_avx2,
};

/// AVX-512F (16 accumulators of two outputs each, tiles 4 x 8, 2 x 16, 1 x 32).
pub const AVX512F: F32Gemm = F32Gemm {
    name: "x86_64_avx512f_f32gemm",
    requires: &[Feature::Avx512F],
    run: run_avx512,
};

/// Slowest first: the table plugs the last one the CPU supports.
pub const KERNELS: [F32Gemm; 2] = [AVX2, AVX512F];

// ---------------------------------------------------------------- AVX2

fn run_avx2(p: &mut Problem<'_>) {
    assert!(
        CpuFeatures::host().has(Feature::Avx2),
        "x86_64_avx2_f32gemm needs AVX2"
    );
    let k8 = p.k - p.k % LANES;
    for (r0, mr) in row_tiles(p.m) {
        let nr = 8 / mr;
        let xs: [*const f32; 4] = core::array::from_fn(|i| p.x_row(r0 + i.min(mr - 1)).as_ptr());
        let mut o0 = 0;
        while o0 < p.n {
            let ws: [*const f32; 8] =
                core::array::from_fn(|j| p.w_row((o0 + j).min(p.n - 1)).as_ptr());
            let mut sums = [0.0f32; 8];
            // SAFETY: AVX2 is present (asserted above). Each pointer starts a
            // row of `p.k >= k8` floats inside its slice (`Problem` rows are
            // checked by `F32Gemm::gemm`; row indices are clamped to `< m`,
            // `< n`), and the kernel reads `[c, c + 8)` with `c + 8 <= k8`.
            unsafe {
                match mr {
                    4 => tile256::<4, 2>(k8, &xs, &ws, &mut sums),
                    2 => tile256::<2, 4>(k8, &xs, &ws, &mut sums),
                    _ => tile256::<1, 8>(k8, &xs, &ws, &mut sums),
                }
            }
            p.finish(r0, o0, &sums, |l| (l / nr, l % nr));
            o0 += nr;
        }
    }
}

/// Lane sums of outputs `(i, j)`, `i < MR`, `j < NR`, at `sums[i * NR + j]`.
///
/// # Safety
/// AVX2 must be present; `xs[i]` (`i < MR`) and `ws[j]` (`j < NR`) must be
/// readable for `k8` floats; `MR * NR == 8`.
#[target_feature(enable = "avx2")]
unsafe fn tile256<const MR: usize, const NR: usize>(
    k8: usize,
    xs: &[*const f32; 4],
    ws: &[*const f32; 8],
    sums: &mut [f32; 8],
) {
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut c = 0;
    while c < k8 {
        let mut xv = [_mm256_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY: `c + 8 <= k8` and `xs[i]` is readable for k8 floats (caller).
            *v = unsafe { _mm256_loadu_ps(xs[i].add(c)) };
        }
        for j in 0..NR {
            // SAFETY: as above, for `ws[j]`.
            let wv = unsafe { _mm256_loadu_ps(ws[j].add(c)) };
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

fn run_avx512(p: &mut Problem<'_>) {
    assert!(
        CpuFeatures::host().has(Feature::Avx512F),
        "x86_64_avx512f_f32gemm needs AVX-512F"
    );
    let k8 = p.k - p.k % LANES;
    for (r0, mr) in row_tiles(p.m) {
        // Pairs of weight rows per activation row; 16 accumulators in all.
        let np = 16 / mr;
        let xs: [*const f32; 4] = core::array::from_fn(|i| p.x_row(r0 + i.min(mr - 1)).as_ptr());
        let mut o0 = 0;
        while o0 < p.n {
            let ws: [*const f32; 32] =
                core::array::from_fn(|j| p.w_row((o0 + j).min(p.n - 1)).as_ptr());
            let mut sums = [0.0f32; 32];
            // SAFETY: AVX-512F is present (asserted above). Each pointer
            // starts a row of `p.k >= k8` floats inside its slice (`Problem`
            // rows are checked by `F32Gemm::gemm`; row indices are clamped to
            // `< m`, `< n`), and the kernel reads `[c, c + 8)` with `c + 8 <= k8`.
            unsafe {
                match mr {
                    4 => tile512::<4, 4>(k8, &xs, &ws, &mut sums),
                    2 => tile512::<2, 8>(k8, &xs, &ws, &mut sums),
                    _ => tile512::<1, 16>(k8, &xs, &ws, &mut sums),
                }
            }
            // Lane l: group g = l / 16 of eight accumulators, half h, lane i
            // of the transposed group = accumulator a = 8 g + i = i_row * NP + pair,
            // output 2 pair + h.
            p.finish(r0, o0, &sums, |l| {
                let a = 8 * (l / 16) + l % 8;
                (a / np, 2 * (a % np) + (l % 16) / 8)
            });
            o0 += 2 * np;
        }
    }
}

/// Lane sums of the outputs `(i, 2 q + h)` (`i < MR`, `q < NP`, `h < 2`):
/// accumulator `a = i * NP + q` holds output `2 q` in its low half and
/// `2 q + 1` in its high half; `sums[16 g + 8 h + t]` is half `h` of
/// accumulator `8 g + t`.
///
/// # Safety
/// AVX-512F must be present; `xs[i]` (`i < MR`) and `ws[j]` (`j < 2 NP`) must
/// be readable for `k8` floats; `MR * NP == 16`.
#[target_feature(enable = "avx512f")]
unsafe fn tile512<const MR: usize, const NP: usize>(
    k8: usize,
    xs: &[*const f32; 4],
    ws: &[*const f32; 32],
    sums: &mut [f32; 32],
) {
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut c = 0;
    while c < k8 {
        let mut xv = [_mm512_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY: `c + 8 <= k8` and `xs[i]` is readable for k8 floats (caller).
            let h = unsafe { _mm256_loadu_ps(xs[i].add(c)) };
            *v = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(h)));
        }
        for q in 0..NP {
            // SAFETY: as above, for `ws[2 q]` and `ws[2 q + 1]` (`2 q + 1 < 2 NP <= 32`).
            let (lo, hi) = unsafe {
                (
                    _mm256_loadu_ps(ws[2 * q].add(c)),
                    _mm256_loadu_ps(ws[2 * q + 1].add(c)),
                )
            };
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
    for g in 0..2 {
        let v: &[__m512; 8] = acc[8 * g..8 * g + 8].try_into().unwrap();
        let s = reduce512(v);
        // SAFETY: `sums` is 32 floats and `16 g + 16 <= 32`.
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
