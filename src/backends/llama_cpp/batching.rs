//! Continuous batching on one llama.cpp context: every request in flight is
//! a sequence of the same context, and each step decodes one batch holding
//! the next token of every sequence that is generating plus prompt tokens of
//! those still being read. A request that arrives joins at the next step; a
//! finished one leaves and its sequence is free for the next.
//!
//! Each sequence has its own [`Decoder`] (sampler, output constraint, stops),
//! so results are those of running the requests one by one.
//!
//! Prefix sharing: a new request's prompt is compared with what every
//! sequence's KV cache holds (running ones and finished ones kept for this);
//! the longest common prefix is copied into its sequence (`llama_memory_seq_cp`,
//! which shares cells rather than copying them) and only the rest is read.
//! DSPy sends the same system message and demos with every call of a
//! signature, so calls after the first read only their own question. A
//! changed instruction or demo changes the tokens, so sharing stops there by
//! itself.
//!
//! Requests that arrive together with a prefix no sequence holds yet (the
//! first wave of an evaluation, an optimizer trying a new instruction) would
//! each read it: admission starts the first and holds back the others that
//! share at least [`WORTH_WAITING`] more tokens with a running prompt than
//! any cache holds, until that prompt has been read; then they copy it. Each
//! prefix is read and stored once.
//!
//! Memory: the context's cells are shared by all sequences. A request is
//! admitted when the cells it may need (prompt plus reply budget, at most the
//! context) fit beside those reserved by the running ones; otherwise it waits.
//! A finished request's cache is kept only until the next request starts
//! (which takes what it shares from it first).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;

use super::device_memory;
use super::model::{BACKEND, LlamaCppModel, as_llama, inference_error};
use crate::backend::LocalModel;
use crate::backend::{FinishReason, Generation, Timings};
use crate::backends::common::{EngineCounters, Prepared, cancelled_before_start};
use crate::decode::{Choice, Decoder, Helpers, Next, choose_all, prepare_while};
use crate::{Error, Result};

/// Prompt tokens a request must gain by waiting for a running request to
/// read them before it starts (about a step's worth of decode time; a
/// shorter wait costs more than reading them).
const WORTH_WAITING: usize = 32;

/// How long `synchronize` must wait for a pass (it ran on after `decode`
/// returned, as on a GPU) for the next pass's masks to be computed on
/// helper threads meanwhile (the CPU's pass is over when `decode` returns;
/// starting helpers for nothing costs more than a step of a small model).
const PASS_OUTLIVES_DECODE: Duration = Duration::from_micros(50);

/// A request, prepared by its caller (tokenized, grammar compiled: on the
/// caller's thread, so that many arriving at once are prepared in parallel
/// while the worker decodes), and where its result goes.
pub(super) struct Job {
    pub(super) prepared: Prepared,
    pub(super) reply: SyncSender<Result<Generation>>,
}

/// The context one worker runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct ContextSettings {
    pub(super) context_length: usize,
    pub(super) batch_size: usize,
    pub(super) threads: usize,
    pub(super) reuse_prefix: bool,
    /// Requests decoded together (`LlamaCppSettings::parallel_sequences`).
    pub(super) sequences: usize,
    /// Read the tokens the grammar forces in the pass before
    /// (`EngineConfig::fast_forward`).
    pub(super) fast_forward: bool,
}

