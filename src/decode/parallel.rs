//! Choosing the tokens of many sequences after one batched pass, on several
//! threads: each sequence's grammar mask and sampler are its own, so the
//! work splits by sequence, and a step's token choice takes the time of the
//! slowest thread's share instead of the sum.

use std::sync::{Mutex, PoisonError};
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

/// [`Decoder::prepare`] for every decoder that
/// [needs a mask ahead](Decoder::needs_mask_ahead), on up to `threads - 1`
/// threads of its own while `wait` runs on the calling one (it waits for the
/// device to finish the pass; on the CPU it returns at once), which then
/// takes its share of what is left. Returns what `wait` returned.
pub(crate) fn prepare_while<R>(
    decoders: Vec<&mut Decoder>,
    threads: usize,
    wait: impl FnOnce() -> R,
) -> R {
    let decoders: Vec<_> = decoders
        .into_iter()
        .filter(|d| d.needs_mask_ahead())
        .collect();
    let helpers = threads.saturating_sub(1).min(decoders.len());
    let queue = Mutex::new(decoders.into_iter());
    let work = || {
        loop {
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            match next {
                Some(decoder) => decoder.prepare(),
                None => return,
            }
        }
    };
    thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers).map(|_| scope.spawn(work)).collect();
        let waited = wait();
        work();
        // A panicking helper only leaves its mask to be computed when chosen.
        for handle in handles {
            let _ = handle.join();
        }
        waited
    })
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
