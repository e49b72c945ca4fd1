//! NPU delegation for Taskpath (docs/NPU.md).
//!
//! - [`SegmentPlan`] splits a task's plan into delegable segments — per
//!   modality trunk and router, one graph per expert component on the task's
//!   path, the head — and CPU glue (top-k routing, gate-weighted expert sums).
//! - [`NpuBackend`] is the NPU as a runtime `Backend` (the one interface
//!   callers use): its `execute` is segment delegation. Underneath,
//!   [`Delegate`] is the plug-in interface a vendor NPU implements
//!   (availability, compile a segment's payload, execute), and [`Executor`]
//!   runs a whole task through one, falling back to the runtime's CPU
//!   primitives for what it declines; with [`CpuOnly`] its outputs are
//!   bit-identical to `taskpath_runtime::Session`.
//! - [`export`] writes each segment as a standalone static-shape ONNX graph
//!   (opset [`OPSET`], f32 or int8 weight QDQ) with a hand-written protobuf
//!   encoder, plus a manifest mapping graphs to the package's blobs.
//! - With the `tract` feature, [`tract::TractDelegate`] runs those graphs
//!   with tract-onnx: the reference delegate that proves the path end to end.
#![warn(missing_docs)]

mod backend;
mod delegate;
mod error;
pub mod export;
mod plan;
pub mod proto;
#[cfg(feature = "tract")]
pub mod tract;

pub use backend::NpuBackend;
pub use delegate::{is_expert, window, CpuOnly, Delegate, ExecStats, Executor, Observer};
pub use error::{Error, Result};
pub use export::{
    export_task, manifest, segment_graph, whole_graph, whole_name, Graph, Precision, F32_REL_BOUND,
    INT8_BODY_REL_BOUND, INT8_REL_BOUND, OPSET,
};
pub use plan::{OpInfo, Port, Segment, SegmentKind, SegmentPlan, Source, Step};

/// `max|a - b| / max|b|` (0 when both are all zero): the relative error the
/// export bounds are stated in.
pub fn rel_error(a: &[f32], b: &[f32]) -> f32 {
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let scale = b.iter().fold(0f32, |m, y| m.max(y.abs()));
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| (x - y).is_nan()) {
        return f32::INFINITY;
    }
    if scale == 0.0 {
        if diff == 0.0 {
            0.0
        } else {
            f32::INFINITY
        }
    } else {
        diff / scale
    }
}
