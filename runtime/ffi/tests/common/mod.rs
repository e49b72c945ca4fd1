//! Helpers shared by the C ABI tests: status checks, open and close.

use std::ffi::CStr;
use std::ptr::{null, null_mut};

use taskpath_ffi::{tp_last_error, tp_model, tp_model_close, tp_model_open_memory, tp_status};

/// This thread's last error text.
pub fn last() -> String {
    // SAFETY: tp_last_error never returns NULL and its string lives until
    // this thread's next tp_* call.
    unsafe { CStr::from_ptr(tp_last_error()) }
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts the status and that the last error names the function and holds
/// every one of `needles`.
#[track_caller]
pub fn fails(got: tp_status, want: tp_status, func: &str, needles: &[&str]) {
    let msg = last();
    assert_eq!(got, want, "status; last error: {msg}");
    assert!(
        msg.starts_with(&format!("{func}: ")),
        "{msg:?} does not name {func}"
    );
    for n in needles {
        assert!(msg.contains(n), "{msg:?} does not mention {n:?}");
    }
}

/// Asserts a success, which leaves no last error.
#[track_caller]
pub fn ok(got: tp_status) {
    assert_eq!(got, tp_status::TP_OK, "{}", last());
    assert_eq!(last(), "", "a success leaves no last error");
}

/// Opens `bytes` (aligned) from memory with default options.
pub fn open(bytes: &[u8]) -> *mut tp_model {
    let mut m = null_mut();
    // SAFETY: valid bytes that outlive the model (each test closes it first).
    ok(unsafe { tp_model_open_memory(bytes.as_ptr(), bytes.len(), null(), &mut m) });
    assert!(!m.is_null());
    m
}

/// Closes a model with no session left.
pub fn close(mut m: *mut tp_model) {
    // SAFETY: a live handle from `open`.
    ok(unsafe { tp_model_close(&mut m) });
    assert!(m.is_null(), "tp_model_close nulls the handle");
}
