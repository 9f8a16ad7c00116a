//! A predictor with a tool: the model calls it, reads its result, answers.
//!
//! ```text
//! cargo run --example tools
//! cargo run --example tools -- path/to/model.gguf
//! ```
//!
//! The tool is an ordinary rig `Tool`, given to dspy-rs's
//! `Predict::new_with_tools`. The crate's own small model was taught to look
//! codes up with a `lookup_code` tool before answering; the codes here are
//! this program's, so the answer can only come from the tool. A real model
//! (Qwen2.5, Llama 3.x, …) takes the same program.

#[path = "common/mod.rs"]
mod common;
#[path = "common/llama_cpp.rs"]
mod llama_cpp_setup;

use std::collections::HashMap;

use dspy_rs::{Predict, Predictor, Signature, configure, example};
use rig::completion::ToolDefinition;
use rig::tool::Tool;
use serde::Deserialize;
use serde_json::json;

#[Signature]
struct ItemCode {
    /// Find the code of the item.
    #[input]
    item: String,
    #[output]
    code: i32,
}

/// A code book only this program knows.
struct CodeBook(HashMap<&'static str, u32>);

#[derive(Deserialize)]
struct LookupArgs {
    item: String,
}

#[derive(Debug, thiserror::Error)]
#[error("no code is known for `{0}`")]
struct UnknownItem(String);

impl Tool for CodeBook {
    const NAME: &'static str = "lookup_code";
    type Error = UnknownItem;
    type Args = LookupArgs;
    type Output = u32;

    async fn definition(&self, _prompt: String) -> ToolDefinition {
        ToolDefinition {
            name: Self::NAME.into(),
            description: "Looks up the code of an item.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"item": {"type": "string", "description": "The item's name."}},
                "required": ["item"],
            }),
        }
    }

    async fn call(&self, args: LookupArgs) -> Result<u32, UnknownItem> {
        self.0
            .get(args.item.as_str())
            .copied()
            .ok_or(UnknownItem(args.item))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (adapter, _scratch) = llama_cpp_setup::llama_cpp_adapter()?;
    configure(adapter.lm().await?, adapter);

    let book = CodeBook(HashMap::from([("green lamp", 731), ("old boat", 264)]));
    let predictor = Predict::new_with_tools(ItemCode::new(), vec![Box::new(book)]);
    for item in ["green lamp", "old boat"] {
        let prediction = predictor
            .forward(example! { "item": "input" => item })
            .await?;
        println!("Item:   {item}");
        for (call, result) in prediction
            .get("tool_calls", None)
            .as_array()
            .into_iter()
            .flatten()
            .zip(
                prediction
                    .get("tool_executions", None)
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
        {
            println!(
                "Call:   {}({})",
                common::plain(call["function"]["name"].clone()),
                call["function"]["arguments"]
            );
            println!("Result: {}", common::plain(result.clone()));
        }
        println!("Answer: {}", common::plain(prediction.get("code", None)));
        println!(
            "({} prompt + {} completion tokens over every round)\n",
            prediction.lm_usage.prompt_tokens, prediction.lm_usage.completion_tokens
        );
    }
    Ok(())
}
