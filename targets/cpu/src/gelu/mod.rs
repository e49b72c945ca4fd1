//! Vectorised exact GELU, bit-identical to [`crate::f32::gelu`] for every
//! f32 input.
//!
//! [`crate::f32::gelu`] computes `0.5 * t * erfcf(-t * FRAC_1_SQRT_2)` with
//! libm's `erfcf` (and through it `expf` and `scalbnf`), ports of FreeBSD's
//! single-precision code. Those use only f32 add / sub / mul / div (each
//! correctly rounded, in a vector lane exactly as in a scalar register; Rust
//! never contracts them into FMA), integer operations on the bit pattern and
//! branches on ranges of `|x|`. [`gelu_lanes`] evaluates every branch for
//! every lane with the *same operation sequence* and picks each lane's
//! branch with lane masks, so each lane gets the scalar bits:
//!
//! - The three rational approximations of `erfcf` on `|x| < 0.84375`,
//!   `< 1.25` and `< 28` (two coefficient sets above and below `1/0.35`) are
//!   evaluated as *one* Horner pair of degree 7 / 8 whose coefficients are
//!   picked per lane; the shorter polynomials are padded with zero leading
//!   coefficients. That is exact: with a finite variable `u`, `0 + u * 0` is
//!   a zero, and `c + u * (a zero)` is `c` for the first non-zero `c`, so the
//!   padded Horner chain reaches the true chain's first step with the same
//!   value and then performs the same operations.
//! - `expf` is evaluated for every lane with its argument reduction (`k`
//!   from the truncating conversion, or `+-1`, or `0`: with `k = 0` the
//!   reduction `x - 0 * ln2hi - 0 * ln2lo` returns `x` unchanged, as the
//!   scalar `k = 0` path has it) and `scalbnf`'s single pre-scaling step
//!   (multiplying by `1.0` where none is needed changes no bit); its special
//!   cases (NaN, overflow, underflow to zero, tiny arguments) are blended in.
//! - NaN inputs give NaN (the scalar code's NaN *payload / sign* depends on
//!   how LLVM orders commutative operands, so only "NaN in, NaN out" is a
//!   property of the scalar function); every non-NaN input, `+-0`, `+-inf`
//!   and subnormals included, gives the scalar result bit for bit. The
//!   exhaustive test `tests/gelu.rs` checks all 2^32 inputs.
//!
//! Residual form: [`Gelu::gelu_add`] computes `gelu(x) + r` (in that operand
//! order, as `f32::gelu` then `f32::add` do) in the same pass.
//!
//! Variants: generic (the scalar [`crate::f32::gelu`]), AVX2 and AVX-512F
//! (x86-64), NEON (aarch64), chosen through
//! [`crate::qmatvec::Kernels::gelu_f32`]. They live behind the `gelu`
//! feature (f32-only firmware leaves them out to save flash and runs the
//! scalar code, which has the same bits).

use crate::qmatvec::{CpuFeatures, Feature};

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;

/// An exact-GELU kernel (one variant: generic, AVX2, AVX-512F, NEON).
#[derive(Clone, Copy)]
pub struct Gelu {
    name: &'static str,
    requires: &'static [Feature],
    run: fn(&mut [f32], Option<&[f32]>),
    softmax: fn(&mut [f32]),
}

impl core::fmt::Debug for Gelu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gelu")
            .field("name", &self.name)
            .field("requires", &self.requires)
            .finish()
    }
}

