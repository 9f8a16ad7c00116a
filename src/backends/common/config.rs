//! The settings both backends take, once: an adapter's context and generation
//! settings ([`EngineConfig`]) and how a model file is loaded ([`LoadOptions`]),
//! each with a slot for what only one backend has.

use crate::GenerationConfig;

/// What only one backend's adapter settings have, with that backend's defaults.
pub trait EngineSettings: Clone + std::fmt::Debug + PartialEq + Default {
    /// Prompt tokens read in one step by default.
    const DEFAULT_BATCH_SIZE: usize;
}

/// An adapter's settings: its context, how prompts are read, generation, and
/// the backend's own settings in `engine`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EngineConfig<X> {
    /// Context window in tokens; `None` = the model's default (the pool's
    /// plan, else the trained length, at most 4096).
    pub context_length: Option<usize>,
    /// Most prompt tokens evaluated in one step.
    pub batch_size: usize,
    /// Keep finished requests' KV caches and read only what a new prompt
    /// does not share with a cached one (on by default).
    pub reuse_prefix: bool,
    /// Read the tokens the output constraint forces (a reply's markers) in
    /// the pass of the token before them, checked against the model's own
    /// choice, instead of one pass each (on by default). Given the same
    /// logits the replies are the same either way; a quantized model's
    /// multi-token pass can round differently and flip a near tie
    /// (`specs/prompt-protocol.md`).
    pub fast_forward: bool,
    /// Sampling, budget, constraint and concurrency settings.
    pub generation: GenerationConfig,
    /// The backend's own settings.
    pub engine: X,
}

impl<X: EngineSettings> Default for EngineConfig<X> {
    fn default() -> Self {
        EngineConfig {
            context_length: None,
            batch_size: X::DEFAULT_BATCH_SIZE,
            reuse_prefix: true,
            fast_forward: true,
            generation: GenerationConfig::default(),
            engine: X::default(),
        }
    }
}

impl<X> EngineConfig<X> {
    /// Sets the context window.
    #[must_use]
    pub fn with_context_length(mut self, tokens: usize) -> Self {
        self.context_length = Some(tokens);
        self
    }
    /// Sets how many prompt tokens are read in one step (at least 1).
    #[must_use]
    pub fn with_batch_size(mut self, tokens: usize) -> Self {
        self.batch_size = tokens.max(1);
        self
    }
    /// Turns reuse of earlier requests' KV caches on or off.
    #[must_use]
    pub fn with_prefix_reuse(mut self, reuse: bool) -> Self {
        self.reuse_prefix = reuse;
        self
    }
    /// Turns reading forced tokens ahead on or off.
    #[must_use]
    pub fn with_fast_forward(mut self, fast_forward: bool) -> Self {
        self.fast_forward = fast_forward;
        self
    }
    /// Sets the generation settings.
    #[must_use]
    pub fn with_generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = generation;
        self
    }
}

/// How a model file is loaded: its default context, the progress display,
/// and the backend's own options in `engine`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LoadOptions<X> {
    /// Context length adapters on this model use unless their config sets one
    /// (the pool sets it from its plan).
    pub context_length: Option<usize>,
    /// Show a progress display on the terminal while loading.
    pub show_progress: bool,
    /// The backend's own options.
    pub engine: X,
}

impl<X: Default> Default for LoadOptions<X> {
    fn default() -> Self {
        LoadOptions {
            context_length: None,
            show_progress: true,
            engine: X::default(),
        }
    }
}

impl<X> LoadOptions<X> {
    /// Sets the default context length of adapters on this model.
    #[must_use]
    pub fn with_context_length(mut self, tokens: usize) -> Self {
        self.context_length = Some(tokens);
        self
    }
    /// Turns the terminal progress display on or off.
    #[must_use]
    pub fn with_progress(mut self, show: bool) -> Self {
        self.show_progress = show;
        self
    }
}
