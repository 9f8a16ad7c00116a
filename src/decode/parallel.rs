//! Choosing the tokens of many sequences after one batched pass, on several
//! threads: each sequence's grammar mask and sampler are its own, so the
//! work splits by sequence, and a step's token choice takes about the sum
//! divided by the threads. The masks that do not need the pass's logits are
//! computed the same way while the pass runs.

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
/// threads of their own while `wait` runs on the calling one (it waits for
/// the device to finish the pass; on the CPU it returns at once), which then
/// joins them. Returns what `wait` returned. A panicking thread only leaves
/// its masks to be computed when chosen.
pub(crate) fn prepare_while<R>(
    decoders: Vec<&mut Decoder>,
    threads: usize,
    wait: impl FnOnce() -> R,
) -> R {
    let decoders: Vec<_> = decoders
        .into_iter()
        .filter(|d| d.needs_mask_ahead())
        .collect();
    let helpers = threads.saturating_sub(1);
    spread(
        decoders,
        helpers,
        |decoder: &mut Decoder| decoder.prepare(),
        wait,
    )
    .0
}

/// [`Decoder::choose`] for every choice, on up to `threads` threads (the
/// calling one included); results in the order of `choices`.
pub(crate) fn choose_all<'p>(
    choices: Vec<Choice<'_>>,
    piece: &(impl Fn(u32) -> &'p [u8] + Sync),
    threads: usize,
) -> Vec<Result<Chosen>> {
    // The calling thread takes a choice too: one choice needs no helper
    // (starting one per token cost a small model half its speed).
    let helpers = threads
        .saturating_sub(1)
        .min(choices.len().saturating_sub(1));
    let (_, results) = spread(choices, helpers, |choice| choice.choose(piece), || ());
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::constraint("choosing the token panicked"))))
        .collect()
}

/// Runs `work` on every item, on the calling thread and up to `helpers`
/// threads of its own, all taking the next item from one queue (a slow item
/// holds up one thread, not a share decided in advance). The calling thread
/// first runs `first`, then joins in. Returns what `first` returned and each
/// item's result in the order of `items`: `None` where a panicking helper
/// left it.
fn spread<T: Send, R: Send, F>(
    items: Vec<T>,
    helpers: usize,
    work: impl Fn(T) -> R + Sync,
    first: impl FnOnce() -> F,
) -> (F, Vec<Option<R>>) {
    let count = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..count).map(|_| None).collect());
    let drain = || {
        loop {
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((index, item)) = next else {
                return;
            };
            let result = work(item);
            results.lock().unwrap_or_else(PoisonError::into_inner)[index] = Some(result);
        }
    };
    let first = thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers.min(count))
            .map(|_| scope.spawn(drain))
            .collect();
        let first = first();
        drain();
        for handle in handles {
            // A panicking helper's item stays `None`.
            let _ = handle.join();
        }
        first
    });
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    (first, results)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::thread;
    use std::time::Duration;

    use super::spread;

    /// Results come back in the items' order whatever thread computed them,
    /// `first` runs on the calling thread, and helpers do take items.
    #[test]
    fn spread_keeps_the_order_and_shares_the_items() {
        for helpers in [0, 1, 3, 80] {
            let caller = thread::current().id();
            let workers = Mutex::new(HashSet::new());
            let (first, results) = spread(
                (0..40u64).collect(),
                helpers,
                |item| {
                    thread::sleep(Duration::from_millis(1));
                    workers.lock().unwrap().insert(thread::current().id());
                    item * item
                },
                || thread::current().id() == caller,
            );
            assert!(first, "`first` ran on the calling thread");
            let expected: Vec<_> = (0..40u64).map(|item| Some(item * item)).collect();
            assert_eq!(results, expected, "{helpers} helpers");
            let threads = workers.into_inner().unwrap().len();
            assert_eq!(
                threads > 1,
                helpers > 0,
                "{threads} threads, {helpers} helpers"
            );
        }
    }
}
