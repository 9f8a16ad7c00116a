//! Everything in dspy-rs that talks to its `LM` over HTTP — `forward_with_config`,
//! `LM::call`, `inspect_history`, COPRO, MIPROv2, GEPA — run on the crate's
//! own model through `adapter.lm()`, the loopback server on the same engine.
//! Instantiated per backend by `conformance_suite!`.

use std::sync::Arc;

use dspy_rs::{
    COPRO, Evaluator, Example, FeedbackEvaluator, FeedbackMetric, GEPA, LM, MIPROv2, Module,
    Optimizable, Optimizer, Predict, Prediction, Predictor, configure, example,
};
use dsrs_local::testing::task_model_path;
use dsrs_local::{GenerationConfig, LocalAdapter};

use crate::QA;
use crate::conformance::Harness;
use crate::support::GLOBAL_CONFIG;

/// A one-predictor program, as dspy-rs's own optimizer examples build them.
#[derive(Optimizable)]
struct Capitals {
    #[parameter]
    answerer: Predict,
}

impl Capitals {
    fn new() -> Self {
        Capitals {
            answerer: Predict::new(QA::new()),
        }
    }
}

impl Module for Capitals {
    async fn forward(&self, inputs: Example) -> anyhow::Result<Prediction> {
        self.answerer.forward(inputs).await
    }
}

impl Evaluator for Capitals {
    const DISPLAY_PROGRESS: bool = false;

    async fn metric(&self, example: &Example, prediction: &Prediction) -> f32 {
        let expected = example.get("answer", None);
        f32::from(u8::from(prediction.get("answer", None) == expected))
    }
}

impl FeedbackEvaluator for Capitals {
    async fn feedback_metric(&self, example: &Example, prediction: &Prediction) -> FeedbackMetric {
        let score = self.metric(example, prediction).await;
        FeedbackMetric::new(
            score,
            format!("the answer is {}", example.get("answer", None)),
        )
    }
}

fn trainset() -> Vec<Example> {
    [
        ("France", "Paris"),
        ("Japan", "Tokyo"),
        ("Kenya", "Nairobi"),
    ]
    .iter()
    .map(|(country, capital)| {
        example! {
            "question": "input" => format!("What is the capital of {country}?"),
            "answer": "output" => capital.to_string()
        }
    })
    .collect()
}

/// An adapter on the own model, with short free-text values (the
/// optimizers' own prompts ask for instructions, which this model was
/// never taught).
fn own_model<H: Harness>() -> LocalAdapter<H::Backend> {
    let config = GenerationConfig::default().with_max_text_chars(200);
    H::adapter_on(&task_model_path(), config, 2048).expect("the own model loads")
}

/// Chat requests the adapter's loopback server answered with 200.
async fn served_chat_requests(lm: &LM) -> u64 {
    let base = lm.base_url.clone().unwrap_or_default();
    let metrics_url = format!("{}/metrics", base.trim_end_matches("/v1"));
    let text = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("dsrs_requests_total{endpoint=\"chat\",status=\"200\"} "))
        .map_or(0, |n| n.parse().unwrap())
}

pub async fn forward_with_config_lm_call_and_history_are_local<H: Harness>() {
    let adapter = own_model::<H>();
    let lm = adapter.lm().await.unwrap();
    // dspy-rs's ChatAdapter over HTTP, held to the field grammar by the server.
    let prediction = Predict::new(QA::new())
        .forward_with_config(
            example! { "question": "input" => "What is the capital of France?" },
            Arc::new(lm.clone()),
        )
        .await
        .unwrap();
    assert_eq!(prediction.get("answer", None), "Paris");
    assert!(prediction.lm_usage.prompt_tokens > 0);

    // The same address with dspy-rs's history on.
    let recording = LM::builder()
        .base_url(lm.base_url.clone().unwrap())
        .model(lm.model.clone())
        .temperature(0.0)
        .cache(true)
        .build()
        .await
        .unwrap();
    let prediction = Predict::new(QA::new())
        .forward_with_config(
            example! { "question": "input" => "What is the capital of Japan?" },
            Arc::new(recording.clone()),
        )
        .await
        .unwrap();
    assert_eq!(prediction.get("answer", None), "Tokyo");
    // The history is written by a spawned task: give it a moment.
    let mut history = Vec::new();
    for _ in 0..50 {
        history = recording.inspect_history(1).await;
        if !history.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        history.first().is_some_and(|h| h.prompt.contains("Japan")),
        "no history recorded"
    );
    assert!(served_chat_requests(&lm).await >= 2);
}

pub async fn copro_compiles_on_the_local_model<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let adapter = own_model::<H>();
    let lm = adapter.lm().await.unwrap();
    configure(lm.clone(), adapter);
    let mut program = Capitals::new();
    COPRO::builder()
        .breadth(2)
        .depth(1)
        .build()
        .compile(&mut program, trainset())
        .await
        .unwrap();
    assert!(
        served_chat_requests(&lm).await >= 1,
        "COPRO's calls went to the loopback server"
    );
}

pub async fn mipro_compiles_on_the_local_model<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let adapter = own_model::<H>();
    let lm = adapter.lm().await.unwrap();
    configure(lm.clone(), adapter);
    let mut program = Capitals::new();
    MIPROv2::builder()
        .num_candidates(2)
        .minibatch_size(3)
        .track_stats(false)
        .build()
        .compile(&mut program, trainset())
        .await
        .unwrap();
    assert!(
        served_chat_requests(&lm).await >= 3,
        "MIPROv2's calls went to the loopback server"
    );
}

pub async fn gepa_compiles_on_the_local_model<H: Harness>() {
    let _guard = GLOBAL_CONFIG.lock().await;
    let adapter = own_model::<H>();
    let lm = adapter.lm().await.unwrap();
    configure(lm.clone(), adapter);
    let mut program = Capitals::new();
    // With a prompt model its reflection goes over HTTP too.
    let result = GEPA::builder()
        .num_iterations(1)
        .minibatch_size(2)
        .track_stats(false)
        .prompt_model(lm.clone())
        .build()
        .compile_with_feedback(&mut program, trainset())
        .await
        .unwrap();
    assert!(result.total_rollouts > 0);
    assert!(
        served_chat_requests(&lm).await >= 2,
        "GEPA's calls went to the loopback server"
    );
}
