//! The candle [`Backend`]: one generation at a time per model (it has one KV
//! cache); the prompt's part not shared with the cache is prefilled in
//! chunks, then the reply is decoded token by token.

use std::sync::Arc;
use std::time::Instant;

use super::model::{BACKEND, CandleModel};
use super::transformer::Transformer;
use crate::backend::{Backend, FinishReason, Generation, GenerationRequest, Timings};
use crate::decode::Decoder;
use crate::prompt::ChatTemplate;
use crate::{Error, GenerationConfig, Result};

/// Settings of a candle adapter.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CandleConfig {
    /// Context window in tokens; `None` = the model's default (the pool's plan,
    /// else 4096), capped at what it supports.
    pub context_length: Option<usize>,
    /// Most prompt tokens evaluated in one forward pass.
    pub batch_size: usize,
    /// Keep the KV cache between requests and read only the part of a new
    /// prompt it does not share with the previous request (on by default).
    pub reuse_prefix: bool,
    /// Sampling, budget, constraint and concurrency settings.
    pub generation: GenerationConfig,
}

impl Default for CandleConfig {
    fn default() -> Self {
        CandleConfig {
            context_length: None,
            batch_size: 256,
            reuse_prefix: true,
            generation: GenerationConfig::default(),
        }
    }
}

impl CandleConfig {
    /// Sets the context window (capped at what the model supports).
    #[must_use]
    pub fn with_context_length(mut self, tokens: usize) -> Self {
        self.context_length = Some(tokens);
        self
    }
    /// Sets the prompt chunk size.
    #[must_use]
    pub fn with_batch_size(mut self, tokens: usize) -> Self {
        self.batch_size = tokens.max(1);
        self
    }
    /// Turns reuse of the previous request's KV cache on or off.
    #[must_use]
    pub fn with_prefix_reuse(mut self, reuse: bool) -> Self {
        self.reuse_prefix = reuse;
        self
    }
    /// Sets the generation settings.
    #[must_use]
    pub fn with_generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = generation;
        self
    }
}

/// candle behind the [`Backend`] trait.
#[derive(Debug)]
pub struct CandleBackend {
    model: Arc<CandleModel>,
    context_length: usize,
    batch_size: usize,
    reuse_prefix: bool,
}

impl CandleBackend {
    /// A backend on a loaded model.
    pub fn new(model: Arc<CandleModel>, config: &CandleConfig) -> Self {
        let limit = model.max_positions().max(1);
        let context_length = config
            .context_length
            .unwrap_or_else(|| model.default_context_length())
            .clamp(1, limit);
        CandleBackend {
            model,
            context_length,
            batch_size: config.batch_size.max(1),
            reuse_prefix: config.reuse_prefix,
        }
    }

    /// The loaded model.
    pub fn model(&self) -> &Arc<CandleModel> {
        &self.model
    }

    /// The context window requests run with.
    pub fn context_length(&self) -> usize {
        self.context_length
    }
}

fn inference_error(e: impl std::fmt::Display) -> Error {
    Error::Inference {
        backend: BACKEND,
        reason: e.to_string(),
    }
}

/// Reads `tokens` after the cached ones and returns the last one's logits.
pub(super) fn forward(weights: &mut Transformer, tokens: &[u32]) -> Result<Vec<f32>> {
    weights
        .forward(tokens)
        .and_then(|logits| logits.to_vec1::<f32>())
        .map_err(inference_error)
}

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn chat_template(&self) -> &ChatTemplate {
        self.model.chat_template()
    }

    fn count_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(self.model.tokenize_prompt(prompt).len())
    }

    fn generate(&self, request: &GenerationRequest) -> Result<Generation> {
        let model = &self.model;
        let prompt = model.tokenize_prompt(&request.prompt);
        if prompt.is_empty() {
            return Err(Error::Tokenizer("the prompt produced no tokens".into()));
        }
        if prompt.len() >= self.context_length {
            return Err(Error::PromptTooLong {
                prompt_tokens: prompt.len(),
                context_length: self.context_length,
            });
        }
        let matcher = match &request.constraint {
            Some(constraint) => Some(model.constraint_compiler()?.matcher(constraint)?),
            None => None,
        };
        let mut decoder = Decoder::new(
            request,
            matcher,
            model.tokenizer().end_of_generation().to_vec(),
        );
        let pieces = model.tokenizer().pieces();

        let mut weights = model.lock_weights()?;
        let reused = if self.reuse_prefix {
            weights.keep_shared_prefix(&prompt)
        } else {
            weights.clear_cache();
            0
        };
        let started = Instant::now();
        let mut logits = Vec::new();
        for chunk in prompt[reused..].chunks(self.batch_size) {
            logits = forward(&mut weights, chunk)?;
        }
        let prefill = started.elapsed();
        tracing::debug!(
            tokens = prompt.len() - reused,
            reused,
            ms = prefill.as_secs_f64() * 1e3,
            "prefill"
        );

        let decode_started = Instant::now();
        let mut position = prompt.len();
        let finish_reason = loop {
            let token = decoder.next_token(&mut logits)?;
            let piece = pieces.get(token as usize).map_or(&[][..], Vec::as_slice);
            if let Some(reason) = decoder.push(token, piece)? {
                break reason;
            }
            if position >= self.context_length {
                break FinishReason::Length;
            }
            logits = forward(&mut weights, &[token])?;
            position += 1;
        };
        drop(weights);
        let timings = Timings {
            prefill,
            decode: decode_started.elapsed(),
            ..Timings::default()
        };
        let mut generation = decoder.finish(prompt.len(), finish_reason, timings);
        generation.cached_prompt_tokens = reused;
        Ok(generation)
    }
}
