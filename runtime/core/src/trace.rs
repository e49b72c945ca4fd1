//! Observation hooks. The default [`NoTrace`] compiles to nothing: `run` is
//! generic over the tracer, so an untraced run carries no branches for it.
//!
//! Time is not part of the events: a tracer that wants timestamps reads its
//! own [`crate::Clock`] in the hooks, so firmware can use a cycle counter and
//! a host build `Instant`, and an untraced run never reads a clock.

use taskpath_format::Op;

/// Receives events from a running session. Every method has an empty default,
/// so new hooks can be added without breaking implementors.
pub trait Tracer {
    /// Op `index` (within the task's program) is about to run.
    #[inline(always)]
    fn op_begin(&mut self, _index: u32, _op: &Op) {}
    /// Op `index` finished.
    #[inline(always)]
    fn op_end(&mut self, _index: u32, _op: &Op) {}
    /// `bytes` of weights were read from blob `blob` (global index).
    #[inline(always)]
    fn blob_read(&mut self, _blob: u32, _bytes: usize) {}
    /// An expert component's blob (global index) is fetched for evaluation:
    /// one event per (selected expert, component), in execution order. The
    /// component's work lasts until the next `expert_fetch` or `op_end`.
    #[inline(always)]
    fn expert_fetch(&mut self, _blob: u32) {}
    /// Router `router` of the task (FLAME: the modality index) picked
    /// `experts` with `gates`.
    #[inline(always)]
    fn route(&mut self, _router: u32, _experts: &[u32], _gates: &[f32]) {}
    /// Whether the tracer wants events that cost work to produce even when
    /// ignored (today: [`Tracer::cache_access`], which asks the blob source
    /// whether a blob is resident). [`NoTrace`] says no, so an untraced run
    /// skips that query; the default says yes.
    #[inline(always)]
    fn wants_costly_events(&self) -> bool {
        true
    }
    /// A session with a blob source (e.g. a [`crate::ResidencyCache`]) is
    /// about to fetch expert blob `blob`; `hit` says whether it was already
    /// resident. Only sent when [`Tracer::wants_costly_events`] and the
    /// source can tell ([`crate::BlobSource::holds`]).
    #[inline(always)]
    fn cache_access(&mut self, _blob: u32, _hit: bool) {}
    /// Speculative prefetch ([`crate::Session::with_prefetch_topk`]) predicts
    /// that the next MoE layer of this step will fetch expert blob `blob`;
    /// `hinted` says whether the prefetch hook was asked for it (false: the
    /// blob source already holds it). Sent before that layer runs, so a
    /// tracer can score the prediction against its `expert_fetch` events.
    #[inline(always)]
    fn expert_predicted(&mut self, _blob: u32, _hinted: bool) {}
}

/// The tracer that records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrace;
impl Tracer for NoTrace {
    #[inline(always)]
    fn wants_costly_events(&self) -> bool {
        false
    }
}

impl<T: Tracer + ?Sized> Tracer for &mut T {
    #[inline(always)]
    fn op_begin(&mut self, index: u32, op: &Op) {
        (**self).op_begin(index, op);
    }
    #[inline(always)]
    fn op_end(&mut self, index: u32, op: &Op) {
        (**self).op_end(index, op);
    }
    #[inline(always)]
    fn blob_read(&mut self, blob: u32, bytes: usize) {
        (**self).blob_read(blob, bytes);
    }
    #[inline(always)]
    fn expert_fetch(&mut self, blob: u32) {
        (**self).expert_fetch(blob);
    }
    #[inline(always)]
    fn route(&mut self, router: u32, experts: &[u32], gates: &[f32]) {
        (**self).route(router, experts, gates);
    }
    #[inline(always)]
    fn wants_costly_events(&self) -> bool {
        (**self).wants_costly_events()
    }
    #[inline(always)]
    fn cache_access(&mut self, blob: u32, hit: bool) {
        (**self).cache_access(blob, hit);
    }
    #[inline(always)]
    fn expert_predicted(&mut self, blob: u32, hinted: bool) {
        (**self).expert_predicted(blob, hinted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Count(u32);
    impl Tracer for Count {
        fn op_begin(&mut self, _: u32, _: &Op) {
            self.0 += 1;
        }
    }

    #[test]
    fn forwarding_through_references_and_trait_objects_reaches_the_tracer() {
        let mut c = Count::default();
        {
            let mut r: &mut dyn Tracer = &mut c;
            let op = Op::Copy {
                src: taskpath_format::SlotId(0),
                src_offset: 0,
                dst: taskpath_format::SlotId(1),
                dst_offset: 0,
                len: 1,
            };
            (&mut r).op_begin(0, &op);
            r.op_begin(1, &op);
            assert!(r.wants_costly_events());
        }
        assert_eq!(c.0, 2);
        assert!(!NoTrace.wants_costly_events());
    }
}
