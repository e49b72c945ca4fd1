//! Status codes and the thread-local last-error message.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use taskpath_runtime::{Error, ErrorCode};

/// The status every `tp_*` function returns: `TP_OK` (0) or an error code.
///
/// Codes are grouped by range as in ExecuTorch's `Error`: `0x0_` system,
/// `0x1_` caller arguments, `0x2_` memory and resources, `0x3_` package and
/// op program, `0x4_` I/O and kernels. The values `0x10..=0x1A`,
/// `0x20..=0x2B`, `0x30..=0x3F` and `0x40..=0x4F` are the runtime's own error
/// codes (`taskpath_runtime::ErrorCode`), passed through unchanged; the C
/// ABI's own codes sit at the top of each range and in `0x0_`. Values are never renumbered or
/// reused; new ones are appended. Use `tp_status_name` for a code's name and
/// `tp_last_error` for what exactly went wrong.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum tp_status {
    /// Success.
    TP_OK = 0,
    /// A Rust panic was caught at the C boundary (a bug in Taskpath: please
    /// report it with the `tp_last_error` text). Output parameters are left
    /// as documented for failures; a session that panicked in `tp_session_run`
    /// may be run again or destroyed. Builds with `panic = "abort"` abort the
    /// process instead: no unwinding ever crosses the boundary.
    TP_ERR_PANIC = 0x01,
    /// A runtime error that this version of the C ABI has no code for yet
    /// (a newer runtime); `tp_last_error` says what it is.
    TP_ERR_RUNTIME = 0x02,
    /// No task with that index or name.
    TP_ERR_UNKNOWN_TASK = 0x10,
    /// `n_inputs` differs from the task's modality count.
    TP_ERR_INPUT_COUNT = 0x11,
    /// An input has the wrong length (runtime check; the C ABI takes lengths
    /// from the task, so it is only seen through a corrupt program).
    TP_ERR_INPUT_SHAPE = 0x12,
    /// `n_outputs` differs from the task's output count.
    TP_ERR_OUTPUT_SHAPE = 0x13,
    /// A token id at or beyond the model's vocabulary.
    TP_ERR_TOKEN_OUT_OF_RANGE = 0x14,
    /// A step's tokens do not fit: more than the task's chunk, or past the
    /// context its KV cache holds (`tp_session_reset` starts over).
    TP_ERR_CONTEXT_FULL = 0x15,
    /// The call does not fit the task's kind (`tp_session_step` on a
    /// fixed-shape task, `tp_session_run` on a language-model task).
    TP_ERR_TASK_KIND = 0x16,
    /// The public key given to `tp_model_open_verified` (or
    /// `tp_model_open_file_verified`) is not a valid ed25519 public key.
    TP_ERR_INVALID_KEY = 0x17,
    /// An input value is NaN or infinite, or the task computed one for an
    /// output (`tp_last_error` names which): the outputs of that call are
    /// not to be used.
    TP_ERR_NON_FINITE = 0x1B,
    /// A pointer argument that must not be NULL is NULL.
    TP_ERR_NULL_ARGUMENT = 0x1C,
    /// A struct's `struct_size` is not a size this library knows.
    TP_ERR_STRUCT_SIZE = 0x1D,
    /// An argument's value is invalid: unknown flag bits, a name that is not
    /// UTF-8, a misaligned `float` pointer, options that do not fit the call.
    TP_ERR_INVALID_ARGUMENT = 0x1E,
    /// A handle that is not a live `tp_model` / `tp_session` (already
    /// destroyed, or not a handle at all). Best effort: a dangling pointer to
    /// freed memory is undefined behaviour and may not be caught.
    TP_ERR_INVALID_HANDLE = 0x1F,
    /// The session memory is smaller than `tp_session_arena_size` says.
    TP_ERR_ARENA_TOO_SMALL = 0x20,
    /// The session memory does not start on a `TP_ARENA_ALIGN`-byte boundary.
    TP_ERR_ARENA_MISALIGNED = 0x21,
    /// An expert-cache budget too small for one of the task's expert blobs.
    TP_ERR_BUDGET_TOO_SMALL = 0x22,
    /// Package bytes given to `tp_model_open_memory` do not start on a
    /// `TP_PACKAGE_ALIGN`-byte boundary (and `TP_MODEL_COPY` was not set).
    TP_ERR_PACKAGE_MISALIGNED = 0x2C,
    /// A heap allocation failed (`TP_MODEL_COPY` copies, model handles).
    TP_ERR_OUT_OF_MEMORY = 0x2D,
    /// `tp_model_close` on a model that still has live sessions.
    TP_ERR_BUSY = 0x2E,
    /// The package is malformed: truncated, bad magic, bad checksum, a field
    /// out of range (the message names the field).
    TP_ERR_FORMAT = 0x30,
    /// A task's op program or memory plan is inconsistent with the package.
    TP_ERR_INVALID_PROGRAM = 0x31,
    /// A delta pack does not extend the chain it is added to.
    TP_ERR_DELTA_MISMATCH = 0x32,
    /// More packages in one chain than the runtime supports (8).
    TP_ERR_CHAIN_TOO_LONG = 0x33,
    /// A signature was required and the package (or a delta pack) has none.
    TP_ERR_UNSIGNED = 0x34,
    /// The package is signed by another key than the one required
    /// (`tp_last_error` names the signer's key fingerprint).
    TP_ERR_KEY_MISMATCH = 0x35,
    /// The signature does not verify over the package bytes: they were
    /// modified after signing (checksums re-sealed or not), or it is forged.
    TP_ERR_BAD_SIGNATURE = 0x36,
    /// A file could not be opened or memory-mapped.
    TP_ERR_IO = 0x40,
    /// A weight format this build or this CPU has no kernel for.
    TP_ERR_UNSUPPORTED_FORMAT = 0x41,
    /// An op this build of the runtime was compiled without (e.g. the
    /// decoder ops in a firmware build without the `decoder` feature).
    TP_ERR_UNSUPPORTED_OP = 0x42,
}

