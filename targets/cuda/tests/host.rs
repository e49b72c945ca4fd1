//! Host-side tests: they run everywhere, GPU or not.

mod common;

use taskpath_checkpoint::SplitMix64;
use taskpath_cuda::{CudaBackend, CudaError, CudaOptions, SlotCache};
use taskpath_runtime::format::records::blob_kind;
use taskpath_runtime::{AlignedArena, Backend, Model, ResidencyCache, WeightFormat};

/// The device cache's bookkeeping makes the same choices as the CPU
/// `ResidencyCache` (the oracle) on the same request stream: same hits,
/// misses, evictions and resident set after every request, pins included.
/// Full-rank experts have blobs of one size, where LRU over fixed slots
/// (device) and LRU over a byte budget (CPU) are the same policy.
#[test]
fn slot_cache_follows_the_cpu_residency_policy() {
    let ck = common::checkpoint(0);
    let bytes = common::packed(&ck, WeightFormat::F16);
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let experts: Vec<(u32, usize)> = (0..model.blob_count() as u32)
        .filter_map(|b| model.blob(b))
        .filter(|b| b.rec.kind == blob_kind::EXPERT)
        .map(|b| (b.index, b.bytes.len()))
        .collect();
    assert!(experts.len() >= 6, "{} expert blobs", experts.len());
    let max = experts.iter().map(|e| e.1).max().unwrap();
    assert!(
        experts.iter().all(|e| e.1 == max),
        "expert blobs differ in size"
    );
    let cpu_slot = max.div_ceil(64) * 64;
    let mut rng = SplitMix64::new(3);
    for slots in [2usize, 3, 5] {
        let mut mem = AlignedArena::new(slots * cpu_slot);
        let mut cpu = ResidencyCache::new(&model, mem.as_mut_slice()).unwrap();
        let mut dev = SlotCache::new(max, slots * max.div_ceil(256) * 256).unwrap();
        assert_eq!(dev.slots(), slots);
        let (b, len) = experts[0];
        if slots > 2 {
            cpu.pin(&model, b).unwrap();
            dev.pin(b, len).unwrap();
        }
        for step in 0..300 {
            let (b, len) = experts[rng.below(experts.len() as u64) as usize];
            use taskpath_runtime::BlobSource;
            cpu.fetch(&model, b).unwrap();
            dev.lookup(b, len).unwrap();
            let (c, d) = (cpu.stats(), dev.stats());
            assert_eq!(
                (c.hits, c.misses, c.evictions, c.bytes_copied),
                (d.hits, d.misses, d.evictions, d.bytes_copied),
                "{slots} slots, step {step}"
            );
            let mut rc: Vec<u32> = cpu.resident().collect();
            let mut rd: Vec<u32> = dev.resident().collect();
            rc.sort_unstable();
            rd.sort_unstable();
            assert_eq!(rc, rd, "{slots} slots, step {step}");
        }
    }
}

/// Without a GPU the backend is unavailable with a reason, and `init`
/// returns that reason instead of panicking. With one, `is_available` is Ok.
#[test]
fn unavailable_backend_says_why_and_never_panics() {
    let cuda = CudaBackend::new(CudaOptions::default());
    assert_eq!(cuda.name(), "cuda");
    match cuda.is_available() {
        Ok(()) => {
            let d = cuda.device().expect("available implies a device");
            eprintln!("CUDA device present: {} ({})", d.name, d.kernels_from);
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("CUDA unavailable, as expected on this machine: {msg}");
            assert!(msg.starts_with("CUDA is not available: "), "{msg}");
            assert!(matches!(e, CudaError::Unavailable(_)));
            let ck = common::checkpoint(0);
            let bytes = common::packed(&ck, WeightFormat::F32);
            let model = Model::from_bytes(bytes.as_slice()).unwrap();
            let info = model.task(0).unwrap();
            let mut arena = AlignedArena::new(info.arena_bytes);
            let err = cuda.init(&model, 0, arena.as_mut_slice()).unwrap_err();
            assert_eq!(err.to_string(), msg);
        }
    }
}
