//! A bare-metal Cortex-M4F image running Taskpath without std or a heap.
//!
//! The package is linked into flash as a 16-byte aligned byte array
//! (`include_bytes!` of `$TASKPATH_FIRMWARE_PACKAGE`); the arena is a static
//! array in RAM (.bss). `main` validates the package in place, then for the
//! first two tasks creates a session in the arena and runs it on the same
//! deterministic inputs as examples/firmware-c, and prints each output's f32
//! bits over semihosting: `out firmware <task> <k> 0x<bits>`, after
//! `inputs firmware <task> <len>...` (scripts/nostd-build.sh runs it under
//! qemu-system-arm and compares the bits with `taskpath run` on the host).
//!
//! With `--features baseline` the runtime is not called: the difference in
//! section sizes between the two images is what the runtime costs.
//!
//! With `--features signed` the package is opened with
//! `Model::from_bytes_verified` and the public key of
//! `$TASKPATH_FIRMWARE_PUBKEY` (scripts/nostd-build.sh: the TEST-ONLY key in
//! firmware/keys/), timed with SysTick on the core clock:
//! `verify firmware: signature ok, T ticks` (SysTick reference clock) (plus a check that another key
//! is refused with `KeyMismatch`).
#![no_std]
#![no_main]

use core::fmt::Write;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio};

/// Arena bytes reserved for a session (the largest task of the embedded
/// package must fit; `taskpath inspect` prints each task's need).
const ARENA_BYTES: usize = 16 * 1024;
/// Input values reserved per modality.
const MAX_INPUT: usize = 256;
/// Modalities a task may take here.
const MAX_INPUTS: usize = 4;
/// Outputs a task may have here.
#[cfg(not(feature = "baseline"))]
const MAX_OUTPUTS: usize = 64;

#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

/// The package, in flash, aligned as `Model::from_bytes` needs.
#[cfg(not(feature = "baseline"))]
static PACKAGE: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("TASKPATH_FIRMWARE_PACKAGE")));

/// The ed25519 public key the embedded package must be signed by.
#[cfg(feature = "signed")]
const PUBLIC_KEY: [u8; 32] = include!(concat!(env!("OUT_DIR"), "/public_key.rs"));

/// SysTick wraps (every 2^24 core-clock ticks) while timing the check.
#[cfg(feature = "signed")]
static WRAPS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

#[cfg(feature = "signed")]
#[cortex_m_rt::exception]
fn SysTick() {
    WRAPS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// Opens the package with its signature checked, timing the open with
/// SysTick on its reference clock (1 MHz on qemu's MPS2 boards; counting
/// down from 2^24 - 1, wraps counted). The core clock wrapped unseen under
/// qemu, so the slower reference clock is used: no wrap for 16 s.
#[cfg(feature = "signed")]
fn open_verified(out: &mut Out) -> Option<taskpath_runtime::Model<'static>> {
    use cortex_m::peripheral::syst::SystClkSource;
    use core::sync::atomic::Ordering;
    use taskpath_runtime::{Error, Model};

    // Another key first (no hashing: the record names the signer).
    let mut other = PUBLIC_KEY;
    other[0] ^= 1;
    match Model::from_bytes_verified(&PACKAGE.0, &other) {
        Err(Error::KeyMismatch { .. }) | Err(Error::InvalidKey) => {}
        Ok(_) => {
            let _ = writeln!(out, "verify firmware: a package signed by another key was accepted");
            return None;
        }
        Err(e) => {
            let _ = writeln!(out, "verify firmware: another key gave the wrong error: {e}");
            return None;
        }
    }
    let mut p = cortex_m::Peripherals::take()?;
    p.SYST.set_clock_source(SystClkSource::External);
    p.SYST.set_reload(0x00FF_FFFF);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();
    // The cleared counter reloads to 2^24 - 1 on its first tick: start
    // after that, so the reload is not taken for a wrap.
    while cortex_m::peripheral::SYST::get_current() == 0 {}
    WRAPS.store(0, Ordering::Relaxed);
    let start = cortex_m::peripheral::SYST::get_current();
    let model = Model::from_bytes_verified(&PACKAGE.0, &PUBLIC_KEY);
    let end = cortex_m::peripheral::SYST::get_current();
    p.SYST.disable_counter();
    let wraps = WRAPS.load(Ordering::Relaxed);
    let ticks = (i64::from(wraps) << 24) + i64::from(start) - i64::from(end);
    match model {
        Ok(m) => {
            let _ = writeln!(out, "verify firmware: signature ok, {ticks} ticks");
            Some(m)
        }
        Err(e) => {
            let _ = writeln!(out, "verify firmware: {e}");
            None
        }
    }
}

