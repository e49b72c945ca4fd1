//! Conformance against the tiny models and oracle fixtures in models/llm-tiny/
//! (made by scripts/llm/; see models/llm-tiny/fixtures/manifest.json).

use std::path::{Path, PathBuf};

use taskpath_import::{Checkpoint, DType, SourceKind, TensorName};

const ARCHS: [&str; 6] = [
    "mixtral",
    "olmoe",
    "qwen2moe",
    "qwen3moe",
    "granitemoe",
    "deepseekv2",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/llm-tiny")
}

fn open(rel: &str) -> Checkpoint {
    let p = root().join(rel);
    Checkpoint::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn hf_and_gguf_configs_are_equal() {
    for arch in ARCHS {
        let hf = open(arch);
        let gg = open(&format!("gguf/{arch}-f32.gguf"));
        assert_eq!(hf.kind(), SourceKind::HuggingFace);
        assert_eq!(gg.kind(), SourceKind::Gguf);
        assert_eq!(hf.config(), gg.config(), "{arch}");
    }
}

#[test]
fn hf_and_gguf_f32_tensors_are_equal() {
    for arch in ARCHS {
        let hf = open(arch);
        let gg = open(&format!("gguf/{arch}-f32.gguf"));
        let names = hf.tensor_names();
        assert_eq!(names, gg.tensor_names());
        for n in names {
            let a = hf.tensor(n).unwrap();
            let b = gg.tensor(n).unwrap();
            assert_eq!(a.shape(), b.shape(), "{arch} {n}");
            assert!(a.is_borrowed(), "{arch} {n}: HF tensors are views");
            let permuted = hf.config().arch.gguf_permutes_qk()
                && matches!(n, TensorName::AttnQ { .. } | TensorName::AttnK { .. });
            let split = matches!(n, TensorName::AttnKvB { .. });
            assert_eq!(
                b.is_borrowed(),
                !(permuted || split),
                "{arch} {n}: {}",
                b.source_name
            );
            assert_eq!(
                bits(&a.to_f32().unwrap()),
                bits(&b.to_f32().unwrap()),
                "{arch} {n}: {} vs {}",
                a.source_name,
                b.source_name
            );
        }
    }
}

/// f16 / bf16 copies of the HF models hold the f32 weights rounded to
/// nearest-even; the f16 GGUF's F16 tensors are the same f16 values.
#[test]
fn half_precision_copies() {
    for (dir, base, dtype) in [
        ("mixtral-f16", "mixtral", DType::F16),
        ("olmoe-bf16", "olmoe", DType::BF16),
    ] {
        let half = open(dir);
        let full = open(base);
        assert_eq!(half.config(), full.config());
        for n in half.tensor_names() {
            let h = half.tensor(n).unwrap();
            assert_eq!(h.dtype, dtype, "{dir} {n}");
            let f = full.tensor(n).unwrap().to_f32().unwrap();
            let rounded: Vec<u32> = match dtype {
                DType::F16 => f
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_f32().to_bits())
                    .collect(),
                _ => f
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_f32().to_bits())
                    .collect(),
            };
            assert_eq!(bits(&h.to_f32().unwrap()), rounded, "{dir} {n}");
        }
    }
    let hf16 = open("mixtral-f16");
    let gg16 = open("gguf/mixtral-f16.gguf");
    let mut compared = 0;
    for n in hf16.tensor_names() {
        let g = gg16.tensor(n).unwrap();
        if g.dtype == DType::F16 {
            assert_eq!(
                hf16.tensor(n).unwrap().to_f32().unwrap(),
                g.to_f32().unwrap(),
                "{n}"
            );
            compared += 1;
        }
    }
    assert!(compared > 20, "{compared}");
}

/// The sharded copy (model.safetensors.index.json + 3 files) gives the same
/// bytes as the single-file model.
#[test]
fn sharded_checkpoint() {
    let sharded = open("qwen3moe-sharded");
    let single = open("qwen3moe");
    assert_eq!(sharded.config(), single.config());
    for n in single.tensor_names() {
        let a = sharded.tensor(n).unwrap();
        assert!(a.is_borrowed());
        assert_eq!(a.data, single.tensor(n).unwrap().data, "{n}");
    }
}

/// Every committed GGUF (all types) opens, has the f32 file's configuration,
/// and dequantizes every tensor; Q/K of llama/granitemoe are unpermuted by
/// moving whole rows, so their quantized bytes are the stored rows reordered.
#[test]
fn every_gguf_type_opens() {
    let mut n_files = 0;
    for e in std::fs::read_dir(root().join("gguf")).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        let c = Checkpoint::open(&p).unwrap_or_else(|e| panic!("{stem}: {e}"));
        if let Some((arch, _)) = stem.rsplit_once('-').filter(|(a, _)| ARCHS.contains(a)) {
            assert_eq!(
                c.config(),
                open(&format!("gguf/{arch}-f32.gguf")).config(),
                "{stem}"
            );
        }
        for n in c.tensor_names() {
            let t = c.tensor(n).unwrap();
            assert_eq!(t.to_f32().unwrap().len(), t.rows * t.cols, "{stem} {n}");
        }
        n_files += 1;
    }
    assert!(n_files >= 20, "{n_files}");
}

#[test]
fn unpermuted_quantized_rows_are_moved_whole() {
    for arch in ["mixtral", "granitemoe"] {
        for ty in ["q8_0", "q4_0"] {
            let c = open(&format!("gguf/{arch}-{ty}.gguf"));
            let g = c.gguf().unwrap();
            let cfg = c.config().clone();
            for (n, heads) in [
                (TensorName::AttnQ { layer: 1 }, cfg.num_heads),
                (TensorName::AttnK { layer: 1 }, cfg.num_kv_heads),
            ] {
                let t = c.tensor(n).unwrap();
                assert!(
                    !t.is_borrowed() && t.dtype.is_quantized(),
                    "{arch} {ty} {n}"
                );
                let info = g.header().tensor(&t.source_name).unwrap();
                let stored = &g.bytes()[info.data.clone()];
                let rb = t.row_bytes();
                let d = t.rows / heads;
                for r in 0..t.rows {
                    let (h, rest) = (r / d, r % d);
                    let (j, i) = (rest / (d / 2), rest % (d / 2));
                    let s = h * d + 2 * i + j;
                    assert_eq!(
                        t.row(r).unwrap(),
                        &stored[s * rb..(s + 1) * rb],
                        "{arch} {ty} {n} row {r}"
                    );
                }
            }
        }
    }
}
