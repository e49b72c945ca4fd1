//! Device tests: the CUDA backend against the CPU path (the oracle) on
//! random models in every weight format. Each test prints why it skips on
//! a machine without a usable GPU.

mod common;

use taskpath_checkpoint::{random_inputs, ModelConfig, SplitMix64};
use taskpath_cuda::{CudaBackend, CudaOptions, Residency};
use taskpath_runtime::{
    AlignedArena, Backend, CpuBackend, Kernels, Model, SessionOptions, WeightFormat,
};

/// `|cuda - cpu| / max(1, |cpu|)` allowed: the bar.
const TOL: f64 = 1e-4;

fn backend(opts: CudaOptions) -> Option<CudaBackend> {
    let b = CudaBackend::new(opts);
    match b.is_available() {
        Ok(()) => Some(b),
        Err(e) => {
            eprintln!("skipping device test: {e}");
            None
        }
    }
}

/// Worst relative difference between the CUDA and CPU outputs over every
/// task and `samples` random inputs; returns the CUDA outputs too.
fn compare(
    cuda: &CudaBackend,
    model: &Model<'_>,
    config: &ModelConfig,
    samples: usize,
) -> (f64, Vec<Vec<f32>>) {
    let cpu = CpuBackend::with_options(SessionOptions {
        verify_path: true,
        kernels: Some(Kernels::generic()),
    });
    let mut rng = SplitMix64::new(11);
    let (mut worst, mut outs) = (0f64, Vec::new());
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let mut a1 = AlignedArena::new(info.arena_bytes);
        let mut a2 = AlignedArena::new(info.arena_bytes);
        let mut hc = cpu.init(model, t, a1.as_mut_slice()).unwrap();
        let mut hg = cuda.init(model, t, a2.as_mut_slice()).unwrap();
        for _ in 0..samples {
            let x = random_inputs(config, t, &mut rng);
            let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
            let mut yc = vec![0f32; info.outputs];
            let mut yg = vec![0f32; info.outputs];
            cpu.execute(&mut hc, &refs, &mut yc).unwrap();
            let sg = cuda.execute(&mut hg, &refs, &mut yg).unwrap();
            assert!(sg.expert_components > 0);
            for (g, c) in yg.iter().zip(&yc) {
                let d = f64::from((g - c).abs()) / f64::from(c.abs()).max(1.0);
                assert!(d.is_finite(), "task {t}: {g} vs {c}");
                worst = worst.max(d);
            }
            outs.push(yg);
        }
    }
    (worst, outs)
}

#[test]
fn every_weight_format_matches_the_cpu_path() {
    let Some(cuda) = backend(CudaOptions::default()) else {
        return;
    };
    for rank in [0usize, 16] {
        let ck = common::checkpoint(rank);
        // The formats this backend has kernels for (not q4_0 / q8_0 yet).
        for f in taskpath_cpu::quant::ALL
            .into_iter()
            .filter(|&f| taskpath_cuda::geometry::supported(f))
        {
            let bytes = common::packed(&ck, f);
            let model = Model::from_bytes(bytes.as_slice()).unwrap();
            let (worst, _) = compare(&cuda, &model, &ck.config, 6);
            eprintln!("rank {rank:2} {f}: worst relative difference {worst:.2e}");
            assert!(worst <= TOL, "rank {rank} {f}: {worst:e} > {TOL:e}");
        }
    }
}

/// Residency changes where the weights are read from, never the result:
/// mapped package memory, a cache holding everything and a cache so small
/// it evicts on almost every token all give bit-identical outputs.
#[test]
fn residency_modes_and_a_tiny_cache_give_identical_outputs() {
    let ck = common::checkpoint(16);
    let bytes = common::packed(&ck, WeightFormat::I4G32);
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let Some(full) = backend(CudaOptions {
        residency: Residency::DeviceCache,
        ..Default::default()
    }) else {
        return;
    };
    let (w0, base) = compare(&full, &model, &ck.config, 4);
    assert!(w0 <= TOL, "{w0:e}");
    let slot = (0..model.blob_count() as u32)
        .filter_map(|b| model.blob(b))
        .filter(|b| b.rec.kind == taskpath_runtime::format::records::blob_kind::EXPERT)
        .map(|b| b.bytes.len())
        .max()
        .unwrap()
        .div_ceil(256)
        * 256;
    let tiny = CudaBackend::new(CudaOptions {
        residency: Residency::DeviceCache,
        expert_budget: Some(slot * ck.config.top_k * ck.config.stages),
        ..Default::default()
    });
    let (_, outs) = compare(&tiny, &model, &ck.config, 4);
    assert_eq!(outs, base, "a tiny cache changed the outputs");
    let mapped = CudaBackend::new(CudaOptions {
        residency: Residency::Mapped,
        ..Default::default()
    });
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    if let Err(e) = mapped.init(&model, 0, arena.as_mut_slice()) {
        // Some sandboxes refuse to pin host pages; say so rather than fail.
        eprintln!("skipping the mapped-memory comparison: {e}");
        assert!(matches!(e, taskpath_cuda::CudaError::Unavailable(_)), "{e}");
        return;
    }
    let (_, outs) = compare(&mapped, &model, &ck.config, 4);
    assert_eq!(outs, base, "mapped package memory changed the outputs");
}

#[test]
fn a_budget_below_one_tokens_experts_is_refused_at_init() {
    let Some(_) = backend(CudaOptions::default()) else {
        return;
    };
    let ck = common::checkpoint(0);
    let bytes = common::packed(&ck, WeightFormat::F16);
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let cuda = CudaBackend::new(CudaOptions {
        residency: Residency::DeviceCache,
        expert_budget: Some(1),
        ..Default::default()
    });
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let err = cuda.init(&model, 0, arena.as_mut_slice()).unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let Some(cuda) = backend(CudaOptions::default()) else {
        return;
    };
    let ck = common::checkpoint(0);
    let bytes = common::packed(&ck, WeightFormat::F32);
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut h = cuda.init(&model, 0, arena.as_mut_slice()).unwrap();
    let mut y = vec![0f32; info.outputs];
    let err = cuda.execute(&mut h, &[], &mut y).unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
    let mut short = vec![0f32; info.outputs + 1];
    let x = random_inputs(&ck.config, 0, &mut SplitMix64::new(1));
    let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
    assert!(cuda.execute(&mut h, &refs, &mut short).is_err());
}
