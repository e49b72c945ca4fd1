//! Quantised matrix-vector kernels: the same property tests for every kernel.
//!
//! [`qmatvec_kernel_tests!`] takes `(module name, condition, kernel)` as in
//! tract's frame tests: generic kernels pass `true`, SIMD kernels a CPU-feature
//! predicate (unsupported hosts skip them). For each kernel it checks
//!
//! - against the oracle: `dequantize` + a naive f64 matvec, within the
//!   documented bound of activation / table quantisation ([`bound`]);
//! - against the generic kernel of its format: bit-identical outputs and
//!   identical integer parts (the float epilogues are the same operations in
//!   the same order, so the ulp bound is 0);
//! - batch and tile-split consistency, scratch contents not mattering;
//! - named regression cases (accumulator extremes, empty shapes, NaN).
//!
//! Problems are drawn as shapes plus a seed for a small PRNG, so shrinking acts
//! on shapes. `PROPTEST_CASES` overrides the case count (default 64).

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use taskpath_cpu::qmatvec::{generic, CpuFeatures, Kernels, QMatVec};
use taskpath_cpu::quant::{self, dequantize, quantize, WeightFormat, ALL};

// ---------------------------------------------------------------- data

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
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Values of one of several shapes: uniform, heavy-tailed with zeros, all
/// positive, tiny (f16 subnormal scales), constant, integers.
fn values(rng: &mut Rng, n: usize, dist: u8) -> Vec<f32> {
    (0..n)
        .map(|i| match dist % 6 {
            0 => rng.unit(),
            1 => {
                let u = rng.unit();
                match rng.next() % 8 {
                    0 => 0.0,
                    1 => 20.0 * u,
                    _ => u * u * u,
                }
            }
            2 => 0.5 + 0.5 * rng.unit(),
            3 => 1e-6 * rng.unit(),
            4 => 0.75,
            _ => ((rng.next() % 17) as f32 - 8.0) * if i % 5 == 0 { 2.0 } else { 1.0 },
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Problem {
    rows: usize,
    cols: usize,
    seed: u64,
    wdist: u8,
    xdist: u8,
    bias: bool,
}

fn problem() -> impl Strategy<Value = Problem> {
    let cols = prop_oneof![
        3 => 1usize..300,
        1 => prop::sample::select(vec![1usize, 3, 4, 5, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 255, 256, 257]),
    ];
    (
        1usize..70,
        cols,
        any::<u64>(),
        0u8..6,
        0u8..6,
        any::<bool>(),
    )
        .prop_map(|(rows, cols, seed, wdist, xdist, bias)| Problem {
            rows,
            cols,
            seed,
            wdist,
            xdist,
            bias,
        })
}

struct Data {
    x: Vec<f32>,
    bias: Option<Vec<f32>>,
    packed: Vec<u8>,
    deq: Vec<f32>,
}

fn data(f: WeightFormat, p: &Problem) -> Data {
    let mut rng = Rng(p.seed);
    let w = values(&mut rng, p.rows * p.cols, p.wdist);
    let x = values(&mut rng, p.cols, p.xdist);
    let bias = p.bias.then(|| values(&mut rng, p.rows, 0));
    let mut packed = vec![0u8; f.packed_bytes(p.rows, p.cols)];
    quantize(f, p.rows, p.cols, &w, &mut packed).unwrap();
    let mut deq = vec![0.0f32; p.rows * p.cols];
    dequantize(f, p.rows, p.cols, &packed, &mut deq).unwrap();
    Data {
        x,
        bias,
        packed,
        deq,
    }
}

/// Scratch filled with garbage (the kernels must not depend on it), a little too long.
fn scratch(f: WeightFormat, cols: usize) -> Vec<u8> {
    vec![0xA5; f.scratch_bytes(cols) + 7]
}

// ---------------------------------------------------------------- oracle

/// f32 rounding budget of a sum of `n` terms, relative to the sum of their magnitudes.
fn rel(n: usize) -> f64 {
    (n as f64 + 16.0) * f64::from(f32::EPSILON)
}

/// `(want, tol)` for row `r`: the f64 matvec of the dequantised weights and the
/// documented error bound of the format's kernels.
///
/// - f32, f16: float rounding only.
/// - i8row: activations are quantised per 32 columns with `sx = max|x| / 127`,
///   so each term errs by at most `|w| * sx / 2`.
/// - LUT formats: each int8 table entry errs by at most `ts / 2` (`ts = max over
///   the group's 4-column sets of sum |x| / 127`); an entry of plane `k` is
///   weighted `2^k / 2`, so a 4-column set errs by at most `(2^b - 1) ts / 4`
///   times the group's weight scale `s`.
fn want_and_tol(f: WeightFormat, p: &Problem, d: &Data, r: usize) -> (f64, f64) {
    let cols = p.cols;
    let wr = &d.deq[r * cols..(r + 1) * cols];
    let b = d.bias.as_ref().map_or(0.0, |b| f64::from(b[r]));
    let want: f64 = wr
        .iter()
        .zip(&d.x)
        .map(|(&w, &x)| f64::from(w) * f64::from(x))
        .sum::<f64>()
        + b;
    let mag: f64 = wr
        .iter()
        .zip(&d.x)
        .map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs())
        .sum::<f64>()
        + b.abs();
    let tol = match f {
        WeightFormat::F32 | WeightFormat::F16 => rel(cols) * mag,
        WeightFormat::I8Row | WeightFormat::Q4_0 | WeightFormat::Q8_0 => {
            let mut t = 0.0;
            for (wb, xb) in wr.chunks(32).zip(d.x.chunks(32)) {
                let sx = xb.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs())) / 127.0;
                t += wb.iter().map(|&w| f64::from(w).abs()).sum::<f64>() * sx / 2.0;
            }
            t * 1.001 + rel(cols) * mag * 2.0
        }
        _ => {
            let g = f.group().unwrap();
            let levels = f64::from((1u32 << f.bits()) - 1);
            let mut t = 0.0;
            let mut fl = mag;
            for (gi, xg) in d.x.chunks(g).enumerate() {
                let s = f64::from(quant::lut_scale(f, p.rows, cols, &d.packed, r, gi).unwrap());
                let ts = xg
                    .chunks(4)
                    .map(|a| a.iter().map(|&v| f64::from(v).abs()).sum::<f64>())
                    .fold(0.0, f64::max)
                    / 127.0;
                t += s * (g / 4) as f64 * levels * ts / 4.0;
                fl +=
                    s * 2.0 * (levels + 1.0) * xg.iter().map(|&v| f64::from(v).abs()).sum::<f64>();
            }
            t * 1.001 + rel(cols) * fl
        }
    };
    (want, tol)
}

