//! (f) taskpath-import's safetensors reader on arbitrary bytes: header
//! validation and the first rows of every tensor; then, when the header is
//! valid, the bytes as the weights of each tiny model's config.json
//! (models/llm-tiny/): every tensor located and shape-checked, every neutral
//! tensor fetched (per-expert and stacked 3-D slices) and its first row
//! dequantized. Never a panic, an out-of-bounds access or an unbounded
//! allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpath_import::quant::{dequantize_into, DType};
use taskpath_import::safetensors::StHeader;
use taskpath_import::Checkpoint;

const CONFIGS: [&[u8]; 6] = [
    include_bytes!("../../models/llm-tiny/mixtral/config.json"),
    include_bytes!("../../models/llm-tiny/olmoe/config.json"),
    include_bytes!("../../models/llm-tiny/qwen2moe/config.json"),
    include_bytes!("../../models/llm-tiny/qwen3moe/config.json"),
    include_bytes!("../../models/llm-tiny/granitemoe/config.json"),
    include_bytes!("../../models/llm-tiny/deepseekv2/config.json"),
];

fn first_rows(dtype: DType, bytes: &[u8], cols: usize) {
    let Some(rb) = dtype.row_bytes(cols).filter(|&rb| rb > 0 && cols <= 1 << 16) else {
        return;
    };
    for row in bytes.chunks_exact(rb).take(2) {
        let mut out = vec![0f32; cols];
        dequantize_into(dtype, row, &mut out).expect("a whole row dequantizes");
    }
}

fuzz_target!(|data: &[u8]| {
    let h = match StHeader::parse(data, "fuzz.safetensors") {
        Ok(h) => h,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for t in h.tensors() {
        assert!(t.data.end <= data.len());
        let d = match t.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            _ => continue,
        };
        let cols = t.shape.last().copied().unwrap_or(1) as usize;
        first_rows(d, &data[t.data.clone()], cols);
    }
    for cfg in CONFIGS {
        match Checkpoint::from_hf_parts(cfg, vec![("fuzz.safetensors".into(), data.to_vec())]) {
            Ok(c) => {
                for n in c.tensor_names() {
                    if let Ok(t) = c.tensor(n) {
                        assert!(t.is_borrowed());
                        first_rows(t.dtype, &t.data, t.cols);
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
