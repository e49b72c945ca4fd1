//! Conformance of a backend's [`Primitives`] to the CPU reference (cargo
//! feature `conformance`, std only).
//!
//! Every op is defined once, over the primitives ([`crate::exec`]); a
//! backend only supplies them. This module checks a backend against that
//! definition. [`cases`] builds seeded synthetic [`Case`]s — for each
//! primitive, and for each composite plan [`Step`] run through
//! [`run_step`] (the expert mixture with a synthetic [`ExpertSource`]
//! included) — and [`Case::check`] runs one on the reference, [`CpuPrims`]
//! with [`Kernels::generic`], compares the subject's slots region and
//! returned values with the reference's under a [`Tolerance`], and says
//! where they differ.
//!
//! [`primitive_conformance!`](crate::primitive_conformance) instantiates
//! the whole suite for one implementation, one `#[test]` per [`Kind`], in
//! the style of tract's linalg test suites (one macro, instantiated per
//! implementation). Instantiations: the CPU kernel tables
//! (`runtime/core/tests/primitives.rs`: `Kernels::best()`, i.e. AVX2 on
//! x86-64 and NEON on aarch64, and the generic table against itself) and
//! the CUDA backend's host emulation (`targets/cuda/tests/conformance.rs`).
//!
//! What is compared: every element of the slots region, ranges the case
//! declares scratch excepted (kernel scratch, low-rank temporaries,
//! attention scores, a `Moe` step's scratch slot: their contents are each
//! backend's own business), so writes outside an op's outputs are caught
//! too (guard elements separate all buffers); the values
//! [`Primitives::read_route`] returns; the routes, blob reads and
//! statistics the executor reports. Cases that must fail (a route naming an
//! expert outside the step's mask, a route count above `top_k`) must fail on
//! the subject as well. NaN only ever matches NaN at the same place.
//!
//! Cases are small (the whole suite runs in about a second in a debug
//! build) and deterministic: a fixed SplitMix64 seed per case.

use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use taskpath_cpu::qmatvec::Kernels;
use taskpath_format::weight::{quantize, ALL};
use taskpath_format::{ExpertMask, GateFn, WeightFormat};

use crate::cpu::CpuPrims;
use crate::error::Error;
use crate::exec::{run_step, ExpertSource, Meter, Operand, Primitives, MAX_TOP_K};
use crate::model::{ExpertTensors, TensorView};
use crate::plan::{Buf, ExpertScratch, Step, Tix};
use crate::session::RunStats;
use crate::trace::Tracer;

/// Instantiates the conformance suite ([`crate::conformance`]) for one
/// implementation of [`Primitives`](crate::exec::Primitives): a module
/// `$name` with one `#[test]` per [`Kind`](crate::conformance::Kind)
/// (each runs every case of its kind on the reference and on the subject)
/// and a test that no kind is missing.
///
/// The constructor is written like a closure over the case's slots region
/// (`&mut [f32]`) and task inputs (`&[&[f32]]`), and must build the subject
/// from those alone; its value must implement `Primitives<W<'w> =
/// TensorView<'w>>` (weights in host memory) with a `Debug` error. It is
/// evaluated once per case, as the scrutinee of a `match`, so it may borrow
/// temporaries (`&Kernels::best()`). Names it uses resolve in the module
/// that invokes the macro (the generated module imports `super::*`).
///
/// An optional `tolerance = f` (`f: Fn(Kind) -> Tolerance`) relaxes the
/// comparison per kind for an implementation that is not bit-exact there;
/// the default is [`Tolerance::Exact`](crate::conformance::Tolerance::Exact)
/// everywhere. An optional `formats = f` (`f: Fn(WeightFormat) -> bool`)
/// names the weight formats the subject implements (default: all): a case
/// with a tensor in another format must be *refused* by the subject (an
/// error, not a result), and is not compared.
///
/// ```ignore
/// use taskpath_runtime::cpu::CpuPrims;
/// use taskpath_runtime::Kernels;
///
/// taskpath_runtime::primitive_conformance!(best, |slots, inputs| {
///     CpuPrims::new(slots, inputs, &Kernels::best())
/// });
/// ```
#[macro_export]
macro_rules! primitive_conformance {
    ($name:ident, |$slots:ident, $inputs:ident| $ctor:expr $(, tolerance = $tol:expr)?
     $(, formats = $fmt:expr)? $(,)?) => {
        $crate::__primitive_conformance_tests! {
            $name, |$slots, $inputs| $ctor, ($($tol)?), ($($fmt)?),
            linear_f32 => LinearF32,
            linear_low_rank_f32 => LinearLowRankF32,
            linear_packed => LinearPacked,
            linear_packed_low_rank => LinearPackedLowRank,
            add_weight => AddWeight,
            layer_norm => LayerNorm,
            attention => Attention,
            attn_pool => AttnPool,
            gate_logits => GateLogits,
            axpy => Axpy,
            fill => Fill,
            copy => Copy,
            route => Route,
            read_route => ReadRoute,
            conv3 => Conv3,
            conv_window => ConvWindow,
            gelu_add => GeluAdd,
            step_encode => StepEncode,
            step_layer_norm => StepLayerNorm,
            step_linear => StepLinear,
            step_attention => StepAttention,
            step_attn_pool => StepAttnPool,
            step_gate => StepGate,
            step_route => StepRoute,
            step_moe_f32 => StepMoeF32,
            step_moe_low_rank => StepMoeLowRank,
            step_moe_packed => StepMoePacked,
            step_moe_mixed => StepMoeMixed,
            step_moe_rejects => StepMoeRejects,
            step_copy => StepCopy,
            step_program => StepProgram,
        }
    };
}

/// The body of [`primitive_conformance!`]; not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __primitive_conformance_tests {
    ($name:ident, |$slots:ident, $inputs:ident| $ctor:expr, ($($tol:expr)?), ($($fmt:expr)?),
     $($test:ident => $kind:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(unreachable_code)]
            fn __tolerance(
                kind: $crate::conformance::Kind,
            ) -> $crate::conformance::Tolerance {
                $( return ($tol)(kind); )?
                let _ = kind;
                $crate::conformance::Tolerance::Exact
            }

            #[allow(unreachable_code)]
            fn __implements(format: $crate::WeightFormat) -> bool {
                $( return ($fmt)(format); )?
                let _ = format;
                true
            }

            #[allow(unused_variables, clippy::redundant_locals)]
            fn __check(kind: $crate::conformance::Kind) {
                let tolerance = __tolerance(kind);
                let mut failed = ::std::vec::Vec::new();
                let cases = $crate::conformance::cases(kind);
                for case in &cases {
                    let implemented = case.formats().all(__implements);
                    let mut region = case.slots();
                    let task_inputs = case.inputs();
                    let outcome = {
                        let $slots: &mut [f32] = &mut region[..];
                        let $inputs: &[&[f32]] = &task_inputs[..];
                        match $ctor {
                            mut subject => case.run(&mut subject),
                        }
                    };
                    if !implemented {
                        if !outcome.is_err() {
                            failed.push(::std::format!(
                                "{:?} {}: ran a weight format the subject does not implement",
                                kind,
                                case.name()
                            ));
                        }
                        continue;
                    }
                    if let Err(why) = case.check(&region, &outcome, tolerance) {
                        failed.push(why);
                    }
                }
                assert!(
                    failed.is_empty(),
                    "{:?}: {} of {} cases differ from the reference ({:?}):\n{}",
                    kind,
                    failed.len(),
                    cases.len(),
                    tolerance,
                    failed.join("\n"),
                );
            }

            $(
                #[test]
                fn $test() {
                    __check($crate::conformance::Kind::$kind);
                }
            )*

            #[test]
            fn every_kind_has_a_test() {
                assert_eq!(
                    &[$($crate::conformance::Kind::$kind),*][..],
                    &$crate::conformance::Kind::ALL[..],
                );
            }
        }
    };
}

