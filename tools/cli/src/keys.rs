//! Package signing keys: `taskpath keygen`, the key files, and signing
//! packages as `pack --sign` and `add-task --sign` write them.
//!
//! A key file is two lines of text: a tag naming what it holds, then the 32
//! key bytes in hex (docs/FORMAT.md, "Signature record"):
//!
//! ```text
//! taskpath-ed25519-secret-key      taskpath-ed25519-public-key
//! 9d61b19d...(64 hex digits)       d75a9801...(64 hex digits)
//! ```
//!
//! The secret key is an RFC 8032 seed from the OS's random source, written
//! with mode 0600 and never over an existing file.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use taskpath_format::signature::{public_key, sign_package, Fingerprint};

use crate::util::outln;

const SECRET_TAG: &str = "taskpath-ed25519-secret-key";
const PUBLIC_TAG: &str = "taskpath-ed25519-public-key";
/// Longest key file read (a key file is 93 bytes; comments are not allowed).
const MAX_KEY_FILE: u64 = 4096;

/// Arguments of `keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write: an existing directory (then DIR/taskpath.key and
    /// DIR/taskpath.pub) or a path prefix (PREFIX.key and PREFIX.pub).
    /// Existing files are never overwritten.
    #[arg(short = 'o', long = "output", value_name = "DIR|PREFIX")]
    pub output: PathBuf,
}

/// `--sign KEY` of `pack` and `add-task`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SignArgs {
    /// Sign the package with this secret key file (from `taskpath keygen`):
    /// an ed25519 signature over the package's SHA-512 identity, appended
    /// after its last byte. Devices open it with the public key.
    #[arg(long = "sign", value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

impl SignArgs {
    /// The secret key, read and checked before any packing starts.
    pub fn secret(&self) -> Result<Option<[u8; 32]>> {
        self.sign.as_deref().map(read_secret_key).transpose()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_text(tag: &str, key: &[u8; 32]) -> String {
    format!("{tag}\n{}\n", hex(key))
}

fn read_key(path: &Path, tag: &str) -> Result<[u8; 32]> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is not a taskpath key file (not text)", path.display()))?;
    ensure!(
        text.len() as u64 <= MAX_KEY_FILE,
        "{} is not a taskpath key file (over {MAX_KEY_FILE} bytes)",
        path.display()
    );
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    let other = if tag == SECRET_TAG {
        PUBLIC_TAG
    } else {
        SECRET_TAG
    };
    if first == other {
        bail!(
            "{} holds a {} key; a {} key is needed here",
            path.display(),
            if other == PUBLIC_TAG {
                "public"
            } else {
                "secret"
            },
            if tag == PUBLIC_TAG {
                "public"
            } else {
                "secret"
            }
        );
    }
    ensure!(
        first == tag,
        "{} is not a taskpath key file: its first line must be {tag:?}",
        path.display()
    );
    let digits = lines.next().unwrap_or("").trim();
    ensure!(
        lines.all(|l| l.trim().is_empty()),
        "{}: unexpected text after the key line",
        path.display()
    );
    ensure!(
        digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}: the key line must be 64 hex digits (32 bytes), got {} characters",
        path.display(),
        digits.chars().count()
    );
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)?;
    }
    Ok(key)
}

/// Reads a secret key file (`taskpath keygen`'s `.key`).
pub fn read_secret_key(path: &Path) -> Result<[u8; 32]> {
    read_key(path, SECRET_TAG)
}

/// Reads a public key file (`taskpath keygen`'s `.pub`), refusing bytes
/// that are not an ed25519 public key.
pub fn read_public_key(path: &Path) -> Result<[u8; 32]> {
    let k = read_key(path, PUBLIC_TAG)?;
    ensure!(
        taskpath_format::signature::is_valid_public_key(&k),
        "{}: the key is not a valid ed25519 public key",
        path.display()
    );
    Ok(k)
}

/// The package bytes to write: `bytes` itself, or signed with `secret`.
pub fn maybe_sign(bytes: Vec<u8>, secret: Option<&[u8; 32]>) -> Result<Vec<u8>> {
    match secret {
        None => Ok(bytes),
        Some(s) => sign_package(&bytes, s).context("signing the package"),
    }
}

/// A key's fingerprint (first 8 bytes, hex), as errors and `verify` print it.
pub fn fingerprint(key: &[u8; 32]) -> String {
    Fingerprint(key).to_string()
}

/// The two file names `keygen -o OUTPUT` writes.
pub fn key_paths(output: &Path) -> (PathBuf, PathBuf) {
    if output.is_dir() {
        (output.join("taskpath.key"), output.join("taskpath.pub"))
    } else {
        let mut s = output.as_os_str().to_owned();
        let mut p = s.clone();
        s.push(".key");
        p.push(".pub");
        (PathBuf::from(s), PathBuf::from(p))
    }
}

/// Runs `keygen`.
pub fn keygen(a: &KeygenArgs) -> Result<()> {
    let (secret_path, public_path) = key_paths(&a.output);
    for p in [&secret_path, &public_path] {
        ensure!(
            p.symlink_metadata().is_err(),
            "{} already exists: keygen never overwrites a key",
            p.display()
        );
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
    let public = public_key(&seed);
    if let Some(dir) = secret_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    taskpath_checkpoint::write_new(&secret_path, key_text(SECRET_TAG, &seed).as_bytes(), 0o600)?;
    taskpath_checkpoint::write_new(
        &public_path,
        key_text(PUBLIC_TAG, &public).as_bytes(),
        0o644,
    )?;
    outln!(
        "secret key {} (mode 0600: keep it off devices), public key {}, fingerprint {}",
        secret_path.display(),
        public_path.display(),
        fingerprint(&public)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_bad_ones_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("taskpath-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let seed = [9u8; 32];
        let (s, p) = (dir.join("k.key"), dir.join("k.pub"));
        std::fs::write(&s, key_text(SECRET_TAG, &seed)).unwrap();
        std::fs::write(&p, key_text(PUBLIC_TAG, &public_key(&seed))).unwrap();
        assert_eq!(read_secret_key(&s).unwrap(), seed);
        assert_eq!(read_public_key(&p).unwrap(), public_key(&seed));
        let err = |path: &Path, secret: bool| {
            let e = if secret {
                read_secret_key(path).unwrap_err()
            } else {
                read_public_key(path).unwrap_err()
            };
            format!("{e:#}")
        };
        assert!(err(&p, true).contains("holds a public key; a secret key is needed"));
        assert!(err(&s, false).contains("holds a secret key; a public key is needed"));
        let bad = dir.join("bad");
        for (text, needle) in [
            ("hello\n", "first line must be"),
            ("taskpath-ed25519-public-key\nabc\n", "64 hex digits"),
            ("taskpath-ed25519-public-key\n", "64 hex digits"),
            (
                &*format!("{PUBLIC_TAG}\n{}\nmore\n", "00".repeat(32)),
                "unexpected text",
            ),
            (
                &*format!("{PUBLIC_TAG}\n02{}80\n", "00".repeat(30)),
                "not a valid ed25519",
            ),
        ] {
            std::fs::write(&bad, text).unwrap();
            let e = err(&bad, false);
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        std::fs::write(&bad, vec![b'a'; 5000]).unwrap();
        assert!(err(&bad, false).contains("over 4096 bytes"));
        assert!(err(&dir.join("missing"), false).contains("opening"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
