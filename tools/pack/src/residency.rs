//! Offline residency simulation: LRU with pinning (the runtime's policy),
//! LFU with decay, two layer-aware policies for decoders (layer-cyclic and
//! layer-LFU) and Belady's optimal policy, over a recorded trace of
//! expert-blob fetches.

use std::collections::HashMap;

/// Hits and misses of one simulated policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimResult {
    /// Fetches served from a resident slot.
    pub hits: u64,
    /// Fetches that had to load the blob.
    pub misses: u64,
}

impl SimResult {
    /// hits / (hits + misses).
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

/// LRU over `slots` slots where `pinned` blobs are loaded first (those loads
/// are not counted) and never evicted: the policy of `ResidencyCache`.
pub fn simulate_lru(trace: &[u32], slots: usize, pinned: &[u32]) -> SimResult {
    assert!(
        pinned.len() < slots.max(1),
        "at least one slot stays unpinned"
    );
    // (blob, last use, pinned); empty slots are absent.
    let mut resident: Vec<(u32, u64, bool)> = pinned.iter().map(|&b| (b, 0, true)).collect();
    let mut r = SimResult::default();
    for (tick, &b) in trace.iter().enumerate() {
        let tick = tick as u64 + 1;
        if let Some(s) = resident.iter_mut().find(|s| s.0 == b) {
            s.1 = tick;
            r.hits += 1;
            continue;
        }
        r.misses += 1;
        if resident.len() < slots {
            resident.push((b, tick, false));
        } else if let Some(v) = resident.iter_mut().filter(|s| !s.2).min_by_key(|s| s.1) {
            *v = (b, tick, false);
        }
    }
    r
}

/// LFU with exponential decay over `slots` slots: every blob (resident or
/// not) keeps a use count that halves every `half_life` fetches; a miss with
/// every slot full evicts the resident blob with the smallest decayed count
/// (ties: the least recently used). Counts outlive eviction, so a blob that
/// was hot a moment ago wins its slot back quickly.
pub fn simulate_lfu(trace: &[u32], slots: usize, half_life: f64) -> SimResult {
    // One layer, no layer weight, nothing protected: layer-LFU is LFU.
    simulate_layer(
        trace,
        slots,
        half_life,
        1,
        |_| 0,
        LayerRank::Lfu { weight: 0.0 },
        |_, _| false,
    )
}

/// How a layer-aware policy ranks the resident blobs of other layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerRank {
    /// Layer-cyclic: evict from the layer whose next turn is furthest away
    /// (the one that ran just before the current one, then the one before
    /// that, ...; the current layer's blobs last), the lowest decayed count
    /// first within that layer.
    Cyclic,
    /// Layer-LFU: evict the smallest decayed count weighted by
    /// `1 + weight / d`, where `d` is the number of layer steps until the
    /// blob's layer runs next (the current layer's blobs: the number of
    /// layers): a blob whose layer runs soon needs a lower count to stay.
    Lfu {
        /// Weight of the layer distance (0: plain LFU).
        weight: f64,
    },
}

