//! Inference engines behind the [`Backend`](crate::Backend) trait, one folder
//! each, over what they share (`common`).

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(any(feature = "llamacpp", feature = "candle", feature = "remote"))]
pub mod common;
#[cfg(feature = "llamacpp")]
pub mod llama_cpp;
#[cfg(feature = "remote")]
pub mod remote;
