//! The one implementation of dspy-rs's `Adapter` trait, generic over the backend.
//!
//! A call goes: [`format_chat`] → the model's chat template → build the output
//! grammar → [`Backend::generate`] on tokio's blocking pool, behind a
//! concurrency limit → [`parse_reply`] → `Prediction` with the backend's real
//! token counts.
//!
//! Settings come from the `LM` that dspy-rs passes to `call` (`temperature`,
//! `max_tokens`, `max_tool_iterations`), unless [`GenerationConfig`]
//! overrides them. A predictor with tools goes through `tool_loop`.

mod tool_loop;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use dspy_rs::adapter::Adapter;
use dspy_rs::{Chat, Example, LM, LmUsage, Message, MetaSignature, Prediction};
use rig::tool::ToolDyn;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::backend::{Backend, Generation, GenerationControl, GenerationRequest, Sampling};
use crate::prompt::{
    DEFAULT_MAX_TEXT_CHARS, OutputConstraint, SignatureFields, format_chat, parse_reply,
};
use crate::{Error, Result};

/// Generation settings of an adapter. `None` fields fall back to the `LM`'s.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GenerationConfig {
    /// Overrides `lm.temperature` when set.
    pub temperature: Option<f32>,
    /// Overrides `lm.max_tokens` when set.
    pub max_tokens: Option<usize>,
    /// Nucleus sampling threshold (1.0 = off).
    pub top_p: f32,
    /// Top-k cut (0 = off).
    pub top_k: usize,
    /// Fixed seed; `None` draws a fresh one per call (unless greedy).
    pub seed: Option<u64>,
    /// Enforce the output grammar while sampling, so every reply parses.
    pub constrained: bool,
    /// Most characters of one free-text value (and of each string inside a
    /// JSON value) under the constraint; lists get a sixteenth as many items.
    pub max_text_chars: usize,
    /// Extra stop strings.
    pub stop: Vec<String>,
    /// Most generations running at once on this adapter.
    pub max_concurrency: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            temperature: None,
            max_tokens: None,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            constrained: true,
            max_text_chars: DEFAULT_MAX_TEXT_CHARS,
            stop: Vec::new(),
            max_concurrency: 4,
        }
    }
}

impl GenerationConfig {
    /// Sets the temperature (overriding the `LM`'s).
    #[must_use]
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }
    /// Sets the token budget of a reply (overriding the `LM`'s).
    #[must_use]
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
    /// Sets top-p.
    #[must_use]
    pub fn with_top_p(mut self, top_p: f32) -> Self {
        self.top_p = top_p;
        self
    }
    /// Sets top-k.
    #[must_use]
    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k;
        self
    }
    /// Fixes the seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Turns the output constraint on or off.
    #[must_use]
    pub fn with_constraint(mut self, constrained: bool) -> Self {
        self.constrained = constrained;
        self
    }
    /// Caps free-text values at this many characters under the constraint.
    #[must_use]
    pub fn with_max_text_chars(mut self, chars: usize) -> Self {
        self.max_text_chars = chars.max(1);
        self
    }
    /// Adds a stop string.
    #[must_use]
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }
    /// Sets how many generations may run at once.
    #[must_use]
    pub fn with_max_concurrency(mut self, max_concurrency: usize) -> Self {
        self.max_concurrency = max_concurrency.max(1);
        self
    }

    fn request(
        &self,
        lm: &LM,
        prompt: String,
        constraint: Option<OutputConstraint>,
    ) -> GenerationRequest {
        let temperature = self.temperature.unwrap_or(lm.temperature);
        let seed = self.seed.unwrap_or_else(rand::random);
        GenerationRequest {
            prompt,
            sampling: Sampling {
                temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed,
            },
            max_tokens: self.max_tokens.unwrap_or(lm.max_tokens as usize).max(1),
            stop: self.stop.clone(),
            constraint,
            control: GenerationControl::default(),
        }
    }
}

/// A dspy-rs adapter that runs a local model in-process through a [`Backend`].
pub struct LocalAdapter<B: Backend> {
    backend: Arc<B>,
    config: GenerationConfig,
    permits: Arc<Semaphore>,
    /// Calls waiting for a permit.
    waiting: Arc<AtomicUsize>,
}

impl<B: Backend> Clone for LocalAdapter<B> {
    fn clone(&self) -> Self {
        LocalAdapter {
            backend: Arc::clone(&self.backend),
            config: self.config.clone(),
            permits: Arc::clone(&self.permits),
            waiting: Arc::clone(&self.waiting),
        }
    }
}