fn check_reference(k: &dyn QMatVec, p: &Problem) -> Result<(), TestCaseError> {
    let f = k.format();
    let d = data(f, p);
    let mut y = vec![f32::NAN; p.rows];
    k.run(
        p.rows,
        p.cols,
        &d.packed,
        &d.x,
        d.bias.as_deref(),
        &mut y,
        &mut scratch(f, p.cols),
    );
    for (r, &got) in y.iter().enumerate() {
        let (want, tol) = want_and_tol(f, p, &d, r);
        prop_assert!(
            (f64::from(got) - want).abs() <= tol,
            "{} row {r}: got {got}, want {want}, tol {tol}",
            k.name()
        );
    }
    Ok(())
}

fn generic_of(f: WeightFormat) -> &'static dyn QMatVec {
    &generic::KERNELS[f.id() as usize - 1]
}

fn bits(y: &[f32]) -> Vec<u32> {
    y.iter().map(|v| v.to_bits()).collect()
}

/// Outputs and integer parts identical to the generic kernel of the format.
fn check_vs_generic(k: &dyn QMatVec, p: &Problem) -> Result<(), TestCaseError> {
    let f = k.format();
    let g = generic_of(f);
    let d = data(f, p);
    let (rows, cols) = (p.rows, p.cols);
    let mut y = vec![f32::NAN; rows];
    let mut yg = vec![0.0f32; rows];
    k.run(
        rows,
        cols,
        &d.packed,
        &d.x,
        d.bias.as_deref(),
        &mut y,
        &mut scratch(f, cols),
    );
    g.run(
        rows,
        cols,
        &d.packed,
        &d.x,
        d.bias.as_deref(),
        &mut yg,
        &mut scratch(f, cols),
    );
    prop_assert_eq!(
        bits(&y),
        bits(&yg),
        "{} vs {}: {:?} vs {:?}",
        k.name(),
        g.name(),
        y,
        yg
    );
    let n = rows * f.int_parts_per_row(cols);
    let mut ip = vec![i32::MIN; n];
    let mut ipg = vec![i32::MAX; n];
    let has = k.integer_parts(rows, cols, &d.packed, &d.x, &mut scratch(f, cols), &mut ip);
    let has_g = g.integer_parts(rows, cols, &d.packed, &d.x, &mut scratch(f, cols), &mut ipg);
    prop_assert_eq!(has, has_g);
    if has {
        prop_assert_eq!(ip, ipg, "{} integer parts", k.name());
    }
    Ok(())
}

/// `run_batch` equals one `run` per row; reused scratch does not matter, nor
/// does extra scratch (q4_0 / q8_0 take more tokens per pass with it: `extra`
/// adds room for `5 extra` more).
fn check_batch(k: &dyn QMatVec, p: &Problem, n: usize, extra: usize) -> Result<(), TestCaseError> {
    let f = k.format();
    let d = data(f, p);
    let (rows, cols) = (p.rows, p.cols);
    let mut rng = Rng(p.seed ^ 0x5555);
    let xs = values(&mut rng, n * cols, p.xdist.wrapping_add(1));
    let mut ys = vec![f32::NAN; n * rows];
    let mut s = scratch(f, cols);
    s.resize(s.len() + 5 * extra * f.q_token_bytes(cols), 0x5A);
    k.run_batch(
        rows,
        cols,
        &d.packed,
        n,
        &xs,
        d.bias.as_deref(),
        &mut ys,
        &mut s,
    );
    for b in 0..n {
        let mut y = vec![f32::NAN; rows];
        k.run(
            rows,
            cols,
            &d.packed,
            &xs[b * cols..(b + 1) * cols],
            d.bias.as_deref(),
            &mut y,
            &mut s,
        );
        prop_assert_eq!(bits(&y), bits(&ys[b * rows..(b + 1) * rows]));
    }
    Ok(())
}

