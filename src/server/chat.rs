//! `POST /v1/chat/completions`: the conversation through the model's chat
//! template, `n` choices decoded side by side (sharing the prompt's KV cache
//! where the engine does), whole or as server-sent events. A reply that
//! calls a tool comes back as `tool_calls` (finish reason `tool_calls`); a
//! stream holds back text that may be a call until it knows.

use std::convert::Infallible;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::engine::SharedEngine;
use super::errors::ApiError;
use super::request::{
    ApiJson, Planned, chat_constraint, chat_tools, grammar_constraint, plan, render_chat,
};
use super::wire::{ChatRequest, Usage};
use super::{AppState, unix_seconds};
use crate::backend::{FinishReason, Generation, GenerationControl, GenerationRequest};
use crate::prompt::{ToolCall, ToolChoice, ToolFormat};

/// OpenAI's name for why a reply ended.
pub(super) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Constraint | FinishReason::Cancelled => "stop",
    }
}

/// A fresh response id with `prefix` (`chatcmpl`, `cmpl`).
pub(super) fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

pub(super) async fn handle(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = respond(&state, body, started).await;
    state.metrics.request(
        "chat",
        result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200),
    );
    result
}

async fn respond(
    state: &AppState,
    body: ChatRequest,
    started: Instant,
) -> Result<Response, ApiError> {
    state.check_model(body.model.as_deref())?;
    let engine = state.engine()?;
    let (tools, choice) = chat_tools(&body)?;
    let prompt = render_chat(state, engine.as_ref(), &body.messages, &tools)?;
    let constraint = match grammar_constraint(engine.as_ref(), body.sampling.grammar.as_deref())? {
        Some(_) if !tools.is_empty() || body.response_format.is_some() => {
            return Err(ApiError::bad_request(
                "`grammar` cannot be combined with `tools` or `response_format`",
            )
            .with_param("grammar"));
        }
        Some(grammar) => Some(grammar),
        None => chat_constraint(
            state,
            engine.as_ref(),
            &body.messages,
            body.response_format.as_ref(),
            (&tools, &choice),
        )?,
    };
    // How calls are read back from a reply, when one may make them.
    let calls = (!tools.is_empty() && choice != ToolChoice::None)
        .then(|| engine.template().tool_support().format);
    let planned = plan(state, engine.as_ref(), prompt, body.sampling, constraint)?;
    if planned.stream {
        Ok(stream(state.clone(), engine, planned, calls, started))
    } else {
        whole(state, &engine, planned, calls, started).await
    }
}

/// The calls a reply makes, when tools may be called and it makes any.
fn reply_calls(text: &str, calls: Option<ToolFormat>) -> Option<Vec<ToolCall>> {
    calls?.parse_calls(text).ok().filter(|c| !c.is_empty())
}

/// Calls as OpenAI writes them (`arguments` a JSON-encoded string).
fn wire_calls(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(index, call)| {
            json!({
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments.to_string()},
            })
        })
        .collect()
}

/// All choices at once, in one JSON body.
async fn whole(
    state: &AppState,
    engine: &SharedEngine,
    planned: Planned,
    calls: Option<ToolFormat>,
    started: Instant,
) -> Result<Response, ApiError> {
    let generations = futures_util::future::join_all(
        planned
            .choices
            .into_iter()
            .map(|request| engine.generate(request)),
    )
    .await;
    let generations = generations.into_iter().collect::<crate::Result<Vec<_>>>()?;
    let usage = shared_prompt_usage(&generations);
    let mut choices = Vec::new();
    for (index, generation) in generations.into_iter().enumerate() {
        state.metrics.generation(&generation, started, None);
        let (message, finish) = match reply_calls(&generation.text, calls) {
            Some(calls) => (
                json!({"role": "assistant", "content": Value::Null, "tool_calls": wire_calls(&calls)}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": generation.text}),
                finish_reason(generation.finish_reason),
            ),
        };
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": Value::Null,
            "finish_reason": finish,
        }));
    }
    Ok(axum::Json(json!({
        "id": response_id("chatcmpl"),
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": state.model_name,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": "dsrs-local",
    }))
    .into_response())
}

/// The usage of choices that share one prompt: the prompt counted once,
/// every choice's completion.
pub(super) fn shared_prompt_usage(choices: &[Generation]) -> Option<Usage> {
    let (first, rest) = choices.split_first()?;
    let mut usage = Usage::new(
        first.prompt_tokens,
        first.completion_tokens,
        first.cached_prompt_tokens,
    );
    for choice in rest {
        usage.add(Usage::new(0, choice.completion_tokens, 0));
    }
    Some(usage)
}

