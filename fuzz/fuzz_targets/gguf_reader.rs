//! (e) taskpath-import's GGUF reader on arbitrary bytes: header validation,
//! every metadata accessor on every key, the first rows of every tensor
//! dequantized, the tokenizer built from the vocabulary and run (a byte-level
//! BPE for one input in eight, it is slow to build), then the
//! whole model opened (config from metadata, every tensor located and
//! shape-checked) and every neutral tensor fetched (Q/K unpermutation, MLA
//! kv_b assembly) with its first row dequantized. Any input must give Ok or
//! a named error: never a panic, an out-of-bounds access or an unbounded
//! allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpath_import::quant::{dequantize_into, DType};
use taskpath_import::{Checkpoint, GgufFile, Tokenizer};

const TEXT: &str = "Hello world! The quick brown fox, 1234 \u{1F916} <|endoftext|>  x";

fn first_rows(dtype: DType, bytes: &[u8], cols: usize) {
    let Some(rb) = dtype.row_bytes(cols).filter(|&rb| rb > 0 && cols <= 1 << 16) else {
        return;
    };
    for row in bytes.chunks_exact(rb).take(2) {
        let mut out = vec![0f32; cols];
        dequantize_into(dtype, row, &mut out).expect("a whole row dequantizes");
    }
}

fn tokenize(t: &Tokenizer) {
    if let Ok(ids) = t.encode(TEXT) {
        let _ = t.decode(&ids);
    }
    let _ = t.encode_with_special("a");
    let _ = t.decode(&[0, 1, 2, u32::MAX]);
}

fuzz_target!(|data: &[u8]| {
    let g = match GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") {
        Ok(g) => g,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let m = g.metadata();
    for (k, _) in g.header().metadata() {
        let _ = m.str(k);
        let _ = m.usize(k);
        let _ = m.f64(k);
        let _ = m.bool(k);
        let _ = m.str_array(k);
        let _ = m.num_array(k);
    }
    for t in g.header().tensors() {
        assert!(t.data.end <= g.bytes().len());
        if let Some(d) = DType::from_ggml(t.ggml_type) {
            first_rows(d, &g.bytes()[t.data.clone()], t.ne[0] as usize);
        }
    }
    // Building a byte-level BPE compiles the `tokenizers` crate's regexes
    // (~75 ms under ASAN): done for one input in eight; the SentencePiece
    // path (this crate's code) every time.
    let bpe = matches!(m.str("tokenizer.ggml.model"), Ok(Some("gpt2")));
    if !bpe || data.len() % 8 == 0 {
        if let Ok(t) = Tokenizer::from_gguf(&m) {
            tokenize(&t);
        }
    }
    match Checkpoint::from_gguf(g) {
        Ok(c) => {
            for n in c.tensor_names() {
                match c.tensor(n) {
                    Ok(t) => {
                        assert_eq!(t.data.len(), t.rows * t.dtype.row_bytes(t.cols).unwrap());
                        first_rows(t.dtype, &t.data, t.cols);
                        let _ = t.q8_0_blocks();
                        let _ = t.q4_0_blocks();
                    }
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