/// Running tiles `[0, cut)` and `[cut, n)` as two matrices gives the same rows.
fn check_tile_split(k: &dyn QMatVec, p: &Problem, cut: usize) -> Result<(), TestCaseError> {
    let f = k.format();
    let (rows, cols) = (p.rows, p.cols);
    let rt = f.row_tile();
    let tiles = rows.div_ceil(rt);
    if tiles < 2 {
        return Ok(());
    }
    let cut = 1 + cut % (tiles - 1);
    let d = data(f, p);
    let mut y = vec![0.0f32; rows];
    k.run(
        rows,
        cols,
        &d.packed,
        &d.x,
        d.bias.as_deref(),
        &mut y,
        &mut scratch(f, cols),
    );
    let split = cut * f.tile_bytes(cols);
    let ra = cut * rt;
    let mut ya = vec![0.0f32; ra];
    let mut yb = vec![0.0f32; rows - ra];
    let (ba, bb) = match &d.bias {
        Some(b) => (Some(&b[..ra]), Some(&b[ra..])),
        None => (None, None),
    };
    k.run(
        ra,
        cols,
        &d.packed[..split],
        &d.x,
        ba,
        &mut ya,
        &mut scratch(f, cols),
    );
    k.run(
        rows - ra,
        cols,
        &d.packed[split..],
        &d.x,
        bb,
        &mut yb,
        &mut scratch(f, cols),
    );
    ya.extend_from_slice(&yb);
    prop_assert_eq!(bits(&y), bits(&ya));
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- named cases

/// Accumulator extremes: all-ones activations make every table's extreme
/// entries +-127; weights at the top (bottom) level select them in every plane,
/// so int4 g64 reaches `16 * 15 * 127 = 30480` in magnitude (the i16 bound).
fn accumulator_extremes(k: &dyn QMatVec) {
    let f = k.format();
    let (rows, cols) = (19, 2 * f.group().unwrap_or(32) + 3);
    for (sign, level) in [(1.0f32, 1.0f32), (-1.0, -1.0)] {
        // Symmetric: +-amax map to the extreme levels; asymmetric: a constant
        // row has range [0, v] (or [v, 0]) and maps to the top (bottom) level.
        let w = vec![level; rows * cols];
        let x = vec![sign; cols];
        let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
        quantize(f, rows, cols, &w, &mut packed).unwrap();
        let mut y = vec![0.0f32; rows];
        k.run(rows, cols, &packed, &x, None, &mut y, &mut scratch(f, cols));
        let want = f64::from(level * sign) * cols as f64;
        for &v in &y {
            assert!(
                (f64::from(v) - want).abs() <= 1e-3 * want.abs(),
                "{}: {v} vs {want}",
                k.name()
            );
        }
        let n = rows * f.int_parts_per_row(cols);
        let mut ip = vec![0i32; n];
        if k.integer_parts(rows, cols, &packed, &x, &mut scratch(f, cols), &mut ip) && f.is_lut() {
            let g = f.group().unwrap();
            let extreme = (g / 4) as i32 * ((1 << f.bits()) - 1) * 127;
            let full = ip
                .chunks(n / rows)
                .all(|r| r[0].abs() == extreme && r[1].abs() == extreme);
            assert!(full, "{}: {:?}", k.name(), &ip[..2]);
        }
    }
}

/// q4_0 / q8_0 at the integer bound: GGUF blocks (repacked) whose quants are
/// all the extreme `-8` / `-128` (and `+7` / `+127`) against activations at
/// `+-127` reach `|acc| = 32 * 8 * 127 = 32512` (q4_0) and
/// `32 * 128 * 127 = 520192` (q8_0) per block, the bounds the kernels prove.
fn gguf_extremes(k: &dyn QMatVec) {
    let f = k.format();
    if !f.is_gguf_block() {
        return;
    }
    let (rows, cols) = (37, 96);
    let nb = cols / 32;
    for (qv, sign) in [(-128i32, 1.0f32), (-128, -1.0), (127, 1.0), (127, -1.0)] {
        let gb = quant::gguf_block_bytes(f);
        let mut gguf = vec![0u8; rows * nb * gb];
        for blk in gguf.chunks_exact_mut(gb) {
            blk[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
            if f == WeightFormat::Q4_0 {
                let nib = if qv < 0 { 0u8 } else { 15 };
                blk[2..].fill(nib | nib << 4);
            } else {
                blk[2..].fill(qv as i8 as u8);
            }
        }
        let sq = if f == WeightFormat::Q4_0 {
            if qv < 0 {
                -8
            } else {
                7
            }
        } else {
            qv
        };
        let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
        quant::repack_gguf(f, rows, cols, &gguf, &mut packed).unwrap();
        let x = vec![sign; cols];
        let mut ip = vec![0i32; rows * nb];
        assert!(k.integer_parts(rows, cols, &packed, &x, &mut scratch(f, cols), &mut ip));
        let want = 32 * sq * 127 * sign as i32;
        assert!(
            ip.iter().all(|&v| v == want),
            "{}: {:?} want {want}",
            k.name(),
            &ip[..3]
        );
        let mut y = vec![0.0f32; rows];
        k.run(rows, cols, &packed, &x, None, &mut y, &mut scratch(f, cols));
        let exact = 0.5 * sq as f32 * sign * cols as f32;
        assert!(
            y.iter().all(|&v| v == exact),
            "{}: {y:?} vs {exact}",
            k.name()
        );
    }
}

/// Zero rows or columns: outputs are the bias (or 0); nothing is read.
fn empty_shapes(k: &dyn QMatVec) {
    let f = k.format();
    let mut y: [f32; 0] = [];
    k.run(0, 5, &[], &[1.0; 5], None, &mut y, &mut scratch(f, 5));
    let mut y = [f32::NAN; 3];
    let packed = vec![0u8; f.packed_bytes(3, 0)];
    k.run(
        3,
        0,
        &packed,
        &[],
        Some(&[1.0, -2.0, 0.5]),
        &mut y,
        &mut scratch(f, 0),
    );
    assert_eq!(y, [1.0, -2.0, 0.5], "{}", k.name());
}

/// A NaN activation makes the outputs that read it NaN, never panics.
fn nan_activation(k: &dyn QMatVec) {
    let f = k.format();
    let (rows, cols) = (17, 40);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7) % 13) as f32 - 6.0)
        .collect();
    let mut x = vec![0.5f32; cols];
    x[3] = f32::NAN;
    let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
    quantize(f, rows, cols, &w, &mut packed).unwrap();
    let mut y = vec![0.0f32; rows];
    k.run(rows, cols, &packed, &x, None, &mut y, &mut scratch(f, cols));
    assert!(y.iter().all(|v| v.is_nan()), "{}: {y:?}", k.name());
}

