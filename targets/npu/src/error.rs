//! Errors of the NPU crate: each names what is wrong and where.

use std::fmt;

/// An error of planning, export or delegated execution.
#[derive(Debug)]
pub enum Error {
    /// From the runtime (unknown task, invalid package, ...).
    Runtime(taskpath_runtime::Error),
    /// The task's op program does not have the shape the segmenter knows.
    Program {
        /// Task-local op index.
        op: u32,
        /// What is wrong.
        why: String,
    },
    /// A weight the exporter cannot turn into an ONNX initializer.
    Export {
        /// Graph being written.
        graph: String,
        /// What is wrong.
        why: String,
    },
    /// Inputs or outputs of the wrong count or length.
    Shape {
        /// Which segment or task.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// A delegate failed to compile or execute a segment.
    Delegate {
        /// Delegate name.
        delegate: String,
        /// Segment name.
        segment: String,
        /// Its message.
        why: String,
    },
    /// A malformed export directory or manifest.
    Manifest(String),
    /// File I/O.
    Io(std::io::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Runtime(e) => write!(f, "{e}"),
            Error::Program { op, why } => write!(f, "op {op}: {why}"),
            Error::Export { graph, why } => write!(f, "exporting {graph}: {why}"),
            Error::Shape { what, why } => write!(f, "{what}: {why}"),
            Error::Delegate {
                delegate,
                segment,
                why,
            } => write!(f, "delegate {delegate} on {segment}: {why}"),
            Error::Manifest(why) => write!(f, "manifest: {why}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<taskpath_runtime::Error> for Error {
    fn from(e: taskpath_runtime::Error) -> Self {
        Error::Runtime(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}
