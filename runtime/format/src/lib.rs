//! The Taskpath package file (`.tpk`), specified in docs/FORMAT.md.
//!
//! [`Package::parse`] validates a package in place — header, section table,
//! metadata checksum and every table, index, range and enum — without copying
//! or allocating, so it runs on bare-metal firmware over bytes in flash. Blob
//! checksums are checked on demand. [`Op`] is the typed op program (the only
//! decoder of op records), [`weight`] the weight formats' ids and byte
//! layouts, [`signature`] the optional ed25519 signature record (verified with
//! the `signing` feature). The `std` feature adds [`writer`] and signing.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!(
    "taskpath-format borrows little-endian f32 data in place; big-endian targets are not supported"
);

mod error;
mod op;
mod package;
pub mod records;
pub mod signature;
#[cfg(feature = "count-steps")]
pub mod steps;
#[cfg(not(feature = "count-steps"))]
mod steps;
#[cfg(all(test, feature = "std"))]
mod tests;
pub mod weight;
#[cfg(feature = "std")]
pub mod writer;

pub use error::{FormatError, Result};
pub use op::{opcode, Access, ExpertKind, GateFn, Op, RopeStyle, RouteMode, SlotId, TensorId};
pub use package::*;
pub use records::{ExpertMask, Record, NONE};
pub use weight::WeightFormat;