macro_rules! qmatvec_kernel_tests {
    ($name:ident, $cond:expr, $kernel:expr) => {
        mod $name {
            use super::*;

            fn enabled() -> bool {
                $cond
            }

            fn kernel() -> &'static dyn QMatVec {
                $kernel
            }

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn matches_dequantized_reference(p in problem()) {
                    if enabled() {
                        check_reference(kernel(), &p)?;
                    }
                }

                #[test]
                fn matches_generic_bit_exactly(p in problem()) {
                    if enabled() {
                        check_vs_generic(kernel(), &p)?;
                    }
                }

                #[test]
                fn batch_matches_single(p in problem(), n in 1usize..=20, extra in 0usize..3) {
                    if enabled() {
                        check_batch(kernel(), &p, n, extra)?;
                    }
                }

                #[test]
                fn tile_split_matches_whole(p in problem(), cut in 0usize..8) {
                    if enabled() {
                        check_tile_split(kernel(), &p, cut)?;
                    }
                }
            }

            #[test]
            fn accumulator_extremes() {
                if enabled() && kernel().format() != WeightFormat::F32 {
                    super::accumulator_extremes(kernel());
                }
            }

            #[test]
            fn gguf_extremes() {
                if enabled() {
                    super::gguf_extremes(kernel());
                }
            }

            #[test]
            fn empty_shapes() {
                if enabled() {
                    super::empty_shapes(kernel());
                }
            }

            #[test]
            fn nan_activation() {
                if enabled() {
                    super::nan_activation(kernel());
                }
            }

            #[test]
            fn format_and_name_agree() {
                let k = kernel();
                assert!(k.name().ends_with(k.format().name()), "{}", k.name());
            }
        }
    };
}

