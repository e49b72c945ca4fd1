//! Weight formats: ids, packed layouts, size rules, quantisation and the
//! dequantisation oracle. The package's tensor table stores these ids; the
//! kernels that run them live in taskpath-cpu (and taskpath-cuda).
//!
//! A *weight format* fixes both the number encoding **and** the byte layout of a
//! packed matrix (the kernels' tile order). Its `u16` id is stored in every
//! package blob, so a blob can only ever be run by a kernel of the same format:
//! changing a layout means a new id. Ids are append-only (never renumbered or
//! reused); `1 = F32` is the package format's historical f32 id.
//!
//! Every layout is a sequence of *row tiles*: rows are cut into tiles of
//! [`WeightFormat::row_tile`] rows (the last one padded), each tile is
//! [`WeightFormat::tile_bytes`] bytes, tiles follow each other with no gap. So
//! tiles `[t0, t1)` of a packed matrix are themselves a valid packed matrix of
//! the rows they hold: callers split work across threads at tile boundaries.
//! The exact byte layout of each format is specified in `docs/KERNELS.md`.
//!
//! [`quantize`] writes the layout from row-major f32 weights (deterministic,
//! round to nearest even, no allocation); [`dequantize`] returns the exact
//! values the kernels multiply by, which is the oracle for tests and for the
//! packer's error measurements.

use core::fmt;
use half::f16;

/// Rows per tile of the LUT formats (int4 / int2).
pub const LUT_ROW_TILE: usize = 16;
/// Activations per lookup table (one 4-bit table index) of the LUT formats.
pub const LUT_ACT_GROUP: usize = 4;
/// Rows per tile of [`WeightFormat::F16`] and [`WeightFormat::I8Row`].
pub const ROW_TILE_8: usize = 8;
/// Columns per activation-quantisation block of [`WeightFormat::I8Row`].
pub const I8_BLOCK: usize = 32;
/// Rows per tile of the GGUF block formats ([`WeightFormat::Q4_0`], [`WeightFormat::Q8_0`]).
pub const Q_ROW_TILE: usize = 16;
/// Columns per block (one f16 scale per row and block) of the GGUF block formats.
pub const Q_BLOCK: usize = 32;
/// Bytes of one 64-byte weight *chunk* of the GGUF block formats: 16 rows of
/// 4 bytes (byte `4 r + j` belongs to row `r`).
pub const Q_CHUNK: usize = 64;
/// Activation rows (tokens) that [`WeightFormat::scratch_bytes`] provides room
/// for in the GGUF block formats: their batched kernels quantise this many
/// tokens ahead and reuse each weight chunk for all of them (more scratch
/// lets them take more tokens per pass over the weights).
pub const Q_SCRATCH_TOKENS: usize = 8;

/// A packed weight format: number encoding plus byte layout. The discriminant is
/// the stable id written in packages (append-only; see the module docs).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum WeightFormat {
    /// f32, row-major `[rows, cols]`, little-endian, unpadded (the package's original format).
    F32 = 1,
    /// IEEE f16, tiles of 8 rows stored column by column.
    F16 = 2,
    /// int8 in `[-127, 127]` with one f32 scale per output row; tiles of 8 rows.
    I8Row = 3,
    /// Symmetric int4, groups of 32 columns, f16 scale per (row, group); bit-plane LUT layout.
    I4G32 = 4,
    /// Symmetric int4, groups of 64 columns.
    I4G64 = 5,
    /// Symmetric int2, groups of 32 columns.
    I2G32 = 6,
    /// Symmetric int2, groups of 64 columns.
    I2G64 = 7,
    /// Asymmetric int4 (f16 scale and f16 zero point per (row, group)), groups of 32.
    I4G32Z = 8,
    /// Asymmetric int4, groups of 64.
    I4G64Z = 9,
    /// Asymmetric int2, groups of 32.
    I2G32Z = 10,
    /// Asymmetric int2, groups of 64.
    I2G64Z = 11,
    /// GGUF Q4_0's values: int4 `q` in `[0, 15]`, weight `d * (q - 8)` with an f16
    /// `d` per (row, 32-column block); tiles of 16 rows laid out for `vpdpbusd`.
    #[allow(non_camel_case_types)]
    Q4_0 = 12,
    /// GGUF Q8_0's values: int8 `q`, weight `d * q` with an f16 `d` per (row,
    /// 32-column block); tiles of 16 rows, `q` stored as the u8 `q ^ 0x80`.
    #[allow(non_camel_case_types)]
    Q8_0 = 13,
}

/// Every format, in id order (`ALL[i].id() == i + 1`).
pub const ALL: [WeightFormat; 13] = [
    WeightFormat::F32,
    WeightFormat::F16,
    WeightFormat::I8Row,
    WeightFormat::I4G32,
    WeightFormat::I4G64,
    WeightFormat::I2G32,
    WeightFormat::I2G64,
    WeightFormat::I4G32Z,
    WeightFormat::I4G64Z,
    WeightFormat::I2G32Z,
    WeightFormat::I2G64Z,
    WeightFormat::Q4_0,
    WeightFormat::Q8_0,
];

/// Round up to a multiple of `m` (`m > 0`).
const fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

impl WeightFormat {
    /// The stable id stored in packages.
    pub const fn id(self) -> u16 {
        self as u16
    }

    /// The format with this id, or `None` for an id this build does not know.
    pub const fn from_u16(id: u16) -> Option<Self> {
        if id >= 1 && id as usize <= ALL.len() {
            Some(ALL[id as usize - 1])
        } else {
            None
        }
    }

