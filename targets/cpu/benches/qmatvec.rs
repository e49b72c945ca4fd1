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
//!   threads (read as 1, 4, 8 or 16 side-by-side streams, whichever is fastest
//!   in a calibration at start), measured in the same run *interleaved pass by pass* with the
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
//! *Batched* (second table): `run_batch` with `n` = 16 and 64 activation rows
//! (prefill tokens) per matrix, single thread, over the same DRAM-resident
//! matrices; *eff. GB/s* = `n` x weight bytes per second (what `n` separate
//! matvecs would have to stream), *x n=1* = its ratio to the single-row
//! GB/s of the same run. The q4_0 / q8_0 kernels take as many tokens per pass
//! over the weights as the scratch holds (`scratch_bytes` gives 8; the
//! `64 tokens` rows pass room for 64); the other formats run one row at a time.
//!
//! Environment: `TASKPATH_BENCH_SECS` (default 1.0) is the minimum timed
//! duration per configuration and thread count; `TASKPATH_BENCH_SHAPES`
//! (e.g. `128x512,2816x1024`) restricts the shapes; `TASKPATH_BENCH_CACHED_KIB`
//! (default 1024) bounds the cache-resident measurement's packed bytes.

use std::hint::black_box;
use std::time::Instant;

use taskpath_cpu::qmatvec::{CpuFeatures, Kernels, QMatVec};
use taskpath_cpu::quant::{quantize, WeightFormat};

/// Expert-sized LUT shapes, then the Mixtral-shaped model's q4_0 / q8_0
/// shapes (d 1024, ffn 2816: the two expert matrices and the 32000-row head).
const SHAPES: [(usize, usize); 5] = [
    (128, 512),
    (4096, 14336),
    (2816, 1024),
    (1024, 2816),
    (32000, 1024),
];

/// Which table a configuration takes its kernel from.
#[derive(Clone, Copy, PartialEq)]
enum Table {
    Best,
    Generic,
    /// The best table without AVX-512 (the AVX2 q4_0 / q8_0 kernels).
    NoAvx512,
}

/// Configurations of the LUT shapes (format, table).
const CONFIGS: [(WeightFormat, Table); 11] = [
    (WeightFormat::F32, Table::Best),
    (WeightFormat::F16, Table::Best),
    (WeightFormat::I8Row, Table::Best),
    (WeightFormat::I4G32, Table::Best),
    (WeightFormat::I4G64, Table::Best),
    (WeightFormat::I4G32Z, Table::Best),
    (WeightFormat::I2G32, Table::Best),
    (WeightFormat::I2G64, Table::Best),
    (WeightFormat::Q4_0, Table::Best),
    (WeightFormat::Q8_0, Table::Best),
    (WeightFormat::I4G32, Table::Generic),
];

/// Configurations of the GGUF-block shapes.
const Q_CONFIGS: [(WeightFormat, Table); 8] = [
    (WeightFormat::F32, Table::Best),
    (WeightFormat::I8Row, Table::Best),
    (WeightFormat::I4G32, Table::Best),
    (WeightFormat::Q4_0, Table::Best),
    (WeightFormat::Q8_0, Table::Best),
    (WeightFormat::Q4_0, Table::NoAvx512),
    (WeightFormat::Q8_0, Table::NoAvx512),
    (WeightFormat::Q4_0, Table::Generic),
];

/// Batched configurations: (format, tokens per call, scratch tokens or 0 for
/// `scratch_bytes`).
const BATCH: [(WeightFormat, usize, usize); 7] = [
    (WeightFormat::Q4_0, 16, 0),
    (WeightFormat::Q4_0, 64, 0),
    (WeightFormat::Q4_0, 64, 64),
    (WeightFormat::Q8_0, 16, 0),
    (WeightFormat::Q8_0, 64, 0),
    (WeightFormat::Q8_0, 64, 64),
    (WeightFormat::I4G32, 16, 0),
];

struct Stats {
    mean: f64,
    sd: f64,
    best: f64,
    n: usize,
}

fn stats(v: &[f64]) -> Stats {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n.max(2) - 1) as f64;
    Stats {
        mean,
        sd: var.sqrt(),
        best: v.iter().copied().fold(0.0, f64::max),
        n,
    }
}

