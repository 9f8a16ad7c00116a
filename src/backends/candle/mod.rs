//! `CandleAdapter`: dspy-rs on HuggingFace candle, reading the same GGUF files.
//!
//! # Contract
//!
//! - **Models**: GGUF files of the `llama` (also Mistral, SmolLM), `qwen2`,
//!   `qwen3`, `gemma2`, `gemma3` and `phi3` architectures, any quant type candle reads (F32, F16, BF16,
//!   Q4_0…Q8_1, K-quants; no i-quants). Another architecture is
//!   [`Error::UnsupportedArchitecture`](crate::Error::UnsupportedArchitecture)
//!   naming it; missing, foreign and truncated files are typed errors too.
//! - **Tokenizer from the GGUF alone**: SentencePiece (`llama`) and byte-level
//!   BPE (`gpt2`, with llama.cpp's pre-tokenizer for the file's `pre`), built
//!   from `tokenizer.*` keys; the ids equal llama.cpp's.
//! - **Prompts**: the same shared render path and chat template as llama.cpp.
//! - **Generation**: the shared decoder (same sampler, same output grammar
//!   enforced on the logits); stops and finish reasons as the llama.cpp
//!   backend. Our own transformer (`transformer.rs`) on candle's quantized
//!   kernels (on the CPU, the crate's own for Q4_1, Q5_0, Q5_1 and Q8_0 weights:
//!   `quantized_cpu.rs`) keeps the KV cache between requests and reads only
//!   what a new prompt does not share with the previous one
//!   ([`Generation::cached_prompt_tokens`](crate::Generation) counts the rest;
//!   [`CandleConfig::with_prefix_reuse`] turns it off).
//! - **Context**: the file's trained context (4096 when it names none) caps
//!   the window; a longer prompt is
//!   [`Error::PromptTooLong`](crate::Error::PromptTooLong).
//! - **Concurrency**: a model holds one KV cache, so generations on one
//!   [`CandleModel`] run one at a time behind a lock; concurrent calls queue
//!   and all complete. Load the file twice for parallel generations.
//! - **Device**: the CPU always; with the `cuda` or `metal` feature the GPU
//!   when present, otherwise the CPU with a logged reason. No Vulkan.
//! - **Empty prompts**: an empty or white-space prompt is
//!   [`Error::EmptyPrompt`](crate::Error::EmptyPrompt).
//! - **Not supported**: tool calling, images, decoding several requests in
//!   one batch.

mod attention_cpu;
mod cpu_threads;
mod dense_cpu;
mod engine;
mod family;
mod kv_cache;
mod layers;
mod model;
mod quantized_cpu;
#[cfg_attr(
    any(feature = "cuda", feature = "cuda-shared"),
    path = "thread_binding_cuda.rs"
)]
#[cfg_attr(
    not(any(feature = "cuda", feature = "cuda-shared")),
    path = "thread_binding_none.rs"
)]
mod thread_binding;
mod transformer;
mod weight;

use std::sync::Arc;

pub use engine::{CandleBackend, CandleConfig, CandleSettings};
pub use family::SUPPORTED_ARCHITECTURES;
pub use model::{CandleDevice, CandleLoad, CandleLoadOptions, CandleModel};

use crate::LocalAdapter;

/// The dspy-rs adapter on candle.
pub type CandleAdapter = LocalAdapter<CandleBackend>;

impl LocalAdapter<CandleBackend> {
    /// An adapter on a loaded model.
    pub fn from_loaded_model(model: Arc<CandleModel>, config: CandleConfig) -> Self {
        let backend = CandleBackend::new(model, &config);
        LocalAdapter::new(Arc::new(backend), config.generation)
    }
}
