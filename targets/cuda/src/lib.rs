//! CUDA backend (cudarc, NVRTC) for Jetson and desktop GPUs.
//!
//! [`CudaBackend`] implements the runtime's [`taskpath_runtime::Backend`]:
//! it builds the task's plan with the runtime, then runs the plan's steps
//! through the runtime's one definition of every op
//! ([`taskpath_runtime::exec::run_step`]) with device primitives — kernel
//! launches over a device copy of the slots region — for every weight
//! format (f32, f16, i8row and the int4/int2 LUT formats). Kernels are CUDA C ([`kernels::SOURCE`]) compiled
//! by NVRTC at first use and cached per process; cudarc loads libcuda and
//! libnvrtc dynamically, so this crate builds and its host tests run on
//! machines without CUDA, where the backend reports itself unavailable.
//!
//! Weights: on an integrated GPU (Jetson, unified memory) the package pages
//! are registered with the driver and read in place ([`Residency::Mapped`]);
//! on a discrete GPU trunks, routers and heads are uploaded once and expert
//! blobs go through a budgeted device cache with the CPU `ResidencyCache`'s
//! LRU + pin policy ([`SlotCache`]), uploaded on a second stream that runs
//! ahead of the compute stream.
//!
//! Numerics: see `src/kernels.cu`; outputs match the CPU path within 1e-4
//! (the device check in `scripts/cuda-device-check.sh` measures it).

mod cache;
mod device;
pub mod emu;
mod error;
pub mod geometry;
pub mod kernels;
pub mod weights;

pub use cache::{Lookup, SlotCache};
pub use device::{CudaBackend, CudaOptions, CudaTask, DeviceInfo, Residency};
pub use error::{CudaError, Result};