/// Seconds this thread has run on a CPU (Linux schedstat), if available.
fn oncpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? / 1e9)
}

/// Cache-resident throughput (GB/s of packed bytes per on-CPU second, or per
/// wall second without schedstat): the kernel re-run on the first `rows`
/// rows of one matrix, small enough to stay in L2/L3. This is the compute
/// ceiling the DRAM-streaming numbers are bounded by.
#[allow(clippy::too_many_arguments)]
fn cache_resident(
    k: &dyn QMatVec,
    rows: usize,
    cols: usize,
    packed: &[u8],
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [u8],
    secs: f64,
) -> f64 {
    let clock = || oncpu_secs().unwrap_or_else(|| start_wall().elapsed().as_secs_f64());
    k.run(rows, cols, packed, x, None, &mut y[..rows], scratch);
    let (t0, w0) = (clock(), Instant::now());
    let mut n = 0usize;
    while w0.elapsed().as_secs_f64() < secs || n < 10 {
        k.run(rows, cols, packed, x, None, &mut y[..rows], scratch);
        black_box(&y[..rows]);
        n += 1;
    }
    (packed.len() * n) as f64 / (clock() - t0) / 1e9
}

fn start_wall() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
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
fn bw_pass(buf: &[u64], threads: usize, streams: usize) {
    if threads == 1 {
        black_box(stream_sum(black_box(buf), streams));
    } else {
        let (a, b) = buf.split_at(buf.len() / 2);
        std::thread::scope(|s| {
            s.spawn(|| black_box(stream_sum(black_box(a), streams)));
            black_box(stream_sum(black_box(b), streams));
        });
    }
}

/// Wrapping sum of `buf` read as `S` concurrent sequential streams: the
/// buffer is cut into groups of `S` consecutive 512/`S` KiB blocks, and the
/// blocks of a group are read side by side, 32 bytes of each per step. `S = 1`
/// is the classic streaming sum. This machine's memory system delivers much
/// more with several nearby streams in flight (as kernels reading several
/// row tiles at once do), so the benchmark uses the best `S`, calibrated at
/// start.
#[inline(never)]
fn stream_sum_s<const S: usize>(buf: &[u64]) -> u64 {
    let block = (512 << 10) / 8 / S;
    let mut acc = [[0u64; 4]; S];
    for grp in buf.chunks_exact(S * block) {
        for i in (0..block).step_by(4) {
            for (s, a) in acc.iter_mut().enumerate() {
                let c: &[u64; 4] = grp[s * block + i..s * block + i + 4].try_into().unwrap();
                for (x, &v) in a.iter_mut().zip(c) {
                    *x = x.wrapping_add(v);
                }
            }
        }
    }
    acc.iter().flatten().fold(0, |s, &a| s.wrapping_add(a))
}

