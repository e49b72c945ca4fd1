//! Weights as the device addresses them: a tensor's geometry and byte
//! offsets inside its blob ([`DevTensor`]), bound to the blob's device
//! address for one use ([`DevW`]).

use taskpath_runtime::exec::WeightInfo;
use taskpath_runtime::{TensorView, WeightFormat};

use crate::error::{CudaError, Result};
use crate::geometry::supported;

/// A tensor of a blob: shape, format, and where its data lies in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevTensor {
    /// Logical rows.
    pub rows: usize,
    /// Logical columns.
    pub cols: usize,
    /// Rank of a low-rank pair (0 = dense).
    pub rank: usize,
    /// Weight format.
    pub format: WeightFormat,
    /// Global blob index.
    pub blob: u32,
    /// Byte offset of the data (or `U`) in the blob.
    pub off_a: usize,
    /// Byte offset of `V` in the blob (low-rank only).
    pub off_b: usize,
    /// Bytes of weight data.
    pub bytes: usize,
}

impl DevTensor {
    /// The tensor `v`, whose blob's bytes are `blob` (the view borrows them).
    pub fn new(v: &TensorView<'_>, blob: &[u8]) -> Result<Self> {
        let format = WeightFormat::from_u16(v.format)
            .filter(|&f| supported(f))
            .ok_or_else(|| {
                CudaError::UnsupportedFormat(format!(
                    "weight format id {} has no CUDA kernel in this build",
                    v.format
                ))
            })?;
        let base = blob.as_ptr() as usize;
        let off = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(base);
        Ok(Self {
            rows: v.rows,
            cols: v.cols,
            rank: v.rank,
            format,
            blob: v.blob,
            off_a: off(v.raw_a),
            off_b: if v.raw_b.is_empty() { 0 } else { off(v.raw_b) },
            bytes: v.bytes(),
        })
    }
}

/// A tensor bound to its blob's device address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevW {
    /// The tensor.
    pub t: DevTensor,
    /// Device address of its blob.
    pub base: u64,
}

impl DevW {
    /// Device address of the data (or `U`).
    pub fn addr_a(&self) -> u64 {
        self.base + self.t.off_a as u64
    }
    /// Device address of `V`.
    pub fn addr_b(&self) -> u64 {
        self.base + self.t.off_b as u64
    }
}

impl WeightInfo for DevW {
    fn rows(&self) -> usize {
        self.t.rows
    }
    fn cols(&self) -> usize {
        self.t.cols
    }
    fn rank(&self) -> usize {
        self.t.rank
    }
    fn format(&self) -> u16 {
        self.t.format.id()
    }
    fn bytes(&self) -> usize {
        self.t.bytes
    }
    fn blob(&self) -> u32 {
        self.t.blob
    }
}
