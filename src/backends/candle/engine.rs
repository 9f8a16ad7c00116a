//! The candle [`Backend`]: one generation at a time per model (it has one KV
//! cache); the prompt's part not shared with the cache is prefilled in
//! chunks, then the reply is decoded token by token (the tokens the output
//! constraint forces read in the pass before their own, `decode::Decoder::choose`).

use std::sync::Arc;
use std::time::Instant;

use super::model::CandleModel;
use crate::Result;
use crate::backend::{
    Backend, EngineStats, FinishReason, Generation, GenerationRequest, LocalModel, Timings,
};
use crate::backends::common::{
    EngineConfig, EngineCounters, EngineSettings, Prepared, cancelled_before_start, prepare,
};
use crate::decode::Next;

/// What only a candle adapter's settings have (nothing yet: candle runs one
/// generation at a time on its own threads).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CandleSettings {}

impl EngineSettings for CandleSettings {
    const DEFAULT_BATCH_SIZE: usize = 256;
}

/// Settings of a candle adapter: context and generation.
pub type CandleConfig = EngineConfig<CandleSettings>;

/// candle behind the [`Backend`] trait.
#[derive(Debug)]
pub struct CandleBackend {
    model: Arc<CandleModel>,
    context_length: usize,
    batch_size: usize,
    reuse_prefix: bool,
    fast_forward: bool,
    counters: EngineCounters,
}

impl CandleBackend {
    /// A backend on a loaded model. The context is capped at what the model
    /// supports.
    pub fn new(model: Arc<CandleModel>, config: &CandleConfig) -> Self {
        let limit = model.max_positions().max(1);
        let context_length = config
            .context_length
            .unwrap_or_else(|| model.card().default_context())
            .clamp(1, limit);
        CandleBackend {
            model,
            context_length,
            batch_size: config.batch_size.max(1),
            reuse_prefix: config.reuse_prefix,
            fast_forward: config.fast_forward,
            counters: EngineCounters::default(),
        }
    }

    /// The loaded model.
    pub fn model(&self) -> &Arc<CandleModel> {
        &self.model
    }
}

impl Backend for CandleBackend {
    fn loaded_model(&self) -> &dyn LocalModel {
        self.model.as_ref()
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        let model = &self.model;
        let Prepared {
            prompt,
            mut decoder,
            cells,
        } = prepare(model.as_ref(), request, self.context_length)?;

        let mut weights = model.lock_weights()?;
        let _holding = Holding::new(&self.counters, cells);
        let reused = if self.reuse_prefix {
            weights.keep_shared_prefix(&prompt)
        } else {
            weights.clear_cache();
            0
        };
        let started = Instant::now();
        // Every chunk but the last is read alone; the last is read in the
        // first pass that chooses a token.
        let unread = &prompt[reused..];
        let last_chunk = unread.len().saturating_sub(1) / self.batch_size * self.batch_size;
        let (head, tail) = unread.split_at(last_chunk);
        for chunk in head.chunks(self.batch_size) {
            if decoder.is_cancelled() {
                return Ok(cancelled_before_start());
            }
            let pass_started = Instant::now();
            weights.next_logits(chunk)?;
            self.counters.pass(chunk.len(), 1, pass_started.elapsed());
        }
        if decoder.is_cancelled() {
            return Ok(cancelled_before_start());
        }
        // Positions the cache holds, and what the next pass reads.
        let mut cached = reused + head.len();
        let mut input = tail.to_vec();
        let mut prefill = None;
        let finish_reason = loop {
            let position = cached + input.len();
            // No draft with the prompt's end, as on llama.cpp: a pass of
            // a long chunk rounds differently.
            let draft = if self.fast_forward && prefill.is_some() {
                // The token chosen after the draft needs a position too.
                decoder.draft(self.context_length.saturating_sub(position + 1))
            } else {
                Vec::new()
            };
            input.extend_from_slice(&draft);
            let pass_started = Instant::now();
            let rows = weights.logits_rows(&input, draft.len() + 1)?;
            self.counters
                .pass(input.len(), draft.len() + 1, pass_started.elapsed());
            if prefill.is_none() {
                prefill = Some(started.elapsed());
                tracing::debug!(
                    tokens = prompt.len() - reused,
                    reused,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "prefill"
                );
            }
            let choice_started = Instant::now();
            let chosen = decoder.choose(
                &draft,
                |row| rows.get(row).map_or(&[][..], Vec::as_slice),
                |token| model.card().token_bytes(token),
            )?;
            self.counters.chose(choice_started.elapsed());
            self.counters.sampled(chosen.kept + 1);
            self.counters.forwarded(chosen.kept);
            // The draft's tokens after those kept leave the cache.
            cached = position + chosen.kept;
            weights.truncate_cache(cached);
            match chosen.next {
                Next::Finished(reason) => break reason,
                Next::Token(_) if cached >= self.context_length => break FinishReason::Length,
                Next::Token(token) => input = vec![token],
            }
        };
        drop(weights);
        let prefill = prefill.unwrap_or_default();
        let timings = Timings {
            prefill,
            decode: started.elapsed().saturating_sub(prefill),
            ..Timings::default()
        };
        let mut generation = decoder.finish(prompt.len(), finish_reason, timings);
        generation.cached_prompt_tokens = reused;
        Ok(generation)
    }

    fn stats(&self) -> EngineStats {
        self.counters.stats()
    }
}

/// Marks one generation as held while it lives, so an error or a panic
/// inside it still releases it (this engine runs one at a time).
struct Holding<'a>(&'a EngineCounters);

impl<'a> Holding<'a> {
    fn new(counters: &'a EngineCounters, cells: usize) -> Self {
        counters.holding(1, cells);
        Holding(counters)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.holding(0, 0);
    }
}
