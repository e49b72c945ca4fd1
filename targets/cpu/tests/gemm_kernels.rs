//! Small-M f32 GEMM kernels: the same property tests for every variant.
//!
//! [`gemm_kernel_tests!`] takes `(module name, condition, kernel)` as the
//! quantised kernels' tests do: the generic kernel passes `true`, SIMD kernels
//! a CPU-feature predicate (hosts without the feature skip them). For each
//! kernel, over random shapes M 1..17, K 0..400, N 1..140, with and without
//! bias, it checks
//!
//! - bit-identical outputs to the scalar reference `f32::matmul_rows` (one
//!   `f32::matvec` per row), which is the kernels' contract (`gemm` module docs);
//! - the f64 oracle within `|y - y64| <= (K + 2) u (sum_c |W[o,c] X[r,c]| + |b[o]|)`,
//!   `u = f32::EPSILON` (the usual `K u` bound of a recursive sum, with slack
//!   for the bias add; it is implied by the first check and documents it);
//! - the strided form (row strides larger than K and N, as `conv3_at` uses)
//!   writes exactly its outputs and leaves the gaps alone;
//! - NaN / infinity propagate as in the reference.
//!
//! [`fast_kernel_tests!`] does the same for the opt-in fast (FMA) kernels,
//! which are not bit-exact: outputs within the same f64 bound (and the
//! tighter `(ceil(K / 8) + 6) u`, above their `ceil(K / L) + log2 L + 1`
//! roundings, `gemm` module docs), the same bits whatever M, the row split
//! or the strides, and the reference's NaN / infinity pattern.
//!
//! `PROPTEST_CASES` overrides the case count (default 64).

use proptest::prelude::*;
use taskpath_cpu::f32 as reference;
use taskpath_cpu::gemm::{self, F32Gemm};
use taskpath_cpu::qmatvec::{CpuFeatures, Kernels};

