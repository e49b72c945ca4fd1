//! The device check: runs every task of a package on its test set through
//! the CPU path and the CUDA backend, and prints the largest difference and
//! the per-task latency of both (same process, same inputs).
//!
//! Usage: `taskpath-cuda-compare MODEL.tpk DATA_DIR [--residency auto|mapped|cache]
//!         [--budget BYTES] [--repeat N] [--tol 1e-4]`
//!
//! Exit status 0 when every output is within `tol` of the CPU's
//! (`|cuda - cpu| / max(1, |cpu|)`), 1 when one is not, 2 when CUDA is
//! unavailable or the arguments are wrong.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use taskpath_checkpoint::Dataset;
use taskpath_cuda::{CudaBackend, CudaOptions, Residency};
use taskpath_runtime::{AlignedArena, Backend, CpuBackend, MappedModel};

struct Args {
    model: PathBuf,
    data: PathBuf,
    opts: CudaOptions,
    repeat: usize,
    tol: f64,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut pos, mut opts, mut repeat, mut tol) = (Vec::new(), CudaOptions::default(), 5, 1e-4);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--residency" => {
                opts.residency = match val("--residency")?.as_str() {
                    "auto" => Residency::Auto,
                    "mapped" => Residency::Mapped,
                    "cache" => Residency::DeviceCache,
                    r => return Err(format!("--residency {r}: expected auto, mapped or cache")),
                }
            }
            "--budget" => {
                let v = val("--budget")?;
                opts.expert_budget = Some(
                    v.parse()
                        .map_err(|_| format!("--budget {v}: not a byte count"))?,
                );
            }
            "--repeat" => {
                let v = val("--repeat")?;
                repeat = v
                    .parse()
                    .map_err(|_| format!("--repeat {v}: not a count"))?;
            }
            "--tol" => {
                let v = val("--tol")?;
                tol = v.parse().map_err(|_| format!("--tol {v}: not a number"))?;
            }
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [model, data] = <[PathBuf; 2]>::try_from(pos)
        .map_err(|_| "usage: taskpath-cuda-compare MODEL.tpk DATA_DIR [options]".to_string())?;
    Ok(Args {
        model,
        data,
        opts,
        repeat: repeat.max(1),
        tol,
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(a: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let cuda = CudaBackend::new(a.opts.clone());
    cuda.is_available()?;
    let dev = cuda.device().ok_or("no device")?;
    println!(
        "device: {} (sm_{}{}, {}), kernels from {}",
        dev.name,
        dev.capability.0,
        dev.capability.1,
        if dev.integrated {
            "integrated"
        } else {
            "discrete"
        },
        dev.kernels_from
    );
    let mapped = MappedModel::open(&a.model)?;
    let model = mapped.model()?;
    let cpu = CpuBackend::default();
    println!("model: {}", a.model.display());
    println!(
        "| task | samples | max abs diff | max rel diff | argmax agree | CPU µs/sample | CUDA µs/sample | CUDA/CPU | residency |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    let mut ran = 0;
    for t in 0..model.task_count() {
        let info = model.task(t)?;
        let path = a.data.join(format!("{}.test.json", info.name));
        if !path.is_file() {
            continue;
        }
        let ds = Dataset::load(&path).map_err(|e| format!("{e:#}"))?;
        let mut cpu_arena = AlignedArena::new(info.arena_bytes);
        let mut cuda_arena = AlignedArena::new(info.arena_bytes);
        let mut hc = cpu.init(&model, t, cpu_arena.as_mut_slice())?;
        let mut hg = cuda.init(&model, t, cuda_arena.as_mut_slice())?;
        let (mut max_abs, mut max_rel, mut agree) = (0f64, 0f64, 0usize);
        let (mut cpu_s, mut gpu_s) = (0f64, 0f64);
        let mut yc = vec![0f32; info.outputs];
        let mut yg = vec![0f32; info.outputs];
        // One untimed run each: first-use uploads and lazy kernel loading.
        if let Some(s) = ds.samples.first() {
            let x: Vec<&[f32]> = s.inputs.iter().map(Vec::as_slice).collect();
            cpu.execute(&mut hc, &x, &mut yc)?;
            cuda.execute(&mut hg, &x, &mut yg)?;
        }
        for s in &ds.samples {
            let x: Vec<&[f32]> = s.inputs.iter().map(Vec::as_slice).collect();
            // Interleaved so both see the same machine state.
            for _ in 0..a.repeat {
                let t0 = Instant::now();
                cpu.execute(&mut hc, &x, &mut yc)?;
                cpu_s += t0.elapsed().as_secs_f64();
                let t1 = Instant::now();
                cuda.execute(&mut hg, &x, &mut yg)?;
                gpu_s += t1.elapsed().as_secs_f64();
            }
            for (&g, &c) in yg.iter().zip(&yc) {
                let d = (f64::from(g) - f64::from(c)).abs();
                max_abs = max_abs.max(d);
                max_rel = max_rel.max(d / f64::from(c.abs()).max(1.0));
            }
            let am = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                    )
                    .0
            };
            agree += usize::from(am(&yg) == am(&yc));
        }
        let n = ds.samples.len().max(1) as f64 * a.repeat as f64;
        let (cu, gu) = (cpu_s / n * 1e6, gpu_s / n * 1e6);
        let pass = max_rel <= a.tol;
        ok &= pass;
        ran += 1;
        println!(
            "| {} | {} | {:.2e} | {:.2e}{} | {}/{} | {:.1} | {:.1} | {:.2} | {:?}{} |",
            info.name,
            ds.samples.len(),
            max_abs,
            max_rel,
            if pass { "" } else { " FAIL" },
            agree,
            ds.samples.len(),
            cu,
            gu,
            gu / cu.max(1e-9),
            hg.residency(),
            hg.cache_stats()
                .map(|s| format!(
                    " (hits {}, misses {}, evictions {})",
                    s.hits, s.misses, s.evictions
                ))
                .unwrap_or_default()
        );
    }
    if ran == 0 {
        return Err(format!("no {{TASK}}.test.json for any task in {}", a.data.display()).into());
    }
    println!(
        "{}: every output within {:e} of the CPU's",
        if ok { "PASS" } else { "FAIL" },
        a.tol
    );
    Ok(ok)
}
