//! Placeholder: wired into the CLI, implementation lands with its issue.

use anyhow::{bail, Result};

/// Arguments (none yet).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn main(_a: &Args) -> Result<()> {
    bail!("not implemented yet")
}
