//! Weight formats: ids, packed layouts, quantisation and the dequantisation oracle.
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
}

/// Every format, in id order (`ALL[i].id() == i + 1`).
pub const ALL: [WeightFormat; 11] = [
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
        }
    }

    /// Bits per stored weight value (32, 16, 8, 4 or 2), scales not counted.
    pub const fn bits(self) -> u32 {
        match self {
            Self::F32 => 32,
            Self::F16 => 16,
            Self::I8Row => 8,
            Self::I4G32 | Self::I4G64 | Self::I4G32Z | Self::I4G64Z => 4,
            Self::I2G32 | Self::I2G64 | Self::I2G32Z | Self::I2G64Z => 2,
        }
    }

    /// Columns sharing one scale (and zero point) for the group-wise formats, else `None`.
    pub const fn group(self) -> Option<usize> {
        match self {
            Self::I4G32 | Self::I2G32 | Self::I4G32Z | Self::I2G32Z => Some(32),
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
        self.group().is_some()
    }

    /// Rows per tile: 1 (f32), 8 (f16, i8row) or 16 (LUT formats).
    pub const fn row_tile(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::F16 | Self::I8Row => ROW_TILE_8,
            _ => LUT_ROW_TILE,
        }
    }

    /// Columns as stored: `cols` for f32/f16, rounded up to 32 for i8row and to
    /// the group size for the LUT formats (the padding holds zero weights).
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

    /// Bytes of one group of one LUT tile: weights, 16 f16 scales, 16 f16 zero points (`…Z`).
    const fn lut_group_bytes(self, g: usize) -> usize {
        let w = LUT_ROW_TILE * g * self.bits() as usize / 8;
        let z = if self.has_zero_point() { 32 } else { 0 };
        w + 32 + z
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
    pub const fn scratch_bytes(self, cols: usize) -> usize {
        let k = self.padded_cols(cols);
        match self {
            Self::F32 | Self::F16 => 0,
            Self::I8Row => k + 4 * (k / I8_BLOCK),
            _ => match self.group() {
                // 16-byte table per 4 columns, then two f32 per group.
                Some(g) => 16 * (k / LUT_ACT_GROUP) + 8 * (k / g),
                None => 0,
            },
        }
    }

    /// Integer accumulators per row that [`crate::qmatvec::QMatVec::integer_parts`]
    /// reports: one per group (LUT formats), one per 32-column block (i8row), 0 for floats.
    pub const fn int_parts_per_row(self, cols: usize) -> usize {
        let k = self.padded_cols(cols);
        match self {
            Self::F32 | Self::F16 => 0,
            Self::I8Row => k / I8_BLOCK,
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
            Self::NonFinite { index } => write!(f, "weight {index} is not finite"),
            Self::OutOfRange { index } => {
                write!(f, "weight {index} is out of the format's range")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for QuantError {}

/// Round to nearest, ties to even, for `|v| <= 2^22` (exact in f32 arithmetic:
/// adding `1.5 * 2^23` leaves no fraction bits). Used by quantisation and by
/// every kernel's activation/table quantisation, so all agree bit for bit.
#[inline(always)]
pub(crate) fn rne(v: f32) -> f32 {
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
pub(crate) fn lut_center(bits: u32) -> f32 {
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

#[inline(always)]
pub(crate) fn get_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
pub(crate) fn get_f16(b: &[u8], at: usize) -> f32 {
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
///   rounded up to f16, `z = f16(-min / s)`, `q = clamp(rne(w / s + z))`, value `s * (q - z)`.
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
        let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = amax / 127.0;
        put_f32(tile, 4 * i, s);
        let q = &mut tile[4 * ROW_TILE_8 + i * k..][..cols];
        if s > 0.0 {
            for (qc, &v) in q.iter_mut().zip(row) {
                *qc = rne(v / s).clamp(-127.0, 127.0) as i8 as u8;
            }
        }
    }
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
pub(crate) fn lut_params(format: WeightFormat) -> (usize, u32, bool) {
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
pub(crate) fn lut_q(bits: u32, wbytes: &[u8], i: usize, c: usize) -> u8 {
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
    let tb = format.tile_bytes(cols).max(1);
    let rt = format.row_tile();
    for r in 0..rows {
        let tile = &packed[(r / rt) * tb..][..format.tile_bytes(cols)];
        let i = r % rt;
        let orow = &mut out[r * cols..(r + 1) * cols];
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
    Ok(())
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
