//! The vectorised exact GELU (`taskpath_cpu::gelu`) against the scalar
//! `f32::gelu`, bit for bit, for every variant this CPU runs.
//!
//! The contract (module docs of `gelu`): every non-NaN input gives the
//! scalar result's bits; a NaN input gives a NaN (the scalar code's NaN sign
//! and payload depend on how LLVM orders commutative operands, so they are
//! not a property of the function; the tests count and print NaN bit
//! differences but only require NaN).
//!
//! - `dense_sample_*` (always run): every 4099th bit pattern, special values,
//!   and windows of consecutive bit patterns around every branch boundary of
//!   `erfcf` and of `expf` on `-z*z - 0.5625`, for both signs; plus tails
//!   (lengths 0..40) and the residual form.
//! - `exhaustive_all_f32` (`#[ignore]`: all 2^32 inputs, about a minute per
//!   variant in release on two cores, much longer in debug). Run it with
//!   `cargo test --release -p taskpath-cpu --test gelu -- --ignored --nocapture`.

use taskpath_cpu::f32 as reference;
use taskpath_cpu::gelu::{self, Gelu};
use taskpath_cpu::qmatvec::{CpuFeatures, Kernels};

/// Every compiled variant this CPU runs (the generic one included).
fn kernels() -> Vec<Gelu> {
    let mut v = vec![gelu::GENERIC];
    v.extend(
        gelu::arch_kernels()
            .iter()
            .copied()
            .filter(Gelu::is_supported_here),
    );
    v
}

/// Checks `k` against the scalar code over `xs` (residual `r` if any),
/// panicking on the first contract violation with the input; returns the
/// number of NaN outputs whose bits differ from the scalar NaN's.
fn compare(k: &Gelu, xs: &[f32], r: Option<&[f32]>) -> u64 {
    let mut want = xs.to_vec();
    reference::gelu(&mut want);
    if let Some(r) = r {
        reference::add(r, &mut want);
    }
    let mut got = xs.to_vec();
    match r {
        Some(r) => k.gelu_add(&mut got, r),
        None => k.gelu(&mut got),
    }
    let mut nan_bits = 0;
    for ((&x, &w), &g) in xs.iter().zip(&want).zip(&got) {
        if w.is_nan() {
            assert!(
                g.is_nan(),
                "{}: gelu({x:e} = {:#010x}) = {g:e}, scalar NaN",
                k.name(),
                x.to_bits()
            );
            nan_bits += u64::from(g.to_bits() != w.to_bits());
        } else {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{}: gelu({x:e} = {:#010x}) = {g:e} ({:#010x}), scalar {w:e} ({:#010x})",
                k.name(),
                x.to_bits(),
                g.to_bits(),
                w.to_bits()
            );
        }
    }
    nan_bits
}

/// Thresholds on `|x|`, `x = -t / sqrt 2`, where `erfcf` (and `expf` on
/// `-z*z - 0.5625`) changes branch, as f32 bit patterns.
const X_BOUNDARIES: [u32; 9] = [
    0x2380_0000, // 2^-56: 1 - x
    0x3e80_0000, // 1/4: the two forms of the |x| < 0.84375 result
    0x3f58_0000, // 0.84375: erfc1
    0x3fa0_0000, // 1.25: erfc2
    0x4036_db6d, // 1/0.35: RA/SA -> RB/SB
    0x4115_0a3d, // ~9.3154: expf(-z*z - 0.5625) reaches its underflow branch
    0x4122_bd6f, // ~10.17: expf(-z*z - 0.5625) returns 0
    0x41e0_0000, // 28: the tail constants
    0x7f80_0000, // infinity
];

/// The dense sample: every 4099th pattern, specials, boundary windows.
fn dense_sample() -> Vec<f32> {
    let mut v: Vec<f32> = (0..=u32::MAX / 4099)
        .map(|i| f32::from_bits(i * 4099))
        .collect();
    let specials = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffc1_2345), // negative NaN with payload
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x007f_ffff),
        f32::from_bits(0x807f_ffff),
        f32::MAX,
        f32::MIN,
        1.0,
        -1.0,
        f32::EPSILON,
        2f32.powi(-28),
        2f32.powi(-14),
    ];
    v.extend(specials);
    for &b in &X_BOUNDARIES {
        // t = -x sqrt 2: the window of t around the boundary, both signs.
        let t = f32::from_bits(b) * core::f32::consts::SQRT_2;
        let c = t.to_bits().min(0x7f80_0000);
        for d in 0..4096u32 {
            let bits = c.wrapping_sub(2048).wrapping_add(d);
            if bits <= 0x7f80_0000 {
                v.push(f32::from_bits(bits));
                v.push(-f32::from_bits(bits));
            }
        }
    }
    // The branch thresholds of `erfcf` on x directly (t around b sqrt 2 need
    // not hit them exactly): inputs whose x is the boundary or its neighbours.
    for &b in &X_BOUNDARIES {
        for d in 0..64u32 {
            let x = f32::from_bits(b.wrapping_sub(32).wrapping_add(d));
            let t = x * core::f32::consts::SQRT_2;
            for t in [
                t,
                -t,
                f32::from_bits(t.to_bits() + 1),
                f32::from_bits(t.to_bits() - 1),
            ] {
                v.push(t);
                v.push(-t);
            }
        }
    }
    v
}

