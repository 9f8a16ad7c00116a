//! From an HTTP request to the engine's [`GenerationRequest`]s: the body
//! decoded with OpenAI-shaped errors, limits checked, the reply budget set
//! (a request's own, else the server's default, never "until the context is
//! full"), and the output constraint chosen — `response_format`, or a DSPy
//! prompt's field grammar — with a tool call beside it when `tools` allow.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::AppState;
use super::engine::Engine;
use super::errors::ApiError;
use super::wire::{ChatMessage, ChatRequest, ResponseFormat, SamplingFields, WireToolChoice};
use crate::backend::{GenerationControl, GenerationRequest, Sampling};
use crate::prompt::{
    DspyReply, OutputConstraint, ToolCall, ToolChoice, ToolSpec, Turn, dspy_reply,
};

/// Reply budget when neither the request nor the adapter sets one.
const FALLBACK_MAX_TOKENS: usize = 512;
/// Most tools in one request (OpenAI's limit).
const MAX_TOOLS: usize = 128;
/// Most stop strings, and most bytes in one.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;
/// Most bytes of JSON schema in one request (`response_format`, or all the
/// tools' parameters together): far above real ones, and it bounds the work
/// of compiling the grammar before the request is refused or run.
const MAX_SCHEMA_BYTES: usize = 128 << 10;
/// How a grammar says it is llguidance's Lark (llama-server's convention).
const LLGUIDANCE_PREFIX: &str = "%llguidance";

/// Refuses a schema over [`MAX_SCHEMA_BYTES`].
fn check_schema_size<'a>(
    schemas: impl IntoIterator<Item = &'a serde_json::Value>,
    param: &'static str,
) -> Result<(), ApiError> {
    let bytes: usize = schemas
        .into_iter()
        .map(|schema| schema.to_string().len())
        .sum();
    if bytes > MAX_SCHEMA_BYTES {
        return Err(ApiError::bad_request(format!(
            "the JSON schemas of one request may have {MAX_SCHEMA_BYTES} bytes; these have {bytes}"
        ))
        .with_param(param));
    }
    Ok(())
}

/// A JSON body; every failure to read it is an OpenAI-shaped error (413 for
/// a body over the limit, 400 for anything malformed, naming where).
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError {
                        message: format!("the request body is too large: {rejection}"),
                        ..ApiError::too_large(0)
                    }
                } else {
                    ApiError::bad_request(format!("the request body cannot be read: {rejection}"))
                }
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut deserializer)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let place = if path == "." {
                    String::new()
                } else {
                    format!(" at `{path}`")
                };
                ApiError::bad_request(format!(
                    "the request body is not valid{place}: {}",
                    e.inner()
                ))
            })
    }
}

