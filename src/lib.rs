//! Run [dspy-rs](https://crates.io/crates/dspy-rs) programs on local GGUF
//! models, in-process, with no server.
//!
//! A DSPy program configures an adapter from this crate instead of an HTTP
//! model; `Predict`, `batch`, `Evaluator` and the rest of dspy-rs run unchanged:
//!
//! ```no_run
//! # #[cfg(feature = "llamacpp")]
//! # mod example {
//! use dspy_rs::{Predict, Predictor, Signature, configure, example};
//! use dsrs_local::{HardwareManager, LlamaCppAdapter, LlamaCppConfig, ModelPool, ModelSpec, local_lm};
//!
//! #[Signature]
//! struct QA {
//!     /// Answer the question.
//!     #[input]
//!     question: String,
//!     #[output]
//!     answer: String,
//! }
//!
//! async fn run() -> anyhow::Result<()> {
//!     let pool = ModelPool::new(HardwareManager::detect());
//!     let model = pool.load(ModelSpec::named("qwen2.5-0.5b-instruct-q4_k_m.gguf"))?;
//!     configure(local_lm().await?, LlamaCppAdapter::from_loaded_model(model, LlamaCppConfig::default()));
//!     let out = Predict::new(QA::new()).forward(example! { "question": "input" => "2+2?" }).await?;
//!     println!("{}", out.get("answer", None));
//!     Ok(())
//! }
//! # }
//! ```
//!
//! How the crate is cut:
//! - [`prompt`]: the DSPy protocol (format, render, parse, output grammar), no backend;
//! - [`LocalAdapter`]: the one dspy-rs `Adapter`, generic over a [`Backend`];
//! - [`decode`]: sampling and stopping, shared by every backend;
//! - [`backends`]: the engines (`llama_cpp`, `candle`), one per feature;
//! - [`hardware`]: what the machine has; [`pool`]: loads sized to it, shared;
//! - [`lookup`]: finding a model by path, Hugging Face repo or Ollama name;
//! - [`gguf`]: reading a model file's header without its weights.
//!
//! | feature | what it adds |
//! |---|---|
//! | `llamacpp` (default) | `LlamaCppAdapter` on llama.cpp |
//! | `candle` (default) | `CandleAdapter` on candle |
//! | `cuda` | CUDA builds of both backends (needs the CUDA toolkit) |
//! | `vulkan` | Vulkan build of llama.cpp (candle has no Vulkan) |
//! | `metal` | Metal builds of both backends (macOS) |
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
pub mod progress;
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
pub use backends::candle::{
    CandleAdapter, CandleConfig, CandleDevice, CandleLoadOptions, CandleModel,
};
#[cfg(feature = "llamacpp")]
pub use backends::llama_cpp::{
    LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel,
};
