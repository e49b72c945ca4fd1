//! The GGUF block formats q4_0 / q8_0: bit-exactness against ggml's
//! definitions, the byte layout re-derived by hand, and the activation
//! quantisation error compared with llama.cpp's scheme.
//!
//! Oracles written here from the C definitions (not from the library code):
//! ggml's reference quantisers (`quantize_row_q4_0_ref`,
//! `quantize_row_q8_0_ref` in ggml-quants.c) producing GGUF block bytes, and
//! GGUF dequantisation (`d * (q - 8)`, `d * q`, `d` the f16 scale as f32).
//!
//! `cargo test -p taskpath-cpu --test gguf_formats -- --nocapture` prints the
//! error comparison that docs/KERNELS.md quotes.

use half::f16;
use taskpath_cpu::qmatvec::Kernels;
use taskpath_cpu::quant::{
    self, dequantize, gguf_block_bytes, quantize, repack_gguf, QuantError, WeightFormat,
};

const Q4: WeightFormat = WeightFormat::Q4_0;
const Q8: WeightFormat = WeightFormat::Q8_0;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.f().max(1e-300), self.f());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

// ---------------------------------------------------------------- ggml oracles

/// `quantize_row_q4_0_ref` of one row (`x.len() % 32 == 0`) as GGUF bytes.
fn ggml_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in x.chunks(32) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in blk {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0f32;
        let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for j in 0..16 {
            let x0 = blk[j] * id;
            let x1 = blk[j + 16] * id;
            // (int8_t)(x + 8.5f): truncation toward zero of an f32 sum.
            let xi0 = ((x0 + 8.5f32).trunc() as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5f32).trunc() as i8).min(15) as u8;
            out.push(xi0 | (xi1 << 4));
        }
    }
    out
}

/// `quantize_row_q8_0_ref` of one row as GGUF bytes.
fn ggml_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in x.chunks(32) {
        let mut amax = 0.0f32;
        for &v in blk {
            amax = if amax > v.abs() { amax } else { v.abs() };
        }
        let d = amax / 127.0f32;
        let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for &v in blk {
            // roundf: half away from zero (Rust's f32::round).
            out.push((v * id).round() as i8 as u8);
        }
    }
    out
}

fn ggml(format: WeightFormat, rows: usize, cols: usize, w: &[f32]) -> Vec<u8> {
    (0..rows)
        .flat_map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            if format == Q4 {
                ggml_q4_0(row)
            } else {
                ggml_q8_0(row)
            }
        })
        .collect()
}

/// GGUF dequantisation of row-major blocks.
fn gguf_dequant(format: WeightFormat, gguf: &[u8]) -> Vec<f32> {
    let gb = gguf_block_bytes(format);
    let mut out = Vec::new();
    for blk in gguf.chunks(gb) {
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        for i in 0..32 {
            let q = if format == Q4 {
                let b = blk[2 + i % 16];
                i32::from(if i < 16 { b & 15 } else { b >> 4 }) - 8
            } else {
                i32::from(blk[2 + i] as i8)
            };
            out.push(d * q as f32);
        }
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| if x.is_nan() { 0x7FC0_0000 } else { x.to_bits() })
        .collect()
}

/// Weights of several shapes, including the cases the quantisers' details
/// decide: sign of the first largest value (q4_0), exact halves (`roundf`
/// rounds them away from zero), zeros, tiny and large values.
fn weights(rng: &mut Rng, n: usize, kind: u32) -> Vec<f32> {
    (0..n)
        .map(|i| match kind % 7 {
            0 => rng.normal(),
            1 => (rng.f() as f32 - 0.5) * 0.1,
            // Multiples of 1/2 with a block maximum of 127 (d = 1 for q8_0:
            // every odd one is a tie) and of 8 (q4_0's d = +-1).
            2 => {
                if i % 32 == 0 {
                    127.0
                } else {
                    ((rng.next() % 255) as f32 - 127.0) * 0.5
                }
            }
            3 => {
                if i % 32 == 5 {
                    8.0
                } else if i % 32 == 9 {
                    -8.0
                } else {
                    ((rng.next() % 33) as f32 - 16.0) * 0.5
                }
            }
            4 => {
                if rng.next().is_multiple_of(3) {
                    0.0
                } else {
                    rng.normal() * 1e-3
                }
            }
            5 => rng.normal() * 3e4,
            _ => {
                let m = if rng.next().is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                };
                if i % 32 < 2 {
                    m * 4.0
                } else {
                    rng.normal()
                }
            }
        })
        .collect()
}

