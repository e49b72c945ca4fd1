//! (c) Delta chains: a valid base and a structure-aware mutation of one of
//! its delta packs (optionally also out of order, repeated or missing), then
//! every task of the chain opened and run.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use taskpath_fuzz::exercise::{aligned, exercise};
use taskpath_fuzz::{load, mutate, Seed, CHAINS};
use taskpath_runtime::{AlignedArena, Model};

static CH: LazyLock<Vec<Vec<Seed>>> = LazyLock::new(|| {
    CHAINS
        .iter()
        .map(|c| c.iter().map(|n| load(n)).collect())
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let [sel, which, order, program @ ..] = data else {
        return;
    };
    // The small chain three times in four: its executions are much faster.
    let chain = &CH[usize::from(sel & 3 == 3)];
    let target = 1 + usize::from(*which) % (chain.len() - 1);
    let seed = &chain[target];
    let mutated = aligned(&mutate::apply(seed.bytes.as_slice(), &seed.fields, program));
    let mut deltas: Vec<&AlignedArena> = chain[1..].iter().map(|s| &s.bytes).collect();
    deltas[target - 1] = &mutated;
    match order & 3 {
        1 => deltas.reverse(),
        2 => deltas.push(&mutated),
        3 => {
            deltas.remove(0);
        }
        _ => {}
    }
    let mut model = match Model::from_bytes(chain[0].bytes.as_slice()) {
        Ok(m) => m,
        Err(e) => panic!("seed base {} does not open: {e}", chain[0].name),
    };
    for d in deltas {
        model = match model.with_delta(d.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
    }
    exercise(&model, order & 4 == 0);
});
