//! Small-M f32 GEMM: `Y[r, o] = sum_c W[o, c] X[r, c] (+ b[o])` for the dense
//! f32 linear layers (M = rows = tokens, 1..16; K = in; N = out), in
//! register-blocked micro-kernels after tract's linalg `mmm`.
//!
//! # Layout and summation order (the decision)
//!
//! Weights stay row-major `[N, K]` as the package stores them: no repacking,
//! no format change. The kernels use a *dot-form* tile: `MR` activation rows
//! times `NR` weight rows of accumulators, each accumulator vectorised along
//! K, one horizontal reduction per output after the K loop.
//!
//! Every kernel computes, for every output, **exactly** what
//! [`crate::f32::matvec`] / [`crate::f32::matmul_rows`] compute, bit for bit:
//!
//! - eight lanes: lane `j` accumulates `acc_j = acc_j + W[o, 8c + j] * X[r, 8c + j]`
//!   over the chunks `c = 0, 1, ...` of eight (`K8 = K - K % 8` columns), with
//!   the product rounded before the add (multiply and add kept separate, never
//!   fused: no FMA);
//! - `s = (((0 + acc_0) + acc_1) + ...) + acc_7` (left to right);
//! - `tail = ((0 + p_K8) + p_K8+1) + ...` over the last `K % 8` products;
//! - `y = (s + tail) + (b[o] or 0)`.
//!
//! This is what makes the choice safe to plug everywhere: the committed golden
//! outputs (`tests/tests/goldens.rs`), the firmware-vs-host comparison of
//! `scripts/nostd-build.sh` (the Cortex-M image keeps the old loop) and the
//! pool's row / column splits all stay bit-identical, whichever kernel the
//! CPU gets. An FMA kernel with 16-lane AVX-512 accumulators would be up to
//! twice as fast in the inner loop but would change every output's rounding.
//!
//! How the kernels keep that order while using wide registers:
//!
//! - AVX-512F: a zmm holds the eight lanes of *two* outputs (two weight rows
//!   `o, o + 1` side by side, the activation chunk broadcast to both halves),
//!   16 zmm accumulators per tile, tiles `MR x NR` = 4 x 8, 2 x 16, 1 x 32;
//!   the reduction transposes groups of eight zmm (two 8 x 8 transposes at
//!   once) and adds the eight lane vectors in order.
//! - AVX2: a ymm per output, 8 accumulators per tile (4 x 2, 2 x 4, 1 x 8),
//!   one 8 x 8 transpose per tile.
//! - NEON: two q registers (lanes 0-3, 4-7) per output, 16 per tile (2 x 4,
//!   1 x 8), the eight lanes summed in order on the stack.
//! - generic: `f32::matvec` per row for contiguous W; for strided W,
//!   `[f32; 8]` accumulators for four rows per weight row.
//!
//! The AVX-512F kernel runs the AVX2 tiles for M < 4, where they
//! measured faster (docs/BENCHMARKS.md); the bits are the same either way.
//!
//! The tail columns, the final adds and the bias are one shared scalar
//! epilogue (`finish`); the x86-64 tiles hand their lane sums over
//! row-major (AVX-512: one lane permutation after the transpose), so a tile
//! inside Y with no K tail takes `finish_rows`, the same `(s + 0) + b` per
//! output as whole rows (this epilogue was a third of the GEMM time at
//! K = 128 when it went lane by lane). M is split into tiles of 4, then 2, then 1 rows; an
//! N tail computes its missing outputs from the last weight row and does not
//! store them. Nothing allocates; no scratch is needed.
//!
//! # The opt-in fast kernels (FMA)
//!
//! [`fast_kernels`] (x86-64: `x86_64_avx2_fma_f32gemm`,
//! `x86_64_avx512f_fma_f32gemm`), chosen only through
//! [`crate::qmatvec::Kernels::with_fast_f32`] / [`fast_variant`], give up the
//! reference's bits for fused multiply-adds and full-width accumulators
//! (`L` = 16 lanes on AVX-512, 8 on AVX2). For every output:
//!
//! - lane `j < L`: `acc_j = fma(W[o, Lc + j], X[r, Lc + j], acc_j)` over the
//!   chunks `c = 0, 1, ...` in order, the last partial chunk loaded masked
//!   (its missing lanes are zeros, so K needs no scalar tail);
//! - a pairwise tree over the lanes: `acc_j + acc_{j + L/2}`, then
//!   `+ (j + L/4)`, ..., then the last pair (log2 L levels);
//! - `y = s + b[o]` (no add without a bias).
//!
//! An output depends only on its W row, its X row and its bias, not on M,
//! the tile, the strides or the pool's splits, so a fast table is
//! deterministic on one CPU; the bits differ between the AVX2 and AVX-512
//! variants and from the exact kernels. Error: `ceil(K / L)` FMA roundings, at
//! most `log2 L` tree roundings and one bias rounding on every term, so
//! `|y - y_exact| <= gamma_(ceil(K/L) + log2 L + 1) (sum_c |W[o,c] X[r,c]| + |b[o]|)`
//! (`gamma_n = n u / (1 - n u)`, `u = 2^-24`), at most the exact kernels'
//! `(K + 2) f32::EPSILON` bound (tests: `targets/cpu/tests/gemm_kernels.rs`).

