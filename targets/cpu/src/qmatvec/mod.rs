//! Matrix-vector kernels over packed weights, one per [`WeightFormat`], behind one trait.
//!
//! The split follows tract's linalg: [`QMatVec`] is the small kernel trait;
//! [`generic`] implements every format in portable safe Rust and is the
//! reference; each architecture module (`x86_64`: AVX2 + F16C, `aarch64`: NEON)
//! provides faster kernels for the formats it accelerates. [`Kernels`] is the
//! table the runtime asks: [`Kernels::generic`] fills every slot with the
//! reference, [`Kernels::best`] then *plugs* the architecture kernels whose CPU
//! features are present.
//!
//! # Numerics shared by all kernels of a format
//!
//! The kernels of one format compute *the same function*, bit for bit: the
//! SIMD kernels are tested to produce outputs identical to the generic kernel
//! (and identical integer accumulators, see [`QMatVec::integer_parts`]). This
//! holds because
//!
//! - activation preparation (LUT tables, int8 activations) is one shared
//!   scalar routine (`prepare_lut`, `prepare_i8`; the AVX2 table builder
//!   produces byte-identical tables);
//! - integer accumulation is exact (bounds proven next to each kernel), so its
//!   order does not matter;
//! - every float operation of the epilogue acts on one output row per SIMD
//!   lane, in the same order as the scalar code, with separate multiply and add
//!   (never fused; FMA is deliberately not used).
//!
//! The LUT formats (int4/int2, after T-MAC): per 4 activations a 16-entry table
//! `T[i] = sum_e (bit e of i ? x_e : -x_e)` is built and quantised to int8 with
//! one scale `ts = max_a sum_e |x_e| / 127` per weight group; weights are stored
//! as bit planes whose 4-bit slices index these tables (`pshufb` / `tbl`). With
//! `q = sum_k 2^k b_k`, `sum_e q_e x_e = 1/2 sum_k 2^k T[idx_k] + c * sum_e x_e`
//! with `c = (2^b - 1) / 2`, so per (row, group) the kernels compute the integer
//! `acc = sum_a sum_k 2^k Tq_a[idx_k]` and then, in f32,
//! `y += ((acc * (ts / 2)) [+ (c - z) * xsum]) * s` where `z` is the stored zero
//! point (`…Z` formats) and `xsum` the group's activation sum; symmetric formats
//! have `z = c`. See `docs/KERNELS.md` for the error bounds.

use core::fmt;

use crate::quant::{WeightFormat, ALL};

#[cfg(feature = "quant")]
mod drive;
#[cfg(feature = "quant")]
pub(crate) use drive::*;

#[cfg(feature = "quant")]
pub mod generic;

#[cfg(all(feature = "quant", target_arch = "x86_64"))]
pub mod x86_64;

#[cfg(all(feature = "quant", target_arch = "aarch64"))]
pub mod aarch64;

/// A CPU feature a kernel may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// x86-64 AVX2 (256-bit integer SIMD).
    Avx2,
    /// x86-64 F16C (f16 <-> f32 conversion).
    F16c,
    /// aarch64 Advanced SIMD (NEON).
    Neon,
    /// x86-64 AVX-512 F + BW + VNNI (512-bit integer SIMD with `vpdpbusd`),
    /// detected together: the kernels that need it use all three.
    Avx512Vnni,
    /// x86-64 AVX-512 F (512-bit float SIMD), the f32 GEMM kernel.
    Avx512F,
    /// x86-64 FMA3 (fused multiply-add), the opt-in fast f32 GEMM kernels
    /// ([`Kernels::with_fast_f32`]).
    Fma,
}

impl Feature {
    /// The feature's name as the detection macros spell it (`"avx2"`, `"f16c"`, `"neon"`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Avx2 => "avx2",
            Self::F16c => "f16c",
            Self::Neon => "neon",
            Self::Avx512Vnni => "avx512vnni",
            Self::Avx512F => "avx512f",
            Self::Fma => "fma",
        }
    }
}

/// The CPU features kernels may use; the table plugs a kernel only if it has all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2 (x86-64).
    pub avx2: bool,
    /// F16C (x86-64).
    pub f16c: bool,
    /// NEON (aarch64).
    pub neon: bool,
    /// AVX-512 F, BW and VNNI, all three (x86-64).
    pub avx512vnni: bool,
    /// AVX-512 F (x86-64).
    pub avx512f: bool,
    /// FMA3 (x86-64).
    pub fma: bool,
}

