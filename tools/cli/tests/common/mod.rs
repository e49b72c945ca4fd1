//! What the `taskpath` binary's test files share: a temporary directory and
//! running the binary with the outcome each test expects.

// Each test file uses its own subset.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A temporary directory removed on drop.
pub struct Tmp(PathBuf);

impl Tmp {
    /// `$TMPDIR/taskpath-<prefix>-<pid>-<name>`, emptied first.
    pub fn new(prefix: &str, name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("taskpath-{prefix}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    /// `rel` inside the directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    /// `rel` inside the directory, as a string argument.
    pub fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary to completion.
pub fn taskpath(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskpath"))
        .args(args)
        .output()
        .expect("spawn taskpath")
}

/// Runs the CLI, asserts success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = taskpath(args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "taskpath {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out.into_owned()
}

/// Runs the CLI, asserts it exits with one of `codes` (1: a failed command,
/// 2: an argument clap refused) with an `error:` line and no panic; returns
/// stderr.
pub fn exits_with(args: &[&str], codes: &[i32]) -> String {
    let o = taskpath(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.code().is_some_and(|c| codes.contains(&c)),
        "taskpath {args:?} should exit with one of {codes:?}, got {:?}; stdout: {}; stderr: {err}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A failed command: exit status 1. Returns stderr.
pub fn fails(args: &[&str]) -> String {
    exits_with(args, &[1])
}

/// An option clap refuses: exit status 2. Returns stderr.
pub fn refused(args: &[&str]) -> String {
    exits_with(args, &[2])
}