/// Same formula as examples/firmware-c: small dyadic values, exact in f32.
fn input_value(task: usize, input: usize, j: usize) -> f32 {
    let v = ((j * 7 + input * 13 + task * 5) % 17) as i32 - 8;
    v as f32 * 0.125
}

struct Out(Option<hio::HostStream>);

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        match &mut self.0 {
            Some(h) => h.write_all(s.as_bytes()).map_err(|_| core::fmt::Error),
            None => Ok(()),
        }
    }
}

#[entry]
fn main() -> ! {
    static mut ARENA: Aligned<[u8; ARENA_BYTES]> = Aligned([0; ARENA_BYTES]);
    static mut INPUTS: [[f32; MAX_INPUT]; MAX_INPUTS] = [[0.0; MAX_INPUT]; MAX_INPUTS];
    let mut out = Out(hio::hstdout().ok());
    let ok = run(&mut out, &mut ARENA.0, INPUTS);
    let _ = writeln!(out, "{}", if ok { "ok" } else { "FAILED" });
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}

#[cfg(feature = "baseline")]
fn run(out: &mut Out, arena: &mut [u8], inputs: &mut [[f32; MAX_INPUT]; MAX_INPUTS]) -> bool {
    // Touch the same memory and print in the same way, without the runtime.
    inputs[0][0] = input_value(0, 0, 0);
    arena[0] = 1;
    let bits = core::hint::black_box(inputs[0][0]).to_bits();
    writeln!(out, "baseline {} 0x{bits:08x}", arena.len()).is_ok()
}

#[cfg(not(feature = "baseline"))]
fn run(out: &mut Out, arena: &mut [u8], inputs: &mut [[f32; MAX_INPUT]; MAX_INPUTS]) -> bool {
    #[cfg(not(feature = "signed"))]
    use taskpath_runtime::Model;
    use taskpath_runtime::Session;

    #[cfg(feature = "signed")]
    let Some(model) = open_verified(out) else {
        return false;
    };
    #[cfg(not(feature = "signed"))]
    let model = match Model::from_bytes(&PACKAGE.0) {
        Ok(m) => m,
        Err(e) => {
            let _ = writeln!(out, "open failed: {e}");
            return false;
        }
    };
    let tasks = model.task_count().min(2);
    let _ = writeln!(
        out,
        "package {} bytes, {} tasks",
        PACKAGE.0.len(),
        model.task_count()
    );
    for t in 0..tasks {
        let info = match model.task(t) {
            Ok(i) => i,
            Err(e) => {
                let _ = writeln!(out, "task {t}: {e}");
                return false;
            }
        };
        let mut n = 0;
        for (i, m) in info.modalities().enumerate() {
            let Some((_, l, f)) = model.modality(m) else {
                return false;
            };
            if i >= MAX_INPUTS || l * f > MAX_INPUT {
                let _ = writeln!(out, "task {}: inputs too large for this image", info.name);
                return false;
            }
            for (j, x) in inputs[i][..l * f].iter_mut().enumerate() {
                *x = input_value(t, i, j);
            }
            n = i + 1;
        }
        let lens: [usize; MAX_INPUTS] = core::array::from_fn(|i| {
            info.modalities()
                .nth(i)
                .and_then(|m| model.modality(m))
                .map_or(0, |(_, l, f)| l * f)
        });
        let xs: [&[f32]; MAX_INPUTS] = core::array::from_fn(|i| &inputs[i][..lens[i]]);
        let _ = write!(out, "inputs firmware {}", info.name);
        for x in &xs[..n] {
            let _ = write!(out, " {}", x.len());
        }
        let _ = writeln!(out);
        let mut logits = [0f32; MAX_OUTPUTS];
        if info.outputs > MAX_OUTPUTS {
            return false;
        }
        let mut session = match Session::new(&model, t, arena) {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out, "task {}: {e}", info.name);
                return false;
            }
        };
        let stats = match session.run(&xs[..n], &mut logits[..info.outputs]) {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out, "task {}: {e}", info.name);
                return false;
            }
        };
        for (k, y) in logits[..info.outputs].iter().enumerate() {
            let _ = writeln!(out, "out firmware {} {k} 0x{:08x}", info.name, y.to_bits());
        }
        let _ = writeln!(
            out,
            "stats firmware {}: arena {} bytes, ops {}, expert components {}, weight bytes {}",
            info.name, info.arena_bytes, stats.ops, stats.expert_components, stats.weight_bytes
        );
    }
    true
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if let Ok(mut h) = hio::hstdout() {
        let _ = writeln!(h, "panic: {info}");
    }
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
