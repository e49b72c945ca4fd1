//! Element types and GGML block layouts, and their dequantization to f32.
//!
//! Every layout below is little-endian and packed (no padding), exactly as
//! GGML writes it. A tensor row of `n` elements of a block type is `n / QK`
//! consecutive blocks; `n` must be a multiple of the block size `QK`.
//!
//! | type | QK | bytes | block |
//! |---|---|---|---|
//! | `F32` | 1 | 4 | IEEE binary32 |
//! | `F16` | 1 | 2 | IEEE binary16 |
//! | `BF16` | 1 | 2 | bfloat16: the high 16 bits of a binary32 |
//! | `Q8_0` | 32 | 34 | `d: f16`, `qs: [i8; 32]`; `x[i] = d * qs[i]` |
//! | `Q4_0` | 32 | 18 | `d: f16`, `qs: [u8; 16]`; `x[i] = d * ((qs[i] & 0xF) - 8)`, `x[i + 16] = d * ((qs[i] >> 4) - 8)` for `i < 16` |
//! | `Q4_K` | 256 | 144 | `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qs: [u8; 128]` (below) |
//! | `Q6_K` | 256 | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16` (below) |
//!
//! **Q4_K.** The 256 values are 8 sub-blocks of 32. Sub-block `j` has a 6-bit
//! scale `sc[j]` and a 6-bit min `m[j]` packed into `scales`: for `j < 4`,
//! `sc = scales[j] & 63`, `m = scales[j + 4] & 63`; for `j >= 4`,
//! `sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4)` and
//! `m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)`. The 4-bit quants of
//! sub-blocks `2k` and `2k + 1` share the 32 bytes `qs[32k..32k + 32]`: low
//! nibbles for `2k`, high nibbles for `2k + 1`. Then
//! `x = (d * sc) * q - (dmin * m)`.
//!
//! **Q6_K.** The 256 values are two halves of 128; half `h` uses
//! `ql[64h..64h + 64]`, `qh[32h..32h + 32]` and `scales[8h..8h + 8]`. For
//! `l < 32` the four values `l`, `l + 32`, `l + 64`, `l + 96` of the half have
//! the 6-bit quants `(ql[l] & 0xF) | ((qh[l] & 3) << 4)`,
//! `(ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)`,
//! `(ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)` and
//! `(ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)`, each minus 32, and the
//! scales `scales[l / 16]`, `[l / 16 + 2]`, `[l / 16 + 4]`, `[l / 16 + 6]`
//! (signed). Then `x = (d * scale) * q`.
//!
//! The f32 arithmetic is done in the same order as ggml's reference
//! `dequantize_row_*` and gguf-py's `gguf.quants.dequantize`, without fused
//! multiply-adds, so the results are bit-identical to theirs.

use crate::error::{Error, Result};

/// The element types this importer returns tensors in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// GGML Q8_0: blocks of 32 int8 with one f16 scale (34 bytes).
    Q8_0,
    /// GGML Q4_0: blocks of 32 4-bit values, offset 8, one f16 scale (18 bytes).
    Q4_0,
    /// GGML Q4_K: super-blocks of 256 (144 bytes).
    Q4K,
    /// GGML Q6_K: super-blocks of 256 (210 bytes).
    Q6K,
}

impl DType {
    /// Elements per block (1 for the float types).
    pub const fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 => 32,
            DType::Q4K | DType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4K => 144,
            DType::Q6K => 210,
        }
    }

    /// The name GGML and this crate's messages use (`Q4_K`, `BF16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4K => "Q4_K",
            DType::Q6K => "Q6_K",
        }
    }

    /// Whether this is a block-quantized type.
    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes of one row of `cols` elements, or `None` when `cols` is not a
    /// multiple of the block length (or the size overflows).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (cols / self.block_len()).checked_mul(self.block_bytes())
    }

    /// The type with this GGML type id, when it is one this crate handles.
    pub fn from_ggml(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            8 => DType::Q8_0,
            12 => DType::Q4K,
            14 => DType::Q6K,
            30 => DType::BF16,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every GGML type id a GGUF file may hold: (id, name, block length, block
/// bytes). Used to validate tensor sizes in a header even for types this
/// crate does not dequantize, so that the error can name the type.
pub(crate) const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// (name, block length, block bytes) of a GGML type id.
pub(crate) fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == id)
        .map(|&(_, n, b, s)| (n, b, s))
}

/// One Q8_0 block as stored: `d` is the little-endian bits of an f16 scale.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// f16 scale, little-endian bits.
    pub d: [u8; 2],
    /// The 32 quants.
    pub qs: [i8; 32],
}