/// What a group of cases exercises: one generated test each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// `linear`, dense f32: odd shapes, 1 and several rows, with and without
    /// bias, from a slot and from a task input.
    LinearF32,
    /// `linear`, low-rank f32 `U V` (through `tmp`).
    LinearLowRankF32,
    /// `linear`, every packed format of [`ALL`] but f32 (built with
    /// [`quantize`]): odd shapes, 1 and several rows, zero, NaN and infinite
    /// activations.
    LinearPacked,
    /// `linear`, low-rank pairs in every packed format.
    LinearPackedLowRank,
    /// `add_weight`.
    AddWeight,
    /// `layer_norm`, in place and not, with a pre-scale, constant rows.
    LayerNorm,
    /// `attention`: 1 to 3 heads, 1 to 6 tokens, flat and peaked scores.
    Attention,
    /// `attn_pool`.
    AttnPool,
    /// `gate_logits`, both [`GateFn`]s, a gate vector equal to the input.
    GateLogits,
    /// `axpy`, zero, negative and NaN coefficients.
    Axpy,
    /// `fill` with `+0.0`, the only value the executor fills with (the CUDA
    /// backend refuses others).
    Fill,
    /// `copy`.
    Copy,
    /// `route` then `read_route`: masks over up to 256 experts (word
    /// boundaries, bits past the logits, empty), ties, NaN and infinite
    /// logits, `top_k` up to [`MAX_TOP_K`].
    Route,
    /// `read_route` of hand-written route slots, including ones it must
    /// refuse (count above `k`, negative, NaN) and expert indices that name
    /// no expert.
    ReadRoute,
    /// `conv3` at the first, a middle and the last token.
    Conv3,
    /// `conv_window` at the first, a middle and the last token.
    ConvWindow,
    /// `gelu_add` with and without residual, tails, zeros, NaN, infinities.
    GeluAdd,
    /// [`Step::Encode`], dense and low-rank.
    StepEncode,
    /// [`Step::LayerNorm`].
    StepLayerNorm,
    /// [`Step::Linear`], dense and low-rank, with and without bias.
    StepLinear,
    /// [`Step::Attention`].
    StepAttention,
    /// [`Step::AttnPool`].
    StepAttnPool,
    /// [`Step::Gate`], accumulating and not, both gate functions.
    StepGate,
    /// [`Step::Route`] (with the route the executor reports).
    StepRoute,
    /// [`Step::Route`] then [`Step::Moe`] over dense f32 experts (the
    /// `conv3` path), 1 and 2 components, first/middle/last token.
    StepMoeF32,
    /// The same over low-rank f32 experts (conv window + linear).
    StepMoeLowRank,
    /// The same over experts in each packed format (dense and low-rank).
    StepMoePacked,
    /// The same over experts of mixed forms in one group.
    StepMoeMixed,
    /// [`Step::Moe`] refusing a route outside its mask or above `top_k`.
    StepMoeRejects,
    /// [`Step::Copy`].
    StepCopy,
    /// A small whole program: Encode, LayerNorm, Linear q/k/v, Attention,
    /// AttnPool, two Gates, Route, Moe, Copy over shared slots.
    StepProgram,
}

impl Kind {
    /// Every kind, in the order the macro lists its tests.
    pub const ALL: [Kind; 31] = [
        Kind::LinearF32,
        Kind::LinearLowRankF32,
        Kind::LinearPacked,
        Kind::LinearPackedLowRank,
        Kind::AddWeight,
        Kind::LayerNorm,
        Kind::Attention,
        Kind::AttnPool,
        Kind::GateLogits,
        Kind::Axpy,
        Kind::Fill,
        Kind::Copy,
        Kind::Route,
        Kind::ReadRoute,
        Kind::Conv3,
        Kind::ConvWindow,
        Kind::GeluAdd,
        Kind::StepEncode,
        Kind::StepLayerNorm,
        Kind::StepLinear,
        Kind::StepAttention,
        Kind::StepAttnPool,
        Kind::StepGate,
        Kind::StepRoute,
        Kind::StepMoeF32,
        Kind::StepMoeLowRank,
        Kind::StepMoePacked,
        Kind::StepMoeMixed,
        Kind::StepMoeRejects,
        Kind::StepCopy,
        Kind::StepProgram,
    ];
}

/// How closely a subject must reproduce the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// The same bits; NaN matches NaN (any payload) and nothing else.
    Exact,
    /// `|got - want| <= abs + rel * |want|`; infinities must be equal, NaN
    /// matches NaN only. `Within { abs: 0.0, rel: 0.0 }` is "equal as
    /// numbers": only the sign of a zero may differ.
    Within {
        /// Absolute bound.
        abs: f32,
        /// Bound relative to the reference value.
        rel: f32,
    },
}

impl Tolerance {
    /// Whether `got` passes for the reference's `want`.
    pub fn accepts(self, got: f32, want: f32) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        match self {
            Tolerance::Exact => got.to_bits() == want.to_bits(),
            Tolerance::Within { abs, rel } => {
                if want.is_infinite() || got.is_infinite() {
                    got == want
                } else {
                    (got - want).abs() <= abs + rel * want.abs()
                }
            }
        }
    }
}

/// SplitMix64: small, deterministic, no dependency.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

/// An owned weight tensor in any format, viewed as the runtime views
/// package tensors.
#[derive(Clone, Debug)]
struct Weight {
    rows: usize,
    cols: usize,
    rank: usize,
    format: WeightFormat,
    a: Vec<f32>,
    b: Vec<f32>,
    raw_a: Vec<u8>,
    raw_b: Vec<u8>,
    blob: u32,
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn pack(format: WeightFormat, rows: usize, cols: usize, v: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; format.packed_bytes(rows, cols)];
    quantize(format, rows, cols, v, &mut out).expect("conformance weights quantise");
    out
}

impl Weight {
    /// `[rows, cols]` in `format` from row-major values.
    fn dense(format: WeightFormat, rows: usize, cols: usize, v: &[f32]) -> Self {
        assert_eq!(v.len(), rows * cols);
        let (a, raw_a) = if format == WeightFormat::F32 {
            (v.to_vec(), le_bytes(v))
        } else {
            (Vec::new(), pack(format, rows, cols, v))
        };
        Self {
            rows,
            cols,
            rank: 0,
            format,
            a,
            b: Vec::new(),
            raw_a,
            raw_b: Vec::new(),
            blob: 0,
        }
    }
    /// `U [rows, rank] V [rank, cols]` in `format`.
    fn low_rank(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        rank: usize,
        u: &[f32],
        v: &[f32],
    ) -> Self {
        let (a, b, raw_a, raw_b) = if format == WeightFormat::F32 {
            (u.to_vec(), v.to_vec(), le_bytes(u), le_bytes(v))
        } else {
            (
                Vec::new(),
                Vec::new(),
                pack(format, rows, rank, u),
                pack(format, rank, cols, v),
            )
        };
        Self {
            rows,
            cols,
            rank,
            format,
            a,
            b,
            raw_a,
            raw_b,
            blob: 0,
        }
    }
    /// A vector `[1, n]` (biases, gains, queries).
    fn vector(v: &[f32]) -> Self {
        Self::dense(WeightFormat::F32, 1, v.len(), v)
    }
    fn view(&self) -> TensorView<'_> {
        TensorView {
            rows: self.rows,
            cols: self.cols,
            format: self.format.id(),
            a: &self.a,
            b: &self.b,
            raw_a: &self.raw_a,
            raw_b: &self.raw_b,
            rank: self.rank,
            blob: self.blob,
        }
    }
}

/// One primitive call or plan step of a case (tensors are indices into the
/// case's tensor table).
#[derive(Clone, Debug)]
enum Call {
    Linear {
        w: usize,
        b: Option<usize>,
        x: Operand,
        rows: usize,
        y: Buf,
        tmp: Buf,
        kernel: Buf,
    },
    AddWeight {
        w: usize,
        y: Buf,
    },
    LayerNorm {
        x: Buf,
        y: Buf,
        g: usize,
        b: usize,
        eps: f32,
        scale: f32,
    },
    Attention {
        q: Buf,
        k: Buf,
        v: Buf,
        out: Buf,
        tokens: usize,
        heads: usize,
        scratch: Buf,
    },
    AttnPool {
        u: Buf,
        query: usize,
        out: Buf,
        scratch: Buf,
    },
    GateLogits {
        p: Buf,
        gate: usize,
        function: GateFn,
        out: Buf,
    },
    Axpy {
        a: f32,
        x: Buf,
        y: Buf,
    },
    Fill {
        y: Buf,
        v: f32,
    },
    Copy {
        src: Buf,
        dst: Buf,
    },
    Route {
        logits: Buf,
        mask: ExpertMask,
        k: usize,
        route: Buf,
    },
    ReadRoute {
        route: Buf,
        k: usize,
    },
    Conv3 {
        w: usize,
        b: usize,
        u: Buf,
        width: usize,
        token: usize,
        out: Buf,
    },
    ConvWindow {
        u: Buf,
        width: usize,
        token: usize,
        window: Buf,
    },
    GeluAdd {
        x: Buf,
        residual: Option<Buf>,
    },
    Step(Step),
}

/// One expert component of a case's synthetic expert source.
#[derive(Clone, Copy, Debug)]
struct Component {
    expert: usize,
    component: usize,
    tensors: ExpertTensors<usize>,
}

/// The synthetic [`ExpertSource`]: the case's expert components, looked up
/// by (expert, component).
struct Synth<'v, 'w> {
    views: &'v [TensorView<'w>],
    components: &'v [Component],
}

impl<P> ExpertSource<P> for Synth<'_, '_>
where
    P: for<'w> Primitives<W<'w> = TensorView<'w>> + ?Sized,
{
    fn component<T: Tracer + ?Sized>(
        &mut self,
        _step: &Step,
        j: usize,
        c: usize,
        tracer: &mut T,
    ) -> core::result::Result<ExpertTensors<TensorView<'_>>, P::Error> {
        let e = self
            .components
            .iter()
            .find(|e| e.expert == j && e.component == c)
            .ok_or(Error::InvalidProgram {
                op: 0,
                why: "conformance: no such expert component",
            })?;
        let views = self.views;
        tracer.expert_fetch(views[e.tensors.conv_w].blob);
        Ok(ExpertTensors::try_from_fn(|k| {
            Ok::<_, Error>(views[*e.tensors.all()[k as usize]])
        })?)
    }
}

/// What the executor reported besides the slots region.
#[derive(Clone, Debug, Default)]
struct Recorder {
    routes: Vec<(u32, Vec<u32>, Vec<f32>)>,
    reads: Vec<(u32, usize)>,
    fetches: Vec<u32>,
}

