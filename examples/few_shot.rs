//! Few-shot demos: examples set on the signature become user/assistant turns
//! of the prompt, exactly as dspy-rs's `ChatAdapter` formats them.
//!
//! ```text
//! cargo run --example few_shot -- path/to/model.gguf
//! ```
//!
//! Without a path it uses the crate's own small model, `models/dsrs-tiny.gguf`.

#[path = "common/mod.rs"]
mod common;
#[path = "common/llama_cpp.rs"]
mod llama_cpp_setup;

use std::sync::Arc;

use dspy_rs::{MetaSignature, Signature, adapter::Adapter, example};

#[Signature]
struct Capital {
    /// Name the capital city of the country.
    #[input]
    country: String,
    #[output]
    capital: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (adapter, _scratch) = llama_cpp_setup::llama_cpp_adapter()?;

    let mut signature = Capital::new();
    signature.set_demos(vec![
        example! { "country": "input" => "France", "capital": "output" => "Paris" },
        example! { "country": "input" => "Japan", "capital": "output" => "Tokyo" },
        example! { "country": "input" => "Kenya", "capital": "output" => "Nairobi" },
    ])?;
    let inputs = example! { "country": "input" => "Peru" };
    let prompt = adapter.render_prompt(&signature, &inputs)?;
    println!(
        "The prompt holds {} demos ({} characters):\n{prompt}\n",
        signature.demos().len(),
        prompt.len()
    );

    let lm = Arc::new(adapter.lm().await?);
    let prediction = adapter.call(lm, &signature, inputs, vec![]).await?;
    println!("Peru → {}", common::plain(prediction.get("capital", None)));
    Ok(())
}
