//! `RemoteAdapter`: the same DSPy adapter over OpenAI-compatible serving
//! engines — vLLM, SGLang, llama-server, another `dsrs-local serve` — one or
//! a fleet of them.
//!
//! # Contract
//!
//! - **Same prompts, same grammar**: prompts are rendered here, by the shared
//!   prompt layer with the served model's chat template (read from the GGUF
//!   file's header; the engines hold the weights), and sent to
//!   `/v1/completions` with the output grammar in the form each engine takes
//!   ([`RemoteEngine`]), plus `max_tokens` and the stops, always. Replies go
//!   through the shared parser; usage is the engine's.
//! - **Context**: a prompt is counted with the model's own tokenizer before
//!   it is sent; one longer than the context is
//!   [`Error::PromptTooLong`](crate::Error::PromptTooLong) without a call.
//! - **Several endpoints** ([`RemoteConfig::with_endpoint`]): calls that share
//!   a prompt prefix go to the endpoint that read it (its prefix cache serves
//!   them), others to the least-loaded; a call that cannot reach its
//!   endpoint, or that the engine fails (5xx, a reply that does not read), is
//!   sent to another, at most [`RemoteConfig::with_attempts`] in all, and
//!   the endpoint gets no calls until its `/health` answers again. A request
//!   an engine refuses (4xx) is the caller's error, not retried.
//! - **Cancellation**: a dropped call closes its connection within 10 ms
//!   (engines stop generating for a closed connection).
//! - **Streaming**: the reply reaches a streaming caller whole, once the
//!   engine has finished it.
//! - **Not supported**: tool-call replies are constrained and parsed as
//!   locally, but images and logprobs are not sent.

mod config;
mod dialect;
mod engine;
mod fleet;
mod model;

use std::path::Path;
use std::sync::Arc;

pub use config::RemoteConfig;
pub use dialect::RemoteEngine;
pub use engine::RemoteBackend;
pub use fleet::EndpointStatus;
pub use model::RemoteModel;

use crate::{GenerationConfig, LocalAdapter, Result};

/// The dspy-rs adapter over serving engines.
pub type RemoteAdapter = LocalAdapter<RemoteBackend>;

impl LocalAdapter<RemoteBackend> {
    /// An adapter whose calls go to the engines in `config`, which serve the
    /// GGUF file at `model_file`.
    pub fn connect(
        model_file: impl AsRef<Path>,
        config: RemoteConfig,
        generation: GenerationConfig,
    ) -> Result<Self> {
        let backend = RemoteBackend::connect(model_file, config)?;
        Ok(LocalAdapter::new(Arc::new(backend), generation))
    }
}