impl Tracer for Recorder {
    fn blob_read(&mut self, blob: u32, bytes: usize) {
        self.reads.push((blob, bytes));
    }
    fn expert_fetch(&mut self, blob: u32) {
        self.fetches.push(blob);
    }
    fn route(&mut self, router: u32, experts: &[u32], gates: &[f32]) {
        self.routes.push((router, experts.to_vec(), gates.to_vec()));
    }
}

/// Everything a run returned besides the slots region.
#[derive(Clone, Debug, Default)]
struct Log {
    /// `read_route` results: (count, experts, gates).
    returns: Vec<(usize, Vec<u32>, Vec<f32>)>,
    trace: Recorder,
    stats: RunStats,
}

/// The result of running a [`Case`] on one implementation: what it
/// returned and reported, or its error (as `Debug` text).
#[derive(Clone, Debug)]
pub struct Outcome(core::result::Result<Log, String>);

impl Outcome {
    /// Whether the run failed (an error, not a result).
    pub fn is_err(&self) -> bool {
        self.0.is_err()
    }
}

/// One seeded synthetic case: a slots region, task inputs, weights, expert
/// components and the calls (primitives or plan steps) to run over them.
#[derive(Clone, Debug)]
pub struct Case {
    kind: Kind,
    name: String,
    slots: Vec<f32>,
    /// Named buffers (for messages).
    bufs: Vec<(&'static str, Buf)>,
    /// Ranges not compared.
    scratch: Vec<Buf>,
    inputs: Vec<Vec<f32>>,
    tensors: Vec<Weight>,
    components: Vec<Component>,
    calls: Vec<Call>,
    expect_error: bool,
}

impl Case {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Its name (shape, format, variant), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The weight formats of its tensors.
    pub fn formats(&self) -> impl Iterator<Item = WeightFormat> + '_ {
        self.tensors.iter().map(|w| w.format)
    }
    /// A fresh copy of its initial slots region.
    pub fn slots(&self) -> Vec<f32> {
        self.slots.clone()
    }
    /// Its task inputs.
    pub fn inputs(&self) -> Vec<&[f32]> {
        self.inputs.iter().map(Vec::as_slice).collect()
    }

    /// Runs the case's calls with `p`, whose slots region started as
    /// [`Case::slots`] and whose task inputs are [`Case::inputs`].
    pub fn run<P>(&self, p: &mut P) -> Outcome
    where
        P: for<'w> Primitives<W<'w> = TensorView<'w>>,
        P::Error: core::fmt::Debug,
    {
        let views: Vec<TensorView<'_>> = self.tensors.iter().map(Weight::view).collect();
        let mut log = Log::default();
        let r = self.run_calls(p, &views, &mut log);
        Outcome(r.map(|()| log).map_err(|e| format!("{e:?}")))
    }

    fn run_calls<P>(
        &self,
        p: &mut P,
        v: &[TensorView<'_>],
        log: &mut Log,
    ) -> core::result::Result<(), P::Error>
    where
        P: for<'w> Primitives<W<'w> = TensorView<'w>>,
    {
        for (i, call) in self.calls.iter().enumerate() {
            match *call {
                Call::Linear {
                    w,
                    b,
                    x,
                    rows,
                    y,
                    tmp,
                    kernel,
                } => p.linear(&v[w], b.map(|b| &v[b]), &x, rows, &y, &tmp, &kernel)?,
                Call::AddWeight { w, y } => p.add_weight(&v[w], &y)?,
                Call::LayerNorm {
                    x,
                    y,
                    g,
                    b,
                    eps,
                    scale,
                } => p.layer_norm(&x, &y, &v[g], &v[b], eps, scale)?,
                Call::Attention {
                    q,
                    k,
                    v: vv,
                    out,
                    tokens,
                    heads,
                    scratch,
                } => p.attention(&q, &k, &vv, &out, tokens, heads, &scratch)?,
                Call::AttnPool {
                    u,
                    query,
                    out,
                    scratch,
                } => p.attn_pool(&u, &v[query], &out, &scratch)?,
                Call::GateLogits {
                    p: pb,
                    gate,
                    function,
                    out,
                } => p.gate_logits(&pb, &v[gate], function, &out)?,
                Call::Axpy { a, x, y } => p.axpy(a, &x, &y)?,
                Call::Fill { y, v: value } => p.fill(&y, value)?,
                Call::Copy { src, dst } => p.copy(&src, &dst)?,
                Call::Route {
                    logits,
                    ref mask,
                    k,
                    route,
                } => p.route(&logits, mask, k, &route)?,
                Call::ReadRoute { route, k } => {
                    let mut e = vec![0u32; k];
                    let mut g = vec![0f32; k];
                    let n = p.read_route(&route, k, &mut e, &mut g)?;
                    let n = n.min(k);
                    log.returns.push((n, e[..n].to_vec(), g[..n].to_vec()));
                }
                Call::Conv3 {
                    w,
                    b,
                    u,
                    width,
                    token,
                    out,
                } => p.conv3(&v[w], &v[b], &u, width, token, &out)?,
                Call::ConvWindow {
                    u,
                    width,
                    token,
                    window,
                } => p.conv_window(&u, width, token, &window)?,
                Call::GeluAdd { x, residual } => p.gelu_add(&x, residual.as_ref())?,
                Call::Step(ref step) => {
                    let mut experts = Synth {
                        views: v,
                        components: &self.components,
                    };
                    let mut m = Meter {
                        tracer: &mut log.trace,
                        stats: &mut log.stats,
                    };
                    run_step(
                        i as u32,
                        step,
                        &crate::exec::RunCtx::default(),
                        v,
                        p,
                        &mut experts,
                        &mut m,
                    )?;
                    log.stats.ops += 1;
                }
            }
        }
        Ok(())
    }

    /// The reference run: [`CpuPrims`] with [`Kernels::generic`]; the
    /// final slots region and the outcome.
    pub fn reference(&self) -> (Vec<f32>, Outcome) {
        let kernels = Kernels::generic();
        let mut slots = self.slots();
        let inputs = self.inputs();
        let outcome = self.run(&mut CpuPrims::new(&mut slots, &inputs, &kernels));
        (slots, outcome)
    }

    fn locate(&self, i: usize) -> String {
        match self.bufs.iter().find(|(_, b)| b.range().contains(&i)) {
            Some((what, b)) => format!("{what}[{}]", i - b.start),
            None => "a guard element".to_string(),
        }
    }

    /// Compares a subject's final slots region and outcome with the
    /// reference's under `tolerance`; says where they differ.
    pub fn check(
        &self,
        slots: &[f32],
        got: &Outcome,
        tolerance: Tolerance,
    ) -> core::result::Result<(), String> {
        let (want_slots, want) = self.reference();
        let name = format!("{:?} {}", self.kind, self.name);
        let (want, got) = match (&want.0, &got.0) {
            (Err(_), Err(_)) if self.expect_error => return Ok(()),
            (Err(w), _) => return Err(format!("{name}: the reference failed: {w}")),
            (Ok(_), _) if self.expect_error => {
                return Err(format!("{name}: the reference should have failed"))
            }
            (Ok(_), Err(e)) => return Err(format!("{name}: failed where the reference ran: {e}")),
            (Ok(w), Ok(g)) => (w, g),
        };
        let mut diffs = Vec::new();
        if slots.len() != want_slots.len() {
            diffs.push(format!(
                "slots region of {} elements, want {}",
                slots.len(),
                want_slots.len()
            ));
        }
        let scratch = |i: usize| self.scratch.iter().any(|b| b.range().contains(&i));
        let mut count = 0usize;
        for (i, (&g, &w)) in slots.iter().zip(&want_slots).enumerate() {
            if scratch(i) || tolerance.accepts(g, w) {
                continue;
            }
            count += 1;
            if count <= 6 {
                diffs.push(format!(
                    "{} (slot {i}): got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                    self.locate(i),
                    g.to_bits(),
                    w.to_bits()
                ));
            }
        }
        if count > 6 {
            diffs.push(format!("... {} elements differ in all", count));
        }
        let gates_match = |g: &[f32], w: &[f32]| {
            g.len() == w.len() && g.iter().zip(w).all(|(&a, &b)| tolerance.accepts(a, b))
        };
        let returns_match = got.returns.len() == want.returns.len()
            && got
                .returns
                .iter()
                .zip(&want.returns)
                .all(|(g, w)| g.0 == w.0 && g.1 == w.1 && gates_match(&g.2, &w.2));
        if !returns_match {
            diffs.push(format!(
                "read_route returned {:?}, want {:?}",
                got.returns, want.returns
            ));
        }
        let routes_match = got.trace.routes.len() == want.trace.routes.len()
            && got
                .trace
                .routes
                .iter()
                .zip(&want.trace.routes)
                .all(|(g, w)| g.0 == w.0 && g.1 == w.1 && gates_match(&g.2, &w.2));
        if !routes_match {
            diffs.push(format!(
                "routes reported {:?}, want {:?}",
                got.trace.routes, want.trace.routes
            ));
        }
        if got.trace.reads != want.trace.reads || got.trace.fetches != want.trace.fetches {
            diffs.push(format!(
                "blob reads {:?} / fetches {:?}, want {:?} / {:?}",
                got.trace.reads, got.trace.fetches, want.trace.reads, want.trace.fetches
            ));
        }
        if got.stats != want.stats {
            diffs.push(format!("stats {:?}, want {:?}", got.stats, want.stats));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(format!("{name}:\n    {}", diffs.join("\n    ")))
        }
    }
}

/// Builds one case: buffers laid out with guard elements between them.
struct B {
    case: Case,
    rng: Rng,
}

/// Elements of random garbage before and after every buffer.
const GUARD: usize = 2;

impl B {
    fn new(kind: Kind, name: String, seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x5EED_0000_0000_0000);
        let slots = rng.vec(GUARD, 9.0);
        Self {
            case: Case {
                kind,
                name,
                slots,
                bufs: Vec::new(),
                scratch: Vec::new(),
                inputs: Vec::new(),
                tensors: Vec::new(),
                components: Vec::new(),
                calls: Vec::new(),
                expect_error: false,
            },
            rng,
        }
    }
    /// A buffer holding `values`.
    fn buf(&mut self, what: &'static str, values: &[f32]) -> Buf {
        let b = Buf::at(self.case.slots.len(), values.len());
        self.case.slots.extend_from_slice(values);
        let guard = self.rng.vec(GUARD, 9.0);
        self.case.slots.extend_from_slice(&guard);
        self.case.bufs.push((what, b));
        b
    }
    /// A buffer of `len` random values of magnitude below `scale`.
    fn rand(&mut self, what: &'static str, len: usize, scale: f32) -> Buf {
        let v = self.rng.vec(len, scale);
        self.buf(what, &v)
    }
    /// An output: garbage (a NaN among it) the op must overwrite.
    fn out(&mut self, what: &'static str, len: usize) -> Buf {
        let mut v = self.rng.vec(len, 100.0);
        if len > 2 {
            v[1] = f32::NAN;
        }
        self.buf(what, &v)
    }
    /// Scratch: garbage, not compared.
    fn scratch(&mut self, what: &'static str, len: usize) -> Buf {
        let b = self.out(what, len);
        self.case.scratch.push(b);
        b
    }
    fn weight(&mut self, mut w: Weight) -> usize {
        w.blob = 100 + self.case.tensors.len() as u32;
        self.case.tensors.push(w);
        self.case.tensors.len() - 1
    }
    fn tix(&mut self, w: Weight) -> Tix {
        Tix(self.weight(w) as u16)
    }
    fn input(&mut self, values: Vec<f32>) -> usize {
        self.case.inputs.push(values);
        self.case.inputs.len() - 1
    }
    fn call(&mut self, c: Call) {
        self.case.calls.push(c);
    }
    fn step(&mut self, s: Step) {
        self.case.calls.push(Call::Step(s));
    }
    fn done(self) -> Case {
        self.case
    }
}

