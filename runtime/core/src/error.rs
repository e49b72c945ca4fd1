//! Runtime errors: one enum, grouped by code range as in ExecuTorch's `Error`.

use core::fmt;

use taskpath_format::FormatError;

/// Numeric error codes, stable across versions (the C ABI returns them).
/// Ranges: `0x1_` caller arguments, `0x2_` resources, `0x3_` package/format,
/// `0x4_` kernels/targets.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A task name or index that the model does not have.
    UnknownTask = 0x10,
    /// Wrong number of inputs.
    InputCount = 0x11,
    /// An input of the wrong length.
    InputShape = 0x12,
    /// An output buffer of the wrong length.
    OutputShape = 0x13,
    /// A token id beyond the model's vocabulary.
    TokenOutOfRange = 0x14,
    /// More tokens than the session's context holds.
    ContextFull = 0x15,
    /// `run` on a token-stream task, or `step` on a fixed-shape one.
    TaskKind = 0x16,
    /// A required public key that is not a valid ed25519 key.
    InvalidKey = 0x17,
    /// The arena is smaller than the task's plan.
    ArenaTooSmall = 0x20,
    /// The arena is not aligned for f32.
    ArenaMisaligned = 0x21,
    /// An expert budget too small for one expert blob (or, for a language
    /// model, for one token's active experts of a layer).
    BudgetTooSmall = 0x22,
    /// The package is malformed.
    Format = 0x30,
    /// A task's op program or memory plan is inconsistent.
    InvalidProgram = 0x31,
    /// A delta pack does not fit the chain it is added to.
    DeltaMismatch = 0x32,
    /// Too many packages in one chain.
    ChainTooLong = 0x33,
    /// A key was required and the package carries no signature.
    Unsigned = 0x34,
    /// The package is signed by another key than the one required.
    KeyMismatch = 0x35,
    /// The signature does not verify: the package changed after signing.
    BadSignature = 0x36,
    /// An I/O error opening or mapping a file (std only).
    Io = 0x40,
    /// A weight format this build or this CPU cannot run.
    UnsupportedFormat = 0x41,
    /// An op this build leaves out (a cargo feature it was built without).
    UnsupportedOp = 0x42,
}

