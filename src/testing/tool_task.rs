//! The tools of the tool family ("what is the code of this item?", asked
//! by `tasks.rs`), which only a tool knows: the model must call
//! `lookup_code` with the item, read the result and answer with it.
//!
//! Training shows each example at one of its two rounds — the call the
//! first reply makes, or the answer after the result — with codes drawn at
//! random, so nothing but the tool's result can tell the model a code.
//! Tests run the real loop against [`CodeLookup`], whose codes come from a
//! hash the model never saw. Sometimes a second tool it must not call
//! stands beside it ([`distractor_specs`]).

use std::sync::Arc;

use rig::completion::ToolDefinition;
use rig::tool::{ToolDyn, ToolError};
use rig::wasm_compat::WasmBoxedFuture;
use serde_json::{Value, json};

use crate::prompt::{ToolCall, ToolSpec};

/// The tool's name.
pub const LOOKUP_TOOL: &str = "lookup_code";

/// One round trip of the tool family, as training shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRound {
    /// The tools the prompt offers (the lookup tool, maybe a distractor).
    pub tools: Vec<ToolSpec>,
    /// The call the model should make.
    pub call: ToolCall,
    /// What the tool returns.
    pub result: String,
    /// Train the answer after the result (else the call).
    pub answer_round: bool,
}

/// The lookup tool's definition.
pub fn lookup_spec() -> ToolSpec {
    ToolSpec::new(
        LOOKUP_TOOL,
        "Looks up the code of an item.",
        json!({
            "type": "object",
            "properties": {"item": {"type": "string", "description": "The item's name."}},
            "required": ["item"],
        }),
    )
}

/// Tools the model is offered but must not call for a code.
pub fn distractor_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec::new(
            "get_weather",
            "Gets the weather in a city.",
            json!({
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            }),
        ),
        ToolSpec::new(
            "add",
            "Adds two integers.",
            json!({
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            }),
        ),
    ]
}

/// The code [`CodeLookup`] gives an item: three digits from a hash, a
/// table training never shows.
pub fn code_of(item: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in item.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    100 + hash % 900
}

/// The lookup tool as dspy-rs calls it: `{"item": …}` → the item's code.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodeLookup;

impl ToolDyn for CodeLookup {
    fn name(&self) -> String {
        LOOKUP_TOOL.into()
    }

    fn definition<'a>(&'a self, _prompt: String) -> WasmBoxedFuture<'a, ToolDefinition> {
        Box::pin(async { definition_of(&lookup_spec()) })
    }

    fn call<'a>(&'a self, args: String) -> WasmBoxedFuture<'a, Result<String, ToolError>> {
        Box::pin(async move {
            let args: Value = serde_json::from_str(&args)?;
            let item = args.get("item").and_then(Value::as_str).unwrap_or_default();
            Ok(code_of(item).to_string())
        })
    }
}

/// A tool that answers every call with a fixed text (a distractor, or a
/// stand-in in tests).
#[derive(Debug, Clone)]
pub struct FixedTool {
    spec: ToolSpec,
    reply: Result<String, String>,
}

impl FixedTool {
    /// A tool that always returns `reply`.
    pub fn new(spec: ToolSpec, reply: impl Into<String>) -> Self {
        FixedTool {
            spec,
            reply: Ok(reply.into()),
        }
    }

    /// A tool that always fails with `message`.
    pub fn failing(spec: ToolSpec, message: impl Into<String>) -> Self {
        FixedTool {
            spec,
            reply: Err(message.into()),
        }
    }
}

impl ToolDyn for FixedTool {
    fn name(&self) -> String {
        self.spec.name.clone()
    }

    fn definition<'a>(&'a self, _prompt: String) -> WasmBoxedFuture<'a, ToolDefinition> {
        Box::pin(async { definition_of(&self.spec) })
    }

    fn call<'a>(&'a self, _args: String) -> WasmBoxedFuture<'a, Result<String, ToolError>> {
        Box::pin(async move {
            self.reply.clone().map_err(|message| {
                ToolError::ToolCallError(Box::new(std::io::Error::other(message)))
            })
        })
    }
}

fn definition_of(spec: &ToolSpec) -> ToolDefinition {
    ToolDefinition {
        name: spec.name.clone(),
        description: spec.description.clone(),
        parameters: spec.parameters.clone(),
    }
}

/// The tools a test passes for a round's specs: [`CodeLookup`] for the
/// lookup tool, a [`FixedTool`] for each distractor.
pub fn tools_for(specs: &[ToolSpec]) -> Vec<Arc<dyn ToolDyn>> {
    specs
        .iter()
        .map(|spec| -> Arc<dyn ToolDyn> {
            if spec.name == LOOKUP_TOOL {
                Arc::new(CodeLookup)
            } else {
                Arc::new(FixedTool::new(spec.clone(), "unavailable"))
            }
        })
        .collect()
}
