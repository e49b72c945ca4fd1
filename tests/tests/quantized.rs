//! Quantized expert blobs: the runtime on a quantized package against the
//! scalar reference run on the *dequantized* weights (the exact values the
//! kernels multiply by). f16 keeps f32 activations, so it must match to f32
//! rounding; int8/int4/int2 also quantize activations (per block / per LUT
//! table), which bounds how close they can be.

use taskpath_checkpoint::{
    random_checkpoint, random_inputs, Checkpoint, Matrix, RandomSpec, SplitMix64, Tensor,
};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{
    AlignedArena, Error, Kernels, Model, Session, SessionOptions, WeightFormat,
};
use taskpath_tests::reference;

/// `ck` with every expert matrix (or factor) replaced by dequantize(quantize(.)).
fn dequantized(ck: &Checkpoint, fmt: WeightFormat) -> Checkpoint {
    let mut out = ck.clone();
    let round = |t: &Tensor| -> Tensor {
        let (r, c) = (t.shape[0], t.shape[1]);
        let mut packed = vec![0u8; fmt.packed_bytes(r, c)];
        taskpath_cpu::quant::quantize(fmt, r, c, &t.data, &mut packed).unwrap();
        let mut back = vec![0f32; r * c];
        taskpath_cpu::quant::dequantize(fmt, r, c, &packed, &mut back).unwrap();
        Tensor::new(t.shape.clone(), back)
    };
    for (name, _, lr) in ck.config.expected_tensors() {
        if !(lr && name.starts_with("expert.")) {
            continue;
        }
        match ck.matrix(&name) {
            Matrix::Full(w) => {
                out.tensors.insert(name, round(w));
            }
            Matrix::LowRank(u, v) => {
                out.tensors.insert(format!("{name}.u"), round(u));
                out.tensors.insert(format!("{name}.v"), round(v));
            }
        }
    }
    out
}

/// Largest |runtime - reference(dequantized)| / max(1, |reference|).
fn worst_error(ck: &Checkpoint, fmt: WeightFormat, kernels: Option<Kernels>) -> f64 {
    let opts = PackOptions {
        quant: Some(fmt),
        ..Default::default()
    };
    let bytes = AlignedArena::from_bytes(&pack(ck, &opts).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let oracle = dequantized(ck, fmt);
    let mut rng = SplitMix64::new(17);
    let mut worst = 0f64;
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let mut arena = AlignedArena::new(info.arena_bytes);
        let so = SessionOptions {
            kernels,
            ..Default::default()
        };
        let mut s = Session::with_options(&model, t, arena.as_mut_slice(), so).unwrap();
        for _ in 0..8 {
            let x = random_inputs(&ck.config, t, &mut rng);
            let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![0f32; info.outputs];
            s.run(&refs, &mut out).unwrap();
            let want = reference::forward(&oracle, t, &x, None).unwrap();
            for (a, b) in out.iter().zip(&want.logits) {
                worst = taskpath_tests::nan_max(
                    worst,
                    f64::from((a - b).abs()) / f64::from(b.abs()).max(1.0),
                );
            }
        }
    }
    worst
}

fn model() -> Checkpoint {
    let mut spec = RandomSpec::small(64, 4, 5, 2, 2);
    spec.ffn_hidden = 96;
    spec.rank = 16;
    random_checkpoint(&spec, 8)
}

#[test]
fn f16_experts_match_the_dequantized_reference_to_f32_rounding() {
    let err = worst_error(&model(), WeightFormat::F16, None);
    assert!(err < 1e-5, "{err:e}");
}

#[test]
fn integer_formats_stay_within_the_activation_quantization_bound() {
    let ck = model();
    for (fmt, bound) in [
        (WeightFormat::I8Row, 6e-2),
        (WeightFormat::I4G32, 6e-2),
        (WeightFormat::I4G64Z, 6e-2),
        (WeightFormat::I2G32, 6e-2),
    ] {
        let best = worst_error(&ck, fmt, None);
        let generic = worst_error(&ck, fmt, Some(Kernels::generic()));
        eprintln!("{fmt}: best kernels {best:.2e}, generic {generic:.2e}");
        assert!(
            best < bound && generic < bound,
            "{fmt}: {best:e} / {generic:e} >= {bound:e}"
        );
    }
}

