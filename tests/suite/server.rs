//! The OpenAI-compatible server through real HTTP on loopback: what clients
//! send, what they get back, every bad input, disconnects and load.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dspy_rs::{ChatAdapter, adapter::Adapter, example};
use dsrs_local::prompt::{SignatureFields, parse_reply};
use dsrs_local::server::{RunningServer, Server, ServerOptions};
use dsrs_local::{
    Backend, GenerationConfig, GenerationRequest, LlamaCppAdapter, LlamaCppConfig,
    LlamaCppLoadOptions, LlamaCppModel,
};
use serde_json::{Value, json};

use crate::MultiField;
use crate::conformance::TINY_CHAT_MODEL;
use crate::support::follows_code_grammar;

static MODEL: LazyLock<Arc<LlamaCppModel>> = LazyLock::new(|| {
    Arc::new(
        LlamaCppModel::load(&TINY_CHAT_MODEL.1, LlamaCppLoadOptions::default()).expect("loads"),
    )
});

/// The name the server gives the tiny model (its file's stem).
const NAME: &str = "tiny-chat";

fn adapter(sequences: usize) -> LlamaCppAdapter {
    LlamaCppAdapter::from_loaded_model(
        Arc::clone(&MODEL),
        LlamaCppConfig::default()
            .with_context_length(4096)
            .with_parallel_sequences(sequences)
            .with_generation(
                GenerationConfig::default()
                    .with_max_text_chars(60)
                    .with_max_concurrency(sequences.max(4)),
            ),
    )
}

