//! Batch-1 matrix-vector throughput of the quantised kernels versus this
//! machine's read bandwidth, all measured in one run.
//!
//! `cargo bench -p taskpath-cpu --bench qmatvec` prints a Markdown report and
//! then one JSON line per configuration. For every (shape, format) it cycles
//! through enough packed matrices that the working set is at least 8x the
//! last-level cache, so every matvec streams its weights from DRAM, and it
//! times whole passes over them:
//!
//! - *GB/s* is packed weight bytes (scales and padding included) per second;
//! - *% BW* divides that by the read bandwidth of a streaming integer sum over
//!   a buffer of at least 512 MiB (2 x 8x LLC) with the same number of
//!   threads, measured in the same run *interleaved pass by pass* with the
//!   kernel's passes, so both see the same machine conditions (this machine is
//!   a shared VM whose bandwidth drifts);
//! - *2T* splits each matrix's row tiles between two `std::thread`s (one
//!   spawn per pass, no per-matrix barrier).
//!
//! Timed: the kernel calls, including building activation tables (LUT
//! formats) or quantising activations (i8row) on every call. Not timed:
//! quantisation, buffer set-up. The matrices are copies of one quantised
//! random matrix at distinct addresses (content does not affect caching).
//!
//! Environment: `TASKPATH_BENCH_SECS` (default 1.0) is the minimum timed
//! duration per configuration and thread count; `TASKPATH_BENCH_SHAPES`
//! (e.g. `128x512`) restricts the shapes.

use std::hint::black_box;
use std::time::Instant;

use taskpath_cpu::qmatvec::{Kernels, QMatVec};
use taskpath_cpu::quant::{quantize, WeightFormat};

const SHAPES: [(usize, usize); 2] = [(128, 512), (4096, 14336)];

/// (format, force the generic kernel).
const CONFIGS: [(WeightFormat, bool); 9] = [
    (WeightFormat::F32, false),
    (WeightFormat::F16, false),
    (WeightFormat::I8Row, false),
    (WeightFormat::I4G32, false),
    (WeightFormat::I4G64, false),
    (WeightFormat::I4G32Z, false),
    (WeightFormat::I2G32, false),
    (WeightFormat::I2G64, false),
    (WeightFormat::I4G32, true),
];

struct Stats {
    mean: f64,
    sd: f64,
    n: usize,
}

fn stats(v: &[f64]) -> Stats {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n.max(2) - 1) as f64;
    Stats {
        mean,
        sd: var.sqrt(),
        n,
    }
}

