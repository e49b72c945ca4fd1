//! Taskpath CPU target: the numeric kernels the runtime calls.
//!
//! This crate knows nothing of graphs, packages or models: every kernel takes
//! plain row-major slices whose shapes the caller has already checked (kernels
//! only `debug_assert!` them) and writes into caller-owned buffers. It is
//! `#![no_std]` and never allocates; scratch space is passed in.
//!
//! Layout, one module per element type and family:
//!
//! - [`f32`](mod@f32): the portable f32 reference kernels. They are written so that
//!   LLVM auto-vectorises the hot loops, and they are the ground truth that
//!   later SIMD / lookup-table kernels (separate modules) are tested against.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod f32;
