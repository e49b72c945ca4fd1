//! The Taskpath package file (`.tpk`), specified in docs/FORMAT.md.
//!
//! [`Package::parse`] validates a package in place — header, section table,
//! metadata checksum and every table, index, range and enum — without copying
//! or allocating, so it runs on bare-metal firmware over bytes in flash. Blob
//! checksums are checked on demand. The `std` feature adds [`writer`].
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!(
    "taskpath-format borrows little-endian f32 data in place; big-endian targets are not supported"
);

mod error;
mod package;
pub mod records;
#[cfg(feature = "count-steps")]
pub mod steps;
#[cfg(not(feature = "count-steps"))]
mod steps;
#[cfg(all(test, feature = "std"))]
mod tests;
#[cfg(feature = "std")]
pub mod writer;

pub use error::{FormatError, Result};
pub use package::*;
pub use records::{Record, NONE};

/// Operations of the op program. Arguments are `a0..a6` of [`records::OpRec`];
/// "slot" arguments index the task's slots, "tensor" arguments are global tensor
/// indices, `NONE` marks an absent optional tensor or slot.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// `y[L,D] = W X + b + pos` for task input `a0`: y=slot a1, W=tensor a2,
    /// b=a3, pos=a4 (`[L,D]`), tmp slot a5 (low-rank W only, else NONE).
    Encode = 1,
    /// `y = LN(scale * x)` row-wise: x=slot a0, y=slot a1 (may equal a0),
    /// g=a2, b=a3, scale=f32 bits a4, rows=a5.
    LayerNorm = 2,
    /// `y[rows] = W x[rows] + b`: x=a0, y=a1, W=a2, b=a3 (or NONE), rows=a4,
    /// tmp slot a5 (low-rank W only, else NONE).
    Linear = 3,
    /// Self-attention core over projected q=a0, k=a1, v=a2 (`[L,D]`) into
    /// out=a3, L=a4, heads=a5, scratch slot a6 (`>= L`).
    Attention = 4,
    /// Attention pooling of u=a0 (`[L,D]`, L=a1) with query tensor a2 into
    /// out=a3, scratch slot a4 (`>= L`).
    AttnPool = 5,
    /// Gate logits of pooled p=a0 against gate tensor a1 (`[N,D]`) into
    /// logits=a2: `logits = (a3 != 0 ? logits : 0) + scale * g(p)`, scale=f32 bits a4.
    Gate = 6,
    /// Top-k of logits=a0 within the task's path for modality a1; writes
    /// `k` expert indices (as f32) then `k` gates into slot a2 (`2 * top_k`).
    Route = 7,
    /// Mixture of the routed experts at one token: u=a0 (`[L,D]`, L=a1),
    /// route=a2, components `0..=a3`, token=a4, out=a5 (`[D]`), scratch=a6.
    Moe = 8,
    /// Copies `a4` values from slot a0 at offset a1 to slot a2 at offset a3.
    Copy = 9,
}

impl Opcode {
    /// Decodes an opcode; `None` for unknown values.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Encode,
            2 => Self::LayerNorm,
            3 => Self::Linear,
            4 => Self::Attention,
            5 => Self::AttnPool,
            6 => Self::Gate,
            7 => Self::Route,
            8 => Self::Moe,
            9 => Self::Copy,
            _ => return None,
        })
    }
}