/// One Q4_0 block as stored: `d` is the little-endian bits of an f16 scale;
/// byte `i` of `qs` holds element `i` in its low nibble and element `i + 16`
/// in its high nibble, each offset by 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// f16 scale, little-endian bits.
    pub d: [u8; 2],
    /// 32 4-bit quants, two per byte.
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::align_of::<BlockQ8_0>() == 1);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::align_of::<BlockQ4_0>() == 1);

impl BlockQ8_0 {
    /// The scale as f32.
    pub fn scale(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
}

impl BlockQ4_0 {
    /// The scale as f32.
    pub fn scale(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }

    /// Element `i` (0..32) as the signed quant in -8..=7.
    pub fn quant(&self, i: usize) -> i8 {
        let b = self.qs[i % 16];
        let n = if i < 16 { b & 0xF } else { b >> 4 };
        n as i8 - 8
    }
}

/// Views `bytes` as Q8_0 blocks without copying.
pub fn blocks_q8_0(bytes: &[u8]) -> Result<&[BlockQ8_0]> {
    if !bytes.len().is_multiple_of(34) {
        return Err(Error::Usage(format!(
            "{} bytes are not a whole number of 34-byte Q8_0 blocks",
            bytes.len()
        )));
    }
    // SAFETY: BlockQ8_0 is repr(C) of byte arrays (size 34, align 1, checked at
    // compile time above), every bit pattern is a valid value, and the length
    // is a whole number of blocks; the result borrows `bytes`.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / 34) })
}

/// Views `bytes` as Q4_0 blocks without copying.
pub fn blocks_q4_0(bytes: &[u8]) -> Result<&[BlockQ4_0]> {
    if !bytes.len().is_multiple_of(18) {
        return Err(Error::Usage(format!(
            "{} bytes are not a whole number of 18-byte Q4_0 blocks",
            bytes.len()
        )));
    }
    // SAFETY: as in blocks_q8_0 (size 18, align 1, any bits valid).
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / 18) })
}

/// f16 bits to f32 (exact).
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// bf16 bits to f32 (exact).
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

