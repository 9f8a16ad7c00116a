//! Typed outputs: integers, booleans, lists and a struct with a JSON schema come
//! back as values of their declared types (the output grammar guarantees it).
//!
//! ```text
//! cargo run --example typed_outputs -- path/to/model.gguf
//! ```
//!
//! Without a path it uses the crate's own small model, `models/dsrs-tiny.gguf`,
//! which was never taught these facts: the values are well-typed but made up.

#[path = "common/mod.rs"]
mod common;
#[path = "common/llama_cpp.rs"]
mod llama_cpp_setup;

use dspy_rs::{Predict, Predictor, Signature, configure, example};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct City {
    name: String,
    population: u64,
}

#[Signature]
struct CountryFacts {
    /// Give facts about the country.
    #[input]
    country: String,
    #[output]
    capital: City,
    #[output(desc = "number of bordering countries")]
    neighbours: i32,
    #[output]
    landlocked: bool,
    #[output(desc = "official languages")]
    languages: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (adapter, _scratch) = llama_cpp_setup::llama_cpp_adapter()?;
    let configured = adapter;
    configure(configured.lm().await?, configured);

    let prediction = Predict::new(CountryFacts::new())
        .forward(example! { "country": "input" => "Switzerland" })
        .await?;
    let capital: City = serde_json::from_value(prediction.get("capital", None))?;
    let neighbours: i32 = serde_json::from_value(prediction.get("neighbours", None))?;
    let landlocked: bool = serde_json::from_value(prediction.get("landlocked", None))?;
    let languages: Vec<String> = serde_json::from_value(prediction.get("languages", None))?;
    println!("capital:    {capital:?}");
    println!("neighbours: {neighbours}");
    println!("landlocked: {landlocked}");
    println!("languages:  {languages:?}");
    Ok(())
}