/// `quantize` equals ggml's reference quantiser followed by `repack_gguf`,
/// byte for byte, and `dequantize` equals GGUF's dequantisation bit for bit.
#[test]
fn quantize_is_ggml_reference_bit_for_bit() {
    let mut rng = Rng(11);
    for (rows, cols) in [(1usize, 32usize), (16, 64), (17, 96), (40, 256), (5, 1024)] {
        for kind in 0..7 {
            let w = weights(&mut rng, rows * cols, kind);
            for f in [Q4, Q8] {
                let g = ggml(f, rows, cols, &w);
                let mut a = vec![0u8; f.packed_bytes(rows, cols)];
                let mut b = vec![0xEEu8; a.len()];
                repack_gguf(f, rows, cols, &g, &mut a).unwrap();
                quantize(f, rows, cols, &w, &mut b).unwrap();
                assert!(
                    a == b,
                    "{f} {rows}x{cols} kind {kind}: quantize != ggml + repack"
                );
                let mut deq = vec![0.0f32; rows * cols];
                dequantize(f, rows, cols, &a, &mut deq).unwrap();
                assert_eq!(bits(&deq), bits(&gguf_dequant(f, &g)), "{f} kind {kind}");
            }
        }
    }
}

/// Any GGUF bytes (every nibble, q8_0's -128, f16 scales of every kind:
/// subnormal, infinite, NaN) repack to a matrix whose dequantisation is
/// GGUF's, bit for bit; and `dequantize_row` agrees.
#[test]
fn repack_keeps_arbitrary_gguf_bytes() {
    let mut rng = Rng(5);
    for f in [Q4, Q8] {
        for (rows, cols) in [(1usize, 32usize), (15, 64), (33, 160)] {
            let gb = gguf_block_bytes(f);
            let mut g: Vec<u8> = (0..rows * cols / 32 * gb)
                .map(|_| rng.next() as u8)
                .collect();
            for (n, blk) in g.chunks_mut(gb).enumerate() {
                let d: u16 = match n % 5 {
                    0 => 0x7C00,                     // +inf
                    1 => 0x7E01,                     // NaN
                    2 => 0x0001,                     // smallest subnormal
                    _ => rng.next() as u16 & 0x7BFF, // finite, either sign
                };
                blk[..2].copy_from_slice(&d.to_le_bytes());
            }
            let mut p = vec![0u8; f.packed_bytes(rows, cols)];
            repack_gguf(f, rows, cols, &g, &mut p).unwrap();
            let mut deq = vec![0.0f32; rows * cols];
            dequantize(f, rows, cols, &p, &mut deq).unwrap();
            assert_eq!(bits(&deq), bits(&gguf_dequant(f, &g)), "{f} {rows}x{cols}");
            let mut row = vec![0.0f32; cols];
            quant::dequantize_row(f, rows, cols, &p, rows - 1, &mut row).unwrap();
            assert_eq!(bits(&row), bits(&deq[(rows - 1) * cols..]));
        }
    }
}

#[test]
fn repack_rejects_bad_input() {
    let mut out = vec![0u8; Q4.packed_bytes(2, 64)];
    assert_eq!(
        repack_gguf(Q4, 2, 48, &[0u8; 36], &mut out),
        Err(QuantError::NotBlockAligned { cols: 48 })
    );
    assert_eq!(
        repack_gguf(WeightFormat::I4G32, 2, 64, &[0u8; 72], &mut out),
        Err(QuantError::NotBlockAligned { cols: 64 })
    );
    assert!(matches!(
        repack_gguf(Q4, 2, 64, &[0u8; 71], &mut out),
        Err(QuantError::Length { what: "gguf", .. })
    ));
    assert!(matches!(
        repack_gguf(Q8, 2, 64, &[0u8; 136], &mut out),
        Err(QuantError::Length { what: "out", .. })
    ));
    let e = repack_gguf(Q4, 2, 48, &[0u8; 36], &mut out).unwrap_err();
    assert!(e.to_string().contains("48 columns"), "{e}");
    // quantize keeps the common rules: non-finite weights and scales that
    // overflow f16 (d = 1e6 / 8 > 65504) are refused.
    let mut p = vec![0u8; Q4.packed_bytes(1, 3)];
    assert_eq!(
        quantize(Q4, 1, 3, &[0.0, f32::NAN, 1.0], &mut p),
        Err(QuantError::NonFinite { index: 1 })
    );
    assert_eq!(
        quantize(Q4, 1, 3, &[0.0, 1e6, 1.0], &mut p),
        Err(QuantError::OutOfRange { index: 0 })
    );
}

