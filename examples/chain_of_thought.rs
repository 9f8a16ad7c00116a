//! Chain of thought: a `#[Signature(cot)]` signature gets a `reasoning` field first.
//!
//! ```text
//! cargo run --example chain_of_thought -- path/to/model.gguf
//! ```
//!
//! Without a path it uses the crate's own small model, `models/dsrs-tiny.gguf`,
//! which learned exactly this: it works the sum column by column
//! ("7 + 5 = 12, 1 + 2 + 1 = 4, so 17 + 25 = 42") and answers 98 % of held-out
//! sums and differences right (`specs/tiny-model.md`).

#[path = "common/mod.rs"]
mod common;
#[path = "common/llama_cpp.rs"]
mod llama_cpp_setup;

use dspy_rs::{Predict, Predictor, Signature, configure, example};

#[Signature(cot)]
struct Arithmetic {
    /// Add the two numbers.
    #[input]
    a: i32,
    #[input]
    b: i32,
    #[output]
    sum: i32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (adapter, _scratch) = llama_cpp_setup::llama_cpp_adapter()?;
    let configured = adapter;
    configure(configured.lm().await?, configured);

    let prediction = Predict::new(Arithmetic::new())
        .forward(example! { "a": "input" => 17, "b": "input" => 25 })
        .await?;
    println!("17 + 25");
    println!(
        "reasoning: {}",
        common::plain(prediction.get("reasoning", None))
    );
    println!(
        "sum:       {} (an i32, as declared)",
        prediction.get("sum", None)
    );
    Ok(())
}
