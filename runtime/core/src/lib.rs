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
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod cpu;
mod error;
pub mod exec;
#[cfg(feature = "std")]
mod mapped;
mod meter;
mod model;
pub mod plan;
#[cfg(feature = "std")]
pub mod pool;
mod residency;
mod session;
mod trace;

pub use backend::{Backend, CpuBackend};
pub use cpu::linear;
pub use error::{Error, ErrorCode, Result};
pub use exec::moe_scratch;
#[cfg(feature = "std")]
pub use mapped::{
    AlignedArena, Load, MappedModel, MmapPrefetch, PrefetchHints, PrefetchReader, PrefetchStats,
    ReadAt,
};
pub use meter::{wrapping_delta, CallbackClock, CallbackMeter, Clock, EnergyMeter, MeterError};
pub use model::{BlobView, ExpertTensors, Model, PathEntry, TaskInfo, TensorView, MAX_CHAIN};
pub use plan::{Plan, PlanStorage};
pub use residency::{
    cache_footprint, BlobSource, CacheStats, Prefetch, ResidencyCache, CACHE_ALIGN, MAX_SLOTS,
};
pub use session::{RunStats, Session, SessionOptions};
pub use taskpath_cpu::qmatvec::Kernels;
pub use taskpath_format as format;
pub use taskpath_format::WeightFormat;
pub use trace::{NoTrace, Tracer};