    /// Short lower-case name (`"f32"`, `"i4g32z"`, ...), used in kernel names and errors.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::I8Row => "i8row",
            Self::I4G32 => "i4g32",
            Self::I4G64 => "i4g64",
            Self::I2G32 => "i2g32",
            Self::I2G64 => "i2g64",
            Self::I4G32Z => "i4g32z",
            Self::I4G64Z => "i4g64z",
            Self::I2G32Z => "i2g32z",
            Self::I2G64Z => "i2g64z",
            Self::Q4_0 => "q4_0",
            Self::Q8_0 => "q8_0",
        }
    }

    /// Bits per stored weight value (32, 16, 8, 4 or 2), scales not counted.
    pub const fn bits(self) -> u32 {
        match self {
            Self::F32 => 32,
            Self::F16 => 16,
            Self::I8Row | Self::Q8_0 => 8,
            Self::I4G32 | Self::I4G64 | Self::I4G32Z | Self::I4G64Z | Self::Q4_0 => 4,
            Self::I2G32 | Self::I2G64 | Self::I2G32Z | Self::I2G64Z => 2,
        }
    }

    /// Columns sharing one scale (and zero point) for the group-wise formats
    /// (the LUT formats and the GGUF block formats), else `None`.
    pub const fn group(self) -> Option<usize> {
        match self {
            Self::I4G32 | Self::I2G32 | Self::I4G32Z | Self::I2G32Z => Some(32),
            Self::Q4_0 | Self::Q8_0 => Some(Q_BLOCK),
            Self::I4G64 | Self::I2G64 | Self::I4G64Z | Self::I2G64Z => Some(64),
            _ => None,
        }
    }

    /// Whether each group stores an f16 zero point (the `…Z` formats).
    pub const fn has_zero_point(self) -> bool {
        matches!(
            self,
            Self::I4G32Z | Self::I4G64Z | Self::I2G32Z | Self::I2G64Z
        )
    }

    /// Whether this is one of the bit-plane lookup-table formats (int4 / int2).
    pub const fn is_lut(self) -> bool {
        matches!(
            self,
            Self::I4G32
                | Self::I4G64
                | Self::I2G32
                | Self::I2G64
                | Self::I4G32Z
                | Self::I4G64Z
                | Self::I2G32Z
                | Self::I2G64Z
        )
    }

    /// Whether this is one of the GGUF block formats ([`Self::Q4_0`], [`Self::Q8_0`]).
    pub const fn is_gguf_block(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q8_0)
    }

    /// Rows per tile: 1 (f32), 8 (f16, i8row) or 16 (LUT and GGUF block formats).
    pub const fn row_tile(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::F16 | Self::I8Row => ROW_TILE_8,
            Self::Q4_0 | Self::Q8_0 => Q_ROW_TILE,
            _ => LUT_ROW_TILE,
        }
    }

    /// Columns as stored: `cols` for f32/f16, rounded up to 32 for i8row and the
    /// GGUF block formats and to the group size for the LUT formats (the
    /// padding holds zero weights).
    pub const fn padded_cols(self, cols: usize) -> usize {
        match self {
            Self::F32 | Self::F16 => cols,
            Self::I8Row => round_up(cols, I8_BLOCK),
            _ => match self.group() {
                Some(g) => round_up(cols, g),
                None => cols,
            },
        }
    }

    /// Bytes of one group of one LUT tile: weights, 16 f16 scales, 16 f16 zero
    /// points (`…Z`); also a GGUF block format's block record (weights, 16 f16
    /// scales), so both share the `tile_bytes` and `padded_cols` arms.
    const fn lut_group_bytes(self, g: usize) -> usize {
        let w = LUT_ROW_TILE * g * self.bits() as usize / 8;
        let z = if self.has_zero_point() { 32 } else { 0 };
        w + 32 + z
    }

    /// Bytes of one 32-column block record of a GGUF block format's tile:
    /// the 16 rows' weights (256 for q4_0, 512 for q8_0), then 16 f16 scales.
    pub const fn q_block_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 => self.lut_group_bytes(Q_BLOCK),
            _ => 0,
        }
    }

    /// Bytes of one row tile for `cols` columns.
    pub const fn tile_bytes(self, cols: usize) -> usize {
        let k = self.padded_cols(cols);
        match self {
            Self::F32 => 4 * cols,
            Self::F16 => 2 * ROW_TILE_8 * cols,
            Self::I8Row => 4 * ROW_TILE_8 + ROW_TILE_8 * k,
            _ => match self.group() {
                Some(g) => (k / g) * self.lut_group_bytes(g),
                None => 0,
            },
        }
    }

    /// Size of a packed `[rows, cols]` matrix, or `None` if it overflows `usize`.
    pub const fn checked_packed_bytes(self, rows: usize, cols: usize) -> Option<usize> {
        // tile_bytes itself cannot overflow for cols < usize::MAX / 32.
        if cols > usize::MAX / 64 {
            return None;
        }
        let tiles = rows.div_ceil(self.row_tile());
        tiles.checked_mul(self.tile_bytes(cols))
    }

    /// Size of a packed `[rows, cols]` matrix (`ceil(rows / row_tile) * tile_bytes(cols)`).
    ///
    /// # Panics
    /// If the size overflows `usize`; use [`Self::checked_packed_bytes`] on untrusted shapes.
    pub const fn packed_bytes(self, rows: usize, cols: usize) -> usize {
        match self.checked_packed_bytes(rows, cols) {
            Some(n) => n,
            None => panic!("packed_bytes: size overflows usize"),
        }
    }

    /// Scratch bytes a kernel of this format needs for `cols` inputs (activation
    /// tables or quantised activations; 0 for f32 and f16). Any alignment works.
    /// The GGUF block formats take room for [`Q_SCRATCH_TOKENS`] tokens of
    /// [`Self::q_token_bytes`] each (their batched path quantises that many
    /// activation rows ahead).
    pub const fn scratch_bytes(self, cols: usize) -> usize {
        let k = self.padded_cols(cols);
        match self {
            Self::F32 | Self::F16 => 0,
            Self::I8Row => k + 4 * (k / I8_BLOCK),
            Self::Q4_0 | Self::Q8_0 => Q_SCRATCH_TOKENS * self.q_token_bytes(cols),
            _ => match self.group() {
                // 16-byte table per 4 columns, then two f32 per group.
                Some(g) => 16 * (k / LUT_ACT_GROUP) + 8 * (k / g),
                None => 0,
            },
        }
    }

    /// Scratch bytes of one quantised activation row of a GGUF block format:
    /// `K` int8 activations, then per 32-column block an f32 scale and an i32
    /// offset (`K + 8 K / 32`, K = padded cols); 0 for other formats.
    pub const fn q_token_bytes(self, cols: usize) -> usize {
        let k = self.padded_cols(cols);
        match self {
            Self::Q4_0 | Self::Q8_0 => k + 8 * (k / Q_BLOCK),
            _ => 0,
        }
    }

    /// Integer accumulators per row that `QMatVec::integer_parts` (taskpath-cpu)
    /// reports: one per group (LUT formats), one per 32-column block (i8row,
    /// GGUF block formats), 0 for floats.
    pub const fn int_parts_per_row(self, cols: usize) -> usize {
        let k = self.padded_cols(cols);
        match self {
            Self::F32 | Self::F16 => 0,
            Self::I8Row | Self::Q4_0 | Self::Q8_0 => k / I8_BLOCK,
            _ => match self.group() {
                Some(g) => k / g,
                None => 0,
            },
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (format id {})", self.name(), self.id())
    }
}

