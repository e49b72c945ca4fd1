//! x86-64 exact-GELU kernels: AVX2 (8 lanes) and AVX-512F (16 lanes), the
//! parent module's lane algorithm on `__m256` / `__m512`. Only IEEE
//! add / sub / mul / div (no FMA), integer ops, compares and blends.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use super::{run_lanes, softmax_lanes, Gelu, Lanes};
use crate::qmatvec::Feature;

/// AVX2, eight lanes.
pub const AVX2: Gelu = Gelu {
    name: "x86_64_avx2_gelu",
    requires: &[Feature::Avx2],
    run: run_avx2,
    softmax: softmax_avx2,
};

/// AVX-512F, sixteen lanes.
pub const AVX512F: Gelu = Gelu {
    name: "x86_64_avx512f_gelu",
    requires: &[Feature::Avx2, Feature::Avx512F],
    run: run_avx512,
    softmax: softmax_avx512,
};

/// Slowest first: the table plugs the last one the CPU supports.
pub const KERNELS: [Gelu; 2] = [AVX2, AVX512F];

// ---------------------------------------------------------------- AVX2

/// Proof that AVX2 is present: only functions compiled with AVX2 enabled
/// (`#[target_feature]`) create it, and they are only called once the
/// feature was checked.
#[derive(Clone, Copy)]
struct Avx2(());

/// `Gelu::gelu` / `Gelu::gelu_add` asserted the kernel's `requires` before
/// calling this (the only way to reach it: the `run` field is private).
fn run_avx2(x: &mut [f32], residual: Option<&[f32]>) {
    // SAFETY: AVX2 is present (asserted by `Gelu::check`, see above).
    unsafe { run_avx2_tf(x, residual) }
}

#[target_feature(enable = "avx2")]
fn run_avx2_tf(x: &mut [f32], residual: Option<&[f32]>) {
    run_lanes(Avx2(()), x, residual);
}

/// `Gelu::softmax` asserted the kernel's `requires` before calling this (the
/// only way to reach it: the `softmax` field is private).
fn softmax_avx2(x: &mut [f32]) {
    // SAFETY: AVX2 is present (asserted by `Gelu::check`).
    unsafe { softmax_avx2_tf(x) }
}

#[target_feature(enable = "avx2")]
fn softmax_avx2_tf(x: &mut [f32]) {
    softmax_lanes(Avx2(()), x);
}

impl Lanes for Avx2 {
    type F = __m256;
    type I = __m256i;
    type M = __m256i;
    const N: usize = 8;

