//! Observation hooks. The default [`NoTrace`] compiles to nothing: `run` is
//! generic over the tracer, so an untraced run carries no branches for it.

use taskpath_format::Opcode;

/// Receives events from a running session. Every method has an empty default.
pub trait Tracer {
    /// Op `index` (within the task's program) is about to run.
    #[inline(always)]
    fn op_begin(&mut self, _index: u32, _op: Opcode) {}
    /// Op `index` finished.
    #[inline(always)]
    fn op_end(&mut self, _index: u32, _op: Opcode) {}
    /// `bytes` of weights were read from blob `blob` (global index).
    #[inline(always)]
    fn blob_read(&mut self, _blob: u32, _bytes: usize) {}
    /// An expert component's blob (global index) is fetched for evaluation:
    /// one event per (selected expert, component), in execution order.
    #[inline(always)]
    fn expert_fetch(&mut self, _blob: u32) {}
    /// The router of `modality` picked `experts` with `gates`.
    #[inline(always)]
    fn route(&mut self, _modality: u32, _experts: &[u32], _gates: &[f32]) {}
}

/// The tracer that records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrace;
impl Tracer for NoTrace {}
