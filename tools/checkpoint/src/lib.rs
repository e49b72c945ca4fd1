//! Checkpoint directories: the interchange between the trainer
//! (`taskpath-flame`), the random generator and the packer. See docs/CHECKPOINT.md.

pub mod checkpoint;
pub mod dataset;
pub mod random;

pub use checkpoint::{
    Checkpoint, Gating, Matrix, ModalityConfig, ModelConfig, TaskConfig, Tensor, CHECKPOINT_FORMAT,
};
pub use dataset::{Dataset, Sample, DATASET_FORMAT};
pub use random::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory and a
/// rename, so a crash never leaves a partial file under the final name. See
/// [`write_atomic_with`] for how the temporary file is made.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, &mut |f| f.write_all(bytes))
}

/// Writes `path` atomically with `fill` writing the contents (for output
/// produced by an encoder rather than held as one buffer).
///
/// The temporary file lies next to `path` (a rename cannot cross file
/// systems) under an unpredictable name, and is created exclusively
/// (`O_CREAT | O_EXCL`), which also refuses a symbolic link planted under
/// that name: another user of a shared directory can neither guess the name
/// nor redirect the write. It is removed on every error path (and if `fill`
/// panics). The rename replaces a symbolic link at `path` itself rather than
/// writing through it.
pub fn write_atomic_with(
    path: &Path,
    fill: &mut dyn FnMut(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    write_via(path, &mut std::iter::repeat_with(unpredictable), fill)
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates `path` with `bytes`, atomically and exclusively: as
/// [`write_atomic`], but the temporary file is created with mode `mode`
/// (unix permission bits, e.g. `0o600` for a secret key: never readable by
/// others, not even for an instant) and it is *linked* to `path` rather
/// than renamed over it, so an existing file (or symbolic link) at `path` is
/// never replaced: the call fails naming it. The temporary is removed on
/// every path.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_new_via(
        path,
        &mut std::iter::repeat_with(unpredictable),
        bytes,
        mode,
    )
    .with_context(|| format!("creating {}", path.display()))
}

fn write_new_via(
    path: &Path,
    salts: &mut dyn Iterator<Item = u64>,
    bytes: &[u8],
    mode: u32,
) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        anyhow::bail!("{} already exists: not overwriting it", path.display());
    }
    for salt in salts.take(TEMP_ATTEMPTS) {
        let tmp = temp_name(path, salt)?;
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = match o.open(&tmp) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", tmp.display())),
        };
        let _guard = Temp(Some(tmp.clone()));
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        // link(2) fails with EEXIST instead of replacing: no clobbering,
        // even of a file created since the check above.
        std::fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!("{} already exists: not overwriting it", path.display())
            } else {
                anyhow::Error::new(e).context(format!("linking {} into place", tmp.display()))
            }
        })?;
        if let Ok(d) = File::open(parent_dir(path)) {
            let _ = d.sync_all();
        }
        return Ok(());
    }
    anyhow::bail!("every temporary name tried was taken")
}

/// Temporary names to try before giving up: a clash means another writer
/// (or an attacker) holds the name, and a fresh random name avoids it.
const TEMP_ATTEMPTS: usize = 16;

/// 64 unpredictable bits: SipHash under `RandomState`'s per-process random
/// keys, over the time, the process id and a counter.
fn unpredictable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// The temporary file; removed when dropped unless it was renamed.
struct Temp(Option<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The directory `path` is in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The temporary file next to `path` for one attempt: hidden, in the same
/// directory (so the final rename or link never crosses file systems).
fn temp_name(path: &Path, salt: u64) -> Result<PathBuf> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    Ok(dir.join(format!(".{}.{salt:016x}.tmp", name.to_string_lossy())))
}

/// [`write_atomic_with`] with the temporary names drawn from `salts`.
fn write_via(
    path: &Path,
    salts: &mut dyn Iterator<Item = u64>,
    fill: &mut dyn FnMut(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let mut last = None;
    for salt in salts.take(TEMP_ATTEMPTS) {
        let tmp = temp_name(path, salt)?;
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", tmp.display())),
        };
        let mut guard = Temp(Some(tmp.clone()));
        fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        guard.0 = None;
        // The rename is durable once the directory is; failing to sync it
        // (some file systems refuse) does not undo the write.
        if let Ok(d) = File::open(parent_dir(path)) {
            let _ = d.sync_all();
        }
        return Ok(());
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temporary name to try")))
        .context("every temporary name tried was taken")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Self {
            let d =
                std::env::temp_dir().join(format!("taskpath-atomic-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn temporary_names_differ_and_are_not_left_behind() {
        let d = Dir::new("names");
        let a = unpredictable();
        assert_ne!(a, unpredictable());
        write_atomic(&d.0.join("out.bin"), b"one").unwrap();
        write_atomic(&d.0.join("out.bin"), b"two").unwrap();
        assert_eq!(std::fs::read(d.0.join("out.bin")).unwrap(), b"two");
        assert_eq!(d.names(), ["out.bin"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        let d = Dir::new("planted");
        let victim = d.0.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = d.0.join("out.bin");
        // The attacker guessed the first name; the writer must skip it.
        let planted = d.0.join(format!(".out.bin.{:016x}.tmp", 7u64));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut salts = [7u64, 8].into_iter();
        write_via(&out, &mut salts, &mut |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert!(std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        // Only that name available: an error, and still nothing followed.
        let planted2 = d.0.join(format!(".other.{:016x}.tmp", 7u64));
        std::os::unix::fs::symlink(&victim, &planted2).unwrap();
        let mut salts = std::iter::repeat(7u64);
        let e = write_via(&d.0.join("other"), &mut salts, &mut |f| f.write_all(b"x"));
        assert!(format!("{:#}", e.unwrap_err()).contains("every temporary name tried was taken"));
        assert!(!d.0.join("other").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_output_path_is_replaced_not_followed() {
        let d = Dir::new("outlink");
        let victim = d.0.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = d.0.join("out.bin");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&out).unwrap().is_file());
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_and_no_partial_output() {
        let d = Dir::new("failed");
        let out = d.0.join("out.bin");
        std::fs::write(&out, b"old").unwrap();
        // The writer fails half-way.
        let e = write_atomic_with(&out, &mut |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("disk full"), "{e:#}");
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
        assert_eq!(d.names(), ["out.bin"]);
        // The rename fails: the target is a non-empty directory.
        let blocked = d.0.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write_atomic(&blocked, b"data").is_err());
        assert_eq!(d.names(), ["blocked", "out.bin"]);
        // The writer panics: the temporary still goes.
        let r = std::panic::catch_unwind(|| {
            let _ = write_atomic_with(&d.0.join("p.bin"), &mut |_| panic!("boom"));
        });
        assert!(r.is_err());
        assert_eq!(d.names(), ["blocked", "out.bin"]);
    }

    #[test]
    #[cfg(unix)]
    fn write_new_is_private_exclusive_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let d = Dir::new("write-new");
        let p = d.0.join("secret.key");
        write_new(&p, b"s3cret", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"s3cret");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // An existing file is never replaced, and nothing is left behind.
        let e = write_new(&p, b"other", 0o600).unwrap_err();
        assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        assert_eq!(std::fs::read(&p).unwrap(), b"s3cret");
        // Nor is a symbolic link (dangling or not) followed or replaced.
        let l = d.0.join("link.key");
        std::os::unix::fs::symlink(d.0.join("target"), &l).unwrap();
        assert!(write_new(&l, b"x", 0o600).is_err());
        assert!(!d.0.join("target").exists());
        assert_eq!(d.names(), vec!["link.key", "secret.key"]);
    }
}