impl tp_status {
    /// Every status, in value order.
    pub fn all() -> &'static [tp_status] {
        &ALL_STATUSES
    }

    /// The status's name as a NUL-terminated C string.
    pub fn name(self) -> &'static [u8] {
        match self {
            Self::TP_OK => b"TP_OK\0",
            Self::TP_ERR_PANIC => b"TP_ERR_PANIC\0",
            Self::TP_ERR_RUNTIME => b"TP_ERR_RUNTIME\0",
            Self::TP_ERR_UNKNOWN_TASK => b"TP_ERR_UNKNOWN_TASK\0",
            Self::TP_ERR_INPUT_COUNT => b"TP_ERR_INPUT_COUNT\0",
            Self::TP_ERR_INPUT_SHAPE => b"TP_ERR_INPUT_SHAPE\0",
            Self::TP_ERR_OUTPUT_SHAPE => b"TP_ERR_OUTPUT_SHAPE\0",
            Self::TP_ERR_TOKEN_OUT_OF_RANGE => b"TP_ERR_TOKEN_OUT_OF_RANGE\0",
            Self::TP_ERR_CONTEXT_FULL => b"TP_ERR_CONTEXT_FULL\0",
            Self::TP_ERR_TASK_KIND => b"TP_ERR_TASK_KIND\0",
            Self::TP_ERR_INVALID_KEY => b"TP_ERR_INVALID_KEY\0",
            Self::TP_ERR_NON_FINITE => b"TP_ERR_NON_FINITE\0",
            Self::TP_ERR_NULL_ARGUMENT => b"TP_ERR_NULL_ARGUMENT\0",
            Self::TP_ERR_STRUCT_SIZE => b"TP_ERR_STRUCT_SIZE\0",
            Self::TP_ERR_INVALID_ARGUMENT => b"TP_ERR_INVALID_ARGUMENT\0",
            Self::TP_ERR_INVALID_HANDLE => b"TP_ERR_INVALID_HANDLE\0",
            Self::TP_ERR_ARENA_TOO_SMALL => b"TP_ERR_ARENA_TOO_SMALL\0",
            Self::TP_ERR_ARENA_MISALIGNED => b"TP_ERR_ARENA_MISALIGNED\0",
            Self::TP_ERR_BUDGET_TOO_SMALL => b"TP_ERR_BUDGET_TOO_SMALL\0",
            Self::TP_ERR_PACKAGE_MISALIGNED => b"TP_ERR_PACKAGE_MISALIGNED\0",
            Self::TP_ERR_OUT_OF_MEMORY => b"TP_ERR_OUT_OF_MEMORY\0",
            Self::TP_ERR_BUSY => b"TP_ERR_BUSY\0",
            Self::TP_ERR_FORMAT => b"TP_ERR_FORMAT\0",
            Self::TP_ERR_INVALID_PROGRAM => b"TP_ERR_INVALID_PROGRAM\0",
            Self::TP_ERR_DELTA_MISMATCH => b"TP_ERR_DELTA_MISMATCH\0",
            Self::TP_ERR_CHAIN_TOO_LONG => b"TP_ERR_CHAIN_TOO_LONG\0",
            Self::TP_ERR_UNSIGNED => b"TP_ERR_UNSIGNED\0",
            Self::TP_ERR_KEY_MISMATCH => b"TP_ERR_KEY_MISMATCH\0",
            Self::TP_ERR_BAD_SIGNATURE => b"TP_ERR_BAD_SIGNATURE\0",
            Self::TP_ERR_IO => b"TP_ERR_IO\0",
            Self::TP_ERR_UNSUPPORTED_FORMAT => b"TP_ERR_UNSUPPORTED_FORMAT\0",
            Self::TP_ERR_UNSUPPORTED_OP => b"TP_ERR_UNSUPPORTED_OP\0",
        }
    }
}