/// A layer-aware policy for a decoder whose MoE layers run in a fixed cycle
/// (0, 1, ..., `layers - 1`, 0, ...): `layer_of(blob)` is the layer of an
/// expert blob (`< layers`), and the layer being fetched for is the layer of
/// the blob fetched now, so the distance to each layer's next turn is known
/// from the model's structure alone (no look at future data). Counts decay
/// as in [`simulate_lfu`] (halving every `half_life` fetches, surviving
/// eviction); ties go to the least recently used. `protect(i, blob)` says
/// whether a resident blob must not be evicted by the miss at fetch `i`
/// (what a routing predictor expects soon; `|_, _| false` for none): the
/// victim is taken from the unprotected blobs, or from all when every
/// resident blob is protected.
pub fn simulate_layer(
    trace: &[u32],
    slots: usize,
    half_life: f64,
    layers: usize,
    layer_of: impl Fn(u32) -> usize,
    rank: LayerRank,
    protect: impl Fn(usize, u32) -> bool,
) -> SimResult {
    let decay = 0.5f64.powf(1.0 / half_life.max(1e-9));
    let mut count: HashMap<u32, (f64, u64)> = HashMap::new();
    let at = |c: (f64, u64), now: u64| c.0 * decay.powf((now - c.1) as f64);
    let layers = layers.max(1);
    // (blob, last use)
    let mut resident: Vec<(u32, u64)> = Vec::new();
    let mut r = SimResult::default();
    for (tick, &b) in trace.iter().enumerate() {
        let now = tick as u64 + 1;
        let c = count.get(&b).map_or(0.0, |&c| at(c, now));
        count.insert(b, (c + 1.0, now));
        if let Some(s) = resident.iter_mut().find(|s| s.0 == b) {
            s.1 = now;
            r.hits += 1;
            continue;
        }
        r.misses += 1;
        if resident.len() < slots {
            resident.push((b, now));
            continue;
        }
        let cur = layer_of(b) % layers;
        // Layer steps until the layer of `x` runs next (the current: `layers`).
        let dist = |x: u32| match (layer_of(x) % layers + layers - cur) % layers {
            0 => layers,
            d => d,
        };
        let key = |x: &(u32, u64)| -> (f64, f64, u64) {
            let c = at(count[&x.0], now);
            match rank {
                // Smallest key is evicted: the furthest layer first.
                LayerRank::Cyclic => {
                    let d = dist(x.0);
                    let order = if d == layers { 1.0 } else { -(d as f64) };
                    (order, c, x.1)
                }
                LayerRank::Lfu { weight } => (c * (1.0 + weight / dist(x.0) as f64), 0.0, x.1),
            }
        };
        let free = resident.iter().any(|x| !protect(tick, x.0));
        if let Some(v) = resident
            .iter_mut()
            .filter(|x| !free || !protect(tick, x.0))
            .min_by(|x, y| {
                let (a, b) = (key(x), key(y));
                a.0.total_cmp(&b.0)
                    .then(a.1.total_cmp(&b.1))
                    .then(a.2.cmp(&b.2))
            })
        {
            *v = (b, now);
        }
    }
    r
}