/// Values that stress the elementwise primitives.
const SPECIAL: [f32; 12] = [
    0.0,
    -0.0,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -10.0,
    -3.5,
    1e-20,
    -1e-30,
    88.0,
    f32::MIN_POSITIVE,
    65504.0,
];

fn with_specials(mut v: Vec<f32>) -> Vec<f32> {
    for (x, s) in v.iter_mut().zip(SPECIAL) {
        *x = s;
    }
    v
}

/// Every case of `kind`.
pub fn cases(kind: Kind) -> Vec<Case> {
    match kind {
        Kind::LinearF32 => linear_f32(),
        Kind::LinearLowRankF32 => linear_low_rank(&[WeightFormat::F32], kind),
        Kind::LinearPacked => linear_packed(),
        Kind::LinearPackedLowRank => linear_low_rank(&packed_formats(), kind),
        Kind::AddWeight => add_weight(),
        Kind::LayerNorm => layer_norm(),
        Kind::Attention => attention(),
        Kind::AttnPool => attn_pool(),
        Kind::GateLogits => gate_logits(),
        Kind::Axpy => axpy(),
        Kind::Fill => fill(),
        Kind::Copy => copy(),
        Kind::Route => route(),
        Kind::ReadRoute => read_route(),
        Kind::Conv3 => conv3(),
        Kind::ConvWindow => conv_window(),
        Kind::GeluAdd => gelu_add(),
        Kind::StepEncode => step_encode(),
        Kind::StepLayerNorm => step_layer_norm(),
        Kind::StepLinear => step_linear(),
        Kind::StepAttention => step_attention(),
        Kind::StepAttnPool => step_attn_pool(),
        Kind::StepGate => step_gate(),
        Kind::StepRoute => step_route(),
        Kind::StepMoeF32 => step_moe_forms(kind, &[Form::Dense(WeightFormat::F32)]),
        Kind::StepMoeLowRank => step_moe_forms(kind, &[Form::LowRank(WeightFormat::F32, 3)]),
        Kind::StepMoePacked => step_moe_packed(),
        Kind::StepMoeMixed => step_moe_mixed(),
        Kind::StepMoeRejects => step_moe_rejects(),
        Kind::StepCopy => step_copy(),
        Kind::StepProgram => step_program(),
    }
}

fn packed_formats() -> Vec<WeightFormat> {
    ALL.into_iter()
        .filter(|&f| f != WeightFormat::F32)
        .collect()
}

/// Scratch bytes a quantized product of `format` with up to `cols` inputs
/// needs (any of `cols`), as f32 elements.
fn kernel_elems(format: WeightFormat, cols: &[usize]) -> usize {
    cols.iter()
        .map(|&c| format.scratch_bytes(c))
        .max()
        .unwrap_or(0)
        .div_ceil(4)
}

/// One linear case: `w` (already made), `rows` activation rows.
#[allow(clippy::too_many_arguments)]
fn linear_case(
    kind: Kind,
    name: String,
    seed: u64,
    w: Weight,
    rows: usize,
    bias: bool,
    from_input: bool,
    x: Vec<f32>,
) -> Case {
    let mut b = B::new(kind, name, seed);
    let (n_out, n_in, rank, format) = (w.rows, w.cols, w.rank, w.format);
    let bv = bias.then(|| b.rng.vec(n_out, 1.0));
    let wi = b.weight(w);
    let bi = bv.map(|v| b.weight(Weight::vector(&v)));
    let x = if from_input {
        Operand::Input(b.input(x))
    } else {
        Operand::Slot(b.buf("x", &x))
    };
    let y = b.out("y", rows * n_out);
    let tmp = if rank > 0 {
        b.scratch("tmp", rows * rank)
    } else {
        Buf::default()
    };
    let kernel = if format == WeightFormat::F32 {
        Buf::default()
    } else {
        let n = kernel_elems(format, &[n_in, rank]);
        b.scratch("kernel", n)
    };
    b.call(Call::Linear {
        w: wi,
        b: bi,
        x,
        rows,
        y,
        tmp,
        kernel,
    });
    b.done()
}

/// Activations as layers produce them: spread, one outlier.
fn activations(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut x = rng.vec(rows * cols, 3.0);
    if let Some(v) = x.first_mut() {
        *v *= 8.0;
    }
    x
}

fn linear_f32() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(1);
    let mut seed = 100;
    for (n_out, n_in) in [(1, 1), (3, 5), (8, 16), (13, 37)] {
        for rows in [1usize, 3] {
            for bias in [true, false] {
                seed += 1;
                let from_input = seed % 2 == 0;
                let w = Weight::dense(WeightFormat::F32, n_out, n_in, &rng.vec(n_out * n_in, 1.0));
                let x = activations(&mut rng, rows, n_in);
                out.push(linear_case(
                    Kind::LinearF32,
                    format!("[{n_out}, {n_in}] x {rows} rows, bias {bias}, input {from_input}"),
                    seed,
                    w,
                    rows,
                    bias,
                    from_input,
                    x,
                ));
            }
        }
    }
    // Zeros (the sign of a zero sum), NaN and infinities in the activations.
    let w = Weight::dense(WeightFormat::F32, 5, 12, &rng.vec(60, 1.0));
    let mut x = vec![0.0f32; 36];
    x[12..24].copy_from_slice(&with_specials(rng.vec(12, 1.0)));
    x[24..].copy_from_slice(&[-0.0; 12]);
    out.push(linear_case(
        Kind::LinearF32,
        "[5, 12] x 3 rows: zero, special and -0 rows".into(),
        seed + 1,
        w,
        3,
        false,
        false,
        x,
    ));
    out
}

fn linear_low_rank(formats: &[WeightFormat], kind: Kind) -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(2);
    let mut seed = 200;
    let shapes: &[(usize, usize, usize)] = if formats == [WeightFormat::F32] {
        &[(1, 1, 1), (6, 9, 2), (13, 37, 5), (16, 40, 16)]
    } else {
        &[(9, 40, 5), (17, 33, 16)]
    };
    for &f in formats {
        for &(n_out, n_in, rank) in shapes {
            for rows in [1usize, 2] {
                seed += 1;
                let (bias, from_input) = (seed % 2 == 1, seed % 3 == 0);
                let u = rng.vec(n_out * rank, 1.0);
                let v = rng.vec(rank * n_in, 1.0);
                let w = Weight::low_rank(f, n_out, n_in, rank, &u, &v);
                let x = activations(&mut rng, rows, n_in);
                out.push(linear_case(
                    kind,
                    format!(
                        "{} [{n_out}, {n_in}] rank {rank} x {rows} rows, bias {bias}, input {from_input}",
                        f.name()
                    ),
                    seed,
                    w,
                    rows,
                    bias,
                    from_input,
                    x,
                ));
            }
        }
    }
    out
}

