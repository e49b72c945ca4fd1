//! The shared primitive conformance suite (`taskpath_runtime::conformance`)
//! for the CPU primitives: with the best kernel table for this CPU (AVX2 on
//! x86-64, NEON on aarch64 — `scripts/aarch64-test.sh` runs this file under
//! qemu) and, as a sanity check of the suite itself, with the generic
//! (reference) table. Both must be bit-exact. The opt-in fast f32 table
//! (`Kernels::best().with_fast_f32()`) runs the suite too, within
//! [`FAST_F32`] where a dense f32 product is involved.
//!
//! `cargo test -p taskpath-runtime --features conformance --test primitives`

use taskpath_runtime::conformance::{cases, Kind, Tolerance};
use taskpath_runtime::cpu::CpuPrims;
use taskpath_runtime::format::weight::ALL;
use taskpath_runtime::Kernels;

taskpath_runtime::primitive_conformance!(best_kernels, |slots, inputs| {
    CpuPrims::new(slots, inputs, &Kernels::best())
});

taskpath_runtime::primitive_conformance!(generic_kernels, |slots, inputs| {
    CpuPrims::new(slots, inputs, &Kernels::generic())
});

/// The opt-in fast f32 GEMM (`Kernels::with_fast_f32`: FMA, 16 / 8 lanes,
/// a pairwise lane tree) is not bit-exact: every kind whose output goes
/// through a dense f32 product (`linear`, `conv3` and the steps built on
/// them) is compared within this bound, everything else bit for bit.
/// Operands of the cases are O(1) and K is at most a few hundred, so the
/// kernel bound `(K + 2) eps sum |w x|` stays far below it.
const FAST_F32: Tolerance = Tolerance::Within {
    abs: 1e-5,
    rel: 1e-5,
};

taskpath_runtime::primitive_conformance!(
    fast_f32_kernels,
    |slots, inputs| CpuPrims::new(slots, inputs, &Kernels::best().with_fast_f32()),
    tolerance = |kind: Kind| match kind {
        Kind::LinearF32
        | Kind::LinearLowRankF32
        | Kind::Conv3
        | Kind::StepLinear
        | Kind::StepEncode
        | Kind::StepMoeF32
        | Kind::StepMoeLowRank
        | Kind::StepMoeMixed
        | Kind::StepProgram => FAST_F32,
        _ => Tolerance::Exact,
    }
);

/// The SIMD family this CPU's `Kernels::best()` must pick, if any.
fn simd_prefix() -> Option<&'static str> {
    #[cfg(target_arch = "aarch64")]
    {
        Some("aarch64_neon_")
    }
    #[cfg(target_arch = "x86_64")]
    {
        (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c"))
            .then_some("x86_64_avx2_")
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    {
        None
    }
}

/// Which kernel each format gets from `Kernels::best()`, so the log shows
/// what `best_kernels` ran (`-- --nocapture`): on aarch64, and on x86-64
/// with AVX2 and F16C (q4_0 / q8_0: or AVX-512 VNNI), every packed format
/// has its SIMD kernel (unless
/// `TASKPATH_FORCE_GENERIC` asks for the generic ones).
#[test]
fn best_table_is_the_simd_one_where_the_cpu_has_it() {
    let best = Kernels::best();
    eprintln!("Kernels::best() on {}:\n{best}", std::env::consts::ARCH);
    let forced = std::env::var("TASKPATH_FORCE_GENERIC")
        .is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "no" | "off"));
    let want = if forced { None } else { simd_prefix() };
    for f in ALL.into_iter().filter(|f| f.name() != "f32") {
        let name = best.kernel(f).expect("every format has a kernel").name();
        let prefix = want.unwrap_or("generic_");
        // q4_0 / q8_0 get their AVX-512 VNNI kernel where the CPU has it.
        let avx512 =
            prefix == "x86_64_avx2_" && f.is_gguf_block() && name.starts_with("x86_64_avx512vnni_");
        assert!(
            name.starts_with(prefix) || avx512,
            "{f}: {name}, want {prefix}*"
        );
    }
    assert!(!cases(Kind::LinearPacked).is_empty());
}
