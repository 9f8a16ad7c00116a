//! Building the `LM` that `dspy_rs::configure` requires, with no API key and no network.
//!
//! dspy-rs's `configure(lm, adapter)` wants an `LM` even though a local adapter
//! never sends anything over HTTP. `LM::builder().build()` fails without
//! `OPENAI_API_KEY` unless a `base_url` is given; with one it builds an HTTP
//! client that is never used. The adapter reads `temperature` and `max_tokens`
//! from it, so DSPy-level settings still take effect.

use dspy_rs::LM;

use crate::{Error, Result};

/// The placeholder address given to the unused HTTP client.
const UNUSED_BASE_URL: &str = "http://127.0.0.1:9/dsrs-local-is-in-process";

/// An `LM` for local adapters: greedy (temperature 0) with a 512-token reply budget.
pub async fn local_lm() -> Result<LM> {
    local_lm_with(0.0, 512).await
}

/// An `LM` for local adapters with the given temperature and reply budget.
pub async fn local_lm_with(temperature: f32, max_tokens: u32) -> Result<LM> {
    LM::builder()
        .base_url(UNUSED_BASE_URL.to_string())
        .model("dsrs-local".to_string())
        .temperature(temperature)
        .max_tokens(max_tokens)
        .build()
        .await
        .map_err(|e| Error::InvalidConfig(format!("building the LM failed: {e}")))
}
