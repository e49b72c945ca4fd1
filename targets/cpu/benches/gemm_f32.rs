//! Small-M f32 GEMM throughput: the selected kernel (and every variant this CPU
//! runs) against the old `f32::matmul_rows` loop, in the same process.
//!
//! `cargo bench -p taskpath-cpu --bench gemm_f32` prints a Markdown table:
//! for each of the bundled model's shapes (M rows x K in x N out) GFLOP/s
//! (`2 M K N` per call) of `f32::matmul_rows` ("old"), of each kernel, and
//! the ratio selected / old. Weights and activations are cache-resident (the
//! model's layers are 1-200 KB); timing is the best of several rounds of at
//! least `TASKPATH_BENCH_SECS / 5` (default 1.0 s in all) per configuration,
//! old and new interleaved round by round so both see the same machine state.
//! The opt-in fast (FMA) kernels this CPU runs are columns too, with the
//! ratio fast / selected (`Kernels::best().with_fast_f32()` vs `Kernels::best()`).

use std::hint::black_box;
use std::time::Instant;

use taskpath_cpu::f32 as reference;
use taskpath_cpu::gemm::{self, F32Gemm};
use taskpath_cpu::qmatvec::{CpuFeatures, Kernels};

/// (M, K, N) of the model's dense f32 layers.
const SHAPES: [(usize, usize, usize); 12] = [
    (1, 128, 128),
    (4, 128, 128),
    (8, 128, 128),
    (16, 128, 128),
    (1, 384, 128),
    (8, 384, 128),
    (8, 128, 32),
    (8, 32, 128),
    (1, 32, 128),
    (8, 128, 10),
    (1, 128, 2),
    (8, 16, 128),
];

/// Calls per second of `f`, best of `rounds` rounds of at least `secs` each.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let e = t.elapsed().as_secs_f64();
        if e >= secs {
            return n as f64 / e;
        }
        n = if e <= 0.0 {
            n * 16
        } else {
            (n as f64 * (secs / e) * 1.2).ceil() as u64
        };
    }
}

fn main() {
    let secs: f64 = std::env::var("TASKPATH_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let rounds = 5;
    let host = CpuFeatures::host();
    let selected = Kernels::best().f32_gemm();
    let fast = Kernels::best().with_fast_f32().f32_gemm();
    let mut kernels: Vec<F32Gemm> = vec![gemm::GENERIC];
    kernels.extend(
        gemm::arch_kernels()
            .iter()
            .filter(|k| k.is_supported_here()),
    );
    kernels.extend(
        gemm::fast_kernels()
            .iter()
            .filter(|k| k.is_supported_here()),
    );
    println!("host features: {host:?}");
    println!("selected: {}", selected.name());
    println!("fast (with_fast_f32): {}\n", fast.name());
    print!("| M | K | N | old matmul_rows GFLOP/s |");
    for k in &kernels {
        print!(" {} |", k.name());
    }
    println!(" selected / old | fast / selected |");
    print!("|---:|---:|---:|---:|");
    for _ in &kernels {
        print!("---:|");
    }
    println!("---:|---:|");
    for &(m, k, n) in &SHAPES {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 / 16.0).collect();
        let mut y = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let mut old = 0.0f64;
        let mut new = vec![0.0f64; kernels.len()];
        for _ in 0..rounds {
            let r = rate(secs / rounds as f64 / (1 + kernels.len()) as f64, || {
                reference::matmul_rows(black_box(&w), black_box(&x), Some(&b), m, black_box(&mut y))
            });
            old = old.max(r);
            for (g, best) in kernels.iter().zip(new.iter_mut()) {
                let r = rate(secs / rounds as f64 / (1 + kernels.len()) as f64, || {
                    g.matmul_rows(black_box(&w), black_box(&x), Some(&b), m, black_box(&mut y))
                });
                *best = best.max(r);
            }
        }
        let sel = kernels
            .iter()
            .position(|g| g.name() == selected.name())
            .expect("the selected kernel is listed");
        let fst = kernels
            .iter()
            .position(|g| g.name() == fast.name())
            .expect("the fast kernel is listed");
        print!("| {m} | {k} | {n} | {:.1} |", old * flops / 1e9);
        for r in &new {
            print!(" {:.1} |", r * flops / 1e9);
        }
        println!(" {:.2}x | {:.2}x |", new[sel] / old, new[fst] / new[sel]);
    }
}