fn le16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Dequantizes `bytes` of type `dtype` into `out`; `bytes` must hold exactly
/// `out.len()` elements (a whole number of blocks).
pub fn dequantize_into(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let need = dtype.row_bytes(n).ok_or_else(|| {
        Error::Usage(format!(
            "{n} elements are not a whole number of {dtype} blocks of {}",
            dtype.block_len()
        ))
    })?;
    if bytes.len() != need {
        return Err(Error::Usage(format!(
            "{} bytes given for {n} {dtype} elements, which take {need}",
            bytes.len()
        )));
    }
    let bs = dtype.block_bytes();
    let ql = dtype.block_len();
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::Q8_0 => {
            for (y, b) in out.chunks_exact_mut(ql).zip(bytes.chunks_exact(bs)) {
                let d = f16_to_f32(le16(b, 0));
                for (o, &q) in y.iter_mut().zip(&b[2..34]) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
        DType::Q4_0 => {
            for (y, b) in out.chunks_exact_mut(ql).zip(bytes.chunks_exact(bs)) {
                let d = f16_to_f32(le16(b, 0));
                let qs = &b[2..18];
                for i in 0..16 {
                    y[i] = d * f32::from((qs[i] & 0xF) as i8 - 8);
                    y[i + 16] = d * f32::from((qs[i] >> 4) as i8 - 8);
                }
            }
        }
        DType::Q4K => {
            for (y, b) in out.chunks_exact_mut(ql).zip(bytes.chunks_exact(bs)) {
                let d = f16_to_f32(le16(b, 0));
                let dmin = f16_to_f32(le16(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for k in 0..4 {
                    let (sc0, m0) = scale_min_k4(2 * k, scales);
                    let (sc1, m1) = scale_min_k4(2 * k + 1, scales);
                    let (d0, mm0) = (d * f32::from(sc0), dmin * f32::from(m0));
                    let (d1, mm1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    let q = &qs[32 * k..32 * k + 32];
                    let yy = &mut y[64 * k..64 * k + 64];
                    for l in 0..32 {
                        yy[l] = d0 * f32::from(q[l] & 0xF) - mm0;
                        yy[l + 32] = d1 * f32::from(q[l] >> 4) - mm1;
                    }
                }
            }
        }
        DType::Q6K => {
            for (y, b) in out.chunks_exact_mut(ql).zip(bytes.chunks_exact(bs)) {
                let d = f16_to_f32(le16(b, 208));
                for h in 0..2 {
                    let ql = &b[64 * h..64 * h + 64];
                    let qh = &b[128 + 32 * h..128 + 32 * h + 32];
                    let sc = &b[192 + 8 * h..192 + 8 * h + 8];
                    let yy = &mut y[128 * h..128 * h + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                        let s = |i: usize| d * f32::from(sc[i] as i8);
                        yy[l] = s(is) * f32::from(q1);
                        yy[l + 32] = s(is + 2) * f32::from(q2);
                        yy[l + 64] = s(is + 4) * f32::from(q3);
                        yy[l + 96] = s(is + 6) * f32::from(q4);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q8_0_and_blocks() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16b(0.5));
        for i in 0..32 {
            b[2 + i] = (i as i8 - 16) as u8;
        }
        let mut out = vec![0f32; 32];
        dequantize_into(DType::Q8_0, &b, &mut out).unwrap();
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, 0.5 * (i as f32 - 16.0));
        }
        let blocks = blocks_q8_0(&b).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].scale(), 0.5);
        assert_eq!(blocks[0].qs[0], -16);
        assert!(blocks_q8_0(&b[..33]).is_err());
    }

    #[test]
    fn q4_0_nibbles() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16b(2.0));
        for i in 0..16 {
            b[2 + i] = (i as u8) | ((15 - i as u8) << 4);
        }
        let mut out = vec![0f32; 32];
        dequantize_into(DType::Q4_0, &b, &mut out).unwrap();
        for i in 0..16 {
            assert_eq!(out[i], 2.0 * (i as f32 - 8.0));
            assert_eq!(out[i + 16], 2.0 * (7.0 - i as f32));
        }
        let blk = &blocks_q4_0(&b).unwrap()[0];
        for (i, v) in out.iter().enumerate() {
            assert_eq!(f32::from(blk.quant(i)) * blk.scale(), *v);
        }
    }

    #[test]
    fn q4_k_scales_and_mins() {
        // d = 1, dmin = 0.5; sub-block j has scale j + 1 and min j (6-bit
        // values that need the high bits for j >= 4 when > 15).
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2..4].copy_from_slice(&f16b(0.5));
        let sc: [u8; 8] = [1, 2, 3, 4, 40, 50, 60, 63];
        let m: [u8; 8] = [0, 1, 2, 3, 33, 17, 48, 5];
        let s = &mut b[4..16];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, s), (sc[j], m[j]));
        }
        for l in 0..128 {
            b[16 + l] = (l % 16) as u8 | (((l + 3) % 16) as u8) << 4;
        }
        let mut out = vec![0f32; 256];
        dequantize_into(DType::Q4K, &b, &mut out).unwrap();
        for k in 0..4 {
            for l in 0..32 {
                let q = b[16 + 32 * k + l];
                let (j0, j1) = (2 * k, 2 * k + 1);
                let e0 = f32::from(sc[j0]) * f32::from(q & 0xF) - 0.5 * f32::from(m[j0]);
                let e1 = f32::from(sc[j1]) * f32::from(q >> 4) - 0.5 * f32::from(m[j1]);
                assert_eq!(out[64 * k + l], e0);
                assert_eq!(out[64 * k + 32 + l], e1);
            }
        }
    }

    #[test]
    fn q6_k_layout() {
        let mut b = vec![0u8; 210];
        // Every quant = 33 (-> 1 after the offset): ql nibbles 1, qh bits 2.
        for v in &mut b[..128] {
            *v = 0x11;
        }
        for v in &mut b[128..192] {
            *v = 0b1010_1010;
        }
        for i in 0..16 {
            b[192 + i] = (i as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&f16b(0.25));
        let mut out = vec![0f32; 256];
        dequantize_into(DType::Q6K, &b, &mut out).unwrap();
        for (i, v) in out.iter().enumerate() {
            let (h, r) = (i / 128, i % 128);
            let is = 8 * h + (r % 32) / 16 + 2 * (r / 32);
            assert_eq!(*v, 0.25 * (is as f32 - 8.0), "element {i}");
        }
    }

    #[test]
    fn sizes_checked() {
        let mut out = vec![0f32; 31];
        assert!(dequantize_into(DType::Q8_0, &[0; 34], &mut out).is_err());
        let mut out = vec![0f32; 32];
        assert!(dequantize_into(DType::Q8_0, &[0; 35], &mut out).is_err());
        assert!(dequantize_into(DType::F16, &[0; 64], &mut out).is_ok());
        assert_eq!(DType::Q4K.row_bytes(512), Some(288));
        assert_eq!(DType::Q4K.row_bytes(100), None);
        assert_eq!(ggml_type(13).map(|t| t.0), Some("Q5_K"));
    }
}
