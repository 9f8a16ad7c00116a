//! Inference engines behind the [`Backend`](crate::Backend) trait, one folder each.

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "llamacpp")]
pub mod llama_cpp;
