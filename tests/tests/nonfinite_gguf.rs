//! A GGUF Q8_0 block whose f16 scale `d` is NaN: `pack` keeps GGUF blocks
//! bit for bit, so without a check the NaN would reach every output. It is
//! refused with the tensor named (docs/RELIABILITY.md, "Non-finite values").

use std::path::Path;

use taskpath_import::gguf::GgufHeader;
use taskpath_import::Checkpoint;
use taskpath_pack::llm::{pack_llm, LlmPackOptions};

#[test]
fn pack_refuses_a_gguf_block_with_a_nan_scale_naming_the_tensor() {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llm-tiny/gguf/qwen3moe-q8_0.gguf");
    let mut bytes = std::fs::read(&src).unwrap();
    let name = "blk.0.attn_q.weight";
    let at = {
        let h = GgufHeader::parse(&bytes, "qwen3moe-q8_0.gguf").unwrap();
        let t = h.tensor(name).unwrap();
        assert_eq!(t.type_name(), "Q8_0");
        // Block 1 of row 0: its 2-byte f16 d leads the 34-byte block.
        t.data.start + 34
    };
    bytes[at..at + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
    let dir = std::env::temp_dir().join(format!("taskpath-nan-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("m.gguf");
    std::fs::write(&bad, &bytes).unwrap();
    let ck = Checkpoint::open(&bad).expect("the file itself is well formed");
    let e = pack_llm(&ck, &LlmPackOptions::default()).expect_err("NaN scale packed");
    let msg = format!("{e:#}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        msg.contains(name)
            && msg.contains("block scale d of row 0, columns 32..64 is NaN or infinite"),
        "{msg}"
    );
}
