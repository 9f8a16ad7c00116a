//! Tools in the conversation: their definitions, the call a reply makes, and
//! the text calls and results take when a chat template cannot place them.
//!
//! How a model writes a call is its [`ToolFormat`], read from its chat
//! template ([`ChatTemplate::tool_support`](super::ChatTemplate::tool_support)).
//! A template that renders tools itself (Qwen2.5, Hermes, Llama 3.x) gets
//! them through its `tools` variable; any other gets [`fallback_section`]
//! in its system message and the Hermes format, the most widely trained
//! one among small open models. `specs/tools.md` has the families.

use serde_json::{Value, json};

use super::json_text::python_json;

/// A tool the model may call: what `ToolDyn::definition` and an OpenAI
/// request's `tools[].function` carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The name a call uses.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON schema of the arguments (an object).
    pub parameters: Value,
}

impl ToolSpec {
    /// A tool from its name, description and argument schema.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        ToolSpec {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }

    /// The tool as OpenAI (and chat templates' `tools`) write it.
    pub fn to_openai(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }
}

/// One call of a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Identifies the call; its result refers to it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, a JSON object.
    pub arguments: Value,
}

impl ToolCall {
    /// The call as a chat template's `tool_calls` entry (arguments as an
    /// object, as Hugging Face passes them).
    pub(crate) fn to_template(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// Whether and how a reply may call a tool (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// A call or an answer, the model's choice.
    #[default]
    Auto,
    /// An answer only (the tools stay in the prompt).
    None,
    /// A call of one of the tools.
    Required,
    /// A call of this tool.
    Named(String),
}

/// How a model family writes a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`: Hermes 2
    /// Pro, Qwen2.5/Qwen3, SmolLM3, the crate's own model, and the fallback.
    Hermes,
    /// `{"name": …, "parameters": {…}}`, the whole reply: Llama 3.1–3.3's
    /// JSON tool calls.
    Llama3Json,
}

impl ToolFormat {
    /// Text before the call's JSON object.
    pub(crate) fn opening(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "<tool_call>\n",
            ToolFormat::Llama3Json => "",
        }
    }

    /// Text after the call's JSON object.
    pub(crate) fn closing(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "\n</tool_call>",
            ToolFormat::Llama3Json => "",
        }
    }

    /// The key that holds the arguments.
    pub(crate) fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "arguments",
            ToolFormat::Llama3Json => "parameters",
        }
    }

    /// Whether a reply that begins with `start` may still be a call (it is
    /// one, or the beginning of one); what a stream holds back.
    pub fn may_be_call(self, start: &str) -> bool {
        let start = start.trim_start();
        match self {
            ToolFormat::Hermes => {
                let opening = self.opening().trim_end();
                start.starts_with(opening) || opening.starts_with(start)
            }
            // A bare object, or Llama's `<|python_tag|>` before it.
            ToolFormat::Llama3Json => start.is_empty() || start.starts_with(['{', '<']),
        }
    }

    /// A call as the model writes it (and as the template renders it back).
    pub fn call_text(self, call: &ToolCall) -> String {
        let object = json!({"name": call.name, self.arguments_key(): call.arguments});
        format!(
            "{}{}{}",
            self.opening(),
            python_json(&object, None),
            self.closing()
        )
    }

    /// The calls a reply makes; empty when it makes none. A reply that
    /// opens a call it does not finish is an error naming what is wrong.
    pub fn parse_calls(self, reply: &str) -> Result<Vec<ToolCall>, String> {
        let reply = reply.trim();
        match self {
            ToolFormat::Hermes => {
                let mut calls = Vec::new();
                let mut rest = reply;
                while let Some(start) = rest.find("<tool_call>") {
                    let body = &rest[start + "<tool_call>".len()..];
                    let end = body
                        .find("</tool_call>")
                        .ok_or("a `<tool_call>` is not closed")?;
                    calls.push(self.parse_object(body[..end].trim(), calls.len())?);
                    rest = &body[end + "</tool_call>".len()..];
                }
                Ok(calls)
            }
            ToolFormat::Llama3Json => {
                let body = reply.strip_prefix("<|python_tag|>").unwrap_or(reply).trim();
                if !body.starts_with('{') {
                    return Ok(Vec::new());
                }
                match serde_json::from_str::<Value>(body) {
                    Ok(value) if value.get("name").is_some() => {
                        Ok(vec![self.parse_object(body, 0)?])
                    }
                    // A JSON answer, not a call.
                    _ => Ok(Vec::new()),
                }
            }
        }
    }

    fn parse_object(self, text: &str, index: usize) -> Result<ToolCall, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("a tool call is not valid JSON ({e}): {text}"))?;
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("a tool call has no `name`: {text}"))?;
        let mut arguments = value
            .get(self.arguments_key())
            .or_else(|| value.get("arguments"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        signless_zeros(&mut arguments);
        Ok(ToolCall {
            id: call_id(index),
            name: name.to_string(),
            arguments,
        })
    }
}

