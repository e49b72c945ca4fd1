//! The NPU as a runtime [`Backend`]: segment delegation is how it executes.
//!
//! `init` plans the task's segments, exports each as an ONNX graph
//! ([`crate::export::segment_graph`]) and offers it to the delegate; the
//! handle is an [`Executor`] that runs delegated segments on the NPU and the
//! rest — with all glue — through the runtime's CPU primitives. Callers (the
//! CLI's `--target npu`) see only the runtime's four verbs.

use taskpath_runtime::{Backend, Model, RunStats};

use crate::delegate::{Delegate, Executor};
use crate::error::Error;
use crate::export::{segment_graph, Precision};
use crate::plan::SegmentPlan;

/// The NPU backend over delegate `D` (cloned per task).
#[derive(Clone, Debug)]
pub struct NpuBackend<D> {
    delegate: D,
    precision: Precision,
}

impl<D: Delegate + Clone> NpuBackend<D> {
    /// A backend offering `precision` graphs to `delegate`.
    pub fn new(delegate: D, precision: Precision) -> Self {
        Self {
            delegate,
            precision,
        }
    }
}

impl<D: Delegate + Clone> Backend for NpuBackend<D> {
    type Error = Error;
    type Handle<'m>
        = Executor<'m, 'm, D>
    where
        Self: 'm;

    fn name(&self) -> &'static str {
        "npu"
    }

    fn is_available(&self) -> Result<(), Error> {
        self.delegate.is_available().map_err(|why| Error::Delegate {
            delegate: self.delegate.name().to_string(),
            segment: "-".into(),
            why,
        })
    }

    fn init<'m>(
        &'m self,
        model: &'m Model<'m>,
        task: usize,
        _arena: &'m mut [u8],
    ) -> Result<Executor<'m, 'm, D>, Error> {
        let plan = SegmentPlan::new(model, task)?;
        let precision = self.precision;
        Executor::new(model, task, self.delegate.clone(), |seg| {
            let si = plan
                .segments
                .iter()
                .position(|s| s.name == seg.name)
                .ok_or_else(|| Error::Program {
                    op: 0,
                    why: format!("segment {} is not in the task's plan", seg.name),
                })?;
            Ok(Some(segment_graph(model, &plan, si, precision)?.bytes))
        })
    }

    fn execute(
        &self,
        handle: &mut Executor<'_, '_, D>,
        inputs: &[&[f32]],
        outputs: &mut [f32],
    ) -> Result<RunStats, Error> {
        let st = handle.run(inputs, outputs)?;
        Ok(RunStats {
            ops: (st.delegated + st.cpu) as u32,
            ..RunStats::default()
        })
    }
}
