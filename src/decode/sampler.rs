//! Choosing a token from logits: greedy, or temperature + top-k + top-p with a seeded RNG.
//!
//! One implementation for every backend, so two backends that compute the
//! same logits also choose the same tokens.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::Sampling;

/// A seeded token sampler.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for these settings, seeded with `sampling.seed`.
    pub(crate) fn new(sampling: Sampling) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(sampling.seed);
        Sampler { sampling, rng }
    }

    /// Whether it always picks the most likely token.
    pub(crate) fn is_greedy(&self) -> bool {
        self.sampling.is_greedy()
    }

    /// Picks a token id. Logits of −∞ (masked by a constraint) are never picked.
    /// Returns `None` only when every logit is −∞ or NaN.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        if self.sampling.is_greedy() {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let top_k = self.sampling.top_k;
        if top_k > 0 && top_k < candidates.len() {
            candidates.select_nth_unstable_by(top_k - 1, by_logit_desc);
            candidates.truncate(top_k);
        }
        candidates.sort_unstable_by(by_logit_desc);

        let max = candidates[0].1;
        let temperature = self.sampling.temperature;
        let mut weights: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| f64::from((l - max) / temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        if self.sampling.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = weights.len();
            for (i, w) in weights.iter().enumerate() {
                cumulative += w / total;
                if cumulative >= f64::from(self.sampling.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            weights.truncate(keep);
        }
        let total: f64 = weights.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            draw -= w;
            if draw <= 0.0 {
                return Some(candidates[i].0);
            }
        }
        Some(candidates[weights.len() - 1].0)
    }
}

/// The id of the largest finite logit (the lowest id on ties).
pub(crate) fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(u32, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i as u32, l));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_p,
            top_k,
            seed,
        }
    }

    #[test]
    fn greedy_takes_the_largest_finite_logit() {
        let mut s = Sampler::new(Sampling::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, f32::NEG_INFINITY, 2.0]), Some(1));
        assert_eq!(s.sample(&[f32::NEG_INFINITY, f32::NAN]), None);
    }

    #[test]
    fn masked_tokens_are_never_sampled() {
        let mut s = Sampler::new(sampling(5.0, 0, 1.0, 7));
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        for _ in 0..200 {
            let t = s.sample(&logits).unwrap();
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_repeats() {
        let logits = [0.5, 2.0, 1.0, 1.9];
        let mut s = Sampler::new(sampling(1.0, 1, 1.0, 3));
        assert!((0..50).all(|_| s.sample(&logits) == Some(1)));
        let run = |seed| {
            let mut s = Sampler::new(sampling(1.0, 0, 0.9, seed));
            (0..32)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }
}
