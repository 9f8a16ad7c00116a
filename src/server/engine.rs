//! What the server drives: any adapter's backend, behind one object-safe
//! trait, with the adapter's own concurrency limit (so requests through HTTP
//! and through `Predict` share one queue, one worker and one prefix cache).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::backend::{Backend, EngineStats, Generation, GenerationRequest};
use crate::model_card::ModelCard;
use crate::prompt::{ChatTemplate, ConstraintCompiler};
use crate::{GenerationConfig, LocalAdapter, Result};

/// A boxed future of a generation.
pub(crate) type GenerationFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Generation>> + Send + 'a>>;

/// One served model.
pub(crate) trait Engine: Send + Sync + 'static {
    fn card(&self) -> &ModelCard;
    fn template(&self) -> &ChatTemplate;
    fn context_length(&self) -> usize;
    fn count_tokens(&self, prompt: &str) -> Result<usize>;
    fn constraint_compiler(&self) -> Result<&ConstraintCompiler>;
    fn generation_config(&self) -> &GenerationConfig;
    /// Calls running on the backend, and calls waiting for a slot.
    fn load(&self) -> (usize, usize);
    /// What the backend holds now and has done.
    fn stats(&self) -> EngineStats;
    fn generate(&self, request: GenerationRequest) -> GenerationFuture<'_>;
}

impl<B: Backend> Engine for LocalAdapter<B> {
    fn card(&self) -> &ModelCard {
        self.backend().loaded_model().card()
    }

    fn template(&self) -> &ChatTemplate {
        self.backend().chat_template()
    }

    fn context_length(&self) -> usize {
        self.backend().context_length()
    }

    fn count_tokens(&self, prompt: &str) -> Result<usize> {
        self.backend().count_tokens(prompt)
    }

    fn constraint_compiler(&self) -> Result<&ConstraintCompiler> {
        self.card().constraint_compiler()
    }

    fn generation_config(&self) -> &GenerationConfig {
        self.config()
    }

    fn load(&self) -> (usize, usize) {
        self.occupancy()
    }

    fn stats(&self) -> EngineStats {
        self.backend().stats()
    }

    fn generate(&self, request: GenerationRequest) -> GenerationFuture<'_> {
        Box::pin(LocalAdapter::generate(self, request))
    }
}

/// A served engine, shared by the server's handlers.
pub(crate) type SharedEngine = Arc<dyn Engine>;
