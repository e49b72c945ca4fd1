//! Shared test fixtures: small random models packed in any weight format.

#![allow(dead_code)]

use taskpath_checkpoint::random::{random_checkpoint, RandomSpec};
use taskpath_checkpoint::Checkpoint;
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, WeightFormat};

/// A small two-stage model; `rank` 0 stores every matrix full.
pub fn checkpoint(rank: usize) -> Checkpoint {
    let mut spec = RandomSpec::small(64, 4, 5, 2, 2);
    spec.ffn_hidden = 96;
    spec.rank = rank;
    random_checkpoint(&spec, 8)
}

/// `ck` packed with expert matrices in `format`, in page-aligned memory.
pub fn packed(ck: &Checkpoint, format: WeightFormat) -> AlignedArena {
    let opts = PackOptions {
        quant: (format != WeightFormat::F32).then_some(format),
        ..Default::default()
    };
    AlignedArena::from_bytes(&pack(ck, &opts).expect("pack"))
}
