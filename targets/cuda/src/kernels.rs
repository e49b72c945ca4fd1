//! The CUDA C kernel source and its compilation with NVRTC (or a PTX file).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::error::{CudaError, Result};

/// The CUDA C source of every kernel (`src/kernels.cu`).
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel entry point in [`SOURCE`].
pub const NAMES: [&str; 17] = [
    "tp_linear_f32",
    "tp_linear_f16",
    "tp_conv3_f32",
    "tp_prep_i8",
    "tp_linear_i8",
    "tp_prep_lut",
    "tp_linear_lut",
    "tp_add",
    "tp_axpy",
    "tp_gelu",
    "tp_gelu_add",
    "tp_layernorm",
    "tp_attention",
    "tp_attn_pool",
    "tp_gate",
    "tp_route",
    "tp_conv_cat",
];

/// Environment variable naming a PTX file to load instead of compiling with
/// NVRTC (a machine with a driver but no NVRTC library; `taskpath-cuda-ptx`
/// writes such files).
pub const PTX_ENV: &str = "TASKPATH_CUDA_PTX";

/// NVRTC options: no fused multiply-add, so products and sums round as on
/// the CPU (rustc never contracts); IEEE division and square root.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
    ]
}

/// Whether an NVRTC library can be loaded (checked before any NVRTC call,
/// which would panic inside cudarc without one).
pub fn nvrtc_present() -> bool {
    cudarc::get_lib_name_candidates("nvrtc").iter().any(|name| {
        // SAFETY: loading NVRTC runs no initialisers with preconditions; the
        // handle is dropped at once (cudarc loads its own on first use).
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Compiles [`SOURCE`] to PTX for `arch` (`"compute_87"`, ...). Results are
/// cached per process and architecture: NVRTC runs once.
pub fn compile(arch: &str) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(arch).cloned()) {
        return Ok(p);
    }
    if !nvrtc_present() {
        return Err(CudaError::Unavailable(format!(
            "no NVRTC library found (tried {}); put libnvrtc on the library path or set {PTX_ENV} to a PTX file",
            cudarc::get_lib_name_candidates("nvrtc").join(", ")
        )));
    }
    let prog = cudarc::nvrtc::compile_ptx_with_opts(
        SOURCE,
        cudarc::nvrtc::CompileOptions {
            options: nvrtc_options(arch),
            name: Some("taskpath_kernels.cu".into()),
            ..Default::default()
        },
    )
    .map_err(|e| CudaError::Compile(format!("{arch}: {e:?}")))?;
    let ptx = prog.to_src();
    if let Ok(mut c) = cache.lock() {
        c.insert(arch.to_string(), ptx.clone());
    }
    Ok(ptx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_kernel_is_defined_once_and_every_defined_kernel_is_named() {
        let defined: Vec<&str> = SOURCE
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|s| s.split('(').next().unwrap_or(""))
            .collect();
        let mut named: Vec<&str> = NAMES.to_vec();
        named.sort_unstable();
        named.dedup();
        let mut d = defined.clone();
        d.sort_unstable();
        assert_eq!(d.len(), defined.len());
        d.dedup();
        assert_eq!(d.len(), defined.len(), "a kernel defined twice");
        assert_eq!(d, named);
    }

    #[test]
    fn options_disable_contraction() {
        assert!(nvrtc_options("compute_87").contains(&"--fmad=false".to_string()));
    }
}
