//! What both backends share, written once: their settings and the
//! preparation of a request.

mod config;
mod counters;
#[cfg(any(feature = "llamacpp", feature = "candle"))]
mod request;

pub use config::{EngineConfig, EngineSettings, LoadOptions};
pub(crate) use counters::EngineCounters;
#[cfg(any(feature = "llamacpp", feature = "candle"))]
pub(crate) use request::{Prepared, cancelled_before_start, prepare};