    #[inline(always)]
    fn load(self, a: &[f32]) -> __m256 {
        assert!(a.len() >= 8);
        // SAFETY: AVX2 is present (the token exists); 8 floats are readable
        // at `a` (asserted); `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, a: __m256, out: &mut [f32]) {
        assert!(out.len() >= 8);
        // SAFETY: AVX2 is present; 8 floats are writable at `out` (asserted).
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), a) }
    }
    // SAFETY (every method below): the token proves AVX2 (which implies
    // AVX) is present; the intrinsics only compute on registers.
    #[inline(always)]
    fn splat(self, v: f32) -> __m256 {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> __m256i {
        unsafe { _mm256_set1_epi32(v) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn bits_of(self, a: __m256) -> __m256i {
        unsafe { _mm256_castps_si256(a) }
    }
    #[inline(always)]
    fn float_of(self, a: __m256i) -> __m256 {
        unsafe { _mm256_castsi256_ps(a) }
    }
    #[inline(always)]
    fn and_i(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    fn or_i(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    fn xor_i(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_xor_si256(a, b) }
    }
    #[inline(always)]
    fn add_i(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    fn shl23(self, a: __m256i) -> __m256i {
        unsafe { _mm256_slli_epi32::<23>(a) }
    }
    #[inline(always)]
    fn gt_i(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_cmpgt_epi32(a, b) }
    }
    #[inline(always)]
    fn trunc_i(self, a: __m256) -> __m256i {
        unsafe { _mm256_cvttps_epi32(a) }
    }
    #[inline(always)]
    fn to_f(self, a: __m256i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn select(self, m: __m256i, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)) }
    }
    #[inline(always)]
    fn select_i(self, m: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_blendv_epi8(b, a, m) }
    }
    #[inline(always)]
    fn mand(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    fn mor(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    fn mnot(self, a: __m256i) -> __m256i {
        unsafe { _mm256_xor_si256(a, _mm256_set1_epi32(-1)) }
    }
    #[inline(always)]
    fn pick4(self, sel: __m256i, c: [f32; 4]) -> __m256 {
        unsafe {
            let t = _mm256_setr_ps(c[0], c[1], c[2], c[3], c[0], c[1], c[2], c[3]);
            _mm256_permutevar8x32_ps(t, sel)
        }
    }
}

// ---------------------------------------------------------------- AVX-512F

/// Proof that AVX-512F is present: only functions compiled with AVX-512F
/// enabled create it, and they are only called once the feature was checked.
#[derive(Clone, Copy)]
struct Avx512(());

/// `Gelu::gelu` / `Gelu::gelu_add` asserted the kernel's `requires` before
/// calling this (the only way to reach it: the `run` field is private).
fn run_avx512(x: &mut [f32], residual: Option<&[f32]>) {
    // SAFETY: AVX-512F is present (asserted by `Gelu::check`, see above).
    unsafe { run_avx512_tf(x, residual) }
}

#[target_feature(enable = "avx512f")]
fn run_avx512_tf(x: &mut [f32], residual: Option<&[f32]>) {
    run_lanes(Avx512(()), x, residual);
}

/// `Gelu::softmax` asserted the kernel's `requires` before calling this (the
/// only way to reach it: the `softmax` field is private).
fn softmax_avx512(x: &mut [f32]) {
    // SAFETY: AVX2 and AVX-512F are present (asserted by `Gelu::check`).
    unsafe { softmax_avx512_tf(x) }
}

/// Rows shorter than one zmm (attention over a few tokens) run the AVX2
/// kernel: a padded 16-lane pass costs twice the work, and the ymm lane code
/// compiled inside this AVX-512 function was still 1.7x slower at n = 8 than
/// the AVX2-only function (measured, `--bench gelu`); same bits either way.
#[target_feature(enable = "avx2,avx512f")]
fn softmax_avx512_tf(x: &mut [f32]) {
    if x.len() < 16 {
        softmax_avx2_tf(x);
    } else {
        softmax_lanes(Avx512(()), x);
    }
}

impl Lanes for Avx512 {
    type F = __m512;
    type I = __m512i;
    type M = __mmask16;
    const N: usize = 16;

    #[inline(always)]
    fn load(self, a: &[f32]) -> __m512 {
        assert!(a.len() >= 16);
        // SAFETY: AVX-512F is present (the token exists); 16 floats are
        // readable at `a` (asserted); `loadu` has no alignment requirement.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, a: __m512, out: &mut [f32]) {
        assert!(out.len() >= 16);
        // SAFETY: AVX-512F is present; 16 floats are writable at `out` (asserted).
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), a) }
    }
    // SAFETY (every method below): the token proves AVX-512F is present;
    // the intrinsics only compute on registers.
    #[inline(always)]
    fn splat(self, v: f32) -> __m512 {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> __m512i {
        unsafe { _mm512_set1_epi32(v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn bits_of(self, a: __m512) -> __m512i {
        unsafe { _mm512_castps_si512(a) }
    }
    #[inline(always)]
    fn float_of(self, a: __m512i) -> __m512 {
        unsafe { _mm512_castsi512_ps(a) }
    }
    #[inline(always)]
    fn and_i(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_and_si512(a, b) }
    }
    #[inline(always)]
    fn or_i(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_or_si512(a, b) }
    }
    #[inline(always)]
    fn xor_i(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_xor_si512(a, b) }
    }
    #[inline(always)]
    fn add_i(self, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    fn shl23(self, a: __m512i) -> __m512i {
        unsafe { _mm512_slli_epi32::<23>(a) }
    }
    #[inline(always)]
    fn gt_i(self, a: __m512i, b: __m512i) -> __mmask16 {
        unsafe { _mm512_cmpgt_epi32_mask(a, b) }
    }
    #[inline(always)]
    fn trunc_i(self, a: __m512) -> __m512i {
        unsafe { _mm512_cvttps_epi32(a) }
    }
    #[inline(always)]
    fn to_f(self, a: __m512i) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mask_blend_ps(m, b, a) }
    }
    #[inline(always)]
    fn select_i(self, m: __mmask16, a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_mask_blend_epi32(m, b, a) }
    }
    #[inline(always)]
    fn mand(self, a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    fn mor(self, a: __mmask16, b: __mmask16) -> __mmask16 {
        a | b
    }
    #[inline(always)]
    fn mnot(self, a: __mmask16) -> __mmask16 {
        !a
    }
    #[inline(always)]
    fn pick4(self, sel: __m512i, c: [f32; 4]) -> __m512 {
        unsafe {
            let t = _mm512_castps128_ps512(_mm_setr_ps(c[0], c[1], c[2], c[3]));
            _mm512_permutexvar_ps(sel, t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmatvec::CpuFeatures;

    #[target_feature(enable = "avx2")]
    fn exp256(x: &[f32; 16]) -> [f32; 16] {
        let v = Avx2(());
        let mut out = [0.0; 16];
        for h in 0..2 {
            let e = super::super::expf_lanes(v, v.load(&x[8 * h..]));
            v.store(e, &mut out[8 * h..]);
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    fn exp512(x: &[f32; 16]) -> [f32; 16] {
        let v = Avx512(());
        let mut out = [0.0; 16];
        v.store(super::super::expf_lanes(v, v.load(x)), &mut out);
        out
    }

    /// Every `step`-th f32 bit pattern through the `expf` lanes at both
    /// widths against libm's `expf`, bit for bit (NaN: a NaN). The softmax
    /// kernels feed them any `x - max`, not only the GELU's arguments.
    fn expf_lanes_match_libm(step: u64) {
        let host = CpuFeatures::host();
        let avx2 = host.first_missing(&[Feature::Avx2]).is_none();
        let avx512 = host.first_missing(&[Feature::Avx512F]).is_none();
        let mut x = [0.0f32; 16];
        let mut at = 0u64;
        while at <= u64::from(u32::MAX) {
            for (i, v) in x.iter_mut().enumerate() {
                *v = f32::from_bits((at + i as u64 * step).min(u64::from(u32::MAX)) as u32);
            }
            let want = x.map(libm::expf);
            let mut got = [None; 2];
            if avx2 {
                // SAFETY: AVX2 is present (checked above).
                got[0] = Some(unsafe { exp256(&x) });
            }
            if avx512 {
                // SAFETY: AVX-512F is present (checked above).
                got[1] = Some(unsafe { exp512(&x) });
            }
            for g in got.iter().flatten() {
                for i in 0..16 {
                    assert!(
                        g[i].to_bits() == want[i].to_bits() || (g[i].is_nan() && want[i].is_nan()),
                        "expf({:e} = {:#x}): lanes {:e}, libm {:e}",
                        x[i],
                        x[i].to_bits(),
                        g[i],
                        want[i]
                    );
                }
            }
            at += 16 * step;
        }
    }

    #[test]
    fn expf_lanes_sampled() {
        expf_lanes_match_libm(4099);
    }

    /// All 2^32 inputs: `cargo test --release -p taskpath-cpu --lib expf_lanes_all -- --ignored`.
    #[test]
    #[ignore]
    fn expf_lanes_all() {
        expf_lanes_match_libm(1);
    }
}
