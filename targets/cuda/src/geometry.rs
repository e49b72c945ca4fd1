//! Launch geometry and device scratch sizes: pure host arithmetic, tested on CPU.

use taskpath_runtime::WeightFormat;

/// Threads per block of every kernel (four warps).
pub const BLOCK: u32 = 128;
/// Warps per block.
pub const WARPS_PER_BLOCK: u32 = BLOCK / 32;

/// `(grid, block)` for `n` independent threads (one item each); at least one block.
pub fn per_thread(n: usize) -> (u32, u32) {
    let blocks = n.div_ceil(BLOCK as usize).max(1);
    (u32::try_from(blocks).unwrap_or(u32::MAX), BLOCK)
}

/// `(grid, block)` for `n` warps (one item per warp); at least one block.
pub fn per_warp(n: usize) -> (u32, u32) {
    let blocks = n.div_ceil(WARPS_PER_BLOCK as usize).max(1);
    (u32::try_from(blocks).unwrap_or(u32::MAX), BLOCK)
}

/// The device scratch a quantised matrix-vector product of `format` with
/// `cols` inputs needs: `(bytes of int8 activations or tables, f32 scales)`.
/// Mirrors `WeightFormat::scratch_bytes` on the CPU, split by type: i8row
/// keeps `K` quantised activations and one scale per 32 columns; the LUT
/// formats 16 table bytes per 4 columns and two f32 (`hts`, `xs`) per group.
pub fn quant_scratch(format: WeightFormat, cols: usize) -> (usize, usize) {
    let k = format.padded_cols(cols);
    match (format, format.group()) {
        (WeightFormat::I8Row, _) => (k, k / 32),
        (f, Some(g)) if f.is_lut() => (16 * (k / 4), 2 * (k / g)),
        _ => (0, 0),
    }
}

/// Whether a kernel of this backend runs `format`: f32, f16, i8row and the
/// eight int4/int2 LUT formats. The GGUF block formats (q4_0, q8_0) have no
/// CUDA kernel yet: packages using them are refused by name at load.
pub fn supported(format: WeightFormat) -> bool {
    format == WeightFormat::F32
        || format == WeightFormat::F16
        || format == WeightFormat::I8Row
        || format.is_lut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpath_runtime::WeightFormat as F;

    #[test]
    fn grids_cover_every_item_with_at_most_one_spare_block() {
        for n in [0usize, 1, 31, 32, 127, 128, 129, 1000, 4097] {
            let (g, b) = per_thread(n);
            assert!(g as usize * b as usize >= n, "{n}");
            assert!(g >= 1);
            assert!(
                (g as usize - 1) * (b as usize) < n.max(1),
                "{n}: one block too many"
            );
            let (g, b) = per_warp(n);
            assert!(g as usize * (b as usize / 32) >= n, "{n}");
            assert!((g as usize - 1) * (b as usize / 32) < n.max(1), "{n}");
        }
    }

    #[test]
    fn scratch_matches_the_cpu_kernels_byte_count() {
        // The CPU packs the same data into one byte buffer: int8 part plus
        // 4 bytes per f32; the device split must add up to the same total.
        for f in taskpath_cpu::quant::ALL
            .into_iter()
            .filter(|&f| supported(f))
        {
            for cols in [1usize, 4, 31, 32, 33, 64, 65, 200, 300] {
                let (b, s) = quant_scratch(f, cols);
                assert_eq!(b + 4 * s, f.scratch_bytes(cols), "{f} cols {cols}");
            }
        }
        assert_eq!(quant_scratch(F::I4G32, 64), (256, 4));
    }

    #[test]
    fn every_cpu_format_but_the_gguf_blocks_has_a_kernel() {
        for f in taskpath_cpu::quant::ALL {
            assert_eq!(supported(f), !f.is_gguf_block(), "{f}");
        }
    }
}
