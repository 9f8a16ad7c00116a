//! What each serving engine's `/v1/completions` takes and returns: the one
//! place that knows how vLLM, SGLang, llama-server and `dsrs-local serve`
//! accept an output grammar (`specs/scale-out.md` shows the requests).

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::backend::{FinishReason, GenerationRequest};
use crate::prompt::COMPLETED_MARKER;

/// The engine behind an endpoint: it decides how the output grammar is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteEngine {
    /// Another `dsrs-local serve`: `grammar` in llguidance's Lark.
    DsrsLocal,
    /// llama-server built with `LLAMA_LLGUIDANCE=ON`: `grammar` with the
    /// `%llguidance` first line.
    LlamaServer,
    /// llama-server built without llguidance: it reads GBNF only, which the
    /// crate does not write, so replies go unconstrained (stops and budget
    /// still sent; the tolerant parser reads them).
    LlamaServerGbnfOnly,
    /// vLLM: `structured_outputs.grammar`, Lark, served by its `guidance`
    /// backend (`--structured-outputs-config.backend guidance`).
    Vllm,
    /// SGLang started with `--grammar-backend llguidance`: `ebnf`, which
    /// that backend reads as llguidance's Lark.
    Sglang,
    /// Any other OpenAI-compatible server: no grammar.
    OpenAi,
}

impl RemoteEngine {
    /// Whether this engine binds replies to the crate's grammar.
    pub fn takes_grammar(self) -> bool {
        grammar_field(self, "").is_some()
    }

    /// Whether it reads `top_k` (an extension; OpenAI's API has none).
    fn takes_top_k(self) -> bool {
        self != RemoteEngine::OpenAi
    }
}

/// The body of one `/v1/completions` call for `request`, whose prompt the
/// caller may have adjusted (`prompt`), with at most `max_tokens` tokens.
pub(crate) fn completion_body(
    engine: RemoteEngine,
    model: Option<&str>,
    prompt: &str,
    request: &GenerationRequest,
    max_tokens: usize,
) -> Value {
    let mut body = Map::new();
    if let Some(model) = model {
        body.insert("model".into(), json!(model));
    }
    body.insert("prompt".into(), json!(prompt));
    body.insert("max_tokens".into(), json!(max_tokens));
    let sampling = &request.sampling;
    let temperature = if sampling.is_greedy() {
        0.0
    } else {
        sampling.temperature
    };
    body.insert("temperature".into(), json!(temperature));
    body.insert("top_p".into(), json!(sampling.top_p));
    if engine.takes_top_k() && sampling.top_k > 0 {
        body.insert("top_k".into(), json!(sampling.top_k));
    }
    body.insert("seed".into(), json!(sampling.seed));
    body.insert("stream".into(), json!(false));

    let grammar = request
        .constraint
        .as_ref()
        .and_then(|constraint| grammar_field(engine, constraint.lark()));
    let mut stop = request.stop.clone();
    // Unconstrained, nothing else ends a DSPy reply at its marker.
    if grammar.is_none() && request.constraint.is_some() {
        stop.push(COMPLETED_MARKER.to_string());
    }
    if !stop.is_empty() {
        body.insert("stop".into(), json!(stop));
    }
    if let Some((field, value)) = grammar {
        body.insert(field.into(), value);
    }
    Value::Object(body)
}

/// The field, and its value, that carries a Lark grammar to `engine`; `None`
/// for an engine that takes none.
fn grammar_field(engine: RemoteEngine, lark: &str) -> Option<(&'static str, Value)> {
    match engine {
        RemoteEngine::DsrsLocal | RemoteEngine::LlamaServer => {
            Some(("grammar", json!(format!("%llguidance {{}}\n{lark}"))))
        }
        RemoteEngine::Vllm => Some(("structured_outputs", json!({ "grammar": lark }))),
        RemoteEngine::Sglang => Some(("ebnf", json!(lark))),
        RemoteEngine::LlamaServerGbnfOnly | RemoteEngine::OpenAi => None,
    }
}

/// A completion as the engine returned it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteReply {
    pub(crate) text: String,
    pub(crate) finish_reason: FinishReason,
    pub(crate) prompt_tokens: Option<usize>,
    pub(crate) completion_tokens: Option<usize>,
    pub(crate) cached_tokens: Option<usize>,
    /// The engine's own time reading the prompt and generating, where it
    /// reports them (llama-server's `timings`).
    pub(crate) engine_time: Option<(Duration, Duration)>,
}

impl RemoteReply {
    /// What a call the caller gave up on returns.
    pub(crate) fn cancelled() -> Self {
        RemoteReply {
            text: String::new(),
            finish_reason: FinishReason::Cancelled,
            prompt_tokens: None,
            completion_tokens: Some(0),
            cached_tokens: None,
            engine_time: None,
        }
    }
}

/// Reads a `/v1/completions` reply: the first choice's text and finish
/// reason, and the usage each engine reports (`prompt_tokens_details.cached_tokens`
/// where it counts prefix-cache hits).
pub(crate) fn read_completion(body: &Value) -> Result<RemoteReply, String> {
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or("the reply has no `choices`")?;
    let text = choice
        .get("text")
        .and_then(Value::as_str)
        .ok_or("the first choice has no `text`")?
        .to_string();
    let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    let usage = body.get("usage");
    let count = |value: Option<&Value>| {
        value
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
    };
    Ok(RemoteReply {
        text,
        finish_reason,
        prompt_tokens: count(usage.and_then(|u| u.get("prompt_tokens"))),
        completion_tokens: count(usage.and_then(|u| u.get("completion_tokens"))),
        cached_tokens: count(
            usage
                .and_then(|u| u.get("prompt_tokens_details"))
                .and_then(|d| d.get("cached_tokens")),
        ),
        engine_time: body.get("timings").and_then(|t| {
            let ms = |key| {
                let ms = t.get(key)?.as_f64()?;
                Duration::try_from_secs_f64(ms / 1000.0).ok()
            };
            Some((ms("prompt_ms")?, ms("predicted_ms")?))
        }),
    })
}