fn start(adapter: LlamaCppAdapter, options: ServerOptions) -> RunningServer {
    Server::start(adapter, "127.0.0.1:0".parse().unwrap(), options).unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn post(server: &RunningServer, path: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", server.base_url()))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_answer_with_the_shape_clients_parse_and_real_usage() {
    let adapter = adapter(1);
    let server = start(adapter.clone(), ServerOptions::default());
    let (status, reply) = post(
        &server,
        "/chat/completions",
        &chat("Hello there", json!({})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    for key in ["id", "object", "created", "model", "choices", "usage"] {
        assert!(!reply[key].is_null(), "`{key}` missing: {reply}");
    }
    assert!(reply["created"].is_u64());
    assert_eq!(reply["object"], "chat.completion");
    let choice = &reply["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["finish_reason"].is_string());
    let usage = &reply["usage"];
    let prompt = adapter
        .backend()
        .chat_template()
        .render_turns(&[("user".into(), "Hello there".into())], true)
        .unwrap();
    assert_eq!(
        usage["prompt_tokens"].as_u64().unwrap() as usize,
        adapter.backend().count_tokens(&prompt).unwrap(),
        "usage counts the rendered prompt's tokens"
    );
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    // rig sends content as an array of parts; the same conversation answers the same.
    let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]});
    let (_, again) = post(&server, "/chat/completions", &chat("", parts)).await;
    assert_eq!(again["choices"][0]["message"], choice["message"]);
}

/// Reads a server-sent-events body into its `data:` payloads.
async fn sse(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_deltas_add_up_to_the_whole_reply_then_usage_and_done() {
    let server = start(adapter(1), ServerOptions::default());
    let (_, whole) = post(
        &server,
        "/chat/completions",
        &chat("Tell me a story", json!({"max_tokens": 24})),
    )
    .await;
    let body = chat(
        "Tell me a story",
        json!({"max_tokens": 24, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, whole["choices"][0]["finish_reason"]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][key], whole["usage"][key], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_continue_raw_text_as_the_adapter_does() {
    let adapter = adapter(1);
    let server = start(adapter.clone(), ServerOptions::default());
    let body =
        json!({"model": NAME, "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0});
    let (status, reply) = post(&server, "/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "text_completion");
    let direct = adapter
        .generate(GenerationRequest::new("Once upon a time", 10))
        .await
        .unwrap();
    assert_eq!(reply["choices"][0]["text"], json!(direct.text));
    assert_eq!(
        reply["usage"]["completion_tokens"],
        json!(direct.completion_tokens)
    );
}

/// A request's own `grammar` (llguidance Lark, llama-server's `%llguidance`
/// form) binds the reply on both endpoints, as the remote backend sends it;
/// GBNF, a grammar that does not compile, and a grammar beside tools are
/// refused naming `grammar`.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_grammar_binds_the_reply_and_gbnf_is_refused_by_name() {
    let server = start(adapter(1), ServerOptions::default());
    let grammar = "%llguidance {}\nstart: /[0-9]{3}-[a-c]{2}/\n";
    let body = json!({"prompt": "Once upon a time", "max_tokens": 12, "grammar": grammar});
    let (status, reply) = post(&server, "/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let text = reply["choices"][0]["text"].as_str().unwrap_or_default();
    assert!(follows_code_grammar(text), "{text:?}");
    let (status, reply) = post(
        &server,
        "/chat/completions",
        &chat("Hi", json!({"grammar": grammar})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let text = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(follows_code_grammar(text), "{text:?}");

    let tool =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    for (path, body, mentions) in [
        (
            "/completions",
            json!({"prompt": "x", "grammar": "root ::= \"a\""}),
            "GBNF",
        ),
        (
            "/completions",
            json!({"prompt": "x", "grammar": "%llguidance {}\nstart: undefined_rule\n"}),
            "undefined_rule",
        ),
        (
            "/chat/completions",
            chat("x", json!({"grammar": grammar, "tools": tool})),
            "cannot be combined",
        ),
    ] {
        let (status, reply) = post(&server, path, &body).await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["error"]["param"], "grammar", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "{message:?} should mention {mentions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn models_health_and_metrics_answer() {
    let server = start(adapter(1), ServerOptions::default());
    let http = client();
    let models: Value = http
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], NAME);
    let root = format!("http://{}", server.address());
    let health: Value = http
        .get(format!("{root}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    post(&server, "/chat/completions", &chat("Hi", json!({}))).await;
    let metrics = crate::support::metrics_text(&http, &root).await;
    for family in [
        "dsrs_requests_total{endpoint=\"chat\",status=\"200\"} 1",
        "dsrs_prompt_tokens_total",
        "dsrs_completion_tokens_total",
        "dsrs_cached_prompt_tokens_total",
        "dsrs_queue_depth 0",
        "dsrs_time_to_first_token_seconds_count 1",
        "dsrs_decode_tokens_per_second",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    // The engine's own counters: the reply took passes, and time in them.
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(counter("dsrs_forward_passes_total") >= 1.0, "{metrics}");
    assert!(
        counter("dsrs_forward_pass_tokens_total") >= counter("dsrs_forward_passes_total"),
        "{metrics}"
    );
    // Every sampled token was chosen from a row of logits a pass returned,
    // and a pass returns no more rows than it read tokens.
    let rows = counter("dsrs_forward_pass_logit_rows_total");
    assert!(rows >= counter("dsrs_sampled_tokens_total"), "{metrics}");
    assert!(
        rows <= counter("dsrs_forward_pass_tokens_total"),
        "{metrics}"
    );
    assert!(
        counter("dsrs_forward_pass_seconds_total") > 0.0,
        "{metrics}"
    );
    assert!(
        counter("dsrs_token_choice_seconds_total") > 0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn response_format_json_schema_gives_json_that_follows_it() {
    let server = start(adapter(1), ServerOptions::default());
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false
    });
    let format = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}, "max_tokens": 200});
    let (status, reply) = post(&server, "/chat/completions", &chat("Who?", format)).await;
    assert_eq!(status, 200, "{reply}");
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
    let value: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(
        value["name"].is_string() && value["age"].is_i64(),
        "{value}"
    );
    assert_eq!(value.as_object().unwrap().len(), 2);

    let object = json!({"response_format": {"type": "json_object"}, "max_tokens": 100});
    let (_, reply) = post(&server, "/chat/completions", &chat("Any", object)).await;
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        serde_json::from_str::<Value>(content).unwrap().is_object(),
        "{content}"
    );
}

/// A dspy-rs `ChatAdapter` conversation, as its `LM` sends it, gets the
/// signature's field grammar: the typed reply always parses.
#[tokio::test(flavor = "multi_thread")]
async fn dspy_prompts_are_held_to_their_field_grammar() {
    let server = start(adapter(1), ServerOptions::default());
    let signature = MultiField::new();
    let chat = ChatAdapter.format(
        &signature,
        example! { "number": "input" => 21, "language": "input" => "English" },
    );
    let messages: Vec<Value> = chat
        .messages
        .iter()
        .map(|m| {
            let role = match m {
                dspy_rs::Message::System { .. } => "system",
                dspy_rs::Message::User { .. } => "user",
                dspy_rs::Message::Assistant { .. } => "assistant",
            };
            json!({"role": role, "content": [{"type": "text", "text": m.content()}]})
        })
        .collect();
    let body = json!({"model": NAME, "messages": messages, "max_tokens": 400, "temperature": 0.7, "seed": 3});
    let (status, reply) = post(&server, "/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
    let fields = SignatureFields::of(&signature).unwrap();
    let parsed = parse_reply(&fields, content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(
        parsed["doubled"].is_i64() && parsed["is_even"].is_boolean(),
        "{parsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn n_choices_are_seeded_apart_and_repeat_with_the_seed() {
    let server = start(adapter(4), ServerOptions::default());
    let body = chat(
        "Pick",
        json!({"n": 3, "temperature": 1.0, "seed": 11, "max_tokens": 8}),
    );
    let (status, first) = post(&server, "/chat/completions", &body).await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = post(&server, "/chat/completions", &body).await;
    let texts = |reply: &Value| -> Vec<Value> {
        reply["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].clone())
            .collect()
    };
    assert_eq!(texts(&first).len(), 3);
    assert_eq!(
        texts(&first),
        texts(&second),
        "the same seed gives the same choices"
    );
    let indexes: Vec<u64> = first["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
}

/// Every bad input gets its status and an OpenAI-shaped error; the server
/// answers the next good request.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openai_errors_and_nothing_else_breaks() {
    let mut options = ServerOptions::default().with_api_key("sesame");
    options.max_body_bytes = 4096;
    let server = start(adapter(1), options);
    let http = client();
    let url = format!("{}/chat/completions", server.base_url());
    let send = |body: reqwest::Body, key: Option<&str>| {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let check = |status: u16, expected: u16, body: &Value, contains: &str| {
        assert_eq!(status, expected, "{body}");
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}"));
        assert!(body["error"]["type"].is_string(), "{body}");
        assert!(
            message.contains(contains),
            "{message:?} should mention {contains:?}"
        );
    };
    let cases: Vec<(Vec<u8>, Option<&str>, u16, &str)> = vec![
        (b"{not json".to_vec(), Some("sesame"), 400, "not valid"),
        (br#"{"messages": "hi"}"#.to_vec(), Some("sesame"), 400, "messages"),
        (br#"{"messages": []}"#.to_vec(), Some("sesame"), 400, "must not be empty"),
        (chat("x", json!({"model": "gpt-4"})).to_string().into_bytes(), Some("sesame"), 404, "gpt-4"),
        (chat("x", json!({"n": 0})).to_string().into_bytes(), Some("sesame"), 400, "`n`"),
        (chat("x", json!({"temperature": 9})).to_string().into_bytes(), Some("sesame"), 400, "temperature"),
        (chat("x", json!({"messages": [{"role": "wizard", "content": "x"}]})).to_string().into_bytes(), Some("sesame"), 400, "wizard"),
        (chat("x", json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}})).to_string().into_bytes(), Some("sesame"), 400, "constraint"),
        (chat(&"long ".repeat(1000), json!({})).to_string().into_bytes(), Some("sesame"), 413, "too large"),
        (chat("x", json!({})).to_string().into_bytes(), None, 401, "API key"),
        (chat("x", json!({})).to_string().into_bytes(), Some("wrong"), 401, "API key"),
    ];
    for (body, key, expected, contains) in cases {
        let response = send(body.into(), key).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        check(status, expected, &body, contains);
    }
    // A prompt longer than the context: 400 with both numbers.
    let small = LlamaCppAdapter::from_loaded_model(
        Arc::clone(&MODEL),
        LlamaCppConfig::default().with_context_length(256),
    );
    let tight = start(small, ServerOptions::default());
    let (status, body) = post(
        &tight,
        "/chat/completions",
        &chat(&"word ".repeat(400), json!({})),
    )
    .await;
    check(status, 400, &body, "context holds 256");
    // Unknown route, and the completions endpoint without streaming.
    let (status, body) = post(&tight, "/embeddings", &json!({})).await;
    check(status, 404, &body, "/v1/embeddings");
    let (status, body) = post(
        &tight,
        "/completions",
        &json!({"prompt": "x", "stream": true}),
    )
    .await;
    check(status, 400, &body, "stream");
    // The server still answers.
    let ok = send(chat("x", json!({})).to_string().into(), Some("sesame"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// A client that goes away mid-stream stops its generation (its sequence is
/// free within a step) and does not hold up the next request.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_stream_frees_its_sequence() {
    let adapter = adapter(1);
    let backend = Arc::clone(adapter.backend());
    let server = start(adapter, ServerOptions::default());
    let budget = 3000;
    let body = chat(
        "Tell me everything",
        json!({"max_tokens": budget, "stream": true, "temperature": 1.0, "seed": 1}),
    );
    let before = backend.stats().sampled_tokens;
    let mut response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    // Two chunks in, the client goes away.
    response.chunk().await.unwrap();
    response.chunk().await.unwrap();
    drop(response);
    let freed = async {
        while backend.stats().active_sequences > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), freed)
        .await
        .expect("the sequence is freed");
    let sampled = backend.stats().sampled_tokens - before;
    assert!(
        sampled < budget,
        "the stopped stream sampled {sampled} of {budget} tokens"
    );
    until(|| backend.stats().reserved_cells == 0).await;
    let (status, _) = post(&server, "/chat/completions", &chat("Next", json!({}))).await;
    assert_eq!(status, 200);
}

/// Past `max_waiting` calls in the queue, a request gets 503 with
/// `Retry-After` at once; a client that goes away before its (non-streamed)
/// reply stops its generation, so the queue behind it moves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_and_a_client_gone_before_its_reply_frees_its_sequence() {
    let adapter = LlamaCppAdapter::from_loaded_model(
        Arc::clone(&MODEL),
        LlamaCppConfig::default()
            .with_context_length(4096)
            .with_generation(
                GenerationConfig::default()
                    .with_max_text_chars(60)
                    .with_max_concurrency(1),
            ),
    );
    let backend = Arc::clone(adapter.backend());
    let waiting = adapter.clone();
    let server = start(adapter, ServerOptions::default().with_max_waiting(1));
    let url = format!("{}/chat/completions", server.base_url());
    let budget = 3000;
    let before = backend.stats().sampled_tokens;
    let long = tokio::spawn({
        let request = client().post(&url).json(&chat(
            "Tell me everything",
            json!({"max_tokens": budget, "temperature": 1.0, "seed": 1}),
        ));
        async move { request.send().await }
    });
    until(|| backend.stats().active_sequences == 1).await;
    // The next call waits for the engine; the one after it is refused.
    let queued = tokio::spawn(post_owned(url.clone(), chat("Next", json!({}))));
    until(|| waiting.occupancy().1 == 1).await;
    let refused = client()
        .post(&url)
        .json(&chat("One more", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_busy", "{body}");
    assert!(
        backend.stats().active_sequences == 1,
        "the long call still runs"
    );
    // The long call's client goes away: its generation stops, the queued one runs.
    long.abort();
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), queued)
        .await
        .expect("the queued call ran")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let queued_tokens = body["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let sampled = backend.stats().sampled_tokens - before;
    assert!(
        sampled < budget / 2,
        "the abandoned call went on: {sampled} tokens sampled ({queued_tokens} for the queued one)"
    );
    // What the worker holds is published a step after the reply.
    until(|| backend.stats().reserved_cells == 0).await;
}

/// Waits (30 s at most) until `done`.
async fn until(done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn post_owned(url: String, body: Value) -> (u16, Value) {
    let response = client().post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// 64 concurrent streaming clients get the replies they would get one at a
/// time, and a client that stops reading holds up none of them.
#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_streaming_clients_get_their_lone_replies_and_a_slow_reader_blocks_no_one() {
    // The own model on its own held-out questions: a random model's (or an
    // untrained question's) near-even logits let a batch of 8 and a batch of
    // 1 (other kernels, other rounding) pick different tokens.
    let server = Arc::new(start(own_model_adapter(8), ServerOptions::default()));
    let questions = crate::support::task_messages(64);
    let body = |messages: &Value, stream: bool| json!({"messages": messages, "max_tokens": 48, "temperature": 0, "stream": stream});
    let mut alone = Vec::new();
    for messages in &questions {
        let (_, reply) = post(&server, "/chat/completions", &body(messages, false)).await;
        alone.push(
            reply["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_else(|| panic!("{reply}"))
                .to_string(),
        );
    }

    assert!(
        alone.iter().all(|reply| !reply.trim().is_empty()),
        "{alone:?}"
    );
    // The slow reader takes its first chunk, then stops reading until the
    // others are done.
    let mut slow = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&own_chat(
            "A slow reader",
            json!({"max_tokens": 400, "stream": true}),
        ))
        .send()
        .await
        .unwrap();
    slow.chunk().await.unwrap();

    let streams = questions.iter().map(|messages| {
        let server = Arc::clone(&server);
        let body = body(messages, true);
        async move {
            let response = client()
                .post(format!("{}/chat/completions", server.base_url()))
                .json(&body)
                .send()
                .await
                .unwrap();
            sse(response)
                .await
                .iter()
                .filter(|e| *e != "[DONE]")
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect::<String>()
        }
    });
    let together =
        tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(streams))
            .await
            .expect("the 64 streams finish while the slow reader waits");
    assert_eq!(together, alone);
    // The slow reader still gets its whole reply.
    let rest = sse(slow).await;
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
}

/// `LocalAdapter::lm` points at a live loopback server on the same engine.
#[tokio::test(flavor = "multi_thread")]
async fn the_lm_an_adapter_hands_out_is_served_by_it() {
    let adapter = adapter(1);
    let lm = adapter.lm().await.unwrap();
    let base = lm.base_url.clone().unwrap();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let reply: Value = client()
        .post(format!("{base}/chat/completions"))
        .json(&chat("Hello", json!({"model": lm.model})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["object"], "chat.completion", "{reply}");
    // The same adapter (or a clone) gets the same address; another, its own.
    assert_eq!(adapter.clone().lm().await.unwrap().base_url, lm.base_url);
    let other = self::adapter(1).lm().await.unwrap();
    assert_ne!(other.base_url, lm.base_url);
    // dspy-rs's own HTTP client parses what it serves.
    let response = lm
        .call(
            dspy_rs::Chat::new(vec![
                dspy_rs::Message::system("You are terse."),
                dspy_rs::Message::user("Say hi."),
            ]),
            vec![],
        )
        .await
        .unwrap();
    assert!(response.usage.prompt_tokens > 0);
}

/// An adapter on the crate's own model, decoding `sequences` at once.
fn own_model_adapter(sequences: usize) -> LlamaCppAdapter {
    let model = LlamaCppModel::load(
        dsrs_local::testing::task_model_path(),
        LlamaCppLoadOptions::default(),
    )
    .expect("the own model loads");
    LlamaCppAdapter::from_loaded_model(
        Arc::new(model),
        LlamaCppConfig::default()
            .with_context_length(4096)
            .with_parallel_sequences(sequences)
            .with_generation(GenerationConfig::default().with_max_concurrency(sequences.max(4))),
    )
}

/// A chat body for the own model's server (which has another name).
fn own_chat(content: &str, extra: Value) -> Value {
    let mut body = chat(content, extra);
    if let Some(body) = body.as_object_mut() {
        body.remove("model");
    }
    body
}

/// The crate's own model, served.
fn own_model_server() -> RunningServer {
    start(own_model_adapter(1), ServerOptions::default())
}

fn lookup_tools() -> Value {
    let spec = dsrs_local::testing::tool_task::lookup_spec();
    json!([spec.to_openai()])
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_round_trip_as_tool_calls_and_tool_messages_whole_and_streamed() {
    use dsrs_local::testing::tool_task::code_of;
    let server = own_model_server();
    let item = "quiet garden";
    let messages = crate::support::item_code_messages(item);
    // `tool_choice` left out (`auto`): the own model calls by itself.
    let body = json!({"messages": messages, "tools": lookup_tools(), "temperature": 0});
    let (status, reply) = post(&server, "/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{reply}");
    assert!(choice["message"]["content"].is_null(), "{reply}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup_code");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    let called_item = arguments["item"]
        .as_str()
        .unwrap_or_else(|| panic!("{arguments}"));
    assert_eq!(called_item, item, "the item copied from the question");

    // The result as rig sends it (content as parts, the call's arguments a string).
    let mut follow_up = messages.clone();
    follow_up.push(json!({"role": "assistant", "content": [], "tool_calls": [call]}));
    follow_up.push(json!({
        "role": "tool",
        "tool_call_id": call["id"],
        "content": [{"type": "text", "text": code_of(called_item).to_string()}],
    }));
    let body = json!({"messages": follow_up, "tools": lookup_tools(), "temperature": 0});
    let (status, reply) = post(&server, "/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop", "{reply}");
    let text = reply["choices"][0]["message"]["content"].as_str().unwrap();
    let fields = SignatureFields::of(&crate::ItemCode::new()).unwrap();
    assert_eq!(
        parse_reply(&fields, text).unwrap()["code"],
        json!(code_of(item)),
        "{text}"
    );

    // Streamed: no content, one delta with the call, then `tool_calls`.
    let body =
        json!({"messages": messages, "tools": lookup_tools(), "temperature": 0, "stream": true});
    let response = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let events = sse(response).await;
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "", "{events:?}");
    let streamed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(streamed.len(), 1, "{events:?}");
    assert_eq!(streamed[0][0]["function"]["name"], "lookup_code");
    assert_eq!(streamed[0][0]["index"], 0);
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(json!("tool_calls"))
    );

    // `tool_choice: none`: the tools stay in the prompt, the reply answers.
    let body = json!({"messages": messages, "tools": lookup_tools(), "tool_choice": "none", "temperature": 0});
    let (_, reply) = post(&server, "/chat/completions", &body).await;
    assert!(
        reply["choices"][0]["message"]["tool_calls"].is_null(),
        "{reply}"
    );
    let text = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(parse_reply(&fields, text).is_ok(), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_choice_required_or_named_forces_a_valid_call_on_any_model() {
    let server = start(adapter(1), ServerOptions::default());
    let mut tools = lookup_tools();
    if let Some(list) = tools.as_array_mut() {
        list.extend(
            dsrs_local::testing::tool_task::distractor_specs()
                .iter()
                .map(dsrs_local::prompt::ToolSpec::to_openai),
        );
    }
    for (choice, expected) in [
        (json!("required"), None),
        (
            json!({"type": "function", "function": {"name": "add"}}),
            Some("add"),
        ),
    ] {
        let body = chat(
            "Hello",
            json!({"tools": tools, "tool_choice": choice, "max_tokens": 200, "temperature": 1.0, "seed": 3}),
        );
        let (status, reply) = post(&server, "/chat/completions", &body).await;
        assert_eq!(status, 200, "{reply}");
        let call = &reply["choices"][0]["message"]["tool_calls"][0]["function"];
        let name = call["name"].as_str().unwrap_or_default();
        assert!(
            ["lookup_code", "get_weather", "add"].contains(&name),
            "{reply}"
        );
        if let Some(expected) = expected {
            assert_eq!(name, expected);
        }
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(arguments.is_object(), "{reply}");
        if name == "add" {
            assert!(
                arguments["a"].is_i64() && arguments["b"].is_i64(),
                "{arguments}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_tool_requests_are_400s_naming_the_field() {
    let server = start(adapter(1), ServerOptions::default());
    let tools = lookup_tools();
    let cases = [
        (
            json!({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}),
            "tools",
            "only `function`",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
            "tools",
            "must be 1 to 64",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "x", "parameters": "none"}}]}),
            "tools",
            "JSON schema object",
        ),
        (
            json!({"tools": tools, "tool_choice": "sometimes"}),
            "tool_choice",
            "`auto`, `none`, `required`",
        ),
        (
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
            "not among the tools",
        ),
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "no tools",
        ),
    ];
    for (extra, param, message) in cases {
        let (status, reply) = post(&server, "/chat/completions", &chat("Hi", extra)).await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["error"]["param"], param, "{reply}");
        let text = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{text}");
    }
    let bad_arguments = json!({
        "model": NAME,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup_code", "arguments": "{not json"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
        ],
        "tools": tools,
    });
    let (status, reply) = post(&server, "/chat/completions", &bad_arguments).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["param"], "messages");
    // The server still answers afterwards.
    let (status, _) = post(&server, "/chat/completions", &chat("Hi", json!({}))).await;
    assert_eq!(status, 200);
}
