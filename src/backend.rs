//! The seam between the generic adapter and an inference engine.
//!
//! A backend knows its model's chat template, counts tokens, and runs one
//! blocking generation for a rendered prompt. Everything else — DSPy
//! formatting, rendering, parsing, building the output grammar, concurrency
//! limits, usage accounting — lives once in [`crate::LocalAdapter`].

use std::time::Duration;

use crate::Result;
use crate::prompt::{ChatTemplate, OutputConstraint};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `0.0` (or below) means greedy: always the most likely token.
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to this (1.0 = off).
    pub top_p: f32,
    /// Keep only this many most likely tokens (0 = off).
    pub top_k: usize,
    /// Random seed; the same seed, prompt and settings give the same reply.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }

    /// True when the temperature makes decoding greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// One generation: a rendered prompt and how to continue it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The exact prompt text (already through the chat template).
    pub prompt: String,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Extra strings that end the reply (the completed marker always does).
    pub stop: Vec<String>,
    /// The grammar the reply must follow, if any.
    pub constraint: Option<OutputConstraint>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token, the completed marker or a stop string.
    Stop,
    /// `max_tokens` reached, or the context window is full.
    Length,
    /// The output grammar reached its end, so nothing more could follow.
    Constraint,
}

/// Wall-clock time spent in each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Evaluating the prompt.
    pub prefill: Duration,
    /// Generating the reply.
    pub decode: Duration,
    /// Of `decode`, the CPU time spent choosing tokens from the logits: the
    /// output constraint's mask and advance, and the sampler.
    pub token_choice: Duration,
}

/// What a backend returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The reply text.
    pub text: String,
    /// Tokens in the prompt, as the model's tokenizer counts them.
    pub prompt_tokens: usize,
    /// Of those, how many were served from the KV cache of an earlier request.
    pub cached_prompt_tokens: usize,
    /// Tokens generated for the reply (end-of-generation tokens excluded).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Time per phase.
    pub timings: Timings,
}

/// An inference engine with one model loaded.
///
/// Implementations must be cheap to share (`Arc`) and safe to call from many
/// threads at once; [`generate`](Backend::generate) blocks and is called on
/// tokio's blocking pool.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and errors (`"llama.cpp"`, `"candle"`).
    fn name(&self) -> &'static str;

    /// The model's chat template (its own, or the ChatML fallback).
    fn chat_template(&self) -> &ChatTemplate;

    /// Counts the tokens of a rendered prompt the way [`generate`](Backend::generate) would.
    fn count_tokens(&self, prompt: &str) -> Result<usize>;

    /// Runs one generation to the end. Blocking.
    fn generate(&self, request: &GenerationRequest) -> Result<Generation>;
}
