//! aarch64 exact-GELU kernel: NEON (4 lanes), the parent module's lane
//! algorithm on `float32x4_t`. Only IEEE add / sub / mul / div (`fadd`,
//! `fsub`, `fmul`, `fdiv`; no `fmla`), integer ops, compares and `bsl`.
#![allow(unsafe_code)]

use core::arch::aarch64::*;

use super::{run_lanes, softmax_lanes, Gelu, Lanes};
use crate::qmatvec::Feature;

/// NEON, four lanes.
pub const NEON: Gelu = Gelu {
    name: "aarch64_neon_gelu",
    requires: &[Feature::Neon],
    run: run_neon,
    softmax: softmax_neon,
};

/// The aarch64 kernels.
pub const KERNELS: [Gelu; 1] = [NEON];

/// Proof that NEON is present: only [`run_neon_tf`] creates it, and that
/// function is only called once the feature was checked.
#[derive(Clone, Copy)]
struct Neon(());

/// `Gelu::gelu` / `Gelu::gelu_add` asserted the kernel's `requires` before
/// calling this (the only way to reach it: the `run` field is private).
fn run_neon(x: &mut [f32], residual: Option<&[f32]>) {
    // SAFETY: NEON is present (asserted by `Gelu::check`, see above).
    unsafe { run_neon_tf(x, residual) }
}

#[target_feature(enable = "neon")]
fn run_neon_tf(x: &mut [f32], residual: Option<&[f32]>) {
    run_lanes(Neon(()), x, residual);
}

/// `Gelu::softmax` asserted the kernel's `requires` before calling this (the
/// only way to reach it: the `softmax` field is private).
fn softmax_neon(x: &mut [f32]) {
    // SAFETY: NEON is present (asserted by `Gelu::check`).
    unsafe { softmax_neon_tf(x) }
}

#[target_feature(enable = "neon")]
fn softmax_neon_tf(x: &mut [f32]) {
    softmax_lanes(Neon(()), x);
}

impl Lanes for Neon {
    type F = float32x4_t;
    type I = int32x4_t;
    type M = uint32x4_t;
    const N: usize = 4;

    #[inline(always)]
    fn load(self, a: &[f32]) -> float32x4_t {
        assert!(a.len() >= 4);
        // SAFETY: NEON is present (the token exists); 4 floats are readable
        // at `a` (asserted); `vld1q_f32` has no alignment requirement beyond f32's.
        unsafe { vld1q_f32(a.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, a: float32x4_t, out: &mut [f32]) {
        assert!(out.len() >= 4);
        // SAFETY: NEON is present; 4 floats are writable at `out` (asserted).
        unsafe { vst1q_f32(out.as_mut_ptr(), a) }
    }
    // SAFETY (every method below): the token proves NEON is present; the
    // intrinsics only compute on registers.
    #[inline(always)]
    fn splat(self, v: f32) -> float32x4_t {
        unsafe { vdupq_n_f32(v) }
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> int32x4_t {
        unsafe { vdupq_n_s32(v) }
    }
    #[inline(always)]
    fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    fn div(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    fn bits_of(self, a: float32x4_t) -> int32x4_t {
        unsafe { vreinterpretq_s32_f32(a) }
    }
    #[inline(always)]
    fn float_of(self, a: int32x4_t) -> float32x4_t {
        unsafe { vreinterpretq_f32_s32(a) }
    }
    #[inline(always)]
    fn and_i(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vandq_s32(a, b) }
    }
    #[inline(always)]
    fn or_i(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vorrq_s32(a, b) }
    }
    #[inline(always)]
    fn xor_i(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { veorq_s32(a, b) }
    }
    #[inline(always)]
    fn add_i(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vaddq_s32(a, b) }
    }
    #[inline(always)]
    fn shl23(self, a: int32x4_t) -> int32x4_t {
        unsafe { vshlq_n_s32::<23>(a) }
    }
    #[inline(always)]
    fn gt_i(self, a: int32x4_t, b: int32x4_t) -> uint32x4_t {
        unsafe { vcgtq_s32(a, b) }
    }
    #[inline(always)]
    fn trunc_i(self, a: float32x4_t) -> int32x4_t {
        // `fcvtzs`: toward zero, saturating (in range: as x86's `cvttps2dq`).
        unsafe { vcvtq_s32_f32(a) }
    }
    #[inline(always)]
    fn to_f(self, a: int32x4_t) -> float32x4_t {
        unsafe { vcvtq_f32_s32(a) }
    }
    #[inline(always)]
    fn select(self, m: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vbslq_f32(m, a, b) }
    }
    #[inline(always)]
    fn select_i(self, m: uint32x4_t, a: int32x4_t, b: int32x4_t) -> int32x4_t {
        unsafe { vbslq_s32(m, a, b) }
    }
    #[inline(always)]
    fn mand(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        unsafe { vandq_u32(a, b) }
    }
    #[inline(always)]
    fn mor(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        unsafe { vorrq_u32(a, b) }
    }
    #[inline(always)]
    fn mnot(self, a: uint32x4_t) -> uint32x4_t {
        unsafe { vmvnq_u32(a) }
    }
}
