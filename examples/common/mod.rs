//! What every example needs: the model to run on.

use std::path::PathBuf;

use dsrs_local::testing::{TestModelSpec, chat_tokenizer, task_model_path};
use dsrs_local::{GenerationConfig, ModelSource};

/// The model named by the first argument or `DSRS_MODEL` (a path,
/// `owner/repo:file.gguf` from the Hugging Face cache, or an Ollama
/// `name:tag`); without one, the crate's own small model
/// (`models/dsrs-tiny.gguf`, trained on arithmetic, capitals, sentiment,
/// parity and word lists); if that file is missing, a model with random
/// weights written to a temporary folder (kept alive by the returned guard).
#[allow(dead_code)]
pub(crate) fn model_path() -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Some(name) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DSRS_MODEL").ok())
    {
        return Ok((ModelSource::parse(&name).resolve()?, None));
    }
    let own = task_model_path();
    if own.is_file() {
        println!(
            "No model given: using the crate's own small model {} (it knows sums under 100, \
             plain or worked column by column, capitals, sentiment, parity and word lists). \
             Pass a GGUF path or set DSRS_MODEL for a real model.\n",
            own.display()
        );
        return Ok((own, None));
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
pub(crate) fn generation(random_model: bool) -> GenerationConfig {
    if random_model {
        GenerationConfig::default().with_max_text_chars(80)
    } else {
        GenerationConfig::default()
    }
}

/// A field's value as a person reads it: text without JSON quotes, other
/// values as JSON.
#[allow(dead_code)]
pub(crate) fn plain(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    }
}
