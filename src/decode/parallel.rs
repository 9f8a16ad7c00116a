//! Choosing the tokens of many sequences after one batched pass, on several
//! threads: each sequence's grammar mask and sampler are its own, so the
//! work splits by sequence, and a step's token choice takes the time of the
//! slowest thread's share instead of the sum.

use std::thread;

use super::{Chosen, Decoder};
use crate::{Error, Result};

/// One sequence's share of a pass: its decoder, the draft read after its
/// token, and the logits rows of that token and each draft token.
pub(crate) struct Choice<'a> {
    pub(crate) decoder: &'a mut Decoder,
    pub(crate) draft: &'a [u32],
    pub(crate) rows: Vec<&'a [f32]>,
}

impl Choice<'_> {
    fn choose<'p>(self, piece: &(impl Fn(u32) -> &'p [u8] + Sync)) -> Result<Chosen> {
        let rows = self.rows;
        self.decoder.choose(
            self.draft,
            |row| rows.get(row).copied().unwrap_or_default(),
            piece,
        )
    }
}

/// [`Decoder::choose`] for every choice, on up to `threads` threads (the
/// calling one included); results in the order of `choices`.
pub(crate) fn choose_all<'p>(
    choices: Vec<Choice<'_>>,
    piece: &(impl Fn(u32) -> &'p [u8] + Sync),
    threads: usize,
) -> Vec<Result<Chosen>> {
    let threads = threads.clamp(1, choices.len().max(1));
    if threads == 1 {
        return choices.into_iter().map(|c| c.choose(piece)).collect();
    }
    let count = choices.len();
    // Round-robin shares, each remembering where its results go.
    let mut shares: Vec<Vec<(usize, Choice<'_>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (index, choice) in choices.into_iter().enumerate() {
        shares[index % threads].push((index, choice));
    }
    let mut results: Vec<Option<Result<Chosen>>> = (0..count).map(|_| None).collect();
    thread::scope(|scope| {
        let mut shares = shares.into_iter();
        let own = shares.next().unwrap_or_default();
        let handles: Vec<_> = shares
            .map(|share| {
                scope.spawn(move || {
                    share
                        .into_iter()
                        .map(|(index, choice)| (index, choice.choose(piece)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (index, chosen) in own.into_iter().map(|(i, c)| (i, c.choose(piece))) {
            results[index] = Some(chosen);
        }
        for handle in handles {
            // A panicking share leaves its results empty: each gets an error below.
            if let Ok(done) = handle.join() {
                for (index, chosen) in done {
                    results[index] = Some(chosen);
                }
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::constraint("choosing the token panicked"))))
        .collect()
}