/// A runtime error; `Display` says what is wrong in one sentence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error {
    /// No task with that name or index.
    UnknownTask,
    /// `inputs.len()` differs from the task's modality count.
    InputCount {
        /// Modalities the task takes.
        expected: usize,
        /// Inputs given.
        got: usize,
    },
    /// Input `index` has the wrong number of values.
    InputShape {
        /// Which input (position among the task's modalities).
        index: usize,
        /// tokens * features.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The output buffer has the wrong length.
    OutputShape {
        /// The task's output count.
        expected: usize,
        /// Buffer length given.
        got: usize,
    },
    /// A token id the vocabulary does not have.
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The tokens do not fit the session's context (or one run's capacity).
    ContextFull {
        /// Positions the tokens need (or tokens given).
        need: usize,
        /// Positions the context holds (or tokens a run takes).
        context: usize,
    },
    /// The call does not fit the task's kind.
    TaskKind {
        /// What to call instead.
        why: &'static str,
    },
    /// The arena is too small for the task.
    ArenaTooSmall {
        /// Bytes the task's plan needs.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The arena does not start on a 4-byte boundary (16 for a cache).
    ArenaMisaligned,
    /// A residency budget that cannot hold what it must.
    BudgetTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The package is malformed.
    Format(FormatError),
    /// Op `op` of the task's program is inconsistent with the package.
    InvalidProgram {
        /// Index of the op within the task's program.
        op: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// A delta pack does not extend the package chain before it.
    DeltaMismatch {
        /// What does not match.
        why: &'static str,
    },
    /// More packages than [`crate::MAX_CHAIN`].
    ChainTooLong,
    /// A required public key that is not a valid ed25519 key. (The four
    /// signature errors exist only with the `signing` feature, which alone
    /// can produce them: the f32-only firmware keeps their text out of flash.)
    #[cfg(feature = "signing")]
    InvalidKey,
    /// A key was required and the package has no signature record.
    #[cfg(feature = "signing")]
    Unsigned,
    /// The package is signed by another key than the one required.
    #[cfg(feature = "signing")]
    KeyMismatch {
        /// The first 8 bytes of the key its signature record names.
        found: [u8; 8],
    },
    /// The signature names the required key but does not verify over the
    /// package bytes: they changed after signing (even with every checksum
    /// re-sealed), or the signature is forged.
    #[cfg(feature = "signing")]
    BadSignature,
    /// An I/O error (std only): what was being done.
    Io(&'static str),
    /// A weight format with no kernel here.
    UnsupportedFormat {
        /// The format id.
        format: u16,
        /// Its name, or "unknown".
        name: &'static str,
        /// The CPU feature the kernel needs and this CPU lacks, or why else.
        missing: &'static str,
    },
    /// An op this build was compiled without.
    UnsupportedOp {
        /// Index of the op within the task's program.
        op: u32,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
}

impl Error {
    /// The error with an op-program fault attributed to op `at` (the
    /// primitives report faults without knowing which op they run).
    #[must_use]
    pub fn at_op(self, at: u32) -> Self {
        match self {
            Self::InvalidProgram { why, .. } => Self::InvalidProgram { op: at, why },
            e => e,
        }
    }

    /// The stable numeric code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownTask => ErrorCode::UnknownTask,
            Self::InputCount { .. } => ErrorCode::InputCount,
            Self::InputShape { .. } => ErrorCode::InputShape,
            Self::OutputShape { .. } => ErrorCode::OutputShape,
            Self::TokenOutOfRange { .. } => ErrorCode::TokenOutOfRange,
            Self::ContextFull { .. } => ErrorCode::ContextFull,
            Self::TaskKind { .. } => ErrorCode::TaskKind,
            Self::ArenaTooSmall { .. } => ErrorCode::ArenaTooSmall,
            Self::ArenaMisaligned => ErrorCode::ArenaMisaligned,
            Self::BudgetTooSmall { .. } => ErrorCode::BudgetTooSmall,
            Self::Format(_) => ErrorCode::Format,
            Self::InvalidProgram { .. } => ErrorCode::InvalidProgram,
            Self::DeltaMismatch { .. } => ErrorCode::DeltaMismatch,
            Self::ChainTooLong => ErrorCode::ChainTooLong,
            #[cfg(feature = "signing")]
            Self::InvalidKey => ErrorCode::InvalidKey,
            #[cfg(feature = "signing")]
            Self::Unsigned => ErrorCode::Unsigned,
            #[cfg(feature = "signing")]
            Self::KeyMismatch { .. } => ErrorCode::KeyMismatch,
            #[cfg(feature = "signing")]
            Self::BadSignature => ErrorCode::BadSignature,
            Self::Io(_) => ErrorCode::Io,
            Self::UnsupportedFormat { .. } => ErrorCode::UnsupportedFormat,
            Self::UnsupportedOp { .. } => ErrorCode::UnsupportedOp,
        }
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

#[cfg(feature = "signing")]
impl From<taskpath_format::signature::SignatureError> for Error {
    fn from(e: taskpath_format::signature::SignatureError) -> Self {
        use taskpath_format::signature::SignatureError as S;
        match e {
            S::Unsigned => Self::Unsigned,
            S::KeyMismatch { found } => {
                let mut f = [0u8; 8];
                f.copy_from_slice(&found[..8]);
                Self::KeyMismatch { found: f }
            }
            S::BadSignature => Self::BadSignature,
            S::InvalidKey => Self::InvalidKey,
            S::Format(e) => Self::Format(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownTask => f.write_str("unknown task"),
            Self::InputCount { expected, got } => {
                write!(f, "wrong number of inputs: the task takes {expected} modalities, got {got}")
            }
            Self::InputShape { index, expected, got } => write!(
                f,
                "wrong input shape: input {index} needs {expected} values (tokens x features), got {got}"
            ),
            Self::OutputShape { expected, got } => {
                write!(f, "wrong output shape: the task has {expected} outputs, buffer holds {got}")
            }
            Self::TokenOutOfRange { token, vocab } => {
                write!(f, "token id {token} is beyond the vocabulary of {vocab}")
            }
            Self::ContextFull { need, context } => write!(
                f,
                "the tokens need {need} positions but the context holds {context}"
            ),
            Self::TaskKind { why } => write!(f, "wrong call for this task: {why}"),
            Self::ArenaTooSmall { need, have } => {
                write!(f, "arena too small: the task needs {need} bytes, got {have}")
            }
            Self::ArenaMisaligned => f.write_str("arena must start on a 4-byte boundary"),
            Self::BudgetTooSmall { need, have } => write!(
                f,
                "expert budget too small: needs at least {need} bytes (an expert blob, or a language model layer's top-k experts of one token), got {have}"
            ),
            Self::Format(e) => write!(f, "corrupt package: {e}"),
            Self::InvalidProgram { op, why } => write!(f, "invalid op program at op {op}: {why}"),
            Self::DeltaMismatch { why } => write!(f, "delta pack does not match its base: {why}"),
            Self::ChainTooLong => write!(f, "too many packages in one chain (max {})", crate::MAX_CHAIN),
            #[cfg(feature = "signing")]
            Self::InvalidKey => f.write_str("the public key given is not a valid ed25519 key"),
            #[cfg(feature = "signing")]
            Self::Unsigned => f.write_str(
                "unsigned package: a signature by the required key is needed, and the package has none",
            ),
            #[cfg(feature = "signing")]
            Self::KeyMismatch { found } => {
                f.write_str("the package is signed by another key (fingerprint ")?;
                for b in found {
                    write!(f, "{b:02x}")?;
                }
                f.write_str(") than the one required")
            }
            #[cfg(feature = "signing")]
            Self::BadSignature => f.write_str(
                "bad signature: the package was modified after it was signed (or the signature is forged)",
            ),
            Self::Io(what) => write!(f, "I/O error: {what}"),
            Self::UnsupportedFormat { format, name, missing } => write!(
                f,
                "weight format {name} (id {format}) cannot run here: {missing}"
            ),
            Self::UnsupportedOp { op, feature } => write!(
                f,
                "op {op} cannot run in this build: it was compiled without the `{feature}` feature"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Result with [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
