//! The shared primitive conformance suite (`taskpath_runtime::conformance`)
//! for the CUDA backend's host emulation (`taskpath_cuda::emu::EmuPrims`:
//! the kernel launches of `DevPrims`, each replaced by its host
//! transliteration). Runs on any machine; no GPU needed.
//!
//! Bit-exact with the CPU reference except one documented place:
//! `tp_gate`, launched by `gate_logits` with `acc = 0, scale = 1`, writes
//! `0.0 + 1.0 * raw`, so a Laplace logit of `-0.0` (the pooled input equal
//! to a gate vector) comes out `+0.0`. The bound there is "equal as
//! numbers" (`Within { abs: 0, rel: 0 }`: only the sign of a zero may
//! differ); it reaches a `Gate` step's logits only when it accumulates onto
//! a `-0.0` logit. Routing is unaffected (`-0.0` and `+0.0` tie).

use taskpath_cuda::emu::EmuPrims;
use taskpath_runtime::conformance::{Kind, Tolerance};

taskpath_runtime::primitive_conformance!(
    host_emulation,
    |slots, inputs| EmuPrims::new(slots, inputs),
    tolerance = |kind: Kind| match kind {
        Kind::GateLogits | Kind::StepGate => Tolerance::Within { abs: 0.0, rel: 0.0 },
        _ => Tolerance::Exact,
    },
    // q4_0 / q8_0 have no CUDA kernel yet: those cases must be refused.
    formats = taskpath_cuda::geometry::supported
);

/// The one known difference is real (so the tolerance above is needed, and
/// would be dropped if the kernel changed): a Laplace gate vector equal to
/// the input gives `-0.0` on the CPU and `+0.0` from `tp_gate`.
#[test]
fn gate_zero_sign_is_the_only_difference() {
    use taskpath_runtime::conformance::cases;
    let mut differs = 0;
    for kind in [Kind::GateLogits, Kind::StepGate] {
        for case in cases(kind) {
            let mut slots = case.slots();
            let inputs = case.inputs();
            let outcome = case.run(&mut EmuPrims::new(&mut slots, &inputs));
            if case.check(&slots, &outcome, Tolerance::Exact).is_err() {
                differs += 1;
                case.check(&slots, &outcome, Tolerance::Within { abs: 0.0, rel: 0.0 })
                    .unwrap();
            }
        }
    }
    assert!(differs > 0, "tp_gate now keeps -0.0: drop the tolerance");
}
