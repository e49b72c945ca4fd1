//! `taskpath`: generate, pack, inspect, verify, run and evaluate Taskpath models.
//!
//! Every subcommand reports failures as one `error: ...` line (with the chain
//! of what was being done) and exit status 1; output files are always written
//! atomically (a temporary file renamed into place).
#![warn(missing_docs)]

mod bench;
mod bench_llm;
mod bound;
mod demo;
mod eval;
mod eval_llm;
mod export_onnx;
mod gen;
mod generate;
mod inspect;
mod keys;
mod lm;
mod npy;
mod pack;
mod profile;
mod residency;
mod residency_llm;
mod routes;
mod routes_llm;
mod run;
mod sample;
mod stream;
mod util;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Taskpath: an ahead-of-time packer and runtime for mixture-of-experts models
/// on edge devices.
#[derive(Debug, Parser)]
#[command(name = "taskpath", version, about, propagate_version = true)]
struct Cli {
    /// Read packages whole into memory at open instead of memory-mapping
    /// them: every byte is resident, and truncating or editing a package
    /// file while the command runs cannot crash it (with a mapping that is
    /// a SIGBUS). Replacing a file by rename is safe either way.
    #[arg(long, global = true)]
    no_mmap: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a seeded random checkpoint and random datasets for each task.
    GenRandom(gen::GenArgs),
    /// Make an ed25519 key pair for signing packages (KEY.key, KEY.pub).
    Keygen(keys::KeygenArgs),
    /// Pack a checkpoint directory into a .tpk package.
    Pack(pack::PackArgs),
    /// Pack what a later-stage checkpoint adds to a package as a delta pack.
    AddTask(pack::AddTaskArgs),
    /// Print a package's header, sections, architecture, tasks and blobs.
    Inspect(inspect::InspectArgs),
    /// Check every blob checksum and every task's op program (and, with
    /// --key, every package's signature).
    Verify(verify::VerifyArgs),
    /// Run one task on inputs from JSON, a dataset file or .npy files.
    Run(run::RunArgs),
    /// Evaluate tasks on their test sets (accuracy, agreement, latency), or a
    /// language model's perplexity per text domain, on its paths.
    Eval(eval::EvalArgs),
    /// Pack, verify and evaluate the reference model end to end.
    Demo(demo::DemoArgs),
    /// Expert-cache hit rates under RAM budgets: LRU + pinning vs Belady.
    Residency(residency::ResidencyArgs),
    /// Measured distribution of routed experts per task and modality (per
    /// text domain and layer for a language model).
    Routes(routes::RoutesArgs),
    /// Profile a task: trace JSON, latency/energy summary and plots.
    Profile(profile::Args),
    /// Benchmark matrix (packages x tasks x threads), llama-bench style.
    Bench(bench::Args),
    /// Each task's p50 latency against a compute lower bound measured in
    /// the same run (FLOPs / the dense f32 linear rate on cached operands).
    Bound(bound::Args),
    /// Export a task's dense parts and experts as ONNX graphs for NPU compilers.
    ExportOnnx(export_onnx::Args),
    /// Generate text from a language-model package.
    Generate(generate::Args),
}

/// Paths of delta packs applied on top of a base package, in chain order.
#[derive(Debug, Clone, Default, clap::Args)]
struct DeltaArgs {
    /// Delta packs (.tpkd) to apply on top of the base, in order.
    #[arg(long = "deltas", value_name = "DELTA", num_args = 1..)]
    deltas: Vec<PathBuf>,
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::GenRandom(a) => gen::main(&a),
        Command::Keygen(a) => keys::keygen(&a),
        Command::Pack(a) => pack::main(&a),
        Command::AddTask(a) => pack::add_task(&a),
        Command::Inspect(a) => inspect::main(&a),
        Command::Verify(a) => verify::main(&a),
        Command::Run(a) => run::main(&a),
        Command::Eval(a) => eval::main(&a),
        Command::Demo(a) => demo::main(&a),
        Command::Residency(a) => residency::main(&a),
        Command::Routes(a) => routes::main(&a),
        Command::Profile(a) => profile::main(&a),
        Command::Bench(a) => bench::main(&a),
        Command::Bound(a) => bound::main(&a),
        Command::ExportOnnx(a) => export_onnx::main(&a),
        Command::Generate(a) => generate::main(&a),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::set_no_mmap(cli.no_mmap);
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `taskpath inspect FILE | head`: the reader left, nothing to report.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Messages quote names from packages and files.
            eprintln!("error: {}", util::terminal_safe(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
