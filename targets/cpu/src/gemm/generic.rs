//! The portable kernel: `f32::matvec` per row for contiguous W; for strided
//! W (`conv3`), per weight row, `[f32; 8]` accumulators for up to four
//! activation rows, so each weight chunk is loaded once for the whole row
//! tile (LLVM vectorises the lane loop). Same bits as [`crate::f32::matmul_rows`].

use super::{row_tiles, Problem, LANES};

/// Runs a checked problem.
pub(super) fn run(p: &mut Problem<'_>) {
    // Contiguous W: one `f32::matvec` per row, which LLVM vectorises better
    // than the row tiles below (measured: docs/BENCHMARKS.md); same bits.
    if p.ldw == p.k {
        let (n, k) = (p.n, p.k);
        for r in 0..p.m {
            let x = &p.x[r * p.ldx..r * p.ldx + k];
            let y = &mut p.y[r * p.ldy..r * p.ldy + n];
            crate::f32::matvec(&p.w[..n * k], x, p.bias.map(|b| &b[..n]), y);
        }
        return;
    }
    for (r0, mr) in row_tiles(p.m) {
        match mr {
            4 => tile::<4>(p, r0),
            2 => tile::<2>(p, r0),
            _ => tile::<1>(p, r0),
        }
    }
}

/// Rows `r0..r0 + MR`, every output.
#[inline(always)]
fn tile<const MR: usize>(p: &mut Problem<'_>, r0: usize) {
    let k8 = p.k - p.k % LANES;
    for o in 0..p.n {
        let mut acc = [[0.0f32; LANES]; MR];
        {
            let wo = &p.w_row(o)[..k8];
            let xs: [&[f32]; MR] = core::array::from_fn(|i| &p.x_row(r0 + i)[..k8]);
            for (c, wc) in wo.chunks_exact(LANES).enumerate() {
                for (a, xr) in acc.iter_mut().zip(&xs) {
                    let xc = &xr[c * LANES..(c + 1) * LANES];
                    for ((s, &wv), &xv) in a.iter_mut().zip(wc).zip(xc) {
                        *s += wv * xv;
                    }
                }
            }
        }
        let sums: [f32; MR] = core::array::from_fn(|i| acc[i].iter().fold(0.0, |s, &a| s + a));
        p.finish(r0, o, &sums, |l| Some((l, 0)));
    }
}