fn linear_packed() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(3);
    let mut seed = 300;
    for f in packed_formats() {
        for (n_out, n_in) in [(1, 1), (5, 31), (17, 65), (16, 64)] {
            for rows in [1usize, 3] {
                seed += 1;
                let (bias, from_input) = (seed % 2 == 0, seed % 3 == 0);
                let w = Weight::dense(f, n_out, n_in, &rng.vec(n_out * n_in, 1.0));
                let x = activations(&mut rng, rows, n_in);
                out.push(linear_case(
                    Kind::LinearPacked,
                    format!(
                        "{} [{n_out}, {n_in}] x {rows} rows, bias {bias}, input {from_input}",
                        f.name()
                    ),
                    seed,
                    w,
                    rows,
                    bias,
                    from_input,
                    x,
                ));
            }
        }
        // A zero row (zero scales), a row with NaN and one with infinity in
        // its second block or group, a row of -0.0.
        seed += 1;
        let (n_out, n_in) = (18, 70);
        let w = Weight::dense(f, n_out, n_in, &rng.vec(n_out * n_in, 1.0));
        let mut x = activations(&mut rng, 4, n_in);
        x[..n_in].fill(0.0);
        x[n_in + 40] = f32::NAN;
        x[2 * n_in + 50] = f32::INFINITY;
        x[3 * n_in..].fill(-0.0);
        out.push(linear_case(
            Kind::LinearPacked,
            format!("{} [{n_out}, {n_in}]: zero, NaN, inf, -0 rows", f.name()),
            seed,
            w,
            4,
            true,
            false,
            x,
        ));
    }
    out
}

fn add_weight() -> Vec<Case> {
    let mut rng = Rng(4);
    [(1usize, 1usize), (1, 7), (3, 8)]
        .into_iter()
        .enumerate()
        .map(|(i, (r, c))| {
            let mut b = B::new(Kind::AddWeight, format!("[{r}, {c}]"), 400 + i as u64);
            let mut wv = rng.vec(r * c, 2.0);
            if wv.len() > 3 {
                wv[3] = -0.0;
            }
            let w = b.weight(Weight::dense(WeightFormat::F32, r, c, &wv));
            let y = b.buf("y", &with_specials(rng.vec(r * c, 5.0)));
            b.call(Call::AddWeight { w, y });
            b.done()
        })
        .collect()
}

fn layer_norm() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(5);
    let mut seed = 500;
    for width in [1usize, 7, 8, 33] {
        for rows in [1usize, 3] {
            for in_place in [true, false] {
                for scale in [1.0f32, 0.5] {
                    seed += 1;
                    let mut b = B::new(
                        Kind::LayerNorm,
                        format!("{rows} x {width}, in place {in_place}, scale {scale}"),
                        seed,
                    );
                    let mut xv = rng.vec(rows * width, 4.0);
                    if rows > 1 {
                        // A constant row: zero variance.
                        xv[width..2 * width].fill(2.5);
                    }
                    let x = b.buf("x", &xv);
                    let y = if in_place {
                        x
                    } else {
                        b.out("y", rows * width)
                    };
                    let gv = rng.vec(width, 2.0);
                    let g = b.weight(Weight::vector(&gv));
                    let bv = rng.vec(width, 1.0);
                    let bi = b.weight(Weight::vector(&bv));
                    b.call(Call::LayerNorm {
                        x,
                        y,
                        g,
                        b: bi,
                        eps: 1e-5,
                        scale,
                    });
                    out.push(b.done());
                }
            }
        }
    }
    // Large magnitudes and a special row (NaN and infinities spread).
    let mut b = B::new(Kind::LayerNorm, "2 x 12, large and special".into(), 599);
    let mut xv = rng.vec(24, 3e4);
    xv[12..].copy_from_slice(&with_specials(rng.vec(12, 1.0)));
    let x = b.buf("x", &xv);
    let y = b.out("y", 24);
    let gv = rng.vec(12, 1.0);
    let g = b.weight(Weight::vector(&gv));
    let bv = rng.vec(12, 1.0);
    let bi = b.weight(Weight::vector(&bv));
    b.call(Call::LayerNorm {
        x,
        y,
        g,
        b: bi,
        eps: 1e-6,
        scale: 0.125,
    });
    out.push(b.done());
    out
}

fn attention() -> Vec<Case> {
    let shapes = [
        (1usize, 1usize, 1usize, 1.0f32),
        (3, 1, 8, 1.0),
        (5, 2, 4, 1.0),
        (4, 3, 9, 1.0),
        (6, 2, 3, 12.0),
        (2, 2, 16, 0.0),
    ];
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (l, heads, dh, scale))| {
            let d = heads * dh;
            let mut b = B::new(
                Kind::Attention,
                format!("{l} tokens, {heads} heads of {dh}, scale {scale}"),
                600 + i as u64,
            );
            // scale 0 makes every score equal (flat softmax); 12 peaks it.
            let q = b.rand("q", l * d, scale.max(f32::MIN_POSITIVE));
            let k = b.rand("k", l * d, 2.0);
            let v = b.rand("v", l * d, 3.0);
            let out = b.out("out", l * d);
            let scratch = b.scratch("scores", l);
            b.call(Call::Attention {
                q,
                k,
                v,
                out,
                tokens: l,
                heads,
                scratch,
            });
            b.done()
        })
        .collect()
}

fn attn_pool() -> Vec<Case> {
    let mut rng = Rng(7);
    [(1usize, 1usize), (1, 8), (6, 5), (7, 16), (3, 33)]
        .into_iter()
        .enumerate()
        .map(|(i, (l, d))| {
            let mut b = B::new(Kind::AttnPool, format!("{l} x {d}"), 700 + i as u64);
            let u = b.rand("u", l * d, 3.0);
            let qv = rng.vec(d, 2.0);
            let query = b.weight(Weight::vector(&qv));
            let out = b.out("out", d);
            let scratch = b.scratch("scores", l);
            b.call(Call::AttnPool {
                u,
                query,
                out,
                scratch,
            });
            b.done()
        })
        .collect()
}

fn gate_logits() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(8);
    let mut seed = 800;
    for function in [GateFn::Dot, GateFn::Laplace] {
        for (n, d) in [(1usize, 1usize), (5, 8), (37, 19)] {
            seed += 1;
            let mut b = B::new(Kind::GateLogits, format!("{function:?} {n} x {d}"), seed);
            let pv = rng.vec(d, 2.0);
            let p = b.buf("p", &pv);
            let mut gv = rng.vec(n * d, 1.5);
            if n > 2 {
                // A gate vector equal to the input (Laplace: -0.0), a zero one.
                gv[d..2 * d].copy_from_slice(&pv);
                gv[2 * d..3 * d].fill(0.0);
            }
            let gate = b.weight(Weight::dense(WeightFormat::F32, n, d, &gv));
            let o = b.out("logits", n);
            b.call(Call::GateLogits {
                p,
                gate,
                function,
                out: o,
            });
            out.push(b.done());
        }
    }
    out
}

fn axpy() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(9);
    let mut seed = 900;
    for a in [0.5f32, -2.0, 0.0, -0.0, f32::NAN] {
        for len in [1usize, 9, 40] {
            seed += 1;
            let mut b = B::new(Kind::Axpy, format!("a = {a}, {len}"), seed);
            let x = b.buf("x", &with_specials(rng.vec(len, 3.0)));
            let mut yv = rng.vec(len, 3.0);
            yv.reverse();
            let y = b.buf("y", &yv);
            b.call(Call::Axpy { a, x, y });
            out.push(b.done());
        }
    }
    out
}

fn fill() -> Vec<Case> {
    [1usize, 17, 64]
        .into_iter()
        .enumerate()
        .map(|(i, len)| {
            let mut b = B::new(Kind::Fill, format!("{len} with +0.0"), 1000 + i as u64);
            let y = b.out("y", len);
            b.call(Call::Fill { y, v: 0.0 });
            b.done()
        })
        .collect()
}

fn copy() -> Vec<Case> {
    let mut rng = Rng(11);
    [1usize, 23, 100]
        .into_iter()
        .enumerate()
        .map(|(i, len)| {
            let mut b = B::new(Kind::Copy, format!("{len}"), 1100 + i as u64);
            let src = b.buf("src", &with_specials(rng.vec(len, 3.0)));
            let dst = b.out("dst", len);
            b.call(Call::Copy { src, dst });
            b.done()
        })
        .collect()
}

fn mask_of(experts: &[usize]) -> ExpertMask {
    let mut m = ExpertMask::default();
    for &j in experts {
        m.insert(j);
    }
    m
}

fn route_case(seed: u64, name: String, logits: &[f32], mask: ExpertMask, k: usize) -> Case {
    let mut b = B::new(Kind::Route, name, seed);
    let l = b.buf("logits", logits);
    let route = b.out("route", 1 + 2 * k);
    b.call(Call::Route {
        logits: l,
        mask,
        k,
        route,
    });
    b.call(Call::ReadRoute { route, k });
    b.done()
}

