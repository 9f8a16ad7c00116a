//! What an engine holds and has done, kept as atomics the engine writes and
//! any thread reads ([`Backend::stats`](crate::backend::Backend::stats)).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::backend::EngineStats;

/// The engine's live counters.
#[derive(Debug, Default)]
pub(crate) struct EngineCounters {
    /// The most requests decoded together so far.
    peak_sequences: AtomicUsize,
    /// Requests on a sequence now.
    active_sequences: AtomicUsize,
    /// KV cells reserved by them (prompt plus reply budget each).
    reserved_cells: AtomicUsize,
    /// Tokens sampled since the engine started, all sequences together.
    sampled_tokens: AtomicUsize,
    /// Of those, tokens read ahead as forced and kept.
    forwarded_tokens: AtomicUsize,
    /// Forward passes of the model, and the tokens they read.
    passes: AtomicUsize,
    pass_tokens: AtomicUsize,
    /// Of those tokens, the ones whose logits the passes returned.
    pass_logit_rows: AtomicUsize,
    /// Nanoseconds in those passes (until their logits were readable).
    pass_nanos: AtomicU64,
    /// Nanoseconds choosing tokens from their logits (on the engine's
    /// critical path: the slowest thread's share when sequences choose at once).
    choice_nanos: AtomicU64,
}

impl EngineCounters {
    /// Publishes what the engine holds now.
    pub(crate) fn holding(&self, sequences: usize, cells: usize) {
        self.peak_sequences.fetch_max(sequences, Ordering::Relaxed);
        self.active_sequences.store(sequences, Ordering::Relaxed);
        self.reserved_cells.store(cells, Ordering::Relaxed);
    }

    /// One more generation holds a sequence (an engine that counts them one
    /// by one rather than publishing its batch).
    pub(crate) fn started(&self) {
        let now = self.active_sequences.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_sequences.fetch_max(now, Ordering::Relaxed);
    }

    /// One generation let go of its sequence.
    pub(crate) fn ended(&self) {
        self.active_sequences.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts sampled tokens.
    pub(crate) fn sampled(&self, tokens: usize) {
        self.sampled_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts forced tokens read ahead and kept (each saved a pass).
    pub(crate) fn forwarded(&self, tokens: usize) {
        self.forwarded_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts one forward pass over `tokens` tokens, returning the logits
    /// of `logit_rows` of them, that took `time`.
    pub(crate) fn pass(&self, tokens: usize, logit_rows: usize, time: Duration) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.pass_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.pass_logit_rows
            .fetch_add(logit_rows, Ordering::Relaxed);
        self.pass_nanos.fetch_add(nanos(time), Ordering::Relaxed);
    }

    /// Counts time spent choosing tokens after a pass.
    pub(crate) fn chose(&self, time: Duration) {
        self.choice_nanos.fetch_add(nanos(time), Ordering::Relaxed);
    }

    /// A snapshot.
    pub(crate) fn stats(&self) -> EngineStats {
        let get = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
        EngineStats {
            active_sequences: get(&self.active_sequences),
            reserved_cells: get(&self.reserved_cells),
            sampled_tokens: get(&self.sampled_tokens),
            forwarded_tokens: get(&self.forwarded_tokens),
            peak_sequences: get(&self.peak_sequences),
            passes: get(&self.passes),
            pass_tokens: get(&self.pass_tokens),
            pass_logit_rows: get(&self.pass_logit_rows),
            pass_time: Duration::from_nanos(self.pass_nanos.load(Ordering::Relaxed)),
            token_choice_time: Duration::from_nanos(self.choice_nanos.load(Ordering::Relaxed)),
        }
    }
}

fn nanos(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}
