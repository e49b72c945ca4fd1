//! Dequantization is bit-identical to gguf-py's `gguf.quants.dequantize` on
//! the committed GGUFs (models/llm-tiny/fixtures/dequant/dequant.json): every
//! tensor of each file by SHA-256 of its f32 values, and the picked rows value
//! by value; the same rows again through the neutral API.

mod common;

use common::{f32_bits, json, root, sha256};
use taskpath_import::quant::{dequantize_into, DType};
use taskpath_import::{Checkpoint, GgufFile, TensorName};

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn every_tensor_matches_gguf_py() {
    let index = json("fixtures/dequant/dequant.json");
    let files = index["files"].as_object().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (rel, f) in files {
        let g = GgufFile::open(&root().join(rel)).unwrap();
        for (name, t) in f["tensors"].as_object().unwrap() {
            let info = g
                .header()
                .tensor(name)
                .unwrap_or_else(|| panic!("{rel}: {name}"));
            let ty = t["type"].as_str().unwrap();
            assert_eq!(info.type_name(), ty, "{rel} {name}");
            let raw = &g.bytes()[info.data.clone()];
            assert_eq!(
                sha256(raw),
                t["sha256_raw"].as_str().unwrap(),
                "{rel} {name} raw bytes"
            );
            let dtype = DType::from_ggml(info.ggml_type).unwrap();
            let n: u64 = info.ne.iter().product();
            let mut out = vec![0f32; n as usize];
            dequantize_into(dtype, raw, &mut out).unwrap();
            assert_eq!(
                sha256(&le_f32(&out)),
                t["sha256_f32"].as_str().unwrap(),
                "{rel} {name} ({ty})"
            );
            seen.insert(ty.to_string());
        }
        for p in f["picked"].as_array().unwrap() {
            let name = p["tensor"].as_str().unwrap();
            let info = g.header().tensor(name).unwrap();
            let dtype = DType::from_ggml(info.ggml_type).unwrap();
            let row_len = info.ne[0] as usize;
            let first = p["rows"][0].as_u64().unwrap() as usize;
            let count = p["rows"][1].as_u64().unwrap() as usize;
            let rb = dtype.row_bytes(row_len).unwrap();
            let raw =
                &g.bytes()[info.data.start + first * rb..info.data.start + (first + count) * rb];
            let mut out = vec![0f32; count * row_len];
            dequantize_into(dtype, raw, &mut out).unwrap();
            let want = f32_bits(&format!("fixtures/dequant/{}", p["file"].as_str().unwrap()));
            let got: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "{rel} {name} rows {first}..{}", first + count);
        }
    }
    for ty in ["F32", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] {
        assert!(
            seen.contains(ty),
            "no {ty} tensor in the fixtures ({seen:?})"
        );
    }
}

/// The picked expert rows through `Checkpoint::tensor` (a zero-copy slice of
/// the stacked tensor) and its Q8_0/Q4_0 block views.
#[test]
fn neutral_api_dequantizes_the_same_rows() {
    let index = json("fixtures/dequant/dequant.json");
    for (rel, f) in index["files"].as_object().unwrap() {
        let c = Checkpoint::open(root().join(rel)).unwrap();
        let h = c.config().hidden_size;
        for p in f["picked"].as_array().unwrap() {
            if p["tensor"] != "blk.1.ffn_down_exps.weight" {
                continue;
            }
            let first = p["rows"][0].as_u64().unwrap() as usize;
            let count = p["rows"][1].as_u64().unwrap() as usize;
            let (expert, row0) = (first / h, first % h);
            let t = c
                .tensor(TensorName::ExpertDown { layer: 1, expert })
                .unwrap();
            assert!(t.is_borrowed());
            let all = t.to_f32().unwrap();
            let got: Vec<u32> = all[row0 * t.cols..(row0 + count) * t.cols]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let want = f32_bits(&format!("fixtures/dequant/{}", p["file"].as_str().unwrap()));
            assert_eq!(got, want, "{rel} expert {expert}");
            // Block views: scale x quant reproduces the values.
            match t.dtype {
                DType::Q8_0 => {
                    let b = t.q8_0_blocks().unwrap();
                    assert_eq!(b.len(), t.rows * t.cols / 32);
                    for (i, v) in all.iter().enumerate() {
                        let blk = &b[i / 32];
                        assert_eq!(
                            v.to_bits(),
                            (blk.scale() * f32::from(blk.qs[i % 32])).to_bits()
                        );
                    }
                    assert!(t.q4_0_blocks().is_err());
                }
                DType::Q4_0 => {
                    let b = t.q4_0_blocks().unwrap();
                    for (i, v) in all.iter().enumerate() {
                        let blk = &b[i / 32];
                        assert_eq!(
                            v.to_bits(),
                            (blk.scale() * f32::from(blk.quant(i % 32))).to_bits()
                        );
                    }
                    assert!(t
                        .q8_0_blocks()
                        .unwrap_err()
                        .to_string()
                        .contains("is Q4_0, not Q8_0"));
                }
                _ => {}
            }
        }
    }
}