const ALL_STATUSES: [tp_status; 32] = [
    tp_status::TP_OK,
    tp_status::TP_ERR_PANIC,
    tp_status::TP_ERR_RUNTIME,
    tp_status::TP_ERR_UNKNOWN_TASK,
    tp_status::TP_ERR_INPUT_COUNT,
    tp_status::TP_ERR_INPUT_SHAPE,
    tp_status::TP_ERR_OUTPUT_SHAPE,
    tp_status::TP_ERR_TOKEN_OUT_OF_RANGE,
    tp_status::TP_ERR_CONTEXT_FULL,
    tp_status::TP_ERR_TASK_KIND,
    tp_status::TP_ERR_INVALID_KEY,
    tp_status::TP_ERR_NON_FINITE,
    tp_status::TP_ERR_NULL_ARGUMENT,
    tp_status::TP_ERR_STRUCT_SIZE,
    tp_status::TP_ERR_INVALID_ARGUMENT,
    tp_status::TP_ERR_INVALID_HANDLE,
    tp_status::TP_ERR_ARENA_TOO_SMALL,
    tp_status::TP_ERR_ARENA_MISALIGNED,
    tp_status::TP_ERR_BUDGET_TOO_SMALL,
    tp_status::TP_ERR_PACKAGE_MISALIGNED,
    tp_status::TP_ERR_OUT_OF_MEMORY,
    tp_status::TP_ERR_BUSY,
    tp_status::TP_ERR_FORMAT,
    tp_status::TP_ERR_INVALID_PROGRAM,
    tp_status::TP_ERR_DELTA_MISMATCH,
    tp_status::TP_ERR_CHAIN_TOO_LONG,
    tp_status::TP_ERR_UNSIGNED,
    tp_status::TP_ERR_KEY_MISMATCH,
    tp_status::TP_ERR_BAD_SIGNATURE,
    tp_status::TP_ERR_IO,
    tp_status::TP_ERR_UNSUPPORTED_FORMAT,
    tp_status::TP_ERR_UNSUPPORTED_OP,
];

impl From<ErrorCode> for tp_status {
    /// The status with the same value (the runtime's codes pass through
    /// unchanged), or `TP_ERR_RUNTIME` for a code newer than this C ABI.
    /// By value, not by variant name, so a new runtime code never breaks
    /// this crate's build; the tests pin every code known here.
    fn from(c: ErrorCode) -> Self {
        let v = c as u32;
        ALL_STATUSES
            .iter()
            .copied()
            .find(|s| *s as u32 == v && v != 0)
            .unwrap_or(Self::TP_ERR_RUNTIME)
    }
}

/// A failed call: its status and what went wrong (without the function name,
/// which [`guard`] prefixes).
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) status: tp_status,
    pub(crate) msg: String,
}

impl Fail {
    pub(crate) fn new(status: tp_status, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }

    pub(crate) fn null(arg: &str) -> Self {
        Self::new(
            tp_status::TP_ERR_NULL_ARGUMENT,
            format!("argument `{arg}` is NULL"),
        )
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::new(tp_status::TP_ERR_INVALID_ARGUMENT, msg)
    }