/// Belady's MIN: on a miss with every slot full, evict the blob whose next
/// use is farthest in the future. The upper bound of any policy.
pub fn simulate_belady(trace: &[u32], slots: usize) -> SimResult {
    let mut next_use = vec![usize::MAX; trace.len()];
    let mut last: HashMap<u32, usize> = HashMap::new();
    for i in (0..trace.len()).rev() {
        next_use[i] = last.get(&trace[i]).copied().unwrap_or(usize::MAX);
        last.insert(trace[i], i);
    }
    // blob -> its next use index
    let mut resident: HashMap<u32, usize> = HashMap::new();
    let mut r = SimResult::default();
    for (i, &b) in trace.iter().enumerate() {
        if resident.contains_key(&b) {
            r.hits += 1;
        } else {
            r.misses += 1;
            if resident.len() >= slots {
                let (&victim, _) = resident
                    .iter()
                    .max_by_key(|(blob, n)| (**n, **blob))
                    .expect("slots > 0");
                resident.remove(&victim);
            }
        }
        resident.insert(b, next_use[i]);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_traces() {
        // 3 slots, classic sequence: A B C D A B E A B C D E
        let t = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5];
        assert_eq!(simulate_belady(&t, 3), SimResult { hits: 5, misses: 7 });
        assert_eq!(
            simulate_lru(&t, 3, &[]),
            SimResult {
                hits: 2,
                misses: 10
            }
        );
        // Pinning the hottest blobs (1, 2) leaves one LRU slot.
        assert_eq!(
            simulate_lru(&t, 3, &[1, 2]),
            SimResult { hits: 6, misses: 6 }
        );
        for s in 1..6 {
            assert!(simulate_belady(&t, s).hits >= simulate_lru(&t, s, &[]).hits);
            assert!(simulate_belady(&t, s).hits >= simulate_lfu(&t, s, 4.0).hits);
        }
        // 1 1 1 2 3 1 with 2 slots: at 3, LRU evicts 1 (last used at tick 3,
        // before 2's tick 4) and misses it again; LFU evicts 2 (count 1 < 3).
        let t = [1, 1, 1, 2, 3, 1];
        assert_eq!(simulate_lru(&t, 2, &[]), SimResult { hits: 2, misses: 4 });
        assert_eq!(simulate_lfu(&t, 2, 100.0), SimResult { hits: 3, misses: 3 });
        // With a very short half-life LFU degenerates to recency order.
        assert_eq!(simulate_lfu(&t, 2, 1e-3), simulate_lru(&t, 2, &[]));
    }

    #[test]
    fn layer_policies_by_hand() {
        // 2 layers x 3 experts (layer 0: blobs 0 1 2, layer 1: blobs 3 4 5),
        // top-1, 2 slots; tokens route (0,3) (1,3) (0,4) (0,3).
        let t = [0, 3, 1, 3, 0, 4, 0, 3];
        let layer = |b: u32| (b / 3) as usize;
        let none = |_, _| false;
        let cyc = |t: &[u32]| simulate_layer(t, 2, 1e9, 2, layer, LayerRank::Cyclic, none);
        let lfu =
            |t: &[u32], w| simulate_layer(t, 2, 1e9, 2, layer, LayerRank::Lfu { weight: w }, none);
        // Layer-cyclic: 0 m, 3 m, 1 m: evicts layer 1's 3 (the other layer
        // goes before the current layer's 0) -> {0, 1}; 3 m: evicts 0 (count
        // 1 = 1's, 0 used earlier) -> {1, 3}; 0 m: evicts the other layer's
        // 3 -> {1, 0}; 4 m: evicts 1 (count 1 < 0's 2) -> {0, 4}; 0 hit;
        // 3 m: evicts 0 -> {4, 3}. 1 hit, 7 misses.
        assert_eq!(cyc(&t), SimResult { hits: 1, misses: 7 });
        // Layer-LFU, weight 1 (current layer d = 2: x1.5; other layer d = 1:
        // x2): 0 m, 3 m, 1 m: 0 -> 1.5, 3 -> 2: evicts 0 -> {3, 1}; 3 hit
        // (count 2); 0 m: 1 -> 1.5, 3 -> 4: evicts 1 -> {3, 0}; 4 m: 0 -> 2*2
        // = 4, 3 -> 2*1.5 = 3: evicts 3 -> {0, 4}; 0 hit; 3 m: 0 -> 3*2 = 6,
        // 4 -> 1.5: evicts 4 -> {0, 3}. 2 hits, 6 misses.
        assert_eq!(lfu(&t, 1.0), SimResult { hits: 2, misses: 6 });
        // Plain LFU on the same trace: 0 m, 3 m, 1 m (0, 3 count 1: evicts
        // the older 0) -> {3, 1}; 3 hit; 0 m (1: 1 < 3: 2) -> {3, 0}; 4 m
        // (0: 2, 3: 2, 0 newer: evicts 3) -> {0, 4}; 0 hit; 3 m (4: 1)
        // -> {0, 3}. 2 hits.
        assert_eq!(lfu(&t, 0.0), SimResult { hits: 2, misses: 6 });
        // Belady: evicts 0 at 1, 1 at 0, 3 at 4: 2 hits (3 and 0).
        assert_eq!(simulate_belady(&t, 2).hits, 2);
    }

    #[test]
    fn protected_blobs_are_not_evicted() {
        // One layer, 2 slots, 0 1 2 0: at 2 both residents have count 1 and
        // the older 0 goes; 0 then misses. Protecting 0 (a predictor that
        // knows it comes next) evicts 1 instead, and 0 hits. Protecting
        // every blob leaves the choice to the ranking again.
        let t = [0, 1, 2, 0];
        let run = |protect: &dyn Fn(usize, u32) -> bool| {
            simulate_layer(
                &t,
                2,
                1e9,
                1,
                |_| 0,
                LayerRank::Lfu { weight: 0.0 },
                protect,
            )
        };
        assert_eq!(run(&|_, _| false), SimResult { hits: 0, misses: 4 });
        assert_eq!(run(&|_, b| b == 0), SimResult { hits: 1, misses: 3 });
        assert_eq!(run(&|_, _| true), SimResult { hits: 0, misses: 4 });
        // The fetch index is the one of the miss being served.
        assert_eq!(
            run(&|i, b| i == 2 && b == 0),
            SimResult { hits: 1, misses: 3 }
        );
        assert_eq!(
            run(&|i, b| i == 1 && b == 0),
            SimResult { hits: 0, misses: 4 }
        );
    }
}
