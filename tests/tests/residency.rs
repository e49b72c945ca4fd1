//! Expert residency under a RAM budget: bit-identical outputs, the budget is
//! never exceeded, and a budget below one expert is refused up front.

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{cache_footprint, AlignedArena, Error, Model, ResidencyCache, Session};

#[test]
fn budgets_give_identical_outputs_and_hold_no_more_than_the_budget() {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let bytes = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let expert_bytes = model.expert_bytes();
    let mut rng = SplitMix64::new(4);
    let samples: Vec<(usize, Vec<Vec<f32>>)> = (0..40)
        .map(|i| {
            let t = i % model.task_count();
            (t, random_inputs(&ck.config, t, &mut rng))
        })
        .collect();
    let run_all = |cache: Option<&mut ResidencyCache<'_>>| -> Vec<Vec<f32>> {
        let mut cache = cache;
        samples
            .iter()
            .map(|(t, x)| {
                let info = model.task(*t).unwrap();
                let mut arena = AlignedArena::new(info.arena_bytes);
                let mut s = Session::new(&model, *t, arena.as_mut_slice()).unwrap();
                if let Some(c) = cache.as_deref_mut() {
                    s = s.with_blob_source(c).unwrap();
                }
                let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
                let mut out = vec![0f32; info.outputs];
                s.run(&refs, &mut out).unwrap();
                out
            })
            .collect()
    };
    let unbudgeted = run_all(None);
    let mut hit_rates = Vec::new();
    for frac in [0.25, 0.5, 1.0] {
        let budget = (expert_bytes as f64 * frac) as usize;
        let mut mem = AlignedArena::new(budget);
        let mut cache = ResidencyCache::new(&model, mem.as_mut_slice()).unwrap();
        let outs = run_all(Some(&mut cache));
        assert_eq!(outs, unbudgeted, "budget {frac}: outputs differ");
        let st = cache.stats();
        assert!(
            st.peak_resident_bytes as usize <= budget,
            "budget {frac}: peak {} > {budget}",
            st.peak_resident_bytes
        );
        assert!(cache.resident_bytes() <= budget);
        assert!(st.misses > 0);
        hit_rates.push(st.hits as f64 / (st.hits + st.misses) as f64);
    }
    assert!(
        hit_rates[0] <= hit_rates[1] && hit_rates[1] <= hit_rates[2],
        "{hit_rates:?}"
    );
    // At 100% nothing is ever evicted: every miss is a first touch.
    assert!(hit_rates[2] > 0.5, "{hit_rates:?}");
}

#[test]
fn a_budget_below_one_expert_is_refused_at_creation() {
    let ck = random_checkpoint(&RandomSpec::small(16, 2, 5, 2, 2), 3);
    let bytes = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let need = ResidencyCache::min_budget(&model);
    let mut mem = AlignedArena::new(need - 1);
    let e = ResidencyCache::new(&model, mem.as_mut_slice()).unwrap_err();
    assert_eq!(
        e,
        Error::BudgetTooSmall {
            need,
            have: need - 1
        }
    );
    assert!(e.to_string().contains("expert budget too small"), "{e}");
    let mut mem = AlignedArena::new(need);
    let mut cache = ResidencyCache::new(&model, mem.as_mut_slice()).unwrap();
    assert_eq!(cache.budget(), need);
    // At the minimum budget nothing can be pinned: room for the largest
    // blob must stay free.
    let expert = model.expert_blobs().next().unwrap().index;
    assert!(matches!(
        cache.pin(&model, expert),
        Err(Error::BudgetTooSmall { .. })
    ));
}

