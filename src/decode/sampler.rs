//! Choosing a token from logits: greedy, or temperature + top-k + top-p with a seeded RNG.
//!
//! One implementation for every backend, so two backends that compute the
//! same logits also choose the same tokens.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::Sampling;
use crate::prompt::token_mask::argmax;

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
        let best = argmax(logits)?;
        if self.sampling.is_greedy() {
            return Some(best);
        }
        let max = logits[best as usize];
        let temperature = self.sampling.temperature;
        // Tokens this far below the likeliest weigh under e^-40 of it: all
        // of a 262k vocabulary's together under 2e-12 of the total, so
        // leaving them out changes a draw only at those odds, and spares
        // them the exponential: most of a real model's vocabulary.
        let floor = max - NEGLIGIBLE_LOGIT_GAP * temperature;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l >= floor && l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let top_k = self.sampling.top_k;
        if top_k > 0 && top_k < candidates.len() {
            candidates.select_nth_unstable_by(top_k - 1, by_logit_desc);
            candidates.truncate(top_k);
            // In order, so that a seed draws the same tokens whatever
            // order the selection left them in.
            candidates.sort_unstable_by(by_logit_desc);
        }
        let weight = |logit: f32| f64::from((logit - max) / temperature).exp();
        let top_p = f64::from(self.sampling.top_p);
        // Only the nucleus needs the candidates in order; a plain draw
        // does not (sorting a 150k vocabulary took 4 ms a token).
        if top_p < 1.0 {
            let total: f64 = candidates.iter().map(|&(_, l)| weight(l)).sum();
            let kept = nucleus(&mut candidates, weight, total, top_p);
            candidates.truncate(kept);
        }
        let weights: Vec<f64> = candidates.iter().map(|&(_, l)| weight(l)).collect();
        let total: f64 = weights.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            draw -= w;
            if draw <= 0.0 {
                return Some(candidates[i].0);
            }
        }
        candidates.get(weights.len().checked_sub(1)?).map(|c| c.0)
    }
}

/// Likelier first; the lower id first among equals.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Puts the nucleus first, likeliest first, and returns its length: the
/// fewest likeliest candidates whose weights reach `top_p` of `total`.
/// Rather than sorting every candidate, it grows a head of the likeliest
/// until the head holds that mass (a real model's nucleus is a few dozen
/// tokens of 150k), then sorts the head alone.
fn nucleus(
    candidates: &mut [(u32, f32)],
    weight: impl Fn(f32) -> f64,
    total: f64,
    top_p: f64,
) -> usize {
    let mut head = NUCLEUS_FIRST_HEAD.min(candidates.len());
    loop {
        if head < candidates.len() {
            candidates.select_nth_unstable_by(head.saturating_sub(1), by_logit_desc);
        }
        let mass: f64 = candidates[..head].iter().map(|&(_, l)| weight(l)).sum();
        if mass >= top_p * total || head == candidates.len() {
            candidates[..head].sort_unstable_by(by_logit_desc);
            let mut cumulative = 0.0;
            for (i, &(_, l)) in candidates[..head].iter().enumerate() {
                cumulative += weight(l) / total;
                if cumulative >= top_p {
                    return i + 1;
                }
            }
            // The running sum rounds differently from `mass`: short of
            // `top_p` in the head, the nucleus goes on past it.
            if head == candidates.len() {
                return head;
            }
        }
        head = (head * 8).min(candidates.len());
    }
}

/// The likeliest candidates [`nucleus`] looks among first.
const NUCLEUS_FIRST_HEAD: usize = 64;

