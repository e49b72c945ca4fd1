//! Larger-than-RAM language models (issue 15): under expert budgets, with
//! either reader (the memory map with madvise, or `pread` on a background
//! thread, `O_DIRECT` where allowed) and with speculative next-layer
//! prefetch on or off, a decode gives the unbudgeted mapped session's
//! logits bit for bit, the cache never holds more than its budget, a failed
//! storage read fails the step with an error, and the budget one layer's
//! active experts need is stated.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use taskpath_import::Checkpoint;
use taskpath_pack::llm::{pack_llm, LlmPackOptions};
use taskpath_runtime::{
    AlignedArena, CacheStats, Error, MappedModel, MmapPrefetch, Model, PrefetchReader,
    ResidencyCache, Session, Tracer,
};

/// The tiny OLMoE (2 MoE layers, 8 experts, top-2) packed to a file.
fn package(name: &str) -> (PathBuf, MappedModel) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llm-tiny/olmoe");
    let ck = Checkpoint::open(src).unwrap();
    let opts = LlmPackOptions {
        context: 64,
        chunk: 8,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("taskpath-stream-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.tpk");
    std::fs::write(&path, pack_llm(&ck, &opts).unwrap()).unwrap();
    let mapped = Model::open(&path).unwrap();
    (path, mapped)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Reader {
    Mmap,
    Pread,
}

/// Counts speculative predictions.
#[derive(Default)]
struct Predicted(usize);
impl Tracer for Predicted {
    fn expert_predicted(&mut self, _blob: u32, _hinted: bool) {
        self.0 += 1;
    }
}

const PROMPT: [u32; 6] = [5, 17, 200, 3, 99, 41];
const DECODE: usize = 10;

/// Logits (as bits) of a prefill of [`PROMPT`] then greedy decode steps,
/// the cache's counters, and the predictions made.
fn decode(
    path: &Path,
    mapped: &MappedModel,
    budget: Option<usize>,
    reader: Reader,
    topk: usize,
) -> (Vec<Vec<u32>>, Option<CacheStats>, usize) {
    let model = mapped.model().unwrap();
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut mem = AlignedArena::new(budget.unwrap_or(0));
    let mut pread = (reader == Reader::Pread).then(|| {
        let r = PrefetchReader::from_files_direct(&model, &[path], 1 << 20).unwrap();
        assert!(r.io_mode().starts_with("pread"), "{}", r.io_mode());
        r
    });
    let mut fill = MmapPrefetch(mapped);
    let mut hint = MmapPrefetch(mapped);
    let (mut pfill, mut phint) = match &pread {
        Some(r) => (Some(r.hints()), Some(r.hints())),
        None => (None, None),
    };
    let mut cache = budget.map(|_| {
        let c = ResidencyCache::new(&model, mem.as_mut_slice()).unwrap();
        match pfill.as_mut() {
            Some(h) => c.with_fill_hint(h),
            None => c.with_fill_hint(&mut fill),
        }
    });
    let mut s = Session::new(&model, 0, arena.as_mut_slice())
        .unwrap()
        .with_prefetch_topk(topk);
    s = match phint.as_mut() {
        Some(h) => s.with_prefetch(h),
        None => s.with_prefetch(&mut hint),
    };
    if let Some(c) = cache.as_mut() {
        s = s.with_blob_source(c).unwrap();
    } else if let Some(r) = pread.as_mut() {
        s = s.with_blob_source(r).unwrap();
    }
    let mut tr = Predicted::default();
    let mut logits = vec![0f32; info.outputs];
    let mut out = Vec::new();
    s.step_traced(&PROMPT, &mut logits, &mut tr).unwrap();
    for _ in 0..DECODE {
        out.push(logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        s.step_traced(&[next], &mut logits, &mut tr).unwrap();
    }
    out.push(logits.iter().map(|v| v.to_bits()).collect());
    let stats = s.blob_source().and_then(|b| b.cache_stats());
    (out, stats, tr.0)
}

#[test]
fn logits_are_bit_identical_across_budgets_readers_and_prefetch() {
    let (path, mapped) = package("identical");
    let model = mapped.model().unwrap();
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let layer = Session::new(&model, 0, arena.as_mut_slice())
        .unwrap()
        .layer_expert_budget();
    let (oracle, _, none) = decode(&path, &mapped, None, Reader::Mmap, 0);
    assert_eq!(none, 0, "prefetch off predicts nothing");
    let budgets = [0.25, 0.5].map(|f| ((model.expert_bytes() as f64 * f) as usize).max(layer));
    for budget in [None, Some(budgets[0]), Some(budgets[1])] {
        for reader in [Reader::Mmap, Reader::Pread] {
            for topk in [0, 2, 3] {
                let (got, stats, predicted) = decode(&path, &mapped, budget, reader, topk);
                let what = format!("budget {budget:?}, {reader:?}, top-{topk} prefetch");
                assert!(got == oracle, "{what}: logits differ");
                assert_eq!(predicted > 0, topk > 0, "{what}: {predicted} predictions");
                if let (Some(b), Some(st)) = (budget, stats) {
                    assert!(st.peak_resident_bytes as usize <= b, "{what}: {st:?}");
                    assert!(st.misses > 0, "{what}: {st:?}");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A storage read that fails on the `n`th call (counting from 0), else reads the file.
fn failing_reader(model: &Model<'_>, path: &Path, n: usize) -> PrefetchReader {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    PrefetchReader::new(model, 1 << 20, move |_, off, out| {
        if calls.fetch_add(1, Ordering::SeqCst) >= n {
            return Err(std::io::Error::other("injected read fault"));
        }
        f.read_exact_at(out, off)
    })
    .unwrap()
}

#[test]
fn a_failed_storage_read_fails_the_step_with_an_error() {
    let (path, mapped) = package("fault");
    let model = mapped.model().unwrap();
    let info = model.task(0).unwrap();
    let (oracle, _, _) = decode(&path, &mapped, None, Reader::Mmap, 0);
    let budget = model.expert_bytes() / 2;
    for (cached, topk) in [(true, 0), (true, 2), (false, 2)] {
        let reader = failing_reader(&model, &path, 7);
        let (mut fill, mut hint) = (reader.hints(), reader.hints());
        let mut reader = reader;
        let mut mem = AlignedArena::new(budget);
        let mut cache = cached.then(|| {
            ResidencyCache::new(&model, mem.as_mut_slice())
                .unwrap()
                .with_fill_hint(&mut fill)
        });
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s = Session::new(&model, 0, arena.as_mut_slice())
            .unwrap()
            .with_prefetch_topk(topk)
            .with_prefetch(&mut hint);
        s = match cache.as_mut() {
            Some(c) => s.with_blob_source(c).unwrap(),
            None => s.with_blob_source(&mut reader).unwrap(),
        };
        let mut logits = vec![0f32; info.outputs];
        let mut failed = None;
        let mut step = s.step(&PROMPT, &mut logits);
        for (i, want) in oracle.iter().enumerate() {
            match step {
                Ok(_) => {
                    let bits: Vec<u32> = logits.iter().map(|v| v.to_bits()).collect();
                    assert!(bits == *want, "step {i} before the fault: logits differ");
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if i == DECODE {
                break;
            }
            let next = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            step = s.step(&[next], &mut logits);
        }
        let e = failed.unwrap_or_else(|| panic!("cache {cached}, top-{topk}: no step failed"));
        assert!(
            matches!(e, Error::Io(_)) && e.to_string().contains("cannot read an expert blob"),
            "cache {cached}, top-{topk}: {e}"
        );
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn one_layers_active_experts_set_the_budget_tools_require() {
    let (path, mapped) = package("layer");
    let model = mapped.model().unwrap();
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let s = Session::new(&model, 0, arena.as_mut_slice()).unwrap();
    // Every expert blob of this model has the same size: top-2 of them.
    assert_eq!(
        s.layer_expert_budget(),
        2 * ResidencyCache::min_budget(&model)
    );
    // Below one expert the runtime refuses the cache itself.
    let mut small = AlignedArena::new(ResidencyCache::min_budget(&model) - 64);
    assert!(matches!(
        ResidencyCache::new(&model, small.as_mut_slice()),
        Err(Error::BudgetTooSmall { .. })
    ));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