qmatvec_kernel_tests!(generic_f32, true, &generic::KERNELS[0]);
qmatvec_kernel_tests!(generic_f16, true, &generic::KERNELS[1]);
qmatvec_kernel_tests!(generic_i8row, true, &generic::KERNELS[2]);
qmatvec_kernel_tests!(generic_i4g32, true, &generic::KERNELS[3]);
qmatvec_kernel_tests!(generic_i4g64, true, &generic::KERNELS[4]);
qmatvec_kernel_tests!(generic_i2g32, true, &generic::KERNELS[5]);
qmatvec_kernel_tests!(generic_i2g64, true, &generic::KERNELS[6]);
qmatvec_kernel_tests!(generic_i4g32z, true, &generic::KERNELS[7]);
qmatvec_kernel_tests!(generic_i4g64z, true, &generic::KERNELS[8]);
qmatvec_kernel_tests!(generic_i2g32z, true, &generic::KERNELS[9]);
qmatvec_kernel_tests!(generic_q4_0, true, &generic::KERNELS[11]);
qmatvec_kernel_tests!(generic_q8_0, true, &generic::KERNELS[12]);
qmatvec_kernel_tests!(generic_i2g64z, true, &generic::KERNELS[10]);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use taskpath_cpu::qmatvec::x86_64 as k;

    fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    fn avx2_f16c() -> bool {
        avx2() && std::arch::is_x86_feature_detected!("f16c")
    }

    qmatvec_kernel_tests!(avx2_f16, avx2_f16c(), &k::F16);
    qmatvec_kernel_tests!(avx2_i8row, avx2(), &k::I8ROW);
    qmatvec_kernel_tests!(avx2_i4g32, avx2_f16c(), &k::I4G32);
    qmatvec_kernel_tests!(avx2_i4g64, avx2_f16c(), &k::I4G64);
    qmatvec_kernel_tests!(avx2_i2g32, avx2_f16c(), &k::I2G32);
    qmatvec_kernel_tests!(avx2_i2g64, avx2_f16c(), &k::I2G64);
    qmatvec_kernel_tests!(avx2_i4g32z, avx2_f16c(), &k::I4G32Z);
    qmatvec_kernel_tests!(avx2_i4g64z, avx2_f16c(), &k::I4G64Z);
    qmatvec_kernel_tests!(avx2_i2g32z, avx2_f16c(), &k::I2G32Z);
    qmatvec_kernel_tests!(avx2_i2g64z, avx2_f16c(), &k::I2G64Z);
    qmatvec_kernel_tests!(avx2_q4_0, avx2_f16c(), &k::Q4_0);
    qmatvec_kernel_tests!(avx2_q8_0, avx2_f16c(), &k::Q8_0);

    fn avx512vnni() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    qmatvec_kernel_tests!(avx512vnni_q4_0, avx512vnni(), &k::AVX512_Q4_0);
    qmatvec_kernel_tests!(avx512vnni_q8_0, avx512vnni(), &k::AVX512_Q8_0);

    #[test]
    fn every_x86_kernel_is_tested_above() {
        assert_eq!(k::KERNELS.len(), 14);
    }

    /// Where the CPU has AVX-512 VNNI, the table serves q4_0 / q8_0 with it.
    #[test]
    fn best_picks_avx512_for_gguf_blocks() {
        if !avx512vnni() || taskpath_cpu::qmatvec::force_generic_requested() {
            return;
        }
        let best = Kernels::best();
        for f in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
            let name = best.kernel(f).unwrap().name();
            assert_eq!(name, format!("x86_64_avx512vnni_{}", f.name()), "{best}");
        }
        let no512 = CpuFeatures {
            avx512vnni: false,
            ..CpuFeatures::host()
        };
        let k = Kernels::for_features(no512);
        assert_eq!(
            k.kernel(WeightFormat::Q4_0).unwrap().name(),
            "x86_64_avx2_q4_0"
        );
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use taskpath_cpu::qmatvec::aarch64 as k;

    fn neon() -> bool {
        std::arch::is_aarch64_feature_detected!("neon")
    }

    qmatvec_kernel_tests!(neon_f16, neon(), &k::F16);
    qmatvec_kernel_tests!(neon_i8row, neon(), &k::I8ROW);
    qmatvec_kernel_tests!(neon_i4g32, neon(), &k::I4G32);
    qmatvec_kernel_tests!(neon_i4g64, neon(), &k::I4G64);
    qmatvec_kernel_tests!(neon_i2g32, neon(), &k::I2G32);
    qmatvec_kernel_tests!(neon_i2g64, neon(), &k::I2G64);
    qmatvec_kernel_tests!(neon_i4g32z, neon(), &k::I4G32Z);
    qmatvec_kernel_tests!(neon_i4g64z, neon(), &k::I4G64Z);
    qmatvec_kernel_tests!(neon_i2g32z, neon(), &k::I2G32Z);
    qmatvec_kernel_tests!(neon_i2g64z, neon(), &k::I2G64Z);
    qmatvec_kernel_tests!(neon_q4_0, neon(), &k::Q4_0);
    qmatvec_kernel_tests!(neon_q8_0, neon(), &k::Q8_0);

    #[test]
    fn every_neon_kernel_is_tested_above() {
        assert_eq!(k::KERNELS.len(), 12);
    }

    /// The point of the qemu run: NEON kernels are what `best()` serves here.
    #[test]
    fn best_picks_neon() {
        assert!(neon());
        if taskpath_cpu::qmatvec::force_generic_requested() {
            return;
        }
        let best = Kernels::best();
        for f in ALL {
            let name = best.kernel(f).unwrap().name();
            if f == WeightFormat::F32 {
                assert_eq!(name, "generic_f32");
            } else {
                assert_eq!(name, format!("aarch64_neon_{}", f.name()), "{best}");
            }
        }
    }
}

// ---------------------------------------------------------------- the table

#[test]
fn generic_table_is_all_generic() {
    let g = Kernels::generic();
    for f in ALL {
        let k = g.kernel(f).unwrap();
        assert_eq!(k.format(), f);
        assert_eq!(k.name(), format!("generic_{}", f.name()));
        assert!(k.requires().is_empty() && k.is_supported_here());
    }
    let forced = Kernels::select(true);
    for f in ALL {
        assert!(forced.kernel(f).unwrap().requires().is_empty());
    }
}

#[test]
fn best_plugs_what_the_host_supports() {
    let host = CpuFeatures::host();
    let k = Kernels::for_features(host);
    for f in ALL {
        let kern = k.kernel(f).unwrap();
        assert_eq!(kern.format(), f);
        assert!(kern.is_supported_here());
        let simd = f != WeightFormat::F32
            && ((cfg!(target_arch = "x86_64") && host.avx2 && host.f16c)
                || (cfg!(target_arch = "aarch64") && host.neon));
        assert_eq!(!kern.requires().is_empty(), simd, "{f}: {}", kern.name());
    }
}

