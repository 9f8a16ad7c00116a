//! A predictor's tools: the model calls them, their results join the
//! conversation, and it goes on until the model answers.
//!
//! Each round renders the whole conversation again (tools through the
//! template, or its fallback section), so its prompt extends the last one
//! and both backends read only the new part (prefix reuse). Under the
//! output constraint a reply is either one call — a known tool, arguments
//! valid for its schema, in the model family's format — or the signature's
//! fields. A tool that fails, or a name no tool has, becomes a result the
//! model reads; more rounds than the `LM`'s `max_tool_iterations` end in
//! [`Error::ToolLoopLimit`].

use std::collections::HashMap;
use std::sync::Arc;

use dspy_rs::{Example, LM, LmUsage, MetaSignature};
use rig::tool::ToolDyn;
use serde_json::{Value, json};

use super::{LocalAdapter, panic_message, usage};
use crate::backend::Backend;
use crate::prompt::{
    OutputConstraint, SignatureFields, ToolCall, ToolChoice, ToolSpec, Turn, format_chat,
    parse_reply,
};
use crate::{Error, Result};

/// The tools' definitions, as the prompt shows them.
pub(super) async fn tool_specs(tools: &[Arc<dyn ToolDyn>]) -> Vec<ToolSpec> {
    let mut specs = Vec::with_capacity(tools.len());
    for tool in tools {
        let definition = tool.definition(String::new()).await;
        specs.push(ToolSpec::new(
            definition.name,
            definition.description,
            definition.parameters,
        ));
    }
    specs
}

impl<B: Backend> LocalAdapter<B> {
    /// Runs a signature call whose model may call `tools` first; returns
    /// the parsed fields (with `tool_calls` and `tool_executions` as
    /// dspy-rs's `ChatAdapter` adds them when calls were made) and the
    /// usage of every round.
    pub(super) async fn predict_with_tools(
        &self,
        lm: &LM,
        signature: &dyn MetaSignature,
        inputs: &Example,
        tools: &[Arc<dyn ToolDyn>],
    ) -> Result<(HashMap<String, Value>, LmUsage)> {
        let fields = SignatureFields::of(signature)?;
        let specs = tool_specs(tools).await;
        let template = self.backend.chat_template();
        let format = template.tool_support().format;
        let max_text_chars = self.config.max_text_chars;
        let constraint = self
            .config
            .constrained
            .then(|| {
                OutputConstraint::for_fields(&fields, max_text_chars).with_tool_calls(
                    &specs,
                    format,
                    &ToolChoice::Auto,
                    max_text_chars,
                )
            })
            .transpose()?;
        let mut turns = Turn::from_chat(&format_chat(signature, inputs)?);
        let mut total = LmUsage::default();
        let mut calls_made: Vec<Value> = Vec::new();
        let mut executions: Vec<Value> = Vec::new();
        let mut round = 0;
        loop {
            let prompt = template.render_conversation(&turns, &specs, true)?;
            let request = self.config.request(lm, prompt, constraint.clone());
            let generation = self.generate(request).await?;
            let turn_usage = usage(&generation);
            total.prompt_tokens += turn_usage.prompt_tokens;
            total.completion_tokens += turn_usage.completion_tokens;
            total.total_tokens += turn_usage.total_tokens;
            let calls = format
                .parse_calls(&generation.text)
                .map_err(|reason| Error::MalformedToolCall { reason })?;
            if calls.is_empty() {
                let mut data = parse_reply(&fields, &generation.text)?;
                if !calls_made.is_empty() {
                    data.insert("tool_calls".into(), Value::Array(calls_made));
                    data.insert("tool_executions".into(), Value::Array(executions));
                }
                return Ok((data, total));
            }
            if round >= lm.max_tool_iterations {
                return Err(Error::ToolLoopLimit {
                    limit: lm.max_tool_iterations,
                    last_call: generation.text.trim().to_string(),
                });
            }
            round += 1;
            tracing::info!(round, calls = calls.len(), "the model calls tools");
            turns.push(Turn::calls("", calls.clone()));
            for call in calls {
                let result = run_tool(tools, &call).await;
                tracing::debug!(tool = %call.name, result = %result, "tool result");
                turns.push(Turn::tool_result(&call, result.as_str()));
                calls_made.push(json!({
                    "id": call.id,
                    "function": {"name": call.name, "arguments": call.arguments},
                }));
                executions.push(Value::String(result));
            }
        }
    }
}

/// Runs one call; what the model reads back. A failure, a panic or an
/// unknown name is said in the result, so the model can answer or retry.
async fn run_tool(tools: &[Arc<dyn ToolDyn>], call: &ToolCall) -> String {
    let Some(tool) = tools.iter().find(|t| t.name() == call.name) else {
        let names: Vec<String> = tools.iter().map(|t| format!("`{}`", t.name())).collect();
        return format!(
            "Error: there is no tool named `{}`; the tools are {}.",
            call.name,
            names.join(", ")
        );
    };
    let tool = Arc::clone(tool);
    let arguments = call.arguments.to_string();
    // On its own task, so a tool that panics is reported, not propagated.
    match tokio::spawn(async move { tool.call(arguments).await }).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => format!("Error: the tool `{}` failed: {error}", call.name),
        Err(error) => format!(
            "Error: the tool `{}` panicked: {}",
            call.name,
            panic_message(error)
        ),
    }
}