/// splitmix64: a tiny deterministic generator for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), or heavy-tailed / zero now and then.
    fn value(&mut self) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        match self.next() % 16 {
            0 => 0.0,
            1 => 100.0 * u,
            2 => 1e-3 * u,
            _ => u,
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

/// One random problem: `w: [n, k]`, `x: [m, k]`, optional `b: [n]`.
struct Case {
    m: usize,
    n: usize,
    k: usize,
    w: Vec<f32>,
    x: Vec<f32>,
    b: Option<Vec<f32>>,
}

fn case(m: usize, n: usize, k: usize, bias: bool, seed: u64) -> Case {
    let mut rng = Rng(seed);
    Case {
        m,
        n,
        k,
        w: rng.vec(n * k),
        x: rng.vec(m * k),
        b: bias.then(|| rng.vec(n)),
    }
}

/// Checks one kernel on one case against the reference and the f64 oracle.
fn check(g: &F32Gemm, c: &Case) -> Result<(), TestCaseError> {
    let (m, n, k) = (c.m, c.n, c.k);
    let b = c.b.as_deref();
    let mut want = vec![f32::NAN; m * n];
    reference::matmul_rows(&c.w, &c.x, b, m, &mut want);
    let mut got = vec![f32::NAN; m * n];
    g.matmul_rows(&c.w, &c.x, b, m, &mut got);
    let u = f64::from(f32::EPSILON);
    for r in 0..m {
        for o in 0..n {
            let (gv, wv) = (got[r * n + o], want[r * n + o]);
            prop_assert_eq!(
                gv.to_bits(),
                wv.to_bits(),
                "{} m={} n={} k={} at ({}, {}): {:e} vs reference {:e}",
                g.name(),
                m,
                n,
                k,
                r,
                o,
                gv,
                wv
            );
            let (mut s, mut mag) = (0.0f64, 0.0f64);
            for i in 0..k {
                let t = f64::from(c.w[o * k + i]) * f64::from(c.x[r * k + i]);
                s += t;
                mag += t.abs();
            }
            let bo = b.map_or(0.0, |b| f64::from(b[o]));
            let bound = (k as f64 + 2.0) * u * (mag + bo.abs());
            prop_assert!(
                (f64::from(gv) - (s + bo)).abs() <= bound,
                "{} ({}, {}): {:e} vs f64 {:e}, bound {:e}",
                g.name(),
                r,
                o,
                gv,
                s + bo,
                bound
            );
        }
    }
    Ok(())
}

/// Checks a fast kernel on one case: the f64 bound of [`check`] and the
/// tighter `(ceil(K / 8) + 6) u` one, and the bits of the same kernel run one
/// row at a time (an output must not depend on M or the tile).
fn check_fast(g: &F32Gemm, c: &Case) -> Result<(), TestCaseError> {
    let (m, n, k) = (c.m, c.n, c.k);
    let b = c.b.as_deref();
    let mut got = vec![f32::NAN; m * n];
    g.matmul_rows(&c.w, &c.x, b, m, &mut got);
    let u = f64::from(f32::EPSILON);
    for r in 0..m {
        let mut one = vec![f32::NAN; n];
        g.matmul_rows(&c.w, &c.x[r * k..(r + 1) * k], b, 1, &mut one);
        for o in 0..n {
            let gv = got[r * n + o];
            prop_assert_eq!(
                gv.to_bits(),
                one[o].to_bits(),
                "{} row {} alone, o={}",
                g.name(),
                r,
                o
            );
            let (mut s, mut mag) = (0.0f64, 0.0f64);
            for i in 0..k {
                let t = f64::from(c.w[o * k + i]) * f64::from(c.x[r * k + i]);
                s += t;
                mag += t.abs();
            }
            let bo = b.map_or(0.0, |b| f64::from(b[o]));
            let err = (f64::from(gv) - (s + bo)).abs();
            let bound = (k as f64 + 2.0) * u * (mag + bo.abs());
            let tight = (k.div_ceil(8) as f64 + 6.0) * u * (mag + bo.abs());
            prop_assert!(
                err <= bound && err <= tight,
                "{} m={} n={} k={} ({}, {}): {:e} vs f64 {:e}, bounds {:e} {:e}",
                g.name(),
                m,
                n,
                k,
                r,
                o,
                gv,
                s + bo,
                bound,
                tight
            );
        }
    }
    Ok(())
}

/// A fast kernel's strided form has the bits of its contiguous form and
/// leaves the gaps alone.
fn check_fast_strided(g: &F32Gemm, c: &Case, pad: usize) -> Result<(), TestCaseError> {
    let (m, n, k) = (c.m, c.n, c.k);
    let (ldw, ldx, ldy) = (k + pad, k + 2 * pad, n + pad + 1);
    let mut w = vec![f32::NAN; n * ldw];
    for o in 0..n {
        w[o * ldw..o * ldw + k].copy_from_slice(&c.w[o * k..(o + 1) * k]);
    }
    let mut x = vec![f32::NAN; m * ldx];
    for r in 0..m {
        x[r * ldx..r * ldx + k].copy_from_slice(&c.x[r * k..(r + 1) * k]);
    }
    let b = c.b.as_deref();
    let mut want = vec![0.0; m * n];
    g.matmul_rows(&c.w, &c.x, b, m, &mut want);
    let mut y = vec![-7.5f32; (m - 1) * ldy + n];
    g.gemm(m, n, k, &w, ldw, &x, ldx, b, &mut y, ldy);
    for (i, &v) in y.iter().enumerate() {
        let (r, o) = (i / ldy, i % ldy);
        if o < n {
            prop_assert_eq!(v.to_bits(), want[r * n + o].to_bits(), "({}, {})", r, o);
        } else {
            prop_assert_eq!(v, -7.5, "gap ({}, {}) written", r, o);
        }
    }
    Ok(())
}

/// The strided form over a `[m, ldy]` output with gaps, `W` rows at stride
/// `ldw`, `X` rows at stride `ldx`.
fn check_strided(g: &F32Gemm, c: &Case, pad: usize) -> Result<(), TestCaseError> {
    let (m, n, k) = (c.m, c.n, c.k);
    let (ldw, ldx, ldy) = (k + pad, k + 2 * pad, n + pad + 1);
    let mut w = vec![f32::NAN; n * ldw];
    for o in 0..n {
        w[o * ldw..o * ldw + k].copy_from_slice(&c.w[o * k..(o + 1) * k]);
    }
    let mut x = vec![f32::NAN; m * ldx];
    for r in 0..m {
        x[r * ldx..r * ldx + k].copy_from_slice(&c.x[r * k..(r + 1) * k]);
    }
    let b = c.b.as_deref();
    let mut want = vec![0.0; m * n];
    reference::matmul_rows(&c.w, &c.x, b, m, &mut want);
    let mut y = vec![-7.5f32; (m - 1) * ldy + n];
    g.gemm(m, n, k, &w, ldw, &x, ldx, b, &mut y, ldy);
    for (i, &v) in y.iter().enumerate() {
        let (r, o) = (i / ldy, i % ldy);
        if o < n {
            prop_assert_eq!(v.to_bits(), want[r * n + o].to_bits(), "({}, {})", r, o);
        } else {
            prop_assert_eq!(v, -7.5, "gap ({}, {}) written", r, o);
        }
    }
    Ok(())
}

macro_rules! gemm_kernel_tests {
    ($name:ident, $cond:expr, $kernel:expr) => {
        mod $name {
            use super::*;

            fn kernel() -> Option<F32Gemm> {
                if $cond {
                    Some($kernel)
                } else {
                    eprintln!("{}: skipped, CPU lacks the features", stringify!($name));
                    None
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig {
                    cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
                    ..ProptestConfig::default()
                })]

                #[test]
                fn equals_reference_and_f64_bound(
                    m in 1usize..17, n in 1usize..140, k in 0usize..400, bias: bool, seed: u64
                ) {
                    if let Some(g) = kernel() {
                        check(&g, &case(m, n, k, bias, seed))?;
                    }
                }

                #[test]
                fn strided(
                    m in 1usize..9, n in 1usize..40, k in 0usize..70, pad in 0usize..9, bias: bool, seed: u64
                ) {
                    if let Some(g) = kernel() {
                        check_strided(&g, &case(m, n, k, bias, seed), pad)?;
                    }
                }
            }

            /// The model's shapes, every M of 1..=16.
            #[test]
            fn model_shapes() {
                let Some(g) = kernel() else { return };
                for &(k, n) in &[(128, 128), (384, 128), (128, 32), (32, 128), (4, 10), (19, 2), (128, 10)] {
                    for m in 1..=16 {
                        check(&g, &case(m, n, k, m % 2 == 0, (m * 1000 + k + n) as u64)).unwrap();
                    }
                }
            }

            /// NaN and infinity propagate as in the reference (NaN-ness, and
            /// the bits of everything else).
            #[test]
            fn non_finite() {
                let Some(g) = kernel() else { return };
                for (m, n, k) in [(4, 9, 21), (1, 33, 16), (3, 5, 8)] {
                    let mut c = case(m, n, k, true, 9);
                    c.w[k + 3] = f32::NAN;
                    c.x[2] = f32::INFINITY;
                    c.w[2 * k - 1] = f32::NEG_INFINITY;
                    let b = c.b.as_deref();
                    let mut want = vec![0.0; m * n];
                    reference::matmul_rows(&c.w, &c.x, b, m, &mut want);
                    let mut got = vec![0.0; m * n];
                    g.matmul_rows(&c.w, &c.x, b, m, &mut got);
                    for (a, w) in got.iter().zip(&want) {
                        assert!(a.to_bits() == w.to_bits() || (a.is_nan() && w.is_nan()), "{a} vs {w}");
                    }
                }
            }
        }
    };
}