fn route() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(12);
    let mut seed = 1200;
    let mut add = |name: String, logits: Vec<f32>, mask: ExpertMask, k: usize| {
        seed += 1;
        out.push(route_case(seed, name, &logits, mask, k));
    };
    for n in [1usize, 5, 64, 65, 200, 256] {
        for k in [1usize, 2, 8] {
            add(
                format!("{n} logits, all experts, top {k}"),
                rng.vec(n, 4.0),
                ExpertMask::all(256),
                k,
            );
        }
    }
    let sparse: Vec<usize> = (0..256).filter(|j| j % 7 == 3 || j % 64 == 63).collect();
    add(
        "256 logits, sparse mask across words, top 8".into(),
        rng.vec(256, 4.0),
        mask_of(&sparse),
        8,
    );
    add(
        "256 logits, word boundaries 63/64/127/128/255, top 5".into(),
        rng.vec(256, 1.0),
        mask_of(&[63, 64, 127, 128, 255]),
        5,
    );
    add(
        "256 logits, all experts, top 64".into(),
        rng.vec(256, 4.0),
        ExpertMask::all(256),
        MAX_TOP_K,
    );
    add(
        "10 logits, mask bits past the logits only".into(),
        rng.vec(10, 1.0),
        mask_of(&[10, 11, 200]),
        2,
    );
    add(
        "12 logits, empty mask".into(),
        rng.vec(12, 1.0),
        ExpertMask::default(),
        3,
    );
    add(
        "7 logits, one expert, top 4".into(),
        rng.vec(7, 1.0),
        mask_of(&[4]),
        4,
    );
    add(
        "16 equal logits (ties to the lower index), top 4".into(),
        vec![0.75; 16],
        ExpertMask::all(16),
        4,
    );
    let mut ties = rng.vec(70, 1.0);
    for j in [3usize, 9, 64, 66] {
        ties[j] = 2.0;
    }
    add(
        "70 logits, a 4-way tie at the top, top 3".into(),
        ties,
        ExpertMask::all(70),
        3,
    );
    let mut nan = rng.vec(20, 1.0);
    nan[0] = f32::NAN;
    nan[5] = f32::NAN;
    add(
        "20 logits, NaN ranks last, top 4".into(),
        nan.clone(),
        ExpertMask::all(20),
        4,
    );
    add(
        "20 logits, NaN chosen (every gate NaN), top 19".into(),
        nan,
        ExpertMask::all(20),
        19,
    );
    add(
        "9 NaN logits, top 2".into(),
        vec![f32::NAN; 9],
        ExpertMask::all(9),
        2,
    );
    let mut inf = rng.vec(8, 1.0);
    inf[2] = f32::INFINITY;
    inf[6] = f32::NEG_INFINITY;
    add(
        "8 logits with +inf and -inf, top 3".into(),
        inf,
        ExpertMask::all(8),
        3,
    );
    add(
        "6 logits all -inf, top 2".into(),
        vec![f32::NEG_INFINITY; 6],
        ExpertMask::all(6),
        2,
    );
    add(
        "6 logits with -0.0 and 0.0, top 2".into(),
        vec![-0.0, 0.0, -0.0, -1.0, 0.0, -2.0],
        ExpertMask::all(6),
        2,
    );
    out
}

fn read_route() -> Vec<Case> {
    let nan = f32::NAN;
    let slots: [(&str, usize, Vec<f32>, bool); 9] = [
        ("two of two", 2, vec![2.0, 3.0, 1.0, 0.25, 0.75], false),
        ("none", 2, vec![0.0, 9.0, 9.0, 9.0, 9.0], false),
        (
            "one of three",
            3,
            vec![1.0, 7.0, 8.0, 9.0, 1.0, 0.0, 0.0],
            false,
        ),
        (
            "NaN and negative experts",
            2,
            vec![2.0, nan, -1.0, 0.5, 0.5],
            false,
        ),
        ("huge expert index", 1, vec![1.0, 1e10, 1.0], false),
        ("fractional count", 2, vec![1.5, 4.0, 2.0, 0.5, 0.5], false),
        ("count above k", 2, vec![3.0, 1.0, 2.0, 0.5, 0.5], true),
        ("NaN count", 1, vec![nan, 1.0, 1.0], true),
        ("negative count", 1, vec![-1.0, 1.0, 1.0], true),
    ];
    slots
        .into_iter()
        .enumerate()
        .map(|(i, (name, k, v, fails))| {
            let mut b = B::new(Kind::ReadRoute, name.into(), 1300 + i as u64);
            let route = b.buf("route", &v);
            b.call(Call::ReadRoute { route, k });
            b.case.expect_error = fails;
            b.done()
        })
        .collect()
}

/// First, middle and last token of `l` (deduplicated).
fn tokens(l: usize) -> Vec<usize> {
    let mut t = vec![0, l / 2, l - 1];
    t.dedup();
    t
}

fn conv3() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(14);
    let mut seed = 1400;
    for (d, l, d_out) in [(1usize, 1usize, 1usize), (5, 2, 3), (8, 4, 7), (16, 3, 16)] {
        for t in tokens(l) {
            seed += 1;
            let mut b = B::new(
                Kind::Conv3,
                format!("d {d}, {l} tokens, out {d_out}, at {t}"),
                seed,
            );
            let u = b.rand("u", l * d, 2.0);
            let w = b.weight(Weight::dense(
                WeightFormat::F32,
                d_out,
                3 * d,
                &rng.vec(d_out * 3 * d, 1.0),
            ));
            let bv = rng.vec(d_out, 1.0);
            let bi = b.weight(Weight::vector(&bv));
            let o = b.out("out", d_out);
            b.call(Call::Conv3 {
                w,
                b: bi,
                u,
                width: d,
                token: t,
                out: o,
            });
            out.push(b.done());
        }
    }
    out
}

fn conv_window() -> Vec<Case> {
    let mut out = Vec::new();
    let mut seed = 1500;
    for (width, l) in [(1usize, 1usize), (1, 3), (5, 3), (16, 4)] {
        for t in tokens(l) {
            seed += 1;
            let mut b = B::new(
                Kind::ConvWindow,
                format!("width {width}, {l} tokens, at {t}"),
                seed,
            );
            let u = b.rand("u", l * width, 2.0);
            let window = b.out("window", 3 * width);
            b.call(Call::ConvWindow {
                u,
                width,
                token: t,
                window,
            });
            out.push(b.done());
        }
    }
    out
}

fn gelu_add() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(16);
    let mut seed = 1600;
    for len in [1usize, 13, 40] {
        for residual in [false, true] {
            seed += 1;
            let mut b = B::new(Kind::GeluAdd, format!("{len}, residual {residual}"), seed);
            let x = b.buf("x", &with_specials(rng.vec(len, 6.0)));
            let r = residual.then(|| {
                let mut rv = rng.vec(len, 2.0);
                rv.reverse();
                b.buf("residual", &rv)
            });
            b.call(Call::GeluAdd { x, residual: r });
            out.push(b.done());
        }
    }
    out
}

fn step_encode() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(17);
    for (i, (l, f, d, rank)) in [
        (1usize, 1usize, 1usize, 0usize),
        (4, 6, 8, 0),
        (5, 11, 9, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = B::new(
            Kind::StepEncode,
            format!("{l} tokens, {f} features -> {d}, rank {rank}"),
            1700 + i as u64,
        );
        let input = b.input(rng.vec(l * f, 2.0));
        let w = if rank == 0 {
            Weight::dense(WeightFormat::F32, d, f, &rng.vec(d * f, 1.0))
        } else {
            let (u, v) = (rng.vec(d * rank, 1.0), rng.vec(rank * f, 1.0));
            Weight::low_rank(WeightFormat::F32, d, f, rank, &u, &v)
        };
        let w = b.tix(w);
        let bias = rng.vec(d, 1.0);
        let bi = b.tix(Weight::vector(&bias));
        let pos = b.tix(Weight::dense(WeightFormat::F32, l, d, &rng.vec(l * d, 1.0)));
        let o = b.out("out", l * d);
        let tmp = if rank > 0 {
            b.scratch("tmp", l * rank)
        } else {
            Buf::default()
        };
        b.step(Step::Encode {
            input,
            out: o,
            w,
            b: bi,
            pos,
            tmp,
            tokens: l,
        });
        out.push(b.done());
    }
    out
}

fn step_layer_norm() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(18);
    for (i, (rows, width, in_place, scale)) in [
        (1usize, 8usize, true, 1.0f32),
        (3, 13, false, 0.25),
        (4, 8, true, 2.0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = B::new(
            Kind::StepLayerNorm,
            format!("{rows} x {width}, in place {in_place}, scale {scale}"),
            1800 + i as u64,
        );
        let x = b.rand("x", rows * width, 3.0);
        let y = if in_place {
            x
        } else {
            b.out("y", rows * width)
        };
        let gv = rng.vec(width, 2.0);
        let g = b.tix(Weight::vector(&gv));
        let bv = rng.vec(width, 1.0);
        let bt = b.tix(Weight::vector(&bv));
        b.step(Step::LayerNorm {
            x,
            y,
            g,
            b: bt,
            scale,
            eps: 1e-5,
        });
        out.push(b.done());
    }
    out
}

