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
    ) -> Result<CandleAdapter, Error> {
        let model = CandleModel::load(path, CandleLoadOptions::default())?;
        Ok(CandleAdapter::from_loaded_model(
            Arc::new(model),
            CandleConfig::default()
                .with_context_length(2048)
                .with_prefix_reuse(reuse)
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