/// The fast kernels' tests (see [`check_fast`]); `$name`, `$cond`, `$kernel`
/// as in [`gemm_kernel_tests!`].
macro_rules! fast_kernel_tests {
    ($name:ident, $cond:expr, $kernel:expr) => {
        mod $name {
            use super::*;

            fn kernel() -> Option<F32Gemm> {
                if $cond {
                    let g = $kernel;
                    assert!(!g.is_exact(), "{} is a fast kernel", g.name());
                    Some(g)
                } else {
                    eprintln!("{}: skipped, CPU lacks the features", stringify!($name));
                    None
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig {
                    cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
                    ..ProptestConfig::default()
                })]

                #[test]
                fn within_f64_bound_and_row_independent(
                    m in 1usize..17, n in 1usize..140, k in 0usize..400, bias: bool, seed: u64
                ) {
                    if let Some(g) = kernel() {
                        check_fast(&g, &case(m, n, k, bias, seed))?;
                    }
                }

                #[test]
                fn strided(
                    m in 1usize..9, n in 1usize..40, k in 0usize..70, pad in 0usize..9, bias: bool, seed: u64
                ) {
                    if let Some(g) = kernel() {
                        check_fast_strided(&g, &case(m, n, k, bias, seed), pad)?;
                    }
                }
            }

            /// The model's shapes, every M of 1..=16.
            #[test]
            fn model_shapes() {
                let Some(g) = kernel() else { return };
                for &(k, n) in &[(128, 128), (384, 128), (128, 32), (32, 128), (4, 10), (19, 2), (128, 10)] {
                    for m in 1..=16 {
                        check_fast(&g, &case(m, n, k, m % 2 == 0, (m * 1000 + k + n) as u64)).unwrap();
                    }
                }
            }

            /// NaN where the reference has NaN, the reference's infinities
            /// (one infinite product per output: no order dependence).
            #[test]
            fn non_finite() {
                let Some(g) = kernel() else { return };
                for (m, n, k) in [(4, 9, 21), (1, 33, 16), (3, 5, 8), (5, 20, 40)] {
                    let mut c = case(m, n, k, true, 9);
                    c.w[k + 3] = f32::NAN;
                    c.x[2] = f32::INFINITY;
                    c.w[2 * k - 1] = f32::NEG_INFINITY;
                    let b = c.b.as_deref();
                    let mut want = vec![0.0; m * n];
                    reference::matmul_rows(&c.w, &c.x, b, m, &mut want);
                    let mut got = vec![0.0; m * n];
                    g.matmul_rows(&c.w, &c.x, b, m, &mut got);
                    for (a, w) in got.iter().zip(&want) {
                        assert_eq!(a.is_nan(), w.is_nan(), "{a} vs {w}");
                        if w.is_infinite() {
                            assert_eq!(a, w);
                        } else {
                            assert!(a.is_finite() || a.is_nan(), "{a} vs {w}");
                        }
                    }
                }
            }
        }
    };
}