/// The documented layout (docs/KERNELS.md §1.6), re-derived byte by byte:
/// tiles of 16 rows, per 32-column block a record of 64-byte chunks (byte
/// `4 r + j` of a chunk belongs to row `r`) then 16 f16 scales in row order;
/// q4_0 chunk `k` holds columns `8k + j` (low nibble) and `8k + 4 + j` (high),
/// q8_0 chunk `k` holds column `4k + j` as `q ^ 0x80`; padding is value 0.
#[test]
fn layout_by_hand() {
    let (rows, cols) = (19, 64); // two tiles (the second 3 rows), two blocks
    let sq4 = |r: usize, c: usize| ((r * 7 + c * 3) % 16) as i32 - 8;
    let sq8 = |r: usize, c: usize| ((r * 37 + c * 11) % 256) as i32 - 128;
    let d = |r: usize, b: usize| f16::from_f32(0.25 * (1 + r + 2 * b) as f32);
    for f in [Q4, Q8] {
        let gb = gguf_block_bytes(f);
        let mut g = vec![0u8; rows * cols / 32 * gb];
        for r in 0..rows {
            for b in 0..cols / 32 {
                let blk = &mut g[(r * cols / 32 + b) * gb..][..gb];
                blk[..2].copy_from_slice(&d(r, b).to_bits().to_le_bytes());
                for i in 0..32 {
                    let c = 32 * b + i;
                    if f == Q4 {
                        let n = (sq4(r, c) + 8) as u8;
                        blk[2 + i % 16] |= if i < 16 { n } else { n << 4 };
                    } else {
                        blk[2 + i] = sq8(r, c) as i8 as u8;
                    }
                }
            }
        }
        let mut p = vec![0u8; f.packed_bytes(rows, cols)];
        repack_gguf(f, rows, cols, &g, &mut p).unwrap();
        let rec = if f == Q4 { 288 } else { 544 };
        let wb = rec - 32;
        assert_eq!(f.tile_bytes(cols), 2 * rec);
        for t in 0..2 {
            for b in 0..2 {
                let blk = &p[t * 2 * rec + b * rec..][..rec];
                for r in 0..16 {
                    let row = 16 * t + r;
                    let want_d = if row < rows { d(row, b).to_bits() } else { 0 };
                    let at = wb + 2 * r;
                    assert_eq!(u16::from_le_bytes([blk[at], blk[at + 1]]), want_d, "{f} d");
                    for j in 0..4 {
                        if f == Q4 {
                            for k in 0..4 {
                                let (c_lo, c_hi) = (32 * b + 8 * k + j, 32 * b + 8 * k + 4 + j);
                                let want = if row < rows {
                                    (sq4(row, c_lo) + 8) as u8 | ((sq4(row, c_hi) + 8) as u8) << 4
                                } else {
                                    0x88
                                };
                                assert_eq!(
                                    blk[64 * k + 4 * r + j],
                                    want,
                                    "{f} t{t} b{b} r{r} k{k}"
                                );
                            }
                        } else {
                            for k in 0..8 {
                                let c = 32 * b + 4 * k + j;
                                let want = if row < rows {
                                    sq8(row, c) as i8 as u8 ^ 0x80
                                } else {
                                    0x80
                                };
                                assert_eq!(
                                    blk[64 * k + 4 * r + j],
                                    want,
                                    "{f} t{t} b{b} r{r} k{k}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    // Ragged columns from f32: the last block is quantised as if padded with
    // zeros, which are value 0 (q4_0 nibble 8, q8_0 byte 0x80).
    let w: Vec<f32> = (0..40).map(|i| i as f32 - 20.0).collect();
    for f in [Q4, Q8] {
        let mut p = vec![0u8; f.packed_bytes(1, 40)];
        quantize(f, 1, 40, &w, &mut p).unwrap();
        let mut w64 = w.clone();
        w64.resize(64, 0.0);
        let mut p64 = vec![0u8; f.packed_bytes(1, 64)];
        quantize(f, 1, 64, &w64, &mut p64).unwrap();
        assert_eq!(p, p64, "{f}");
        let blk = &p[f.q_block_bytes()..];
        let pad = if f == Q4 { 0x08 } else { 0x80 };
        // Row 0, column 32 + 8 (q4_0: chunk 1 low nibble; q8_0: chunk 2).
        let at = if f == Q4 { 64 } else { 128 };
        assert_eq!(blk[at] & if f == Q4 { 0x0F } else { 0xFF }, pad, "{f}");
    }
}

// ---------------------------------------------------------------- error vs llama.cpp

/// llama.cpp's activation scheme on the same weights (`sq`: the signed
/// quants, `dw`: the f16 scales, per row and block): per 32 activations
/// `d = amax / 127`, `xq = roundf(x * (1 / d))`, the scale kept as f16; per
/// block `sumf += (d_w * f16(d)) * sumi` in f32.
fn llama_cpp_matvec(rows: usize, cols: usize, sq: &[i8], dw: &[f32], x: &[f32]) -> Vec<f32> {
    let nb = cols / 32;
    let mut xq = vec![0i32; cols];
    let mut dx = vec![0.0f32; nb];
    for b in 0..nb {
        let blk = &x[32 * b..32 * b + 32];
        let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in xq[32 * b..].iter_mut().zip(blk) {
            *q = (v * id).round() as i32;
        }
        dx[b] = f16::from_f32(d).to_f32();
    }
    (0..rows)
        .map(|r| {
            let mut sumf = 0.0f32;
            for b in 0..nb {
                let sumi: i32 = (32 * b..32 * b + 32)
                    .map(|c| i32::from(sq[r * cols + c]) * xq[c])
                    .sum();
                sumf += (dw[r * nb + b] * dx[b]) * sumi as f32;
            }
            sumf
        })
        .collect()
}

/// Expert-shaped matrices (2816 x 1024, 1024 x 2816), N(0, 1) weights,
/// N(0, 1) activations with eight 8x outliers: over 32 activation vectors,
/// our activation quantisation (f32 scale, round half even) errs no more
/// than llama.cpp's (f16 scale, roundf) against the f64 product of the
/// dequantised weights, per format. Both use the same int8 values up to
/// rounding ties; the difference is llama.cpp's f16 rounding of each block's
/// scale, which ours avoids, so the margin is small but systematic.
#[test]
fn activation_error_no_larger_than_llama_cpp() {
    let kernels = Kernels::best();
    let mut rng = Rng(2024);
    println!("| shape | format | ours: rel. RMS error | llama.cpp: rel. RMS error | ours: max / RMS(y) | llama.cpp: max / RMS(y) |");
    println!("|---|---|---:|---:|---:|---:|");
    for (rows, cols) in [(2816usize, 1024usize), (1024, 2816)] {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        let nb = cols / 32;
        for f in [Q4, Q8] {
            let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
            quantize(f, rows, cols, &w, &mut packed).unwrap();
            let g = ggml(f, rows, cols, &w);
            let deq = gguf_dequant(f, &g);
            let gb = gguf_block_bytes(f);
            let mut sq = vec![0i8; rows * cols];
            let mut dw = vec![0.0f32; rows * nb];
            for (n, blk) in g.chunks(gb).enumerate() {
                dw[n] = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                for i in 0..32 {
                    sq[n * 32 + i] = if f == Q4 {
                        let b = blk[2 + i % 16];
                        (if i < 16 { b & 15 } else { b >> 4 }) as i8 - 8
                    } else {
                        blk[2 + i] as i8
                    };
                }
            }
            let k = kernels.kernel(f).unwrap();
            let (mut e_ours, mut e_llama, mut den) = (0.0f64, 0.0f64, 0.0f64);
            let (mut m_ours, mut m_llama) = (0.0f64, 0.0f64);
            for _ in 0..32 {
                let mut x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
                for _ in 0..8 {
                    let i = (rng.next() % cols as u64) as usize;
                    x[i] *= 8.0;
                }
                let want: Vec<f64> = (0..rows)
                    .map(|r| {
                        deq[r * cols..(r + 1) * cols]
                            .iter()
                            .zip(&x)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum()
                    })
                    .collect();
                let mut y = vec![0.0f32; rows];
                let mut s = vec![0u8; f.scratch_bytes(cols)];
                k.run(rows, cols, &packed, &x, None, &mut y, &mut s);
                let yl = llama_cpp_matvec(rows, cols, &sq, &dw, &x);
                let rms = (want.iter().map(|v| v * v).sum::<f64>() / rows as f64).sqrt();
                for ((&a, &b), &t) in y.iter().zip(&yl).zip(&want) {
                    let (ea, eb) = (f64::from(a) - t, f64::from(b) - t);
                    e_ours += ea * ea;
                    e_llama += eb * eb;
                    den += t * t;
                    m_ours = m_ours.max(ea.abs() / rms);
                    m_llama = m_llama.max(eb.abs() / rms);
                }
            }
            let (ours, theirs) = ((e_ours / den).sqrt(), (e_llama / den).sqrt());
            println!(
                "| {rows}x{cols} | {} | {ours:.4e} | {theirs:.4e} | {m_ours:.3e} | {m_llama:.3e} |",
                f.name(),
            );
            assert!(
                ours <= theirs,
                "{f} {rows}x{cols}: ours {ours} vs llama.cpp {theirs}"
            );
        }
    }
}
