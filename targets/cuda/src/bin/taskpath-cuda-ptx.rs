//! Compiles every kernel to PTX with NVRTC, one file per architecture, for
//! the compile check without a GPU (`scripts/cuda-check.sh` assembles them
//! with ptxas) and as a fallback for machines with a driver but no NVRTC
//! (`TASKPATH_CUDA_PTX=file.ptx`).
//!
//! Usage: `taskpath-cuda-ptx OUT_DIR [compute_72 compute_87 ...]`

use std::path::PathBuf;
use std::process::ExitCode;

use taskpath_cuda::kernels;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        eprintln!("usage: taskpath-cuda-ptx OUT_DIR [compute_XY ...]");
        return ExitCode::from(2);
    };
    let mut arches: Vec<String> = args.collect();
    if arches.is_empty() {
        arches = ["compute_72", "compute_87", "compute_89"]
            .map(String::from)
            .to_vec();
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("creating {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    for arch in &arches {
        let ptx = match kernels::compile(arch) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{arch}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let missing: Vec<&str> = kernels::NAMES
            .iter()
            .copied()
            .filter(|n| !ptx.contains(&format!(".entry {n}(")))
            .collect();
        if !missing.is_empty() {
            eprintln!("{arch}: PTX lacks entry points {missing:?}");
            return ExitCode::FAILURE;
        }
        let path = out.join(format!("taskpath-{arch}.ptx"));
        // Written whole then renamed, so a reader never sees half a file.
        let tmp = path.with_extension("ptx.tmp");
        if let Err(e) = std::fs::write(&tmp, &ptx).and_then(|()| std::fs::rename(&tmp, &path)) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!(
            "{arch}: {} kernels, {} bytes of PTX -> {}",
            kernels::NAMES.len(),
            ptx.len(),
            path.display()
        );
    }
    ExitCode::SUCCESS
}
