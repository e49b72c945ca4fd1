//! Package open time (cold and warm) and per-task batch-1 latency of the
//! bundled model, against the scalar reference (tests/src/reference.rs) run
//! in the same process on the same inputs, printed as ratios.
//!
//! `cargo bench -p taskpath-tests --bench runtime [-- MODEL_DIR]`
//! (default: models/reference/stage3, else a seeded random reference-shaped model).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use taskpath_checkpoint::{random_checkpoint, random_inputs, Checkpoint, RandomSpec, SplitMix64};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session, SessionOptions};
use taskpath_tests::reference;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn drop_cache(path: &Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: advisory syscall on our own descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

fn main() {
    let arg = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = arg
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/reference/stage3"));
    let (ck, name) = match Checkpoint::load(&dir) {
        Ok(ck) => (ck, dir.display().to_string()),
        Err(_) => (
            random_checkpoint(&RandomSpec::reference(), 1),
            "random reference-shaped (seed 1)".to_string(),
        ),
    };
    let bytes = pack(&ck, &PackOptions::default()).unwrap();
    let tmp = std::env::temp_dir().join(format!("taskpath-bench-{}.tpk", std::process::id()));
    taskpath_checkpoint::write_atomic(&tmp, &bytes).unwrap();

    println!(
        "model: {name}; package {} bytes, {} tasks",
        bytes.len(),
        ck.config.tasks.len()
    );
    println!();
    println!("| open | median | runs |");
    println!("|---|---:|---:|");
    let runs = 30;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..runs * 2 {
        if i % 2 == 0 {
            drop_cache(&tmp);
        }
        let t0 = Instant::now();
        let mapped = Model::open(&tmp).unwrap();
        let model = mapped.model().unwrap();
        let info = model.task(0).unwrap();
        let mut arena = AlignedArena::new(info.arena_bytes);
        let s = Session::new(&model, 0, arena.as_mut_slice()).unwrap();
        std::hint::black_box(&s);
        let dt = t0.elapsed();
        if i % 2 == 0 {
            cold.push(dt)
        } else {
            warm.push(dt)
        }
    }
    let aligned = AlignedArena::from_bytes(&bytes);
    let mut parse = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        std::hint::black_box(Model::from_bytes(aligned.as_slice()).unwrap());
        parse.push(t0.elapsed());
    }
    println!("| mmap + validate + first session (task 0, path checksums), cold page cache | {:.1} us | {runs} |", median(cold).as_secs_f64() * 1e6);
    println!(
        "| mmap + validate + first session (task 0, path checksums), warm | {:.1} us | {runs} |",
        median(warm).as_secs_f64() * 1e6
    );
    println!("| Model::from_bytes (header + tables + metadata checksum), in memory | {:.1} us | {runs} |", median(parse).as_secs_f64() * 1e6);
    println!();

    let model = Model::from_bytes(aligned.as_slice()).unwrap();
    println!("| task | arena bytes | path bytes | runtime batch-1 | scalar reference | speedup |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rng = SplitMix64::new(7);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s =
            Session::with_options(&model, t, arena.as_mut_slice(), SessionOptions::default())
                .unwrap();
        let inputs: Vec<Vec<Vec<f32>>> = (0..32)
            .map(|_| random_inputs(&ck.config, t, &mut rng))
            .collect();
        let mut out = vec![0f32; info.outputs];
        let mut rt = Vec::new();
        for round in 0..20 {
            for x in &inputs {
                let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
                let t0 = Instant::now();
                s.run(&refs, &mut out).unwrap();
                if round > 0 {
                    rt.push(t0.elapsed());
                }
            }
        }
        let mut rf = Vec::new();
        for x in inputs.iter().take(8) {
            let t0 = Instant::now();
            std::hint::black_box(reference::forward(&ck, t, x, None).unwrap());
            rf.push(t0.elapsed());
        }
        let (a, b) = (median(rt), median(rf));
        println!(
            "| {} | {} | {} | {:.1} us | {:.1} us | {:.1}x |",
            info.name,
            info.arena_bytes,
            model.path_bytes(&info),
            a.as_secs_f64() * 1e6,
            b.as_secs_f64() * 1e6,
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    let _ = std::fs::remove_file(&tmp);

    // Whole-model latency per expert weight format, as ratios to f32, all
    // packages measured in this run on the same inputs (interleaved rounds so
    // drift on a shared machine hits every format alike).
    use taskpath_runtime::WeightFormat as W;
    let formats = [W::F32, W::F16, W::I8Row, W::I4G32, W::I2G32Z];
    let packages: Vec<AlignedArena> = formats
        .iter()
        .map(|&f| {
            AlignedArena::from_bytes(
                &pack(
                    &ck,
                    &PackOptions {
                        quant: Some(f),
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
        })
        .collect();
    let models: Vec<Model<'_>> = packages
        .iter()
        .map(|p| Model::from_bytes(p.as_slice()).unwrap())
        .collect();
    println!();
    print!("| task | f32 |");
    for f in &formats[1..] {
        print!(" {} |", f.name());
    }
    println!();
    println!("|---|---:|{}", "---:|".repeat(formats.len() - 1));
    for t in 0..models[0].task_count() {
        let info = models[0].task(t).unwrap();
        let inputs: Vec<Vec<Vec<f32>>> = (0..16)
            .map(|_| random_inputs(&ck.config, t, &mut rng))
            .collect();
        let mut arenas: Vec<AlignedArena> = models
            .iter()
            .map(|m| AlignedArena::new(m.task(t).unwrap().arena_bytes))
            .collect();
        let mut sessions: Vec<Session<'_, '_>> = models
            .iter()
            .zip(arenas.iter_mut())
            .map(|(m, a)| Session::new(m, t, a.as_mut_slice()).unwrap())
            .collect();
        let mut times = vec![Vec::new(); formats.len()];
        let mut out = vec![0f32; info.outputs];
        for _round in 0..25 {
            for (k, s) in sessions.iter_mut().enumerate() {
                let t0 = Instant::now();
                for x in &inputs {
                    let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
                    s.run(&refs, &mut out).unwrap();
                }
                times[k].push(t0.elapsed() / inputs.len() as u32);
            }
        }
        // Best round: on a shared machine the minimum is the stable estimate
        // of each format's own cost (contention only ever adds time).
        let med: Vec<f64> = times
            .into_iter()
            .map(|v| v.into_iter().min().unwrap_or_default().as_secs_f64() * 1e6)
            .collect();
        print!("| {} | {:.1} us |", info.name, med[0]);
        for m in &med[1..] {
            print!(" {:.1} us ({:.2}x) |", m, med[0] / m);
        }
        println!();
    }
}
