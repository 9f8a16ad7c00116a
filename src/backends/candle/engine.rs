//! The candle [`Backend`]: one generation at a time per model (it has one KV
//! cache), the prompt prefilled in chunks, then token by token.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};

use super::model::{BACKEND, CandleModel, Weights};
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
    /// Sampling, budget, constraint and concurrency settings.
    pub generation: GenerationConfig,
}

impl Default for CandleConfig {
    fn default() -> Self {
        CandleConfig {
            context_length: None,
            batch_size: 256,
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

/// Runs `tokens` at `position` and returns the last position's logits.
pub(super) fn forward(
    weights: &mut Weights,
    model: &CandleModel,
    tokens: &[u32],
    position: usize,
) -> Result<Vec<f32>> {
    let input = Tensor::new(tokens, model.device())
        .and_then(|t| t.unsqueeze(0))
        .map_err(inference_error)?;
    weights
        .forward(&input, position)
        .and_then(|logits| logits.squeeze(0))
        .and_then(|logits| logits.to_dtype(DType::F32))
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
        weights.clear_kv_cache();
        let started = Instant::now();
        let mut logits = Vec::new();
        for (index, chunk) in prompt.chunks(self.batch_size).enumerate() {
            logits = forward(&mut weights, model, chunk, index * self.batch_size)?;
        }
        let prefill = started.elapsed();
        tracing::debug!(
            tokens = prompt.len(),
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
            logits = forward(&mut weights, model, &[token], position)?;
            position += 1;
        };
        drop(weights);
        let timings = Timings {
            prefill,
            decode: decode_started.elapsed(),
        };
        Ok(decoder.finish(prompt.len(), finish_reason, timings))
    }
}
