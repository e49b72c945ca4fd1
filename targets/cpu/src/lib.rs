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
//! - [`quant`]: packed weight formats (f32, f16, int8 per row, int4/int2
//!   group-wise): ids, byte layouts, quantisation and the dequantisation
//!   oracle, defined by the package format (`taskpath_format::weight`).
//! - [`qmatvec`]: matrix-vector kernels over packed weights behind one trait,
//!   a generic reference per format plus AVX2 (x86-64) and NEON (aarch64)
//!   kernels, chosen at run time through the [`qmatvec::Kernels`] table.
//! - `gemm` (feature `gemm`): register-blocked small-M f32 GEMM kernels for
//!   the dense f32 linear layers (generic, AVX2, AVX-512F, NEON), bit-identical
//!   to [`f32::matmul_rows`], chosen through the same table
//!   ([`qmatvec::Kernels::matmul_f32`]).
//! - `gelu` (feature `gelu`): the exact GELU vectorised (AVX2, AVX-512F,
//!   NEON), bit-identical to [`f32::gelu`], chosen through the same table
//!   ([`qmatvec::Kernels::gelu_f32`]).
//!
//! Features: `std` (off by default) enables run-time CPU feature detection and
//! the `TASKPATH_FORCE_GENERIC` environment variable; without it kernels are
//! chosen from the compile-time target features. `unsafe` code lives only in
//! the architecture modules (`qmatvec::x86_64`, `qmatvec::aarch64`,
//! `gemm::x86_64`, `gemm::aarch64`, `gelu::x86_64`, `gelu::aarch64`).
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub mod f32;
#[cfg(feature = "gelu")]
pub mod gelu;
#[cfg(feature = "gemm")]
pub mod gemm;
pub mod qmatvec;
/// The weight formats the kernels run: ids, byte layouts and quantisation
/// are the package format's (`taskpath_format::weight`).
pub use taskpath_format::weight as quant;