impl CpuFeatures {
    /// No features: only generic kernels.
    pub const NONE: Self = Self {
        avx2: false,
        f16c: false,
        neon: false,
        avx512vnni: false,
        avx512f: false,
        fma: false,
    };

    /// The features this build was compiled for (`cfg(target_feature)`), which
    /// every CPU running it must have. Without the `std` feature this is what
    /// [`Self::host`] returns.
    pub const fn compiled() -> Self {
        Self {
            avx2: cfg!(all(target_arch = "x86_64", target_feature = "avx2")),
            f16c: cfg!(all(target_arch = "x86_64", target_feature = "f16c")),
            neon: cfg!(all(target_arch = "aarch64", target_feature = "neon")),
            avx512vnni: cfg!(all(
                target_arch = "x86_64",
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vnni"
            )),
            avx512f: cfg!(all(target_arch = "x86_64", target_feature = "avx512f")),
            fma: cfg!(all(target_arch = "x86_64", target_feature = "fma")),
        }
    }

    /// Run-time detection (`is_x86_feature_detected!` / `is_aarch64_feature_detected!`).
    #[cfg(feature = "std")]
    pub fn detect() -> Self {
        #[allow(unused_mut)]
        let mut f = Self::compiled();
        #[cfg(target_arch = "x86_64")]
        {
            f.avx2 |= std::arch::is_x86_feature_detected!("avx2");
            f.f16c |= std::arch::is_x86_feature_detected!("f16c");
            f.avx512vnni |= std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            f.avx512f |= std::arch::is_x86_feature_detected!("avx512f");
            f.fma |= std::arch::is_x86_feature_detected!("fma");
        }
        #[cfg(target_arch = "aarch64")]
        {
            f.neon |= std::arch::is_aarch64_feature_detected!("neon");
        }
        f
    }

    /// The features of the CPU running this code: `Self::detect` with the
    /// `std` feature, else [`Self::compiled`]. Cheap (cached by std).
    #[inline]
    pub fn host() -> Self {
        #[cfg(feature = "std")]
        {
            Self::detect()
        }
        #[cfg(not(feature = "std"))]
        {
            Self::compiled()
        }
    }

    /// Whether `f` is present.
    pub const fn has(self, f: Feature) -> bool {
        match f {
            Feature::Avx2 => self.avx2,
            Feature::F16c => self.f16c,
            Feature::Neon => self.neon,
            Feature::Avx512Vnni => self.avx512vnni,
            Feature::Avx512F => self.avx512f,
            Feature::Fma => self.fma,
        }
    }

    /// The first feature of `required` that is absent, if any.
    pub fn first_missing(self, required: &[Feature]) -> Option<Feature> {
        required.iter().copied().find(|&f| !self.has(f))
    }

    /// Features present in both.
    pub const fn intersect(self, other: Self) -> Self {
        Self {
            avx2: self.avx2 && other.avx2,
            f16c: self.f16c && other.f16c,
            neon: self.neon && other.neon,
            avx512vnni: self.avx512vnni && other.avx512vnni,
            avx512f: self.avx512f && other.avx512f,
            fma: self.fma && other.fma,
        }
    }
}

/// A matrix-vector kernel for one [`WeightFormat`]: `y = W x (+ bias)` with `W`
/// `[rows, cols]` packed by [`crate::quant::quantize`].
///
/// Kernels never allocate. They check every length (and panic on a mismatch:
/// validate shapes with [`WeightFormat::checked_packed_bytes`] first) because
/// the SIMD kernels read through raw pointers. `packed`, `x`, `scratch` may have
/// any alignment. Scratch contents on entry do not matter.
pub trait QMatVec: Sync + fmt::Debug {
    /// Name encoding architecture, ISA and format, e.g. `x86_64_avx2_i4g32`.
    fn name(&self) -> &'static str;

    /// The format this kernel reads.
    fn format(&self) -> WeightFormat;

    /// CPU features the kernel needs (empty for generic kernels).
    fn requires(&self) -> &'static [Feature];

    /// Whether this CPU can run the kernel (see [`CpuFeatures::host`]).
    fn is_supported_here(&self) -> bool {
        CpuFeatures::host().first_missing(self.requires()).is_none()
    }

