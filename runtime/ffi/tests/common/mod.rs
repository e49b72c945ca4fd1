//! Error-report helpers shared by the C ABI tests.

use std::ffi::CStr;

use taskpath_ffi::{tp_last_error, tp_status};

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
