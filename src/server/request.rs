//! From an HTTP request to the engine's [`GenerationRequest`]s: the body
//! decoded with OpenAI-shaped errors, limits checked, the reply budget set
//! (a request's own, else the server's default, never "until the context is
//! full"), and the output constraint chosen — `response_format`, or a DSPy
//! prompt's field grammar.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::AppState;
use super::engine::Engine;
use super::errors::ApiError;
use super::wire::{ChatMessage, ResponseFormat, SamplingFields};
use crate::backend::{GenerationControl, GenerationRequest, Sampling};
use crate::prompt::{DspyReply, OutputConstraint, dspy_reply};

/// Reply budget when neither the request nor the adapter sets one.
const FALLBACK_MAX_TOKENS: usize = 512;
/// Most stop strings, and most bytes in one.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;

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
                top_k: config.top_k,
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
    let mut turns = Vec::with_capacity(messages.len());
    for message in messages {
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
        turns.push((role.to_string(), content));
    }
    Ok(engine.template().render_turns(&turns, true)?)
}

/// The reply's grammar: `response_format` when given, else a DSPy prompt's
/// field grammar (when the first message is a DSPy system message), else none.
pub(crate) fn chat_constraint(
    state: &AppState,
    engine: &dyn Engine,
    messages: &[ChatMessage],
    format: Option<&ResponseFormat>,
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
    // Compiled now, so a schema the grammar engine refuses is this request's 400.
    if let Some(constraint) = &constraint {
        engine.constraint_compiler()?.matcher(constraint)?;
    }
    Ok(constraint)
}