    /// `y[r] = sum_c W[r, c] x[c] (+ bias[r])`.
    ///
    /// `packed.len() == format.packed_bytes(rows, cols)`, `x.len() == cols`,
    /// `y.len() == rows`, `bias.len() == rows`,
    /// `scratch.len() >= format.scratch_bytes(cols)`.
    ///
    /// # Panics
    /// On any length mismatch, or if the CPU lacks a required feature.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        rows: usize,
        cols: usize,
        packed: &[u8],
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        scratch: &mut [u8],
    );

    /// Small-batch form: `n` activation rows `xs: [n, cols]` to `ys: [n, rows]`,
    /// bit-identical to `n` calls of [`Self::run`].
    ///
    /// The default runs [`Self::run`] once per row (the weights of an expert
    /// stay in cache between rows when they fit); the q4_0 / q8_0 kernels
    /// override it to reuse each weight chunk for several rows.
    ///
    /// # Panics
    /// As [`Self::run`], or if `xs` / `ys` are not `n` rows long.
    #[allow(clippy::too_many_arguments)]
    fn run_batch(
        &self,
        rows: usize,
        cols: usize,
        packed: &[u8],
        n: usize,
        xs: &[f32],
        bias: Option<&[f32]>,
        ys: &mut [f32],
        scratch: &mut [u8],
    ) {
        run_rows(self, rows, cols, packed, n, xs, bias, ys, scratch);
    }

    /// Test hook: the exact integer accumulators before the float epilogue,
    /// `out: [rows, format.int_parts_per_row(cols)]` (one per (row, group) for
    /// the LUT formats, per (row, 32-column block) for i8row). Returns `false`
    /// and leaves `out` alone for formats without an integer part (f32, f16).
    ///
    /// # Panics
    /// As [`Self::run`], or if `out` has the wrong length.
    #[allow(clippy::too_many_arguments)]
    fn integer_parts(
        &self,
        rows: usize,
        cols: usize,
        packed: &[u8],
        x: &[f32],
        scratch: &mut [u8],
        out: &mut [i32],
    ) -> bool;
}

/// [`QMatVec::run_batch`] as one [`QMatVec::run`] per activation row (the
/// trait's default, also what overriding kernels use for their other formats).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_rows<K: QMatVec + ?Sized>(
    k: &K,
    rows: usize,
    cols: usize,
    packed: &[u8],
    n: usize,
    xs: &[f32],
    bias: Option<&[f32]>,
    ys: &mut [f32],
    scratch: &mut [u8],
) {
    assert!(
        xs.len() == n * cols && ys.len() == n * rows,
        "run_batch: xs must be [n, cols] and ys [n, rows]"
    );
    for b in 0..n {
        let x = &xs[b * cols..(b + 1) * cols];
        let y = &mut ys[b * rows..(b + 1) * rows];
        k.run(rows, cols, packed, x, bias, y, scratch);
    }
}

/// A format the table cannot serve on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The format asked for.
    pub format: WeightFormat,
    /// The CPU feature its kernel needs and this CPU (or the caller's feature set) lacks.
    pub missing_feature: &'static str,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.missing_feature == NOT_BUILT {
            write!(f, "weight format {} cannot run: {NOT_BUILT}", self.format)
        } else {
            write!(
                f,
                "weight format {} is not supported on this CPU: missing CPU feature `{}`",
                self.format, self.missing_feature
            )
        }
    }
}

/// [`Unsupported::missing_feature`] of every quantized format in a build
/// without the `quant` feature (f32-only firmware leaves the kernels out).
pub const NOT_BUILT: &str =
    "this build leaves out the quantized kernels (cargo feature `quant` of taskpath-cpu / taskpath-runtime)";

#[cfg(feature = "std")]
impl std::error::Error for Unsupported {}

#[cfg(feature = "quant")]
#[derive(Clone, Copy, Debug)]
struct Slot {
    kernel: &'static dyn QMatVec,
    /// The feature that kept an architecture kernel of this format out, if any.
    missing: Option<Feature>,
    /// Set by [`Kernels::simd_only`] when the slot would fall back to generic.
    refused: bool,
}

