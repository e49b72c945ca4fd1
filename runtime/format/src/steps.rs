//! Work meter of the reader (feature `count-steps`, std only): counts the
//! validation steps [`crate::Package::parse`] takes on the calling thread, so
//! a test can check the documented bound (docs/FORMAT.md, "Resource
//! bounds") exactly instead of timing it. A step is one record (or section
//! entry, path entry, slot) visited, or 64 bytes hashed or UTF-8 checked.
//! Without the feature the hooks compile to nothing.

#[cfg(feature = "count-steps")]
std::thread_local! {
    static STEPS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Records `n` steps.
#[inline(always)]
pub(crate) fn add(n: u64) {
    #[cfg(feature = "count-steps")]
    STEPS.with(|s| s.set(s.get() + n));
    #[cfg(not(feature = "count-steps"))]
    let _ = n;
}

/// Records the steps of scanning `bytes` bytes (hashing, UTF-8 checks).
#[inline(always)]
pub(crate) fn scan(bytes: usize) {
    add((bytes as u64).div_ceil(64));
}

/// Steps taken on this thread so far.
#[cfg(feature = "count-steps")]
pub fn taken() -> u64 {
    STEPS.with(|s| s.get())
}
