//! Taskpath runtime core: a [`Model`] validated over borrowed package bytes,
//! and a [`Session`] that runs one task's op program over a caller-provided
//! arena, touching only that task's path of blobs.
//!
//! Without the `std` feature the crate is `no_std` and never allocates: the
//! arena size a task needs is in the package ([`TaskInfo::arena_bytes`]), so
//! firmware can reserve it statically.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

mod backend;
mod error;
#[cfg(feature = "std")]
mod mapped;
mod meter;
mod model;
mod residency;
mod session;
mod trace;

pub use backend::{Backend, CpuBackend};
pub use error::{Error, ErrorCode, Result};
#[cfg(feature = "std")]
pub use mapped::{
    AlignedArena, MappedModel, MmapPrefetch, PrefetchHints, PrefetchReader, PrefetchStats, ReadAt,
};
pub use meter::{wrapping_delta, CallbackClock, CallbackMeter, Clock, EnergyMeter, MeterError};
pub use model::{BlobView, ExpertTensors, Model, TaskInfo, TensorView, MAX_CHAIN};
pub use residency::{
    cache_footprint, BlobSource, CacheStats, Prefetch, ResidencyCache, CACHE_ALIGN, MAX_SLOTS,
};
pub use session::{linear, moe_scratch, RunStats, Session, SessionOptions, EXPERT_INDEX};
pub use taskpath_cpu::qmatvec::Kernels;
pub use taskpath_cpu::quant::WeightFormat;
pub use taskpath_format as format;
pub use trace::{NoTrace, Tracer};