/// The kernel table: one kernel per format. Without the `quant` feature it
/// is empty and refuses every format with [`NOT_BUILT`] (the runtime never
/// asks it for f32, which has its own kernels in [`crate::f32`]). With the
/// `gemm` feature it also holds the dense f32 GEMM kernel
/// ([`Kernels::matmul_f32`]).
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    #[cfg(feature = "quant")]
    slots: [Slot; ALL.len()],
    #[cfg(feature = "gemm")]
    gemm: crate::gemm::F32Gemm,
    #[cfg(feature = "gelu")]
    gelu: crate::gelu::Gelu,
}

/// Name of the environment variable that makes [`Kernels::best`] return the
/// generic kernels (`std` feature only): any value but empty, `0`, `false`, `no`, `off`.
pub const FORCE_GENERIC_ENV: &str = "TASKPATH_FORCE_GENERIC";

/// Whether a value of [`FORCE_GENERIC_ENV`] asks for generic kernels.
pub fn force_generic_value(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(v) => {
            let v = v.trim();
            !(v.is_empty()
                || v == "0"
                || v.eq_ignore_ascii_case("false")
                || v.eq_ignore_ascii_case("no")
                || v.eq_ignore_ascii_case("off"))
        }
    }
}

/// Whether the environment asks for generic kernels (always `false` without `std`).
pub fn force_generic_requested() -> bool {
    #[cfg(feature = "std")]
    {
        force_generic_value(std::env::var(FORCE_GENERIC_ENV).ok().as_deref())
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// The kernels compiled for this architecture (empty elsewhere), generic ones excluded.
/// Empty without the `quant` feature.
pub fn arch_kernels() -> &'static [&'static dyn QMatVec] {
    #[cfg(all(feature = "quant", target_arch = "x86_64"))]
    {
        &x86_64::KERNELS
    }
    #[cfg(all(feature = "quant", target_arch = "aarch64"))]
    {
        &aarch64::KERNELS
    }
    #[cfg(not(all(
        feature = "quant",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        &[]
    }
}

impl Kernels {
    /// The empty table: this build has no quantized kernels.
    #[cfg(not(feature = "quant"))]
    pub fn generic() -> Self {
        Self {
            #[cfg(feature = "gemm")]
            gemm: crate::gemm::GENERIC,
            #[cfg(feature = "gelu")]
            gelu: crate::gelu::GENERIC,
        }
    }

    /// Every slot holds the generic (reference) kernel.
    #[cfg(feature = "quant")]
    pub fn generic() -> Self {
        let mut slots = [Slot {
            kernel: &generic::KERNELS[0],
            missing: None,
            refused: false,
        }; ALL.len()];
        for (s, k) in slots.iter_mut().zip(&generic::KERNELS) {
            s.kernel = k;
        }
        Self {
            slots,
            #[cfg(feature = "gemm")]
            gemm: crate::gemm::GENERIC,
            #[cfg(feature = "gelu")]
            gelu: crate::gelu::GENERIC,
        }
    }

    /// Generic, then every architecture kernel whose features are in both
    /// `features` and [`CpuFeatures::host`] (so a caller can only take
    /// features away, e.g. to test fallbacks, never claim absent ones).
    pub fn for_features(features: CpuFeatures) -> Self {
        #[cfg(not(feature = "quant"))]
        #[allow(unused_mut)]
        let mut k = Self::generic();
        #[cfg(feature = "quant")]
        #[allow(unused_mut)]
        let mut k = Self::for_features_quant(features);
        #[cfg(feature = "gemm")]
        {
            k.gemm = crate::gemm::for_features(features);
        }
        #[cfg(feature = "gelu")]
        {
            k.gelu = crate::gelu::for_features(features);
        }
        let _ = features;
        k
    }

    /// The dense f32 GEMM kernel of this table (generic in
    /// [`Self::generic`], the fastest the features allow otherwise).
    #[cfg(feature = "gemm")]
    pub fn f32_gemm(&self) -> crate::gemm::F32Gemm {
        self.gemm
    }