/// `Model::expert_blobs` against an independent walk of the blob table by
/// its records' kind.
#[test]
fn expert_blobs_are_the_expert_kind_blobs() {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let bytes = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let want: Vec<u32> = (0..model.blob_count() as u32)
        .filter(|&i| model.blob(i).unwrap().rec.kind == taskpath_format::records::blob_kind::EXPERT)
        .collect();
    let got: Vec<u32> = model.expert_blobs().map(|b| b.index).collect();
    assert_eq!(got, want);
    // N=5 experts x 3 stages.
    assert_eq!(got.len(), 15);
    let sum: usize = want
        .iter()
        .map(|&i| model.blob(i).unwrap().bytes.len())
        .sum();
    assert_eq!(model.expert_bytes(), sum);
    // The package's explicit (group, expert, component) index finds every
    // record, each pointing at its blob, and nothing past the group or stages.
    for j in 0..5 {
        for c in 0..3 {
            let e = model.expert(0, j, c).unwrap();
            let b = model.blob(e.blob).unwrap();
            assert_eq!(
                (
                    b.rec.group,
                    usize::from(b.rec.expert),
                    usize::from(b.rec.component)
                ),
                (0, j, c)
            );
            let block = model.component_block(0, c).unwrap();
            assert_eq!(model.expert_at(block.first_expert + j as u32), Some(e));
        }
    }
    assert!(model.expert(0, 5, 0).is_none() && model.expert(0, 0, 3).is_none());
    assert!(model.expert(1, 0, 0).is_none(), "group 1 does not exist");
    assert_eq!(model.components(0), 3);
}

/// Variable-size slots: later stages' low-rank components are smaller than
/// stage-1 ones, and the cache packs them by size, so a budget holds more
/// blobs than fixed slots of the largest blob would; the arena compacts
/// when the free bytes suffice but no gap does; outputs stay bit-identical.
#[test]
fn blobs_of_different_sizes_share_the_budget_by_size() {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let bytes = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let sizes: Vec<(u32, usize)> = model
        .expert_blobs()
        .map(|b| (b.index, cache_footprint(b.bytes.len())))
        .collect();
    let largest = ResidencyCache::min_budget(&model);
    let smallest = sizes.iter().map(|s| s.1).min().unwrap();
    assert!(smallest * 2 <= largest, "sizes {smallest}..{largest}");
    // Room for 2 fixed slots; the small blobs fit several more.
    let budget = 2 * largest + largest / 2;
    let mut mem = AlignedArena::new(budget);
    let mut cache = ResidencyCache::new(&model, mem.as_mut_slice()).unwrap();
    let mut small: Vec<u32> = sizes
        .iter()
        .filter(|s| s.1 == smallest)
        .map(|s| s.0)
        .collect();
    small.truncate(budget / smallest);
    for &b in &small {
        let got = taskpath_runtime::BlobSource::fetch(&mut cache, &model, b)
            .unwrap()
            .to_vec();
        assert_eq!(got, model.blob(b).unwrap().bytes);
    }
    assert_eq!(cache.resident_count(), small.len());
    assert!(cache.resident_count() > budget / largest);
    assert!(cache.used_bytes() <= budget);
    // Evicting every other small blob leaves gaps too narrow for a large one
    // (touch the others so they are the most recent), then load large blobs.
    let large: Vec<u32> = sizes
        .iter()
        .filter(|s| s.1 == largest)
        .map(|s| s.0)
        .collect();
    for round in 0..3 {
        for &b in small.iter().skip(round % 2).step_by(2) {
            taskpath_runtime::BlobSource::fetch(&mut cache, &model, b).unwrap();
        }
        for &b in &large[..2] {
            let got = taskpath_runtime::BlobSource::fetch(&mut cache, &model, b)
                .unwrap()
                .to_vec();
            assert_eq!(got, model.blob(b).unwrap().bytes);
        }
        assert!(cache.used_bytes() <= budget);
        // Every resident blob still holds its bytes after any compaction.
        let resident: Vec<u32> = cache.resident().collect();
        for b in resident {
            let got = taskpath_runtime::BlobSource::fetch(&mut cache, &model, b)
                .unwrap()
                .to_vec();
            assert_eq!(
                got,
                model.blob(b).unwrap().bytes,
                "blob {b} after round {round}"
            );
        }
    }
    assert!(cache.stats().compactions > 0, "{:?}", cache.stats());
    assert!(cache.stats().peak_resident_bytes as usize <= budget);
}