fn step_linear() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(19);
    for (i, (rows, n_out, n_in, rank, bias)) in [
        (1usize, 4usize, 9usize, 0usize, true),
        (3, 7, 16, 0, false),
        (3, 10, 12, 4, true),
        (2, 5, 33, 2, false),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = B::new(
            Kind::StepLinear,
            format!("[{n_out}, {n_in}] rank {rank} x {rows} rows, bias {bias}"),
            1900 + i as u64,
        );
        let x = b.rand("x", rows * n_in, 2.0);
        let w = if rank == 0 {
            Weight::dense(WeightFormat::F32, n_out, n_in, &rng.vec(n_out * n_in, 1.0))
        } else {
            let (u, v) = (rng.vec(n_out * rank, 1.0), rng.vec(rank * n_in, 1.0));
            Weight::low_rank(WeightFormat::F32, n_out, n_in, rank, &u, &v)
        };
        let w = b.tix(w);
        let bt = bias.then(|| {
            let bv = rng.vec(n_out, 1.0);
            b.tix(Weight::vector(&bv))
        });
        let y = b.out("y", rows * n_out);
        let tmp = if rank > 0 {
            b.scratch("tmp", rows * rank)
        } else {
            Buf::default()
        };
        b.step(Step::Linear {
            x,
            y,
            w,
            b: bt,
            rows,
            tmp,
            kernel: Buf::default(),
            stream: false,
        });
        out.push(b.done());
    }
    out
}

fn step_attention() -> Vec<Case> {
    [(1usize, 1usize, 4usize), (5, 2, 4), (3, 4, 2)]
        .into_iter()
        .enumerate()
        .map(|(i, (l, heads, dh))| {
            let d = heads * dh;
            let mut b = B::new(
                Kind::StepAttention,
                format!("{l} tokens, {heads} heads of {dh}"),
                2000 + i as u64,
            );
            let q = b.rand("q", l * d, 2.0);
            let k = b.rand("k", l * d, 2.0);
            let v = b.rand("v", l * d, 2.0);
            let out = b.out("out", l * d);
            let scratch = b.scratch("scores", l);
            b.step(Step::Attention {
                q,
                k,
                v,
                out,
                tokens: l,
                heads,
                scratch,
            });
            b.done()
        })
        .collect()
}

fn step_attn_pool() -> Vec<Case> {
    let mut rng = Rng(21);
    [(1usize, 6usize), (5, 8), (4, 17)]
        .into_iter()
        .enumerate()
        .map(|(i, (l, d))| {
            let mut b = B::new(Kind::StepAttnPool, format!("{l} x {d}"), 2100 + i as u64);
            let u = b.rand("u", l * d, 2.0);
            let qv = rng.vec(d, 1.0);
            let query = b.tix(Weight::vector(&qv));
            let out = b.out("out", d);
            let scratch = b.scratch("scores", l);
            b.step(Step::AttnPool {
                u,
                query,
                out,
                scratch,
            });
            b.done()
        })
        .collect()
}

fn step_gate() -> Vec<Case> {
    let mut out = Vec::new();
    let mut rng = Rng(22);
    let mut seed = 2200;
    for function in [GateFn::Dot, GateFn::Laplace] {
        for accumulate in [false, true] {
            for scale in [1.0f32, 0.5] {
                seed += 1;
                let (n, d) = (6usize, 10usize);
                let mut b = B::new(
                    Kind::StepGate,
                    format!("{function:?}, accumulate {accumulate}, scale {scale}"),
                    seed,
                );
                let pv = rng.vec(d, 2.0);
                let p = b.buf("p", &pv);
                let mut gv = rng.vec(n * d, 1.0);
                // A gate vector equal to the input: a Laplace logit of -0.0,
                // accumulated onto a -0.0 logit.
                gv[2 * d..3 * d].copy_from_slice(&pv);
                let gate = b.tix(Weight::dense(WeightFormat::F32, n, d, &gv));
                let mut lv = rng.vec(n, 3.0);
                lv[2] = -0.0;
                let logits = b.buf("logits", &lv);
                let tmp = b.scratch("tmp", n);
                b.step(Step::Gate {
                    p,
                    gate,
                    logits,
                    accumulate,
                    scale,
                    tmp,
                    function,
                });
                out.push(b.done());
            }
        }
    }
    out
}