gemm_kernel_tests!(generic, true, gemm::GENERIC);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use taskpath_cpu::gemm::x86_64 as k;
    use taskpath_cpu::qmatvec::Feature;

    fn has(f: Feature) -> bool {
        CpuFeatures::host().has(f)
    }

    gemm_kernel_tests!(avx2, has(Feature::Avx2), k::AVX2);
    gemm_kernel_tests!(avx512f, has(Feature::Avx512F), k::AVX512F);
    fast_kernel_tests!(
        avx2_fma,
        has(Feature::Avx2) && has(Feature::Fma),
        k::AVX2_FMA
    );
    fast_kernel_tests!(
        avx512f_fma,
        has(Feature::Avx512F) && has(Feature::Fma),
        k::AVX512F_FMA
    );
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use taskpath_cpu::gemm::aarch64 as k;
    use taskpath_cpu::qmatvec::Feature;

    gemm_kernel_tests!(neon, CpuFeatures::host().has(Feature::Neon), k::NEON);
}

/// The table plugs the fastest supported kernel, generic when asked.
#[test]
fn table_selects_by_features() {
    assert_eq!(Kernels::generic().f32_gemm().name(), "generic_f32gemm");
    assert_eq!(Kernels::select(true).f32_gemm().name(), "generic_f32gemm");
    assert_eq!(
        Kernels::for_features(CpuFeatures::NONE).f32_gemm().name(),
        "generic_f32gemm"
    );
    let best = Kernels::for_features(CpuFeatures::host()).f32_gemm();
    assert!(best.is_supported_here());
    let want = gemm::arch_kernels()
        .iter()
        .rev()
        .find(|k| k.is_supported_here())
        .map_or("generic_f32gemm", |k| k.name());
    assert_eq!(best.name(), want);
    // `matmul_f32` is the table's kernel (and the reference's bits).
    let c = case(5, 13, 37, true, 4);
    let mut a = vec![0.0; 5 * 13];
    let mut b = vec![0.0; 5 * 13];
    Kernels::best().matmul_f32(&c.w, &c.x, c.b.as_deref(), 5, &mut a);
    reference::matmul_rows(&c.w, &c.x, c.b.as_deref(), 5, &mut b);
    assert_eq!(a, b);
}