/// How far below the likeliest token's logit, in units of temperature, a
/// token's weight (under e^-40) is left out of a draw.
const NEGLIGIBLE_LOGIT_GAP: f32 = 40.0;

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
        // A NaN temperature (no range check on the way) is greedy too.
        let mut s = Sampler::new(sampling(f32::NAN, 0, 1.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), Some(1));
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

    /// Draws follow the softmax over the temperature, renormalised within
    /// the top k or the nucleus (the smallest set of the likeliest tokens
    /// holding `top_p` of the mass) when one is set.
    #[test]
    fn draws_follow_the_softmax() {
        let logits = [0.0, 1.0, 2.0, f32::NEG_INFINITY, 0.5, 1.5];
        let temperature = 0.8;
        let weight = |l: f32| f64::from((l - 2.0) / temperature).exp();
        let total: f64 = logits.iter().map(|&l| weight(l)).sum();
        let p: Vec<f64> = logits.iter().map(|&l| weight(l) / total).collect();
        // Ids by likelihood: 2, 5, 1, 4, 0 (p ≈ 0.49, 0.26, 0.14, 0.07, 0.04; 3 never).
        let within = |ids: &[usize]| -> Vec<f64> {
            let mass: f64 = ids.iter().map(|&id| p[id]).sum();
            (0..logits.len())
                .map(|id| if ids.contains(&id) { p[id] / mass } else { 0.0 })
                .collect()
        };
        let nucleus = within(&[2, 5, 1]); // 0.49 + 0.26 < 0.8 ≤ … + 0.14
        for (top_k, top_p, expected) in [
            (0, 1.0, p.clone()),
            (2, 1.0, within(&[2, 5])),
            (0, 0.8, nucleus),
            // The nucleus of the top 3, renormalised: 0.55 + 0.29 ≥ 0.8.
            (3, 0.8, within(&[2, 5])),
        ] {
            let mut sampler = Sampler::new(sampling(temperature, top_k, top_p, 5));
            let draws = 40_000;
            let mut counts = [0usize; 6];
            for _ in 0..draws {
                counts[sampler.sample(&logits).unwrap() as usize] += 1;
            }
            for (id, (&count, &want)) in counts.iter().zip(&expected).enumerate() {
                let got = count as f64 / draws as f64;
                assert!(
                    (got - want).abs() < 0.01,
                    "top_k {top_k} top_p {top_p}: id {id} drawn {got:.3}, expected {want:.3}"
                );
            }
        }
    }

    /// `nucleus` on `logits` (weights `e^(l − max)`) against a full sort:
    /// the same ids in the same order.
    fn assert_nucleus_as_sorted(logits: &[f32], top_p: impl FnOnce(&[(u32, f32)], f64) -> f64) {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weight = |l: f32| f64::from(l - max).exp();
        let total: f64 = logits.iter().map(|&l| weight(l)).sum();
        let mut candidates: Vec<(u32, f32)> = (0..).zip(logits.iter().copied()).collect();
        let top_p = top_p(&candidates, total);
        let mut sorted = candidates.clone();
        sorted.sort_unstable_by(by_logit_desc);
        let mut cumulative = 0.0;
        let expected = sorted
            .iter()
            .position(|&(_, l)| {
                cumulative += weight(l) / total;
                cumulative >= top_p
            })
            .map_or(sorted.len(), |i| i + 1);
        let kept = nucleus(&mut candidates, weight, total, top_p);
        assert_eq!(
            &candidates[..kept],
            &sorted[..expected],
            "{} logits, top_p {top_p}",
            logits.len()
        );
    }

    /// The nucleus found by growing a head is the one a full sort gives:
    /// the same ids in the same order, from a few to thousands of them.
    #[test]
    fn the_nucleus_is_what_sorting_everything_gives() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (count, spread) in [(10, 1.0), (5000, 0.5), (5000, 8.0), (20_000, 0.05)] {
            let logits: Vec<f32> = (0..count)
                .map(|_| (rng.random::<f32>() * spread).round() / 4.0)
                .collect();
            for top_p in [0.05, 0.5, 0.9, 0.999] {
                assert_nucleus_as_sorted(&logits, |_, _| top_p);
            }
        }
    }

    /// With `top_p` exactly the mass of the first head looked at, the
    /// head's sum and the running sum round differently: the nucleus
    /// still ends where a full sort's does.
    #[test]
    fn a_nucleus_at_the_heads_mass_ends_where_sorting_ends() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..300 {
            let logits: Vec<f32> = (0..200).map(|_| rng.random::<f32>() * 3.0).collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_nucleus_as_sorted(&logits, |candidates, total| {
                let mut head = candidates.to_vec();
                head.select_nth_unstable_by(NUCLEUS_FIRST_HEAD - 1, by_logit_desc);
                let mass: f64 = head[..NUCLEUS_FIRST_HEAD]
                    .iter()
                    .map(|&(_, l)| f64::from(l - max).exp())
                    .sum();
                mass / total
            });
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
