//! The server's request decoding under random input: bodies shaped like chat
//! requests with every field of a random type or value, and raw bytes. Each
//! gets an answer or an OpenAI-shaped error with a client status (never a
//! 500, never a dropped connection), and the server answers a good request
//! afterwards. A scripted backend stands in for the model, so the cases
//! test the HTTP layer and run in a second.

use std::sync::Arc;
use std::time::Duration;

use dsrs_local::server::{Server, ServerOptions};
use dsrs_local::testing::ScriptedBackend;
use dsrs_local::{GenerationConfig, LocalAdapter};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

use crate::support::fuzz_cases;

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field's value: usually missing or a valid one, sometimes anything.
fn field(plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        6 => Just(None),
        6 => plausible.prop_map(Some),
        1 => any_json().prop_map(Some),
    ]
    .boxed()
}

/// A field most messages leave out.
fn rare(value: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![8 => Just(None), 1 => value.prop_map(Some)].boxed()
}

fn message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            4 => Just("user"),
            1 => Just("system"),
            1 => Just("assistant"),
            1 => Just("tool"),
            1 => Just("developer"),
            1 => Just("wizard")
        ],
        prop_oneof![
            6 => ".{0,40}".prop_map(|s| Some(Value::from(s))),
            1 => Just(None),
            1 => any_json().prop_map(Some),
        ],
        rare(Just(
            json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
        )),
        rare(Just(json!("c1"))),
    )
        .prop_map(|(role, content, calls, id)| {
            let mut m = Map::new();
            m.insert("role".into(), json!(role));
            for (key, value) in [
                ("content", content),
                ("tool_calls", calls),
                ("tool_call_id", id),
            ] {
                if let Some(value) = value {
                    m.insert(key.into(), value);
                }
            }
            Value::Object(m)
        })
}

/// A chat request whose every field may be missing, plausible or anything.
fn chat_request() -> impl Strategy<Value = Value> {
    let tool = json!({"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"item": {"type": "string"}}}}});
    let fields = vec![
        (
            "messages",
            prop_oneof![
                6 => proptest::collection::vec(message(), 1..4).prop_map(|m| Some(Value::from(m))),
                1 => Just(None),
                1 => any_json().prop_map(Some),
            ]
            .boxed(),
        ),
        (
            "model",
            field(prop_oneof![Just(json!("scripted")), Just(json!("other"))]),
        ),
        ("max_tokens", field((1i64..64).prop_map(Value::from))),
        (
            "max_completion_tokens",
            field((1i64..50).prop_map(Value::from)),
        ),
        ("temperature", field((0.0f64..2.0).prop_map(Value::from))),
        ("top_p", field((0.01f64..1.0).prop_map(Value::from))),
        ("n", field((1i64..4).prop_map(Value::from))),
        ("seed", field(any::<i64>().prop_map(Value::from))),
        ("stream", field(any::<bool>().prop_map(Value::from))),
        (
            "stop",
            field(prop_oneof![
                ".{0,8}".prop_map(Value::from),
                proptest::collection::vec(".{1,8}".prop_map(Value::from), 0..4)
                    .prop_map(Value::from),
            ]),
        ),
        (
            "response_format",
            field(prop_oneof![
                Just(json!({"type": "text"})),
                Just(json!({"type": "json_object"})),
                Just(
                    json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
                ),
                Just(
                    json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}})
                ),
            ]),
        ),
        ("tools", field(Just(json!([tool.clone()])))),
        (
            "tool_choice",
            field(prop_oneof![
                Just(json!("auto")),
                Just(json!("none")),
                Just(json!("required")),
                Just(json!({"type": "function", "function": {"name": "lookup"}})),
                Just(json!({"type": "function", "function": {"name": "missing"}})),
            ]),
        ),
    ];
    fields
        .into_iter()
        .map(|(name, strategy)| strategy.prop_map(move |v| (name, v)))
        .collect::<Vec<_>>()
        .prop_map(|pairs| {
            Value::Object(
                pairs
                    .into_iter()
                    .filter_map(|(name, value)| Some((name.to_string(), value?)))
                    .collect(),
            )
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn random_requests_get_an_answer_or_an_openai_error_never_a_500() {
    let backend = Arc::new(ScriptedBackend::always("a scripted reply"));
    let adapter = LocalAdapter::new(backend, GenerationConfig::default());
    let server = Server::start(
        adapter,
        "127.0.0.1:0".parse().unwrap(),
        ServerOptions::default().with_model_name("scripted"),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", server.base_url());
    let handle = tokio::runtime::Handle::current();
    let body = prop_oneof![
        8 => chat_request().prop_map(|v| v.to_string().into_bytes()),
        1 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(400),
        failure_persistence: None,
        ..Config::default()
    });
    let answered = std::cell::Cell::new(0);
    runner
        .run(&body, |body| {
            let send = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send();
            let (status, reply) = tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let Ok(response) = send.await else {
                        return (0, "no answer".to_string());
                    };
                    let status = response.status().as_u16();
                    let text = response.text().await;
                    (
                        status,
                        text.unwrap_or_else(|e| format!("no whole body: {e}")),
                    )
                })
            });
            let text = String::from_utf8_lossy(&body);
            match status {
                200 => {
                    let whole = serde_json::from_str::<Value>(&reply).is_ok()
                        || reply.trim_end().ends_with("data: [DONE]");
                    prop_assert!(whole, "{text} → 200 with {reply}");
                    answered.set(answered.get() + 1);
                }
                400 | 404 | 413 | 422 => {
                    let error: Value = serde_json::from_str(&reply).map_err(|e| {
                        TestCaseError::fail(format!("{status} not JSON ({e}): {reply}"))
                    })?;
                    prop_assert!(error["error"]["message"].is_string(), "{text} → {reply}");
                    prop_assert!(error["error"]["type"].is_string(), "{text} → {reply}");
                }
                other => prop_assert!(false, "{text} → {other}: {reply}"),
            }
            Ok(())
        })
        .unwrap();
    println!("random requests: {} answered", answered.get());
    assert!(
        answered.get() > 0,
        "no random request was good enough to answer"
    );
    let health = http
        .get(format!(
            "{}/health",
            server.base_url().trim_end_matches("/v1")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
