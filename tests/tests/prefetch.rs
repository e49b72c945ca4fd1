//! Prefetch of the next modality's experts: which blobs the session hints,
//! that hints change no output, and that a background reader behind a slow
//! source cuts the time `run` waits for expert bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskpath_checkpoint::{random_checkpoint, random_inputs, Checkpoint, RandomSpec, SplitMix64};
use taskpath_format::records::blob_kind;
use taskpath_pack::{pack, random_calibration, PackOptions};
use taskpath_runtime::{
    AlignedArena, MmapPrefetch, Model, Prefetch, PrefetchReader, Session, SessionOptions,
};

/// A 16-expert model with paths narrowed by calibration at 60% coverage, so
/// that modalities' masks differ (as in tests/path.rs).
fn narrowed() -> (Checkpoint, PackOptions) {
    let ck = random_checkpoint(&RandomSpec::wide_small(), 21);
    let opts = random_calibration(&ck, 24, 5, 0.6).unwrap();
    (ck, opts)
}

/// Every hint: (blob, address and length of the bytes given).
#[derive(Default)]
struct Hints(Vec<(u32, usize, usize)>);
impl Prefetch for Hints {
    fn will_need(&mut self, blob: u32, bytes: &[u8]) {
        self.0.push((blob, bytes.as_ptr() as usize, bytes.len()));
    }
}

fn opts() -> SessionOptions {
    SessionOptions {
        verify_path: false,
        ..Default::default()
    }
}

#[test]
fn hints_are_the_next_modalitys_path_experts_in_file_order() {
    let (ck, popts) = narrowed();
    let bytes = AlignedArena::from_bytes(&pack(&ck, &popts).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let c = &ck.config;
    let mut rng = SplitMix64::new(9);
    let mut multi = 0;
    for (t, task) in c.tasks.iter().enumerate() {
        let mods = c.task_modalities(task);
        // Oracle from the checkpoint config and the packer's masks alone:
        // for inputs 1.., the expert blobs (kind, expert, component) of that
        // modality's mask up to the task's stage, in blob-table order.
        let mut want = Vec::new();
        for &m in &mods[1..] {
            let mask = popts.masks.get(&(t, m)).copied().unwrap_or(u64::MAX);
            for i in 0..model.blob_count() as u32 {
                let b = model.blob(i).unwrap();
                let r = b.rec;
                if r.kind == blob_kind::EXPERT
                    && mask & (1 << r.expert) != 0
                    && usize::from(r.component) <= task.stage
                {
                    want.push((i, b.bytes.as_ptr() as usize, b.bytes.len()));
                }
            }
        }
        multi += usize::from(mods.len() > 1);
        let x = random_inputs(c, t, &mut rng);
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let info = model.task(t).unwrap();
        let mut plain = vec![0f32; info.outputs];
        let mut arena = AlignedArena::new(info.arena_bytes);
        Session::with_options(&model, t, arena.as_mut_slice(), opts())
            .unwrap()
            .run(&refs, &mut plain)
            .unwrap();
        let mut hints = Hints::default();
        let mut hinted = vec![0f32; info.outputs];
        let mut s = Session::with_options(&model, t, arena.as_mut_slice(), opts())
            .unwrap()
            .with_prefetch(&mut hints);
        let plan: Vec<u32> = (0..mods.len())
            .flat_map(|i| s.prefetch_plan(i).map(|b| b.index).collect::<Vec<_>>())
            .collect();
        s.run(&refs, &mut hinted).unwrap();
        let _ = s;
        assert_eq!(hints.0, want, "task {}", task.name);
        assert_eq!(plan, want.iter().map(|w| w.0).collect::<Vec<_>>());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&hinted), bits(&plain), "task {}", task.name);
    }
    assert!(multi >= 3, "the model must have multi-modality tasks");
    // The masks narrow: some hint list is shorter than every expert's.
    assert!(popts.masks.values().any(|m| m.count_ones() < 16));
}

