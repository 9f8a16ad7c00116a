//! Choosing the tokens of many sequences after one batched pass, on several
//! threads: each sequence's grammar mask and sampler are its own, so the
//! work splits by sequence, and a step's token choice takes about the sum
//! divided by the threads. The masks that do not need the pass's logits are
//! computed the same way while the pass runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuilder};

use super::{Chosen, Decoder};
use crate::{Error, Result};

/// Threads kept to choose tokens beside the calling one, so that a step
/// wakes them instead of starting them: a thread took 20–30 µs to start
/// and join, twice a step, which with 15 helpers is as long as choosing
/// 64 sequences' tokens. Started on first use, so a worker that never
/// needs them has none.
pub(crate) struct Helpers {
    count: usize,
    pool: OnceLock<Option<ThreadPool>>,
}

impl Helpers {
    /// Up to `threads - 1` helpers: the calling thread is the last.
    pub(crate) fn new(threads: usize) -> Self {
        Helpers {
            count: threads.saturating_sub(1),
            pool: OnceLock::new(),
        }
    }

    /// The pool, or `None` without helpers or where the system would not
    /// start its threads (the calling thread then does all the work).
    fn pool(&self) -> Option<&ThreadPool> {
        self.pool
            .get_or_init(|| {
                if self.count == 0 {
                    return None;
                }
                ThreadPoolBuilder::new()
                    .num_threads(self.count)
                    .thread_name(|i| format!("dsrs-choose-{i}"))
                    .build()
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "no helper threads: tokens chosen on one thread");
                    })
                    .ok()
            })
            .as_ref()
    }
}

impl std::fmt::Debug for Helpers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helpers")
            .field("count", &self.count)
            .field("started", &self.pool.get().is_some_and(Option::is_some))
            .finish()
    }
}

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
/// [needs a mask ahead](Decoder::needs_mask_ahead), on the helpers while
/// `wait` runs on the calling thread (it waits for the device to finish the
/// pass; on the CPU it returns at once), which then joins them. Returns
/// what `wait` returned. A panic only leaves a mask to be computed when
/// its token is chosen.
pub(crate) fn prepare_while<R>(
    decoders: Vec<&mut Decoder>,
    helpers: &Helpers,
    wait: impl FnOnce() -> R,
) -> R {
    let decoders: Vec<_> = decoders
        .into_iter()
        .filter(|d| d.needs_mask_ahead())
        .collect();
    let count = decoders.len();
    spread(
        decoders,
        helpers,
        count,
        |decoder: &mut Decoder| decoder.prepare(),
        wait,
    )
    .0
}

/// [`Decoder::choose`] for every choice, on the calling thread and the
/// helpers; results in the order of `choices`.
pub(crate) fn choose_all<'p>(
    choices: Vec<Choice<'_>>,
    piece: &(impl Fn(u32) -> &'p [u8] + Sync),
    helpers: &Helpers,
) -> Vec<Result<Chosen>> {
    // The calling thread takes a choice too: one choice needs no helper
    // (starting one per token cost a small model half its speed).
    let wanted = choices.len().saturating_sub(1);
    let (_, results) = spread(
        choices,
        helpers,
        wanted,
        |choice| choice.choose(piece),
        || (),
    );
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::constraint("choosing the token panicked"))))
        .collect()
}

/// Runs `work` on every item, on the calling thread and up to `wanted`
/// helpers, all taking the next item from one queue (a slow item holds up
/// one thread, not a share decided in advance). The calling thread first
/// runs `first`, then joins in. Returns what `first` returned and each
/// item's result in the order of `items`: `None` where `work` panicked.
fn spread<T: Send, R: Send, F>(
    items: Vec<T>,
    helpers: &Helpers,
    wanted: usize,
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
            // A panic stays with its item: the others and the caller go on.
            let result = catch_unwind(AssertUnwindSafe(|| work(item))).ok();
            results.lock().unwrap_or_else(PoisonError::into_inner)[index] = result;
        }
    };
    let wanted = wanted.min(helpers.count).min(count);
    // No pool is started for a step that wants no helper.
    let pool = if wanted > 0 { helpers.pool() } else { None };
    let first = match pool {
        Some(pool) => pool.in_place_scope(|scope| {
            for _ in 0..wanted {
                scope.spawn(|_| drain());
            }
            let first = first();
            drain();
            first
        }),
        _ => {
            let first = first();
            drain();
            first
        }
    };
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    (first, results)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::thread;
    use std::time::Duration;

    use super::{Helpers, spread};

    /// Results come back in the items' order whatever thread computed them,
    /// `first` runs on the calling thread, helpers do take items, and the
    /// same helpers serve step after step.
    #[test]
    fn spread_keeps_the_order_and_shares_the_items() {
        for threads in [1, 2, 4, 81] {
            let helpers = Helpers::new(threads);
            let caller = thread::current().id();
            let workers = Mutex::new(HashSet::new());
            for _step in 0..3 {
                let (first, results) = spread(
                    (0..40u64).collect(),
                    &helpers,
                    80,
                    |item| {
                        thread::sleep(Duration::from_millis(1));
                        workers.lock().unwrap().insert(thread::current().id());
                        item * item
                    },
                    || thread::current().id() == caller,
                );
                assert!(first, "`first` ran on the calling thread");
                let expected: Vec<_> = (0..40u64).map(|item| Some(item * item)).collect();
                assert_eq!(results, expected, "{threads} threads");
            }
            let used = workers.into_inner().unwrap().len();
            assert_eq!(used > 1, threads > 1, "{used} threads used of {threads}");
            assert!(
                used <= threads,
                "{used} threads used of {threads}: started anew"
            );
        }
    }

    /// A panicking item leaves its result empty; the others are computed.
    #[test]
    fn a_panic_stays_with_its_item() {
        let helpers = Helpers::new(3);
        let (_, results) = spread(
            (0..20u32).collect(),
            &helpers,
            2,
            |item| {
                assert!(item % 7 != 3, "item {item}");
                item
            },
            || (),
        );
        for (item, result) in (0..20u32).zip(results) {
            assert_eq!(result, (item % 7 != 3).then_some(item), "item {item}");
        }
    }
}