/// Why [`quantize`] or [`dequantize`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantError {
    /// A buffer has the wrong length.
    Length {
        /// Which buffer (`"weights"`, `"packed"`, `"out"`).
        what: &'static str,
        /// The length required by the shape and format.
        expected: usize,
        /// The length passed.
        got: usize,
    },
    /// The shape's packed size overflows `usize`.
    Overflow,
    /// Weight `index` (row-major) is NaN or infinite.
    NonFinite {
        /// Row-major index of the offending weight.
        index: usize,
    },
    /// Weight `index` is too large for the format (its f16 value or f16 scale overflows).
    OutOfRange {
        /// Row-major index of the offending weight (the first of its group for scales).
        index: usize,
    },
    /// [`repack_gguf`]: GGUF stores whole 32-element blocks per row, so `cols`
    /// must be a multiple of 32 (and the format a GGUF block format).
    NotBlockAligned {
        /// The columns passed.
        cols: usize,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Length {
                what,
                expected,
                got,
            } => write!(f, "{what} has length {got}, expected {expected}"),
            Self::Overflow => write!(f, "packed size overflows usize"),
            Self::NonFinite { index } => write!(f, "weight {index} is NaN or infinite"),
            Self::OutOfRange { index } => {
                write!(f, "weight {index} is out of the format's range")
            }
            Self::NotBlockAligned { cols } => write!(
                f,
                "{cols} columns are not whole 32-element GGUF blocks (or the format is not q4_0/q8_0)"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for QuantError {}

/// Round to nearest, ties to even, for `|v| <= 2^22` (exact in f32 arithmetic:
/// adding `1.5 * 2^23` leaves no fraction bits). Used by quantisation and by
/// every kernel's activation/table quantisation, so all agree bit for bit.
#[inline(always)]
pub fn rne(v: f32) -> f32 {
    const M: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + M) - M
}

/// The smallest f16 that is `>= v` (for finite `v >= 0`); `None` if above f16::MAX.
fn f16_round_up(v: f32) -> Option<f16> {
    let h = f16::from_f32(v);
    let h = if h.to_f32() < v {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    };
    h.is_finite().then_some(h)
}

/// `(2^bits - 1) / 2`: the symmetric LUT formats' implicit zero point.
#[inline(always)]
pub fn lut_center(bits: u32) -> f32 {
    ((1u32 << bits) - 1) as f32 * 0.5
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), QuantError> {
    if expected == got {
        Ok(())
    } else {
        Err(QuantError::Length {
            what,
            expected,
            got,
        })
    }
}

#[inline(always)]
fn put_f32(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn put_f16(out: &mut [u8], at: usize, v: f16) {
    out[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
}

/// The little-endian f32 at `b[at..at + 4]` (panics out of range: callers
/// index inside a packed matrix whose length they checked).
#[inline(always)]
pub fn get_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian f16 at `b[at..at + 2]`, as f32 (panics out of range,
/// as [`get_f32`]).
#[inline(always)]
pub fn get_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Quantise row-major `w: [rows, cols]` into `format`'s packed layout `out`
/// (`out.len() == format.packed_bytes(rows, cols)`), overwriting all of `out`.
///
/// Deterministic, round-to-nearest-even, allocation-free. Per format:
///
/// - `F32`: copied; `F16`: nearest f16 (`|w| > 65504` is [`QuantError::OutOfRange`]);
/// - `I8Row`: `s = max|w_row| / 127` (f32), `q = rne(w / s)` in `[-127, 127]`;
/// - symmetric int`b` (`c = (2^b - 1) / 2`): `s = max|w_group| / c` rounded *up*
///   to f16, `q = rne(w / s + c)` in `[0, 2^b - 1]`, value `s * (q - c)`;
/// - asymmetric: range `[min(lo, 0), max(hi, 0)]`, `s` = range / `(2^b - 1)`
///   rounded up to f16, `z = f16(-min / s)`, `q = clamp(rne(w / s + z))`, value `s * (q - z)`;
/// - `Q4_0`, `Q8_0`: ggml's reference quantisers bit for bit (see
///   [`gguf_q4_0_block`], [`gguf_q8_0_block`]); a ragged last block is
///   quantised as if padded with zeros.
///
/// So every weight is within `s / 2` of its dequantised value (up to f32
/// rounding of `w / s`); f16 is within half an f16 ulp. Non-finite weights are
/// rejected.
pub fn quantize(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    w: &[f32],
    out: &mut [u8],
) -> Result<(), QuantError> {
    let n = rows.checked_mul(cols).ok_or(QuantError::Overflow)?;
    let bytes = format
        .checked_packed_bytes(rows, cols)
        .ok_or(QuantError::Overflow)?;
    check_len("weights", n, w.len())?;
    check_len("out", bytes, out.len())?;
    if let Some(index) = w.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index });
    }
    match format {
        WeightFormat::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(w) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        }
        WeightFormat::F16 => quantize_f16(rows, cols, w, out),
        WeightFormat::I8Row => {
            quantize_i8(rows, cols, w, out);
            Ok(())
        }
        WeightFormat::Q4_0 | WeightFormat::Q8_0 => quantize_q(format, rows, cols, w, out),
        _ => quantize_lut(format, rows, cols, w, out),
    }
}