use crate::qmatvec::{CpuFeatures, Feature};

pub mod generic;

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;

/// Vector width of the reduction order (the reference's [`crate::f32`] lanes).
pub const LANES: usize = 8;

/// One checked problem: `m` rows, `n` outputs, `k` columns; row `o` of W at
/// `w[o * ldw..][..k]`, row `r` of X at `x[r * ldx..][..k]`, `Y[r, o]` at
/// `y[r * ldy + o]`. Built only by [`F32Gemm::gemm`], which checks that every
/// row lies inside its slice.
#[derive(Debug)]
pub struct Problem<'a> {
    m: usize,
    n: usize,
    k: usize,
    w: &'a [f32],
    ldw: usize,
    x: &'a [f32],
    ldx: usize,
    bias: Option<&'a [f32]>,
    y: &'a mut [f32],
    ldy: usize,
}

impl Problem<'_> {
    /// Rows of X (and of Y).
    pub fn m(&self) -> usize {
        self.m
    }

    /// Outputs per row (rows of W).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Row `o < n` of W.
    #[inline(always)]
    fn w_row(&self, o: usize) -> &[f32] {
        &self.w[o * self.ldw..o * self.ldw + self.k]
    }

    /// Row `r < m` of X.
    #[inline(always)]
    fn x_row(&self, r: usize) -> &[f32] {
        &self.x[r * self.ldx..r * self.ldx + self.k]
    }

    /// [`Self::finish`] for a tile whose lane sums are row-major, `W`
    /// outputs per row (`sums[i * W + j]` is output `(r0 + i, o0 + j)`):
    /// when the tile lies wholly inside Y and K has no tail (the common
    /// case), the same `(s + 0) + b` per output as whole rows, without the
    /// per-lane mapping, bounds and tail checks; otherwise [`Self::finish`].
    #[inline(always)]
    fn finish_rows<const W: usize>(&mut self, r0: usize, o0: usize, rows: usize, sums: &[f32]) {
        if !self.k.is_multiple_of(LANES) || !self.rows_inside::<W>(r0, o0, rows) {
            return self.finish(r0, o0, &sums[..rows * W], |l| Some((l / W, l % W)));
        }
        // `s + 0` (the zero tail) is not an identity (it turns -0 into +0),
        // so it stays, as in `finish`.
        self.write_rows::<W>(
            r0,
            o0,
            rows,
            sums,
            |s, b| (s + 0.0) + b,
            |s| (s + 0.0) + 0.0,
        );
    }

    /// [`Self::store`] for row-major lane sums as in [`Self::finish_rows`].
    #[inline(always)]
    #[allow(dead_code)]
    fn store_rows<const W: usize>(&mut self, r0: usize, o0: usize, rows: usize, sums: &[f32]) {
        if !self.rows_inside::<W>(r0, o0, rows) {
            return self.store(r0, o0, &sums[..rows * W], |l| Some((l / W, l % W)));
        }
        self.write_rows::<W>(r0, o0, rows, sums, |s, b| s + b, |s| s);
    }

    /// Whether outputs `(r0..r0 + rows, o0..o0 + W)` all lie inside Y.
    #[inline(always)]
    fn rows_inside<const W: usize>(&self, r0: usize, o0: usize, rows: usize) -> bool {
        r0 + rows <= self.m && o0 + W <= self.n
    }

    /// `Y[r0 + i, o0 + j] = with_bias(s, b[o0 + j])` (or `no_bias(s)`) for
    /// `s = sums[i * W + j]`, whole rows at a time.
    #[inline(always)]
    fn write_rows<const W: usize>(
        &mut self,
        r0: usize,
        o0: usize,
        rows: usize,
        sums: &[f32],
        with_bias: impl Fn(f32, f32) -> f32,
        no_bias: impl Fn(f32) -> f32,
    ) {
        // `F32Gemm::gemm` checked `bias.len() >= n`, and `o0 + W <= n`.
        let bias: Option<&[f32; W]> = self.bias.map(|b| b[o0..o0 + W].try_into().unwrap());
        for (i, s) in sums.chunks_exact(W).take(rows).enumerate() {
            let at = (r0 + i) * self.ldy + o0;
            let y: &mut [f32; W] = (&mut self.y[at..at + W]).try_into().unwrap();
            match bias {
                Some(b) => {
                    for j in 0..W {
                        y[j] = with_bias(s[j], b[j]);
                    }
                }
                None => {
                    for j in 0..W {
                        y[j] = no_bias(s[j]);
                    }
                }
            }
        }
    }

    /// `Y[r, o] = (s + tail(r, o)) + b[o]` for every tile output `(r0 + dr,
    /// o0 + do)` with `r < m`, `o < n`, where `map(l) = Some((dr, do))` says
    /// which output the lane sum `sums[l]` belongs to (`None`: no output, a
    /// padding lane). The shared scalar epilogue.
    #[inline(always)]
    fn finish(
        &mut self,
        r0: usize,
        o0: usize,
        sums: &[f32],
        map: impl Fn(usize) -> Option<(usize, usize)>,
    ) {
        let k8 = self.k - self.k % LANES;
        let has_tail = k8 < self.k;
        for (l, &s) in sums.iter().enumerate() {
            let Some((dr, d_o)) = map(l) else { continue };
            let (r, o) = (r0 + dr, o0 + d_o);
            if r >= self.m || o >= self.n {
                continue;
            }
            let mut tail = 0.0f32;
            if has_tail {
                let wt = &self.w_row(o)[k8..];
                let xt = &self.x_row(r)[k8..];
                for (&a, &b) in wt.iter().zip(xt) {
                    tail += a * b;
                }
            }
            let b = self.bias.map_or(0.0, |b| b[o]);
            self.y[r * self.ldy + o] = (s + tail) + b;
        }
    }

    /// `Y[r, o] = s + b[o]` (no add without a bias) for every tile output as
    /// [`Self::finish`] maps them: the fast kernels' epilogue (no K tail).
    #[inline(always)]
    #[allow(dead_code)]
    fn store(
        &mut self,
        r0: usize,
        o0: usize,
        sums: &[f32],
        map: impl Fn(usize) -> Option<(usize, usize)>,
    ) {
        for (l, &s) in sums.iter().enumerate() {
            let Some((dr, d_o)) = map(l) else { continue };
            let (r, o) = (r0 + dr, o0 + d_o);
            if r >= self.m || o >= self.n {
                continue;
            }
            self.y[r * self.ldy + o] = self.bias.map_or(s, |b| s + b[o]);
        }
    }

    /// Start of row `r` of X as a pointer (`wrapping_add`: safe to form; it
    /// lies inside `x` for `r < m`, which `F32Gemm::gemm` checked).
    #[inline(always)]
    #[allow(dead_code)]
    fn x_ptr(&self, r: usize) -> *const f32 {
        self.x.as_ptr().wrapping_add(r * self.ldx)
    }

    /// Start of row `min(o, n - 1)` of W as a pointer (clamped: an N tail
    /// reads the last row again; inside `w`, which `F32Gemm::gemm` checked).
    #[inline(always)]
    #[allow(dead_code)]
    fn w_ptr(&self, o: usize) -> *const f32 {
        self.w.as_ptr().wrapping_add(o.min(self.n - 1) * self.ldw)
    }
}