/// The streaming sum with `streams` (1, 4, 8 or 16) streams.
fn stream_sum(buf: &[u64], streams: usize) -> u64 {
    match streams {
        1 => stream_sum_s::<1>(buf),
        4 => stream_sum_s::<4>(buf),
        8 => stream_sum_s::<8>(buf),
        _ => stream_sum_s::<16>(buf),
    }
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
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

/// Whether to skip a generic configuration on a large shape (the portable
/// reference would take minutes to stream 8x LLC of weights).
fn generic_too_slow(f: WeightFormat, which: Table, rows: usize, cols: usize) -> bool {
    which == Table::Generic && f.is_gguf_block() && rows * cols > 4 << 20
}

/// One batched configuration's result.
struct BatchRow {
    shape: (usize, usize),
    format: WeightFormat,
    kernel: &'static str,
    n: usize,
    /// 0: `scratch_bytes` (8 tokens for q4_0 / q8_0).
    scratch_tokens: usize,
    /// n x weight bytes per second.
    eff: Stats,
    /// Single-row GB/s of the same configuration (1 thread).
    single: f64,
}

struct Row {
    shape: (usize, usize),
    format: WeightFormat,
    kernel: &'static str,
    bytes: usize,
    mats: usize,
    t1: Stats,
    t2: Stats,
    /// Cache-resident throughput and the rows it used.
    cached: f64,
    cached_rows: usize,
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
    let cached_max: usize = std::env::var("TASKPATH_BENCH_CACHED_KIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .map_or(1 << 20, |k| k << 10);
    let no512 = CpuFeatures {
        avx512vnni: false,
        ..CpuFeatures::host()
    };
    let no512 = Kernels::for_features(no512);
    let mut batch_out: Vec<BatchRow> = Vec::new();
    let load_start = loadavg();
    let llc = llc_bytes();
    let min_ws = (8 * llc).max(256 << 20);
    let best = Kernels::best();
    let generic = Kernels::generic();

    // Read bandwidth: streaming sum over 2 x (8x LLC, at least 256 MiB).
    let bw_bytes = 2 * min_ws;
    let buf: Vec<u64> = (0..bw_bytes / 8).map(|i| i as u64).collect();
    let mut bw_all: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // Calibrate the stream count: median of 5 single-thread passes each, round-robin.
    let counts = [1usize, 4, 8, 16];
    let mut cal: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    for _ in 0..5 {
        for (v, &sc) in cal.iter_mut().zip(&counts) {
            let t = Instant::now();
            bw_pass(&buf, 1, sc);
            v.push(bw_bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cal: Vec<f64> = cal.iter_mut().map(median).collect();
    let best_i = (0..counts.len())
        .max_by(|&a, &b| cal[a].total_cmp(&cal[b]))
        .unwrap();
    let streams = counts[best_i];

    let mut rows_out: Vec<Row> = Vec::new();
    for &(rows, cols) in &SHAPES {
        let name = format!("{rows}x{cols}");
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s.trim() == name))
        {
            continue;
        }
        let configs: &[(WeightFormat, Table)] = if SHAPES[2..].contains(&(rows, cols)) {
            &Q_CONFIGS
        } else {
            &CONFIGS
        };
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
        for &(f, which) in configs {
            if generic_too_slow(f, which, rows, cols) {
                continue;
            }
            let table = match which {
                Table::Best => &best,
                Table::Generic => &generic,
                Table::NoAvx512 => &no512,
            };
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
            // Cache-resident ceiling: the first rows (a multiple of 4 row
            // tiles, or all) whose packed size is at most 1 MiB.
            let unit = 4 * f.row_tile();
            let cached_rows = if bytes <= cached_max {
                rows
            } else {
                let per_row = bytes as f64 / rows as f64;
                ((cached_max as f64 / per_row) as usize / unit * unit).clamp(f.row_tile(), rows)
            };
            let cb = f.packed_bytes(cached_rows, cols);
            let cached = cache_resident(
                k,
                cached_rows,
                cols,
                &mbuf[..cb],
                &x,
                &mut y,
                &mut scratch[0],
                secs / 2.0,
            );
            let total = mbuf.len();
            let [(bw1, t1), (bw2, t2)] = [1, 2].map(|threads| {
                time_interleaved(
                    bw_bytes,
                    || bw_pass(&buf, threads, streams),
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
            if which == Table::Best {
                for &(bf, n, stok) in BATCH.iter().filter(|b| b.0 == f) {
                    let sbytes = if stok == 0 {
                        f.scratch_bytes(cols)
                    } else {
                        f.scratch_bytes(cols).max(stok * f.q_token_bytes(cols))
                    };
                    let mut s = vec![0u8; sbytes];
                    let xs: Vec<f32> = (0..n).flat_map(|_| x.iter().copied()).collect();
                    let mut ys = vec![0.0f32; n * rows];
                    let mats = mbuf.len() / bytes;
                    let mut go = || {
                        for m in 0..mats {
                            k.run_batch(
                                rows,
                                cols,
                                &mbuf[m * bytes..(m + 1) * bytes],
                                n,
                                &xs,
                                None,
                                &mut ys,
                                &mut s,
                            );
                            black_box(&ys[..]);
                        }
                    };
                    go();
                    let mut v = Vec::new();
                    let start = Instant::now();
                    while v.len() < 3 || start.elapsed().as_secs_f64() < secs {
                        let t = Instant::now();
                        go();
                        v.push((n * mats * bytes) as f64 / t.elapsed().as_secs_f64() / 1e9);
                    }
                    let st = stats(&v);
                    eprintln!(
                        "{rows}x{cols} {:>7} batch n={n} scratch {}: eff {:.2} GB/s",
                        bf.name(),
                        if stok == 0 {
                            "default".to_string()
                        } else {
                            format!("{stok} tokens")
                        },
                        st.mean
                    );
                    batch_out.push(BatchRow {
                        shape: (rows, cols),
                        format: bf,
                        kernel: k.name(),
                        n,
                        scratch_tokens: stok,
                        eff: st,
                        single: t1.mean,
                    });
                }
            }
            eprintln!(
                "{rows}x{cols} {:>7} {:<24} cached {cached:6.2}, {:6.2} GB/s 1T ({:.0}% of {:.2}), {:6.2} GB/s 2T ({:.0}% of {:.2})",
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
                cached,
                cached_rows,
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
        "- load average (1, 5, 15 min) at start: {load_start}; at end: {} (other processes share this machine)",
        loadavg()
    );
    println!(
        "- working set per configuration: >= {} MiB (8x LLC, at least 256 MiB); timed >= {secs} s, >= 5 passes",
        min_ws >> 20
    );
    let (bw1, bw2) = (stats(&bw_all[0]), stats(&bw_all[1]));
    println!(
        "- read-bandwidth loop: wrapping u64 sum over {} MiB read as S side-by-side streams over consecutive 512/S KiB blocks, 32 bytes each per step; calibration (1 thread, median of 5 passes): {}; using S = {streams}",
        bw_bytes >> 20,
        counts
            .iter()
            .zip(&cal)
            .map(|(c, g)| format!("S={c}: {g:.2} GB/s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "- read bandwidth (mean ± sd of the per-configuration interleaved means): 1 thread {:.2} ± {:.2} GB/s, 2 threads {:.2} ± {:.2} GB/s",
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
    println!("GB/s = packed weight bytes (incl. scales) per second. DRAM columns: mean ± sd over passes through >= 8x LLC of matrices, and the best pass. BW = read bandwidth measured interleaved pass by pass with the same row's passes, same thread count (mean / best pass). % BW = kernel / BW, of the means and of the best passes. vs f32 (vs i4g32) = time per matrix of f32 (i4g32, best kernel) / of this row (means), same shape and threads. Cache-resident = the kernel re-run on one matrix's first rows (<= 1 MiB packed, rows in brackets), GB/s per on-CPU second: the compute ceiling.\n");
    println!("| shape | format | kernel | bytes/matrix | matrices | cache-resident GB/s | 1T GB/s | 1T best | 1T BW | 1T % BW | 1T vs f32 | 1T vs i4g32 | 2T GB/s | 2T BW | 2T % BW | 2T vs f32 | 2T / 1T |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows_out {
        let f32_row = rows_out
            .iter()
            .find(|o| o.shape == r.shape && o.format == WeightFormat::F32)
            .expect("f32 row");
        // Time per matrix is bytes / (GB/s); speedup = t_f32 / t_fmt.
        let speed =
            |s: &Stats, sf: &Stats| (f32_row.bytes as f64 / sf.mean) / (r.bytes as f64 / s.mean);
        let vs_i4 = rows_out
            .iter()
            .find(|o| {
                o.shape == r.shape
                    && o.format == WeightFormat::I4G32
                    && !o.kernel.starts_with("generic")
            })
            .map_or("-".to_string(), |i4| {
                format!(
                    "{:.2}x",
                    (i4.bytes as f64 / i4.t1.mean) / (r.bytes as f64 / r.t1.mean)
                )
            });
        println!(
            "| {}x{} | {} | {} | {} | {} | {:.1} ({}) | {:.2} ± {:.2} | {:.2} | {:.2} / {:.2} | {:.0}%, {:.0}% | {:.2}x | {} | {:.2} ± {:.2} | {:.2} / {:.2} | {:.0}%, {:.0}% | {:.2}x | {:.2} |",
            r.shape.0,
            r.shape.1,
            r.format.name(),
            r.kernel,
            r.bytes,
            r.mats,
            r.cached,
            r.cached_rows,
            r.t1.mean,
            r.t1.sd,
            r.t1.best,
            r.bw1.mean,
            r.bw1.best,
            100.0 * r.t1.mean / r.bw1.mean,
            100.0 * r.t1.best / r.bw1.best,
            speed(&r.t1, &f32_row.t1),
            vs_i4,
            r.t2.mean,
            r.t2.sd,
            r.bw2.mean,
            r.bw2.best,
            100.0 * r.t2.mean / r.bw2.mean,
            100.0 * r.t2.best / r.bw2.best,
            speed(&r.t2, &f32_row.t2),
            r.t2.mean / r.t1.mean,
        );
    }
    println!();
    if !batch_out.is_empty() {
        println!("Batched (`run_batch`, 1 thread, DRAM-resident matrices): eff. GB/s = n x weight bytes per second; x n=1 = eff. GB/s / the single-row 1T GB/s above; tokens/s = matvecs of one matrix per second.\n");
        println!(
            "| shape | format | kernel | n | scratch | eff. GB/s | tokens/s per matrix | x n=1 |"
        );
        println!("|---|---|---|---:|---|---:|---:|---:|");
        for b in &batch_out {
            let bytes = b.format.packed_bytes(b.shape.0, b.shape.1) as f64;
            println!(
                "| {}x{} | {} | {} | {} | {} | {:.1} ± {:.1} | {:.0} | {:.2}x |",
                b.shape.0,
                b.shape.1,
                b.format.name(),
                b.kernel,
                b.n,
                if b.scratch_tokens == 0 {
                    "scratch_bytes".to_string()
                } else {
                    format!("{} tokens", b.scratch_tokens)
                },
                b.eff.mean,
                b.eff.sd,
                b.eff.mean * 1e9 / bytes,
                b.eff.mean / b.single
            );
        }
        println!();
    }
    println!(
        "{{\"kind\":\"read_bandwidth\",\"bytes\":{bw_bytes},\"streams\":{streams},\"gbps_1t\":{:.4},\"sd_1t\":{:.4},\"gbps_2t\":{:.4},\"sd_2t\":{:.4},\"cpu\":\"{}\",\"commit\":\"{}\"}}",
        bw1.mean,
        bw1.sd,
        bw2.mean,
        bw2.sd,
        cpu_model(),
        commit()
    );
    for r in &rows_out {
        println!(
            "{{\"kind\":\"qmatvec\",\"rows\":{},\"cols\":{},\"format\":\"{}\",\"format_id\":{},\"kernel\":\"{}\",\"bytes_per_matrix\":{},\"matrices\":{},\"cache_resident_gbps\":{:.4},\"cache_resident_rows\":{},\"gbps_1t\":{:.4},\"sd_1t\":{:.4},\"best_1t\":{:.4},\"passes_1t\":{},\"bw_1t\":{:.4},\"bw_best_1t\":{:.4},\"gbps_2t\":{:.4},\"sd_2t\":{:.4},\"best_2t\":{:.4},\"passes_2t\":{},\"bw_2t\":{:.4},\"bw_best_2t\":{:.4}}}",
            r.shape.0,
            r.shape.1,
            r.format.name(),
            r.format.id(),
            r.kernel,
            r.bytes,
            r.mats,
            r.cached,
            r.cached_rows,
            r.t1.mean,
            r.t1.sd,
            r.t1.best,
            r.t1.n,
            r.bw1.mean,
            r.bw1.best,
            r.t2.mean,
            r.t2.sd,
            r.t2.best,
            r.t2.n,
            r.bw2.mean,
            r.bw2.best
        );
    }
    for b in &batch_out {
        println!(
            "{{\"kind\":\"qmatvec_batch\",\"rows\":{},\"cols\":{},\"format\":\"{}\",\"kernel\":\"{}\",\"n\":{},\"scratch_tokens\":{},\"eff_gbps_1t\":{:.4},\"sd_1t\":{:.4},\"single_gbps_1t\":{:.4}}}",
            b.shape.0,
            b.shape.1,
            b.format.name(),
            b.kernel,
            b.n,
            b.scratch_tokens,
            b.eff.mean,
            b.eff.sd,
            b.single
        );
    }
}