#[test]
fn quantized_packages_are_smaller_and_a_bad_layout_length_is_refused() {
    let ck = model();
    let f32_len = pack(&ck, &PackOptions::default()).unwrap().len();
    let q = pack(
        &ck,
        &PackOptions {
            quant: Some(WeightFormat::I4G32),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(q.len() < f32_len, "{} vs {f32_len}", q.len());
    // Shrink one quantized tensor's byte length (re-sealed): the reader
    // accepts the range, the runtime refuses the layout at session creation.
    let a = AlignedArena::from_bytes(&q);
    let p = taskpath_format::Package::parse(a.as_slice()).unwrap();
    let (i, _) = p
        .tensors()
        .iter()
        .enumerate()
        .find(|(_, t)| t.format == WeightFormat::I4G32.id())
        .unwrap();
    let st = u64::from_le_bytes(q[32..40].try_into().unwrap()) as usize;
    let n = u32::from_le_bytes(q[40..44].try_into().unwrap()) as usize;
    let sec = (0..n)
        .map(|k| st + 24 * k)
        .find(|&e| u32::from_le_bytes(q[e..e + 4].try_into().unwrap()) == 4)
        .unwrap();
    let off = u64::from_le_bytes(q[sec + 8..sec + 16].try_into().unwrap()) as usize + i * 48 + 36;
    let mut m = q.clone();
    let b = u32::from_le_bytes(m[off..off + 4].try_into().unwrap());
    m[off..off + 4].copy_from_slice(&(b - 16).to_le_bytes());
    let data_off = u64::from_le_bytes(m[48..56].try_into().unwrap()) as usize;
    let mc = xxhash_rust::xxh3::xxh3_64(&m[128..data_off]);
    m[64..72].copy_from_slice(&mc.to_le_bytes());
    let hc = xxhash_rust::xxh3::xxh3_64(&m[..120]);
    m[120..128].copy_from_slice(&hc.to_le_bytes());
    let a = AlignedArena::from_bytes(&m);
    let model = Model::from_bytes(a.as_slice()).unwrap();
    let refused = (0..model.task_count()).any(|t| {
        let mut arena = AlignedArena::new(model.task(t).unwrap().arena_bytes);
        matches!(Session::new(&model, t, arena.as_mut_slice()), Err(Error::InvalidProgram { why, .. }) if why.contains("layout"))
    });
    assert!(refused);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn a_format_without_a_kernel_here_is_named_with_the_missing_feature() {
    use taskpath_cpu::qmatvec::CpuFeatures;
    let ck = model();
    let q = pack(
        &ck,
        &PackOptions {
            quant: Some(WeightFormat::I4G32),
            ..Default::default()
        },
    )
    .unwrap();
    let a = AlignedArena::from_bytes(&q);
    let model = Model::from_bytes(a.as_slice()).unwrap();
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    // A table for a CPU without SIMD that refuses generic fallbacks: what a
    // deployment asking for "SIMD or nothing" sees on such a CPU.
    let kernels = Kernels::for_features(CpuFeatures::NONE).simd_only();
    let so = SessionOptions {
        kernels: Some(kernels),
        ..Default::default()
    };
    let e = Session::with_options(&model, 0, arena.as_mut_slice(), so).unwrap_err();
    let want = if cfg!(target_arch = "x86_64") {
        "avx2"
    } else {
        "neon"
    };
    assert_eq!(
        e,
        Error::UnsupportedFormat {
            format: 4,
            name: "i4g32",
            missing: want
        }
    );
    assert!(
        e.to_string().contains("i4g32") && e.to_string().contains(want),
        "{e}"
    );
    // The same package runs with the generic kernels.
    let so = SessionOptions {
        kernels: Some(Kernels::generic()),
        ..Default::default()
    };
    Session::with_options(&model, 0, arena.as_mut_slice(), so).unwrap();
}