/// `with_fast_f32` takes the FMA variant of the table's kernel, never a
/// feature the table was not allowed, and leaves generic tables alone.
#[test]
fn fast_table_selection() {
    assert_eq!(
        Kernels::generic().with_fast_f32().f32_gemm().name(),
        "generic_f32gemm"
    );
    assert!(Kernels::best().f32_gemm().is_exact());
    for k in gemm::arch_kernels() {
        assert!(k.is_exact(), "{}", k.name());
    }
    let fast = Kernels::for_features(CpuFeatures::host())
        .with_fast_f32()
        .f32_gemm();
    let want = gemm::fast_kernels()
        .iter()
        .rev()
        .find(|k| k.is_supported_here())
        .map_or(Kernels::best().f32_gemm().name(), |k| k.name());
    assert_eq!(fast.name(), want);
    assert_eq!(
        fast.is_exact(),
        gemm::fast_kernels().iter().all(|k| !k.is_supported_here())
    );
    // Idempotent.
    let again = gemm::fast_variant(fast);
    assert_eq!(again.name(), fast.name());
    #[cfg(target_arch = "x86_64")]
    {
        let host = CpuFeatures::host();
        let no512 = CpuFeatures {
            avx512f: false,
            ..host
        };
        let k = Kernels::for_features(no512).with_fast_f32().f32_gemm();
        if host.avx2 && host.fma {
            assert_eq!(k.name(), "x86_64_avx2_fma_f32gemm");
        }
        // The fast variant of each exact kernel (FMA is the one feature
        // it may add, where the host has it).
        use taskpath_cpu::gemm::x86_64 as x;
        assert_eq!(gemm::fast_variant(gemm::GENERIC).name(), "generic_f32gemm");
        if host.avx2 && host.fma {
            assert_eq!(gemm::fast_variant(x::AVX2).name(), x::AVX2_FMA.name());
        }
        if host.avx512f && host.fma {
            assert_eq!(gemm::fast_variant(x::AVX512F).name(), x::AVX512F_FMA.name());
        }
        if !host.fma {
            assert_eq!(gemm::fast_variant(x::AVX2).name(), x::AVX2.name());
        }
    }
}

/// A fast table's `conv3_f32` is its kernel on the taps' columns: within
/// the f64 bound of the reference for every token.
#[test]
fn fast_conv3_within_bound() {
    let tab = Kernels::best().with_fast_f32();
    let u_eps = f64::from(f32::EPSILON);
    for (l, d, n) in [(1, 8, 5), (2, 3, 7), (5, 128, 128), (7, 13, 33), (4, 1, 2)] {
        let mut rng = Rng((l * 100 + d * 10 + n) as u64);
        let w = rng.vec(n * 3 * d);
        let b = rng.vec(n);
        let u = rng.vec(l * d);
        for t in 0..l {
            let mut got = vec![f32::NAN; n];
            tab.conv3_f32(&w, &b, &u, d, t, &mut got);
            for (o, &g) in got.iter().enumerate() {
                let (mut s, mut mag) = (f64::from(b[o]), f64::from(b[o]).abs());
                for tap in 0..3 {
                    let Some(tok) = (t + tap).checked_sub(1).filter(|&s| s < l) else {
                        continue;
                    };
                    for c in 0..d {
                        let p = f64::from(w[o * 3 * d + tap * d + c]) * f64::from(u[tok * d + c]);
                        s += p;
                        mag += p.abs();
                    }
                }
                let bound = (3.0 * d as f64 + 2.0) * u_eps * mag;
                assert!(
                    (f64::from(g) - s).abs() <= bound,
                    "l={l} d={d} n={n} t={t} o={o}"
                );
            }
        }
    }
}

/// `rows == 0` and `n == 0` are no-ops.
#[test]
fn empty_shapes() {
    let g = gemm::for_features(CpuFeatures::host());
    let mut y: [f32; 0] = [];
    g.matmul_rows(&[], &[], None, 0, &mut y);
    g.gemm(3, 0, 5, &[], 5, &[0.0; 15], 5, None, &mut y, 0);
}

/// `Kernels::conv3_f32` has the bits of `f32::conv3_at` for every token
/// (first and last tokens have two taps), for every table.
#[test]
fn conv3_equals_reference() {
    let tables = [Kernels::generic(), Kernels::best()];
    for (l, d, n) in [(1, 8, 5), (2, 3, 7), (5, 128, 128), (7, 13, 33), (4, 1, 2)] {
        let mut rng = Rng((l * 100 + d * 10 + n) as u64);
        let w = rng.vec(n * 3 * d);
        let b = rng.vec(n);
        let u = rng.vec(l * d);
        for t in 0..l {
            let mut want = vec![0.0; n];
            reference::conv3_at(&w, &b, &u, d, t, &mut want);
            for tab in &tables {
                let mut got = vec![f32::NAN; n];
                tab.conv3_f32(&w, &b, &u, d, t, &mut got);
                let (g, wv): (Vec<u32>, Vec<u32>) = (
                    got.iter().map(|v| v.to_bits()).collect(),
                    want.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(g, wv, "l={l} d={d} n={n} t={t}");
            }
        }
    }
}
