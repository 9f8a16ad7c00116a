//! `LlamaCppAdapter`: dspy-rs on llama.cpp (through `llama-cpp-2`), in-process.
//!
//! # Contract
//!
//! - **Models**: any GGUF file llama.cpp can run. [`LlamaCppModel::load`]
//!   checks the file first (missing, not GGUF, truncated → typed errors;
//!   an architecture llama.cpp does not know → [`Error::UnsupportedArchitecture`](crate::Error::UnsupportedArchitecture)).
//!   The model is shared through `Arc`; llama.cpp's global state is
//!   initialised once per process.
//! - **Prompts**: the shared prompt layer renders the DSPy chat through the
//!   model's own Jinja chat template (ChatML without one). A BOS token the
//!   template prints is not added a second time.
//! - **Generation**: the shared decoder (greedy at temperature 0, otherwise
//!   temperature/top-k/top-p with a seed) with the signature's output grammar
//!   enforced on the logits, so every reply parses. It ends at an
//!   end-of-generation token, the `[[ ## completed ## ]]` marker, a stop
//!   string, the end of the grammar, `max_tokens`, or a full context
//!   (finish reason `Length`).
//! - **Usage**: prompt tokens are the model tokenizer's count of the rendered
//!   prompt; completion tokens are the tokens the decode loop produced.
//! - **Prefix reuse**: finished requests' KV caches are kept; a new prompt
//!   reads only what follows the longest prefix it shares with a cached or
//!   running request (the system message and demos of a DSPy signature),
//!   copied into its own sequence, with the same replies as a cold context
//!   (`Generation::cached_prompt_tokens` counts the reused tokens;
//!   `LlamaCppConfig::with_prefix_reuse(false)` turns it off).
//! - **Concurrency**: each adapter owns one worker thread with one llama.cpp
//!   context. With `LlamaCppConfig::parallel_sequences` above 1 (default:
//!   `max_concurrency`),
//!   up to that many calls run at once as sequences of that context, decoded
//!   together in one batch per step
//!   (continuous batching: a call joins at the next step, a finished one
//!   leaves), each with its own sampler and constraint, so replies equal
//!   those of running the calls one by one. A call is admitted when its
//!   prompt plus reply budget fits in the context's cells beside the running
//!   ones; otherwise it waits. Callers wait on tokio's blocking pool, never on
//!   the async executor. Several adapters on one model each have their own
//!   context. Decodes in the process share one lock that loading, context
//!   creation and freeing take alone (`device_memory.rs`): on CUDA, a free
//!   during another thread's graph capture aborts llama.cpp.
//! - **Cancellation**: dropping a call's future stops waiting for it; the
//!   worker finishes that generation and drops the result.
//! - **Empty prompts**: an empty or white-space prompt is
//!   [`Error::EmptyPrompt`](crate::Error::EmptyPrompt), before the worker sees it.
//! - **Not supported**: tool calling (dspy-rs tools are ignored), images.

mod batching;
mod device_memory;
mod engine;
mod model;

use std::sync::Arc;

pub use engine::{LlamaCppBackend, LlamaCppConfig, LlamaCppSettings};
pub use model::{LlamaCppLoad, LlamaCppLoadOptions, LlamaCppModel};

use crate::LocalAdapter;

/// The dspy-rs adapter on llama.cpp.
pub type LlamaCppAdapter = LocalAdapter<LlamaCppBackend>;

impl LocalAdapter<LlamaCppBackend> {
    /// An adapter on a loaded model.
    pub fn from_loaded_model(model: Arc<LlamaCppModel>, config: LlamaCppConfig) -> Self {
        let backend = LlamaCppBackend::new(model, &config);
        LocalAdapter::new(Arc::new(backend), config.generation)
    }
}
