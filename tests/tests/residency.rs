//! Expert residency under a RAM budget: bit-identical outputs, the budget is
//! never exceeded, and a budget below one expert is refused up front.

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_format::records::blob_kind;
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Error, Model, ResidencyCache, Session};

#[test]
fn budgets_give_identical_outputs_and_hold_no_more_than_the_budget() {
    let ck = random_checkpoint(&RandomSpec::reference(), 31);
    let bytes = AlignedArena::from_bytes(&pack(&ck, &PackOptions::default()).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let expert_bytes: usize = (0..model.blob_count() as u32)
        .filter_map(|i| model.blob(i))
        .filter(|b| b.rec.kind == blob_kind::EXPERT)
        .map(|b| b.bytes.len())
        .sum();
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
    let need = ResidencyCache::slot_bytes(&model);
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
    assert_eq!(cache.slots(), 1);
    // With one slot nothing can be pinned: the last slot must stay free.
    let expert = (0..model.blob_count() as u32)
        .find(|&i| model.blob(i).unwrap().rec.kind == blob_kind::EXPERT)
        .unwrap();
    assert!(matches!(
        cache.pin(&model, expert),
        Err(Error::BudgetTooSmall { .. })
    ));
}