fn quantize_f16(rows: usize, cols: usize, w: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    let tb = WeightFormat::F16.tile_bytes(cols);
    for (t, tile) in out.chunks_exact_mut(tb.max(1)).enumerate() {
        for c in 0..cols {
            for i in 0..ROW_TILE_8 {
                let r = t * ROW_TILE_8 + i;
                let h = if r < rows {
                    let h = f16::from_f32(w[r * cols + c]);
                    if !h.is_finite() {
                        return Err(QuantError::OutOfRange {
                            index: r * cols + c,
                        });
                    }
                    h
                } else {
                    f16::ZERO
                };
                put_f16(tile, 2 * (c * ROW_TILE_8 + i), h);
            }
        }
    }
    Ok(())
}

fn quantize_i8(rows: usize, cols: usize, w: &[f32], out: &mut [u8]) {
    let f = WeightFormat::I8Row;
    let k = f.padded_cols(cols);
    let tb = f.tile_bytes(cols);
    out.fill(0);
    for r in 0..rows {
        let tile = &mut out[(r / ROW_TILE_8) * tb..][..tb];
        let i = r % ROW_TILE_8;
        let row = &w[r * cols..(r + 1) * cols];
        let q = &mut tile[4 * ROW_TILE_8 + i * k..][..cols];
        let s = i8_row(row, |c, v| q[c] = v as u8);
        put_f32(tile, 4 * i, s);
    }
}

/// The int8 per-row quantisation of one row (the i8row format's, and the
/// one every int8 export uses, so their integers agree bit for bit): scale
/// `max|w| / 127` (0 for an all-zero row, whose values are then all 0),
/// `q = round_half_even(w / scale)` clamped to `[-127, 127]`, written through
/// `put(column, q)`. Returns the scale.
pub fn i8_row(row: &[f32], mut put: impl FnMut(usize, i8)) -> f32 {
    let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = amax / 127.0;
    for (c, &v) in row.iter().enumerate() {
        put(
            c,
            if s > 0.0 {
                rne(v / s).clamp(-127.0, 127.0) as i8
            } else {
                0
            },
        );
    }
    s
}

/// Quantise one (row, group) of a LUT format: fills `q` (values in
/// `[0, 2^bits)`), returns the f16 scale and zero point (the implicit centre for
/// symmetric formats, stored as 0).
fn quantize_group(bits: u32, zero_point: bool, w: &[f32], q: &mut [u8]) -> Option<(f16, f16)> {
    let qmax = ((1u32 << bits) - 1) as f32;
    q.fill(0);
    if zero_point {
        let lo = w.iter().fold(0.0f32, |m, &v| m.min(v));
        let hi = w.iter().fold(0.0f32, |m, &v| m.max(v));
        let s = f16_round_up((hi - lo) / qmax)?;
        let sf = s.to_f32();
        if sf == 0.0 {
            return Some((s, f16::ZERO));
        }
        let z = f16::from_f32((-lo / sf).clamp(0.0, qmax));
        let zf = z.to_f32();
        for (qc, &v) in q.iter_mut().zip(w) {
            *qc = rne((v / sf + zf).clamp(0.0, qmax)) as u8;
        }
        Some((s, z))
    } else {
        let c = lut_center(bits);
        let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = f16_round_up(amax / c)?;
        let sf = s.to_f32();
        if sf == 0.0 {
            return Some((s, f16::ZERO));
        }
        for (qc, &v) in q.iter_mut().zip(w) {
            *qc = rne((v / sf + c).clamp(0.0, qmax)) as u8;
        }
        Some((s, f16::ZERO))
    }
}