fn step_route() -> Vec<Case> {
    let mut out = Vec::new();
    for (i, (n, k, mask)) in [
        (4usize, 1usize, ExpertMask::all(4)),
        (12, 3, mask_of(&[0, 2, 5, 7, 11])),
        (256, 8, ExpertMask::all(256)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = B::new(
            Kind::StepRoute,
            format!("{n} logits, top {k}"),
            2300 + i as u64,
        );
        let logits = b.rand("logits", n, 3.0);
        let route = b.out("route", 1 + 2 * k);
        b.step(Step::Route {
            logits,
            router: 3 + i as u32,
            top_k: k,
            mask,
            route,
        });
        out.push(b.done());
    }
    out
}

/// How a synthetic expert's matrices are stored.
#[derive(Clone, Copy, Debug)]
enum Form {
    Dense(WeightFormat),
    LowRank(WeightFormat, usize),
}

impl Form {
    fn format(self) -> WeightFormat {
        match self {
            Form::Dense(f) | Form::LowRank(f, _) => f,
        }
    }
    fn rank(self) -> usize {
        match self {
            Form::Dense(_) => 0,
            Form::LowRank(_, r) => r,
        }
    }
    fn name(self) -> String {
        match self {
            Form::Dense(f) => f.name().to_string(),
            Form::LowRank(f, r) => format!("{} rank {r}", f.name()),
        }
    }
    fn matrix(self, rng: &mut Rng, rows: usize, cols: usize) -> Weight {
        match self {
            Form::Dense(f) => Weight::dense(f, rows, cols, &rng.vec(rows * cols, 0.5)),
            Form::LowRank(f, r) => {
                let (u, v) = (rng.vec(rows * r, 0.5), rng.vec(r * cols, 0.5));
                Weight::low_rank(f, rows, cols, r, &u, &v)
            }
        }
    }
}

/// Adds component `c` of expert `j` in `form` (`d` wide, hidden `h`).
fn add_expert(b: &mut B, j: usize, c: usize, form: Form, d: usize, h: usize) {
    let m = |b: &mut B, rows: usize, cols: usize| {
        let w = form.matrix(&mut b.rng, rows, cols);
        b.weight(w)
    };
    let conv_w = m(b, d, 3 * d);
    let fc1_w = m(b, h, d);
    let fc2_w = m(b, d, h);
    let v = |b: &mut B, n: usize, scale: f32| {
        let x = b.rng.vec(n, scale);
        b.weight(Weight::vector(&x))
    };
    let (conv_b, ln_g, ln_b) = (v(b, d, 0.5), v(b, d, 1.5), v(b, d, 0.5));
    let (fc1_b, fc2_b) = (v(b, h, 0.5), v(b, d, 0.5));
    b.case.components.push(Component {
        expert: j,
        component: c,
        tensors: ExpertTensors {
            conv_w,
            conv_b,
            ln_g,
            ln_b,
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
        },
    });
}

/// A `Moe` step's scratch slot for experts of `forms`, divided as the plan
/// divides it ([`crate::exec::moe_scratch`]).
fn moe_scratch(b: &mut B, forms: &[Form], d: usize, h: usize) -> ExpertScratch {
    let r = forms.iter().map(|f| f.rank()).max().unwrap_or(0);
    let q = forms
        .iter()
        .map(|f| {
            let cols = [3 * d, d, h, f.rank()];
            cols.iter()
                .map(|&c| f.format().scratch_bytes(c))
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let total = crate::exec::moe_scratch(d, h, r, q);
    let s = b.scratch("moe scratch", total);
    let mut at = s.start;
    let mut piece = |len: usize| {
        let p = Buf::at(at, len);
        at += len;
        p
    };
    ExpertScratch {
        h: piece(d),
        mid: piece(h),
        out: piece(d),
        window: piece(3 * d),
        tmp: piece(r),
        kernel: piece(q.div_ceil(4)),
    }
}

/// Route then Moe: `n` experts (expert `j` in `forms[j % forms.len()]`),
/// `components` each, top `k` within `mask`, at `token` of `l`.
#[allow(clippy::too_many_arguments)]
fn moe_case(
    kind: Kind,
    seed: u64,
    forms: &[Form],
    (l, d, h): (usize, usize, usize),
    token: usize,
    n: usize,
    components: usize,
    k: usize,
    mask: ExpertMask,
) -> Case {
    let names: Vec<String> = forms.iter().map(|f| f.name()).collect();
    let mut b = B::new(
        kind,
        format!(
            "{} experts of [{}], {components} components, top {k}, {l} x {d} (h {h}) at {token}",
            n,
            names.join(", ")
        ),
        seed,
    );
    for j in 0..n {
        for c in 0..components {
            add_expert(&mut b, j, c, forms[j % forms.len()], d, h);
        }
    }
    let u = b.rand("u", l * d, 2.0);
    let logits = b.rand("logits", n, 3.0);
    let route = b.out("route", 1 + 2 * k);
    let out = b.out("out", d);
    let scratch = moe_scratch(&mut b, forms, d, h);
    b.step(Step::Route {
        logits,
        router: 1,
        top_k: k,
        mask,
        route,
    });
    b.step(Step::Moe {
        u,
        route,
        group: 0,
        top_k: k,
        mask,
        components,
        blocks: [0; crate::plan::INLINE_COMPONENTS],
        token,
        width: d,
        out,
        scratch,
        eps: 1e-5,
    });
    b.done()
}

fn step_moe_forms(kind: Kind, forms: &[Form]) -> Vec<Case> {
    let mut out = Vec::new();
    let mut seed = 2400 + 100 * (kind as u64);
    for (l, d, h) in [(1usize, 4usize, 6usize), (5, 8, 12)] {
        for token in tokens(l) {
            for (components, k) in [(1usize, 1usize), (2, 2)] {
                seed += 1;
                out.push(moe_case(
                    kind,
                    seed,
                    forms,
                    (l, d, h),
                    token,
                    4,
                    components,
                    k,
                    mask_of(&[0, 1, 3]),
                ));
            }
        }
    }
    out
}

fn step_moe_packed() -> Vec<Case> {
    let mut out = Vec::new();
    let mut seed = 5000;
    for f in packed_formats() {
        for (form, token) in [(Form::Dense(f), 0usize), (Form::LowRank(f, 5), 2)] {
            seed += 1;
            out.push(moe_case(
                Kind::StepMoePacked,
                seed,
                &[form],
                (4, 12, 20),
                token,
                3,
                1,
                2,
                ExpertMask::all(3),
            ));
        }
    }
    out
}

fn step_moe_mixed() -> Vec<Case> {
    let forms = [
        Form::Dense(WeightFormat::F32),
        Form::Dense(WeightFormat::I8Row),
        Form::LowRank(WeightFormat::F32, 4),
        Form::Dense(WeightFormat::I4G32Z),
        Form::LowRank(WeightFormat::F16, 3),
        Form::Dense(WeightFormat::I2G64),
    ];
    [(0usize, 1usize), (3, 3), (5, 4)]
        .into_iter()
        .enumerate()
        .map(|(i, (token, k))| {
            moe_case(
                Kind::StepMoeMixed,
                5100 + i as u64,
                &forms,
                (6, 16, 24),
                token,
                6,
                2,
                k,
                ExpertMask::all(6),
            )
        })
        .collect()
}

fn step_moe_rejects() -> Vec<Case> {
    let cases: [(&str, Vec<f32>, usize); 3] = [
        (
            "route names an expert outside the mask",
            vec![1.0, 2.0, 1.0],
            1,
        ),
        (
            "route names a NaN expert",
            vec![2.0, 0.0, f32::NAN, 0.5, 0.5],
            2,
        ),
        ("route count above top_k", vec![2.0, 0.0, 1.0], 1),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (name, route, k))| {
            let (l, d, h) = (3usize, 4usize, 5usize);
            let mut b = B::new(Kind::StepMoeRejects, name.into(), 5200 + i as u64);
            for j in 0..3 {
                add_expert(&mut b, j, 0, Form::Dense(WeightFormat::F32), d, h);
            }
            let u = b.rand("u", l * d, 2.0);
            let route = b.buf("route", &route);
            let out = b.out("out", d);
            let scratch = moe_scratch(&mut b, &[Form::Dense(WeightFormat::F32)], d, h);
            b.step(Step::Moe {
                u,
                route,
                group: 0,
                top_k: k,
                mask: mask_of(&[0, 1]),
                components: 1,
                blocks: [0; crate::plan::INLINE_COMPONENTS],
                token: 1,
                width: d,
                out,
                scratch,
                eps: 1e-5,
            });
            b.case.expect_error = true;
            b.done()
        })
        .collect()
}

fn step_copy() -> Vec<Case> {
    let mut rng = Rng(25);
    [1usize, 31]
        .into_iter()
        .enumerate()
        .map(|(i, len)| {
            let mut b = B::new(Kind::StepCopy, format!("{len}"), 5300 + i as u64);
            let src = b.buf("src", &with_specials(rng.vec(len, 2.0)));
            let dst = b.out("dst", len);
            b.step(Step::Copy { src, dst });
            b.done()
        })
        .collect()
}

fn step_program() -> Vec<Case> {
    let (l, f, d, heads, h, n, k) = (4usize, 6usize, 8usize, 2usize, 12usize, 5usize, 2usize);
    [0usize, 3]
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let mut b = B::new(
                Kind::StepProgram,
                format!("encode .. moe at token {token} .. copy"),
                5400 + i as u64,
            );
            let mut rng = Rng(5400 + i as u64);
            let input = b.input(rng.vec(l * f, 2.0));
            let dense = |b: &mut B, rng: &mut Rng, r: usize, c: usize| {
                b.tix(Weight::dense(WeightFormat::F32, r, c, &rng.vec(r * c, 0.5)))
            };
            let vector =
                |b: &mut B, rng: &mut Rng, c: usize| b.tix(Weight::vector(&rng.vec(c, 1.0)));
            let forms = [
                Form::Dense(WeightFormat::F32),
                Form::Dense(WeightFormat::I4G32),
                Form::LowRank(WeightFormat::F32, 3),
            ];
            for j in 0..n {
                add_expert(&mut b, j, 0, forms[j % forms.len()], d, h);
            }
            let u = b.out("u", l * d);
            let q = b.out("q", l * d);
            let kk = b.out("k", l * d);
            let v = b.out("v", l * d);
            let a = b.out("a", l * d);
            let p = b.out("p", d);
            let logits = b.out("logits", n);
            let route = b.out("route", 1 + 2 * k);
            let moe = b.out("moe", d);
            let result = b.out("result", d);
            let scores = b.scratch("scores", l);
            let gate_tmp = b.scratch("gate tmp", n);
            let scratch = moe_scratch(&mut b, &forms, d, h);
            let (w, bias, pos) = (
                dense(&mut b, &mut rng, d, f),
                vector(&mut b, &mut rng, d),
                dense(&mut b, &mut rng, l, d),
            );
            b.step(Step::Encode {
                input,
                out: u,
                w,
                b: bias,
                pos,
                tmp: Buf::default(),
                tokens: l,
            });
            let (g, gb) = (vector(&mut b, &mut rng, d), vector(&mut b, &mut rng, d));
            b.step(Step::LayerNorm {
                x: u,
                y: u,
                g,
                b: gb,
                scale: 1.0,
                eps: 1e-5,
            });
            for y in [q, kk, v] {
                let w = dense(&mut b, &mut rng, d, d);
                b.step(Step::Linear {
                    x: u,
                    y,
                    w,
                    b: None,
                    rows: l,
                    tmp: Buf::default(),
                    kernel: Buf::default(),
                    stream: false,
                });
            }
            b.step(Step::Attention {
                q,
                k: kk,
                v,
                out: a,
                tokens: l,
                heads,
                scratch: scores,
            });
            let query = vector(&mut b, &mut rng, d);
            b.step(Step::AttnPool {
                u: a,
                query,
                out: p,
                scratch: scores,
            });
            for (function, accumulate, scale) in
                [(GateFn::Laplace, false, 1.0f32), (GateFn::Dot, true, 0.5)]
            {
                let gate = dense(&mut b, &mut rng, n, d);
                b.step(Step::Gate {
                    p,
                    gate,
                    logits,
                    accumulate,
                    scale,
                    tmp: gate_tmp,
                    function,
                });
            }
            let mask = mask_of(&[0, 1, 2, 4]);
            b.step(Step::Route {
                logits,
                router: 0,
                top_k: k,
                mask,
                route,
            });
            b.step(Step::Moe {
                u: a,
                route,
                group: 0,
                top_k: k,
                mask,
                components: 1,
                blocks: [0; crate::plan::INLINE_COMPONENTS],
                token,
                width: d,
                out: moe,
                scratch,
                eps: 1e-5,
            });
            b.step(Step::Copy {
                src: moe,
                dst: result,
            });
            b.done()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference agrees with itself, so every case is well formed: the
    /// cases that must fail do, the others run.
    #[test]
    fn every_case_runs_on_the_reference() {
        for kind in Kind::ALL {
            let cases = cases(kind);
            assert!(!cases.is_empty(), "{kind:?}");
            for case in &cases {
                let (slots, outcome) = case.reference();
                assert_eq!(
                    outcome.0.is_err(),
                    case.expect_error,
                    "{kind:?} {}",
                    case.name
                );
                case.check(&slots, &outcome, Tolerance::Exact).unwrap();
            }
        }
    }

    #[test]
    fn tolerance_treats_nan_and_zero_signs_as_documented() {
        let e = Tolerance::Exact;
        let n = Tolerance::Within { abs: 0.0, rel: 0.0 };
        assert!(e.accepts(f32::NAN, -f32::NAN));
        assert!(!e.accepts(f32::NAN, 1.0) && !e.accepts(1.0, f32::NAN));
        assert!(!e.accepts(0.0, -0.0) && n.accepts(0.0, -0.0));
        assert!(!n.accepts(f32::INFINITY, f32::MAX));
        assert!(Tolerance::Within { abs: 0.5, rel: 0.0 }.accepts(1.4, 1.0));
    }
}