impl Gelu {
    /// Name encoding architecture and ISA, e.g. `x86_64_avx512f_gelu`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// CPU features the kernel needs (empty for the generic one).
    pub fn requires(&self) -> &'static [Feature] {
        self.requires
    }

    /// Whether this CPU can run the kernel (see [`CpuFeatures::host`]).
    pub fn is_supported_here(&self) -> bool {
        CpuFeatures::host().first_missing(self.requires).is_none()
    }

    /// [`crate::f32::gelu`] in place, same bits (NaN: a NaN).
    ///
    /// # Panics
    /// If the CPU lacks a feature the kernel needs.
    pub fn gelu(&self, x: &mut [f32]) {
        self.check();
        (self.run)(x, None);
    }

    /// `x[i] = gelu(x[i]) + residual[i]`: the bits of [`crate::f32::gelu`]
    /// followed by [`crate::f32::add`]`(residual, x)`.
    ///
    /// # Panics
    /// If the lengths differ or the CPU lacks a feature the kernel needs.
    pub fn gelu_add(&self, x: &mut [f32], residual: &[f32]) {
        assert_eq!(
            x.len(),
            residual.len(),
            "gelu_add: x and residual must have the same length"
        );
        self.check();
        (self.run)(x, Some(residual));
    }

    /// [`crate::f32::softmax`] in place, same bits (NaN: a NaN): the
    /// exponentials through the same libm-exact `expf` lanes as the GELU,
    /// the sum in the scalar order.
    ///
    /// # Panics
    /// If the CPU lacks a feature the kernel needs.
    pub fn softmax(&self, x: &mut [f32]) {
        self.check();
        (self.softmax)(x);
    }

    /// The architecture kernels rely on this check for the safety of their
    /// intrinsics (`run` and `softmax` are private: `gelu`, `gelu_add` and
    /// `softmax` are their only callers).
    fn check(&self) {
        assert!(
            self.is_supported_here(),
            "Gelu: {} needs CPU features this CPU lacks",
            self.name
        );
    }
}

/// The scalar reference: [`crate::f32::gelu`], then [`crate::f32::add`].
fn run_generic(x: &mut [f32], residual: Option<&[f32]>) {
    crate::f32::gelu(x);
    if let Some(r) = residual {
        crate::f32::add(r, x);
    }
}

/// The portable kernel (every target): the scalar libm code.
pub const GENERIC: Gelu = Gelu {
    name: "generic_gelu",
    requires: &[],
    run: run_generic,
    softmax: crate::f32::softmax,
};

/// The kernels compiled for this architecture, slowest first (the table plugs
/// the last one the CPU supports). Empty elsewhere.
pub fn arch_kernels() -> &'static [Gelu] {
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
pub fn for_features(features: CpuFeatures) -> Gelu {
    let f = features.intersect(CpuFeatures::host());
    arch_kernels()
        .iter()
        .rev()
        .find(|k| f.first_missing(k.requires).is_none())
        .copied()
        .unwrap_or(GENERIC)
}

