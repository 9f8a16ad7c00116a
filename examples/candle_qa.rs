//! Question answering with dspy-rs's `Predict` on a local GGUF model, through candle.
//!
//! ```text
//! cargo run --example candle_qa -- path/to/model.gguf
//! cargo run --no-default-features --features candle --example candle_qa
//! ```
//!
//! The same program as `llamacpp_qa`, with the candle backend: only the
//! model type and the adapter differ. Without a path it uses the crate's own
//! small model, `models/dsrs-tiny.gguf`, which knows this answer.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dspy_rs::{Predict, Predictor, Signature, configure, example};
use dsrs_local::LocalModel as _;
use dsrs_local::{CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel};

#[Signature]
struct QA {
    /// Answer the question in a few words.
    #[input]
    question: String,
    #[output]
    answer: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (path, scratch) = common::model_path()?;

    let started = Instant::now();
    let model = CandleModel::load(&path, CandleLoadOptions::default())
        .with_context(|| format!("loading {}", path.display()))?;
    println!(
        "Loaded {} ({} on {}) in {:.2?}",
        path.display(),
        model.card().architecture(),
        model.device(),
        started.elapsed()
    );

    let config = CandleConfig::default().with_generation(common::generation(scratch.is_some()));
    let adapter = CandleAdapter::from_loaded_model(Arc::new(model), config);
    // The LM dspy-rs wants beside the adapter: served by the same model.
    configure(adapter.lm().await?, adapter);

    let question = "What is the capital of France?";
    let started = Instant::now();
    let prediction = Predict::new(QA::new())
        .forward(example! { "question": "input" => question })
        .await?;
    println!("Question: {question}");
    println!(
        "Answer:   {}",
        common::plain(prediction.get("answer", None))
    );
    println!(
        "({} prompt + {} completion tokens in {:.2?})",
        prediction.lm_usage.prompt_tokens,
        prediction.lm_usage.completion_tokens,
        started.elapsed()
    );
    Ok(())
}