/// The worker thread's body: makes the context for the first request (so a
/// failure reaches it, and the next request tries again), then serves the
/// queue until it closes.
pub(super) fn worker(
    model: &LlamaCppModel,
    settings: ContextSettings,
    jobs: Receiver<Job>,
    counters: Arc<EngineCounters>,
) {
    while let Ok(job) = jobs.recv() {
        match create_context(model, settings) {
            Ok(mut context) => {
                let mut batcher = Batcher::new(model, settings, counters);
                batcher.enqueue(job);
                batcher.serve(&mut context, &jobs);
                let _alone = device_memory::changing();
                drop(context);
                return;
            }
            // The caller may have gone away (cancelled); nothing to do then.
            Err(error) => {
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

fn create_context(model: &LlamaCppModel, settings: ContextSettings) -> Result<LlamaContext<'_>> {
    let cells = u32::try_from(settings.context_length).unwrap_or(u32::MAX);
    let batch = u32::try_from(settings.batch_size).unwrap_or(u32::MAX);
    let threads = i32::try_from(settings.threads).unwrap_or(i32::MAX);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cells))
        .with_n_batch(batch)
        .with_n_ubatch(batch)
        .with_n_seq_max(u32::try_from(settings.sequences).unwrap_or(u32::MAX))
        // One pool of cells for all sequences, so a shared prefix is stored
        // once (a cache per sequence made passes slower: specs/llamacpp-adapter.md).
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model.new_context(params)
}

/// Tokens the two sequences start with in common.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Adds `token` to `batch` for sequence `id` at the next position of what
/// its cache holds (`tokens`), with logits when `logits` is set.
fn add(
    batch: &mut LlamaBatch,
    tokens: &mut Vec<u32>,
    id: usize,
    token: u32,
    logits: bool,
) -> Result<()> {
    batch
        .add(as_llama(token), tokens.len() as i32, &[id as i32], logits)
        .map_err(|e| inference_error("building the batch failed", e))?;
    tokens.push(token);
    Ok(())
}

/// Adds the tokens `sequence`'s grammar forces after its last added token,
/// each with logits, as far as `room` batch slots and the context allow
/// (the token chosen after them needs a cell too). Returns how many.
fn add_draft(
    batch: &mut LlamaBatch,
    sequence: &mut Sequence,
    id: usize,
    room: usize,
    context_length: usize,
) -> Result<usize> {
    let Some(active) = sequence.active.as_mut() else {
        return Ok(0);
    };
    let cells = context_length.saturating_sub(sequence.tokens.len() + 1);
    active.draft = active.decoder.draft(room.min(cells));
    for &token in &active.draft {
        add(batch, &mut sequence.tokens, id, token, true)?;
    }
    Ok(active.draft.len())
}

/// A request being served.
struct Active {
    reply: SyncSender<Result<Generation>>,
    decoder: Decoder,
    prompt: Vec<u32>,
    /// Prompt tokens read so far (those before it came from a shared prefix
    /// or earlier steps).
    read: usize,
    reused: usize,
    /// The sampled token to feed at the next step.
    pending: Option<u32>,
    /// This step's batch index whose logits are this sequence's (the first
    /// of the draft's rows).
    logits_at: Option<i32>,
    /// The forced tokens read after it this step.
    draft: Vec<u32>,
    /// Cells reserved for it: prompt plus reply budget, at most the context.
    reserved: usize,
    started: Instant,
    prefill: Option<Duration>,
}

/// One sequence of the context.
#[derive(Default)]
struct Sequence {
    /// What its KV cache holds, at positions 0.. .
    tokens: Vec<u32>,
    /// The request using it, if any.
    active: Option<Active>,
    /// When it finished its last request (the longest idle is reused first).
    idle_since: Option<Instant>,
}

/// The worker's state: sequences, and requests waiting for room.
struct Batcher<'m> {
    model: &'m LlamaCppModel,
    settings: ContextSettings,
    sequences: Vec<Sequence>,
    /// Each step's batch, allocated once (`llama_batch_init` allocates a
    /// slot per token).
    batch: LlamaBatch<'static>,
    waiting: VecDeque<Job>,
    /// Requests held back until a running request has read the prefix they
    /// share with it (oldest first).
    deferred: Vec<Job>,
    /// What it holds and has done, for the backend to report.
    counters: Arc<EngineCounters>,
    /// Whether `synchronize` waited for the last pass (on a GPU): then the
    /// next pass's masks are computed on helper threads meanwhile.
    pass_outlives_decode: bool,
    /// Threads that choose tokens beside the worker's.
    helpers: Helpers,
}

impl<'m> Batcher<'m> {
    fn new(
        model: &'m LlamaCppModel,
        settings: ContextSettings,
        counters: Arc<EngineCounters>,
    ) -> Self {
        Batcher {
            model,
            settings,
            sequences: (0..settings.sequences)
                .map(|_| Sequence::default())
                .collect(),
            batch: LlamaBatch::new(settings.batch_size, 1),
            waiting: VecDeque::new(),
            deferred: Vec::new(),
            counters,
            pass_outlives_decode: true,
            helpers: Helpers::new(settings.threads),
        }
    }

