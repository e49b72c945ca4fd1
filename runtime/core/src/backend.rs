//! Execution backends: one small trait every target implements, after
//! ExecuTorch's four-verb backend interface (`is_available`, `init`,
//! `execute`, `destroy`).
//!
//! A backend is a long-lived, shareable object (a kernel table, a GPU context
//! with its compiled kernels); [`Backend::init`] prepares one task of one
//! model and returns a *handle* holding every per-task state (plans, device
//! buffers, caches); [`Backend::execute`] runs the task through the handle.
//! Dropping the handle is ExecuTorch's `destroy`. The trait is `no_std` and
//! allocation-free itself, so firmware can implement it.
//!
//! The CPU path ([`CpuBackend`]) is the reference every other backend is
//! checked against: it is a thin wrapper over [`Session`].

use core::fmt;

use crate::error::Error;
use crate::model::Model;
use crate::session::{RunStats, Session, SessionOptions};

/// An execution target for a model's tasks.
pub trait Backend {
    /// The backend's error; every runtime error converts into it.
    type Error: From<Error> + fmt::Debug + fmt::Display;
    /// Per-task state returned by [`Backend::init`]. Dropping it releases
    /// what `init` acquired.
    type Handle<'m>
    where
        Self: 'm;

    /// Short name (`"cpu"`, `"cuda"`), as the CLI's `--target` spells it.
    fn name(&self) -> &'static str;

    /// `Ok` when the backend can run here; otherwise the reason it cannot
    /// (no driver, no device, a missing CPU feature), worded for a user.
    fn is_available(&self) -> Result<(), Self::Error>;

    /// Prepares task `task` (global index) of `model`. `arena` is a host
    /// buffer of at least the task's [`crate::TaskInfo::arena_bytes`]: the CPU
    /// backend runs in it; a device backend uses it to validate the task's
    /// program on the host and may keep it as staging memory.
    fn init<'m>(
        &'m self,
        model: &'m Model<'m>,
        task: usize,
        arena: &'m mut [u8],
    ) -> Result<Self::Handle<'m>, Self::Error>;

    /// Runs the prepared task: `inputs` holds one `[tokens * features]`
    /// slice per task modality in model order; `outputs` receives the logits.
    fn execute(
        &self,
        handle: &mut Self::Handle<'_>,
        inputs: &[&[f32]],
        outputs: &mut [f32],
    ) -> Result<RunStats, Self::Error>;
}

/// The CPU backend: a [`Session`] per task, with the best kernels for this
/// CPU (or the options given).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend {
    /// Options of every session it creates.
    pub options: SessionOptions,
}

impl CpuBackend {
    /// A CPU backend whose sessions use `options`.
    pub fn with_options(options: SessionOptions) -> Self {
        Self { options }
    }
}

impl Backend for CpuBackend {
    type Error = Error;
    type Handle<'m> = Session<'m, 'm>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn is_available(&self) -> Result<(), Error> {
        Ok(())
    }

    fn init<'m>(
        &'m self,
        model: &'m Model<'m>,
        task: usize,
        arena: &'m mut [u8],
    ) -> Result<Session<'m, 'm>, Error> {
        Session::with_options(model, task, arena, self.options)
    }

    fn execute(
        &self,
        handle: &mut Session<'_, '_>,
        inputs: &[&[f32]],
        outputs: &mut [f32],
    ) -> Result<RunStats, Error> {
        handle.run(inputs, outputs)
    }
}
