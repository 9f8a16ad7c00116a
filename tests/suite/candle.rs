//! The candle backend: the conformance suite, and agreement with llama.cpp.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use dsrs_local::backends::candle::CandleBackend;
use dsrs_local::{
    CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel, Error, GenerationConfig,
    LocalAdapter,
};

use crate::conformance::{Harness, TINY_CHAT_MODEL};

static TINY: LazyLock<Arc<CandleModel>> = LazyLock::new(|| {
    Arc::new(CandleModel::load(&TINY_CHAT_MODEL.1, CandleLoadOptions::default()).expect("loads"))
});

pub struct Candle;

impl Harness for Candle {
    type Backend = CandleBackend;

    fn adapter_on(
        path: &Path,
        config: GenerationConfig,
        context_length: usize,
    ) -> Result<CandleAdapter, Error> {
        let model = CandleModel::load(path, CandleLoadOptions::default())?;
        Ok(CandleAdapter::from_loaded_model(
            Arc::new(model),
            CandleConfig::default()
                .with_context_length(context_length)
                .with_generation(config),
        ))
    }

    fn adapter(config: GenerationConfig) -> LocalAdapter<CandleBackend> {
        CandleAdapter::from_loaded_model(
            Arc::clone(&TINY),
            CandleConfig::default()
                .with_context_length(2048)
                .with_generation(config),
        )
    }

    fn adapter_with_prefix_reuse(
        path: &Path,
        config: GenerationConfig,
        reuse: bool,
        fast_forward: bool,
    ) -> Result<CandleAdapter, Error> {
        let model = CandleModel::load(path, CandleLoadOptions::default())?;
        Ok(CandleAdapter::from_loaded_model(
            Arc::new(model),
            CandleConfig::default()
                .with_context_length(2048)
                .with_prefix_reuse(reuse)
                .with_fast_forward(fast_forward)
                .with_generation(config),
        ))
    }
}

crate::conformance_suite!(conformance, crate::candle::Candle);

/// The window is capped at the file's trained context, whatever the family
/// (candle-transformers' llama stopped at 4096 precomputed positions; ours
/// computes RoPE per call).
#[test]
fn candle_caps_the_window_at_the_trained_context() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.gguf");
    let mut spec = dsrs_local::testing::TestModelSpec::tiny(dsrs_local::testing::chat_tokenizer());
    spec.context_length = 8192;
    spec.write(&path).unwrap();
    let model = Arc::new(CandleModel::load(&path, CandleLoadOptions::default()).unwrap());
    assert_eq!(model.max_positions(), 8192);
    let backend = CandleBackend::new(model, &CandleConfig::default().with_context_length(100_000));
    assert_eq!(
        dsrs_local::Backend::context_length(&backend),
        8192,
        "a larger request is capped at the trained context"
    );
}

/// Reading the markers the grammar forces ahead (in the pass before their
/// own, dropping what the model splits differently) changes no reply of the
/// crate's task model, greedy or sampled, and saves passes.
#[tokio::test(flavor = "multi_thread")]
async fn forced_tokens_read_ahead_change_no_reply() {
    use dsrs_local::Backend as _;
    use dsrs_local::testing::task_model_path;
    use dsrs_local::testing::tasks::{TaskFamily, TaskStream};
    let mut stream = TaskStream::held_out(7);
    let examples: Vec<_> = (0..12)
        .map(|i| stream.sample(TaskFamily::ALL[i % TaskFamily::ALL.len()], i % 3))
        .collect();
    // A model each (the KV cache lives with the weights), so each adapter's
    // cache sees only its own calls and both read their prompts in the same
    // passes.
    let load =
        || Arc::new(CandleModel::load(task_model_path(), CandleLoadOptions::default()).unwrap());
    let (ahead_model, stepwise_model) = (load(), load());
    for temperature in [0.0, 0.8] {
        let adapter = |fast_forward: bool| {
            let model = if fast_forward {
                &ahead_model
            } else {
                &stepwise_model
            };
            CandleAdapter::from_loaded_model(
                Arc::clone(model),
                CandleConfig::default()
                    .with_context_length(4096)
                    .with_fast_forward(fast_forward)
                    .with_generation(
                        GenerationConfig::default()
                            .with_temperature(temperature)
                            .with_seed(3),
                    ),
            )
        };
        let (ahead, stepwise) = (adapter(true), adapter(false));
        let lm = ahead.lm().await.unwrap();
        for example in &examples {
            let (_, a) = ahead
                .predict(&lm, &example.signature, &example.inputs)
                .await
                .unwrap();
            let (_, b) = stepwise
                .predict(&lm, &example.signature, &example.inputs)
                .await
                .unwrap();
            assert_eq!(a.text, b.text, "temperature {temperature}");
        }
        let (ahead, stepwise) = (ahead.backend().stats(), stepwise.backend().stats());
        assert_eq!(stepwise.forwarded_tokens, 0);
        // This model's vocabulary holds most of a marker in one or two
        // tokens, so few are forced; the real models' tests see more.
        assert!(
            ahead.forwarded_tokens > 0,
            "markers were read ahead: {ahead:?}"
        );
        // Each forced token kept is a pass saved.
        assert_eq!(
            ahead.passes + ahead.forwarded_tokens,
            stepwise.passes,
            "{ahead:?} vs {stepwise:?}"
        );
    }
}
