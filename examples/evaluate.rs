//! Evaluating a small dataset with dspy-rs's `Evaluator` and a metric; the
//! calls run 32 at a time, as dspy-rs sends them.
//!
//! ```text
//! cargo run --example evaluate -- path/to/model.gguf
//! ```
//!
//! Without a path it uses the crate's own small model, `models/dsrs-tiny.gguf`,
//! which answers held-out plain sums like these right every time in the tests
//! (`specs/tiny-model.md`).

#[path = "common/mod.rs"]
mod common;
#[path = "common/llama_cpp.rs"]
mod llama_cpp_setup;

use std::time::Instant;

use dspy_rs::{
    Evaluator, Example, Module, Predict, Prediction, Predictor, Signature, configure, example,
};

#[Signature]
struct Add {
    /// Add the two numbers.
    #[input]
    a: i32,
    #[input]
    b: i32,
    #[output]
    sum: i32,
}

struct Adder {
    predict: Predict,
}

impl Module for Adder {
    async fn forward(&self, inputs: Example) -> anyhow::Result<Prediction> {
        self.predict.forward(inputs).await
    }
}

impl Evaluator for Adder {
    const MAX_CONCURRENCY: usize = 32;
    const DISPLAY_PROGRESS: bool = false;

    /// Exact match on the integer answer.
    async fn metric(&self, example: &Example, prediction: &Prediction) -> f32 {
        let expected = example.get("sum", None);
        f32::from(u8::from(prediction.get("sum", None) == expected))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (adapter, _scratch) = llama_cpp_setup::llama_cpp_adapter()?;
    let configured = adapter;
    configure(configured.lm().await?, configured);

    let dataset: Vec<Example> = [
        (2, 3),
        (10, 7),
        (41, 1),
        (13, 29),
        (50, 50),
        (8, 0),
        (33, 44),
        (19, 6),
    ]
    .into_iter()
    .map(|(a, b)| example! { "a": "input" => a, "b": "input" => b, "sum": "output" => a + b })
    .collect();
    let adder = Adder {
        predict: Predict::new(Add::new()),
    };
    let started = Instant::now();
    let score = adder.evaluate(dataset.clone()).await;
    println!(
        "exact-match accuracy on {} examples: {:.2} ({:.1?})",
        dataset.len(),
        score,
        started.elapsed()
    );
    Ok(())
}
