//! The Taskpath C ABI (`include/taskpath.h`, generated from this crate by
//! cbindgen; see docs/FFI.md).
//!
//! Conventions, as in tract's FFI and ExecuTorch's runtime:
//!
//! - every function returns a [`tp_status`]; results come back through
//!   out-parameters, which are written only on success unless stated;
//! - every pointer is checked for NULL and every `struct_size` against the
//!   sizes this library knows, before anything else happens;
//! - every body runs under `catch_unwind`: a panic is reported as
//!   `TP_ERR_PANIC`, never unwound into C (a `panic = "abort"` build aborts);
//! - on failure [`tp_last_error`] returns a message naming the function and
//!   the problem; each call clears it first;
//! - handles are opaque; `tp_model` is heap-allocated by the library, a
//!   `tp_session` lives inside the caller's arena;
//! - ownership and lifetimes are stated on every function.
//!
//! `unsafe` appears only in the exported functions and the pointer helpers
//! they use, each with a `SAFETY:` comment stating the caller contract it
//! relies on.
#![warn(missing_docs)]
#![allow(non_camel_case_types)]

use std::ffi::c_char;

mod model;
mod session;
mod status;

pub use model::*;
pub use session::*;
pub use status::tp_status;

use status::{Fail, Res};

/// Version of this ABI; bumped only by an incompatible change (which also
/// renames what changed). Compare `tp_abi_version()` with this macro.
pub const TP_ABI_VERSION: u32 = 1;

/// Alignment, in bytes, that package bytes passed to `tp_model_open_memory`
/// must have (the package's tensors are read in place as `float`), unless
/// `TP_MODEL_COPY` is set.
pub const TP_PACKAGE_ALIGN: usize = 16;

/// Alignment, in bytes, of the session memory passed to `tp_session_create`.
pub const TP_ARENA_ALIGN: usize = 16;

/// Most modalities (inputs) a task can have: the package's modality mask has
/// 32 bits, so `tp_task_info` can describe every task.
pub const TP_MAX_MODALITIES: usize = 32;

/// The ABI version this library implements (`TP_ABI_VERSION` of its header).
///
/// Never fails; touches no state.
#[no_mangle]
pub extern "C" fn tp_abi_version() -> u32 {
    TP_ABI_VERSION
}

/// The message of the calling thread's last failed `tp_*` call, or `""` if
/// the last call succeeded (every call clears it on entry). Never NULL.
///
/// Ownership: the string belongs to the library; it stays valid until the
/// calling thread's next `tp_*` call (other than `tp_last_error` and
/// `tp_status_name`). Copy it to keep it.
#[no_mangle]
pub extern "C" fn tp_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// The name of a status code (`"TP_ERR_NULL_ARGUMENT"`), or
/// `"TP_ERR_UNKNOWN_STATUS"` for a value that is not one. Never NULL.
///
/// Ownership: a static string; never free it.
#[no_mangle]
pub extern "C" fn tp_status_name(status: u32) -> *const c_char {
    let name: &'static [u8] = tp_status::all()
        .iter()
        .find(|s| **s as u32 == status)
        .map_or(b"TP_ERR_UNKNOWN_STATUS\0", |s| s.name());
    name.as_ptr().cast()
}

/// Reads a caller's input struct whose first field is `uint32_t struct_size`:
/// `Ok(None)` for NULL (the caller asks for defaults), `TP_ERR_STRUCT_SIZE`
/// when `struct_size` is not `sizeof(T)` of this library.
///
/// # Safety
/// `p` is NULL or points to a readable `u32`, and to `size_of::<T>()`
/// readable bytes when that `u32` equals `size_of::<T>()`.
unsafe fn read_versioned<T: Copy>(p: *const T, what: &str) -> Res<Option<T>> {
    if p.is_null() {
        return Ok(None);
    }
    if !p.cast::<u32>().is_aligned() || !p.is_aligned() {
        return Err(Fail::invalid(format!("`{what}` pointer is misaligned")));
    }
    // SAFETY: p is non-null and aligned; the caller guarantees the first u32
    // (struct_size) is readable.
    let size = unsafe { p.cast::<u32>().read() } as usize;
    check_struct_size(size, core::mem::size_of::<T>(), what)?;
    // SAFETY: struct_size says the caller's struct is exactly a T.
    Ok(Some(unsafe { p.read() }))
}

/// Checks the `struct_size` of an output struct before writing `T` there.
///
/// # Safety
/// `p` is NULL (reported here) or points to a `T`-sized writable struct
/// whose leading `u32` (struct_size) the caller initialised.
unsafe fn check_out_struct<T>(p: *mut T, arg: &str, what: &str) -> Res {
    if p.is_null() {
        return Err(Fail::null(arg));
    }
    if !p.is_aligned() {
        return Err(Fail::invalid(format!("`{arg}` is misaligned for {what}")));
    }
    // SAFETY: p is non-null and aligned for T (so for its leading u32); the
    // caller guarantees its struct_size field is initialised.
    let size = unsafe { p.cast::<u32>().read() } as usize;
    check_struct_size(size, core::mem::size_of::<T>(), what)
}

fn check_struct_size(got: usize, ours: usize, what: &str) -> Res {
    if got == ours {
        Ok(())
    } else {
        Err(Fail::new(
            tp_status::TP_ERR_STRUCT_SIZE,
            format!(
                "{what}.struct_size is {got}, but this library's sizeof({what}) is {ours} \
                 (set it to sizeof({what}) from the taskpath.h the library was built with)"
            ),
        ))
    }
}

/// Writes `v` through an out-pointer checked non-NULL by the caller.
///
/// # Safety
/// `p` is non-NULL, aligned and writable for a `T`.
unsafe fn write_out<T>(p: *mut T, v: T) {
    // SAFETY: as the function's contract.
    unsafe { p.write(v) }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn status_names_cover_every_code_and_unknown_values() {
        // SAFETY: tp_status_name returns a static NUL-terminated string.
        let name = |v| {
            unsafe { CStr::from_ptr(tp_status_name(v)) }
                .to_str()
                .unwrap()
        };
        assert_eq!(name(0), "TP_OK");
        assert_eq!(name(0x1C), "TP_ERR_NULL_ARGUMENT");
        assert_eq!(name(0x40), "TP_ERR_IO");
        assert_eq!(name(0xFFFF), "TP_ERR_UNKNOWN_STATUS");
        assert_eq!(tp_abi_version(), TP_ABI_VERSION);
    }
}
