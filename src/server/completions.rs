//! `POST /v1/completions`: raw text continuation, no chat template; one set
//! of `n` choices per prompt, each bound by the request's `grammar` if it
//! has one (how the remote backend sends a rendered DSPy prompt). Streaming is for chat only: a `stream: true`
//! request here is refused rather than answered in another shape.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::chat::{finish_reason, response_id, shared_prompt_usage};
use super::errors::ApiError;
use super::request::{ApiJson, grammar_constraint, plan};
use super::wire::{CompletionRequest, Prompt, Usage};
use super::{AppState, unix_seconds};

pub(super) async fn handle(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = respond(&state, body, started).await;
    state.metrics.request(
        "completions",
        result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200),
    );
    result
}

async fn respond(
    state: &AppState,
    body: CompletionRequest,
    started: Instant,
) -> Result<Response, ApiError> {
    state.check_model(body.model.as_deref())?;
    if body.sampling.stream == Some(true) {
        return Err(
            ApiError::bad_request("`stream` is supported on /v1/chat/completions only")
                .with_param("stream"),
        );
    }
    let engine = state.engine()?;
    let prompts = match body.prompt {
        Prompt::One(prompt) => vec![prompt],
        Prompt::Many(prompts) if !prompts.is_empty() => prompts,
        Prompt::Many(_) => {
            return Err(ApiError::bad_request("`prompt` must not be empty").with_param("prompt"));
        }
    };
    let constraint = grammar_constraint(engine.as_ref(), body.sampling.grammar.as_deref())?;
    let mut requests = Vec::new();
    for prompt in prompts {
        let planned = plan(
            state,
            engine.as_ref(),
            prompt,
            body.sampling.clone(),
            constraint.clone(),
        )?;
        requests.extend(planned.choices);
    }
    let generations = futures_util::future::join_all(
        requests.into_iter().map(|request| engine.generate(request)),
    )
    .await;
    let generations = generations.into_iter().collect::<crate::Result<Vec<_>>>()?;
    // Each prompt is counted once, however many choices share it.
    let per_prompt = body.sampling.n.unwrap_or(1).max(1) as usize;
    let mut usage = Usage::new(0, 0, 0);
    for prompt_choices in generations.chunks(per_prompt) {
        if let Some(this) = shared_prompt_usage(prompt_choices) {
            usage.add(this);
        }
    }
    let mut choices = Vec::new();
    for (index, generation) in generations.into_iter().enumerate() {
        state.metrics.generation(&generation, started, None);
        choices.push(json!({
            "index": index,
            "text": generation.text,
            "logprobs": Value::Null,
            "finish_reason": finish_reason(generation.finish_reason),
        }));
    }
    Ok(axum::Json(json!({
        "id": response_id("cmpl"),
        "object": "text_completion",
        "created": unix_seconds(),
        "model": state.model_name,
        "choices": choices,
        "usage": usage,
    }))
    .into_response())
}