    /// This table with the opt-in *fast* f32 GEMM: the FMA variant
    /// ([`crate::gemm::fast_variant`]) of [`Self::f32_gemm`] where this CPU
    /// has one (AVX-512F + FMA, AVX2 + FMA), the kernel unchanged otherwise
    /// (generic tables, `TASKPATH_FORCE_GENERIC`, no `gemm` feature).
    /// [`Self::matmul_f32`] and [`Self::conv3_f32`] then give up the bits of
    /// [`crate::f32::matmul_rows`] for a bounded error (docs/KERNELS.md §7).
    #[must_use]
    #[allow(unused_mut)]
    pub fn with_fast_f32(mut self) -> Self {
        #[cfg(feature = "gemm")]
        {
            self.gemm = crate::gemm::fast_variant(self.gemm);
        }
        self
    }

    /// `y[r] = W x[r] (+ bias)` for `rows` rows with the contract and the
    /// bits of [`crate::f32::matmul_rows`]: through [`Self::f32_gemm`] with
    /// the `gemm` feature, [`crate::f32::matmul_rows`] itself without it.
    pub fn matmul_f32(
        &self,
        w: &[f32],
        x: &[f32],
        bias: Option<&[f32]>,
        rows: usize,
        y: &mut [f32],
    ) {
        #[cfg(feature = "gemm")]
        self.gemm.matmul_rows(w, x, bias, rows, y);
        #[cfg(not(feature = "gemm"))]
        crate::f32::matmul_rows(w, x, bias, rows, y);
    }

    /// `x = gelu(x) (+ residual)`: the bits of [`crate::f32::gelu`] then
    /// [`crate::f32::add`]`(residual, x)` (NaN: a NaN), through the
    /// vectorised kernel ([`crate::gelu`]) with the `gelu` feature, the
    /// scalar code without it.
    ///
    /// `residual` must have the length of `x` (checked with the `gelu`
    /// feature, as [`crate::f32::add`] checks it in debug builds without).
    ///
    /// # Panics
    /// With the `gelu` feature, if `residual` and `x` differ in length.
    pub fn gelu_f32(&self, x: &mut [f32], residual: Option<&[f32]>) {
        #[cfg(feature = "gelu")]
        match residual {
            Some(r) => self.gelu.gelu_add(x, r),
            None => self.gelu.gelu(x),
        }
        #[cfg(not(feature = "gelu"))]
        {
            crate::f32::gelu(x);
            if let Some(r) = residual {
                crate::f32::add(r, x);
            }
        }
    }

    /// [`crate::f32::softmax`] in place, same bits (NaN: a NaN): the
    /// exponentials on the exact-GELU kernel's libm-exact `expf` lanes with
    /// the `gelu` feature, the scalar code without it.
    pub fn softmax_f32(&self, x: &mut [f32]) {
        #[cfg(feature = "gelu")]
        self.gelu.softmax(x);
        #[cfg(not(feature = "gelu"))]
        crate::f32::softmax(x);
    }

    /// The exact-GELU kernel of this table (generic in [`Self::generic`],
    /// the fastest the features allow otherwise).
    #[cfg(feature = "gelu")]
    pub fn gelu_kernel(&self) -> crate::gelu::Gelu {
        self.gelu
    }

    /// [`crate::f32::conv3_at`] (same contract, same bits): through
    /// [`Self::f32_gemm`] with the `gemm` feature (one row, the taps' weight
    /// columns at row stride `3 d`), the scalar loop without it.
    pub fn conv3_f32(&self, w: &[f32], b: &[f32], u: &[f32], d: usize, t: usize, y: &mut [f32]) {
        #[cfg(feature = "gemm")]
        {
            let n = y.len();
            let l = u.len().checked_div(d).unwrap_or(0);
            if d == 0 || t >= l {
                return crate::f32::conv3_at(w, b, u, d, t, y);
            }
            // Taps k0..k1 are present; tap k reads token t + k - 1.
            let k0 = if t == 0 { 1 } else { 0 };
            let k1 = if t + 1 >= l { 2 } else { 3 };
            let window = &u[(t + k0 - 1) * d..(t + k1 - 1) * d];
            let k = (k1 - k0) * d;
            self.gemm
                .gemm(1, n, k, &w[k0 * d..], 3 * d, window, k, Some(b), y, n);
        }
        #[cfg(not(feature = "gemm"))]
        crate::f32::conv3_at(w, b, u, d, t, y);
    }

