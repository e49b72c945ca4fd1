//! Cross-crate tests and test oracles for Taskpath.
//!
//! [`reference`] is an independent, deliberately naive scalar implementation of
//! the model equations in `docs/CHECKPOINT.md`, used to check the runtime.

pub mod reference;

pub use reference::{erf, forward, gelu, RefOutput, RefRoute};

/// The larger of two errors, NaN if either is: `f64::max` drops a NaN, so
/// a comparison helper folding with it would report a NaN output as
/// agreeing with its oracle.
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}
