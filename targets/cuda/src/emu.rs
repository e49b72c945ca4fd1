//! A line-by-line host transliteration of the quantised kernels of
//! `kernels.cu` (`tp_prep_i8`, `tp_linear_i8`, `tp_prep_lut`,
//! `tp_linear_lut`): same address arithmetic over the packed bytes, same
//! operation order, one loop iteration per CUDA thread or lane. Tested bit
//! for bit against taskpath-cpu's generic kernels, so the layout reading and
//! the numerics the device code relies on are checked on any machine; the
//! device tests then check the CUDA code itself against the CPU.
//!
//! Loops index by thread number on purpose, mirroring the CUDA code.
#![allow(clippy::needless_range_loop)]

fn f16(b: &[u8], at: usize) -> f32 {
    half_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// IEEE binary16 to binary32, exactly (the PTX `cvt.f32.f16`).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let (e, m) = ((h >> 10) & 0x1f, u32::from(h & 0x3ff));
    match e {
        0 => sign * m as f32 * 5.960_464_5e-8, // m * 2^-24, exact
        31 if m == 0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => {
            f32::from_bits((u32::from(h & 0x8000) << 16) | ((u32::from(e) + 112) << 23) | (m << 13))
        }
    }
}

fn rne_i32(v: f32) -> i32 {
    (v + 12_582_912.0f32).to_bits() as i32 - 0x4B40_0000
}

