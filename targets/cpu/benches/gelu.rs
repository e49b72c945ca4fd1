//! Exact-GELU throughput: the scalar `f32::gelu` (libm `erfcf` per element)
//! against every vectorised variant this CPU runs, in the same process.
//!
//! `cargo bench -p taskpath-cpu --bench gelu` prints a Markdown table: for
//! n = 128 and 1024 (the bundled model's hidden widths are 128-512), ns per
//! element of the scalar code and of each variant, and the ratio
//! scalar / variant; then the same for the softmax (`Gelu::softmax`, whose
//! exponentials are the same libm-exact lanes) at n = 8, 32 and 256. Inputs are N(0, 2)-like activations (the range a GELU
//! sees; every branch of `erfcf` occurs). Timing is the best of 7 rounds of
//! at least `TASKPATH_BENCH_SECS / 7` (default 0.7 s in all) per
//! configuration, scalar and SIMD interleaved round by round.

use std::hint::black_box;
use std::time::Instant;

use taskpath_cpu::f32 as reference;
use taskpath_cpu::gelu::{self, Gelu};

/// Seconds per call of `f`, one round of at least `secs`.
fn secs_per_call(secs: f64, f: &mut impl FnMut()) -> f64 {
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let e = t.elapsed().as_secs_f64();
        if e >= secs {
            return e / n as f64;
        }
        n = if e <= 0.0 {
            n * 16
        } else {
            (n as f64 * (secs / e) * 1.2).ceil() as u64
        };
    }
}

/// One table section: for each `n`, ns per element of `scalar` and of each
/// variant's `simd`, interleaved round by round.
fn section(
    op: &str,
    sizes: &[usize],
    spread: f32,
    variants: &[Gelu],
    scalar_fn: fn(&mut [f32]),
    simd_fn: fn(&Gelu, &mut [f32]),
) {
    let secs: f64 = std::env::var("TASKPATH_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.7);
    let rounds = 7;
    for &n in sizes {
        // A fixed pseudo-random spread over roughly [-spread / 2, spread / 2].
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let xs: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                (u - 0.5) * spread * u.max(0.25)
            })
            .collect();
        let mut buf = xs.clone();
        let per = secs / rounds as f64 / (1 + variants.len()) as f64;
        let mut scalar = f64::INFINITY;
        let mut simd = vec![f64::INFINITY; variants.len()];
        for _ in 0..rounds {
            scalar = scalar.min(secs_per_call(per, &mut || {
                buf.copy_from_slice(&xs);
                scalar_fn(black_box(&mut buf));
            }));
            for (k, t) in variants.iter().zip(&mut simd) {
                *t = t.min(secs_per_call(per, &mut || {
                    buf.copy_from_slice(&xs);
                    simd_fn(k, black_box(&mut buf));
                }));
            }
        }
        let ns = |t: f64| t * 1e9 / n as f64;
        for (k, &t) in variants.iter().zip(&simd) {
            println!(
                "| {op} | {n} | {:.2} | {} | {:.3} | {:.1} |",
                ns(scalar),
                k.name(),
                ns(t),
                scalar / t
            );
        }
    }
}

fn main() {
    let variants: Vec<Gelu> = gelu::arch_kernels()
        .iter()
        .copied()
        .filter(Gelu::is_supported_here)
        .collect();
    println!("| op | n | scalar ns/elem | variant | SIMD ns/elem | scalar / SIMD |");
    println!("|---|---:|---:|---|---:|---:|");
    section(
        "gelu",
        &[128, 1024],
        12.0,
        &variants,
        reference::gelu,
        |k, x| k.gelu(x),
    );
    // Attention scores: 8 tokens (the reference model), 32, a 256-token context.
    section(
        "softmax",
        &[8, 32, 256],
        16.0,
        &variants,
        reference::softmax,
        |k, x| k.softmax(x),
    );
}
