//! Run [dspy-rs](https://crates.io/crates/dspy-rs) programs on local GGUF
//! models, in-process, with no server.
//!
//! A DSPy program configures an adapter from this crate instead of an HTTP
//! model; `Predict`, `batch`, `Evaluator` and the rest of dspy-rs run unchanged:
//!
//! ```text
//! let model = Arc::new(LlamaCppModel::load("model.gguf", LlamaCppLoadOptions::default())?);
//! configure(local_lm().await?, LlamaCppAdapter::from_loaded_model(model, LlamaCppConfig::default()));
//! let out = Predict::new(QA::new()).forward(example! { "question": "input" => "2+2?" }).await?;
//! ```
//!
//! How the crate is cut:
//! - [`prompt`]: the DSPy protocol (format, render, parse, output grammar), no backend;
//! - [`LocalAdapter`]: the one dspy-rs `Adapter`, generic over a [`Backend`];
//! - [`decode`]: sampling and stopping, shared by every backend;
//! - [`backends`]: the engines (`llama_cpp`, `candle`), one per feature;
//! - [`hardware`]: what the machine has; [`pool`]: loads sized to it, shared;
//! - [`gguf`]: reading a model file's header without its weights.
//!
//! | feature | what it adds |
//! |---|---|
//! | `llamacpp` (default) | [`LlamaCppAdapter`] on llama.cpp |
//! | `candle` (default) | `CandleAdapter` on candle |
//! | `cuda`, `vulkan`, `metal` | GPU builds of the enabled backends (candle has no Vulkan) |
//! | `test-utils` | a scripted backend and a GGUF model writer for tests |
#![warn(missing_docs)]

pub mod adapter;
pub mod backend;
pub mod backends;
pub mod decode;
mod error;
pub mod gguf;
pub mod hardware;
mod lm;
pub mod lookup;
pub mod pool;
mod progress;
pub mod prompt;

#[cfg(feature = "test-utils")]
pub mod testing;

pub use adapter::{GenerationConfig, LocalAdapter};
pub use backend::{Backend, FinishReason, Generation, GenerationRequest, Sampling, Timings};
pub use error::{Error, Result};
pub use hardware::{HardwareManager, HardwareProfile, compiled_backends};
pub use lm::{local_lm, local_lm_with};
pub use lookup::ModelSource;
pub use pool::{ModelPool, ModelSpec};

#[cfg(feature = "candle")]
pub use backends::candle::{CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel};
#[cfg(feature = "llamacpp")]
pub use backends::llama_cpp::{
    LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel,
};
