//! Bytes paged in: page-cache residency of a mapping (`mincore`) and the
//! process's storage reads (`/proc/self/io`).

use std::path::Path;

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Residency of each page of `bytes` (a mapping), one flag per page; `None`
/// when `mincore` is unavailable or fails.
pub fn resident_pages(bytes: &[u8]) -> Option<Vec<bool>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let page = page_size();
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % page;
    let len = start + bytes.len() - aligned;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `aligned..aligned+len` covers only pages of the mapping that
    // `bytes` borrows (mappings are page-granular), and `vec` has one byte
    // per page of that range, as mincore requires.
    let rc = unsafe { libc::mincore(aligned as *mut libc::c_void, len, vec.as_mut_ptr()) };
    (rc == 0).then(|| vec.iter().map(|b| b & 1 == 1).collect())
}

/// Pages resident in `after` but not in `before`, times the page size.
pub fn paged_in_bytes(before: &[bool], after: &[bool]) -> u64 {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| !**b && **a)
        .count() as u64
        * page_size() as u64
}

/// `read_bytes` of `/proc/self/io` (bytes this process caused to be read
/// from storage, page faults on mappings included); `None` where absent.
pub fn proc_read_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Asks the kernel to drop `path`'s pages from the page cache
/// (`POSIX_FADV_DONTNEED`), so the next touches page in from storage. Dirty
/// or mapped-and-locked pages may stay; returns whether the call succeeded.
pub fn drop_page_cache(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paged_in_counts_pages_that_became_resident() {
        let p = page_size() as u64;
        assert_eq!(
            paged_in_bytes(&[false, true, false, false], &[true, true, false, true]),
            2 * p
        );
    }

    #[test]
    fn a_touched_heap_buffer_is_resident() {
        let v = vec![1u8; 3 * page_size()];
        let r = resident_pages(&v).expect("mincore on Linux");
        assert!(r.len() >= 3);
        assert!(r.iter().all(|&x| x));
    }
}