/// What the engine will run for one request: a generation per choice.
pub(crate) struct Planned {
    /// One request per choice (`n`), seeds apart.
    pub(crate) choices: Vec<GenerationRequest>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

/// Checks the sampling fields and builds the requests for `prompt`.
pub(crate) fn plan(
    state: &AppState,
    engine: &dyn Engine,
    prompt: String,
    fields: SamplingFields,
    constraint: Option<OutputConstraint>,
) -> Result<Planned, ApiError> {
    let options = &state.options;
    let (_, waiting) = engine.load();
    if waiting >= options.max_waiting {
        return Err(ApiError::busy(waiting));
    }
    let config = engine.generation_config();
    let temperature = fields.temperature.or(config.temperature).unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(format!(
            "`temperature` must be between 0 and 2, not {temperature}"
        ))
        .with_param("temperature"));
    }
    let top_p = fields.top_p.unwrap_or(config.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(
            ApiError::bad_request(format!("`top_p` must be in (0, 1], not {top_p}"))
                .with_param("top_p"),
        );
    }
    let n = fields.n.unwrap_or(1) as usize;
    if n == 0 || n > options.max_choices {
        return Err(ApiError::bad_request(format!(
            "`n` must be from 1 to {}, not {n}",
            options.max_choices
        ))
        .with_param("n"));
    }
    let stop = fields.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_STOPS} stop strings of at most {MAX_STOP_BYTES} bytes each"
        ))
        .with_param("stop"));
    }
    let asked = fields.max_completion_tokens.or(fields.max_tokens);
    if asked == Some(0) {
        return Err(
            ApiError::bad_request("`max_tokens` must be at least 1").with_param("max_tokens")
        );
    }
    let budget = asked.map_or_else(
        || {
            options
                .default_max_tokens
                .or(config.max_tokens)
                .unwrap_or(FALLBACK_MAX_TOKENS)
        },
        |n| usize::try_from(n).unwrap_or(usize::MAX),
    );
    // A budget past the context is cut to what fits (the reply then ends
    // with `length`); a prompt that leaves no room is refused with both numbers.
    let prompt_tokens = engine.count_tokens(&prompt)?;
    let context = engine.context_length();
    if prompt_tokens >= context {
        return Err(crate::Error::PromptTooLong {
            prompt_tokens,
            context_length: context,
        }
        .into());
    }
    let max_tokens = budget.min(context - prompt_tokens);
    let seed = fields.seed.or(config.seed).unwrap_or_else(rand::random);
    let choices = (0..n as u64)
        .map(|i| GenerationRequest {
            prompt: prompt.clone(),
            sampling: Sampling {
                temperature,
                top_p,
                top_k: fields.top_k.map_or(config.top_k, |k| k as usize),
                seed: seed.wrapping_add(i),
            },
            max_tokens,
            stop: stop.clone(),
            constraint: constraint.clone(),
            control: GenerationControl::default(),
        })
        .collect();
    Ok(Planned {
        choices,
        stream: fields.stream.unwrap_or(false),
        include_usage: fields.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// The conversation rendered through the model's chat template, ready for
/// the assistant's turn.
pub(crate) fn render_chat(
    state: &AppState,
    engine: &dyn Engine,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty").with_param("messages"));
    }
    if messages.len() > state.options.max_messages {
        return Err(ApiError::bad_request(format!(
            "at most {} messages in one request",
            state.options.max_messages
        ))
        .with_param("messages"));
    }
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let role = match message.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown message role `{other}` (system, developer, user, assistant, tool)"
                ))
                .with_param("messages"));
            }
        };
        let content = match &message.content {
            Some(content) => content
                .text()
                .map_err(|e| ApiError::bad_request(e).with_param("messages"))?,
            None => String::new(),
        };
        let mut turn = Turn::new(role, content);
        if role == "assistant" {
            for call in message.tool_calls.iter().flatten() {
                turn.tool_calls.push(ToolCall {
                    id: call.id.clone().unwrap_or_else(|| format!("call_{index}")),
                    name: call.function.name.clone(),
                    arguments: call_arguments(call.function.arguments.as_ref())
                        .map_err(|e| ApiError::bad_request(e).with_param("messages"))?,
                });
            }
        }
        if role == "tool" {
            turn.tool_call_id.clone_from(&message.tool_call_id);
            // The tool's name: the message's, else that of the call it answers.
            turn.name = message.name.clone().or_else(|| {
                let id = message.tool_call_id.as_deref()?;
                turns
                    .iter()
                    .flat_map(|t| &t.tool_calls)
                    .find(|c| c.id == id)
                    .map(|c| c.name.clone())
            });
        }
        turns.push(turn);
    }
    Ok(engine.template().render_conversation(&turns, tools, true)?)
}

/// A call's arguments from a request: a JSON-encoded string (OpenAI's
/// form), or an object.
fn call_arguments(arguments: Option<&serde_json::Value>) -> Result<serde_json::Value, String> {
    match arguments {
        None => Ok(json!({})),
        Some(serde_json::Value::String(text)) if text.trim().is_empty() => Ok(json!({})),
        Some(serde_json::Value::String(text)) => serde_json::from_str(text)
            .map_err(|e| format!("a tool call's `arguments` is not valid JSON ({e}): {text}")),
        Some(other) => Ok(other.clone()),
    }
}

/// The tools a chat request offers and its `tool_choice`, checked.
pub(crate) fn chat_tools(body: &ChatRequest) -> Result<(Vec<ToolSpec>, ToolChoice), ApiError> {
    let bad = |message: String| ApiError::bad_request(message).with_param("tools");
    let wire = body.tools.as_deref().unwrap_or_default();
    if wire.len() > MAX_TOOLS {
        return Err(bad(format!("at most {MAX_TOOLS} tools in one request")));
    }
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(wire.len());
    for tool in wire {
        if tool.kind != "function" {
            return Err(bad(format!(
                "tools of type `{}` are not supported (only `function`)",
                tool.kind
            )));
        }
        let name = &tool.function.name;
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(bad(format!(
                "tool name `{name}` must be 1 to 64 letters, digits, `_` or `-`"
            )));
        }
        if specs.iter().any(|s| &s.name == name) {
            return Err(bad(format!("two tools are named `{name}`")));
        }
        let parameters = match &tool.function.parameters {
            None => json!({"type": "object", "properties": {}}),
            Some(schema @ serde_json::Value::Object(_)) => schema.clone(),
            Some(_) => {
                return Err(bad(format!(
                    "the `parameters` of tool `{name}` must be a JSON schema object"
                )));
            }
        };
        specs.push(ToolSpec::new(
            name.clone(),
            tool.function.description.clone().unwrap_or_default(),
            parameters,
        ));
    }
    check_schema_size(specs.iter().map(|s| &s.parameters), "tools")?;
    let bad_choice = |message: String| ApiError::bad_request(message).with_param("tool_choice");
    let choice = match &body.tool_choice {
        None => ToolChoice::Auto,
        Some(WireToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad_choice(format!(
                    "`tool_choice` must be `auto`, `none`, `required` or a function, not `{other}`"
                )));
            }
        },
        Some(WireToolChoice::Function { function }) => ToolChoice::Named(function.name.clone()),
    };
    match &choice {
        ToolChoice::Required if specs.is_empty() => Err(bad_choice(
            "`tool_choice` is `required` but no tools are given".into(),
        )),
        ToolChoice::Named(name) if !specs.iter().any(|s| &s.name == name) => Err(bad_choice(
            format!("`tool_choice` names `{name}`, which is not among the tools"),
        )),
        _ => Ok((specs, choice)),
    }
}