/// Table index of bit plane `k` for four consecutive values `q[0..4]`:
/// bit `e` of the index is bit `k` of `q[e]`.
#[inline(always)]
fn plane_index(q: &[u8], k: u32) -> u8 {
    (0..LUT_ACT_GROUP).fold(0u8, |acc, e| acc | (((q[e] >> k) & 1) << e))
}

fn quantize_lut(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    w: &[f32],
    out: &mut [u8],
) -> Result<(), QuantError> {
    let (g, bits, zp) = lut_params(format);
    let k = format.padded_cols(cols);
    let tb = format.tile_bytes(cols);
    let gb = format.lut_group_bytes(g);
    let wbytes = LUT_ROW_TILE * g * bits as usize / 8;
    let mut q = [[0u8; 64]; LUT_ROW_TILE];
    for (t, tile) in out.chunks_exact_mut(tb.max(1)).enumerate() {
        for gi in 0..k / g {
            let gbuf = &mut tile[gi * gb..(gi + 1) * gb];
            let c0 = gi * g;
            let c1 = (c0 + g).min(cols);
            for (i, qi) in q.iter_mut().enumerate() {
                let r = t * LUT_ROW_TILE + i;
                let (s, z) = if r < rows {
                    let row = &w[r * cols..(r + 1) * cols];
                    quantize_group(bits, zp, &row[c0..c1], &mut qi[..c1 - c0]).ok_or(
                        QuantError::OutOfRange {
                            index: r * cols + c0,
                        },
                    )?
                } else {
                    (f16::ZERO, f16::ZERO)
                };
                qi[c1 - c0..].fill(0);
                put_f16(gbuf, wbytes + 2 * i, s);
                if zp {
                    put_f16(gbuf, wbytes + 32 + 2 * i, z);
                }
            }
            pack_lut_group(bits, g, &q, &mut gbuf[..wbytes]);
        }
    }
    Ok(())
}

/// `(group, bits, zero point)` of a LUT format.
pub fn lut_params(format: WeightFormat) -> (usize, u32, bool) {
    let Some(g) = format.group() else {
        panic!("lut_params: not a LUT format")
    };
    (g, format.bits(), format.has_zero_point())
}

/// Bit-plane packing of one 16-row group (see docs/KERNELS.md): 32-byte blocks,
/// byte `p` belongs to row `p / 2`, `j = p % 2`. int4: block per 4 columns, low
/// nibble = plane `j`, high nibble = plane `j + 2`. int2: block per 8 columns,
/// low nibble = plane `j` of columns `0..4`, high nibble = plane `j` of `4..8`.
fn pack_lut_group(bits: u32, g: usize, q: &[[u8; 64]; LUT_ROW_TILE], out: &mut [u8]) {
    for (b, block) in out.chunks_exact_mut(32).enumerate() {
        for (p, byte) in block.iter_mut().enumerate() {
            let (i, j) = (p / 2, (p % 2) as u32);
            let (lo, hi) = if bits == 4 {
                let qa = &q[i][4 * b..4 * b + 4];
                (plane_index(qa, j), plane_index(qa, j + 2))
            } else {
                let qa = &q[i][8 * b..8 * b + 4];
                let qb = &q[i][8 * b + 4..8 * b + 8];
                (plane_index(qa, j), plane_index(qb, j))
            };
            *byte = lo | (hi << 4);
        }
    }
    debug_assert_eq!(out.len() * 8, LUT_ROW_TILE * g * bits as usize);
}

/// The quantised value `q` (in `[0, 2^bits)`) of row `i`, column `c` of a packed
/// 16-row LUT group's weight bytes.
pub fn lut_q(bits: u32, wbytes: &[u8], i: usize, c: usize) -> u8 {
    let e = c % 4;
    let mut q = 0u8;
    for k in 0..bits {
        let (block, j, hi) = if bits == 4 {
            (c / 4, k % 2, k >= 2)
        } else {
            (c / 8, k, (c % 8) >= 4)
        };
        let byte = wbytes[32 * block + 2 * i + j as usize];
        let idx = if hi { byte >> 4 } else { byte & 15 };
        q |= ((idx >> e) & 1) << k;
    }
    q
}

/// Dequantise a packed matrix into row-major `out: [rows, cols]`: exactly the
/// values the kernels multiply by (f32 arithmetic `s * (q - z)` for the LUT
/// formats, `s * q` for i8row, the f16 value for f16).
pub fn dequantize(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    out: &mut [f32],
) -> Result<(), QuantError> {
    let n = rows.checked_mul(cols).ok_or(QuantError::Overflow)?;
    let bytes = format
        .checked_packed_bytes(rows, cols)
        .ok_or(QuantError::Overflow)?;
    check_len("packed", bytes, packed.len())?;
    check_len("out", n, out.len())?;
    for r in 0..rows {
        row_into(format, cols, packed, r, &mut out[r * cols..(r + 1) * cols]);
    }
    Ok(())
}

/// Row `r` of a packed `[rows, cols]` matrix, dequantized into `out`
/// (`cols` values): what an embedding lookup reads. Same values as
/// [`dequantize`].
pub fn dequantize_row(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    r: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let bytes = format
        .checked_packed_bytes(rows, cols)
        .ok_or(QuantError::Overflow)?;
    check_len("packed", bytes, packed.len())?;
    check_len("out", cols, out.len())?;
    if r >= rows {
        return Err(QuantError::Length {
            what: "row",
            expected: rows,
            got: r,
        });
    }
    row_into(format, cols, packed, r, out);
    Ok(())
}