/// Alternate passes of `a` (over `a_bytes`) and `b` (over `b_bytes`) after one
/// warm-up each, for at least `secs` seconds and 5 pairs; GB/s per pass of each.
fn time_interleaved(
    a_bytes: usize,
    mut a: impl FnMut(),
    b_bytes: usize,
    mut b: impl FnMut(),
    secs: f64,
) -> (Stats, Stats) {
    a();
    b();
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while va.len() < 5 || start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        a();
        va.push(a_bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        b();
        vb.push(b_bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    (stats(&va), stats(&vb))
}

/// One streaming-sum pass over `buf` with `threads` (1 or 2) threads.
fn bw_pass(buf: &[u64], threads: usize) {
    if threads == 1 {
        black_box(stream_sum(black_box(buf)));
    } else {
        let (a, b) = buf.split_at(buf.len() / 2);
        std::thread::scope(|s| {
            s.spawn(|| black_box(stream_sum(black_box(a))));
            black_box(stream_sum(black_box(b)));
        });
    }
}

fn stream_sum(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in buf.chunks_exact(8) {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(v);
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}

fn llc_bytes() -> usize {
    for idx in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}");
        let level = std::fs::read_to_string(format!("{dir}/level")).unwrap_or_default();
        if level.trim() == "3" {
            if let Ok(s) = std::fs::read_to_string(format!("{dir}/size")) {
                let s = s.trim();
                let (num, mul) = match s.strip_suffix('K') {
                    Some(n) => (n, 1 << 10),
                    None => match s.strip_suffix('M') {
                        Some(n) => (n, 1 << 20),
                        None => (s, 1),
                    },
                };
                if let Ok(n) = num.parse::<usize>() {
                    return n * mul;
                }
            }
        }
    }
    32 << 20
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

struct Row {
    shape: (usize, usize),
    format: WeightFormat,
    kernel: &'static str,
    bytes: usize,
    mats: usize,
    t1: Stats,
    t2: Stats,
    /// Read bandwidth interleaved with the 1- and 2-thread passes.
    bw1: Stats,
    bw2: Stats,
}

/// One pass over all matrices with `threads` threads splitting row tiles.
#[allow(clippy::too_many_arguments)]
fn pass(
    k: &dyn QMatVec,
    rows: usize,
    cols: usize,
    buf: &[u8],
    bytes: usize,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [Vec<u8>; 2],
    threads: usize,
) {
    let f = k.format();
    let mats = buf.len() / bytes;
    if threads == 1 {
        for m in 0..mats {
            k.run(
                rows,
                cols,
                &buf[m * bytes..(m + 1) * bytes],
                x,
                None,
                y,
                &mut scratch[0],
            );
            black_box(&y[..]);
        }
        return;
    }
    let rt = f.row_tile();
    let tiles = rows.div_ceil(rt);
    let cut_rows = (tiles / 2) * rt;
    let cut_bytes = (tiles / 2) * f.tile_bytes(cols);
    let (ya, yb) = y.split_at_mut(cut_rows);
    let (sa, sb) = scratch.split_at_mut(1);
    std::thread::scope(|s| {
        s.spawn(|| {
            for m in 0..mats {
                let p = &buf[m * bytes..m * bytes + cut_bytes];
                k.run(cut_rows, cols, p, x, None, ya, &mut sa[0]);
                black_box(&ya[..]);
            }
        });
        for m in 0..mats {
            let p = &buf[m * bytes + cut_bytes..(m + 1) * bytes];
            k.run(rows - cut_rows, cols, p, x, None, yb, &mut sb[0]);
            black_box(&yb[..]);
        }
    });
}

fn main() {
    let secs: f64 = std::env::var("TASKPATH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let only: Option<String> = std::env::var("TASKPATH_BENCH_SHAPES").ok();
    let llc = llc_bytes();
    let min_ws = (8 * llc).max(256 << 20);
    let best = Kernels::best();
    let generic = Kernels::generic();

    // Read bandwidth: streaming sum over 2 x (8x LLC, at least 256 MiB).
    let bw_bytes = 2 * min_ws;
    let buf: Vec<u64> = (0..bw_bytes / 8).map(|i| i as u64).collect();
    let mut bw_all: [Vec<f64>; 2] = [Vec::new(), Vec::new()];

    let mut rows_out: Vec<Row> = Vec::new();
    for &(rows, cols) in &SHAPES {
        if only
            .as_deref()
            .is_some_and(|o| o != format!("{rows}x{cols}"))
        {
            continue;
        }
        // One random matrix per shape, quantised per format.
        let mut state = 0x1234_5678_9ABC_DEF0u64 ^ (rows * cols) as u64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd() * 0.05).collect();
        let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
        for &(f, force_generic) in &CONFIGS {
            let table = if force_generic { &generic } else { &best };
            let k = table.kernel(f).expect("generic fallback");
            let bytes = f.packed_bytes(rows, cols);
            let mats = min_ws.div_ceil(bytes).max(2);
            let mut one = vec![0u8; bytes];
            quantize(f, rows, cols, &w, &mut one).expect("quantize");
            let mut mbuf = vec![0u8; mats * bytes];
            for m in mbuf.chunks_exact_mut(bytes) {
                m.copy_from_slice(&one);
            }
            drop(one);
            let mut y = vec![0.0f32; rows];
            let mut scratch = [
                vec![0u8; f.scratch_bytes(cols)],
                vec![0u8; f.scratch_bytes(cols)],
            ];
            let total = mbuf.len();
            let [(bw1, t1), (bw2, t2)] = [1, 2].map(|threads| {
                time_interleaved(
                    bw_bytes,
                    || bw_pass(&buf, threads),
                    total,
                    || {
                        pass(
                            k,
                            rows,
                            cols,
                            &mbuf,
                            bytes,
                            &x,
                            &mut y,
                            &mut scratch,
                            threads,
                        )
                    },
                    secs,
                )
            });
            bw_all[0].push(bw1.mean);
            bw_all[1].push(bw2.mean);
            eprintln!(
                "{rows}x{cols} {:>7} {:<24} {:6.2} GB/s 1T ({:.0}% of {:.2}), {:6.2} GB/s 2T ({:.0}% of {:.2})",
                f.name(),
                k.name(),
                t1.mean,
                100.0 * t1.mean / bw1.mean,
                bw1.mean,
                t2.mean,
                100.0 * t2.mean / bw2.mean,
                bw2.mean,
            );
            rows_out.push(Row {
                shape: (rows, cols),
                format: f,
                kernel: k.name(),
                bytes,
                mats,
                t1,
                t2,
                bw1,
                bw2,
            });
        }
    }

    // ---------------------------------------------------------------- report
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("## qmatvec benchmark\n");
    println!("- command: `cargo bench -p taskpath-cpu --bench qmatvec`");
    println!("- commit: {}", commit());
    println!(
        "- CPU: {} ({threads} hardware threads), LLC {} MiB",
        cpu_model(),
        llc >> 20
    );
    println!(
        "- working set per configuration: >= {} MiB (8x LLC, at least 256 MiB); timed >= {secs} s, >= 5 passes",
        min_ws >> 20
    );
    let (bw1, bw2) = (stats(&bw_all[0]), stats(&bw_all[1]));
    println!(
        "- read bandwidth (streaming u64 sum over {} MiB, mean ± sd of the per-configuration means): 1 thread {:.2} ± {:.2} GB/s, 2 threads {:.2} ± {:.2} GB/s",
        bw_bytes >> 20,
        bw1.mean,
        bw1.sd,
        bw2.mean,
        bw2.sd
    );
    println!("- kernels (best): {}", {
        let v: Vec<String> = best
            .iter()
            .map(|(f, k)| format!("{}={}", f.name(), k.map_or("unsupported", |k| k.name())))
            .collect();
        v.join(", ")
    });
    println!();
    println!("GB/s = packed weight bytes (incl. scales) per second, mean ± sd over passes; BW = read bandwidth measured interleaved with this row's passes, same thread count; % BW = GB/s / BW; vs f32 = time per matrix of f32 / of this format, same shape and threads.\n");
    println!("| shape | format | kernel | bytes/matrix | matrices | 1T GB/s | 1T BW | 1T % BW | 1T vs f32 | 2T GB/s | 2T BW | 2T % BW | 2T vs f32 | 2T / 1T |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows_out {
        let f32_row = rows_out
            .iter()
            .find(|o| o.shape == r.shape && o.format == WeightFormat::F32)
            .expect("f32 row");
        // Time per matrix is bytes / (GB/s); speedup = t_f32 / t_fmt.
        let speed =
            |s: &Stats, sf: &Stats| (f32_row.bytes as f64 / sf.mean) / (r.bytes as f64 / s.mean);
        println!(
            "| {}x{} | {} | {} | {} | {} | {:.2} ± {:.2} | {:.2} | {:.0}% | {:.2}x | {:.2} ± {:.2} | {:.2} | {:.0}% | {:.2}x | {:.2} |",
            r.shape.0,
            r.shape.1,
            r.format.name(),
            r.kernel,
            r.bytes,
            r.mats,
            r.t1.mean,
            r.t1.sd,
            r.bw1.mean,
            100.0 * r.t1.mean / r.bw1.mean,
            speed(&r.t1, &f32_row.t1),
            r.t2.mean,
            r.t2.sd,
            r.bw2.mean,
            100.0 * r.t2.mean / r.bw2.mean,
            speed(&r.t2, &f32_row.t2),
            r.t2.mean / r.t1.mean,
        );
    }
    println!();
    println!(
        "{{\"kind\":\"read_bandwidth\",\"bytes\":{bw_bytes},\"gbps_1t\":{:.4},\"sd_1t\":{:.4},\"gbps_2t\":{:.4},\"sd_2t\":{:.4},\"cpu\":\"{}\",\"commit\":\"{}\"}}",
        bw1.mean,
        bw1.sd,
        bw2.mean,
        bw2.sd,
        cpu_model(),
        commit()
    );
    for r in &rows_out {
        println!(
            "{{\"kind\":\"qmatvec\",\"rows\":{},\"cols\":{},\"format\":\"{}\",\"format_id\":{},\"kernel\":\"{}\",\"bytes_per_matrix\":{},\"matrices\":{},\"gbps_1t\":{:.4},\"sd_1t\":{:.4},\"passes_1t\":{},\"bw_1t\":{:.4},\"gbps_2t\":{:.4},\"sd_2t\":{:.4},\"passes_2t\":{},\"bw_2t\":{:.4}}}",
            r.shape.0,
            r.shape.1,
            r.format.name(),
            r.format.id(),
            r.kernel,
            r.bytes,
            r.mats,
            r.t1.mean,
            r.t1.sd,
            r.t1.n,
            r.bw1.mean,
            r.t2.mean,
            r.t2.sd,
            r.t2.n,
            r.bw2.mean
        );
    }
}
