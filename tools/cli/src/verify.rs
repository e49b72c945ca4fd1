//! `taskpath verify`: every blob checksum, every weight's finiteness and
//! every task's op program.

use std::path::PathBuf;

use anyhow::{Context, Result};
use taskpath_runtime::{AlignedArena, Session, SessionOptions};

use crate::inspect::kind_name;
use crate::util::{open_model, open_model_verified, outln};
use crate::DeltaArgs;

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Require every package of the chain (base and deltas) to be signed by
    /// this public key (a `taskpath keygen` .pub file). Each package's
    /// signature is checked before it is parsed; an unsigned package, one
    /// signed by another key and one changed after signing are refused.
    #[arg(long = "key", value_name = "PUB")]
    pub key: Option<PathBuf>,
}

/// What [`verify`] checked.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    /// Blobs whose checksum matched.
    pub blobs: usize,
    /// Tasks whose session was built.
    pub tasks: usize,
    /// Packages whose signature was checked (0 without a key).
    pub signed: usize,
}

/// Parses the chain, checks every blob checksum (in file order, naming the
/// first bad blob), refuses NaN or infinite weights and scales (naming the
/// tensor) and builds a session for every task (which checks each op
/// of its program against the package).
pub fn verify(
    file: &std::path::Path,
    deltas: &[PathBuf],
    key: Option<&[u8; 32]>,
) -> Result<Verified> {
    let mapped = match key {
        Some(k) => open_model_verified(file, deltas, k)?,
        None => open_model(file, deltas)?,
    };
    let model = mapped.model()?;
    let files: Vec<_> = std::iter::once(file)
        .chain(deltas.iter().map(PathBuf::as_path))
        .collect();
    let mut blobs = 0;
    for (i, p) in model.parts().enumerate() {
        let base = p.model().blob_base;
        for local in 0..p.blobs().len() {
            p.verify_blob(local).with_context(|| {
                let kind = p
                    .blobs()
                    .get(local)
                    .map_or_else(String::new, |b| kind_name(b.kind));
                format!(
                    "{}: {kind} blob {} (global index {}) is corrupt",
                    files
                        .get(i)
                        .map_or_else(String::new, |f| f.display().to_string()),
                    local,
                    base as usize + local
                )
            })?;
            blobs += 1;
        }
    }
    // Checksums cannot catch a NaN written by the packer's source (a GGUF
    // scale) or re-sealed by hand: every value is read, errors name the
    // tensor and its blob.
    for (i, p) in model.parts().enumerate() {
        let file = files
            .get(i)
            .map_or_else(String::new, |f| f.display().to_string());
        for local in 0..p.tensors().len() {
            p.check_tensor_finite(local).map_err(|e| {
                let (name, blob) = p
                    .tensors()
                    .get(local)
                    .map_or(("", 0), |t| (p.str(t.name_off, t.name_len), t.blob));
                anyhow::anyhow!(
                    "{file}: tensor {name:?} (blob {blob}) holds a NaN or infinite weight or scale: {e}"
                )
            })?;
        }
    }
    // Belt and braces: the runtime's own whole-model check (checksums, then
    // finiteness of every tensor and float metadata value).
    model.verify()?;
    unique_names(&model)?;
    let tasks = model.task_count();
    for t in 0..tasks {
        let info = model.task(t)?;
        let mut arena = AlignedArena::new(info.arena_bytes);
        // Checksums were all checked above; this checks the op program and plan.
        Session::with_options(
            &model,
            t,
            arena.as_mut_slice(),
            SessionOptions {
                verify_path: false,
                ..Default::default()
            },
        )
        .with_context(|| format!("task {} ({t}): its op program does not check", info.name))?;
    }
    let signed = if key.is_some() { model.chain_len() } else { 0 };
    Ok(Verified {
        blobs,
        tasks,
        signed,
    })
}

/// Refuses a chain in which two tasks, or two modalities, share a name: the
/// runtime looks tasks and inputs up by name and would silently take the
/// first, so the second could never be run (or would shadow a base task).
pub fn unique_names(model: &taskpath_runtime::Model<'_>) -> Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    for t in 0..model.task_count() {
        let name = model.task(t)?.name;
        if let Some(first) = seen.insert(name, t) {
            anyhow::bail!(
                "tasks {first} and {t} are both named {:?}",
                crate::util::printable(name)
            );
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for m in 0..model.modality_count() {
        let Some((name, _, _)) = model.modality(m) else {
            continue;
        };
        if let Some(first) = seen.insert(name, m) {
            anyhow::bail!(
                "modalities {first} and {m} are both named {:?}",
                crate::util::printable(name)
            );
        }
    }
    Ok(())
}

/// Runs `verify`.
pub fn main(a: &VerifyArgs) -> Result<()> {
    let key = a
        .key
        .as_deref()
        .map(crate::keys::read_public_key)
        .transpose()?;
    let v = verify(&a.file, &a.deltas.deltas, key.as_ref())?;
    match &key {
        Some(k) => outln!(
            "ok: {} packages signed by key {}, {} blobs, {} tasks verified",
            v.signed,
            crate::keys::fingerprint(k),
            v.blobs,
            v.tasks
        ),
        None => outln!("ok: {} blobs, {} tasks verified", v.blobs, v.tasks),
    }
    Ok(())
}