/// Row `r` of a packed matrix whose length the caller checked.
fn row_into(format: WeightFormat, cols: usize, packed: &[u8], r: usize, orow: &mut [f32]) {
    let tb = format.tile_bytes(cols).max(1);
    let rt = format.row_tile();
    let tile = &packed[(r / rt) * tb..][..format.tile_bytes(cols)];
    let i = r % rt;
    match format {
        WeightFormat::F32 => {
            for (c, o) in orow.iter_mut().enumerate() {
                *o = get_f32(tile, 4 * c);
            }
        }
        WeightFormat::F16 => {
            for (c, o) in orow.iter_mut().enumerate() {
                *o = get_f16(tile, 2 * (c * ROW_TILE_8 + i));
            }
        }
        WeightFormat::I8Row => {
            let k = format.padded_cols(cols);
            let s = get_f32(tile, 4 * i);
            for (c, o) in orow.iter_mut().enumerate() {
                *o = s * f32::from(tile[4 * ROW_TILE_8 + i * k + c] as i8);
            }
        }
        WeightFormat::Q4_0 | WeightFormat::Q8_0 => {
            let bb = format.q_block_bytes();
            let wb = bb - 2 * Q_ROW_TILE;
            for (c, o) in orow.iter_mut().enumerate() {
                let blk = &tile[(c / Q_BLOCK) * bb..][..bb];
                let d = get_f16(blk, wb + 2 * i);
                *o = d * f32::from(q_value(format, &blk[..wb], i, c % Q_BLOCK));
            }
        }
        _ => {
            let (g, bits, zp) = lut_params(format);
            let gb = format.lut_group_bytes(g);
            let wbytes = LUT_ROW_TILE * g * bits as usize / 8;
            for (c, o) in orow.iter_mut().enumerate() {
                let gbuf = &tile[(c / g) * gb..][..gb];
                let s = get_f16(gbuf, wbytes + 2 * i);
                let z = if zp {
                    get_f16(gbuf, wbytes + 32 + 2 * i)
                } else {
                    lut_center(bits)
                };
                let q = lut_q(bits, &gbuf[..wbytes], i, c % g);
                *o = s * (f32::from(q) - z);
            }
        }
    }
}

/// The f16 scale of (row, column group) of a packed LUT matrix, as f32 (for
/// error bounds in tests and the packer). `None` for other formats or out of range.
pub fn lut_scale(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    row: usize,
    group: usize,
) -> Option<f32> {
    let (g, bits, _) = format.is_lut().then(|| lut_params(format))?;
    if row >= rows || group >= format.padded_cols(cols) / g {
        return None;
    }
    let tile = packed.get((row / LUT_ROW_TILE) * format.tile_bytes(cols)..)?;
    let gbuf = tile.get(group * format.lut_group_bytes(g)..)?;
    let wbytes = LUT_ROW_TILE * g * bits as usize / 8;
    gbuf.get(wbytes + 2 * (row % LUT_ROW_TILE) + 1)?;
    Some(get_f16(gbuf, wbytes + 2 * (row % LUT_ROW_TILE)))
}

/// The f32 scale of `row` of a packed i8row matrix. `None` for other formats or out of range.
pub fn i8_row_scale(rows: usize, cols: usize, packed: &[u8], row: usize) -> Option<f32> {
    if row >= rows {
        return None;
    }
    let tb = WeightFormat::I8Row.tile_bytes(cols);
    let at = (row / ROW_TILE_8) * tb + 4 * (row % ROW_TILE_8);
    packed.get(at + 3)?;
    Some(get_f32(packed, at))
}

// ------------------------------------------------------------------ GGUF block formats

/// Byte offset, within a block record's weights, of row `r`, column `c` (0..32)
/// of a GGUF block format, and whether it is the high nibble (q4_0).
///
/// q4_0: chunk `c / 8` (64 bytes), byte `4 r + c % 4`, high nibble iff
/// `c % 8 >= 4`. q8_0: chunk `c / 4`, byte `4 r + c % 4`.
#[inline(always)]
pub fn q_position(format: WeightFormat, r: usize, c: usize) -> (usize, bool) {
    match format {
        WeightFormat::Q4_0 => (Q_CHUNK * (c / 8) + 4 * r + c % 4, c % 8 >= 4),
        _ => (Q_CHUNK * (c / 4) + 4 * r + c % 4, false),
    }
}

/// The signed quant of row `r`, column `c` (0..32) of one block record's
/// weight bytes: `q - 8` in `[-8, 7]` (q4_0) or `q` in `[-128, 127]` (q8_0).
/// The weight is `d * q_value`.
#[inline(always)]
pub fn q_value(format: WeightFormat, wbytes: &[u8], r: usize, c: usize) -> i8 {
    let (at, hi) = q_position(format, r, c);
    let b = wbytes[at];
    match format {
        WeightFormat::Q4_0 => (if hi { b >> 4 } else { b & 15 }) as i8 - 8,
        _ => (b ^ 0x80) as i8,
    }
}