/// Lane operations of one SIMD width. Implemented by zero-sized *tokens*
/// that the architecture modules only create once the CPU features are
/// known to be present, so these methods are safe to call. `F`: f32 lanes,
/// `I`: i32 lanes (bit patterns), `M`: a lane mask. Every float operation is
/// the correctly rounded IEEE operation of one lane (no FMA, no
/// approximations); integer compares are signed.
#[allow(dead_code)]
pub(crate) trait Lanes: Copy {
    /// f32 lanes.
    type F: Copy;
    /// i32 lanes.
    type I: Copy;
    /// A mask with one flag per lane.
    type M: Copy;
    /// Lanes per vector.
    const N: usize;
    /// The first [`Self::N`] values of `a`.
    ///
    /// # Panics
    /// If `a` is shorter.
    fn load(self, a: &[f32]) -> Self::F;
    /// Writes the lanes to the first [`Self::N`] values of `out`.
    ///
    /// # Panics
    /// If `out` is shorter.
    fn store(self, a: Self::F, out: &mut [f32]);
    /// Every lane `v`.
    fn splat(self, v: f32) -> Self::F;
    /// Every lane `v`.
    fn splat_i(self, v: i32) -> Self::I;
    /// `a + b`.
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a - b`.
    fn sub(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a * b`.
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a / b`.
    fn div(self, a: Self::F, b: Self::F) -> Self::F;
    /// The bit pattern.
    fn bits_of(self, a: Self::F) -> Self::I;
    /// The f32 with this bit pattern.
    fn float_of(self, a: Self::I) -> Self::F;
    /// `a & b`.
    fn and_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// `a | b`.
    fn or_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// `a ^ b`.
    fn xor_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// `a + b` (wrapping).
    fn add_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// `a << 23`.
    fn shl23(self, a: Self::I) -> Self::I;
    /// `a > b` (signed).
    fn gt_i(self, a: Self::I, b: Self::I) -> Self::M;
    /// `f32 -> i32` truncating toward zero (in range: Rust's `as i32`).
    fn trunc_i(self, a: Self::F) -> Self::I;
    /// `i32 -> f32` (exact for the small values used here).
    fn to_f(self, a: Self::I) -> Self::F;
    /// `m ? a : b` per lane.
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    /// `m ? a : b` per lane.
    fn select_i(self, m: Self::M, a: Self::I, b: Self::I) -> Self::I;
    /// `a & b`.
    fn mand(self, a: Self::M, b: Self::M) -> Self::M;
    /// `a | b`.
    fn mor(self, a: Self::M, b: Self::M) -> Self::M;
    /// `!a`.
    fn mnot(self, a: Self::M) -> Self::M;
    /// `c[sel]` per lane, `sel` in `0..4` (a table lookup; the default
    /// blends, architectures with a lane permute override it).
    #[inline(always)]
    fn pick4(self, sel: Self::I, c: [f32; 4]) -> Self::F {
        let lt = |k: i32| self.gt_i(self.splat_i(k), sel);
        self.select(
            lt(1),
            self.splat(c[0]),
            self.select(
                lt(2),
                self.splat(c[1]),
                self.select(lt(3), self.splat(c[2]), self.splat(c[3])),
            ),
        )
    }
}

// libm 0.2 erff.rs / expf.rs constants (the same literals, kept verbatim).
#[allow(clippy::excessive_precision)]
const ERX: f32 = 8.4506291151e-01;
#[allow(clippy::excessive_precision)]
const PP: [f32; 5] = [
    1.2837916613e-01,
    -3.2504209876e-01,
    -2.8481749818e-02,
    -5.7702702470e-03,
    -2.3763017452e-05,
];
#[allow(clippy::excessive_precision)]
const QQ: [f32; 5] = [
    3.9791721106e-01,
    6.5022252500e-02,
    5.0813062117e-03,
    1.3249473704e-04,
    -3.9602282413e-06,
];
#[allow(clippy::excessive_precision)]
const PA: [f32; 7] = [
    -2.3621185683e-03,
    4.1485610604e-01,
    -3.7220788002e-01,
    3.1834661961e-01,
    -1.1089469492e-01,
    3.5478305072e-02,
    -2.1663755178e-03,
];
#[allow(clippy::excessive_precision)]
const QA: [f32; 6] = [
    1.0642088205e-01,
    5.4039794207e-01,
    7.1828655899e-02,
    1.2617121637e-01,
    1.3637083583e-02,
    1.1984500103e-02,
];
#[allow(clippy::excessive_precision)]
const RA: [f32; 8] = [
    -9.8649440333e-03,
    -6.9385856390e-01,
    -1.0558626175e+01,
    -6.2375331879e+01,
    -1.6239666748e+02,
    -1.8460508728e+02,
    -8.1287437439e+01,
    -9.8143291473e+00,
];
#[allow(clippy::excessive_precision)]
const SA: [f32; 8] = [
    1.9651271820e+01,
    1.3765776062e+02,
    4.3456588745e+02,
    6.4538726807e+02,
    4.2900814819e+02,
    1.0863500214e+02,
    6.5702495575e+00,
    -6.0424413532e-02,
];
#[allow(clippy::excessive_precision)]
const RB: [f32; 7] = [
    -9.8649431020e-03,
    -7.9928326607e-01,
    -1.7757955551e+01,
    -1.6063638306e+02,
    -6.3756646729e+02,
    -1.0250950928e+03,
    -4.8351919556e+02,
];
#[allow(clippy::excessive_precision)]
const SB: [f32; 7] = [
    3.0338060379e+01,
    3.2579251099e+02,
    1.5367296143e+03,
    3.1998581543e+03,
    2.5530502930e+03,
    4.7452853394e+02,
    -2.2440952301e+01,
];
#[allow(clippy::excessive_precision)]
const LN2_HI: f32 = 6.9314575195e-01;
#[allow(clippy::excessive_precision)]
const LN2_LO: f32 = 1.4286067653e-06;
#[allow(clippy::excessive_precision)]
const INV_LN2: f32 = 1.4426950216e+00;
#[allow(clippy::excessive_precision)]
const EXP_P1: f32 = 1.6666625440e-1;
#[allow(clippy::excessive_precision)]
const EXP_P2: f32 = -2.7667332906e-3;
/// 2^-120 (erfcf's tail constant).
const X1P_120: f32 = f32::from_bits(0x0380_0000);

/// Coefficient `i` of a padded polynomial (`0.0` past its end).
const fn coef(c: &[f32], i: usize) -> f32 {
    if i < c.len() {
        c[i]
    } else {
        0.0
    }
}

/// The numerator coefficients `[PP, PA, RA, RB]` (degree 7, zero-padded).
const NUM: [[f32; 4]; 8] = {
    let mut t = [[0.0; 4]; 8];
    let mut i = 0;
    while i < 8 {
        t[i] = [coef(&PP, i), coef(&PA, i), coef(&RA, i), coef(&RB, i)];
        i += 1;
    }
    t
};

/// The denominator coefficients `1, [QQ, QA, SA, SB]` (degree 8, zero-padded).
const DEN: [[f32; 4]; 8] = {
    let mut t = [[0.0; 4]; 8];
    let mut i = 0;
    while i < 8 {
        t[i] = [coef(&QQ, i), coef(&QA, i), coef(&SA, i), coef(&SB, i)];
        i += 1;
    }
    t
};

/// libm's `expf` on every lane (see the module documentation).
#[inline(always)]
fn expf_lanes<V: Lanes>(v: V, x: V::F) -> V::F {
    let bits = v.bits_of(x);
    let hx = v.and_i(bits, v.splat_i(0x7fff_ffff));
    let neg = v.gt_i(v.splat_i(0), bits);
    let gt = |c: i32| v.gt_i(hx, v.splat_i(c));
    // k: round(x / ln2) for |x| > 1.5 ln2, +-1 for |x| > 0.5 ln2, else 0.
    let half = v.float_of(v.or_i(
        v.splat_i(0.5f32.to_bits() as i32),
        v.and_i(bits, v.splat_i(i32::MIN)),
    ));
    let k_big = v.trunc_i(v.add(v.mul(v.splat(INV_LN2), x), half));
    let k_mid = v.select_i(neg, v.splat_i(-1), v.splat_i(1));
    let k = v.select_i(
        gt(0x3f85_1592),
        k_big,
        v.select_i(gt(0x3eb1_7218), k_mid, v.splat_i(0)),
    );
    let kf = v.to_f(k);
    let hi = v.sub(x, v.mul(kf, v.splat(LN2_HI)));
    let lo = v.mul(kf, v.splat(LN2_LO));
    let xr = v.sub(hi, lo);
    let xx = v.mul(xr, xr);
    let c = v.sub(
        xr,
        v.mul(xx, v.add(v.splat(EXP_P1), v.mul(xx, v.splat(EXP_P2)))),
    );
    let q = v.div(v.mul(xr, c), v.sub(v.splat(2.0), c));
    let y = v.add(v.splat(1.0), v.add(v.sub(q, lo), hi));
    // scalbnf(y, k): one pre-scaling step covers k in [-228, 254].
    let over = v.gt_i(k, v.splat_i(127));
    let under = v.gt_i(v.splat_i(-126), k);
    let pre = v.select(
        over,
        v.splat(f32::from_bits(0x7f00_0000)),
        v.select(under, v.splat(f32::from_bits(0x0c80_0000)), v.splat(1.0)),
    );
    let n = v.select_i(
        over,
        v.add_i(k, v.splat_i(-127)),
        v.select_i(under, v.add_i(k, v.splat_i(102)), k),
    );
    let scale = v.float_of(v.shl23(v.add_i(n, v.splat_i(127))));
    let mut r = v.mul(v.mul(y, pre), scale);
    // Special cases, in reverse order of the scalar code's checks.
    r = v.select(v.mnot(gt(0x3900_0000)), v.add(v.splat(1.0), x), r);
    r = v.select(v.mand(neg, gt(0x42cf_f1b4)), v.splat(0.0), r);
    r = v.select(
        v.mand(v.mnot(neg), gt(0x42b1_7217)),
        v.mul(x, v.splat(f32::from_bits(0x7f00_0000))),
        r,
    );
    v.select(gt(0x7f80_0000), x, r)
}

/// `0.5 * t * erfcf(-t * FRAC_1_SQRT_2)` on every lane: the bits of
/// [`crate::f32::gelu`] (NaN: a NaN). See the module documentation.
#[inline(always)]
pub(crate) fn gelu_lanes<V: Lanes>(v: V, t: V::F) -> V::F {
    let neg_t = v.float_of(v.xor_i(v.bits_of(t), v.splat_i(i32::MIN)));
    let x = v.mul(neg_t, v.splat(core::f32::consts::FRAC_1_SQRT_2));
    let bits = v.bits_of(x);
    let ix = v.and_i(bits, v.splat_i(0x7fff_ffff));
    let ax = v.float_of(ix);
    let neg = v.gt_i(v.splat_i(0), bits);
    let lt = |c: i32| v.gt_i(v.splat_i(c), ix);
    let nonfinite = v.gt_i(ix, v.splat_i(0x7f7f_ffff));
    let m_tiny = lt(0x2380_0000);
    let m_c = lt(0x3f58_0000);
    let m_d = lt(0x3fa0_0000);
    let m_e = lt(0x41e0_0000);
    let m_ra = lt(0x4036_db6d);

    // One division for 1/x (non-finite lanes) and 1/(x*x) (erfc2's s).
    let xx = v.mul(x, x);
    let inv = v.div(v.splat(1.0), v.select(nonfinite, x, xx));
    // The polynomial variable and coefficient set per lane.
    let u = v.select(m_c, xx, v.select(m_d, v.sub(ax, v.splat(1.0)), inv));
    let sel = v.select_i(
        m_c,
        v.splat_i(0),
        v.select_i(
            m_d,
            v.splat_i(1),
            v.select_i(m_ra, v.splat_i(2), v.splat_i(3)),
        ),
    );
    let pick = |c: [f32; 4]| v.pick4(sel, c);
    let mut num = pick(NUM[7]);
    for i in (0..7).rev() {
        num = v.add(pick(NUM[i]), v.mul(u, num));
    }
    let mut den = pick(DEN[7]);
    for i in (0..7).rev() {
        den = v.add(pick(DEN[i]), v.mul(u, den));
    }
    den = v.add(v.splat(1.0), v.mul(u, den));
    let y = v.div(num, den);

    // |x| < 0.84375.
    let xy = v.mul(x, y);
    let c1 = v.sub(v.splat(1.0), v.add(x, xy));
    let c2 = v.sub(v.splat(0.5), v.add(v.sub(x, v.splat(0.5)), xy));
    let r_c = v.select(v.mor(neg, lt(0x3e80_0000)), c1, c2);
    // |x| < 1.25 (erfc1).
    let e_d = v.sub(v.splat(1.0 - ERX), y);
    // |x| < 28 (erfc2).
    let z = v.float_of(v.and_i(ix, v.splat_i(0xffff_e000_u32 as i32)));
    let neg_z = v.float_of(v.xor_i(v.bits_of(z), v.splat_i(i32::MIN)));
    let a1 = v.sub(v.mul(neg_z, z), v.splat(0.5625));
    let a2 = v.add(v.mul(v.sub(z, ax), v.add(z, ax)), y);
    let e_e = v.div(v.mul(expf_lanes(v, a1), expf_lanes(v, a2)), ax);
    let e = v.select(m_d, e_d, e_e);
    let r_de = v.select(neg, v.sub(v.splat(2.0), e), e);
    // |x| >= 28.
    let r_f = v.select(neg, v.splat(2.0 - X1P_120), v.splat(X1P_120 * X1P_120));
    // Non-finite: 2 * sign + 1 / x.
    let r_a = v.add(v.select(neg, v.splat(2.0), v.splat(0.0)), inv);

    let mut r = v.select(m_e, r_de, r_f);
    r = v.select(m_c, r_c, r);
    r = v.select(m_tiny, v.sub(v.splat(1.0), x), r);
    r = v.select(nonfinite, r_a, r);
    v.mul(v.mul(v.splat(0.5), t), r)
}

/// [`crate::f32::softmax`] on lanes: the scalar maximum, `expf(x - max)`
/// per lane (the tail through a padded stack block), the sum in index order
/// (as the scalar loop adds), then one division per lane: each step is the
/// scalar code's operation on the same operands, so the bits match.
#[inline(always)]
pub(crate) fn softmax_lanes<V: Lanes>(v: V, x: &mut [f32]) {
    const MAX: usize = 16;
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n = V::N;
    let body = x.len() - x.len() % n;
    let m = v.splat(max);
    let mut i = 0;
    while i < body {
        v.store(expf_lanes(v, v.sub(v.load(&x[i..]), m)), &mut x[i..]);
        i += n;
    }
    let rest = x.len() - body;
    let mut buf = [0.0f32; MAX];
    if rest > 0 {
        buf[..rest].copy_from_slice(&x[body..]);
        v.store(expf_lanes(v, v.sub(v.load(&buf), m)), &mut buf);
        x[body..].copy_from_slice(&buf[..rest]);
    }
    let mut sum = 0.0f32;
    for &e in x.iter() {
        sum += e;
    }
    let d = v.splat(sum);
    let mut i = 0;
    while i < body {
        v.store(v.div(v.load(&x[i..]), d), &mut x[i..]);
        i += n;
    }
    if rest > 0 {
        buf[..rest].copy_from_slice(&x[body..]);
        v.store(v.div(v.load(&buf), d), &mut buf);
        x[body..].copy_from_slice(&buf[..rest]);
    }
}

/// `x[i] = gelu(x[i]) (+ residual[i])` over whole vectors, then the tail
/// through a zero-padded stack block (`residual.len() == x.len()`).
#[inline(always)]
pub(crate) fn run_lanes<V: Lanes>(v: V, x: &mut [f32], residual: Option<&[f32]>) {
    const MAX: usize = 16;
    let n = V::N;
    debug_assert!(n <= MAX);
    let body = x.len() - x.len() % n;
    let mut i = 0;
    while i < body {
        let mut g = gelu_lanes(v, v.load(&x[i..]));
        if let Some(r) = residual {
            g = v.add(g, v.load(&r[i..]));
        }
        v.store(g, &mut x[i..]);
        i += n;
    }
    let m = x.len() - body;
    if m > 0 {
        let mut buf = [0.0f32; MAX];
        buf[..m].copy_from_slice(&x[body..]);
        let mut g = gelu_lanes(v, v.load(&buf));
        if let Some(r) = residual {
            let mut rb = [0.0f32; MAX];
            rb[..m].copy_from_slice(&r[body..]);
            g = v.add(g, v.load(&rb));
        }
        v.store(g, &mut buf);
        x[body..].copy_from_slice(&buf[..m]);
    }
}