/// The message of an OpenAI-shaped error body (`{"error": {"message": …}}`),
/// else the body itself, cut to a readable length.
pub(crate) fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message").and_then(Value::as_str).or(e.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().to_string());
    const MOST: usize = 500;
    match message.char_indices().nth(MOST) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Sampling;
    use crate::prompt::OutputConstraint;

    fn constrained() -> GenerationRequest {
        let mut request = GenerationRequest::new("<s>Q: 2+2?\n", 64);
        request.constraint = Some(OutputConstraint::from_lark("start: \"4\"\n"));
        request.stop = vec!["\n\n\n".into()];
        request.sampling = Sampling {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            seed: 7,
        };
        request
    }

    /// Each engine gets the grammar in the one field it reads (its
    /// documented name), and the same budget, stops and sampling.
    #[test]
    fn each_engine_gets_the_grammar_in_its_own_field() {
        let request = constrained();
        let body = |engine| completion_body(engine, Some("m"), "Q", &request, 32);
        let llguidance = json!("%llguidance {}\nstart: \"4\"\n");
        assert_eq!(body(RemoteEngine::LlamaServer)["grammar"], llguidance);
        assert_eq!(body(RemoteEngine::DsrsLocal)["grammar"], llguidance);
        assert_eq!(
            body(RemoteEngine::Vllm)["structured_outputs"],
            json!({"grammar": "start: \"4\"\n"})
        );
        assert_eq!(body(RemoteEngine::Sglang)["ebnf"], json!("start: \"4\"\n"));
        for engine in [
            RemoteEngine::DsrsLocal,
            RemoteEngine::LlamaServer,
            RemoteEngine::Vllm,
            RemoteEngine::Sglang,
        ] {
            let body = body(engine);
            assert_eq!(body["model"], "m");
            assert_eq!(body["prompt"], "Q");
            assert_eq!(body["max_tokens"], 32);
            assert_eq!(body["stop"], json!(["\n\n\n"]), "{engine:?}");
            assert_eq!(body["top_k"], 40);
            assert_eq!(body["seed"], 7);
            assert_eq!(body["stream"], false);
            let fields = ["grammar", "structured_outputs", "ebnf"];
            let grammars = fields.iter().filter(|f| body.get(**f).is_some()).count();
            assert_eq!(grammars, 1, "{engine:?}: {body}");
        }
    }

    /// An engine that cannot take the grammar is told to stop at the
    /// completed marker, and gets no field it would reject.
    #[test]
    fn without_a_grammar_the_completed_marker_stops_the_reply() {
        let request = constrained();
        for engine in [RemoteEngine::LlamaServerGbnfOnly, RemoteEngine::OpenAi] {
            let body = completion_body(engine, None, "Q", &request, 32);
            assert_eq!(body["stop"], json!(["\n\n\n", COMPLETED_MARKER]));
            assert!(body.get("model").is_none());
            for field in ["grammar", "structured_outputs", "ebnf"] {
                assert!(body.get(field).is_none(), "{engine:?}: {body}");
            }
        }
        let openai = completion_body(RemoteEngine::OpenAi, None, "Q", &request, 32);
        assert!(openai.get("top_k").is_none());
        let greedy = GenerationRequest::new("Q", 8);
        let body = completion_body(RemoteEngine::Vllm, None, "Q", &greedy, 8);
        assert_eq!(body["temperature"], 0.0);
        assert!(body.get("stop").is_none() && body.get("top_k").is_none());
    }

    #[test]
    fn replies_are_read_with_their_usage_or_refused_with_a_reason() {
        let reply = read_completion(&json!({
            "choices": [{"index": 0, "text": "4", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1,
                      "prompt_tokens_details": {"cached_tokens": 8}},
            "timings": {"prompt_ms": 2.5, "predicted_ms": 40.0}
        }))
        .expect("a whole reply");
        assert_eq!(reply.text, "4");
        assert_eq!(reply.finish_reason, FinishReason::Length);
        assert_eq!(
            (
                reply.prompt_tokens,
                reply.completion_tokens,
                reply.cached_tokens
            ),
            (Some(12), Some(1), Some(8))
        );
        assert_eq!(
            reply.engine_time,
            Some((Duration::from_micros(2500), Duration::from_millis(40)))
        );
        let bare = read_completion(&json!({"choices": [{"text": "x"}]})).expect("no usage");
        assert_eq!(
            (bare.finish_reason, bare.prompt_tokens),
            (FinishReason::Stop, None)
        );
        for broken in [
            json!({}),
            json!({"choices": []}),
            json!({"choices": [{"text": 3}]}),
        ] {
            assert!(read_completion(&broken).is_err(), "{broken}");
        }
        assert_eq!(
            error_message(r#"{"error": {"message": "context exceeded", "code": 400}}"#),
            "context exceeded"
        );
        assert_eq!(error_message("  plain text\n"), "plain text");
        assert_eq!(error_message(&"x".repeat(900)).chars().count(), 501);
    }
}