/// Round half away from zero (C's `roundf`) for `|v| < 2^23`.
#[inline(always)]
fn round_half_away(v: f32) -> f32 {
    let t = v as i32 as f32; // truncation, exact for |v| < 2^31
    let f = v - t; // exact: t and v share the binade or t == 0
    if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// C's float to `int8_t` conversion as x86-64 compilers emit it
/// (`cvttss2si`, then the low byte): truncation toward zero; NaN and values
/// outside the i32 range give `i32::MIN`, whose low byte is 0. ggml's
/// quantisers reach the non-finite case only for blocks whose f16 scale is 0
/// anyway (a subnormal f32 `d` whose reciprocal overflows).
#[inline(always)]
fn c_f32_to_i8(v: f32) -> i8 {
    if v.is_finite() && v.abs() < 2_147_483_648.0 {
        v as i32 as i8
    } else {
        0
    }
}

/// ggml's `quantize_row_q4_0_ref` for one block of 32 values: `max` is the
/// first value of largest magnitude, `d = max / -8` (f32), `id = 1 / d` (0 if
/// `d == 0`), `q = min(15, (int8_t)(x id + 8.5))`. Returns `(f16 d, q)`; the
/// weight is `f16(d) * (q - 8)`.
pub fn gguf_q4_0_block(x: &[f32; Q_BLOCK]) -> (f16, [u8; Q_BLOCK]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = core::array::from_fn(|j| c_f32_to_i8(x[j] * id + 8.5).min(15) as u8);
    (f16::from_f32(d), q)
}

/// ggml's `quantize_row_q8_0_ref` for one block of 32 values:
/// `amax = max |x|`, `d = amax / 127` (f32), `id = 1 / d` (0 if `d == 0`),
/// `q = (int8_t) roundf(x id)` (half away from zero). Returns `(f16 d, q)`;
/// the weight is `f16(d) * q`.
pub fn gguf_q8_0_block(x: &[f32; Q_BLOCK]) -> (f16, [i8; Q_BLOCK]) {
    let amax = x
        .iter()
        .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = core::array::from_fn(|j| {
        let v = x[j] * id;
        if v.is_finite() {
            c_f32_to_i8(round_half_away(v))
        } else {
            0
        }
    });
    (f16::from_f32(d), q)
}

/// Write one block (row `r` of a tile, f16 `d`, 32 signed quants `q - 8` or `q`)
/// into a block record.
fn put_q_block(format: WeightFormat, blk: &mut [u8], r: usize, d: f16, sq: &[i8; Q_BLOCK]) {
    let wb = format.q_block_bytes() - 2 * Q_ROW_TILE;
    for (c, &v) in sq.iter().enumerate() {
        let (at, hi) = q_position(format, r, c);
        match format {
            WeightFormat::Q4_0 => {
                let n = (v + 8) as u8 & 15;
                blk[at] = if hi {
                    (blk[at] & 0x0F) | (n << 4)
                } else {
                    (blk[at] & 0xF0) | n
                };
            }
            _ => blk[at] = v as u8 ^ 0x80,
        }
    }
    put_f16(blk, wb + 2 * r, d);
}

/// Fill `out` with the packed zero matrix of a GGUF block format (every `q`
/// the value 0: nibble 8 / byte `0x80`; every scale 0): what padding holds.
fn fill_q_zero(format: WeightFormat, out: &mut [u8]) {
    let bb = format.q_block_bytes();
    let wb = bb - 2 * Q_ROW_TILE;
    let z = if format == WeightFormat::Q4_0 {
        0x88
    } else {
        0x80
    };
    for blk in out.chunks_exact_mut(bb) {
        blk[..wb].fill(z);
        blk[wb..].fill(0);
    }
}

fn quantize_q(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    w: &[f32],
    out: &mut [u8],
) -> Result<(), QuantError> {
    let (tb, bb) = (format.tile_bytes(cols), format.q_block_bytes());
    fill_q_zero(format, out);
    for r in 0..rows {
        let tile = &mut out[(r / Q_ROW_TILE) * tb..][..tb];
        let row = &w[r * cols..(r + 1) * cols];
        for (b, xs) in row.chunks(Q_BLOCK).enumerate() {
            let mut x = [0.0f32; Q_BLOCK];
            x[..xs.len()].copy_from_slice(xs);
            let (d, sq) = if format == WeightFormat::Q4_0 {
                let (d, q) = gguf_q4_0_block(&x);
                (d, q.map(|v| v as i8 - 8))
            } else {
                gguf_q8_0_block(&x)
            };
            if !d.is_finite() {
                return Err(QuantError::OutOfRange {
                    index: r * cols + b * Q_BLOCK,
                });
            }
            put_q_block(
                format,
                &mut tile[b * bb..(b + 1) * bb],
                r % Q_ROW_TILE,
                d,
                &sq,
            );
        }
    }
    Ok(())
}

/// Bytes of one GGUF block (f16 `d` plus quants): 18 (Q4_0) or 34 (Q8_0); 0
/// for other formats.
pub const fn gguf_block_bytes(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q4_0 => 2 + Q_BLOCK / 2,
        WeightFormat::Q8_0 => 2 + Q_BLOCK,
        _ => 0,
    }
}