/// A request's own grammar (`grammar`), checked and compiled: llguidance's
/// Lark with llama-server's `%llguidance` first line. GBNF is refused by
/// name rather than misread.
pub(crate) fn grammar_constraint(
    engine: &dyn Engine,
    grammar: Option<&str>,
) -> Result<Option<OutputConstraint>, ApiError> {
    let Some(grammar) = grammar else {
        return Ok(None);
    };
    if grammar.len() > MAX_SCHEMA_BYTES {
        return Err(ApiError::bad_request(format!(
            "a grammar may have {MAX_SCHEMA_BYTES} bytes; this one has {}",
            grammar.len()
        ))
        .with_param("grammar"));
    }
    if !grammar.trim_start().starts_with(LLGUIDANCE_PREFIX) {
        return Err(ApiError::bad_request(format!(
            "only llguidance Lark grammars are taken (first line `{LLGUIDANCE_PREFIX} {{}}`); GBNF is not"
        ))
        .with_param("grammar"));
    }
    let constraint = OutputConstraint::from_lark(grammar);
    engine
        .constraint_compiler()?
        .matcher(&constraint)
        .map_err(|e| ApiError::from(e).with_param("grammar"))?;
    Ok(Some(constraint))
}

/// The reply's grammar: `response_format` when given, else a DSPy prompt's
/// field grammar (when the first message is a DSPy system message), else
/// none; or, when `tools` may be called, any of those (free text for none)
/// or one call.
pub(crate) fn chat_constraint(
    state: &AppState,
    engine: &dyn Engine,
    messages: &[ChatMessage],
    format: Option<&ResponseFormat>,
    (tools, choice): (&[ToolSpec], &ToolChoice),
) -> Result<Option<OutputConstraint>, ApiError> {
    let max_text_chars = engine.generation_config().max_text_chars;
    let dspy = || {
        if !state.options.dspy_grammar {
            return None;
        }
        messages
            .first()
            .filter(|m| m.role == "system" || m.role == "developer")
            .and_then(|m| m.content.as_ref()?.text().ok())
            .and_then(|system| dspy_reply(&system))
    };
    let constraint = match format {
        // A DSPy JSONAdapter prompt asking for any object gets its fields' object.
        Some(ResponseFormat::JsonObject) => {
            let schema = match dspy() {
                Some(DspyReply::JsonObject(fields) | DspyReply::Markers(fields)) => {
                    fields.json_schema()
                }
                None => json!({"type": "object"}),
            };
            Some(OutputConstraint::json(&schema, max_text_chars))
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.as_ref().ok_or_else(|| {
                ApiError::bad_request("`response_format.json_schema.schema` is missing")
                    .with_param("response_format")
            })?;
            check_schema_size([schema], "response_format")?;
            Some(OutputConstraint::json(schema, max_text_chars))
        }
        Some(ResponseFormat::Text) => None,
        None => match dspy() {
            Some(DspyReply::Markers(fields)) => {
                Some(OutputConstraint::for_fields(&fields, max_text_chars))
            }
            Some(DspyReply::JsonObject(fields)) => Some(OutputConstraint::json(
                &fields.json_schema(),
                max_text_chars,
            )),
            None => None,
        },
    };
    let constraint = if tools.is_empty() || *choice == ToolChoice::None {
        constraint
    } else {
        let tool_format = engine.template().tool_support().format;
        let reply = constraint.unwrap_or_else(OutputConstraint::free_text);
        Some(
            reply
                .with_tool_calls(tools, tool_format, choice, max_text_chars)
                .map_err(|e| ApiError::bad_request(e.to_string()).with_param("tool_choice"))?,
        )
    };
    // Compiled now, so a schema the grammar engine refuses is this request's 400.
    if let Some(constraint) = &constraint {
        engine.constraint_compiler()?.matcher(constraint)?;
    }
    Ok(constraint)
}
