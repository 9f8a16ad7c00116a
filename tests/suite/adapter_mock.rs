//! The whole adapter path through dspy-rs — `configure(lm, adapter)` then
//! `Predict::forward` — on a scripted backend, no model needed.

use std::sync::Arc;

use dspy_rs::{Predict, Predictor, configure, example};
use dsrs_local::testing::ScriptedBackend;
use dsrs_local::{GenerationConfig, LocalAdapter};
use serde_json::json;

use crate::support::{GLOBAL_CONFIG, LmSettings};
use crate::{MultiField, QA};

#[tokio::test]
async fn predict_forward_through_configure() {
    let backend = Arc::new(ScriptedBackend::new([
        "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]",
    ]));
    let _guard = GLOBAL_CONFIG.lock().await;
    let adapter = LocalAdapter::new(Arc::clone(&backend), GenerationConfig::default());
    configure(adapter.lm().await.unwrap(), adapter);

    let prediction = Predict::new(QA::new())
        .forward(example! { "question": "input" => "What is the capital of France?" })
        .await
        .unwrap();
    assert_eq!(prediction.get("answer", None), json!("Paris"));

    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(
        request
            .prompt
            .starts_with("<|im_start|>system\nYour input fields are:"),
        "{}",
        request.prompt
    );
    assert!(request.prompt.ends_with("<|im_start|>assistant\n"));
    assert!(
        request.constraint.is_some(),
        "the constraint is on by default"
    );
    // Usage is the backend's count, not an estimate.
    assert_eq!(
        prediction.lm_usage.prompt_tokens,
        request.prompt.split_whitespace().count() as u64
    );
    // The scripted backend counts words: 11 in the reply.
    assert_eq!(prediction.lm_usage.completion_tokens, 11);
    assert_eq!(
        prediction.lm_usage.total_tokens,
        prediction.lm_usage.prompt_tokens + 11
    );
}

#[tokio::test]
async fn lm_settings_reach_the_backend_unless_overridden() {
    let reply = "[[ ## answer ## ]]\nok\n\n[[ ## completed ## ]]";
    let backend = Arc::new(ScriptedBackend::always(reply));
    let adapter = LocalAdapter::new(Arc::clone(&backend), GenerationConfig::default());
    let lm = Arc::new(adapter.lm().await.unwrap().with_settings(0.6, 77));
    let signature = QA::new();
    let inputs = example! { "question": "input" => "q" };

    dspy_rs::adapter::Adapter::call(
        &adapter,
        Arc::clone(&lm),
        &signature,
        inputs.clone(),
        vec![],
    )
    .await
    .unwrap();
    let overridden = LocalAdapter::new(
        Arc::clone(&backend),
        GenerationConfig::default()
            .with_temperature(0.0)
            .with_max_tokens(9)
            .with_seed(5)
            .with_constraint(false),
    );
    dspy_rs::adapter::Adapter::call(&overridden, lm, &signature, inputs, vec![])
        .await
        .unwrap();

    let requests = backend.requests();
    assert_eq!(
        (requests[0].sampling.temperature, requests[0].max_tokens),
        (0.6, 77)
    );
    assert_eq!(
        (requests[1].sampling.temperature, requests[1].max_tokens),
        (0.0, 9)
    );
    assert_eq!(requests[1].sampling.seed, 5);
    assert!(requests[1].constraint.is_none());
}

#[tokio::test]
async fn an_unparseable_reply_is_an_error_naming_the_fields() {
    let backend = Arc::new(ScriptedBackend::always(
        "[[ ## doubled ## ]]\nmany\n\n[[ ## completed ## ]]",
    ));
    let adapter = LocalAdapter::new(backend, GenerationConfig::default());
    let lm = Arc::new(adapter.lm().await.unwrap());
    let inputs = example! { "number": "input" => 3, "language": "input" => "en" };
    let err = dspy_rs::adapter::Adapter::call(&adapter, lm, &MultiField::new(), inputs, vec![])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("`doubled` should be an integer"),
        "{message}"
    );
    assert!(
        message.contains("`half`") && message.contains("`digits`"),
        "{message}"
    );
    let typed = err
        .downcast_ref::<dsrs_local::Error>()
        .expect("our typed error inside anyhow");
    assert!(matches!(typed, dsrs_local::Error::Parse(_)));
}

#[tokio::test]
async fn parse_response_is_lenient_and_never_panics() {
    let adapter = LocalAdapter::new(
        Arc::new(ScriptedBackend::new(Vec::<String>::new())),
        GenerationConfig::default(),
    );
    let fields = dspy_rs::adapter::Adapter::parse_response(
        &adapter,
        &MultiField::new(),
        dspy_rs::Message::assistant("[[ ## doubled ## ]]\nnot a number\n[[ ## half ## ]]\n2.5"),
    );
    assert_eq!(fields.get("half"), Some(&json!(2.5)));
    assert!(!fields.contains_key("doubled"));
}

#[tokio::test]
async fn many_concurrent_calls_all_complete() {
    let backend = Arc::new(ScriptedBackend::always(
        "[[ ## answer ## ]]\nyes\n\n[[ ## completed ## ]]",
    ));
    let adapter = Arc::new(LocalAdapter::new(
        Arc::clone(&backend),
        GenerationConfig::default().with_max_concurrency(3),
    ));
    let lm = Arc::new(adapter.lm().await.unwrap());
    let calls = (0..32).map(|i| {
        let adapter = Arc::clone(&adapter);
        let lm = Arc::clone(&lm);
        async move {
            let inputs = example! { "question": "input" => format!("q{i}") };
            dspy_rs::adapter::Adapter::call(adapter.as_ref(), lm, &QA::new(), inputs, vec![]).await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| {
        r.as_ref()
            .is_ok_and(|p| p.get("answer", None) == json!("yes"))
    }));
    assert_eq!(backend.requests().len(), 32);
}