/// Repack a GGUF `Q4_0` / `Q8_0` tensor of `rows` rows of `cols` elements
/// (row-major blocks, `gguf.len() == rows * cols / 32 * gguf_block_bytes`)
/// into `format`'s packed layout `out` (`out.len() == format.packed_bytes(rows, cols)`),
/// bit for bit: every `d` keeps its f16 bits (NaN and infinity included) and
/// every quant its value, so [`dequantize`] returns exactly GGUF's
/// dequantisation `d * (q - 8)` / `d * q`. GGUF blocks: Q4_0 = f16 `d`, then 16
/// bytes, byte `i` holding element `i` (low nibble) and `i + 16` (high);
/// Q8_0 = f16 `d`, then 32 `i8`. Padding rows are zeros.
pub fn repack_gguf(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    gguf: &[u8],
    out: &mut [u8],
) -> Result<(), QuantError> {
    if !format.is_gguf_block() || !cols.is_multiple_of(Q_BLOCK) {
        return Err(QuantError::NotBlockAligned { cols });
    }
    let bytes = format
        .checked_packed_bytes(rows, cols)
        .ok_or(QuantError::Overflow)?;
    let gb = gguf_block_bytes(format);
    let nb = cols / Q_BLOCK;
    let want = rows
        .checked_mul(nb)
        .and_then(|n| n.checked_mul(gb))
        .ok_or(QuantError::Overflow)?;
    check_len("gguf", want, gguf.len())?;
    check_len("out", bytes, out.len())?;
    let (tb, bb) = (format.tile_bytes(cols), format.q_block_bytes());
    fill_q_zero(format, out);
    for (r, grow) in gguf.chunks_exact(gb * nb.max(1)).take(rows).enumerate() {
        let tile = &mut out[(r / Q_ROW_TILE) * tb..][..tb];
        for (b, g) in grow.chunks_exact(gb).enumerate() {
            let d = f16::from_bits(u16::from_le_bytes([g[0], g[1]]));
            let sq: [i8; Q_BLOCK] = if format == WeightFormat::Q4_0 {
                core::array::from_fn(|i| {
                    let byte = g[2 + i % 16];
                    (if i < 16 { byte & 15 } else { byte >> 4 }) as i8 - 8
                })
            } else {
                core::array::from_fn(|i| g[2 + i] as i8)
            };
            put_q_block(
                format,
                &mut tile[b * bb..(b + 1) * bb],
                r % Q_ROW_TILE,
                d,
                &sq,
            );
        }
    }
    Ok(())
}

/// The f16 scale `d` of (row, 32-column block) of a packed GGUF block matrix,
/// as f32 (for error bounds in tests). `None` for other formats or out of range.
pub fn q_scale(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
    row: usize,
    block: usize,
) -> Option<f32> {
    if !format.is_gguf_block() || row >= rows || block >= format.padded_cols(cols) / Q_BLOCK {
        return None;
    }
    let bb = format.q_block_bytes();
    let at = (row / Q_ROW_TILE) * format.tile_bytes(cols) + block * bb + bb - 2 * Q_ROW_TILE
        + 2 * (row % Q_ROW_TILE);
    packed.get(at + 1)?;
    Some(get_f16(packed, at))
}

/// The row-major index of the first weight of a packed `[rows, cols]` matrix
/// whose value (as [`dequantize`] computes it) is NaN or infinite, or `None`
/// when every value is finite.
///
/// Reads the numbers the values are made of rather than dequantizing into a
/// buffer, so it allocates nothing: f32 and f16 values, each i8row scale
/// times its quants, the f16 scales (and zero points) of the LUT formats and
/// the f16 `d` of the GGUF block formats. A finite f16 scale and zero point
/// keep every LUT or GGUF block value finite (at most about `65504^2`), so
/// for those formats a bad scale is reported at the first weight of its
/// group in that row. Padding rows and columns are not read: the kernels
/// discard what they produce.
pub fn first_non_finite(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    packed: &[u8],
) -> Result<Option<usize>, QuantError> {
    rows.checked_mul(cols).ok_or(QuantError::Overflow)?;
    let bytes = format
        .checked_packed_bytes(rows, cols)
        .ok_or(QuantError::Overflow)?;
    check_len("packed", bytes, packed.len())?;
    let (tb, rt, k) = (
        format.tile_bytes(cols),
        format.row_tile(),
        format.padded_cols(cols),
    );
    let bad = |v: f32| !v.is_finite();
    for r in 0..rows {
        let tile = &packed[(r / rt) * tb..][..tb];
        let i = r % rt;
        let first = match format {
            WeightFormat::F32 => (0..cols).find(|&c| bad(get_f32(tile, 4 * c))),
            WeightFormat::F16 => (0..cols).find(|&c| bad(get_f16(tile, 2 * (c * ROW_TILE_8 + i)))),
            WeightFormat::I8Row => {
                // A finite scale can still overflow: s * -128 past f32::MAX.
                let s = get_f32(tile, 4 * i);
                let q = &tile[4 * ROW_TILE_8 + i * k..][..cols];
                (0..cols).find(|&c| bad(s * f32::from(q[c] as i8)))
            }
            WeightFormat::Q4_0 | WeightFormat::Q8_0 => {
                let bb = format.q_block_bytes();
                let wb = bb - 2 * Q_ROW_TILE;
                (0..k / Q_BLOCK)
                    .find(|&b| bad(get_f16(&tile[b * bb..][..bb], wb + 2 * i)))
                    .map(|b| b * Q_BLOCK)
            }
            _ => {
                let (g, bits, zp) = lut_params(format);
                let gb = format.lut_group_bytes(g);
                let wbytes = LUT_ROW_TILE * g * bits as usize / 8;
                (0..k / g)
                    .find(|&gi| {
                        let gbuf = &tile[gi * gb..][..gb];
                        bad(get_f16(gbuf, wbytes + 2 * i))
                            || (zp && bad(get_f16(gbuf, wbytes + 32 + 2 * i)))
                    })
                    .map(|gi| gi * g)
            }
        };
        if let Some(c) = first {
            return Ok(Some(r * cols + c));
        }
    }
    Ok(None)
}
