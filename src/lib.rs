//! Run [dspy-rs](https://crates.io/crates/dspy-rs) programs on local GGUF
//! models, in-process — and serve the same engine over an OpenAI-compatible
//! API for the parts of dspy-rs that talk HTTP (optimizers, `LM::call`).
//!
//! A DSPy program configures an adapter from this crate instead of an HTTP
//! model; `Predict`, `batch`, `Evaluator` and the rest of dspy-rs run unchanged:
//!
//! ```no_run
//! # #[cfg(all(feature = "llamacpp", feature = "server"))]
//! # mod example {
//! use dspy_rs::{Predict, Predictor, Signature, configure, example};
//! use dsrs_local::{HardwareManager, LlamaCppAdapter, LlamaCppConfig, ModelPool, ModelSpec};
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
//!     let adapter = LlamaCppAdapter::from_loaded_model(model, LlamaCppConfig::default());
//!     configure(adapter.lm().await?, adapter); // the LM is served by the same model
//!     let out = Predict::new(QA::new()).forward(example! { "question": "input" => "2+2?" }).await?;
//!     println!("{}", out.get("answer", None));
//!     Ok(())
//! }
//! # }
//! ```
//!
//! How the crate is cut:
//! - [`prompt`]: the DSPy protocol (format, render, parse, output grammar) and
//!   tools (definitions, each model family's call format), no backend;
//! - [`LocalAdapter`]: the one dspy-rs `Adapter`, generic over a [`Backend`],
//!   with the tool loop for predictors given tools;
//! - `decode`: sampling and stopping, shared by every backend (internal);
//! - [`backends`]: the engines (`llama_cpp`, `candle`, `remote` for serving
//!   engines over HTTP), one per feature, over what they share (`common`);
//! - [`hardware`]: what the machine has; [`pool`]: loads sized to it, shared;
//! - [`lookup`]: finding a model by path, Hugging Face repo or Ollama name;
//! - [`gguf`]: reading a model file's header without its weights;
//! - `tokenizer`: a GGUF vocabulary's tokenizer with llama.cpp's rules
//!   (candle, remote; internal);
//! - `server` (feature `server`): the OpenAI-compatible server and `LocalAdapter::lm`.
//!
//! | feature | what it adds |
//! |---|---|
//! | `llamacpp` (default) | `LlamaCppAdapter` on llama.cpp |
//! | `candle` (default) | `CandleAdapter` on candle |
//! | `cuda` | CUDA builds of both backends (needs the CUDA toolkit) |
//! | `vulkan` | Vulkan build of llama.cpp (candle has no Vulkan) |
//! | `rocm` | ROCm (HIP) build of llama.cpp for AMD GPUs (candle runs on the CPU) |
//! | `metal` | Metal builds of both backends (macOS) |
//! | `remote` (default) | `RemoteAdapter` over vLLM, SGLang, llama-server or `dsrs-local serve` endpoints |
//! | `server` (default) | the OpenAI-compatible server, `LocalAdapter::lm`, the `dsrs-local` binary |
//! | `test-utils` | a scripted backend and a GGUF model writer for tests |
//! | `task-data` | the task families of the crate's own model (tests, trainer) |
#![warn(unreachable_pub, clippy::unwrap_used, clippy::print_stdout)]
// A build without every backend leaves parts of what they share unused
// (with none, all of it); they are still compiled, so such a build checks
// them, and the default build, which has every backend, finds dead code.
#![cfg_attr(
    not(all(feature = "llamacpp", feature = "candle", feature = "remote")),
    allow(dead_code)
)]

pub mod adapter;
pub mod backend;
pub mod backends;
mod decode;
mod error;
pub mod gguf;
pub mod hardware;
pub mod lookup;
mod model_card;
pub mod pool;
mod progress;
pub mod prompt;
#[cfg(feature = "server")]
pub mod server;
#[cfg(any(feature = "candle", feature = "remote"))]
mod tokenizer;

#[cfg(feature = "test-utils")]
pub mod testing;

pub use adapter::{GenerationConfig, LocalAdapter};
pub use backend::{
    Backend, DeviceShare, EngineStats, FinishReason, Generation, GenerationRequest, LoadModel,
    LocalModel, Placement, Sampling, Timings,
};
pub use error::{Cause, Error, Result, TemplateStage};
pub use hardware::{HardwareManager, HardwareProfile, compiled_backends};
pub use lookup::ModelSource;
pub use model_card::ModelCard;
pub use pool::{ModelPool, ModelSpec};

#[cfg(feature = "candle")]
pub use backends::candle::{
    CandleAdapter, CandleConfig, CandleDevice, CandleLoadOptions, CandleModel,
};
#[cfg(any(feature = "llamacpp", feature = "candle"))]
pub use backends::common::{EngineConfig, LoadOptions};
#[cfg(feature = "llamacpp")]
pub use backends::llama_cpp::{
    LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel,
};
#[cfg(feature = "remote")]
pub use backends::remote::{RemoteAdapter, RemoteBackend, RemoteConfig, RemoteEngine};
#[cfg(feature = "server")]
pub use server::{BoundServer, RunningServer, Server, ServerOptions};
