//! (b) Structure-aware mutation of a valid package: one to four header
//! fields, section entries or table-record fields set to chosen values,
//! checksums re-sealed, then every task opened and run on fixed inputs.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use taskpath_fuzz::exercise::{aligned, exercise};
use taskpath_fuzz::{load, mutate, Seed, BASES};
use taskpath_runtime::Model;

static SEEDS: LazyLock<Vec<Seed>> = LazyLock::new(|| BASES.iter().map(|n| load(n)).collect());

/// Base picked by the selector's low 3 bits: the small packages (fast
/// executions) three times in four, else the reference model's f32, int4
/// or mixed-precision package (bits 3-4).
fn pick(sel: u8) -> usize {
    match sel & 7 {
        0..=3 => 0,
        4 | 5 => 1,
        _ => 2 + usize::from(sel >> 3 & 3) % 3,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, program)) = data.split_first() else {
        return;
    };
    let seed = &SEEDS[pick(sel)];
    let bytes = mutate::apply(seed.bytes.as_slice(), &seed.fields, program);
    let a = aligned(&bytes);
    match Model::from_bytes(a.as_slice()) {
        Ok(m) => {
            exercise(&m, sel & 0x80 == 0);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
