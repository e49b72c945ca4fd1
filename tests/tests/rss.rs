//! Linux: the process's resident memory under an expert budget. A package is
//! opened by mmap, expert blobs go through a `ResidencyCache` over a budget,
//! and the growth of the process's anonymous RSS (`RssAnon` in
//! /proc/self/status: memory the process owns, as opposed to the package's
//! file-backed pages, which the kernel can drop and re-read at will) over the
//! whole workload must stay within the budget plus a fixed slack. A control
//! run that copies the package into RAM shows the same measure does see a
//! copy of the experts.

#![cfg(target_os = "linux")]

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model, ResidencyCache, Session, SessionOptions};

/// Allocator and bookkeeping noise the test itself may add to the RSS
/// (output vectors, stdio buffers): far below one expert blob here.
const SLACK: usize = 256 * 1024;

/// Both tests measure the whole process's RSS, so neither may run while the
/// other allocates: the test harness runs tests of one binary on parallel
/// threads.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measuring_alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// (RssAnon, RssFile, VmHWM) in bytes.
fn status() -> (usize, usize, usize) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{key} missing in /proc/self/status"))
            * 1024
    };
    (kb("RssAnon:"), kb("RssFile:"), kb("VmHWM:"))
}

#[test]
fn anonymous_rss_grows_by_at_most_the_budget_plus_slack() {
    let _alone = measuring_alone();
    // A wider pool than the bundled model, so expert bytes dwarf the noise.
    let mut spec = RandomSpec::reference();
    spec.experts = 16;
    let ck = random_checkpoint(&spec, 12);
    let dir = std::env::temp_dir().join(format!("taskpath-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.tpk");
    std::fs::write(&path, pack(&ck, &PackOptions::default()).unwrap()).unwrap();
    let mapped = Model::open(&path).unwrap();
    let model = mapped.model().unwrap();
    let expert_bytes = model.expert_bytes();
    let budget = expert_bytes / 4;
    assert!(budget > 8 * SLACK, "experts {expert_bytes}");

    let mut rng = SplitMix64::new(3);
    let samples: Vec<(usize, Vec<Vec<f32>>)> = (0..60)
        .map(|i| {
            let t = i % model.task_count();
            (t, random_inputs(&ck.config, t, &mut rng))
        })
        .collect();
    // Per-task arenas and outputs, written now so that they are resident
    // before the baseline.
    let mut arenas: Vec<AlignedArena> = (0..model.task_count())
        .map(|t| {
            let mut a = AlignedArena::new(model.task(t).unwrap().arena_bytes);
            a.as_mut_slice().fill(0);
            a
        })
        .collect();
    let mut outs: Vec<Vec<f32>> = (0..model.task_count())
        .map(|t| vec![0f32; model.task(t).unwrap().outputs])
        .collect();
    let opts = SessionOptions {
        verify_path: false,
        ..Default::default()
    };

    let (anon0, file0, _) = status();
    // The budget is allocated after the baseline: the cache's writes into it
    // are part of the growth measured.
    let mut mem = AlignedArena::new(budget);
    let mut cache = ResidencyCache::new(&model, mem.as_mut_slice()).unwrap();
    for (t, x) in &samples {
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        Session::with_options(&model, *t, arenas[*t].as_mut_slice(), opts)
            .unwrap()
            .with_blob_source(&mut cache)
            .unwrap()
            .run(&refs, &mut outs[*t])
            .unwrap();
    }
    let (anon1, file1, hwm1) = status();
    let st = cache.stats();
    assert!(st.misses > 0 && st.evictions > 0, "{st:?}");
    assert!(st.peak_resident_bytes as usize <= budget);
    let grew = anon1.saturating_sub(anon0);
    println!(
        "expert pool {expert_bytes} B, budget {budget} B (25%): RssAnon +{grew} B over {} runs \
         (limit budget + {SLACK} slack = {} B); RssFile +{} B (the package's mapped pages the \
         path touched: page cache the kernel may reclaim); VmHWM {hwm1} B; cache {st:?}",
        samples.len(),
        budget + SLACK,
        file1.saturating_sub(file0),
    );
    assert!(
        grew <= budget + SLACK,
        "anonymous RSS grew by {grew} bytes, over the {budget}-byte budget + {SLACK} slack"
    );

    // Control: the same measure sees a RAM copy of the package.
    let copy = AlignedArena::from_bytes(mapped.bytes(0).unwrap());
    let (anon2, _, _) = status();
    println!(
        "control: a RAM copy of the {}-byte package adds RssAnon +{} B",
        copy.as_slice().len(),
        anon2.saturating_sub(anon1)
    );
    assert!(anon2.saturating_sub(anon1) >= expert_bytes * 9 / 10);
    drop(copy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 17's load test: eight threads share one mapped model (the bundled
/// stage-3 reference model, every task), each with its own sessions, for
/// `TASKPATH_LOAD_INFERENCES` inferences in total (default 4,000 here; the
/// recorded run is 10^6 in release, docs/RELIABILITY.md). Every output must
/// be bit-identical to a serial run of the same sample, and the process's
/// anonymous RSS must not grow after the warm-up (each thread has run every
/// sample once) by more than the slack.
#[test]
fn eight_threads_share_one_mapped_model() {
    let _alone = measuring_alone();
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Barrier;
    const THREADS: usize = 8;
    let total: usize = std::env::var("TASKPATH_LOAD_INFERENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference/stage3");
    let ck = taskpath_checkpoint::Checkpoint::load(&root).unwrap();
    let dir = std::env::temp_dir().join(format!("taskpath-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.tpk");
    std::fs::write(&path, pack(&ck, &PackOptions::default()).unwrap()).unwrap();
    let mapped = Model::open(&path).unwrap();
    let model = mapped.model().unwrap();
    let tasks = model.task_count();
    let mut rng = SplitMix64::new(17);
    let samples: Vec<(usize, Vec<Vec<f32>>)> = (0..4 * tasks)
        .map(|i| (i % tasks, random_inputs(&ck.config, i % tasks, &mut rng)))
        .collect();
    let run_one = |sessions: &mut [Session<'_, '_>], (t, x): &(usize, Vec<Vec<f32>>)| -> Vec<u32> {
        let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; model.task(*t).unwrap().outputs];
        sessions[*t].run(&refs, &mut out).unwrap();
        out.iter().map(|v| v.to_bits()).collect()
    };
    let arenas = |n: usize| -> Vec<AlignedArena> {
        (0..n)
            .map(|t| AlignedArena::new(model.task(t).unwrap().arena_bytes))
            .collect()
    };
    let mut serial_mem = arenas(tasks);
    let mut serial: Vec<Session<'_, '_>> = serial_mem
        .iter_mut()
        .enumerate()
        .map(|(t, a)| Session::new(&model, t, a.as_mut_slice()).unwrap())
        .collect();
    let want: Vec<Vec<u32>> = samples.iter().map(|s| run_one(&mut serial, s)).collect();

    let (mismatches, done) = (AtomicU64::new(0), AtomicU64::new(0));
    let barrier = Barrier::new(THREADS + 1);
    let (warm, t0) = std::thread::scope(|scope| {
        for k in 0..THREADS {
            let (want, samples, barrier) = (&want, &samples, &barrier);
            let (mismatches, done, run_one) = (&mismatches, &done, &run_one);
            let model = &model;
            scope.spawn(move || {
                let mut mem = arenas(tasks);
                let mut sessions: Vec<Session<'_, '_>> = mem
                    .iter_mut()
                    .enumerate()
                    .map(|(t, a)| Session::new(model, t, a.as_mut_slice()).unwrap())
                    .collect();
                for s in samples {
                    run_one(&mut sessions, s);
                }
                barrier.wait(); // warmed up
                barrier.wait(); // RSS measured: go
                let mut i = k;
                while i < total {
                    let j = i % samples.len();
                    if run_one(&mut sessions, &samples[j]) != want[j] {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += THREADS;
                }
            });
        }
        barrier.wait();
        let warm = status().0;
        let t0 = std::time::Instant::now();
        barrier.wait();
        // The scope joins the workers before returning; the RSS is read
        // after that, in the caller.
        (warm, t0)
    });
    let secs = t0.elapsed().as_secs_f64();
    let after = status().0;
    let n = done.load(Ordering::Relaxed);
    let grew = after.saturating_sub(warm);
    eprintln!(
        "load: {THREADS} threads, {n} inferences over {tasks} tasks in {secs:.1} s ({:.0}/s), \
         {} differing from the serial run; RssAnon {warm} B after warm-up, {after} B after (+{grew} B)",
        n as f64 / secs,
        mismatches.load(Ordering::Relaxed)
    );
    assert_eq!(n as usize, total);
    assert_eq!(
        mismatches.load(Ordering::Relaxed),
        0,
        "outputs differ from the serial run"
    );
    assert!(
        grew <= SLACK,
        "anonymous RSS grew by {grew} B after warm-up"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