/// The row tiles of a problem of `m` rows: 4-row tiles, then one of 2, then one of 1.
#[inline(always)]
fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let fours = m / 4;
    let rest = m % 4;
    (0..fours)
        .map(|t| (4 * t, 4))
        .chain((rest >= 2).then_some((4 * fours, 2)))
        .chain((rest % 2 == 1).then_some((m - 1, 1)))
}

/// An f32 small-M GEMM kernel (one variant: generic, AVX2, AVX-512F, NEON).
#[derive(Clone, Copy)]
pub struct F32Gemm {
    name: &'static str,
    requires: &'static [Feature],
    run: fn(&mut Problem<'_>),
    /// Bit-identical to [`crate::f32::matmul_rows`] (false: a fast FMA kernel).
    exact: bool,
}

impl core::fmt::Debug for F32Gemm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("F32Gemm")
            .field("name", &self.name)
            .field("requires", &self.requires)
            .field("exact", &self.exact)
            .finish()
    }
}

impl F32Gemm {
    /// Name encoding architecture and ISA, e.g. `x86_64_avx512f_f32gemm`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// CPU features the kernel needs (empty for the generic one).
    pub fn requires(&self) -> &'static [Feature] {
        self.requires
    }

    /// Whether the outputs are bit-identical to [`crate::f32::matmul_rows`]
    /// (false for the opt-in fast kernels, [`fast_kernels`]).
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Whether this CPU can run the kernel (see [`CpuFeatures::host`]).
    pub fn is_supported_here(&self) -> bool {
        CpuFeatures::host().first_missing(self.requires).is_none()
    }

    /// Strided form: `y[r * ldy + o] = W[o] . X[r] (+ bias[o])` for `r < m`,
    /// `o < n`, row `o` of W at `w[o * ldw..][..k]`, row `r` of X at
    /// `x[r * ldx..][..k]`. Other elements of `y` are left alone.
    ///
    /// # Panics
    /// If a row or the bias (`bias.len() >= n`) lies outside its slice, or if
    /// the CPU lacks a feature the kernel needs.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        w: &[f32],
        ldw: usize,
        x: &[f32],
        ldx: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
        ldy: usize,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let fits = |len: usize, count: usize, ld: usize, width: usize| {
            (count - 1)
                .checked_mul(ld)
                .and_then(|s| s.checked_add(width))
                .is_some_and(|e| e <= len)
        };
        assert!(
            fits(w.len(), n, ldw, k) && (n == 1 || ldw >= k),
            "F32Gemm: w must hold n rows of k at stride ldw"
        );
        assert!(
            fits(x.len(), m, ldx, k) && (m == 1 || ldx >= k),
            "F32Gemm: x must hold m rows of k at stride ldx"
        );
        assert!(
            fits(y.len(), m, ldy, n) && (m == 1 || ldy >= n),
            "F32Gemm: y must hold m rows of n at stride ldy"
        );
        assert!(
            bias.is_none_or(|b| b.len() >= n),
            "F32Gemm: bias must be [n]"
        );
        // The architecture kernels rely on this check for the safety of
        // their intrinsics (`run` is private: this is its only caller).
        assert!(
            self.is_supported_here(),
            "F32Gemm: {} needs CPU features this CPU lacks",
            self.name
        );
        let mut p = Problem {
            m,
            n,
            k,
            w,
            ldw,
            x,
            ldx,
            bias,
            y,
            ldy,
        };
        (self.run)(&mut p);
    }

    /// Drop-in for [`crate::f32::matmul_rows`] (same contract, same bits if
    /// [`Self::is_exact`]):
    /// `w: [out, in]`, `x: [rows, in]`, `y: [rows, out]`; `rows == 0` is a no-op.
    ///
    /// # Panics
    /// If `x` / `y` are not whole rows or `w` / `bias` are too short.
    pub fn matmul_rows(
        &self,
        w: &[f32],
        x: &[f32],
        bias: Option<&[f32]>,
        rows: usize,
        y: &mut [f32],
    ) {
        if rows == 0 {
            return;
        }
        assert!(
            x.len().is_multiple_of(rows) && y.len().is_multiple_of(rows),
            "matmul_rows: x must be [rows, in] and y [rows, out]"
        );
        let (k, n) = (x.len() / rows, y.len() / rows);
        self.gemm(rows, n, k, w, k, x, k, bias, y, n);
    }
}

