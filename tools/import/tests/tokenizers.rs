//! Token ids equal the committed references (models/llm-tiny/fixtures/):
//! transformers' `tokenizers` for the byte-level BPE models, sentencepiece
//! (which llama.cpp matches) for Mixtral's SentencePiece model.

mod common;

use common::{json, read, root, u32s};
use taskpath_import::{Checkpoint, Tokenizer};

const ARCHS: [&str; 6] = [
    "mixtral",
    "olmoe",
    "qwen2moe",
    "qwen3moe",
    "granitemoe",
    "deepseekv2",
];
const TEXTS: [&str; 4] = ["ascii_prose", "unicode_ws", "python_src", "endoftext"];

fn text(name: &str) -> String {
    String::from_utf8(read(&format!("fixtures/tokenizer/{name}.txt"))).unwrap()
}

/// The reference ids: sentencepiece for Mixtral, tokenizers for the others.
fn reference(arch: &str, name: &str) -> Vec<u32> {
    let src = if arch == "mixtral" { "spm" } else { "hf" };
    u32s(&format!("fixtures/{arch}/tok.{name}.{src}.u32"))
}

#[test]
fn hf_directory_tokenizers_match_the_reference() {
    for arch in ARCHS {
        let tok = Checkpoint::open(root().join(arch))
            .unwrap()
            .tokenizer()
            .unwrap();
        assert_eq!(
            tok.kind(),
            if arch == "mixtral" {
                "spm"
            } else {
                "tokenizers"
            }
        );
        for name in TEXTS {
            let t = text(name);
            assert_eq!(
                tok.encode(&t).unwrap(),
                reference(arch, name),
                "{arch} {name}"
            );
        }
    }
}

#[test]
fn gguf_vocabularies_match_the_reference() {
    for arch in ARCHS {
        let c = Checkpoint::open(root().join(format!("gguf/{arch}-f32.gguf"))).unwrap();
        let tok = c.tokenizer().unwrap();
        for name in TEXTS {
            let t = text(name);
            let ids = tok.encode(&t).unwrap();
            assert_eq!(ids, reference(arch, name), "{arch} {name}");
            // llama.cpp: the SentencePiece path treats `<|endoftext|>` as text
            // (special=False); the byte-level BPE maps it to its id as
            // transformers does (llama.cpp's special=True).
            let llama = if arch == "mixtral" {
                "llamacpp"
            } else {
                "llamacpp-special"
            };
            assert_eq!(
                ids,
                u32s(&format!("fixtures/{arch}/tok.{name}.{llama}.u32")),
                "{arch} {name} vs llama.cpp"
            );
        }
    }
}

#[test]
fn prompts_and_special_tokens() {
    let m = json("fixtures/manifest.json");
    let prompt = m["prompt"]["text"].as_str().unwrap();
    for arch in ARCHS {
        for path in [
            root().join(arch),
            root().join(format!("gguf/{arch}-f32.gguf")),
        ] {
            let c = Checkpoint::open(&path).unwrap();
            let tok = c.tokenizer().unwrap();
            assert_eq!(tok.bos_id(), c.config().bos_token_id, "{}", path.display());
            assert_eq!(tok.eos_id(), c.config().eos_token_id, "{}", path.display());
            let ids = tok.encode_with_special(prompt).unwrap();
            let want = u32s(&format!("fixtures/{arch}/prompt.u32"));
            assert_eq!(&ids[..want.len()], &want[..], "{}", path.display());
            assert_eq!(tok.add_bos(), arch == "mixtral", "{}", path.display());
        }
    }
}

#[test]
fn decode_round_trips() {
    for arch in ARCHS {
        for path in [
            root().join(arch),
            root().join(format!("gguf/{arch}-f32.gguf")),
        ] {
            let tok = Checkpoint::open(&path).unwrap().tokenizer().unwrap();
            for name in ["ascii_prose", "python_src", "unicode_ws"] {
                let t = text(name);
                let back = tok.decode(&tok.encode(&t).unwrap()).unwrap();
                assert_eq!(back, t, "{} {name}", path.display());
            }
        }
    }
}

/// Mixtral's tokenizer.json (transformers' conversion of the SentencePiece
/// model) still loads on its own and gives transformers' ids.
#[test]
fn converted_tokenizer_json_gives_transformers_ids() {
    let tok = Tokenizer::from_tokenizer_json(&root().join("mixtral/tokenizer.json")).unwrap();
    for name in TEXTS {
        assert_eq!(
            tok.encode(&text(name)).unwrap(),
            u32s(&format!("fixtures/mixtral/tok.{name}.hf.u32")),
            "{name}"
        );
    }
}
