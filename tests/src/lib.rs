//! Cross-crate tests and test oracles for Taskpath.
//!
//! [`reference`] is an independent, deliberately naive scalar implementation of
//! the model equations in `docs/CHECKPOINT.md`, used to check the runtime.

pub mod reference;

pub use reference::{erf, forward, gelu, RefOutput, RefRoute};