/// The choices as server-sent events: a role delta, text deltas as they are
/// generated, a last chunk with the finish reason, usage when asked, then
/// `[DONE]`. A client that goes away stops every choice's generation.
fn stream(
    state: AppState,
    engine: SharedEngine,
    planned: Planned,
    calls: Option<ToolFormat>,
    started: Instant,
) -> Response {
    let (events, receiver) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let id = response_id("chatcmpl");
        let chunk = ChunkWriter {
            id,
            model: state.model_name.clone(),
            created: unix_seconds(),
            events,
        };
        let runs = planned
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, request)| {
                stream_choice(&state, &engine, &chunk, (index, request), calls, started)
            });
        let finished: Vec<Generation> = futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect();
        let usage = shared_prompt_usage(&finished);
        if planned.include_usage {
            chunk.send(json!([]), usage).await;
        }
        let _ = chunk.events.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Writes `chat.completion.chunk` events.
struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    events: mpsc::Sender<Result<Event, Infallible>>,
}

impl ChunkWriter {
    /// Sends one chunk; false when the client is gone.
    async fn send(&self, choices: Value, usage: Option<Usage>) -> bool {
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "dsrs-local",
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = json!(usage);
        }
        let event = Event::default().data(body.to_string());
        self.events.send(Ok(event)).await.is_ok()
    }

    async fn delta(&self, index: usize, delta: Value, finish: Option<&str>) -> bool {
        self.send(
            json!([{"index": index, "delta": delta, "logprobs": Value::Null, "finish_reason": finish}]),
            None,
        )
        .await
    }
}

/// Text of a streamed reply, held back while it may still be a tool call.
struct CallGate {
    calls: Option<ToolFormat>,
    held: String,
    /// The reply is known not to be a call.
    open: bool,
}

impl CallGate {
    fn new(calls: Option<ToolFormat>) -> Self {
        CallGate {
            calls,
            held: String::new(),
            open: calls.is_none(),
        }
    }

    /// What of `piece` may be sent as content now.
    fn pass(&mut self, piece: String) -> Option<String> {
        if self.open {
            return Some(piece);
        }
        self.held.push_str(&piece);
        if self
            .calls
            .is_some_and(|format| format.may_be_call(&self.held))
        {
            return None;
        }
        self.open = true;
        Some(std::mem::take(&mut self.held))
    }
}

/// Streams one choice; returns its generation when it completed.
async fn stream_choice(
    state: &AppState,
    engine: &SharedEngine,
    chunk: &ChunkWriter,
    (index, mut request): (usize, GenerationRequest),
    calls: Option<ToolFormat>,
    started: Instant,
) -> Option<Generation> {
    let mut gate = CallGate::new(calls);
    let (control, mut text) = GenerationControl::streaming();
    request.control = control;
    if !chunk
        .delta(index, json!({"role": "assistant", "content": ""}), None)
        .await
    {
        return None;
    }
    let generation = engine.generate(request);
    tokio::pin!(generation);
    let mut first_token = None;
    let result = loop {
        tokio::select! {
            piece = text.next() => match piece {
                Some(piece) => {
                    first_token.get_or_insert_with(Instant::now);
                    // A client that went away: dropping the generation stops it.
                    if let Some(piece) = gate.pass(piece)
                        && !chunk.delta(index, json!({"content": piece}), None).await
                    {
                        return None;
                    }
                }
                None => break generation.await,
            },
            result = &mut generation => break result,
        }
    };
    // Text the generation confirmed before it returned.
    while let Some(piece) = text.try_next() {
        first_token.get_or_insert_with(Instant::now);
        if let Some(piece) = gate.pass(piece)
            && !chunk.delta(index, json!({"content": piece}), None).await
        {
            return None;
        }
    }
    match result {
        Ok(generation) => {
            state.metrics.generation(&generation, started, first_token);
            let mut reason = finish_reason(generation.finish_reason);
            if !gate.open {
                // The whole reply was held: a call, or text that looked like one.
                let delta = match reply_calls(&generation.text, calls) {
                    Some(calls) => {
                        reason = "tool_calls";
                        json!({"tool_calls": wire_calls(&calls)})
                    }
                    None => json!({"content": gate.held}),
                };
                if !chunk.delta(index, delta, None).await {
                    return None;
                }
            }
            chunk.delta(index, json!({}), Some(reason)).await;
            Some(generation)
        }
        Err(error) => {
            let error = ApiError::from(error);
            let body = json!({"error": {"message": error.message, "type": error.kind}});
            let _ = chunk
                .events
                .send(Ok(Event::default().data(body.to_string())))
                .await;
            None
        }
    }
}
