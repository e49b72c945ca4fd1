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

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory and a
/// rename, so a crash never leaves a partial file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}