/// `-0` is a valid JSON integer that serde reads as the float `-0.0`, which
/// a tool taking an integer would refuse: it becomes `0`.
fn signless_zeros(value: &mut Value) {
    match value {
        Value::Number(n) if n.as_f64() == Some(0.0) && n.is_f64() => *value = json!(0),
        Value::Array(items) => items.iter_mut().for_each(signless_zeros),
        Value::Object(map) => map.values_mut().for_each(signless_zeros),
        _ => {}
    }
}

/// A fresh call id (`call_` and 16 hex digits; `index` keeps the calls of
/// one reply apart even if two draws collide).
pub(crate) fn call_id(index: usize) -> String {
    format!(
        "call_{:016x}",
        rand::random::<u64>().wrapping_add(index as u64)
    )
}

/// The tools section a template that cannot render tools gets at the end of
/// its system message: Qwen2.5's own words, so a ChatML model reads exactly
/// what Qwen2.5's template would show it.
pub fn fallback_section(tools: &[ToolSpec]) -> String {
    let mut section = String::from(
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        section.push('\n');
        section.push_str(&python_json(&tool.to_openai(), None));
    }
    section.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    section
}

/// Tool results as the user turn a template without a `tool` role gets
/// (Qwen2.5's words: each result in `<tool_response>` tags).
pub(crate) fn fallback_results<'a>(results: impl IntoIterator<Item = &'a str>) -> String {
    results
        .into_iter()
        .map(|content| format!("<tool_response>\n{content}\n</tool_response>"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "call_1".into(),
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn a_call_written_in_a_format_parses_back() {
        for format in [ToolFormat::Hermes, ToolFormat::Llama3Json] {
            let written = call("lookup", json!({"key": "apple", "n": [1, 2]}));
            let text = format.call_text(&written);
            let parsed = format.parse_calls(&text).unwrap();
            assert_eq!(parsed.len(), 1, "{text}");
            assert_eq!(parsed[0].name, "lookup");
            assert_eq!(parsed[0].arguments, written.arguments);
        }
        assert_eq!(
            ToolFormat::Hermes.call_text(&call("add", json!({"a": 1, "b": 2}))),
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>"
        );
    }

    #[test]
    fn a_negative_zero_argument_reads_as_the_integer_zero() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"n\": -0, \"m\": [-0.0]}}\n</tool_call>";
        let calls = ToolFormat::Hermes.parse_calls(text).unwrap();
        assert_eq!(calls[0].arguments, json!({"n": 0, "m": [0]}));
        assert!(calls[0].arguments["n"].is_i64());
    }

    #[test]
    fn replies_without_calls_have_none_and_broken_calls_are_errors() {
        let hermes = ToolFormat::Hermes;
        assert!(
            hermes
                .parse_calls("[[ ## answer ## ]]\n4")
                .unwrap()
                .is_empty()
        );
        assert!(hermes.parse_calls("<tool_call>\n{\"name\": ").is_err());
        assert!(
            hermes
                .parse_calls("<tool_call>\n{\"x\": 1}\n</tool_call>")
                .is_err()
        );
        let two = "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n\
                   <tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
        let calls = hermes.parse_calls(two).unwrap();
        assert_eq!(
            calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_ne!(calls[0].id, calls[1].id);
        let llama = ToolFormat::Llama3Json;
        assert!(llama.parse_calls("{\"answer\": 4}").unwrap().is_empty());
        assert!(llama.parse_calls("Paris").unwrap().is_empty());
    }

    #[test]
    fn the_fallback_section_lists_each_tool_as_json() {
        let section = fallback_section(&[ToolSpec::new(
            "add",
            "Adds.",
            json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
        )]);
        assert!(section.contains(
            "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"add\", \
             \"description\": \"Adds.\", \"parameters\": {\"type\": \"object\", \
             \"properties\": {\"a\": {\"type\": \"integer\"}}}}}\n</tools>"
        ));
    }
}