#[test]
fn missing_features_are_named() {
    let k = Kernels::for_features(CpuFeatures::NONE);
    // Falling back to generic stays allowed...
    assert!(k.kernel(WeightFormat::I4G32).unwrap().requires().is_empty());
    // ...unless the caller refuses fallbacks.
    let strict = k.simd_only();
    assert!(
        strict.kernel(WeightFormat::F32).is_ok(),
        "f32 has no SIMD kernel to miss"
    );
    let expect = if cfg!(target_arch = "x86_64") {
        Some("avx2")
    } else if cfg!(target_arch = "aarch64") {
        Some("neon")
    } else {
        None
    };
    for f in ALL.into_iter().filter(|&f| f != WeightFormat::F32) {
        match (strict.kernel(f), expect) {
            (Err(e), Some(m)) => {
                assert_eq!((e.format, e.missing_feature), (f, m));
                let msg = e.to_string();
                assert!(msg.contains(f.name()) && msg.contains(m), "{msg}");
                assert!(msg.contains(&format!("format id {}", f.id())), "{msg}");
            }
            (Ok(_), None) => {}
            (r, e) => panic!("{f}: {r:?} with expected missing {e:?}"),
        }
    }
    let listing = strict.to_string();
    assert!(listing.contains("f32: generic_f32"), "{listing}");
}

#[test]
fn force_generic_values() {
    use taskpath_cpu::qmatvec::force_generic_value as v;
    assert!(!v(None));
    for s in ["", "0", "false", "FALSE", "no", "off", " 0 "] {
        assert!(!v(Some(s)), "{s:?}");
    }
    for s in ["1", "true", "yes", "on", "generic"] {
        assert!(v(Some(s)), "{s:?}");
    }
}

// ---------------------------------------------------------------- formats

#[test]
fn format_ids_are_stable() {
    let expect = [
        (1, "f32", 32),
        (2, "f16", 16),
        (3, "i8row", 8),
        (4, "i4g32", 4),
        (5, "i4g64", 4),
        (6, "i2g32", 2),
        (7, "i2g64", 2),
        (8, "i4g32z", 4),
        (9, "i4g64z", 4),
        (10, "i2g32z", 2),
        (11, "i2g64z", 2),
        (12, "q4_0", 4),
        (13, "q8_0", 8),
    ];
    for (f, (id, name, bits)) in ALL.into_iter().zip(expect) {
        assert_eq!((f.id(), f.name(), f.bits()), (id, name, bits));
        assert_eq!(WeightFormat::from_u16(id), Some(f));
    }
    for id in [0u16, 14, 255, u16::MAX] {
        assert_eq!(WeightFormat::from_u16(id), None);
    }
}

#[test]
fn packed_sizes_by_hand() {
    use WeightFormat as F;
    assert_eq!(F::F32.packed_bytes(3, 5), 60);
    assert_eq!(F::F16.packed_bytes(9, 3), 2 * 8 * 3 * 2);
    // 8 scales (32 bytes) + 8 rows of 32 padded columns.
    assert_eq!(F::I8Row.packed_bytes(8, 30), 32 + 256);
    assert_eq!(F::I8Row.packed_bytes(9, 33), 2 * (32 + 8 * 64));
    // 16 rows x 32 columns x 4 bits = 256 bytes + 16 f16 scales.
    assert_eq!(F::I4G32.packed_bytes(16, 32), 288);
    assert_eq!(F::I4G32.packed_bytes(17, 33), 2 * 2 * 288);
    assert_eq!(F::I4G64.packed_bytes(16, 64), 512 + 32);
    assert_eq!(F::I2G32.packed_bytes(16, 32), 128 + 32);
    assert_eq!(F::I2G64Z.packed_bytes(16, 64), 256 + 32 + 32);
    assert_eq!(F::I4G32Z.packed_bytes(1, 1), 256 + 64);
    assert_eq!(F::I4G32.scratch_bytes(33), 16 * 16 + 2 * 8);
    assert_eq!(F::I8Row.scratch_bytes(33), 64 + 8);
    assert_eq!(F::F16.scratch_bytes(100), 0);
    assert_eq!(F::I4G32.checked_packed_bytes(usize::MAX, 64), None);
    // GGUF blocks: 16 rows x 32 columns per record; 18 (34) bytes per 32 weights, as GGUF.
    assert_eq!(F::Q4_0.packed_bytes(16, 32), 256 + 32);
    assert_eq!(F::Q4_0.packed_bytes(17, 33), 2 * 2 * 288);
    assert_eq!(F::Q8_0.packed_bytes(16, 64), 2 * (512 + 32));
    assert_eq!(F::Q4_0.packed_bytes(2816, 1024) * 32, 2816 * 1024 * 18);
    assert_eq!(F::Q8_0.packed_bytes(1024, 2816) * 32, 1024 * 2816 * 34);
    // 8 tokens of K int8 activations + an f32 scale and an i32 offset per block.
    assert_eq!(F::Q4_0.scratch_bytes(33), 8 * (64 + 2 * 8));
    assert_eq!(F::Q8_0.int_parts_per_row(65), 3);
    for f in ALL {
        assert_eq!(f.packed_bytes(0, 100), 0);
        assert_eq!(f.packed_bytes(2 * f.row_tile(), 7), 2 * f.tile_bytes(7));
    }
}

