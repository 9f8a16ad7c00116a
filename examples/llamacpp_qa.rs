//! Question answering with dspy-rs's `Predict` on a local GGUF model, through llama.cpp.
//!
//! ```text
//! cargo run --example llamacpp_qa -- path/to/model.gguf
//! DSRS_MODEL=path/to/model.gguf cargo run --example llamacpp_qa
//! ```
//!
//! Without a path it uses the crate's own small model, `models/dsrs-tiny.gguf`
//! (trained by `tools/train-tiny`), which knows this answer.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dspy_rs::{Predict, Predictor, Signature, configure, example};
use dsrs_local::LocalModel as _;
use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel};

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
    let model = LlamaCppModel::load(&path, LlamaCppLoadOptions::default())
        .with_context(|| format!("loading {}", path.display()))?;
    println!(
        "Loaded {} ({}) in {:.2?}",
        path.display(),
        model.card().architecture(),
        started.elapsed()
    );

    let config = LlamaCppConfig::default().with_generation(common::generation(scratch.is_some()));
    let adapter = LlamaCppAdapter::from_loaded_model(Arc::new(model), config);
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