#[test]
fn dense_sample_every_variant_matches_scalar() {
    let xs = dense_sample();
    for k in kernels() {
        let nan_bits = compare(&k, &xs, None);
        println!(
            "{}: {} inputs, NaN bit differences: {nan_bits}",
            k.name(),
            xs.len()
        );
    }
}

#[test]
fn dense_sample_residual_form_matches_scalar_then_add() {
    let xs = dense_sample();
    // Residuals: a rotation of the inputs (so specials meet specials too).
    let mut r = xs.clone();
    r.rotate_left(12345);
    for k in kernels() {
        compare(&k, &xs, Some(&r));
    }
}

#[test]
fn tails_and_lengths_match_scalar() {
    let pool = dense_sample();
    for k in kernels() {
        for n in 0..40 {
            for start in [0usize, 1, 777, 100_003] {
                let xs = &pool[start..start + n];
                let r: Vec<f32> = pool[start + 50..start + 50 + n].to_vec();
                compare(&k, xs, None);
                compare(&k, xs, Some(&r));
            }
        }
    }
}

/// Softmax through every variant (the `expf` lanes on `x - max`, the sum in
/// index order, one division per lane) against `f32::softmax`, bit for bit:
/// lengths 0..70 from the dense sample (NaN, infinities and huge values
/// included), attention-like scores, rows with -inf entries, a constant row
/// and scores spread wide enough to underflow to 0. The `expf` lanes
/// themselves match libm on all 2^32 inputs (the crate's unit test
/// `expf_lanes_all`, ignored by default).
#[test]
fn softmax_matches_scalar_bit_for_bit() {
    let pool = dense_sample();
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for n in 0..70 {
        for start in [0usize, 1, 777, 100_003] {
            rows.push(pool[start..start + n].to_vec());
        }
        let mut s = 0x2545_f491u32.wrapping_mul(n as u32 + 1);
        for scale in [0.1f32, 3.0, 40.0, 200.0] {
            rows.push(
                (0..n)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 17;
                        s ^= s << 5;
                        (s as f32 / u32::MAX as f32 - 0.5) * scale
                    })
                    .collect(),
            );
        }
        rows.push(vec![0.25; n]);
        rows.push(
            (0..n)
                .map(|i| {
                    if i % 3 == 1 {
                        f32::NEG_INFINITY
                    } else {
                        i as f32
                    }
                })
                .collect(),
        );
    }
    for k in kernels() {
        for row in &rows {
            let mut want = row.clone();
            reference::softmax(&mut want);
            let mut got = row.clone();
            k.softmax(&mut got);
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()),
                    "{}: softmax of {row:?}: [{i}] = {g:e}, scalar {w:e}",
                    k.name()
                );
            }
        }
    }
}

#[test]
fn table_selects_a_variant_and_runs_it() {
    let xs = dense_sample();
    for table in [
        Kernels::best(),
        Kernels::generic(),
        Kernels::for_features(CpuFeatures::NONE),
    ] {
        let mut want = xs.clone();
        reference::gelu(&mut want);
        let mut got = xs.clone();
        table.gelu_f32(&mut got, None);
        for (w, g) in want.iter().zip(&got) {
            assert!(w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()));
        }
        let mut want: Vec<f32> = xs[..300]
            .iter()
            .filter(|x| !x.is_nan())
            .map(|x| x.clamp(-50.0, 50.0))
            .collect();
        let mut got = want.clone();
        reference::softmax(&mut want);
        table.softmax_f32(&mut got);
        assert_eq!(
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    assert_eq!(Kernels::generic().gelu_kernel().name(), "generic_gelu");
    assert_eq!(
        Kernels::for_features(CpuFeatures::NONE)
            .gelu_kernel()
            .name(),
        "generic_gelu"
    );
    let best = Kernels::for_features(CpuFeatures::host()).gelu_kernel();
    if let Some(k) = gelu::arch_kernels()
        .iter()
        .rev()
        .find(|k| k.is_supported_here())
    {
        assert_eq!(best.name(), k.name());
    }
}

#[test]
#[should_panic(expected = "same length")]
fn residual_length_mismatch_panics() {
    let mut x = [1.0f32; 4];
    gelu::GENERIC.gelu_add(&mut x, &[0.0; 3]);
}

/// All 2^32 inputs through every variant; see the module docs for the command.
#[test]
#[ignore = "all 2^32 inputs: ~1 min per variant in release; run with --release -- --ignored"]
fn exhaustive_all_f32() {
    const BLOCK: u64 = 1 << 16;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    for k in kernels().into_iter().filter(|k| !k.requires().is_empty()) {
        let t0 = std::time::Instant::now();
        let nan_bits: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|th| {
                    s.spawn(move || {
                        let mut xs = vec![0f32; BLOCK as usize];
                        let mut nan_bits = 0;
                        let mut b = th;
                        while b < (1u64 << 32) / BLOCK {
                            for (i, x) in xs.iter_mut().enumerate() {
                                *x = f32::from_bits((b * BLOCK + i as u64) as u32);
                            }
                            nan_bits += compare(&k, &xs, None);
                            b += threads;
                        }
                        nan_bits
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        println!(
            "{}: all 2^32 inputs match the scalar gelu (non-NaN: bits equal; NaN: NaN, \
             {nan_bits} NaN inputs with different NaN bits) in {:.1} s",
            k.name(),
            t0.elapsed().as_secs_f64()
        );
    }
}