/// The documented int4 / int2 bit-plane layout, re-derived here from the spec.
#[test]
fn lut_layout_by_hand() {
    for f in [
        WeightFormat::I4G32,
        WeightFormat::I2G32,
        WeightFormat::I4G64Z,
    ] {
        let bits = f.bits();
        let g = f.group().unwrap();
        let levels = (1u32 << bits) - 1;
        let (rows, cols) = (16, g);
        // q = (i + 3c) mod 2^b; every row has both extremes, so the symmetric
        // scale is exactly 1 (levels are q - c) and the asymmetric zero point is c.
        let q = |i: usize, c: usize| ((i + 3 * c) % (levels as usize + 1)) as u8;
        let center = levels as f32 / 2.0;
        let w: Vec<f32> = (0..rows * cols)
            .map(|n| f32::from(q(n / cols, n % cols)) - center)
            .collect();
        let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
        quantize(f, rows, cols, &w, &mut packed).unwrap();
        let idx = |i: usize, c0: usize, k: u32| {
            (0..4).fold(0u8, |a, e| a | (((q(i, c0 + e) >> k) & 1) << e))
        };
        let wbytes = 16 * g * bits as usize / 8;
        for (b, block) in packed[..wbytes].chunks(32).enumerate() {
            for (p, &byte) in block.iter().enumerate() {
                let (i, j) = (p / 2, (p % 2) as u32);
                let (lo, hi) = if bits == 4 {
                    (idx(i, 4 * b, j), idx(i, 4 * b, j + 2))
                } else {
                    (idx(i, 8 * b, j), idx(i, 8 * b + 4, j))
                };
                assert_eq!(byte, lo | hi << 4, "{f} block {b} byte {p}");
            }
        }
        for i in 0..16 {
            let s = u16::from_le_bytes([packed[wbytes + 2 * i], packed[wbytes + 2 * i + 1]]);
            assert_eq!(s, 0x3C00, "{f}: scale of row {i} is f16 1.0");
            if f.has_zero_point() {
                let at = wbytes + 32 + 2 * i;
                let z = half::f16::from_bits(u16::from_le_bytes([packed[at], packed[at + 1]]));
                assert_eq!(z.to_f32(), center, "{f}: zero point of row {i}");
            }
        }
        let mut deq = vec![0.0f32; rows * cols];
        dequantize(f, rows, cols, &packed, &mut deq).unwrap();
        assert_eq!(deq, w, "{f}");
    }
}

#[test]
fn f16_and_i8_layout_by_hand() {
    let (rows, cols) = (9, 3);
    let w: Vec<f32> = (0..rows * cols).map(|n| n as f32).collect();
    let mut p = vec![0u8; WeightFormat::F16.packed_bytes(rows, cols)];
    quantize(WeightFormat::F16, rows, cols, &w, &mut p).unwrap();
    // Tile 0, column 1, row 2 is at 2 * (1 * 8 + 2); tile 1 starts at 16 * cols.
    let at = |o: usize| half::f16::from_bits(u16::from_le_bytes([p[o], p[o + 1]])).to_f32();
    assert_eq!(at(2 * (8 + 2)), w[2 * cols + 1]);
    assert_eq!(at(16 * cols + 2 * (2 * 8)), w[8 * cols + 2]);
    assert_eq!(at(16 * cols + 2 * (2 * 8 + 1)), 0.0, "padding row");

    let w = [127.0f32, -63.5, 0.0, 1.0, 2.0, -254.0];
    let mut p = vec![0xFFu8; WeightFormat::I8Row.packed_bytes(2, 3)];
    quantize(WeightFormat::I8Row, 2, 3, &w, &mut p).unwrap();
    assert_eq!(&p[0..4], &1.0f32.to_le_bytes());
    assert_eq!(&p[4..8], &2.0f32.to_le_bytes());
    assert_eq!(&p[8..32], &[0u8; 24], "padding rows have scale 0");
    // Row 0: 127, -63.5 -> -64 (ties to even), 0; row 1: 0.5 -> 0 (ties to even), 1, -127.
    assert_eq!(&p[32..35], &[127, (-64i8) as u8, 0]);
    assert_eq!(&p[35..64], &[0u8; 29], "padding columns");
    assert_eq!(&p[64..67], &[0, 1, (-127i8) as u8]);
}

#[test]
fn f32_kernel_equals_the_f32_reference() {
    let (rows, cols) = (13, 45);
    let mut rng = Rng(7);
    let w = values(&mut rng, rows * cols, 0);
    let x = values(&mut rng, cols, 1);
    let b = values(&mut rng, rows, 0);
    let mut p = vec![0u8; WeightFormat::F32.packed_bytes(rows, cols)];
    quantize(WeightFormat::F32, rows, cols, &w, &mut p).unwrap();
    let mut y = vec![0.0f32; rows];
    let mut want = vec![0.0f32; rows];
    for bias in [None, Some(&b[..])] {
        generic::KERNELS[0].run(rows, cols, &p, &x, bias, &mut y, &mut []);
        taskpath_cpu::f32::matvec(&w, &x, bias, &mut want);
        assert_eq!(bits(&y), bits(&want));
    }
}

