//! Errors of the CUDA backend.

use std::fmt;

/// What went wrong on the CUDA path; `Display` says it in one sentence.
#[derive(Debug)]
#[non_exhaustive]
pub enum CudaError {
    /// The backend cannot run here (no driver, no device, no NVRTC and no PTX).
    Unavailable(String),
    /// A runtime error (bad inputs, an inconsistent package, a budget too small).
    Runtime(taskpath_runtime::Error),
    /// A CUDA driver call failed.
    Driver {
        /// The call, in words.
        what: &'static str,
        /// The driver's error name.
        error: String,
    },
    /// The kernels did not compile (NVRTC's log attached).
    Compile(String),
    /// A weight format this backend has no kernel for.
    UnsupportedFormat(String),
    /// The device expert cache cannot serve the task.
    Budget(String),
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "CUDA is not available: {why}"),
            Self::Runtime(e) => write!(f, "{e}"),
            Self::Driver { what, error } => write!(f, "CUDA driver call failed ({what}): {error}"),
            Self::Compile(log) => write!(f, "CUDA kernels did not compile: {log}"),
            Self::UnsupportedFormat(why) => write!(f, "{why}"),
            Self::Budget(why) => write!(f, "device expert cache: {why}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<taskpath_runtime::Error> for CudaError {
    fn from(e: taskpath_runtime::Error) -> Self {
        Self::Runtime(e)
    }
}

/// Attaches the call's name to a driver error.
pub(crate) fn drv(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        what,
        error: e
            .error_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{e:?}")),
    }
}

/// Result with [`CudaError`].
pub type Result<T> = std::result::Result<T, CudaError>;