    #[cfg(feature = "quant")]
    fn for_features_quant(features: CpuFeatures) -> Self {
        let mut k = Self::generic();
        let f = features.intersect(CpuFeatures::host());
        for &kernel in arch_kernels() {
            let slot = &mut k.slots[kernel.format().id() as usize - 1];
            match f.first_missing(kernel.requires()) {
                None => {
                    slot.kernel = kernel;
                    slot.missing = None;
                }
                Some(m) => {
                    if slot.kernel.requires().is_empty() {
                        slot.missing.get_or_insert(m);
                    }
                }
            }
        }
        k
    }

    /// The fastest kernels for this CPU, or the generic ones when
    /// [`force_generic_requested`] (`TASKPATH_FORCE_GENERIC=1`, `std` only).
    pub fn best() -> Self {
        Self::select(force_generic_requested())
    }

    /// [`Self::generic`] if `force_generic`, else [`Self::for_features`]`(host)`.
    pub fn select(force_generic: bool) -> Self {
        if force_generic {
            Self::generic()
        } else {
            Self::for_features(CpuFeatures::host())
        }
    }

    /// Refuse (with [`Unsupported`]) every format that has an architecture
    /// kernel which could not be plugged, instead of silently running the
    /// slower generic one.
    #[allow(unused_mut)]
    pub fn simd_only(mut self) -> Self {
        #[cfg(feature = "quant")]
        for s in &mut self.slots {
            s.refused = s.missing.is_some();
        }
        self
    }

    /// The kernel for `format`, or why there is none on this CPU.
    pub fn kernel(&self, format: WeightFormat) -> Result<&'static dyn QMatVec, Unsupported> {
        #[cfg(not(feature = "quant"))]
        {
            Err(Unsupported {
                format,
                missing_feature: NOT_BUILT,
            })
        }
        #[cfg(feature = "quant")]
        self.kernel_quant(format)
    }

    #[cfg(feature = "quant")]
    fn kernel_quant(&self, format: WeightFormat) -> Result<&'static dyn QMatVec, Unsupported> {
        let s = &self.slots[format.id() as usize - 1];
        match (s.refused, s.missing) {
            (true, Some(m)) => Err(Unsupported {
                format,
                missing_feature: m.name(),
            }),
            _ => Ok(s.kernel),
        }
    }

    /// Put `kernel` in its format's slot if this CPU supports it; returns whether it did.
    pub fn plug(&mut self, kernel: &'static dyn QMatVec) -> bool {
        #[cfg(not(feature = "quant"))]
        {
            let _ = kernel;
            false
        }
        #[cfg(feature = "quant")]
        self.plug_quant(kernel)
    }

    #[cfg(feature = "quant")]
    fn plug_quant(&mut self, kernel: &'static dyn QMatVec) -> bool {
        if !kernel.is_supported_here() {
            return false;
        }
        let s = &mut self.slots[kernel.format().id() as usize - 1];
        *s = Slot {
            kernel,
            missing: None,
            refused: false,
        };
        true
    }

    /// Every format with its kernel (or why not), in id order.
    pub fn iter(
        &self,
    ) -> impl Iterator<Item = (WeightFormat, Result<&'static dyn QMatVec, Unsupported>)> + '_ {
        ALL.iter().map(move |&f| (f, self.kernel(f)))
    }
}

impl fmt::Display for Kernels {
    /// One `format: kernel` line per format (what the runtime logs at
    /// start-up). The f32 GEMM kernel is not listed: it computes the same
    /// bits whichever variant runs ([`crate::gemm`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (format, k) in self.iter() {
            match k {
                Ok(k) => writeln!(f, "{}: {}", format.name(), k.name())?,
                Err(e) => writeln!(f, "{}: unsupported ({})", format.name(), e.missing_feature)?,
            }
        }
        Ok(())
    }
}

#[cfg(all(test, not(feature = "quant")))]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    /// An f32-only build refuses every quantized format with the same
    /// reason, whichever table the caller asks for.
    #[test]
    fn without_quant_every_format_is_refused_by_name() {
        for k in [
            Kernels::best(),
            Kernels::generic(),
            Kernels::for_features(CpuFeatures::host()).simd_only(),
        ] {
            for &f in &ALL {
                let e = k.kernel(f).unwrap_err();
                assert_eq!(e.format, f);
                assert_eq!(e.missing_feature, NOT_BUILT);
                let msg = e.to_string();
                assert!(msg.contains(f.name()) && msg.contains("`quant`"), "{msg}");
            }
        }
        assert!(arch_kernels().is_empty());
    }
}
