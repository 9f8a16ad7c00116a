//! The OpenAI API's request and response bodies, as clients send and expect
//! them. Decoding is tolerant where clients differ (message `content` as a
//! string or as an array of parts, `stop` as a string or a list, unknown
//! fields ignored) and strict where a wrong value would mislead (types,
//! ranges: a bad request is a 400, never a guess).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub(crate) sampling: SamplingFields,
    #[serde(default)]
    pub(crate) response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub(crate) tools: Option<Vec<WireTool>>,
    #[serde(default)]
    pub(crate) tool_choice: Option<WireToolChoice>,
}

/// One entry of `tools`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WireTool {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) function: WireFunction,
}

/// A function a model may call: its name, description and argument schema.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WireFunction {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) parameters: Option<Value>,
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"`, or one function by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum WireToolChoice {
    Mode(String),
    Function { function: WireFunctionName },
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WireFunctionName {
    pub(crate) name: String,
}

/// A call in an assistant message: arguments as a JSON-encoded string (as
/// OpenAI writes them), or, from lenient clients, as an object.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WireToolCall {
    #[serde(default)]
    pub(crate) id: Option<String>,
    pub(crate) function: WireCalledFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WireCalledFunction {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) arguments: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CompletionRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) prompt: Prompt,
    #[serde(flatten)]
    pub(crate) sampling: SamplingFields,
}

/// The fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SamplingFields {
    #[serde(default)]
    pub(crate) max_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) temperature: Option<f32>,
    #[serde(default)]
    pub(crate) top_p: Option<f32>,
    #[serde(default)]
    pub(crate) n: Option<u32>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) stop: Option<Stop>,
    #[serde(default)]
    pub(crate) seed: Option<u64>,
    /// llama-server's and vLLM's extension: keep this many likeliest tokens.
    #[serde(default)]
    pub(crate) top_k: Option<u32>,
    /// llama-server's field: a grammar the reply must follow. Taken in
    /// llguidance's Lark (first line `%llguidance {}`, as llama-server built
    /// with llguidance takes it), the dialect of the crate's own grammars.
    #[serde(default)]
    pub(crate) grammar: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// A completion prompt: one string or a list (one choice set each).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JsonSchemaFormat {
    #[serde(default)]
    pub(crate) schema: Option<Value>,
}

/// One message of a conversation.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<Content>,
    #[serde(default)]
    pub(crate) tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    pub(crate) tool_call_id: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
}

/// Message content: a string, or a list of parts (rig sends lists).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) text: Option<String>,
}

impl Content {
    /// The text of the message; a non-text part is an error naming its type.
    pub(crate) fn text(&self) -> Result<String, String> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(piece)) => text.push_str(piece),
                        (kind, _) => {
                            return Err(format!(
                                "content parts of type `{kind}` are not supported"
                            ));
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    pub(crate) total_tokens: usize,
    pub(crate) prompt_tokens_details: PromptDetails,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PromptDetails {
    pub(crate) cached_tokens: usize,
}

impl Usage {
    pub(crate) fn new(prompt: usize, completion: usize, cached: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptDetails {
                cached_tokens: cached,
            },
        }
    }

    pub(crate) fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.prompt_tokens_details.cached_tokens += other.prompt_tokens_details.cached_tokens;
    }
}