#[test]
fn quantize_rejects_bad_input() {
    use quant::QuantError;
    let f = WeightFormat::I4G32;
    let mut out = vec![0u8; f.packed_bytes(2, 3)];
    assert!(matches!(
        quantize(f, 2, 3, &[0.0; 5], &mut out),
        Err(QuantError::Length {
            what: "weights",
            ..
        })
    ));
    assert_eq!(
        quantize(f, 2, 3, &[0.0, 1.0, f32::INFINITY, 0.0, 0.0, 0.0], &mut out),
        Err(QuantError::NonFinite { index: 2 })
    );
    assert_eq!(
        quantize(WeightFormat::F16, 1, 2, &[1.0, 1e6], &mut [0u8; 32]),
        Err(QuantError::OutOfRange { index: 1 })
    );
    assert_eq!(
        quantize(f, 1, 2, &[1e7, 0.0], &mut vec![0u8; f.packed_bytes(1, 2)]),
        Err(QuantError::OutOfRange { index: 0 })
    );
    let mut small = vec![0.0f32; 5];
    assert!(matches!(
        dequantize(f, 2, 3, &out, &mut small),
        Err(QuantError::Length { what: "out", .. })
    ));
}

proptest! {
    #![proptest_config(config())]

    /// `|w - deq(q(w))|` within the documented bound, per format.
    #[test]
    fn quantize_round_trip_bounds(p in problem()) {
        let mut rng = Rng(p.seed);
        let w = values(&mut rng, p.rows * p.cols, p.wdist);
        for f in ALL {
            let mut packed = vec![0u8; f.packed_bytes(p.rows, p.cols)];
            quantize(f, p.rows, p.cols, &w, &mut packed).unwrap();
            let mut again = vec![0u8; packed.len()];
            quantize(f, p.rows, p.cols, &w, &mut again).unwrap();
            prop_assert!(packed == again, "deterministic");
            let mut deq = vec![0.0f32; w.len()];
            dequantize(f, p.rows, p.cols, &packed, &mut deq).unwrap();
            for (n, (&wv, &dv)) in w.iter().zip(&deq).enumerate() {
                let (r, c) = (n / p.cols, n % p.cols);
                let err = (f64::from(wv) - f64::from(dv)).abs();
                let tol = match f {
                    WeightFormat::F32 => 0.0,
                    WeightFormat::F16 => f64::from(wv).abs() * 2f64.powi(-11) + 2f64.powi(-25),
                    WeightFormat::I8Row => {
                        let s = quant::i8_row_scale(p.rows, p.cols, &packed, r).unwrap();
                        f64::from(s) * 0.5 * (1.0 + 1e-4)
                    }
                    WeightFormat::Q4_0 | WeightFormat::Q8_0 => {
                        // ggml rounds with the f32 scale d32 (q4_0: max / -8,
                        // q8_0: amax / 127) and stores f16(d32): error <= d32 / 2
                        // (q8_0) or d32 (q4_0, whose top level clamps at +7),
                        // plus the largest |q| times |d32 - d16|.
                        let row = &w[r * p.cols..(r + 1) * p.cols];
                        let grp = &row[(c / 32) * 32..((c / 32 + 1) * 32).min(p.cols)];
                        let amax = grp.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
                        let d16 = f64::from(quant::q_scale(f, p.rows, p.cols, &packed, r, c / 32).unwrap()).abs();
                        let (d32, half, qmax) = if f == WeightFormat::Q4_0 {
                            (amax / 8.0, 1.0, 8.0)
                        } else {
                            (amax / 127.0, 0.5, 128.0)
                        };
                        d32 * half * (1.0 + 1e-5) + qmax * (d32 - d16).abs() + 1e-12
                    }
                    _ => {
                        let g = f.group().unwrap();
                        let s = quant::lut_scale(f, p.rows, p.cols, &packed, r, c / g).unwrap();
                        // Largest magnitude in the group: the scale may not be wasteful.
                        let row = &w[r * p.cols..(r + 1) * p.cols];
                        let grp = &row[(c / g) * g..((c / g + 1) * g).min(p.cols)];
                        let amax = grp.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
                        // Symmetric: amax / c = 2 amax / levels; asymmetric: (hi - lo) / levels.
                        let span = 2.0 * amax;
                        let levels = f64::from((1u32 << f.bits()) - 1);
                        prop_assert!(
                            f64::from(s) <= span / levels * (1.0 + 2f64.powi(-9)) + 1e-7,
                            "{f}: scale {s} for amax {amax}"
                        );
                        f64::from(s) * 0.5 * (1.0 + 1e-4) + 1e-12
                    }
                };
                prop_assert!(err <= tol, "{f} [{r}, {c}]: w {wv} deq {dv} err {err} tol {tol}");
            }
        }
    }
}