#[test]
fn set_prefetch_installs_replaces_and_removes_the_hook() {
    let (ck, popts) = narrowed();
    let bytes = AlignedArena::from_bytes(&pack(&ck, &popts).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let t = (0..model.task_count())
        .find(|&t| model.task(t).unwrap().modality_mask.count_ones() > 1)
        .unwrap();
    let info = model.task(t).unwrap();
    let x = random_inputs(&ck.config, t, &mut SplitMix64::new(3));
    let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0f32; info.outputs];
    let mut arena = AlignedArena::new(info.arena_bytes);
    let (mut first, mut second) = (Hints::default(), Hints::default());
    let mut s = Session::with_options(&model, t, arena.as_mut_slice(), opts()).unwrap();
    let plan: Vec<(u32, usize, usize)> = (0..info.modality_mask.count_ones() as usize)
        .flat_map(|i| s.prefetch_plan(i).collect::<Vec<_>>())
        .map(|b| (b.index, b.bytes.as_ptr() as usize, b.bytes.len()))
        .collect();
    assert!(!plan.is_empty());
    s.set_prefetch(Some(&mut first));
    s.run(&refs, &mut out).unwrap();
    s.set_prefetch(Some(&mut second)); // replaces `first`
    s.run(&refs, &mut out).unwrap();
    s.set_prefetch(None); // no hook: nothing more to either
    s.run(&refs, &mut out).unwrap();
    let _ = s;
    assert_eq!(first.0, plan, "one run's hints");
    assert_eq!(second.0, plan, "one run's hints");
}

/// The package bytes behind a slow device: every read costs `delay`.
fn slow_reader(
    model: &Model<'_>,
    bytes: Arc<AlignedArena>,
    delay: Duration,
    budget: usize,
) -> PrefetchReader {
    PrefetchReader::new(model, budget, move |part, off, out| {
        assert_eq!(part, 0);
        std::thread::sleep(delay);
        let off = off as usize;
        out.copy_from_slice(&bytes.as_slice()[off..off + out.len()]);
        Ok(())
    })
    .unwrap()
}

