//! What every example needs: the model to run on.

use std::path::PathBuf;

use dsrs_local::testing::{TestModelSpec, chat_tokenizer};
use dsrs_local::{GenerationConfig, ModelSource};

/// The model named by the first argument or `DSRS_MODEL` (a path,
/// `owner/repo:file.gguf` from the Hugging Face cache, or an Ollama
/// `name:tag`); without one, a small test model with random weights written to
/// a temporary folder (kept alive by the returned guard).
#[allow(dead_code)]
pub fn model_path() -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Some(name) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DSRS_MODEL").ok())
    {
        return Ok((ModelSource::parse(&name).resolve()?, None));
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny-random.gguf");
    TestModelSpec::tiny(chat_tokenizer()).write(&path)?;
    println!(
        "No model given: using a small test model with random weights, so the answers are random."
    );
    println!("Pass a GGUF path (or set DSRS_MODEL) to use a real model.\n");
    Ok((path, Some(dir)))
}

/// Generation settings: the defaults, but with short free-text fields for a
/// random-weight model (which would otherwise write until the cap).
#[allow(dead_code)]
pub fn generation(random_model: bool) -> GenerationConfig {
    if random_model {
        GenerationConfig::default().with_max_text_chars(80)
    } else {
        GenerationConfig::default()
    }
}

/// A llama.cpp adapter on the model from [`model_path`], with the settings of
/// [`generation`]; `llamacpp_qa.rs` shows these steps one by one.
#[allow(dead_code)]
pub fn llama_cpp_adapter()
-> anyhow::Result<(dsrs_local::LlamaCppAdapter, Option<tempfile::TempDir>)> {
    use std::sync::Arc;

    use dsrs_local::{LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel};
    let (path, scratch) = model_path()?;
    let model = Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default())?);
    let config = LlamaCppConfig::default().with_generation(generation(scratch.is_some()));
    Ok((LlamaCppAdapter::from_loaded_model(model, config), scratch))
}
