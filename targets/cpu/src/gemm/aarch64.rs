//! aarch64 f32 GEMM kernel: NEON, two q registers (lanes 0-3 and 4-7) per
//! output, 16 per tile (4 x 2, 2 x 4, 1 x 8). Multiply and add stay separate
//! (`fmul` + `fadd`, never `fmla`) so that every output has the bits of
//! [`crate::f32::matmul_rows`]; see the parent module for the order.
#![allow(unsafe_code)]

use core::arch::aarch64::*;

use super::{row_tiles, F32Gemm, Problem, LANES};
use crate::qmatvec::Feature;

/// NEON.
pub const NEON: F32Gemm = F32Gemm {
    name: "aarch64_neon_f32gemm",
    requires: &[Feature::Neon],
    run: run_neon,
    exact: true,
};

/// The aarch64 kernels.
pub const KERNELS: [F32Gemm; 1] = [NEON];

/// `F32Gemm::gemm` asserted NEON before calling this (the only way to reach
/// it: the `run` field is private).
fn run_neon(p: &mut Problem<'_>) {
    let k8 = p.k - p.k % LANES;
    for (r0, mr) in row_tiles(p.m) {
        let nr = 8 / mr;
        let xs: [*const f32; 4] = core::array::from_fn(|i| p.x_row(r0 + i.min(mr - 1)).as_ptr());
        let mut o0 = 0;
        while o0 < p.n {
            let ws: [*const f32; 8] =
                core::array::from_fn(|j| p.w_row((o0 + j).min(p.n - 1)).as_ptr());
            let mut lanes = [[0.0f32; LANES]; 8];
            // SAFETY: NEON is present (asserted by `F32Gemm::gemm`). Each pointer starts a
            // row of `p.k >= k8` floats inside its slice (`Problem` rows are
            // checked by `F32Gemm::gemm`; row indices are clamped to `< m`,
            // `< n`), and the kernel reads `[c, c + 8)` with `c + 8 <= k8`.
            unsafe {
                match mr {
                    4 => tile::<4, 2>(k8, &xs, &ws, &mut lanes),
                    2 => tile::<2, 4>(k8, &xs, &ws, &mut lanes),
                    _ => tile::<1, 8>(k8, &xs, &ws, &mut lanes),
                }
            }
            let sums: [f32; 8] = core::array::from_fn(|a| lanes[a].iter().fold(0.0, |s, &v| s + v));
            p.finish(r0, o0, &sums, |l| Some((l / nr, l % nr)));
            o0 += nr;
        }
    }
}

/// The eight lane accumulators of output `(i, j)` at `lanes[i * NR + j]`.
///
/// # Safety
/// NEON must be present; `xs[i]` (`i < MR`) and `ws[j]` (`j < NR`) must be
/// readable for `k8` floats; `MR * NR == 8`.
#[target_feature(enable = "neon")]
unsafe fn tile<const MR: usize, const NR: usize>(
    k8: usize,
    xs: &[*const f32; 4],
    ws: &[*const f32; 8],
    lanes: &mut [[f32; LANES]; 8],
) {
    let mut acc = [[vdupq_n_f32(0.0); 2]; 8];
    let mut c = 0;
    while c < k8 {
        let mut xv = [[vdupq_n_f32(0.0); 2]; MR];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY: `c + 8 <= k8` and `xs[i]` is readable for k8 floats (caller).
            *v = unsafe { [vld1q_f32(xs[i].add(c)), vld1q_f32(xs[i].add(c + 4))] };
        }
        for j in 0..NR {
            // SAFETY: as above, for `ws[j]`.
            let wv = unsafe { [vld1q_f32(ws[j].add(c)), vld1q_f32(ws[j].add(c + 4))] };
            for (i, x) in xv.iter().enumerate() {
                let a = &mut acc[i * NR + j];
                a[0] = vaddq_f32(a[0], vmulq_f32(wv[0], x[0]));
                a[1] = vaddq_f32(a[1], vmulq_f32(wv[1], x[1]));
            }
        }
        c += LANES;
    }
    for (a, out) in acc.iter().zip(lanes.iter_mut()) {
        // SAFETY: `out` is 8 floats: lanes 0-3 then 4-7.
        unsafe {
            vst1q_f32(out.as_mut_ptr(), a[0]);
            vst1q_f32(out.as_mut_ptr().add(4), a[1]);
        }
    }
}
