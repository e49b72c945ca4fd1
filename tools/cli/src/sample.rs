//! Next-token sampling from logits: greedy, or temperature with top-k and
//! top-p (nucleus) truncation, seeded. The same order of filters as
//! llama.cpp's default chain (top-k, top-p, temperature, draw).

use anyhow::{ensure, Result};
use taskpath_checkpoint::SplitMix64;

/// Sampling settings (`temp <= 0`: greedy).
#[derive(Clone, Copy, Debug)]
pub struct SamplerSettings {
    /// Temperature; 0 or less picks the largest logit.
    pub temp: f32,
    /// Keep the `top_k` largest logits (0: all).
    pub top_k: usize,
    /// Keep the smallest set of the largest probabilities summing to at
    /// least `top_p` (1: all).
    pub top_p: f32,
    /// Random seed.
    pub seed: u64,
}

/// A seeded sampler; allocates its candidate buffer once.
#[derive(Debug)]
pub struct Sampler {
    s: SamplerSettings,
    rng: SplitMix64,
    order: Vec<u32>,
    probs: Vec<f64>,
}

impl Sampler {
    /// A sampler for `vocab` logits.
    pub fn new(s: SamplerSettings, vocab: usize) -> Result<Self> {
        ensure!(s.temp.is_finite(), "--temp must be a finite number");
        ensure!(
            s.top_p > 0.0 && s.top_p <= 1.0,
            "--top-p must be in (0, 1], got {}",
            s.top_p
        );
        Ok(Self {
            s,
            rng: SplitMix64::new(s.seed),
            order: Vec::with_capacity(vocab),
            probs: Vec::with_capacity(vocab),
        })
    }

    /// The next token. Fails on a non-finite logit.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        ensure!(!logits.is_empty(), "no logits to sample from");
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            anyhow::bail!("logit {i} is {} (not finite)", logits[i]);
        }
        if self.s.temp <= 0.0 || self.s.top_k == 1 {
            return Ok(argmax(logits));
        }
        self.order.clear();
        self.order.extend(0..logits.len() as u32);
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let k = if self.s.top_k == 0 {
            logits.len()
        } else {
            self.s.top_k.min(logits.len())
        };
        if k < self.order.len() {
            self.order.select_nth_unstable_by(k - 1, by_logit);
            self.order.truncate(k);
        }
        self.order.sort_unstable_by(by_logit);
        let max = f64::from(logits[self.order[0] as usize]);
        let t = f64::from(self.s.temp);
        self.probs.clear();
        self.probs.extend(
            self.order
                .iter()
                .map(|&i| ((f64::from(logits[i as usize]) - max) / t).exp()),
        );
        let total: f64 = self.probs.iter().sum();
        // Nucleus: the shortest prefix whose mass reaches top_p.
        let mut keep = self.probs.len();
        if self.s.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in self.probs.iter().enumerate() {
                acc += p / total;
                if acc >= f64::from(self.s.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f64 = self.probs[..keep].iter().sum();
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
        let mut acc = 0.0;
        for (i, p) in self.probs[..keep].iter().enumerate() {
            acc += p;
            if u < acc {
                return Ok(self.order[i]);
            }
        }
        Ok(self.order[keep - 1])
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(temp: f32, top_k: usize, top_p: f32) -> SamplerSettings {
        SamplerSettings {
            temp,
            top_k,
            top_p,
            seed: 7,
        }
    }

    fn logits() -> Vec<f32> {
        (0..50)
            .map(|i| ((i * 37) % 50) as f32 * 0.1 - 2.0)
            .collect()
    }

    #[test]
    fn greedy_settings_pick_the_argmax() {
        let l = logits();
        let want = argmax(&l);
        assert_eq!(l[want as usize], l.iter().copied().fold(f32::MIN, f32::max));
        for s in [
            settings(0.0, 40, 0.95),
            settings(1.0, 1, 1.0),
            settings(1.0, 0, 1e-6),
        ] {
            let mut sm = Sampler::new(s, l.len()).unwrap();
            for _ in 0..20 {
                assert_eq!(sm.sample(&l).unwrap(), want, "{s:?}");
            }
        }
    }

    #[test]
    fn draws_follow_the_softmax_within_sampling_error() {
        // p = (1, 2, 1) / 4 at temperature 1.
        let l = [0.0f32, 2f32.ln(), 0.0];
        let mut sm = Sampler::new(settings(1.0, 0, 1.0), 3).unwrap();
        let n = 40_000;
        let mut c = [0usize; 3];
        for _ in 0..n {
            c[sm.sample(&l).unwrap() as usize] += 1;
        }
        for (got, p) in c.iter().zip([0.25, 0.5, 0.25]) {
            let f = *got as f64 / n as f64;
            // 5 standard deviations of a binomial share.
            assert!(
                (f - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn top_k_and_top_p_never_draw_outside_their_sets() {
        let l = logits();
        let mut sorted: Vec<u32> = (0..l.len() as u32).collect();
        sorted.sort_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]));
        let mut sm = Sampler::new(settings(2.0, 5, 1.0), l.len()).unwrap();
        for _ in 0..2000 {
            assert!(sorted[..5].contains(&sm.sample(&l).unwrap()));
        }
        // Probabilities at temperature 2: the nucleus of 0.5 is a prefix.
        let p: Vec<f64> = sorted
            .iter()
            .map(|&i| (f64::from(l[i as usize]) / 2.0).exp())
            .collect();
        let total: f64 = p.iter().sum();
        let mut acc = 0.0;
        let n = p.iter().position(|x| {
            acc += x / total;
            acc >= 0.5
        });
        let n = n.unwrap() + 1;
        let mut sm = Sampler::new(settings(2.0, 0, 0.5), l.len()).unwrap();
        for _ in 0..2000 {
            assert!(sorted[..n].contains(&sm.sample(&l).unwrap()));
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let l = logits();
        let draw = |seed| {
            let mut s = settings(1.0, 0, 1.0);
            s.seed = seed;
            let mut sm = Sampler::new(s, l.len()).unwrap();
            (0..64).map(|_| sm.sample(&l).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn non_finite_logits_and_bad_settings_are_errors() {
        let mut sm = Sampler::new(settings(1.0, 0, 1.0), 3).unwrap();
        let e = sm.sample(&[0.0, f32::NAN, 1.0]).unwrap_err().to_string();
        assert!(e.contains("logit 1"), "{e}");
        assert!(Sampler::new(settings(1.0, 0, 0.0), 3).is_err());
        assert!(Sampler::new(settings(f32::INFINITY, 0, 1.0), 3).is_err());
    }
}