/// The portable kernel (every target).
pub const GENERIC: F32Gemm = F32Gemm {
    name: "generic_f32gemm",
    requires: &[],
    run: generic::run,
    exact: true,
};

/// The kernels compiled for this architecture, slowest first (the table plugs
/// the last one the CPU supports). Empty elsewhere.
pub fn arch_kernels() -> &'static [F32Gemm] {
    #[cfg(target_arch = "x86_64")]
    {
        &x86_64::KERNELS
    }
    #[cfg(target_arch = "aarch64")]
    {
        &aarch64::KERNELS
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        &[]
    }
}

/// The fastest kernel whose features are in `features` (and the host's).
pub fn for_features(features: CpuFeatures) -> F32Gemm {
    let f = features.intersect(CpuFeatures::host());
    arch_kernels()
        .iter()
        .rev()
        .find(|k| f.first_missing(k.requires).is_none())
        .copied()
        .unwrap_or(GENERIC)
}

/// The opt-in fast (FMA, not bit-exact) kernels compiled for this
/// architecture, slowest first. Empty where there are none.
pub fn fast_kernels() -> &'static [F32Gemm] {
    #[cfg(target_arch = "x86_64")]
    {
        &x86_64::FAST_KERNELS
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        &[]
    }
}

/// The fast variant of `exact`: the last of [`fast_kernels`] that this CPU
/// supports and that needs no feature beyond `exact`'s and FMA (so a table
/// restricted to AVX2 gets the AVX2 + FMA kernel, the generic kernel stays
/// generic); `exact` itself if there is none.
pub fn fast_variant(exact: F32Gemm) -> F32Gemm {
    if !exact.exact {
        return exact;
    }
    let allowed = |f: &Feature| *f == Feature::Fma || exact.requires.contains(f);
    fast_kernels()
        .iter()
        .rev()
        .find(|k| k.requires.iter().all(allowed) && k.is_supported_here())
        .copied()
        .unwrap_or(exact)
}
