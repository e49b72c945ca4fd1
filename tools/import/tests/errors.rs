//! Every failure names its problem: truncated files, unknown architectures,
//! missing tensors, shape mismatches, unsupported tensor types and a
//! vocabulary that does not fit the embedding.

mod common;

use common::{copy_dir, read, root, temp_dir};
use taskpath_import::{Checkpoint, Error};

fn open_err(p: &std::path::Path) -> (Error, String) {
    let e = Checkpoint::open(p).expect_err("must fail");
    let s = e.to_string();
    (e, s)
}

/// Position of the type field of a tensor info in a GGUF file.
fn gguf_type_field(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

#[test]
fn truncated_safetensors_names_file_and_field() {
    let d = copy_dir("qwen3moe", "trunc-st");
    let f = d.join("model.safetensors");
    let full = std::fs::read(&f).unwrap();
    for cut in [0, 5, 100, full.len() / 2, full.len() - 1] {
        std::fs::write(&f, &full[..cut]).unwrap();
        let (e, s) = open_err(&d);
        assert!(matches!(e, Error::Truncated { .. }), "{cut}: {s}");
        assert!(s.contains("model.safetensors: truncated: "), "{cut}: {s}");
        let field = match cut {
            0 | 5 => "header length",
            100 => "JSON header",
            _ => "data",
        };
        assert!(s.contains(field), "{cut}: {s}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn truncated_gguf_names_file_and_field() {
    let d = temp_dir("trunc-gguf");
    let f = d.join("m.gguf");
    let full = read("gguf/qwen3moe-q8_0.gguf");
    for (cut, field) in [
        (7, "version"),
        (20, "metadata_kv_count"),
        (200, "metadata"),
        (full.len() - 1, "data of tensor"),
    ] {
        std::fs::write(&f, &full[..cut]).unwrap();
        let (e, s) = open_err(&f);
        assert!(matches!(e, Error::Truncated { .. }), "{cut}: {s}");
        assert!(
            s.contains("m.gguf: truncated: ") && s.contains(field),
            "{cut}: {s}"
        );
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let d = copy_dir("olmoe", "arch");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("OlmoeForCausalLM", "GemmaForCausalLM"),
    )
    .unwrap();
    let (e, s) = open_err(&d);
    assert!(matches!(e, Error::UnknownArchitecture { .. }), "{s}");
    assert!(s.contains("unknown architecture `GemmaForCausalLM`"), "{s}");
    assert!(
        s.contains("MixtralForCausalLM") && s.contains("DeepseekV2ForCausalLM"),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();

    // GGUF: same-length rename of general.architecture's value.
    let d = temp_dir("arch-gguf");
    let mut b = read("gguf/olmoe-f32.gguf");
    let key = b"general.architecture";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8;
    assert_eq!(&b[at..at + 5], b"olmoe");
    b[at..at + 5].copy_from_slice(b"gemma");
    std::fs::write(d.join("m.gguf"), &b).unwrap();
    let (_, s) = open_err(&d.join("m.gguf"));
    assert!(
        s.contains("unknown architecture `gemma`; supported: llama, olmoe"),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    // Drop one expert tensor from the safetensors file.
    let d = copy_dir("qwen2moe", "missing");
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let h = taskpath_import::safetensors::StHeader::parse(&bytes, "x").unwrap();
    let gone = "model.layers.1.mlp.experts.5.up_proj.weight";
    let kept: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = h
        .tensors()
        .iter()
        .filter(|t| t.name != gone)
        .map(|t| {
            (
                t.name.as_str(),
                t.dtype.as_str(),
                t.shape.clone(),
                bytes[t.data.clone()].to_vec(),
            )
        })
        .collect();
    std::fs::write(&f, taskpath_import::safetensors::build(&kept)).unwrap();
    let (e, s) = open_err(&d);
    assert!(matches!(e, Error::MissingTensor { .. }), "{s}");
    assert!(
        s.contains(&format!("missing tensor `{gone}` (blk.1.expert.5.up)")),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();

    // GGUF: rename a tensor (same length) so the expected name is absent.
    let d = temp_dir("missing-gguf");
    let mut b = read("gguf/qwen2moe-f32.gguf");
    let name = b"blk.0.ffn_gate_inp_shexp.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap();
    b[at..at + 5].copy_from_slice(b"blk.9");
    std::fs::write(d.join("m.gguf"), &b).unwrap();
    let (_, s) = open_err(&d.join("m.gguf"));
    assert!(
        s.contains("missing tensor `blk.0.ffn_gate_inp_shexp.weight` (blk.0.shared.sigmoid_gate)"),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let d = copy_dir("qwen3moe", "shape");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    assert!(cfg.contains("\"moe_intermediate_size\": 96"));
    std::fs::write(
        d.join("config.json"),
        cfg.replace(
            "\"moe_intermediate_size\": 96",
            "\"moe_intermediate_size\": 64",
        ),
    )
    .unwrap();
    let (e, s) = open_err(&d);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{s}");
    assert!(
        s.contains("tensor `model.layers.0.mlp.experts.0.gate_proj.weight` (blk.0.expert.0.gate) has shape [96, 64], the config implies [64, 64]"),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();

    // Granite's stacked input_linear [E, 2I, H] against a wrong expert width.
    let d = copy_dir("granitemoe", "shape3d");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    assert!(cfg.contains("\"intermediate_size\": 96"));
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"intermediate_size\": 96", "\"intermediate_size\": 64"),
    )
    .unwrap();
    let (_, s) = open_err(&d);
    assert!(
        s.contains("tensor `model.layers.0.block_sparse_moe.input_linear.weight` (blk.0.expert.0.gate) has shape [4, 192, 64], the config implies [4, 128, 64]"),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn unsupported_tensor_type_names_the_type() {
    // GGUF: F32 (id 0) -> I32 (id 26), the same size, so the header stays valid.
    let d = temp_dir("type-gguf");
    let mut b = read("gguf/qwen3moe-f32.gguf");
    let at = gguf_type_field(&b, "blk.0.attn_q.weight");
    assert_eq!(&b[at..at + 4], &0u32.to_le_bytes());
    b[at..at + 4].copy_from_slice(&26u32.to_le_bytes());
    std::fs::write(d.join("m.gguf"), &b).unwrap();
    let (e, s) = open_err(&d.join("m.gguf"));
    assert!(matches!(e, Error::UnsupportedType { .. }), "{s}");
    assert!(
        s.contains("tensor `blk.0.attn_q.weight` has unsupported type I32"),
        "{s}"
    );
    // Q5_K (id 13) on a 256-wide row: a known GGML type this importer does not read.
    let mut b = read("gguf/qwen3moe-k256-q4_k.gguf");
    let at = gguf_type_field(&b, "blk.0.attn_k.weight");
    b[at..at + 4].copy_from_slice(&13u32.to_le_bytes()); // Q4_K 144 B -> Q5_K 176 B per block
    std::fs::write(d.join("m.gguf"), &b).unwrap();
    let (_, s) = open_err(&d.join("m.gguf"));
    // The larger blocks now run into the next tensor: caught by the header check.
    assert!(
        s.contains("blk.0.attn_k.weight") && (s.contains("overlaps") || s.contains("truncated")),
        "{s}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    // safetensors: "F32" -> "I32" in the JSON header (same length).
    let d = copy_dir("qwen3moe", "type-st");
    let f = d.join("model.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    let key = br#""model.layers.0.self_attn.q_proj.weight":{"dtype":"F32""#;
    let at = b
        .windows(key.len())
        .position(|w| w == key)
        .expect("header layout");
    let end = at + key.len();
    b[end - 4..end - 1].copy_from_slice(b"I32");
    std::fs::write(&f, &b).unwrap();
    let (_, s) = open_err(&d);
    assert!(
        s.contains("tensor `model.layers.0.self_attn.q_proj.weight` has unsupported type I32"),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn vocab_larger_than_the_embedding_is_an_error() {
    // Mixtral's 1000-token SentencePiece model next to a 512-row embedding.
    let d = copy_dir("qwen3moe", "vocab");
    std::fs::copy(
        root().join("mixtral/tokenizer.model"),
        d.join("tokenizer.model"),
    )
    .unwrap();
    let c = Checkpoint::open(&d).unwrap();
    let e = c.tokenizer().unwrap_err();
    let s = e.to_string();
    assert!(
        matches!(
            e,
            Error::VocabMismatch {
                vocab: 1000,
                embedding_rows: 512
            }
        ),
        "{s}"
    );
    assert!(
        s.contains("the tokenizer has 1000 tokens but the token embedding has 512 rows"),
        "{s}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn not_a_model() {
    let d = temp_dir("notamodel");
    let (_, s) = open_err(&d);
    assert!(s.contains("a directory without config.json"), "{s}");
    std::fs::write(d.join("x.bin"), b"PK\x03\x04rest").unwrap();
    let (_, s) = open_err(&d.join("x.bin"));
    assert!(s.contains("not the GGUF magic"), "{s}");
    let (e, _) = open_err(&d.join("absent"));
    assert!(matches!(e, Error::Io { .. }));
    std::fs::remove_dir_all(d).unwrap();
}