#[test]
fn a_prefetching_reader_waits_less_on_a_slow_source_with_identical_outputs() {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let bytes = Arc::new(AlignedArena::from_bytes(
        &pack(&ck, &PackOptions::default()).unwrap(),
    ));
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let mut rng = SplitMix64::new(4);
    // The stage-0 multi-modality tasks (DIGIT-10, WDBC): a next-modality
    // hint can only help a task with several modalities, and at stage 0 a
    // hint batch (5 experts x 1 component) is part of the expert bytes,
    // so a budget of one batch cannot double as a cache of every expert.
    let tasks: Vec<usize> = (0..ck.config.tasks.len())
        .filter(|&t| {
            let i = model.task(t).unwrap();
            i.modality_mask.count_ones() > 1 && i.stage == 0
        })
        .collect();
    assert_eq!(tasks.len(), 2);
    let samples: Vec<(usize, Vec<Vec<f32>>)> = (0..12)
        .flat_map(|_| {
            tasks
                .iter()
                .copied()
                .map(|t| (t, random_inputs(&ck.config, t, &mut rng)))
                .collect::<Vec<_>>()
        })
        .collect();
    let delay = Duration::from_millis(2);
    // Room for the largest hint batch (one next modality's candidates):
    // hints the router does not take are then discarded for newer ones
    // rather than kept as a cache across samples.
    let budget = tasks
        .iter()
        .flat_map(|&t| {
            let info = model.task(t).unwrap();
            let mut arena = AlignedArena::new(info.arena_bytes);
            let s = Session::with_options(&model, t, arena.as_mut_slice(), opts()).unwrap();
            (0..3)
                .map(|i| s.prefetch_plan(i).map(|b| b.bytes.len()).sum::<usize>())
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap();
    assert!(budget < model.expert_bytes());
    let run_all = |reader: &mut PrefetchReader, prefetch: bool| -> (Vec<Vec<u32>>, Duration) {
        let t0 = Instant::now();
        let outs = samples
            .iter()
            .map(|(t, x)| {
                let info = model.task(*t).unwrap();
                let mut arena = AlignedArena::new(info.arena_bytes);
                let mut out = vec![0f32; info.outputs];
                let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
                let mut hints = reader.hints();
                let s = Session::with_options(&model, *t, arena.as_mut_slice(), opts())
                    .unwrap()
                    .with_blob_source(reader)
                    .unwrap();
                let mut s = if prefetch {
                    s.with_prefetch(&mut hints)
                } else {
                    s
                };
                s.run(&refs, &mut out).unwrap();
                out.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        (outs, t0.elapsed())
    };
    let mut cold = slow_reader(&model, Arc::clone(&bytes), delay, budget);
    let (plain, plain_wall) = run_all(&mut cold, false);
    let mut warm = slow_reader(&model, Arc::clone(&bytes), delay, budget);
    let (hinted, hinted_wall) = run_all(&mut warm, true);
    // In-place reads: the reference outputs.
    let (direct, _) = {
        let outs = samples
            .iter()
            .map(|(t, x)| {
                let info = model.task(*t).unwrap();
                let mut arena = AlignedArena::new(info.arena_bytes);
                let mut out = vec![0f32; info.outputs];
                let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
                Session::with_options(&model, *t, arena.as_mut_slice(), opts())
                    .unwrap()
                    .run(&refs, &mut out)
                    .unwrap();
                out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
            })
            .collect::<Vec<_>>();
        (outs, ())
    };
    assert_eq!(plain, direct);
    assert_eq!(hinted, direct);
    let (a, b) = (cold.stats(), warm.stats());
    assert_eq!(a.ready + a.waited, 0, "{a:?}");
    assert!(b.ready + b.waited > 0, "{b:?}");
    let ratio = b.fetch_time.as_secs_f64() / a.fetch_time.as_secs_f64();
    println!(
        "slow source ({delay:?} per blob read), {} samples: time waiting for expert bytes {:.1} ms without prefetch, {:.1} ms with = {ratio:.2}x; wall {:.1} ms vs {:.1} ms ({:.2}x); with prefetch: {} ready, {} waited for, {} read on the spot, {} discarded unused, {} dropped; budget {budget} bytes",
        samples.len(),
        a.fetch_time.as_secs_f64() * 1e3,
        b.fetch_time.as_secs_f64() * 1e3,
        plain_wall.as_secs_f64() * 1e3,
        hinted_wall.as_secs_f64() * 1e3,
        hinted_wall.as_secs_f64() / plain_wall.as_secs_f64(),
        b.ready,
        b.waited,
        b.direct,
        b.stale,
        b.dropped,
    );
    // The time ratio is printed, not asserted: on a loaded 2-core CI machine the
    // reader thread competes with the test threads (0.16x-0.94x seen). What must
    // hold is that hinted reads completed ahead of the session's request.
    assert!(
        b.ready > 0,
        "no prefetched read was ready when needed: {b:?}"
    );
}

/// madvise(WILLNEED) hints over a mapped package change no output.
#[cfg(unix)]
#[test]
fn mmap_hints_change_no_output() {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let dir = std::env::temp_dir().join(format!("taskpath-prefetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.tpk");
    std::fs::write(&path, pack(&ck, &PackOptions::default()).unwrap()).unwrap();
    let mapped = Model::open(&path).unwrap();
    let model = mapped.model().unwrap();
    let mut rng = SplitMix64::new(8);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let x = random_inputs(&ck.config, t, &mut rng);
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let mut arena = AlignedArena::new(info.arena_bytes);
        let (mut a, mut b) = (vec![0f32; info.outputs], vec![0f32; info.outputs]);
        Session::new(&model, t, arena.as_mut_slice())
            .unwrap()
            .run(&refs, &mut a)
            .unwrap();
        let mut advice = MmapPrefetch(&mapped);
        Session::new(&model, t, arena.as_mut_slice())
            .unwrap()
            .with_prefetch(&mut advice)
            .run(&refs, &mut b)
            .unwrap();
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