    /// A runtime error, with `context` (what was being done) after its text.
    pub(crate) fn runtime(e: Error, context: impl core::fmt::Display) -> Self {
        Self::new(e.code().into(), format!("{e} ({context})"))
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self::new(e.code().into(), e.to_string())
    }
}

pub(crate) type Res<T = ()> = Result<T, Fail>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: String) {
    let c = CString::new(msg).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|&b| b != 0);
        CString::new(bytes).unwrap_or_default()
    });
    // `try_with`: during thread teardown the slot may be gone; the status
    // code still reports the failure.
    let _ = LAST_ERROR.try_with(|l| *l.borrow_mut() = c);
}

fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|l| {
        let mut l = l.borrow_mut();
        if !l.as_bytes().is_empty() {
            *l = CString::default();
        }
    });
}

/// The calling thread's last-error text, as a pointer into its thread-local
/// buffer.
pub(crate) fn last_error_ptr() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    LAST_ERROR
        .try_with(|l| l.borrow().as_ptr())
        .unwrap_or(EMPTY.as_ptr().cast())
}

fn panic_text(p: &(dyn core::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Runs the body of the entry point `func`: clears the last error, catches
/// any panic, and on failure records `"{func}: {message}"` as the last error.
pub(crate) fn guard(func: &'static str, body: impl FnOnce() -> Res) -> tp_status {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => tp_status::TP_OK,
        Ok(Err(f)) => {
            set_last_error(format!("{func}: {}", f.msg));
            f.status
        }
        Err(p) => {
            set_last_error(format!(
                "{func}: internal error: a Rust panic was caught at the C boundary: {}",
                panic_text(&*p)
            ));
            tp_status::TP_ERR_PANIC
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last() -> String {
        // SAFETY: last_error_ptr always points to a NUL-terminated string
        // that lives until this thread's next tp_* call.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_tp_err_panic_with_its_message() {
        let s = guard("tp_test", || panic!("boom {}", 42));
        assert_eq!(s, tp_status::TP_ERR_PANIC);
        let m = last();
        assert!(m.starts_with("tp_test: internal error"), "{m}");
        assert!(m.contains("boom 42"), "{m}");
        // A following success clears the message.
        assert_eq!(guard("tp_test", || Ok(())), tp_status::TP_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn failures_are_prefixed_with_the_function_and_interior_nuls_dropped() {
        let s = guard("tp_f", || Err(Fail::invalid("bad\0value")));
        assert_eq!(s, tp_status::TP_ERR_INVALID_ARGUMENT);
        assert_eq!(last(), "tp_f: badvalue");
    }

    #[test]
    fn runtime_codes_pass_through_with_the_same_values() {
        let codes = [
            ErrorCode::UnknownTask,
            ErrorCode::InputCount,
            ErrorCode::InputShape,
            ErrorCode::OutputShape,
            ErrorCode::TokenOutOfRange,
            ErrorCode::ContextFull,
            ErrorCode::TaskKind,
            ErrorCode::InvalidKey,
            ErrorCode::ArenaTooSmall,
            ErrorCode::ArenaMisaligned,
            ErrorCode::BudgetTooSmall,
            ErrorCode::Format,
            ErrorCode::InvalidProgram,
            ErrorCode::DeltaMismatch,
            ErrorCode::ChainTooLong,
            ErrorCode::Unsigned,
            ErrorCode::KeyMismatch,
            ErrorCode::BadSignature,
            ErrorCode::Io,
            // Add new runtime codes here (and a tp_status of the same value);
            // until then they reach C as TP_ERR_RUNTIME.
        ];
        for c in codes {
            assert_eq!(tp_status::from(c) as u32, c as u32, "{c:?}");
        }
    }

    #[test]
    fn every_status_has_a_distinct_value_and_its_own_name() {
        let mut seen = std::collections::BTreeMap::new();
        for &s in tp_status::all() {
            let name = CStr::from_bytes_with_nul(s.name())
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(format!("{s:?}"), name);
            if let Some(prev) = seen.insert(s as u32, s) {
                assert_eq!(prev, s, "two statuses share the value {:#x}", s as u32);
            }
        }
        assert_eq!(seen.len(), tp_status::all().len());
    }
}