    /// Queues a request.
    fn enqueue(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    fn running(&self) -> usize {
        self.sequences.iter().filter(|s| s.active.is_some()).count()
    }

    /// Serves jobs until the queue closes and every request has finished.
    fn serve(&mut self, ctx: &mut LlamaContext<'_>, jobs: &Receiver<Job>) {
        loop {
            // Block only when there is nothing to do.
            if self.running() == 0 && self.waiting.is_empty() && self.deferred.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            // A closed queue still lets the requests already taken finish.
            while let Ok(job) = jobs.try_recv() {
                self.waiting.push_back(job);
            }
            self.admit(ctx);
            self.report();
            if self.running() > 0
                && let Err(error) = self.step(ctx)
            {
                self.fail_all(ctx, &error);
            }
            self.report();
        }
    }

    /// Starts held-back and waiting requests while sequences and cells
    /// allow, holding back those worth waiting for a prefix.
    fn admit(&mut self, ctx: &mut LlamaContext<'_>) {
        let capacity = ctx.n_ctx() as usize;
        for job in std::mem::take(&mut self.deferred) {
            if job.prepared.decoder.is_cancelled() {
                let _ = job.reply.send(Ok(cancelled_before_start()));
            } else if self.has_room(capacity, job.prepared.cells)
                && !self.worth_waiting(&job.prepared.prompt)
            {
                self.start(ctx, job);
            } else {
                self.deferred.push(job);
            }
        }
        while self.sequences.iter().any(|s| s.active.is_none())
            && let Some(job) = self.waiting.pop_front()
        {
            if job.prepared.decoder.is_cancelled() {
                // The caller may have gone away; nothing to do then.
                let _ = job.reply.send(Ok(cancelled_before_start()));
                continue;
            }
            if !self.has_room(capacity, job.prepared.cells) {
                self.waiting.push_front(job);
                return;
            }
            if self.worth_waiting(&job.prepared.prompt) {
                self.deferred.push(job);
                continue;
            }
            self.start(ctx, job);
        }
    }

    /// Whether a free sequence and `cells` more cells are there.
    fn has_room(&self, capacity: usize, cells: usize) -> bool {
        let in_use: usize = self
            .sequences
            .iter()
            .filter_map(|s| s.active.as_ref().map(|a| a.reserved))
            .sum();
        self.sequences.iter().any(|s| s.active.is_none()) && in_use + cells <= capacity
    }

    /// Whether `prompt` shares at least [`WORTH_WAITING`] more tokens with a
    /// running request's prompt than any sequence's cache holds now: it
    /// starts once that request has read them, and copies them.
    fn worth_waiting(&self, prompt: &[u32]) -> bool {
        if !self.settings.reuse_prefix {
            return false;
        }
        let shareable = prompt.len().saturating_sub(1);
        let held = self
            .sequences
            .iter()
            .map(|s| common_prefix(&s.tokens, prompt))
            .max()
            .unwrap_or(0);
        let coming = self
            .sequences
            .iter()
            .filter_map(|s| s.active.as_ref())
            .map(|a| common_prefix(&a.prompt, prompt))
            .max()
            .unwrap_or(0);
        coming.min(shareable) >= held + WORTH_WAITING
    }

    /// Puts a prepared request on a free sequence, sharing the longest prefix
    /// any sequence holds.
    fn start(&mut self, ctx: &mut LlamaContext<'_>, job: Job) {
        let Job {
            prepared:
                Prepared {
                    prompt,
                    decoder,
                    cells: reserved,
                },
            reply,
        } = job;
        // At least the last prompt token is read, for its logits (a prepared
        // prompt is never empty).
        let shareable = prompt.len().saturating_sub(1);
        let (source, shared) = if self.settings.reuse_prefix {
            self.sequences
                .iter()
                .enumerate()
                .map(|(id, s)| (id, common_prefix(&s.tokens, &prompt).min(shareable)))
                .max_by_key(|&(id, shared)| (shared, self.sequences[id].active.is_none()))
                .unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        // Prefer the source itself when it is free: nothing to copy.
        let target = if shared > 0 && self.sequences[source].active.is_none() {
            source
        } else {
            self.free_sequence()
        };
        let mut reused = shared;
        let seq = target as u32;
        if target == source && reused > 0 {
            // Keep the shared prefix, drop the rest.
            if !ctx
                .clear_kv_cache_seq(Some(seq), Some(reused as u32), None)
                .unwrap_or(false)
            {
                reused = 0;
            }
        } else {
            let _ = ctx.clear_kv_cache_seq(Some(seq), None, None);
            if reused > 0
                && ctx
                    .copy_kv_cache_seq(source as i32, target as i32, Some(0), Some(reused as u32))
                    .is_err()
            {
                reused = 0;
            }
        }
        if reused == 0 {
            let _ = ctx.clear_kv_cache_seq(Some(seq), None, None);
        }
        self.drop_idle_caches(ctx, target);

        let sequence = &mut self.sequences[target];
        sequence.tokens = prompt[..reused].to_vec();
        sequence.idle_since = None;
        sequence.active = Some(Active {
            reply,
            decoder,
            prompt,
            read: reused,
            reused,
            pending: None,
            logits_at: None,
            draft: Vec::new(),
            reserved,
            started: Instant::now(),
            prefill: None,
        });
    }

    /// A free sequence: an empty one, else the one idle longest (admission
    /// has checked that one is free).
    fn free_sequence(&self) -> usize {
        self.sequences
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .min_by_key(|(_, s)| (!s.tokens.is_empty(), s.idle_since))
            .map_or(0, |(id, _)| id)
    }

    /// Drops every finished sequence's cache but `keep`'s: a new request has
    /// already taken what it shares, and the cells are better left to
    /// running requests. (Kept caches were suspected of the multi-sequence
    /// slowdown in `specs/llamacpp-adapter.md`; dropping them did not remove
    /// it.)
    fn drop_idle_caches(&mut self, ctx: &mut LlamaContext<'_>, keep: usize) {
        for (id, sequence) in self.sequences.iter_mut().enumerate() {
            if id != keep && sequence.active.is_none() && !sequence.tokens.is_empty() {
                let _ = ctx.clear_kv_cache_seq(Some(id as u32), None, None);
                sequence.tokens.clear();
            }
        }
    }

    /// One decode: every generating sequence's next token, each followed by
    /// the tokens its grammar forces (its draft, each with logits, so a
    /// marker is read in this pass), then as many prompt tokens of reading
    /// sequences as the batch holds. A prompt's end gets no draft: its
    /// chunk is large, and llama.cpp's kernels for large batches round
    /// differently, which would change the reply (`specs/prompt-protocol.md`).
    fn step(&mut self, ctx: &mut LlamaContext<'_>) -> Result<()> {
        self.finish_cancelled();
        if self.running() == 0 {
            return Ok(());
        }
        let budget = self.settings.batch_size;
        let context_length = (ctx.n_ctx() as usize).min(self.settings.context_length);
        let fast_forward = self.settings.fast_forward && self.model.can_drop_positions();
        let batch = &mut self.batch;
        batch.clear();
        let mut used = 0;
        // Every generating sequence's token has a place in the batch (it
        // holds at least one per sequence); drafts take what is left.
        let mut tokens_to_come = self
            .sequences
            .iter()
            .filter(|s| s.active.as_ref().is_some_and(|a| a.pending.is_some()))
            .count();
        for (id, sequence) in self.sequences.iter_mut().enumerate() {
            let Some(active) = sequence.active.as_mut() else {
                continue;
            };
            active.logits_at = None;
            active.draft.clear();
            if let Some(token) = active.pending.take() {
                add(batch, &mut sequence.tokens, id, token, true)?;
                active.logits_at = Some(batch.n_tokens() - 1);
                used += 1;
                tokens_to_come -= 1;
                if fast_forward {
                    let room = budget.saturating_sub(used + tokens_to_come);
                    used += add_draft(batch, sequence, id, room, context_length)?;
                }
            }
        }
        for (id, sequence) in self.sequences.iter_mut().enumerate() {
            let Some(active) = sequence.active.as_mut() else {
                continue;
            };
            while active.read < active.prompt.len() && used < budget {
                let token = active.prompt[active.read];
                let is_last = active.read + 1 == active.prompt.len();
                add(batch, &mut sequence.tokens, id, token, is_last)?;
                active.read += 1;
                used += 1;
                if is_last {
                    active.logits_at = Some(batch.n_tokens() - 1);
                }
            }
        }
        let pass_started = Instant::now();
        {
            let _shared = device_memory::decoding();
            ctx.decode(batch)
                .map_err(|e| inference_error("decoding failed", e))?;
        }
        // On a GPU the pass runs on until its logits are read: the masks
        // that do not depend on them are computed meanwhile, on helper
        // threads. Where the last pass was over when `decode` returned (the
        // CPU's), there is nothing to overlap: the masks are computed with
        // the tokens, on `choose_all`'s threads.
        let synchronize = || {
            let asked = Instant::now();
            ctx.synchronize();
            (pass_started.elapsed(), asked.elapsed())
        };
        let (pass_time, waited) = if self.pass_outlives_decode {
            let decoders: Vec<&mut Decoder> = self
                .sequences
                .iter_mut()
                .filter_map(|s| s.active.as_mut())
                .filter(|a| a.logits_at.is_some())
                .map(|a| &mut a.decoder)
                .collect();
            prepare_while(decoders, &self.helpers, synchronize)
        } else {
            synchronize()
        };
        self.pass_outlives_decode = waited > PASS_OUTLIVES_DECODE;
        let masks_late = pass_started.elapsed().saturating_sub(pass_time);

        // Each sequence's tokens are chosen on its own (grammar, sampler):
        // on several threads, each reading its rows of this pass's logits.
        let mut choices = Vec::new();
        let mut chosen_by = Vec::new();
        for (id, sequence) in self.sequences.iter_mut().enumerate() {
            let Some(active) = sequence.active.as_mut() else {
                continue;
            };
            let Some(index) = active.logits_at else {
                continue;
            };
            if active.prefill.is_none() {
                active.prefill = Some(active.started.elapsed());
                tracing::debug!(
                    tokens = active.prompt.len() - active.reused,
                    reused = active.reused,
                    ms = active.started.elapsed().as_secs_f64() * 1e3,
                    "prefill"
                );
            }
            let rows = (0..=active.draft.len())
                .map(|row| ctx.get_logits_ith(index + row as i32))
                .collect();
            chosen_by.push(id);
            choices.push(Choice {
                decoder: &mut active.decoder,
                draft: &active.draft,
                rows,
            });
        }
        let logit_rows = choices.iter().map(|choice| choice.rows.len()).sum();
        self.counters
            .pass(batch.n_tokens() as usize, logit_rows, pass_time);
        let card = self.model.card();
        let choice_started = Instant::now();
        let outcomes = choose_all(choices, &|token| card.token_bytes(token), &self.helpers);
        // Masks computed ahead count as choosing only where they outlasted the pass.
        self.counters.chose(masks_late + choice_started.elapsed());

        let mut sampled = 0;
        let mut forwarded = 0;
        for (id, outcome) in chosen_by.into_iter().zip(outcomes) {
            let sequence = &mut self.sequences[id];
            let Some(active) = sequence.active.as_mut() else {
                continue;
            };
            let finish = match outcome {
                Ok(chosen) => {
                    sampled += chosen.kept + 1;
                    forwarded += chosen.kept;
                    // The draft's tokens after those kept leave the cache.
                    let rejected = active.draft.len() - chosen.kept;
                    let cut = sequence.tokens.len() - rejected;
                    let dropped = rejected == 0
                        || ctx
                            .clear_kv_cache_seq(Some(id as u32), Some(cut as u32), None)
                            .unwrap_or(false);
                    sequence.tokens.truncate(cut);
                    match chosen.next {
                        _ if !dropped => Some(Err(Error::Inference {
                            backend: BACKEND,
                            reason: "dropping a draft's rejected tokens from the cache failed"
                                .into(),
                            source: None,
                        })),
                        Next::Finished(reason) => Some(Ok(reason)),
                        Next::Token(_) if cut >= context_length => Some(Ok(FinishReason::Length)),
                        Next::Token(token) => {
                            active.pending = Some(token);
                            None
                        }
                    }
                }
                Err(error) => Some(Err(error)),
            };
            if let Some(finish) = finish
                && let Some(done) = sequence.active.take()
            {
                sequence.idle_since = Some(Instant::now());
                let reply = done.reply.clone();
                // The caller may have gone away (cancelled); nothing to do then.
                let _ = reply.send(finish.map(|reason| done.finish(reason)));
            }
        }
        self.counters.sampled(sampled);
        self.counters.forwarded(forwarded);
        Ok(())
    }

    /// Publishes what the worker holds now.
    fn report(&self) {
        let running = self.running();
        let reserved = self
            .sequences
            .iter()
            .filter_map(|s| s.active.as_ref().map(|a| a.reserved))
            .sum();
        self.counters.holding(running, reserved);
    }

    /// Ends the requests whose callers stopped them: their sequences are free
    /// for the next request from this step on.
    fn finish_cancelled(&mut self) {
        for sequence in &mut self.sequences {
            if sequence
                .active
                .as_ref()
                .is_some_and(|a| a.decoder.is_cancelled())
                && let Some(done) = sequence.active.take()
            {
                sequence.idle_since = Some(Instant::now());
                let reply = done.reply.clone();
                let _ = reply.send(Ok(done.finish(FinishReason::Cancelled)));
            }
        }
    }

    /// After a failed decode the caches are in doubt: every running request
    /// gets the error and every cache is dropped.
    fn fail_all(&mut self, ctx: &mut LlamaContext<'_>, error: &Error) {
        for sequence in &mut self.sequences {
            if let Some(active) = sequence.active.take() {
                let _ = active.reply.send(Err(error.clone()));
            }
            sequence.tokens.clear();
            sequence.idle_since = None;
        }
        ctx.clear_kv_cache();
    }
}

impl Active {
    fn finish(self, reason: FinishReason) -> Generation {
        let prefill = self.prefill.unwrap_or_default();
        let timings = Timings {
            prefill,
            decode: self.started.elapsed().saturating_sub(prefill),
            ..Timings::default()
        };
        let mut generation = self.decoder.finish(self.prompt.len(), reason, timings);
        generation.cached_prompt_tokens = self.reused;
        generation
    }
}