/// `tp_prep_i8` over every warp (block) and lane.
pub(crate) fn prep_i8(x: &[f32], cols: usize, nb: usize, xq: &mut [i8], sx: &mut [f32]) {
    for warp in 0..nb {
        let mbits = (0..32)
            .map(|lane| warp * 32 + lane)
            .map(|c| {
                if c < cols {
                    x[c].to_bits() & 0x7FFF_FFFF
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0);
        let m = f32::from_bits(mbits);
        for lane in 0..32 {
            let c = warp * 32 + lane;
            let v = if c < cols { x[c] } else { 0.0 };
            let mut q = 0i8;
            let scale = if mbits >= 0x7F80_0000 {
                f32::NAN
            } else if mbits == 0 {
                0.0
            } else {
                let inv = 127.0f32 / m;
                if c < cols {
                    q = rne_i32(v * inv) as i8;
                }
                m / 127.0
            };
            xq[c] = q;
            if lane == 0 {
                sx[warp] = scale;
            }
        }
    }
}

/// `tp_linear_i8` over every row (one warp each; the lane sum is exact).
pub(crate) fn linear_i8(
    w: &[u8],
    xq: &[i8],
    sx: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    k: usize,
) {
    for (o, yo) in y.iter_mut().enumerate() {
        let i = o % 8;
        let tile = &w[(o / 8) * (32 + 8 * k)..];
        let wr = &tile[32 + i * k..];
        let mut ya = 0.0f32;
        for blk in 0..k / 32 {
            let acc: i32 = (0..32)
                .map(|lane| i32::from(wr[blk * 32 + lane] as i8) * i32::from(xq[blk * 32 + lane]))
                .sum();
            ya += acc as f32 * sx[blk];
        }
        let s = f32::from_le_bytes([
            tile[4 * i],
            tile[4 * i + 1],
            tile[4 * i + 2],
            tile[4 * i + 3],
        ]);
        let v = ya * s;
        *yo = b.map_or(v, |b| v + b[o]);
    }
}

/// `tp_prep_lut` over every group.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prep_lut(
    x: &[f32],
    cols: usize,
    ng: usize,
    g: usize,
    zp: bool,
    tables: &mut [i8],
    hts: &mut [f32],
    xs: &mut [f32],
) {
    let xv = |c: usize| if c < cols { x[c] } else { 0.0 };
    let apg = g / 4;
    for gi in 0..ng {
        let (mut m, mut sum, mut bad) = (0.0f32, 0.0f32, false);
        for a in 0..apg {
            let c = (gi * apg + a) * 4;
            let (x0, x1, x2, x3) = (xv(c), xv(c + 1), xv(c + 2), xv(c + 3));
            let ma = ((x0.abs() + x1.abs()) + x2.abs()) + x3.abs();
            bad |= !ma.is_finite();
            m = m.max(ma);
            if zp {
                sum += -(((-x0 + -x1) + -x2) - x3);
            }
        }
        let tabs = &mut tables[16 * gi * apg..16 * (gi + 1) * apg];
        if bad || m == 0.0 {
            tabs.fill(0);
        } else {
            let inv = 127.0f32 / m;
            for a in 0..apg {
                let c = (gi * apg + a) * 4;
                let (x0, x1, x2, x3) = (xv(c), xv(c + 1), xv(c + 2), xv(c + 3));
                for i in 0..8 {
                    let s = |bit: usize| if i & bit != 0 { 1.0f32 } else { -1.0 };
                    let t = ((x0 * s(1) + x1 * s(2)) + x2 * s(4)) - x3;
                    let q = rne_i32(t * inv);
                    tabs[16 * a + i] = q as i8;
                    tabs[16 * a + 15 - i] = (-q) as i8;
                }
            }
        }
        hts[gi] = if bad { f32::NAN } else { (m / 127.0) * 0.5 };
        xs[gi] = sum;
    }
}

/// `tp_linear_lut` over every row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_lut(
    w: &[u8],
    tables: &[i8],
    hts: &[f32],
    xs: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    ng: usize,
    g: usize,
    bits: usize,
    zp: bool,
) {
    let wbytes = 16 * g * bits / 8;
    let gb = wbytes + 32 + if zp { 32 } else { 0 };
    let c = ((1u32 << bits) - 1) as f32 * 0.5;
    for (o, yo) in y.iter_mut().enumerate() {
        let i = o % 16;
        let tile = &w[(o / 16) * ng * gb..];
        let mut ya = 0.0f32;
        for gi in 0..ng {
            let gbuf = &tile[gi * gb..];
            let tabs = &tables[16 * gi * (g / 4)..];
            let mut acc = 0i32;
            for blk in 0..wbytes / 32 {
                let (ta, tb, hi) = if bits == 4 {
                    (&tabs[16 * blk..], &tabs[16 * blk..], 2)
                } else {
                    (&tabs[32 * blk..], &tabs[32 * blk + 16..], 0)
                };
                for j in 0..2 {
                    let byte = gbuf[32 * blk + 2 * i + j];
                    acc += i32::from(ta[usize::from(byte & 15)]) << j;
                    acc += i32::from(tb[usize::from(byte >> 4)]) << (j + hi);
                }
            }
            let s = f16(gbuf, wbytes + 2 * i);
            let mut t = acc as f32 * hts[gi];
            if zp {
                t += (c - f16(gbuf, wbytes + 32 + 2 * i)) * xs[gi];
            }
            ya += t * s;
        }
        *yo = b.map_or(ya, |b| ya + b[o]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpath_cpu::quant::{quantize, WeightFormat, ALL};
    use taskpath_runtime::Kernels;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The transliterated device algorithm equals the CPU generic kernel bit
    /// for bit, for every quantised format and awkward shapes.
    #[test]
    fn device_quantised_algorithm_is_bit_identical_to_the_cpu_kernels() {
        let mut seed = 7u64;
        for f in ALL
            .into_iter()
            .filter(|f| *f == WeightFormat::I8Row || f.is_lut())
        {
            for (rows, cols) in [
                (1usize, 1usize),
                (5, 31),
                (16, 64),
                (17, 65),
                (40, 200),
                (96, 128),
            ] {
                let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
                let mut x: Vec<f32> = (0..cols).map(|_| lcg(&mut seed) * 3.0).collect();
                x[0] *= 8.0; // an outlier, as activations have
                let bias: Vec<f32> = (0..rows).map(|_| lcg(&mut seed)).collect();
                let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
                quantize(f, rows, cols, &w, &mut packed).unwrap();
                let mut want = vec![0f32; rows];
                let mut scratch = vec![0u8; f.scratch_bytes(cols)];
                let kern = Kernels::generic().kernel(f).unwrap();
                kern.run(
                    rows,
                    cols,
                    &packed,
                    &x,
                    Some(&bias),
                    &mut want,
                    &mut scratch,
                );

                let k = f.padded_cols(cols);
                let (nb, ns) = crate::geometry::quant_scratch(f, cols);
                let (mut qb, mut qs) = (vec![0i8; nb], vec![0f32; ns]);
                let mut got = vec![0f32; rows];
                if f == WeightFormat::I8Row {
                    prep_i8(&x, cols, k / 32, &mut qb, &mut qs);
                    linear_i8(&packed, &qb, &qs, Some(&bias), &mut got, k);
                } else {
                    let g = f.group().unwrap();
                    let ng = k / g;
                    let (hts, xs) = qs.split_at_mut(ng);
                    prep_lut(&x, cols, ng, g, f.has_zero_point(), &mut qb, hts, xs);
                    let bits = f.bits() as usize;
                    linear_lut(
                        &packed,
                        &qb,
                        hts,
                        xs,
                        Some(&bias),
                        &mut got,
                        ng,
                        g,
                        bits,
                        f.has_zero_point(),
                    );
                }
                let gb: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(gb, wb, "{f} [{rows}, {cols}]: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn half_conversion_is_exact() {
        for h in [
            0u16,
            1,
            0x3ff,
            0x400,
            0x3c00,
            0xbc00,
            0x7bff,
            0xfbff,
            0x7c00,
            0x0001 | 0x8000,
        ] {
            assert_eq!(
                half_to_f32(h).to_bits(),
                half::f16::from_bits(h).to_f32().to_bits(),
                "{h:#x}"
            );
        }
    }
}
