//! Detect the machine, plan a load, and serve one model to both backends through a pool.
//!
//! ```text
//! cargo run --example pool -- path/to/model.gguf
//! DSRS_DEVICE=fake-gpu:8589934592 cargo run --example pool   # plan for a made-up 8 GiB GPU
//! ```
//!
//! Without a path it uses the crate's own small model, `models/dsrs-tiny.gguf`.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;

use dspy_rs::{Signature, adapter::Adapter, example};
use dsrs_local::{
    CandleAdapter, CandleConfig, CandleModel, HardwareManager, LlamaCppAdapter, LlamaCppConfig,
    LlamaCppModel, ModelPool, ModelSpec,
};

#[Signature]
struct QA {
    /// Answer the question in a few words.
    #[input]
    question: String,
    #[output]
    answer: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (path, _scratch) = common::model_path()?;

    let profile = HardwareManager::detect();
    println!("{profile}\n");
    let pool = ModelPool::new(profile);
    let spec = ModelSpec::gguf(&path);
    println!("plan (llama.cpp): {}\n", pool.plan::<LlamaCppModel>(&spec)?);

    let inputs = example! { "question": "input" => "What is the capital of France?" };

    let llama: Arc<LlamaCppModel> = pool.load(spec.clone())?;
    let candle: Arc<CandleModel> = pool.load(spec)?;
    let llama = LlamaCppAdapter::from_loaded_model(llama, LlamaCppConfig::default());
    let lm = Arc::new(llama.lm().await?);
    let adapters: Vec<(&str, Box<dyn Adapter>)> = vec![
        ("llama.cpp", Box::new(llama)),
        (
            "candle",
            Box::new(CandleAdapter::from_loaded_model(
                candle,
                CandleConfig::default(),
            )),
        ),
    ];
    for (name, adapter) in &adapters {
        let prediction = adapter
            .call(Arc::clone(&lm), &QA::new(), inputs.clone(), vec![])
            .await?;
        println!(
            "{name:>9}: {}",
            common::plain(prediction.get("answer", None))
        );
    }
    for entry in pool.loaded() {
        println!(
            "loaded: {} on {} ({:.1} MiB, in use: {})",
            entry.path.display(),
            entry.backend,
            entry.bytes as f64 / f64::from(1u32 << 20),
            entry.in_use
        );
    }
    Ok(())
}