impl<B: Backend> std::fmt::Debug for LocalAdapter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAdapter")
            .field("backend", &self.backend.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> LocalAdapter<B> {
    /// An adapter over a backend.
    pub fn new(backend: Arc<B>, config: GenerationConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        LocalAdapter {
            backend,
            config,
            permits,
            waiting: Arc::default(),
        }
    }

    /// What tells this adapter (and its clones) apart from others while it lives.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.permits) as usize
    }

    /// A handle that does not keep the adapter (or its model) alive.
    pub(crate) fn downgrade(&self) -> WeakAdapter<B> {
        WeakAdapter {
            backend: Arc::downgrade(&self.backend),
            config: self.config.clone(),
            permits: Arc::downgrade(&self.permits),
            waiting: Arc::clone(&self.waiting),
        }
    }

    /// Calls running on the backend now, and calls waiting for one of its
    /// `max_concurrency` slots (clones of this adapter share both).
    pub fn occupancy(&self) -> (usize, usize) {
        let running = self
            .config
            .max_concurrency
            .max(1)
            .saturating_sub(self.permits.available_permits());
        (running, self.waiting.load(Ordering::Relaxed))
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The generation settings.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// Renders a signature call to the exact prompt text the model will see.
    pub fn render_prompt(&self, signature: &dyn MetaSignature, inputs: &Example) -> Result<String> {
        let chat = format_chat(signature, inputs)?;
        self.backend.chat_template().render(&chat)
    }

    /// Runs one signature call and returns the parsed fields with the raw generation.
    pub async fn predict(
        &self,
        lm: &LM,
        signature: &dyn MetaSignature,
        inputs: &Example,
    ) -> Result<(HashMap<String, Value>, Generation)> {
        let span = tracing::info_span!("dsrs.predict", backend = self.backend.name());
        let _entered = span.enter();
        let fields = SignatureFields::of(signature)?;
        let prompt = self.render_prompt(signature, inputs)?;
        tracing::debug!(chars = prompt.len(), "rendered the prompt");
        let constraint = self
            .config
            .constrained
            .then(|| OutputConstraint::for_fields(&fields, self.config.max_text_chars));
        let request = self.config.request(lm, prompt, constraint);
        drop(_entered);
        let generation = self.generate(request).await?;
        tracing::info!(
            parent: &span,
            prompt_tokens = generation.prompt_tokens,
            completion_tokens = generation.completion_tokens,
            finish = ?generation.finish_reason,
            prefill_ms = generation.timings.prefill.as_secs_f64() * 1e3,
            decode_ms = generation.timings.decode.as_secs_f64() * 1e3,
            "generated"
        );
        let data = parse_reply(&fields, &generation.text)?;
        Ok((data, generation))
    }

    /// Runs a raw generation on the blocking pool, behind the concurrency
    /// limit. Dropping the returned future (a timeout, a caller gone) stops
    /// the generation at its next step and frees what it holds.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Generation> {
        let stop_when_dropped = CancelOnDrop(Some(request.control.clone()));
        // The semaphore is never closed, so acquiring only waits.
        let waiting = Counted::enter(&self.waiting);
        let permit = Arc::clone(&self.permits).acquire_owned().await;
        drop(waiting);
        let _permit = permit.map_err(|_| Error::Internal {
            what: "the adapter's concurrency limit was closed",
        })?;
        let backend = Arc::clone(&self.backend);
        let name = backend.name();
        let result = tokio::task::spawn_blocking(move || backend.generate(&request))
            .await
            .map_err(|e| Error::GenerationPanicked {
                backend: name,
                message: panic_message(e),
            })?;
        stop_when_dropped.disarm();
        result
    }
}

/// An adapter held without keeping it alive ([`LocalAdapter::downgrade`]).
pub(crate) struct WeakAdapter<B: Backend> {
    backend: std::sync::Weak<B>,
    config: GenerationConfig,
    permits: std::sync::Weak<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl<B: Backend> WeakAdapter<B> {
    /// The adapter, while any clone of it exists.
    pub(crate) fn upgrade(&self) -> Option<LocalAdapter<B>> {
        Some(LocalAdapter {
            backend: self.backend.upgrade()?,
            config: self.config.clone(),
            permits: self.permits.upgrade()?,
            waiting: Arc::clone(&self.waiting),
        })
    }
}

/// Counts a call while it lives (a dropped call included).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Cancels a generation unless disarmed: the guard a dropped call leaves behind.
struct CancelOnDrop(Option<GenerationControl>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(control) = &self.0 {
            control.cancel();
        }
    }
}

/// What a failed blocking task said: its panic message, when it had one.
fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    crate::error::panic_message(error.into_panic().as_ref())
}

fn usage(generation: &Generation) -> LmUsage {
    let prompt_tokens = generation.prompt_tokens as u64;
    let completion_tokens = generation.completion_tokens as u64;
    LmUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

#[async_trait]
impl<B: Backend> Adapter for LocalAdapter<B> {
    fn format(&self, signature: &dyn MetaSignature, inputs: Example) -> Chat {
        format_chat(signature, &inputs).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot format this signature");
            Chat::new(vec![])
        })
    }

    /// Parses leniently; fields that cannot be parsed are left out (as
    /// dspy-rs's `ChatAdapter` does), never a panic. `call` reports them as an error.
    fn parse_response(
        &self,
        signature: &dyn MetaSignature,
        response: Message,
    ) -> HashMap<String, Value> {
        let Ok(fields) = SignatureFields::of(signature) else {
            return HashMap::new();
        };
        parse_reply(&fields, &response.content()).unwrap_or_else(|e| e.parsed)
    }

    async fn call(
        &self,
        lm: Arc<LM>,
        signature: &dyn MetaSignature,
        inputs: Example,
        tools: Vec<Arc<dyn ToolDyn>>,
    ) -> anyhow::Result<Prediction> {
        // The one place our errors become anyhow's, for dspy-rs.
        if !tools.is_empty() {
            let (data, usage) = self
                .predict_with_tools(&lm, signature, &inputs, &tools)
                .await?;
            return Ok(Prediction::new(data, usage));
        }
        let (data, generation) = self.predict(&lm, signature, &inputs).await?;
        Ok(Prediction::new(data, usage(&generation)))
    }
}
