//! All integration tests, in one binary (one link, one build of the dependencies).

include!("signatures.rs");

mod support;

#[cfg(feature = "candle")]
mod candle;
#[cfg(any(feature = "llamacpp", feature = "candle"))]
mod conformance;
#[cfg(all(feature = "llamacpp", feature = "candle"))]
mod cross_backend;
#[cfg(any(feature = "llamacpp", feature = "candle"))]
mod dspy_routes;
#[cfg(all(feature = "llamacpp", feature = "candle"))]
mod gpu;
#[cfg(feature = "llamacpp")]
mod llama_cpp;
#[cfg(all(feature = "remote", feature = "llamacpp"))]
mod remote;
#[cfg(feature = "llamacpp")]
mod server;
#[cfg(feature = "llamacpp")]
mod soak;
#[cfg(any(feature = "llamacpp", feature = "candle"))]
mod tool_calls;

mod adapter_mock;
mod gguf_header;
mod lookup;
mod pool;
mod prompt_constraint;
mod prompt_format;
mod prompt_parse;
mod prompt_render;
#[cfg(any(feature = "llamacpp", feature = "candle"))]
mod python_clients;
#[cfg(any(feature = "llamacpp", feature = "candle"))]
mod real_models;
mod server_fuzz;
mod tools;
